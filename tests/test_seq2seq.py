"""Encoder-decoder decoding (zoo.seq2seq) against the uncached model: greedy, sampling, beam search."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import t5
from zoo import layers, seq2seq

# The shapes of test_t5's tiny Hugging Face model, so that jitted decoding compiles once for both files.
CFG = t5.Config(num_layers=2, num_decoder_layers=2, d_model=32, num_heads=4, head_dim=8, d_ff=48, vocab_size=96,
                relative_attention_num_buckets=8, relative_attention_max_distance=20, activation="gelu_tanh",
                gated_mlp=True, tie_embeddings=False, dropout=0.0)
INPUTS = [[5, 9, 23, 7, 44, 1], [11, 3, 1]]  # different lengths: encoder padding must not leak
STEPS = 6


def random_params(cfg: t5.Config, seed: int = 0):
    """Params of every shape the model wants, drawn with numpy (no init compilation)."""
    shapes = jax.eval_shape(lambda: nn.meta.unbox(t5.init_params(
        t5.Model(cfg), jax.random.key(0), jax.tree.map(jnp.asarray, t5.init_batch(1, 8)))))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.5, s.shape), jnp.float32), shapes)


@pytest.fixture(scope="module")
def setup():
    model = t5.Model(CFG)
    return model, random_params(CFG)


@functools.cache
def _forward(model):
    return jax.jit(lambda params, *args: model.apply({"params": params}, *args))


TOKENS, SEGMENTS = seq2seq.right_pad(INPUTS, 0)


def _decoder_rows(outputs):
    """Decoder inputs [0] + output[:-1], padded to STEPS: every uncached forward here has one shape."""
    rows = np.zeros((len(outputs), STEPS), np.int32)
    for i, out in enumerate(outputs):
        rows[i, 1:len(out)] = out[:-1]
    return rows


def _log_probs(model, params, outputs):
    """Sum of log p(output | input) of each row by one uncached forward pass (teacher forcing)."""
    logits = _forward(model)(params, TOKENS, _decoder_rows(outputs), SEGMENTS, None)
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    return [float(sum(logp[i, t, tok] for t, tok in enumerate(out))) for i, out in enumerate(outputs)]


@pytest.mark.parametrize("unrolled", [False, True])
def test_cached_step_logits_equal_the_full_forward(setup, unrolled):
    """Cached decoder steps match the scanned full forward, also in the unrolled form generation uses."""
    model, params = setup
    decoder = np.random.default_rng(0).integers(2, 96, (2, STEPS)).astype(np.int32)
    decoder[:, 0] = 0
    full = _forward(model)(params, TOKENS, decoder, SEGMENTS, None)
    encoded = jax.jit(lambda p, t, s: model.apply({"params": p}, t, s, method="encode"))(params, TOKENS, SEGMENTS)
    cache = seq2seq._empty_cache(model, 2, TOKENS.shape[1], STEPS)
    if unrolled:
        params, cache = layers.split_layers(params), layers.split_layers(cache)
    step = jax.jit(functools.partial(seq2seq._step, model, per_layer=unrolled))
    for t in range(STEPS):
        first = t == 0  # only the first step passes the encoder output; later ones use cached keys/values
        logits, cache = step(params, cache, decoder[:, t:t + 1], encoded if first else None,
                             SEGMENTS if first else None)
        np.testing.assert_allclose(logits, full[:, t], atol=2e-5, rtol=1e-5)
    cross_k_shape = (2, TOKENS.shape[1], CFG.num_heads, CFG.head_size)
    if unrolled:
        assert cache["decoder"]["layers"]["0"]["cross_attn"]["cross_k"].shape == cross_k_shape
    else:
        assert cache["decoder"]["layers"]["cross_attn"]["cross_k"].shape == (CFG.num_layers, *cross_k_shape)


def test_greedy_equals_argmax_of_the_uncached_model(setup):
    model, params = setup
    out = seq2seq.generate(model, params, INPUTS, STEPS)  # no eos: all STEPS tokens
    seqs = [[], []]
    for t in range(STEPS):  # causal: the zero padding after position t cannot change its logits
        logits = _forward(model)(params, TOKENS, _decoder_rows([s + [0] for s in seqs]), SEGMENTS, None)
        for s, row in zip(seqs, np.asarray(logits)):
            s.append(int(row[t].argmax()))
    assert out == seqs


def test_sampling_is_reproducible_and_filters(setup):
    model, params = setup
    greedy = seq2seq.generate(model, params, INPUTS, STEPS)
    assert seq2seq.generate(model, params, INPUTS, STEPS, temperature=1.0, top_k=1, seed=3) == greedy
    a = seq2seq.generate(model, params, INPUTS, STEPS, temperature=2.0, seed=1)
    assert a == seq2seq.generate(model, params, INPUTS, STEPS, temperature=2.0, seed=1)
    others = [seq2seq.generate(model, params, INPUTS, STEPS, temperature=2.0, seed=s) for s in (2, 3, 4)]
    assert any(o != a for o in others)


def test_beam_search_of_one_beam_is_greedy(setup):
    model, params = setup
    eos = int(seq2seq.generate(model, params, INPUTS, STEPS)[0][2])  # a token greedy emits: a real stop
    greedy = seq2seq.generate(model, params, INPUTS, STEPS, eos_id=eos)
    beams, _ = seq2seq.beam_search(model, params, INPUTS, STEPS, 1, length_penalty=0.0, eos_id=eos)
    assert beams == greedy


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_scores_are_real_and_beat_greedy(setup, length_penalty):
    model, params = setup
    eos = 7
    beams, scores = seq2seq.beam_search(model, params, INPUTS, STEPS, 4, length_penalty=length_penalty, eos_id=eos)
    greedy = seq2seq.generate(model, params, INPUTS, STEPS, eos_id=eos)
    for beam, score, g, beam_lp, greedy_lp in zip(beams, scores, greedy, _log_probs(model, params, beams),
                                                  _log_probs(model, params, greedy)):
        # the reported score is the model's log-probability of the returned sequence, length-normalised
        assert score == pytest.approx(beam_lp / len(beam) ** length_penalty, abs=1e-4)
        assert score >= greedy_lp / len(g) ** length_penalty - 1e-4
        assert eos not in beam[:-1]
    assert seq2seq.generate(model, params, INPUTS, STEPS, num_beams=4, length_penalty=length_penalty,
                            eos_id=eos) == beams
