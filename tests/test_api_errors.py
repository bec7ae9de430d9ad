"""Bad input to the Python API raises one typed line (ZooError and ValueError) saying what to do,
never NaN, empty output or a raw KeyError; each test also checks that the valid call still works."""

import contextlib
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import models
import zoo
from conftest import ROOT, FakeTokenizer, perturbed
from zoo import convert, decode
from zoo.errors import ZooError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

GPT_SHAPE = dict(num_layers=1, d_model=64, num_heads=2, d_ff=128, max_len=32, vocab_size=64)
PROMPT, NEW = "a b", 3  # every valid generate call uses these, so each model compiles one loop


@contextlib.contextmanager
def one_line_error(match: str):
    """Expect a ZooError that is also a ValueError, whose one-line message matches `match`."""
    with pytest.raises(ZooError, match=match) as info:
        yield info
    assert isinstance(info.value, ValueError), type(info.value)
    assert "\n" not in str(info.value)


def _words(n: int) -> str:
    return " ".join(["w"] * n)  # FakeTokenizer: one id per word


@pytest.fixture(scope="module")
def gpt():
    return dataclasses.replace(zoo.create("gpt-tiny", **GPT_SHAPE), tokenizer=FakeTokenizer(64))


@pytest.fixture(scope="module")
def t5():
    m = zoo.create("t5-tiny", num_layers=1, num_decoder_layers=1, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                   vocab_size=64, num_sentinels=3)
    return dataclasses.replace(m, tokenizer=FakeTokenizer(64))


def test_zoo_error_is_exported_lazily_and_conversion_errors_are_zoo_errors():
    code = "import zoo, sys; zoo.ZooError; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert zoo.ZooError is ZooError
    assert issubclass(convert.ConversionError, ZooError) and issubclass(convert.ConversionError, ValueError)


@pytest.mark.parametrize("kind", ["learned", "rope", "none"])
def test_generate_past_the_context_is_an_error(kind):
    if kind == "rope":
        m = zoo.create("gpt-modern-tiny", **GPT_SHAPE, num_kv_heads=1)
    else:
        m = zoo.create("gpt-tiny", **GPT_SHAPE, position=kind)
    m = dataclasses.replace(m, tokenizer=FakeTokenizer(64))
    assert m.config.model.position == kind
    with one_line_error("30 tokens; with max_new_tokens 5 that is 35 positions, more than the model's max_len 32"):
        m.generate(_words(30), max_new_tokens=5)
    with one_line_error("40 tokens.*max_len 32"):  # a prompt longer than the model
        m.generate([PROMPT, _words(40)], max_new_tokens=1)
    with one_line_error("prompt 1 has 30 tokens"):  # batches count prompts across the whole list
        m.generate([PROMPT, _words(30)], max_new_tokens=5, batch_size=1)
    with one_line_error("max_len 32"):  # the id-level function reads the context from the model
        decode.generate_causal(m.module, m.params, [[5] * 30], 5)
    if kind == "learned":  # a prompt that exactly fills the context still works
        assert len(decode.generate_causal(m.module, m.params, [[5] * 29], NEW)[0]) == NEW


def test_out_of_vocabulary_ids_are_an_error(gpt, t5):
    with one_line_error(r"input_ids row 0 holds token id 70 at position 1, outside the model's vocabulary \[0, 64\)"):
        gpt.logits([[1, 70, 3]])
    with one_line_error("token id -1"):
        gpt.logits(np.array([[1, 2, 3], [4, -1, 5]]))
    with one_line_error("40 tokens per row, more than the model's 32 positions"):
        gpt.logits(np.ones((1, 40), np.int32))
    with one_line_error("integer token ids"):
        gpt.logits(np.ones((2, 3), np.float32))
    with one_line_error("prompt 1 holds token id 64"):
        decode.generate_causal(gpt.module, gpt.params, [[1, 2], [3, 64]], NEW)
    with one_line_error("decoder_input_ids row 0 holds token id 99"):
        t5.logits([[5, 6, 1]], [[0, 99]])
    with one_line_error("input 0 holds token id 64"):
        decode.generate_seq2seq(t5.module, t5.params, [[5, 64, 1]], NEW)
    with one_line_error("input 0 holds token id -3"):
        decode.beam_search(t5.module, t5.params, [[5, -3, 1]], NEW, 2)
    logits = gpt.logits([[1, 63, 3]])
    assert logits.shape == (1, 3, 64) and np.isfinite(logits).all()
    assert np.isfinite(t5.logits([[5, 6, 1]], [[0, 63]])).all()


