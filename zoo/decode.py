"""Autoregressive decoding with a key/value cache: greedy, temperature, top-k and top-p sampling.

Prompts of different lengths are left-padded; padding has segment 0, so it is masked out of
attention, and positions count only real tokens. The prompt is processed in one forward pass
(prefill), then one token per step inside a jitted `lax.fori_loop`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo import layers


def sample_logits(logits_BV: jax.Array, rng: jax.Array, temperature: jax.Array, top_k: jax.Array,
                  top_p: jax.Array) -> jax.Array:
    """Next token ids: argmax when temperature is 0, else a sample from the filtered distribution.

    `top_k` = 0 and `top_p` = 1 disable those filters; all three may be traced values.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    # lax.cond, not jnp.where: greedy decoding must not pay for the sort over the vocabulary
    return jax.lax.cond(temperature > 0,
                        lambda: _filtered_sample(logits_BV, rng, temperature, top_k, top_p),
                        lambda: jnp.argmax(logits_BV, axis=-1).astype(jnp.int32))


def _filtered_sample(logits_BV: jax.Array, rng: jax.Array, temperature: jax.Array, top_k: jax.Array,
                     top_p: jax.Array) -> jax.Array:
    V = logits_BV.shape[-1]
    scaled_BV = logits_BV / jnp.maximum(temperature, 1e-6)
    sorted_BV = jnp.sort(scaled_BV, axis=-1)[:, ::-1]  # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    kth_B1 = jnp.take_along_axis(sorted_BV, jnp.broadcast_to(k - 1, (sorted_BV.shape[0], 1)), axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    # keep the smallest prefix whose mass reaches top_p (always at least the top token)
    outside_BV = (jnp.cumsum(probs_BV, axis=-1) - probs_BV) >= top_p
    nucleus_min_B1 = jnp.min(jnp.where(outside_BV, jnp.inf, sorted_BV), axis=-1, keepdims=True)
    threshold_B1 = jnp.maximum(kth_B1, nucleus_min_B1)
    filtered_BV = jnp.where(scaled_BV >= threshold_B1, scaled_BV, -jnp.inf)
    return jax.random.categorical(rng, filtered_BV, axis=-1).astype(jnp.int32)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens, segments (0 = padding) and positions of left-padded prompts."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    segments = np.zeros_like(tokens)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = p
        segments[i, width - len(p):] = 1
    positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0).astype(np.int32)
    return tokens, segments, positions


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _generate(model: nn.Module, params: Any, tokens_BP: jax.Array, segments_BP: jax.Array,
              positions_BP: jax.Array, rng: jax.Array, temperature: jax.Array, top_k: jax.Array,
              top_p: jax.Array, max_new_tokens: int) -> jax.Array:
    B, P = tokens_BP.shape
    cache_shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((B, P + max_new_tokens), jnp.int32), decode=True)["cache"])
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)
    pick = lambda logits_BV, i: sample_logits(logits_BV, jax.random.fold_in(rng, i), temperature, top_k, top_p)

    def forward(params: Any, cache: Any, tokens: jax.Array, segments: jax.Array, positions: jax.Array,
                per_layer: bool) -> tuple[jax.Array, Any]:
        logits, updated = model.apply({"params": params, "cache": cache}, tokens, segments, positions,
                                      decode=True, last_only=True, per_layer=per_layer, mutable=["cache"])
        return logits[:, -1], updated["cache"]

    # the prompt is compute-bound: one pass through the scanned stack
    logits_BV, cache = forward(params, cache, tokens_BP, segments_BP, positions_BP, per_layer=False)
    out_BT = jnp.zeros((B, max_new_tokens), jnp.int32).at[:, 0].set(pick(logits_BV, 0))
    if max_new_tokens == 1:
        return out_BT
    # one token per step is bound by reading the weights: run the layers on separate buffers
    params, cache = layers.split_layers(params), layers.split_layers(cache)
    ones_B1 = jnp.ones((B, 1), jnp.int32)

    def body(i: int, carry: tuple) -> tuple:
        cache, out_BT, position_B1 = carry
        position_B1 = position_B1 + 1
        logits_BV, cache = forward(params, cache, out_BT[:, i - 1, None], ones_B1, position_B1, per_layer=True)
        return cache, out_BT.at[:, i].set(pick(logits_BV, i)), position_B1

    _, out_BT, _ = jax.lax.fori_loop(1, max_new_tokens, body, (cache, out_BT, positions_BP[:, -1:]))
    return out_BT


def generate(model: nn.Module, params: Any, prompts: list[list[int]], max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             eos_id: int | None = None, pad_id: int = 0) -> list[list[int]]:
    """New token ids for each prompt (cut after the first `eos_id`), from a decoder-only model."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    tokens, segments, positions = left_pad(prompts, pad_id)
    out = _generate(model, params, tokens, segments, positions, jax.random.key(seed),
                    jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), max_new_tokens)
    result = []
    for row in np.asarray(out).tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id) + 1]
        result.append(row)
    return result
