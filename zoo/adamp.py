"""AdamP (Heo et al., 2021, "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
Scale-invariant Weights") as an optax GradientTransformation; optax has none.

Adam's step, except on weights that look scale-invariant: when the cosine similarity between a
weight and its gradient is below delta / sqrt(dim), the step is projected onto the tangent space of
the weight (its radial part removed, so the weight norm stops growing) and the weight decay for that
weight is scaled by `wd_ratio`. As in the reference implementation (the `adamp` package), the test
is made first per channel (rows along the first axis, dim = the size of one row) and, if that fails,
for the whole tensor (dim = its size); vectors and scalars are never projected. Weights stacked
over scanned layers (a leading `layers` axis) are tested and projected layer by layer, as the
reference would treat one tensor per layer.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class AdamPState(NamedTuple):
    """The step count and Adam's first and second moments (one of each per param)."""

    count: jax.Array
    mu: Any
    nu: Any


def _cosine(x_RC: jax.Array, y_RC: jax.Array, eps: float) -> jax.Array:
    """|cos(x_r, y_r)| per row, each norm floored at eps (as torch.nn.functional.cosine_similarity)."""
    nx = jnp.maximum(jnp.linalg.norm(x_RC, axis=1), eps)
    ny = jnp.maximum(jnp.linalg.norm(y_RC, axis=1), eps)
    return jnp.abs(jnp.sum(x_RC * y_RC, axis=1) / (nx * ny))


def _project(p_RC: jax.Array, perturb_RC: jax.Array, eps: float) -> jax.Array:
    """`perturb` less its component along each row of `p` (rows normalised with norm + eps)."""
    p_n = p_RC / (jnp.linalg.norm(p_RC, axis=1, keepdims=True) + eps)
    return perturb_RC - p_n * jnp.sum(p_n * perturb_RC, axis=1, keepdims=True)


def projected(perturb: jax.Array, grad: jax.Array, param: jax.Array, delta: float, wd_ratio: float,
              eps: float) -> tuple[jax.Array, jax.Array]:
    """(the step direction, its weight-decay factor) for one tensor: projected with factor
    `wd_ratio` if its gradient is nearly orthogonal to it per channel or as a whole, else as is, 1."""
    if param.ndim < 2:
        return perturb, jnp.ones((), perturb.dtype)
    shape = param.shape
    views = [(shape[0], -1), (1, -1)]  # per channel (first axis), then the whole tensor
    out, ratio, done = perturb, jnp.ones((), perturb.dtype), jnp.zeros((), bool)
    for view in views:
        g_RC, p_RC, u_RC = grad.reshape(view), param.reshape(view), perturb.reshape(view)
        small = jnp.max(_cosine(g_RC, p_RC, eps)) < delta / math.sqrt(p_RC.shape[1])
        take = small & ~done
        out = jnp.where(take, _project(p_RC, u_RC, eps).reshape(shape), out)
        ratio = jnp.where(take, jnp.asarray(wd_ratio, perturb.dtype), ratio)
        done = done | small
    return out, ratio


def adamp(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0, delta: float = 0.1, wd_ratio: float = 0.1, nesterov: bool = False,
          decays: Any = None, stacked: Any = None) -> optax.GradientTransformation:
    """AdamP with decoupled weight decay (times the learning rate) on the leaves where `decays` is True.

    `stacked` (a tree of bools like the params, or None) marks leaves whose first axis stacks
    scanned layers. The update is -lr * (m_hat / (sqrt(v_hat) + eps), projected as the module doc
    says) - lr * weight_decay * factor * param, Adam's bias corrections as in the reference.
    """
    schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

    def init(params: Any) -> AdamPState:
        return AdamPState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(jnp.zeros_like, params),
                          nu=jax.tree.map(jnp.zeros_like, params))

    def update(grads: Any, state: AdamPState, params: Any = None) -> tuple[Any, AdamPState]:
        if params is None:
            raise ValueError("adamp needs the params in update()")
        count = state.count + 1
        lr = schedule(state.count)
        decay_tree = jax.tree.map(lambda _: False, params) if decays is None else decays
        stack_tree = jax.tree.map(lambda _: False, params) if stacked is None else stacked

        def leaf(g, mu, nu, p, decay, stack):
            dtype = p.dtype
            bias1 = 1 - b1 ** count.astype(dtype)
            bias2 = 1 - b2 ** count.astype(dtype)
            mu = b1 * mu + (1 - b1) * g
            nu = b2 * nu + (1 - b2) * jnp.square(g)
            denom = jnp.sqrt(nu) / jnp.sqrt(bias2) + eps
            perturb = (b1 * mu + (1 - b1) * g) / denom if nesterov else mu / denom
            project = lambda u, gg, pp: projected(u, gg, pp, delta, wd_ratio, eps)  # noqa: E731
            perturb, ratio = jax.vmap(project)(perturb, g, p) if stack else project(perturb, g, p)
            lr_t = jnp.asarray(lr, dtype)
            u = -(lr_t / bias1) * perturb
            if decay and weight_decay > 0:
                ratio = ratio.reshape(ratio.shape + (1,) * (p.ndim - ratio.ndim))
                u = u - lr_t * weight_decay * ratio * p
            return u, mu, nu

        out = jax.tree.map(leaf, grads, state.mu, state.nu, params, decay_tree, stack_tree)
        part = lambda i: jax.tree.map(lambda t: t[i], out, is_leaf=lambda x: isinstance(x, tuple))  # noqa: E731
        return part(0), AdamPState(count=count, mu=part(1), nu=part(2))

    return optax.GradientTransformation(init, update)
