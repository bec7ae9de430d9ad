"""The run's optimizer: `optim.name` (one-pass AdamW by default, or one of zoo.optimizers) with the
`optim.schedule` learning rate, global-norm clipping, weight decay on matrices, and frozen layers."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zoo import optimizers, schedules
from zoo.config import ConfigError, OptimConfig


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then the decay `cfg.schedule` names (zoo.schedules)."""
    return schedules.learning_rate_schedule(cfg, total_steps)


def _keys(path: tuple) -> list[str]:
    return [str(getattr(k, "key", k)) for k in path]


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: not on biases, norm scales or other vectors."""
    def is_matrix(path: tuple, leaf: Any) -> bool:
        # Scanned params carry a leading `layers` axis; a stacked bias [N, D] is still a vector.
        return np.ndim(leaf) - ("layers" in _keys(path)[:-1]) >= 2

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def stacked_mask(params: Any) -> Any:
    """True for leaves stacked over scanned layers (a leading `layers` axis)."""
    return jax.tree_util.tree_map_with_path(lambda path, leaf: "layers" in _keys(path)[:-1] and np.ndim(leaf) > 0,
                                            params)


def trainable_mask(params: Any, freeze_layers: int) -> Any:
    """Per-leaf float mask: 0 for frozen entries (embeddings and scanned layers < freeze_layers), else 1.

    Leaves under `layers` are stacked over depth, so freezing is a mask over their first axis; every
    other leaf whose name says embedding is frozen whole.
    """
    def mask_for(path: tuple, leaf: Any) -> Any:
        keys = _keys(path)
        shape = np.shape(leaf)
        if "layers" in keys[:-1] and shape:
            m = (np.arange(shape[0]) >= freeze_layers).astype(np.float32)
            return m.reshape((-1,) + (1,) * (len(shape) - 1))
        frozen = freeze_layers > 0 and any("embed" in k for k in keys)
        return np.float32(0.0 if frozen else 1.0)

    return jax.tree_util.tree_map_with_path(mask_for, params)


class AdamWState(NamedTuple):
    """The step count and Adam's first and second moments (one of each per param)."""

    count: jax.Array
    mu: Any
    nu: Any


def clipped_adamw(schedule: optax.Schedule, b1: float, b2: float, eps: float, weight_decay: float,
                  decays: Any, clip_norm: float = 0.0, trainable: Any = None) -> optax.GradientTransformation:
    """AdamW (decoupled decay on the leaves where `decays` is True) after global-norm clipping.

    The same updates as `optax.chain(clip_by_global_norm(clip_norm), adamw(schedule, ..., mask=decays))`,
    computed in one elementwise pass per leaf: optax's chain of transforms, each a tree map, takes
    three times as long on CPU (gpt2-small: 370 against 120 ms). `trainable` (per-leaf float masks,
    or None) zeroes the gradients of frozen entries before the norm and their updates after the
    decay, so frozen params never move.
    """
    def init(params: Any) -> AdamWState:
        return AdamWState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(jnp.zeros_like, params),
                          nu=jax.tree.map(jnp.zeros_like, params))

    def update(grads: Any, state: AdamWState, params: Any = None) -> tuple[Any, AdamWState]:
        if trainable is not None:
            grads = jax.tree.map(lambda g, keep: g * jnp.asarray(keep, g.dtype), grads, trainable)
        scale = jnp.float32(1.0)
        if clip_norm > 0:
            norm = optax.tree.norm(grads)
            scale = jnp.where(norm < clip_norm, 1.0, clip_norm / norm)
        count = state.count + 1
        step_size = -schedule(state.count)
        bias1 = 1 - b1 ** count.astype(jnp.float32)
        bias2 = 1 - b2 ** count.astype(jnp.float32)

        def leaf(g, mu, nu, p, decay, keep):
            g = g * scale.astype(g.dtype)
            mu = b1 * mu + (1 - b1) * g
            nu = b2 * nu + (1 - b2) * jnp.square(g)
            u = (mu / bias1) / (jnp.sqrt(nu / bias2) + eps)
            if decay:
                u = u + weight_decay * p
            u = step_size * u
            return (u if trainable is None else u * jnp.asarray(keep, u.dtype)), mu, nu

        keeps = decays if trainable is None else trainable  # unused without frozen entries
        out = jax.tree.map(leaf, grads, state.mu, state.nu, params, decays, keeps)
        part = lambda i: jax.tree.map(lambda t: t[i], out, is_leaf=lambda x: isinstance(x, tuple))
        return part(0), AdamWState(count=count, mu=part(1), nu=part(2))

    return optax.GradientTransformation(init, update)


def _masked(trainable: Any) -> optax.GradientTransformation:
    """Multiply updates by the per-leaf float masks of `trainable_mask` (stateless)."""
    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return jax.tree.map(lambda u, keep: u * jnp.asarray(keep, u.dtype), updates, trainable), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(cfg: OptimConfig, total_steps: int, params: Any) -> optax.GradientTransformation:
    """The run's optimizer; `params` (unboxed arrays or shapes) gives the tree for the masks."""
    if cfg.name != "adamw" and cfg.name not in optimizers.BUILDERS:
        raise ConfigError(f"optim.name must be one of adamw, {', '.join(optimizers.BUILDERS)}, got {cfg.name!r}")
    trainable = trainable_mask(params, cfg.freeze_layers) if cfg.freeze_layers else None
    schedule = learning_rate_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        return clipped_adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             decays=decay_mask(params), clip_norm=cfg.clip_norm, trainable=trainable)
    # frozen entries: gradients zeroed before the norm, updates after the step (decay included)
    parts = [] if trainable is None else [_masked(trainable)]
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optimizers.BUILDERS[cfg.name](cfg, schedule, decay_mask(params), stacked_mask(params)))
    if trainable is not None:
        parts.append(_masked(trainable))
    return optimizers.layout_aware(optax.chain(*parts), params)
