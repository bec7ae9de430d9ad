"""Structure tests for zoo.peers on tiny shapes. Speed is never asserted, only shape and positivity."""

import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("flax")
pytest.importorskip("optax")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "FlaxGPT2LMHeadModel"):
    pytest.skip("transformers without Flax models (>=5): install 'zoo[bench]'", allow_module_level=True)

from zoo import peers  # noqa: E402

TRAIN_KEYS = {"compile_s", "step_s_median", "step_s_min", "step_s_max", "tokens_per_s", "peak_mem_bytes"}


def tiny(family: str) -> peers.Shape:
    extra = {"num_decoder_layers": 2, "d_kv": 16} if family == "t5" else {}
    return peers.Shape(
        family, vocab_size=128, num_layers=2, num_heads=2, d_model=32, d_ff=64, max_len=64, **extra
    )


@pytest.mark.parametrize("backend", peers.BACKENDS)
def test_peer_available(backend: str) -> None:
    assert peers.peer_available(backend) is None


@pytest.mark.parametrize("family", peers.FAMILIES)
def test_hf_config_has_no_dropout(family: str) -> None:
    cfg = peers.hf_config(tiny(family)).to_dict()
    rates = {k: v for k, v in cfg.items() if ("drop" in k or k == "dropout_rate") and isinstance(v, float)}
    assert rates and all(v == 0.0 for v in rates.values()), rates


@pytest.mark.parametrize("backend", peers.BACKENDS)
@pytest.mark.parametrize("family", peers.FAMILIES)
def test_time_train_step(family: str, backend: str) -> None:
    r = peers.time_train_step(backend, tiny(family), batch_size=2, seq_len=16, steps=2)
    assert TRAIN_KEYS <= r.keys()
    for k in TRAIN_KEYS - {"peak_mem_bytes"}:
        assert isinstance(r[k], float) and r[k] > 0 and math.isfinite(r[k]), (k, r[k])
    assert r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"]
    # 0 when an earlier test in this process already set a higher peak RSS.
    assert isinstance(r["peak_mem_bytes"], int) and r["peak_mem_bytes"] >= 0


@pytest.mark.parametrize("backend", peers.BACKENDS)
@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_time_decode(family: str, backend: str) -> None:
    r = peers.time_decode(backend, tiny(family), batch_size=2, prompt_len=4, new_tokens=4)
    assert r["tokens_per_s"] > 0 and r["first_token_s"] > 0


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="no decoding"):
        peers.time_decode("hf-torch", tiny("bert"), 1, 4, 4)
    with pytest.raises(ValueError, match="unknown peer backend"):
        peers.time_train_step("jax", tiny("gpt"), 1, 4, 1)
    with pytest.raises(ValueError, match="exceeds max_len"):
        peers.time_train_step("hf-torch", tiny("gpt"), 1, 65, 1)
    with pytest.raises(ValueError, match="unknown family"):
        peers.Shape("llama", 8, 1, 1, 8, 8, 8)


def test_matmul_peak_flops() -> None:
    from zoo import metrics

    assert metrics.measured_matmul_flops(n=64, repeats=2) > 0
