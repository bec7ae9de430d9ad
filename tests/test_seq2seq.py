"""Encoder-decoder decoding (zoo.decode) against the uncached model: greedy, sampling, beam search."""

import functools

import jax
import numpy as np
import pytest

from conftest import T5_INPUTS as INPUTS, T5_STEPS as STEPS, random_params, tiny_t5_config
from models.t5 import FAMILY as T5, model as t5
from zoo import decode, stacking

CFG = tiny_t5_config()  # the shapes of test_t5's tiny Hugging Face model: one compilation for both files


@pytest.fixture(scope="module")
def setup():
    model = t5.Model(CFG)
    return model, random_params(T5, CFG, scale=0.5)


@functools.cache
def _forward(model):
    return jax.jit(lambda params, *args: model.apply({"params": params}, *args))


TOKENS, SEGMENTS = decode.right_pad(INPUTS, 0)


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
    cache = decode._empty_cache(model, 2, TOKENS.shape[1], STEPS)
    if unrolled:
        params, cache = stacking.split_layers(params), stacking.split_layers(cache)
    step = jax.jit(functools.partial(decode._step, model, per_layer=unrolled))
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
    out = decode.generate_seq2seq(model, params, INPUTS, STEPS)  # no eos: all STEPS tokens
    seqs = [[], []]
    for t in range(STEPS):  # causal: the zero padding after position t cannot change its logits
        logits = _forward(model)(params, TOKENS, _decoder_rows([s + [0] for s in seqs]), SEGMENTS, None)
        for s, row in zip(seqs, np.asarray(logits)):
            s.append(int(row[t].argmax()))
    assert out == seqs


def test_sampling_is_reproducible_and_filters(setup):
    model, params = setup
    greedy = decode.generate_seq2seq(model, params, INPUTS, STEPS)
    assert decode.generate_seq2seq(model, params, INPUTS, STEPS, temperature=1.0, top_k=1, seed=3) == greedy
    a = decode.generate_seq2seq(model, params, INPUTS, STEPS, temperature=2.0, seed=1)
    assert a == decode.generate_seq2seq(model, params, INPUTS, STEPS, temperature=2.0, seed=1)
    others = [decode.generate_seq2seq(model, params, INPUTS, STEPS, temperature=2.0, seed=s) for s in (2, 3, 4)]
    assert any(o != a for o in others)


def test_beam_search_of_one_beam_is_greedy(setup):
    model, params = setup
    eos = int(decode.generate_seq2seq(model, params, INPUTS, STEPS)[0][2])  # a token greedy emits: a real stop
    greedy = decode.generate_seq2seq(model, params, INPUTS, STEPS, eos_id=eos)
    beams, _ = decode.beam_search(model, params, INPUTS, STEPS, 1, length_penalty=0.0, eos_id=eos)
    assert beams == greedy


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_scores_are_real_and_beat_greedy(setup, length_penalty):
    model, params = setup
    eos = 7
    beams, scores = decode.beam_search(model, params, INPUTS, STEPS, 4, length_penalty=length_penalty, eos_id=eos)
    greedy = decode.generate_seq2seq(model, params, INPUTS, STEPS, eos_id=eos)
    for beam, score, g, beam_lp, greedy_lp in zip(beams, scores, greedy, _log_probs(model, params, beams),
                                                  _log_probs(model, params, greedy)):
        # the reported score is the model's log-probability of the returned sequence, length-normalised
        assert score == pytest.approx(beam_lp / len(beam) ** length_penalty, abs=1e-4)
        assert score >= greedy_lp / len(g) ** length_penalty - 1e-4
        assert eos not in beam[:-1]
    assert decode.generate_seq2seq(model, params, INPUTS, STEPS, num_beams=4, length_penalty=length_penalty,
                            eos_id=eos) == beams
