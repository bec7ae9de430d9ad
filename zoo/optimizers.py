"""The optimizers `optim.name` selects besides the one-pass AdamW of `zoo.optim`, built on optax.

Each builder gives the optimizer's own step (learning rate and weight decay included) for
already-clipped gradients; `zoo.optim.make_optimizer` adds freezing and global-norm clipping around
it. Weight decay (`optim.weight_decay`) is decoupled and multiplied by the learning rate, on the
leaves the decay mask selects, for every optimizer except `adam` (none) and `sgd` (added to the
gradient before momentum, as torch's SGD does); `lamb` decays inside its trust ratio, as LAMB is
defined.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np
import optax

from zoo import adamp as adamp_lib
from zoo.config import OptimConfig

ADAFACTOR_EPS = 1e-30  # T5X's epsilon1: floor of the squared gradient


def adam(cfg: OptimConfig, schedule: optax.Schedule, decays: Any, stacked: Any) -> optax.GradientTransformation:
    """Adam without weight decay."""
    return optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


def matrix_view(shape: tuple[int, ...], stacked: bool, min_dim: int) -> tuple[int, ...]:
    """The shape Adafactor factors a leaf as: its dims (after a stacked `layers` axis) grouped into
    the most even rows x columns, as T5X's factor rules do ([D, H, K] -> [D, H*K], [H, K, D] -> [H*K, D]),
    when both groups reach `min_dim`; otherwise the shape itself."""
    lead, rest = (shape[:1], shape[1:]) if stacked else ((), shape)
    if len(rest) <= 2:
        return tuple(shape)
    splits = [(math.prod(rest[:k]), math.prod(rest[k:])) for k in range(1, len(rest))]
    rows, cols = min(splits, key=lambda rc: abs(math.log(rc[0] / rc[1])))
    return (*lead, rows, cols) if min(rows, cols) >= min_dim else tuple(shape)


def as_matrices(tx: optax.GradientTransformation, stacked: Any, min_dim: int) -> optax.GradientTransformation:
    """`tx` run on every leaf reshaped to its `matrix_view` (`stacked`: the stacked-layer mask); the
    updates come back in the params' shapes."""
    def to_view(tree: Any) -> Any:
        return jax.tree.map(lambda x, s: x.reshape(matrix_view(x.shape, s, min_dim)), tree, stacked)

    def init(params: Any) -> Any:
        return tx.init(to_view(params))

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        new, state = tx.update(to_view(updates), state, None if params is None else to_view(params))
        return jax.tree.map(lambda u, old: u.reshape(old.shape), new, updates), state

    return optax.GradientTransformation(init, update)


def adafactor(cfg: OptimConfig, schedule: optax.Schedule, decays: Any, stacked: Any) -> optax.GradientTransformation:
    """Adafactor as T5X runs it: factored second moments with decay rate 1 - t^-0.8, updates clipped to
    RMS `adafactor_clip`, the step relative to each param's RMS (floored at 1e-3), no momentum.

    Attention weights ([D, H, K] and the like) are factored as matrices (`matrix_view`). The clipping
    and relative-step RMS are taken over a whole leaf, so over all layers of a scanned stack at once
    (T5X's scanned models take them per layer).
    """
    wd = cfg.weight_decay
    return as_matrices(optax.adafactor(
        schedule, min_dim_size_to_factor=cfg.adafactor_min_dim, decay_rate=cfg.adafactor_decay_rate,
        multiply_by_parameter_scale=cfg.adafactor_param_scale,
        clipping_threshold=cfg.adafactor_clip if cfg.adafactor_clip > 0 else None,
        factored=cfg.adafactor_factored, eps=ADAFACTOR_EPS,
        # optax adds the decay after the learning rate: scaling the rate by it keeps decay decoupled
        weight_decay_rate=(lambda count: wd * schedule(count)) if wd > 0 else None,
        weight_decay_mask=decays), stacked, cfg.adafactor_min_dim)


def lamb(cfg: OptimConfig, schedule: optax.Schedule, decays: Any, stacked: Any) -> optax.GradientTransformation:
    """LAMB: Adam's direction plus weight decay, scaled per leaf by the trust ratio ||w|| / ||u||."""
    return optax.lamb(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decays)


def lion(cfg: OptimConfig, schedule: optax.Schedule, decays: Any, stacked: Any) -> optax.GradientTransformation:
    """Lion: the sign of an interpolation of momentum and gradient (b1), momentum decaying with b2."""
    return optax.lion(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decays)


def sgd(cfg: OptimConfig, schedule: optax.Schedule, decays: Any, stacked: Any) -> optax.GradientTransformation:
    """SGD with optional (Nesterov) momentum; weight decay added to the gradient, as torch's SGD does."""
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decays),
                       optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))


def adamp(cfg: OptimConfig, schedule: optax.Schedule, decays: Any, stacked: Any) -> optax.GradientTransformation:
    """AdamP (zoo.adamp): Adam whose steps on scale-invariant weights are projected, decay scaled down."""
    return adamp_lib.adamp(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                           delta=cfg.adamp_delta, wd_ratio=cfg.adamp_wd_ratio, nesterov=cfg.nesterov,
                           decays=decays, stacked=stacked)


BUILDERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": adam, "adafactor": adafactor, "lamb": lamb, "lion": lion, "sgd": sgd, "adamp": adamp,
}


def layout_aware(tx: optax.GradientTransformation, params: Any) -> optax.GradientTransformation:
    """`tx`, whose init also answers optax.tree_map_params (how zoo.steps shards optimizer state).

    tree_map_params calls init with a stand-in for the params and gives every part of the returned
    state that is the stand-in the params' shardings, and every other leaf a replicated one. Optax's
    own inits put the stand-in where the params' tree goes, which breaks on states whose trees
    follow the params but whose leaves have other shapes (Adafactor's factored row and column
    moments). Here init, given anything that is not a tree like `params`, returns the stand-in for
    just the subtrees whose leaves all have their param's shape (Adam's moments: sharded like the
    params, ZeRO-style) and a leaf for every other array (replicated: factored moments are small).
    """
    treedef = jax.tree.structure(params)
    shapes = [_shape(x) for x in jax.tree.leaves(params)]

    def param_like(node: Any) -> bool:
        return jax.tree.structure(node) == treedef and [_shape(x) for x in jax.tree.leaves(node)] == shapes

    def init(given: Any) -> Any:
        if jax.tree.structure(given) == treedef:
            return tx.init(given)
        abstract = jax.eval_shape(tx.init, jax.tree.map(lambda x: jax.ShapeDtypeStruct(_shape(x), x.dtype), params))
        return jax.tree.map(lambda node: given if param_like(node) else 0, abstract, is_leaf=param_like)

    return optax.GradientTransformation(init, tx.update)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", np.shape(x)))


def state_bytes_per_param(tx: optax.GradientTransformation, params: Any) -> float:
    """Bytes of optimizer state per parameter scalar (Adam in float32: 8)."""
    state = jax.eval_shape(tx.init, params)
    size = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
    return size / max(sum(math.prod(_shape(x)) for x in jax.tree.leaves(params)), 1)
