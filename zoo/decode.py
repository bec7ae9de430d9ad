"""Autoregressive decoding with a key/value cache, for decoder-only and encoder-decoder models.

Decoder-only (`generate_causal`): prompts of different lengths are left-padded; padding has
segment 0, so it is masked out of attention, and positions count only real tokens. The prompt is
processed in one forward pass (prefill), then one token per step inside a jitted `lax.fori_loop`.

Encoder-decoder (`generate_seq2seq`, `beam_search`): the encoder runs once; the decoder cache holds
its self-attention keys/values and the cross-attention keys/values of the encoder output, projected
on the first step only. Encoder inputs are right-padded (segment 0) to a multiple of
`PAD_MULTIPLE`, so inputs of similar lengths share one compilation; every decoder row starts at
position 0 with the start id (T5: pad = 0). The model provides `encode(tokens, segments)` and
`decode(tokens, encoded, encoder_segments, decoder_segments, decode=...)` (see models/t5).

Greedy (temperature 0), temperature, top-k and top-p sampling work for both. Beam search keeps
`num_beams` live hypotheses per input; a hypothesis that emits EOS is finished with score
sum(log p) / length ** length_penalty (length counts generated tokens, EOS included, as in Hugging
Face). It runs `max_new_tokens` steps and returns the best finished hypothesis, or the best live
one scored the same way if none finished.

One EOS rule everywhere (`cut_at_eos`): a generated row ends after its first EOS, kept in the ids
and dropped from the text.

Bad arguments (an empty prompt, a token id outside the model's `cfg.vocab_size`, a prompt that does
not fit the context, temperature < 0, top_p outside (0, 1], ...) raise a one-line ZooValueError
before anything is compiled, never NaN or empty output.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo import stacking
from zoo.errors import ZooValueError

PAD_MULTIPLE = 16
START_ID = 0


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
        raise ZooValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    segments = np.zeros_like(tokens)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = p
        segments[i, width - len(p):] = 1
    positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0).astype(np.int32)
    return tokens, segments, positions


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _generate_causal(model: nn.Module, params: Any, tokens_BP: jax.Array, segments_BP: jax.Array,
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
    params, cache = stacking.split_layers(params), stacking.split_layers(cache)
    ones_B1 = jnp.ones((B, 1), jnp.int32)

    def body(i: int, carry: tuple) -> tuple:
        cache, out_BT, position_B1 = carry
        position_B1 = position_B1 + 1
        logits_BV, cache = forward(params, cache, out_BT[:, i - 1, None], ones_B1, position_B1, per_layer=True)
        return cache, out_BT.at[:, i].set(pick(logits_BV, i)), position_B1

    _, out_BT, _ = jax.lax.fori_loop(1, max_new_tokens, body, (cache, out_BT, positions_BP[:, -1:]))
    return out_BT


def right_pad(inputs: list[list[int]], pad_id: int, multiple: int = PAD_MULTIPLE) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and segments (0 = padding) of right-padded encoder inputs."""
    if not inputs or any(len(x) == 0 for x in inputs):
        raise ZooValueError("every input needs at least one token")
    width = -(-max(len(x) for x in inputs) // multiple) * multiple
    tokens = np.full((len(inputs), width), pad_id, np.int32)
    segments = np.zeros_like(tokens)
    for i, x in enumerate(inputs):
        tokens[i, : len(x)], segments[i, : len(x)] = x, 1
    return tokens, segments


def _empty_cache(model: nn.Module, batch: int, enc_len: int, dec_len: int) -> Any:
    """A zero decoder cache for `batch` rows, `enc_len` encoder and `dec_len` decoder positions."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((batch, enc_len), jnp.int32),
                                               jnp.ones((batch, dec_len), jnp.int32), decode=True)["cache"])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _step(model: nn.Module, params: Any, cache: Any, tokens_B1: jax.Array, encoded_BSD: jax.Array | None,
          segments_BS: jax.Array | None, per_layer: bool = False) -> tuple[jax.Array, Any]:
    """Logits [B, V] for one new decoder token per row, and the updated cache.

    With `per_layer`, params and cache come from `stacking.split_layers` (the token loop's form).
    """
    logits, updated = model.apply({"params": params, "cache": cache}, tokens_B1, encoded_BSD, segments_BS,
                                  decode=True, per_layer=per_layer, mutable=["cache"], method="decode")
    return logits[:, -1], updated["cache"]


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _sample_seq2seq(model: nn.Module, params: Any, tokens_BS: jax.Array, segments_BS: jax.Array, rng: jax.Array,
            temperature: jax.Array, top_k: jax.Array, top_p: jax.Array, max_new_tokens: int) -> jax.Array:
    B = tokens_BS.shape[0]
    logits_BV, cache = _first_step(model, params, tokens_BS, segments_BS, B, max_new_tokens)
    pick = lambda logits, i: sample_logits(logits, jax.random.fold_in(rng, i), temperature, top_k, top_p)
    out_BT = jnp.zeros((B, max_new_tokens), jnp.int32).at[:, 0].set(pick(logits_BV, 0))
    if max_new_tokens == 1:
        return out_BT
    params, cache = stacking.split_layers(params), stacking.split_layers(cache)  # later steps read weights

    def body(i: int, carry: tuple) -> tuple:
        cache, out_BT = carry
        logits_BV, cache = _step(model, params, cache, out_BT[:, i - 1, None], None, None, per_layer=True)
        return cache, out_BT.at[:, i].set(pick(logits_BV, i))

    _, out_BT = jax.lax.fori_loop(1, max_new_tokens, body, (cache, out_BT))
    return out_BT


def _first_step(model: nn.Module, params: Any, tokens_BS: jax.Array, segments_BS: jax.Array, rows: int,
                max_new_tokens: int) -> tuple[jax.Array, Any]:
    """Encode, then the first decoder step for `rows` rows (inputs repeated to fill them): logits, cache."""
    encoded_BSD = model.apply({"params": params}, tokens_BS, segments_BS, method="encode")
    repeats = rows // tokens_BS.shape[0]  # beam search: beam w of input b is row b * W + w
    encoded_RSD, segments_RS = jnp.repeat(encoded_BSD, repeats, axis=0), jnp.repeat(segments_BS, repeats, axis=0)
    cache = _empty_cache(model, rows, tokens_BS.shape[1], max_new_tokens)
    return _step(model, params, cache, jnp.full((rows, 1), START_ID, jnp.int32), encoded_RSD, segments_RS)


def _reorder(cache: Any, rows: jax.Array) -> Any:
    """Gather the decoder self-attention cache by row (beam search's surviving parents).

    The token loop runs per-layer caches, whose entries are [batch, ...]; the cross-attention ones
    are the same for every beam of an input and are left alone, as are the scalar cache indices.
    """
    def gather(path: tuple, x: jax.Array) -> jax.Array:
        keys = [str(getattr(k, "key", k)) for k in path]
        if "layers" in keys and x.ndim >= 1 and not keys[-1].startswith("cross"):
            return jnp.take(x, rows, axis=0)
        return x

    return jax.tree_util.tree_map_with_path(gather, cache)


def _length_norm(length: jax.Array | int, penalty: jax.Array) -> jax.Array:
    return jnp.asarray(length, jnp.float32) ** penalty


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "num_beams"))
def _beam_search(model: nn.Module, params: Any, tokens_BS: jax.Array, segments_BS: jax.Array,
                 length_penalty: jax.Array, eos_id: jax.Array, max_new_tokens: int,
                 num_beams: int) -> tuple[jax.Array, jax.Array]:
    B, W, T = tokens_BS.shape[0], num_beams, max_new_tokens
    logits_RV, cache = _first_step(model, params, tokens_BS, segments_BS, B * W, T)
    params, cache = stacking.split_layers(params), stacking.split_layers(cache)
    V = logits_RV.shape[-1]
    neg_inf = jnp.float32(-jnp.inf)

    def select(i: jax.Array, logits_RV: jax.Array, state: tuple) -> tuple:
        """Extend every live beam by every token; keep the best W live and the best W finished."""
        alive_seq, alive_lp, fin_seq, fin_score = state
        logp_BWV = jax.nn.log_softmax(logits_RV.astype(jnp.float32)).reshape(B, W, V)
        cand_BC = (alive_lp[:, :, None] + logp_BWV).reshape(B, W * V)
        # 2W candidates always hold at least W that do not end in EOS (each beam has one EOS token)
        top_lp, top_idx = jax.lax.top_k(cand_BC, 2 * W)
        parent, token = top_idx // V, (top_idx % V).astype(jnp.int32)
        seqs = jnp.take_along_axis(alive_seq, parent[:, :, None], axis=1).at[:, :, i].set(token)
        is_eos = token == eos_id
        new_fin = jnp.where(is_eos, top_lp / _length_norm(i + 1, length_penalty), neg_inf)
        fin_score, keep = jax.lax.top_k(jnp.concatenate([fin_score, new_fin], axis=1), W)
        fin_seq = jnp.take_along_axis(jnp.concatenate([fin_seq, seqs], axis=1), keep[:, :, None], axis=1)
        alive_lp, keep = jax.lax.top_k(jnp.where(is_eos, neg_inf, top_lp), W)
        alive_seq = jnp.take_along_axis(seqs, keep[:, :, None], axis=1)
        rows = (jnp.arange(B)[:, None] * W + jnp.take_along_axis(parent, keep, axis=1)).reshape(-1)
        tokens = jnp.take_along_axis(token, keep, axis=1).reshape(-1)
        return (alive_seq, alive_lp, fin_seq, fin_score), rows, tokens

    def body(i: int, carry: tuple) -> tuple:
        logits_RV, cache, state = carry
        state, rows, tokens_R = select(i, logits_RV, state)
        logits_RV, cache = _step(model, params, _reorder(cache, rows), tokens_R[:, None], None, None, per_layer=True)
        return logits_RV, cache, state

    first_lp = jnp.where(jnp.arange(W) == 0, 0.0, neg_inf)  # one live beam at first, so no duplicates
    state = (jnp.zeros((B, W, T), jnp.int32), jnp.broadcast_to(first_lp, (B, W)),
             jnp.zeros((B, W, T), jnp.int32), jnp.full((B, W), neg_inf))
    logits_RV, _, state = jax.lax.fori_loop(0, T - 1, body, (logits_RV, cache, state))
    (alive_seq, alive_lp, fin_seq, fin_score), _, _ = select(T - 1, logits_RV, state)
    scores = jnp.concatenate([fin_score, alive_lp / _length_norm(T, length_penalty)], axis=1)
    best = jnp.argmax(scores, axis=1)
    seqs = jnp.concatenate([fin_seq, alive_seq], axis=1)
    return seqs[jnp.arange(B), best], scores[jnp.arange(B), best]


def cut_at_eos(rows: list[list[int]], eos_id: int | None) -> list[list[int]]:
    """Each row up to and including its first `eos_id` (rows without one unchanged)."""
    if eos_id is None:
        return rows
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in rows]


def check_sampling(max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   num_beams: int = 1) -> None:
    """Raise ZooValueError (one line) for a length or sampling argument that cannot work."""
    # written as `not ok` so that NaN fails too
    if not max_new_tokens >= 1:
        raise ZooValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not num_beams >= 1:
        raise ZooValueError(f"num_beams must be at least 1 (1: no beam search), got {num_beams}")
    if not temperature >= 0:
        raise ZooValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if not top_k >= 0:
        raise ZooValueError(f"top_k must be >= 0 (0: no top-k filter), got {top_k}")
    if not 0 < top_p <= 1:
        raise ZooValueError(f"top_p must be in (0, 1] (1: no nucleus filter), got {top_p}")


def check_ids(rows: Any, vocab_size: int, what: str = "prompt") -> None:
    """Raise ZooValueError if there are no rows, a row is empty, or an id is outside [0, vocab_size)."""
    if len(rows) == 0:
        raise ZooValueError(f"no {what}s given; pass at least one")
    for i, row in enumerate(rows):
        ids = np.asarray(row).reshape(-1)
        if ids.size == 0:
            raise ZooValueError(f"{what} {i} has no tokens; give every {what} at least one token")
        bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
        if bad.size:
            j = int(bad[0])
            raise ZooValueError(f"{what} {i} holds token id {ids[j]} at position {j}, outside the model's "
                                f"vocabulary [0, {vocab_size}); use the model's own tokenizer or ids below "
                                f"{vocab_size}")


def _check_context(prompts: list[list[int]], max_new_tokens: int, max_len: int) -> None:
    """Raise ZooValueError if the longest prompt plus max_new_tokens needs more than max_len positions."""
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    n = len(prompts[longest])
    if n + max_new_tokens > max_len:
        raise ZooValueError(f"prompt {longest} has {n} tokens; with max_new_tokens {max_new_tokens} that is "
                            f"{n + max_new_tokens} positions, more than the model's max_len {max_len}; "
                            f"shorten the prompt or lower max_new_tokens")


def generate_causal(model: nn.Module, params: Any, prompts: list[list[int]], max_new_tokens: int, *,
                    temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                    eos_id: int | None = None, pad_id: int = 0) -> list[list[int]]:
    """New token ids for each prompt (cut after the first `eos_id`), from a decoder-only model.

    A prompt that cannot grow by max_new_tokens within the model's context (`cfg.max_len`) is an error.
    """
    check_sampling(max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    check_ids(prompts, model.cfg.vocab_size)
    _check_context(prompts, max_new_tokens, model.cfg.max_len)
    tokens, segments, positions = left_pad(prompts, pad_id)
    out = _generate_causal(model, params, tokens, segments, positions, jax.random.key(seed),
                           jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), max_new_tokens)
    return cut_at_eos(np.asarray(out).tolist(), eos_id)


def generate_seq2seq(model: nn.Module, params: Any, inputs: list[list[int]], max_new_tokens: int, *,
                     temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                     num_beams: int = 1, length_penalty: float = 1.0, eos_id: int | None = None,
                     pad_id: int = 0) -> list[list[int]]:
    """Generated ids for each encoder input (cut after the first `eos_id`): beam search when
    num_beams > 1, else greedy (temperature 0) or sampling."""
    check_sampling(max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams)
    check_ids(inputs, model.cfg.vocab_size, what="input")
    if num_beams > 1:
        if temperature > 0:
            raise ZooValueError("beam search is deterministic; do not combine num_beams > 1 with temperature")
        return beam_search(model, params, inputs, max_new_tokens, num_beams, length_penalty=length_penalty,
                           eos_id=eos_id, pad_id=pad_id)[0]
    tokens, segments = right_pad(inputs, pad_id)
    out = _sample_seq2seq(model, params, tokens, segments, jax.random.key(seed), jnp.float32(temperature),
                          jnp.int32(top_k), jnp.float32(top_p), max_new_tokens)
    return cut_at_eos(np.asarray(out).tolist(), eos_id)


def beam_search(model: nn.Module, params: Any, inputs: list[list[int]], max_new_tokens: int, num_beams: int, *,
                length_penalty: float = 1.0, eos_id: int | None = None,
                pad_id: int = 0) -> tuple[list[list[int]], np.ndarray]:
    """Beam search for any num_beams (1 included): (ids cut after EOS, each hypothesis' score)."""
    check_sampling(max_new_tokens, num_beams=num_beams)
    check_ids(inputs, model.cfg.vocab_size, what="input")
    tokens, segments = right_pad(inputs, pad_id)
    out, scores = _beam_search(model, params, tokens, segments, jnp.float32(length_penalty),
                               jnp.int32(-1 if eos_id is None else eos_id), max_new_tokens, num_beams)
    return cut_at_eos(np.asarray(out).tolist(), eos_id), np.asarray(scores)


_SAMPLING_ARGS = ("temperature", "top_k", "top_p", "seed")
_BEAM_ARGS = ("num_beams", "length_penalty")


def _check_text_args(prompts: Any, max_new_tokens: int, encoder_decoder: bool, max_input_len: int,
                     batch_size: int, sampling: dict[str, Any]) -> None:
    """Raise ZooValueError for no prompts, a prompt that is not text, or a bad length or sampling argument."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ZooValueError("prompts must be a list of strings")
    if len(prompts) == 0:
        raise ZooValueError("no prompts given; pass at least one")
    if max_input_len < 0 or batch_size < 0:
        raise ZooValueError(f"max_input_len and batch_size must be >= 0 (0: no limit), "
                            f"got {max_input_len} and {batch_size}")
    known = _SAMPLING_ARGS + (_BEAM_ARGS if encoder_decoder else ())
    unknown = sorted(set(sampling) - set(known))
    if unknown:
        raise ZooValueError(f"unknown generation argument {unknown[0]!r}; use {', '.join(known)}")
    check_sampling(max_new_tokens, **{k: v for k, v in sampling.items() if k not in ("seed", "length_penalty")})


def _encoder_inputs(ids: list[list[int]], prompts: list[str], eos: int, max_input_len: int) -> list[list[int]]:
    """Encoder inputs ending in EOS, cut to max_input_len tokens; a prompt with no tokens is an error."""
    for i, x in enumerate(ids):
        if not x:
            raise ZooValueError(f"prompt {i} ({prompts[i]!r}) tokenizes to nothing; "
                                f"an encoder-decoder needs some input text")
    return [x[: max_input_len - 1] + [eos] if max_input_len else x + [eos] for x in ids]


def generate_text(model: nn.Module, params: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, *,
                  encoder_decoder: bool, max_input_len: int = 0, batch_size: int = 0,
                  **sampling: Any) -> list[str]:
    """Continuations (decoder-only) or answers (encoder-decoder) of text prompts, `batch_size` at a time.

    Encoder inputs end in EOS and are cut to `max_input_len` tokens (0: no limit); an empty causal
    prompt starts from EOS. Greedy unless `sampling` says otherwise (temperature, top_k, top_p,
    seed; num_beams and length_penalty for encoder-decoders). A decoder-only model's
    prompt + max_new_tokens must fit its context, `cfg.max_len` (encoder-decoders have none).
    """
    _check_text_args(prompts, max_new_tokens, encoder_decoder, max_input_len, batch_size, sampling)
    eos = tokenizer.eos_id
    run = functools.partial(generate_seq2seq if encoder_decoder else generate_causal, model, params,
                            max_new_tokens=max_new_tokens, eos_id=eos, pad_id=tokenizer.pad_id, **sampling)
    ids = tokenizer.encode_batch(list(prompts))
    if encoder_decoder:
        ids = _encoder_inputs(ids, list(prompts), eos, max_input_len)
    else:
        ids = [x[-max_input_len:] if max_input_len else x for x in ids]
        ids = [x or [eos] for x in ids]
    check_ids(ids, model.cfg.vocab_size)  # here too, so that messages count prompts across batches
    if not encoder_decoder:
        _check_context(ids, max_new_tokens, model.cfg.max_len)
    size = batch_size or len(ids)
    texts: list[str] = []
    for start in range(0, len(ids), size):
        texts += [tokenizer.decode([t for t in row if t != eos]) for row in run(ids[start:start + size])]
    return texts
