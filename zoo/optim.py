"""AdamW with warmup + cosine decay and global-norm clipping, optionally freezing lower layers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zoo.config import OptimConfig


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then cosine decay to peak * min_lr_ratio at total_steps."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=cfg.learning_rate * cfg.min_lr_ratio)


def _keys(path: tuple) -> list[str]:
    return [str(getattr(k, "key", k)) for k in path]


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: not on biases, norm scales or other vectors."""
    def is_matrix(path: tuple, leaf: Any) -> bool:
        # Scanned params carry a leading `layers` axis; a stacked bias [N, D] is still a vector.
        return np.ndim(leaf) - ("layers" in _keys(path)[:-1]) >= 2

    return jax.tree_util.tree_map_with_path(is_matrix, params)


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


def freeze(mask: Any) -> optax.GradientTransformation:
    """Zero the updates of frozen entries so that those params stay bit-identical."""
    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, mask), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: OptimConfig, total_steps: int, params: Any) -> optax.GradientTransformation:
    """The run's optimizer; `params` (unboxed arrays or shapes) gives the tree for the masks.

    Frozen entries are masked twice: their gradients before clipping (so they do not count in the
    global norm) and their updates after AdamW (so weight decay cannot move them).
    """
    frozen = [freeze(trainable_mask(params, cfg.freeze_layers))] if cfg.freeze_layers else []
    chain = list(frozen)
    if cfg.clip_norm > 0:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    chain.append(optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2,
                             eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask(params)))
    return optax.chain(*chain, *frozen)
