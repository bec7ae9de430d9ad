"""zoo.bench's Hugging Face peers on tiny configs: built from the families' own mapping, the same
function as zoo on the same converted weights, and timings of the right structure (never speed)."""

import dataclasses
import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flax")
pytest.importorskip("optax")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "FlaxGPT2LMHeadModel"):
    pytest.skip("transformers without Flax models (>=5): install 'zoo[hf]'", allow_module_level=True)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import torch  # noqa: E402

import models  # noqa: E402
from zoo.bench import peer_child, peer_torch, peers  # noqa: E402

TRAIN_KEYS = {"compile_s", "step_s_median", "step_s_min", "step_s_max", "tokens_per_s", "peak_mem_bytes"}
SMALL = dict(num_layers=2, d_model=32, num_heads=2, d_ff=64, vocab_size=128)
# name -> (preset, overrides): one per Hugging Face architecture the peers build
TINY = {
    "gpt2": ("gpt-tiny", dict(max_len=64)),
    "llama": ("gpt-modern-tiny", dict(max_len=64, num_kv_heads=1)),
    "bert": ("bert-tiny", dict(max_len=64)),  # with NSP: BertForPreTraining
    "roberta": ("roberta-base", dict(max_len=66)),  # no NSP: RobertaForMaskedLM
    "t5": ("t5-tiny", dict(head_dim=16, activation="gelu_tanh", num_sentinels=4)),  # v1.0 layout, not gated
    "t5-gated": ("t5.1.1-small", dict(head_dim=16, num_sentinels=4)),  # v1.1: gated GELU, untied head
}


def tiny(name: str):
    """(family, model config) of a tiny variant, dropout as in its preset."""
    preset, extra = TINY[name]
    family, cfg = models.preset(preset)
    return family, dataclasses.replace(cfg, **SMALL, **extra)


def shapes(name: str, batch_size: int = 2, seq_len: int = 16) -> dict:
    family, _ = tiny(name)
    return {k: list(v.shape) for k, v in family.init_batch(batch_size, seq_len).items()}


@pytest.mark.parametrize("backend", peers.BACKENDS)
def test_peer_available(backend: str) -> None:
    assert peers.peer_available(backend) is None


@pytest.mark.parametrize("name", TINY)
def test_peer_config_is_the_familys_mapping_without_dropout(name: str) -> None:
    family, cfg = tiny(name)
    cfg_hf = peers.hf_config(family, cfg)
    assert cfg_hf == family.hf.config_to_hf(dataclasses.replace(cfg, dropout=0.0))
    config = peers.transformers_config(cfg_hf).to_dict()
    rates = {k: v for k, v in config.items() if "drop" in k and isinstance(v, float)}
    assert rates and all(v == 0.0 for v in rates.values()), rates
    ids = {k: v for k, v in config.items() if k.endswith("token_id") and isinstance(v, int)}
    assert all(0 <= v < cfg.vocab_size for v in ids.values()), ids


@pytest.mark.parametrize("name, proj, gated", [("t5", "gelu_new", False), ("t5-gated", "gated-gelu", True)])
def test_t5_peer_activation_comes_from_the_family(name: str, proj: str, gated: bool) -> None:
    # The old benchmark's own mapping made a non-gated gelu_tanh T5 an exact-erf "gelu" peer.
    family, cfg = tiny(name)
    config = peers.transformers_config(peers.hf_config(family, cfg))
    assert (config.feed_forward_proj, config.is_gated_act, config.dense_act_fn) == (proj, gated, "gelu_new")
    assert config.tie_word_embeddings == cfg.tie_embeddings and config.d_kv == cfg.head_size == 16


