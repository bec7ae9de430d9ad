"""GPT against independent references: Hugging Face PyTorch models, published sizes, and invariants."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from conftest import perturbed
from models.gpt import FAMILY as GPT, data as gpt_data, hf as gpt_hf, model as gpt
from zoo import decode, rows as rows_lib, stacking, steps

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = gpt.Config(num_layers=2, d_model=32, num_heads=4, d_ff=64, vocab_size=64, max_len=32)
TINY_MODERN = dataclasses.replace(gpt.PRESETS["gpt-modern-tiny"], num_layers=2, d_model=32, num_heads=4,
                                  num_kv_heads=2, d_ff=48, vocab_size=64, max_len=64)


def _torch_logits(model, ids, mask=None):
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return model(torch.tensor(ids), **kwargs).logits.numpy()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_hf_parity_and_round_trip(kind, tmp_path):
    if kind == "gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, vocab_size=100, max_position_embeddings=64))
    hf = perturbed(hf)
    hf.save_pretrained(tmp_path / "hf")
    m = zoo.load_hf(str(tmp_path / "hf"))
    assert m.num_params == sum(p.numel() for p in hf.parameters())
    ids = np.random.default_rng(0).integers(0, 100, (2, 16))
    mask = np.ones_like(ids)
    mask[1, 11:] = 0  # right padding: real tokens keep positions 0..10 in both implementations
    ours = m.logits(ids, mask)
    ref = _torch_logits(hf, ids, mask)
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 1e-4
    m.save_hf(str(tmp_path / "back"))
    reloaded = type(hf).from_pretrained(tmp_path / "back")
    assert np.abs(_torch_logits(reloaded, ids) - m.logits(ids)).max() <= 1e-4


@pytest.mark.parametrize("name,expected", [
    ("gpt2-small", 124_439_808), ("gpt2-medium", 354_823_168),
    ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)])
def test_preset_parameter_counts_match_hugging_face(name, expected):
    cfg = gpt.PRESETS[name]
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{
            k: v for k, v in gpt_hf.config_to_hf(cfg).items() if k not in ("model_type", "architectures")}))
    assert sum(p.numel() for p in hf.parameters()) == expected  # published GPT-2 sizes
    assert steps.num_params(GPT, cfg) == expected


def test_modern_preset_parameter_count_matches_llama():
    cfg = gpt.PRESETS["gpt-modern-small"]
    hf_cfg = {k: v for k, v in gpt_hf.config_to_hf(cfg).items() if k not in ("model_type", "architectures")}
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_cfg))
    assert steps.num_params(GPT, cfg) == sum(p.numel() for p in hf.parameters())


def _params(cfg, seed=0):
    model = gpt.Model(cfg)
    return model, gpt.init_params(model, jax.random.key(seed), gpt.init_batch(1, 8))


@pytest.mark.parametrize("cfg", [TINY, TINY_MODERN, dataclasses.replace(TINY_MODERN, sliding_window=4)])
def test_causality_changing_token_t_never_changes_earlier_logits(cfg):
    model, params = _params(cfg)
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                          is_leaf=lambda x: hasattr(x, "value"))
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 64, (1, 12)))
    base = model.apply({"params": params}, ids)
    for t in (0, 5, 11):
        changed = model.apply({"params": params}, ids.at[0, t].set((ids[0, t] + 1) % 64))
        np.testing.assert_array_equal(np.asarray(base[0, :t]), np.asarray(changed[0, :t]))
        assert not np.allclose(base[0, t:], changed[0, t:])


def test_sliding_window_limits_what_a_query_sees():
    cfg = dataclasses.replace(TINY_MODERN, sliding_window=3, num_layers=1)
    model, params = _params(cfg)
    params = _unbox(params)
    ids = jnp.asarray(np.random.default_rng(2).integers(0, 64, (1, 10)))
    base = model.apply({"params": params}, ids)
    changed = model.apply({"params": params}, ids.at[0, 2].set((ids[0, 2] + 1) % 64))
    # with one layer, position 9 sees keys 7..9 only; position 4 sees 2..4 and must change
    np.testing.assert_allclose(base[0, 5:], changed[0, 5:], atol=1e-6)
    assert not np.allclose(base[0, 4], changed[0, 4])


def _unbox(params):
    import flax.linen as nn
    return nn.meta.unbox(params)


def test_packed_documents_do_not_attend_across_boundaries():
    model, params = _params(TINY)
    params = _unbox(params)
    rng = np.random.default_rng(3)
    doc_a, doc_b = rng.integers(3, 64, 7), rng.integers(3, 64, 9)
    row = gpt_data.pack_pieces([np.r_[doc_a, 1], np.r_[doc_b, 1]], width=18)
    batch = gpt_data.prepare_batch({k: v[None] for k, v in row.items()})
    packed = model.apply({"params": params}, batch["inputs"], batch["segments"], batch["positions"])
    alone = model.apply({"params": params}, jnp.asarray(doc_b[None]))
    start = len(doc_a) + 1
    np.testing.assert_allclose(packed[0, start:start + len(doc_b)], alone[0], atol=1e-5)
    assert batch["weights"][0, start - 1] == 0  # EOS of doc a must not predict doc b's first token


@pytest.mark.parametrize("cfg", [TINY, TINY_MODERN])
def test_kv_cache_decode_equals_full_forward(cfg):
    model, params = _params(cfg)
    params = _unbox(params)
    prompts = [[5, 9, 2, 7], [11, 3]]  # different lengths: left padding must not leak
    out = decode.generate_causal(model, params, prompts, 6)
    for prompt, new in zip(prompts, out):
        # reference: one full forward over prompt + generated tokens; greedy means each generated
        # token is the argmax of the full model's logits at the position before it
        logits = model.apply({"params": params}, jnp.asarray([prompt + new]))
        assert new == np.asarray(jnp.argmax(logits[0, len(prompt) - 1:-1], axis=-1)).tolist()


@pytest.mark.parametrize("cfg", [TINY, TINY_MODERN])
def test_unrolled_decoding_form_computes_the_same_logits(cfg):
    from zoo import stacking
    model, params = _params(cfg)
    params = _unbox(params)
    ids = jnp.asarray(np.random.default_rng(4).integers(0, 64, (2, 9)))
    split = stacking.split_layers(params)
    assert set(split["layers"]) == {str(i) for i in range(cfg.num_layers)}
    np.testing.assert_allclose(model.apply({"params": split}, ids, per_layer=True),
                               model.apply({"params": params}, ids), atol=1e-6)
    last = model.apply({"params": params}, ids, last_only=True)
    np.testing.assert_allclose(last[:, 0], model.apply({"params": params}, ids)[:, -1], atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_remat_policies_give_the_same_loss_and_gradients(dtype):
    _, params = _params(TINY)
    params = _unbox(params)
    from zoo.bench.synthetic import IdTokenizer
    run = types.SimpleNamespace(data=types.SimpleNamespace(seq_len=16))
    records = [{"text": " ".join(map(str, range(3, 40)))}, {"text": " ".join(map(str, range(5, 30)))}]
    rows = rows_lib.rows_of(records, gpt_data.row_maker(run, IdTokenizer(64)))
    batch = {k: jnp.asarray(v) for k, v in gpt_data.prepare_batch(rows_lib.stack(rows)).items()}

    def loss_and_grads(remat):
        model = gpt.Model(dataclasses.replace(TINY, remat=remat, dtype=dtype))
        fn = lambda p: gpt.loss_sums(model, p, batch, jax.random.key(0), train=True)["loss_sum"]
        return jax.jit(jax.value_and_grad(fn))(params)

    reference = loss_and_grads("none")
    for remat in stacking.REMAT_POLICIES:
        loss, grads = loss_and_grads(remat)
        np.testing.assert_allclose(loss, reference[0], rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference[1])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sampling_filters():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    sample = jax.jit(decode.sample_logits)  # one compile, not 800 op-by-op dispatches
    draws = lambda **kw: {int(sample(logits, jax.random.key(i), jnp.float32(1.0),  # noqa: E731
                                     jnp.int32(kw.get("k", 0)), jnp.float32(kw.get("p", 1.0)))[0])
                          for i in range(200)}
    assert draws(k=1) == {0}
    assert draws(k=2) == {0, 1}
    assert draws(p=0.7) == {0, 1}  # 0.5 < 0.7 needs the second token; 0.8 >= 0.7 stops there
    assert draws() == {0, 1, 2, 3}
    greedy = decode.sample_logits(logits, jax.random.key(0), jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))
    assert int(greedy[0]) == 0


def test_greedy_generate_matches_hugging_face(tmp_path):
    hf = perturbed(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64)))
    hf.save_pretrained(tmp_path)
    m = zoo.load_hf(str(tmp_path))
    prompt = [[7, 1, 44, 3, 9]]
    ours = decode.generate_causal(m.module, m.params, prompt, 10)[0]
    with torch.no_grad():
        ref = hf.generate(torch.tensor(prompt), max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert ours == ref[0, 5:].tolist()


def test_load_hf_reads_gpt2_bpe_files_and_tokenizes_like_transformers(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=300,
                            special_tokens=["<|endoftext|>"])
    bpe.save_model(str(tmp_path))
    reference = transformers.GPT2TokenizerFast(vocab_file=str(tmp_path / "vocab.json"),
                                               merges_file=str(tmp_path / "merges.txt"))
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=reference.vocab_size, n_positions=64))
    hf.save_pretrained(tmp_path)
    m = zoo.load_hf(str(tmp_path))
    for text in ("the lazy  dog\njumps", "héllo wörld 🙂"):
        assert m.tokenizer.encode(text) == reference(text)["input_ids"]
        assert m.tokenizer.decode(m.tokenizer.encode(text)) == text
    assert m.tokenizer.eos_id == reference.eos_token_id
    assert isinstance(m.generate("the quick", max_new_tokens=3), str)


def test_create_save_load_round_trip(tmp_path):
    m = zoo.create("gpt-modern-tiny", num_layers=1, d_model=32, num_heads=4, num_kv_heads=2, d_ff=48)
    assert m.config.model.num_layers == 1 and m.tokenizer is None
    m.save(str(tmp_path / "w"))
    back = zoo.load(str(tmp_path / "w"))
    assert back.config.model == m.config.model
    for a, b in zip(jax.tree.leaves(m.params), jax.tree.leaves(back.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ids = np.arange(10)[None] % 64
    np.testing.assert_array_equal(m.logits(ids), back.logits(ids))
    with pytest.raises(ValueError, match="no tokenizer"):
        m.generate("hi")