@pytest.mark.parametrize("bad, match", [
    ({"temperature": -0.5}, "temperature must be >= 0"),
    ({"temperature": float("nan")}, "temperature must be >= 0"),
    ({"top_k": -1}, "top_k must be >= 0"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
    ({"topk": 5}, "unknown generation argument 'topk'"),
])
def test_bad_sampling_arguments_are_an_error(gpt, bad, match):
    args = {"max_new_tokens": NEW, **bad}
    with one_line_error(match):
        gpt.generate(PROMPT, **args)
    if "topk" not in bad:
        with one_line_error(match):
            decode.generate_causal(gpt.module, gpt.params, [[3, 4]], **args)


def test_valid_sampling_still_works(gpt):
    text = gpt.generate(PROMPT, max_new_tokens=NEW, temperature=0.8, top_k=5, top_p=1.0, seed=1)
    assert isinstance(text, str)
    assert len(decode.generate_causal(gpt.module, gpt.params, [[3, 4]], NEW, temperature=0.8, top_p=0.5)[0]) == NEW


def test_bad_beam_arguments_are_an_error(t5):
    with one_line_error("num_beams must be at least 1"):
        t5.generate(PROMPT, max_new_tokens=NEW, num_beams=0)
    with one_line_error("num_beams must be at least 1"):
        decode.beam_search(t5.module, t5.params, [[5, 1]], NEW, 0)
    with one_line_error("max_new_tokens must be at least 1"):
        decode.beam_search(t5.module, t5.params, [[5, 1]], 0, 2)
    with one_line_error("top_p must be in"):
        t5.generate(PROMPT, max_new_tokens=NEW, top_p=0)
    ids, scores = decode.beam_search(t5.module, t5.params, [[5, 1]], NEW, 2)
    assert len(ids) == 1 and np.isfinite(scores).all()


def test_empty_prompts_are_an_error(gpt, t5):
    with one_line_error("no prompts given"):
        gpt.generate([])
    with one_line_error("no prompts given"):
        t5.generate([], max_new_tokens=NEW)
    with one_line_error("no prompts given"):
        decode.generate_causal(gpt.module, gpt.params, [], NEW)
    with one_line_error("prompt 1 has no tokens"):
        decode.generate_causal(gpt.module, gpt.params, [[3], []], NEW)
    with one_line_error("no inputs given"):
        decode.generate_seq2seq(t5.module, t5.params, [], NEW)
    with one_line_error(r"prompt 1 \('   '\) tokenizes to nothing; an encoder-decoder needs some input text"):
        t5.generate([PROMPT, "   "], max_new_tokens=NEW)
    with one_line_error("prompts must be a list of strings"):
        gpt.generate([[3, 4]], max_new_tokens=NEW)
    assert isinstance(t5.generate(PROMPT, max_new_tokens=NEW), str)
    assert isinstance(gpt.generate("", max_new_tokens=NEW), str)  # an empty causal prompt starts from EOS


def _tiny_gpt2(dtype=None):
    torch.manual_seed(0)  # the same weights on every call
    hf = perturbed(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=64)))
    return hf if dtype is None else hf.to(dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_load_hf_reads_16_bit_safetensors(tmp_path, dtype):
    low = _tiny_gpt2(getattr(torch, dtype))
    low.save_pretrained(tmp_path / "low")
    low.float().save_pretrained(tmp_path / "f32")  # the same values, widened by torch
    m_low, m_f32 = zoo.load_hf(str(tmp_path / "low")), zoo.load_hf(str(tmp_path / "f32"))
    ids = [[1, 5, 9, 63, 2]]
    np.testing.assert_allclose(m_low.logits(ids), m_f32.logits(ids), rtol=1e-6, atol=1e-6)
    # and within 16-bit rounding of the float32 model they were cast from
    reference = zoo.load_hf(str(_save(_tiny_gpt2(), tmp_path / "ref"))).logits(ids)
    np.testing.assert_allclose(m_low.logits(ids), reference, atol=0.05)


def _save(hf, path, **kwargs):
    hf.save_pretrained(path, **kwargs)
    return path


def test_several_safetensors_files_need_an_index(tmp_path):
    hf = _tiny_gpt2()
    single, sharded = _save(hf, tmp_path / "single"), _save(hf, tmp_path / "sharded", max_shard_size="8KB")
    index = sharded / convert.INDEX_FILE
    assert index.exists() and len(list(sharded.glob("*.safetensors"))) > 1
    (sharded / "stray.safetensors").write_bytes(b"not a safetensors file")  # not in the index: never read
    ids = [[3, 1, 4, 1, 5]]
    np.testing.assert_array_equal(zoo.load_hf(str(sharded)).logits(ids), zoo.load_hf(str(single)).logits(ids))
    weight_map = json.loads(index.read_text())["weight_map"]
    os.rename(index, tmp_path / "index.json")
    with one_line_error("holds several safetensors files .* but no model.safetensors.index.json"):
        zoo.load_hf(str(sharded))
    shard = sorted(set(weight_map.values()))[-1]
    index.write_text(json.dumps({"weight_map": {**weight_map, "extra.weight": shard}}))
    with one_line_error(f"{shard} has no tensor 'extra.weight'"):
        zoo.load_hf(str(sharded))
    os.remove(sharded / shard)
    with one_line_error(f"shard {shard}, named in model.safetensors.index.json, is missing"):
        zoo.load_hf(str(sharded))


def _hf_dir(path, hf_config: dict):
    """A directory with `hf_config` as config.json and a one-tensor model.safetensors."""
    os.makedirs(path)
    with open(path / "config.json", "w") as f:
        json.dump(hf_config, f)
    safetensors_numpy.save_file({"x": np.zeros(1, np.float32)}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize("family, key", [("gpt", "n_layer"), ("bert", "hidden_size"), ("t5", "d_model")])
def test_a_missing_config_key_is_a_conversion_error(tmp_path, family, key):
    hf = models.FAMILIES[family].hf
    full = hf.config_to_hf(models.FAMILIES[family].Config())
    partial = {k: v for k, v in full.items() if k != key}
    with one_line_error(f"config.json has no '{key}', which a {full['model_type']} config needs") as info:
        zoo.load_hf(str(_hf_dir(tmp_path / "hf", partial)))
    assert isinstance(info.value, convert.ConversionError)
    assert hf.config_from_hf(full).d_model == models.FAMILIES[family].Config().d_model


def test_a_config_that_is_not_json_is_a_conversion_error(tmp_path):
    path = _hf_dir(tmp_path / "hf", {})
    (path / "config.json").write_text('{"model_type": "gpt2",')
    with one_line_error("config.json is not valid JSON"):
        convert.read_hf_dir(str(path))
    (path / "config.json").write_text('["gpt2"]')
    with one_line_error("holds a JSON list"):
        convert.read_hf_dir(str(path))
    (path / "config.json").write_text('{"model_type": "gpt2"}')
    config, tensors = convert.read_hf_dir(str(path))
    assert config == {"model_type": "gpt2"} and tensors["x"].shape == (1,)
