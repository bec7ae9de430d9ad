"""Learning-rate schedules by name (`optim.schedule`), each a linear warmup then its own shape.

With `w` warmup steps, peak `lr` (`optim.learning_rate`), floor `lr * min_lr_ratio` and `T` total
steps, the rate at step t (counted from 0) is, after warmup (t >= w):

- `cosine`:   half a cosine from lr at t = w down to the floor at t = T (optax's warmup_cosine_decay)
- `linear`:   a straight line from lr at t = w down to the floor at t = T
- `constant`: lr
- `rsqrt`:    lr * sqrt(w / t), T5's inverse square root `1 / sqrt(max(t, w))` scaled so that it
  reaches lr at the end of warmup (w counts as 1 when there is no warmup); it never reaches the floor
- `wsd`:      warmup-stable-decay: lr until the last `decay_fraction * T` steps, then a straight line
  down to the floor at t = T

and, during warmup (t < w), lr * t / w, the same for every schedule. The warmup is shortened to
T - 1 steps when it would not end before the run does.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import optax

from zoo.config import OptimConfig


def _linear_warmup(peak: float, warmup: int, after: Callable[[jnp.ndarray], jnp.ndarray]) -> optax.Schedule:
    """`after(t)` for t >= warmup, preceded by a straight line from 0 up to `peak`."""
    def schedule(count: jnp.ndarray) -> jnp.ndarray:
        t = jnp.asarray(count, jnp.float32)
        warm = peak * t / max(warmup, 1)
        return jnp.where(t < warmup, warm, after(t))

    return schedule


def _decay_line(peak: float, floor: float, start: float, end: float) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """peak until `start`, then straight down to `floor` at `end`, then `floor`."""
    def line(t: jnp.ndarray) -> jnp.ndarray:
        frac = jnp.clip((t - start) / max(end - start, 1.0), 0.0, 1.0)
        return peak + (floor - peak) * frac

    return line


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """The learning rate at each step of a `total_steps` run, as `cfg.schedule` names (see the module doc)."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    if cfg.schedule == "cosine":  # today's schedule, unchanged
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1), end_value=floor)
    if cfg.schedule == "linear":
        return _linear_warmup(peak, warmup, _decay_line(peak, floor, warmup, total_steps))
    if cfg.schedule == "constant":
        return _linear_warmup(peak, warmup, lambda t: jnp.full_like(t, peak))
    if cfg.schedule == "rsqrt":
        scale = max(warmup, 1)
        return _linear_warmup(peak, warmup, lambda t: peak * jnp.sqrt(scale / jnp.maximum(t, scale)))
    if cfg.schedule == "wsd":
        decay_start = max(total_steps - round(cfg.decay_fraction * total_steps), warmup)
        return _linear_warmup(peak, warmup, _decay_line(peak, floor, decay_start, total_steps))
    raise ValueError(f"unknown schedule {cfg.schedule!r}")  # the config's Literal rejects it first
