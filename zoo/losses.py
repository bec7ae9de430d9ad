"""Losses shared by every family, returned as sums so that micro-batches and hosts add up exactly."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits_BLV: jax.Array, targets_BL: jax.Array, weights_BL: jax.Array,
                       z_loss: float = 0.0, label_smoothing: float = 0.0) -> dict[str, jax.Array]:
    """Summed token cross-entropy (nats), weight and correct predictions; softmax in float32.

    With `label_smoothing` a, the targets are (1 - a) one-hot + a uniform over the vocabulary (as
    torch's CrossEntropyLoss(label_smoothing=a)); with `z_loss` c, each token adds c * log(Z)^2, Z
    the softmax normaliser (PaLM, T5X), which keeps the logits from drifting. `loss_sum` is then
    the objective with both, `nll_sum` the plain cross-entropy and `z_loss_sum` the z-loss part;
    at 0 (the defaults) `loss_sum` is the plain cross-entropy and the other two are absent.
    """
    logits_BLV = logits_BLV.astype(jnp.float32)
    log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
    target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
    nll_BL = log_z_BL - target_logit_BL
    correct_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
    weights_BL = weights_BL.astype(jnp.float32)
    sums = {
        "loss_sum": jnp.sum(nll_BL * weights_BL),
        "weight_sum": jnp.sum(weights_BL),
        "correct_sum": jnp.sum(correct_BL * weights_BL),
    }
    if not (z_loss or label_smoothing):
        return sums
    loss_BL = nll_BL
    if label_smoothing:
        uniform_BL = log_z_BL - jnp.mean(logits_BLV, axis=-1)  # cross-entropy against the uniform distribution
        loss_BL = (1.0 - label_smoothing) * nll_BL + label_smoothing * uniform_BL
    if z_loss:
        z_BL = z_loss * jnp.square(log_z_BL)
        loss_BL = loss_BL + z_BL
        sums["z_loss_sum"] = jnp.sum(z_BL * weights_BL)
    sums["nll_sum"] = sums["loss_sum"]
    sums["loss_sum"] = jnp.sum(loss_BL * weights_BL)
    return sums


def train_options(train: bool, z_loss: float, label_smoothing: float) -> dict[str, float]:
    """The `cross_entropy_sums` options of a training pass; evaluation scores plain cross-entropy."""
    return {"z_loss": z_loss, "label_smoothing": label_smoothing} if train else {}


def training_options(optim: Any) -> dict[str, float]:
    """The training-loss options an OptimConfig sets (`optim.z_loss`, `optim.label_smoothing`)."""
    return {"z_loss": optim.z_loss, "label_smoothing": optim.label_smoothing}
