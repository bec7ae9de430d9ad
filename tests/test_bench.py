"""`python -m zoo.bench` on a tiny shape: JSON structure and positivity only, never speed."""

import dataclasses
import json
import math

import pytest

import models
from zoo.bench import __main__ as bench, compare, peers, report

SMALL = ["--set", "model.num_layers=2", "--set", "model.d_model=64", "--set", "model.d_ff=128",
         "--set", "model.vocab_size=256", "--batch-size", "8", "--seq-len", "16", "--steps", "2"]
TINY = ["--model", "gpt-tiny", *SMALL]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0 and math.isfinite(value)


def run_bench(tmp_path, *args: str) -> dict:
    path = tmp_path / "bench.json"
    assert bench.main([*args, "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_every_section(tmp_path, monkeypatch, capsys) -> None:
    # A missing peer stack is reported and the run goes on (exit status 0).
    monkeypatch.setattr(peers, "peer_available", lambda backend: f"{backend} peer unavailable; install it")
    r = run_bench(tmp_path, *TINY, "--decode-batch", "1", "--prompt-len", "4", "--new-tokens", "3",
                  "--input-data", "synthetic", "--input-batches", "3", "--depths", "1,2", "--vs", "hf-flax")
    out = capsys.readouterr().out
    for heading in ("train", "decode", "input:", "compile vs depth", "matmul", "hf-flax peer unavailable; install it"):
        assert heading in out
    assert r["peers"]["hf-flax"]["unavailable"] == "hf-flax peer unavailable; install it"
    assert r["device"]["jax_version"] and r["device"]["device_kind"] and r["family"] == "gpt"
    assert positive(r["peak"]["measured_matmul_flops"]) and positive(r["peak"]["peak_flops"])
    assert r["config"]["model"]["num_layers"] == 2 and r["config"]["data"]["batch_size"] == 8
    t = r["train"]
    for key in ("compile_s", "first_step_s", "step_s_median", "step_s_min", "step_s_max", "tokens_per_s",
                "flops_per_token", "mfu", "mfu_vs_measured", "num_params"):
        assert positive(t[key]), (key, t[key])
    assert t["step_s_min"] <= t["step_s_median"] <= t["step_s_max"] and t["first_step_s"] >= t["compile_s"]
    assert isinstance(t["peak_mem_bytes"], int) and t["peak_mem_bytes"] >= 0 and math.isfinite(t["loss"])
    assert t["batch_shapes"]["inputs"] == [8, 16]
    d = r["decode"]["batch_1"]
    assert positive(d["tokens_per_s"]) and positive(d["first_token_s"]) and d["shortest_row"] <= 3
    assert positive(r["input"]["batches_per_s"]) and positive(r["input"]["ratio_vs_step"])
    c = r["compile"]
    assert positive(c["layers_1_s"]) and positive(c["layers_2_s"]) and positive(c["ratio"])


def _check_peer(result: dict, backend: str) -> dict:
    p = result["peers"][backend]
    assert "mismatch" not in p and "error" not in p["train"], p
    assert positive(p["train"]["tokens_per_s"]) and positive(p["train"]["mfu"])
    for key in ("tokens_per_s", "step_s_median", "first_step_s", "mfu"):
        assert positive(p["ratios"][f"train_{key}"]), (backend, key)
    return p


def test_peers_train_in_the_same_run(tmp_path) -> None:
    for backend in peers.BACKENDS:
        if peers.peer_available(backend) is not None:
            pytest.skip(peers.peer_available(backend))
    # hf-torch in its own process (the default) on GPT-2; hf-flax in this one on T5, the shim included.
    r = run_bench(tmp_path, *TINY, "--only", "train", "--vs", "hf-torch")
    p = _check_peer(r, "hf-torch")
    assert (p["hf_config"]["architectures"], p["hf_config"]["n_embd"], p["hf_config"]["n_layer"]) == (
        ["GPT2LMHeadModel"], 64, 2)
    s = run_bench(tmp_path, "--model", "t5-tiny", *SMALL, "--set", "model.num_sentinels=8", "--only", "train",
                  "--vs", "hf-flax", "--peer-process", "inline")
    p = _check_peer(s, "hf-flax")
    assert p["hf_config"]["architectures"] == ["T5ForConditionalGeneration"] and p["hf_config"]["d_model"] == 64


def test_ratios_and_table_from_figures() -> None:
    ours = {"tokens_per_s": 200.0, "first_token_s": 0.01}
    theirs = {"tokens_per_s": 100.0, "first_token_s": 0.04, "decode_s": 1.0}
    result = {"model": "gpt-tiny", "load_start": [0.0, 0.0, 0.0],
              "device": {"device_kind": "cpu", "device_count": 1, "jax_version": "x"},
              "peak": {"matmul_n": 8, "matmul_dtype": "float32", "measured_matmul_flops": 1e9,
                       "peak_flops": 1e9, "peak_source": "measured matmul"},
              "config": {"family": "gpt", "data": {"batch_size": 1, "seq_len": 8}, "model": {"dtype": "float32"}},
              "decode": {"prompt_len": 4, "new_tokens": 4, "batch_1": ours},
              "peers": {"hf-flax": {"decode": {"batch_1": theirs}}, "hf-torch": {"unavailable": "install it"}}}
    report.add_ratios(result)
    ratios = result["peers"]["hf-flax"]["ratios"]
    assert ratios == {"decode_batch_1_tokens_per_s": 2.0, "decode_batch_1_first_token_s": 0.25}
    table = report.report(result)
    assert "2.00x" in table and "0.25x" in table and "hf-torch: install it" in table


def test_peer_header_of_every_preset() -> None:
    if peers.peer_available("hf-torch") is not None:
        pytest.skip(peers.peer_available("hf-torch"))
    for name in models.PRESETS:
        family, cfg = models.preset(name)
        head = compare.header("hf-torch", family, cfg)
        if name.endswith("-swa"):  # sliding-window attention: no Hugging Face equivalent in the mapping
            assert "no Hugging Face gpt model" in head["unavailable"]
            continue
        assert head["hf_config"] == family.hf.config_to_hf(dataclasses.replace(cfg, dropout=0.0)), name
        assert peers.transformers_config(head["hf_config"]).vocab_size == cfg.vocab_size
        assert ("dropout=" in head.get("mismatch", "")) == bool(cfg.dropout), name


def test_bad_flags_are_one_line_errors(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*TINY, "--only", "train,nope"])
    assert exit_info.value.code == 2 and "--only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main([*TINY, "--set", "model.nonsense=1"])
