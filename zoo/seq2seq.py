"""Encoder-decoder decoding (greedy, temperature/top-k/top-p sampling, beam search) and its metrics.

The encoder runs once. The decoder runs one token per step inside a jitted loop, with a cache
holding its self-attention keys/values and the cross-attention keys/values of the encoder output,
which are projected on the first step only. Encoder inputs are right-padded (segment 0) to a
multiple of `PAD_MULTIPLE`, so prompts of similar lengths share one compilation; every decoder row
starts at position 0 with the start id (T5: pad = 0).

The model must provide `encode(tokens, segments)` and `decode(tokens, encoded, encoder_segments,
decoder_segments, decode=...)` methods (see models/t5.py).

Beam search keeps `num_beams` live hypotheses per input; a hypothesis that emits EOS is finished
with score sum(log p) / length ** length_penalty (length counts generated tokens, EOS included,
as in Hugging Face). It runs `max_new_tokens` steps and returns the best finished hypothesis,
or the best live one scored the same way if none finished.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo import layers
from zoo.decode import sample_logits

PAD_MULTIPLE = 16
START_ID = 0


def right_pad(inputs: list[list[int]], pad_id: int, multiple: int = PAD_MULTIPLE) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and segments (0 = padding) of right-padded encoder inputs."""
    if not inputs or any(len(x) == 0 for x in inputs):
        raise ValueError("every input needs at least one token")
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

    With `per_layer`, params and cache come from `layers.split_layers` (the token loop's form).
    """
    logits, updated = model.apply({"params": params, "cache": cache}, tokens_B1, encoded_BSD, segments_BS,
                                  decode=True, per_layer=per_layer, mutable=["cache"], method="decode")
    return logits[:, -1], updated["cache"]


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _sample(model: nn.Module, params: Any, tokens_BS: jax.Array, segments_BS: jax.Array, rng: jax.Array,
            temperature: jax.Array, top_k: jax.Array, top_p: jax.Array, max_new_tokens: int) -> jax.Array:
    B = tokens_BS.shape[0]
    logits_BV, cache = _first_step(model, params, tokens_BS, segments_BS, B, max_new_tokens)
    pick = lambda logits, i: sample_logits(logits, jax.random.fold_in(rng, i), temperature, top_k, top_p)
    out_BT = jnp.zeros((B, max_new_tokens), jnp.int32).at[:, 0].set(pick(logits_BV, 0))
    if max_new_tokens == 1:
        return out_BT
    params, cache = layers.split_layers(params), layers.split_layers(cache)  # later steps read weights

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
    params, cache = layers.split_layers(params), layers.split_layers(cache)
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


def generate(model: nn.Module, params: Any, inputs: list[list[int]], max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             num_beams: int = 1, length_penalty: float = 1.0, eos_id: int | None = None,
             pad_id: int = 0) -> list[list[int]]:
    """Generated ids for each input (cut after the first `eos_id`): beam search when num_beams > 1,
    else greedy (temperature 0) or sampling."""
    ids, _ = generate_with_scores(model, params, inputs, max_new_tokens, temperature=temperature, top_k=top_k,
                                  top_p=top_p, seed=seed, num_beams=num_beams, length_penalty=length_penalty,
                                  eos_id=eos_id, pad_id=pad_id)
    return ids


def generate_with_scores(model: nn.Module, params: Any, inputs: list[list[int]], max_new_tokens: int, *,
                         temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                         num_beams: int = 1, length_penalty: float = 1.0, eos_id: int | None = None,
                         pad_id: int = 0) -> tuple[list[list[int]], np.ndarray | None]:
    """`generate`, plus each hypothesis' beam score (None unless num_beams > 1)."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if num_beams < 1:
        raise ValueError("num_beams must be at least 1")
    tokens, segments = right_pad(inputs, pad_id)
    scores = None
    if num_beams > 1:
        if temperature > 0:
            raise ValueError("beam search is deterministic; do not combine num_beams > 1 with temperature")
        out, scores = _beam_search(model, params, tokens, segments, jnp.float32(length_penalty),
                                   jnp.int32(-1 if eos_id is None else eos_id), max_new_tokens, num_beams)
        scores = np.asarray(scores)
    else:
        out = _sample(model, params, tokens, segments, jax.random.key(seed), jnp.float32(temperature),
                      jnp.int32(top_k), jnp.float32(top_p), max_new_tokens)
    result = []
    for row in np.asarray(out).tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id) + 1]
        result.append(row)
    return result, scores


def beam_search(model: nn.Module, params: Any, inputs: list[list[int]], max_new_tokens: int, num_beams: int, *,
                length_penalty: float = 1.0, eos_id: int = 1, pad_id: int = 0) -> tuple[list[list[int]], np.ndarray]:
    """Beam search for any num_beams (1 included, unlike `generate`): (ids cut after EOS, scores)."""
    tokens, segments = right_pad(inputs, pad_id)
    out, scores = _beam_search(model, params, tokens, segments, jnp.float32(length_penalty), jnp.int32(eos_id),
                               max_new_tokens, num_beams)
    rows = [r[: r.index(eos_id) + 1] if eos_id in r else r for r in np.asarray(out).tolist()]
    return rows, np.asarray(scores)


# ---- evaluation of generated text ---------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of lowercased word sequences (longest common subsequence)."""
    a, b = _words(prediction), _words(reference)
    if not a or not b:
        return float(a == b)
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def evaluate_generation(model: nn.Module, params: Any, tokenizer: Any, pairs: list[dict[str, str]], *,
                        max_input_len: int = 512, max_new_tokens: int = 64, batch_size: int = 16,
                        limit: int = 0, **sampling: Any) -> dict[str, Any]:
    """Exact match, corpus BLEU (sacrebleu) and mean ROUGE-L F1 of targets generated for input/target pairs.

    Inputs are cut to `max_input_len` tokens (EOS included); `limit` > 0 evaluates the first `limit`
    pairs; `sampling` goes to `generate` (greedy by default). Texts are compared after stripping.
    """
    try:
        import sacrebleu
    except ImportError:
        raise ValueError("BLEU needs sacrebleu: pip install 'zoo[eval]'") from None
    pairs = pairs[: limit or None]
    predictions: list[str] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        inputs = [ids[: max_input_len - 1] + [tokenizer.eos_id]
                  for ids in tokenizer.encode_batch([p["input"] for p in chunk])]
        out = generate(model, params, inputs, max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                       **sampling)
        predictions += [tokenizer.decode([t for t in row if t != tokenizer.eos_id]).strip() for row in out]
    references = [p["target"].strip() for p in pairs]
    return {"exact_match": float(np.mean([p == r for p, r in zip(predictions, references)])),
            "bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score),
            "rouge_l": float(np.mean([rouge_l(p, r) for p, r in zip(predictions, references)])),
            "generated": len(predictions),
            "samples": [{"input": p["input"][:200], "target": r, "output": o}
                        for p, r, o in list(zip(pairs, references, predictions))[:3]]}