def _torch_logits(name: str, model, ids: np.ndarray, dec: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        if name.startswith("t5"):
            return model(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(dec)).logits.numpy()
        out = model(torch.tensor(ids))
        return (out.prediction_logits if name == "bert" else out.logits).numpy()


@pytest.mark.parametrize("name", TINY)
def test_torch_peer_computes_zoos_function_on_converted_weights(name: str) -> None:
    family, cfg = tiny(name)
    cfg = dataclasses.replace(cfg, dropout=0.0)
    model = family.Model(cfg)
    params = nn.meta.unbox(family.init_params(model, jax.random.key(1), family.init_batch(2, 16)))
    peer = peer_torch.build(peers.transformers_config(peers.hf_config(family, cfg)), peers.SEED).eval()
    state = {k: torch.tensor(np.asarray(v)) for k, v in family.hf.params_to_hf(params, cfg).items()}
    assert not peer.load_state_dict(state, strict=False).unexpected_keys
    rng = np.random.default_rng(0)
    ids, dec = peers.random_ids(rng, cfg.vocab_size, (2, 12)), peers.random_ids(rng, cfg.vocab_size, (2, 5))
    ours = family.logits(model, params, ids, dec) if name.startswith("t5") else family.logits(model, params, ids)
    np.testing.assert_allclose(_torch_logits(name, peer, ids, dec), np.asarray(ours), atol=1e-4, rtol=1e-4)


def _check_train_figures(r: dict) -> None:
    assert TRAIN_KEYS <= r.keys()
    for k in TRAIN_KEYS - {"peak_mem_bytes"}:
        assert isinstance(r[k], float) and r[k] > 0 and math.isfinite(r[k]), (k, r[k])
    assert r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"]
    # 0 when an earlier test in this process already set a higher peak RSS.
    assert isinstance(r["peak_mem_bytes"], int) and r["peak_mem_bytes"] >= 0


@pytest.mark.parametrize("backend", peers.BACKENDS)
@pytest.mark.parametrize("name", ["gpt2", "llama", "bert", "t5"])
def test_time_train_step(name: str, backend: str) -> None:
    family, cfg = tiny(name)
    r = peers.time_train_step(backend, family.name, peers.hf_config(family, cfg), shapes(name), steps=2)
    _check_train_figures(r)
    assert r["tokens_per_s"] == pytest.approx(2 * 16 / r["step_s_median"])


def test_train_batch_has_our_shapes() -> None:
    family, cfg = tiny("t5")
    s = shapes("t5") | {"decoder_targets": [2, 5]}
    b = peers.train_batch(family.name, peers.hf_config(family, cfg), s)
    assert b["input_ids"].shape == (2, 16) and b["labels"].shape == b["decoder_input_ids"].shape == (2, 5)
    assert (b["decoder_input_ids"][:, 1:] == b["labels"][:, :-1]).all() and (b["decoder_input_ids"][:, 0] == 0).all()
    family, cfg = tiny("bert")
    b = peers.train_batch(family.name, peers.hf_config(family, cfg), shapes("bert"))
    assert ((b["labels"] != -100).sum(axis=1) == shapes("bert")["targets"][1]).all()
    assert b["next_sentence_label"].shape == (2,)


def test_train_step_in_a_child_process() -> None:
    family, cfg = tiny("gpt2")
    r = peer_child.run(backend="hf-torch", family_name="gpt", cfg_hf=peers.hf_config(family, cfg),
                       shapes=shapes("gpt2"), steps=1, dtype="float32")
    _check_train_figures(r)
    with pytest.raises(RuntimeError, match="in its subprocess"):
        peer_child.run(backend="hf-torch", family_name="gpt", cfg_hf=peers.hf_config(family, cfg),
                       shapes=shapes("gpt2", seq_len=65), steps=1, dtype="float32")


@pytest.mark.parametrize("backend", peers.BACKENDS)
@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_time_decode(name: str, backend: str) -> None:
    family, cfg = tiny(name)
    r = peers.time_decode(backend, family.name, peers.hf_config(family, cfg), batch_size=2, prompt_len=4,
                          new_tokens=4)
    assert r["tokens_per_s"] > 0 and r["first_token_s"] > 0


def test_bad_arguments_are_errors() -> None:
    family, cfg = tiny("gpt2")
    cfg_hf = peers.hf_config(family, cfg)
    with pytest.raises(ValueError, match="no decoding"):
        peers.time_decode("hf-torch", "bert", peers.hf_config(*tiny("bert")), 1, 4, 4)
    with pytest.raises(ValueError, match="unknown peer backend"):
        peers.time_train_step("jax", "gpt", cfg_hf, shapes("gpt2"), 1)
    with pytest.raises(ValueError, match="exceeds the peer's 64 positions"):
        peers.time_train_step("hf-torch", "gpt", cfg_hf, shapes("gpt2", seq_len=65), 1)
    with pytest.raises(ValueError, match="Hugging Face"):  # sliding-window attention has no HF peer
        peers.hf_config(*models.preset("gpt-modern-small-swa"))
    bert, bert_cfg = tiny("bert")
    with pytest.raises(ValueError, match="pretraining only"):
        peers.hf_config(bert, dataclasses.replace(bert_cfg, task="classify"))


def test_matmul_peak_flops() -> None:
    from zoo import throughput

    assert throughput.measured_matmul_flops(n=64, repeats=2) > 0
