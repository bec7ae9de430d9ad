"""`python -m zoo.bench`: how fast a preset trains, decodes, feeds and compiles, against its peers.

    python -m zoo.bench --model gpt2-small --batch-size 4 --seq-len 256 --steps 5 --dtype float32 \\
        [--set model.remat=dots] [--vs hf-flax] [--vs hf-torch] [--only train,decode] [--json out.json]

Sections (all by default; `--only` picks some):

- train: the real train step, built exactly as train.py builds it (`zoo.experiment.build`, the
  preset's vocabulary kept, shardings, donation and remat policy from the config) and fed
  random-token batches made by the family's own `make_examples` + `prepare_batch`. Reported: jit
  lower+compile time, the first step (compile + one step, what the peers call `compile_s`), median
  step time with min-max over `--steps` steps each timed to completion, tokens/s, MFU and peak memory.
- decode: KV-cache greedy generation through the family's `generate` (skipped for families without
  one), at each `--decode-batch`: tokens/s of `--new-tokens` new tokens after a `--prompt-len` prompt,
  and time to first token (a call with one new token). Every timed call follows an identical warm-up.
- input: batches/s of the data pipeline alone (`zoo.data.Batches` -> `prepare_batch` -> global arrays)
  and how many times faster that is than the train step consumes batches.
- compile: jit lower+compile time of the train step at `--depths` layers of the same width.

MFU = flops_per_token x tokens/s / (devices x peak FLOP/s), with the family's `flops_per_token`
(GPT: 6 x matmul params + 12 x layers x heads x head_dim x seq_len, i.e. forward + backward of every
weight matmul plus the attention scores and values, causal mask not discounted). The peak is the
data-sheet figure of `zoo.metrics.PEAK_FLOPS` for TPU/GPU kinds and, on CPU, an n x n matmul in the
compute dtype measured at start (n = 2048 on CPU, 8192 on accelerators); both are printed, and on an
accelerator `mfu_vs_measured` divides by the measured matmul rate too.

`--vs hf-flax` / `--vs hf-torch` run `zoo.peers` on the same shapes in the same run (train steps in a
subprocess each, so their peak-memory high-water marks are their own; `--peer-process inline` runs
them here instead) and print ours / theirs per figure. A missing peer stack is reported, not fatal.
Peak memory on CPU is the process's resident-set high-water mark raised by the section (so it
includes compiler memory); on GPU/TPU, the allocator's `peak_bytes_in_use`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

import models
from zoo import cli, config as config_lib, data, experiment, metrics, peers, steps

SECTIONS = ("train", "decode", "input", "compile")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RESULT_MARK = "ZOO_BENCH_RESULT "
_FIRST_ID = 3  # random tokens avoid pad/eos/unk (0, 1, 2)


def parser() -> argparse.ArgumentParser:
    """Flags of `python -m zoo.bench`."""
    p = argparse.ArgumentParser(prog="python -m zoo.bench", description="Benchmark a zoo preset against its peers.")
    p.add_argument("--model", default="gpt2-small", help="preset name (see models.PRESETS)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed train steps, after one untimed first step")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype (model.dtype); params and optimizer state stay float32")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override as in train.py, e.g. --set model.remat=dots (repeatable)")
    p.add_argument("--mesh", default=None, help="data=D,fsdp=F,tensor=T (default: all devices on data)")
    p.add_argument("--vs", action="append", default=[], choices=peers.BACKENDS, help="peer to compare with")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--json", default=None, metavar="PATH", help="write every figure to PATH")
    p.add_argument("--decode-batch", default="1,8", help="comma-separated decode batch sizes")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--input-data", default="source", choices=("source", "synthetic"),
                   help="source: the config's data source with a freshly trained tokenizer; synthetic: random ids")
    p.add_argument("--input-batches", type=int, default=50, help="batches timed in the input section")
    p.add_argument("--depths", default="2,24", help="layer counts for the compile section")
    p.add_argument("--peer-process", default="subprocess", choices=("subprocess", "inline"),
                   help="where peer train steps run (subprocess: their own memory high-water mark)")
    return p


# ----------------------------------------------------------------------------------------------------
# Config, random data, peer shape


def bench_config(args: argparse.Namespace) -> config_lib.Config:
    """The run config: the preset with the benchmark's batch shape, dtype, mesh and --set overrides."""
    family, model_cfg = models.preset(args.model)
    family_name = models.PRESETS[args.model][0]
    cfg = config_lib.Config(preset=args.model, family=family_name, model=model_cfg, **family.train_defaults())
    overrides = [f"data.batch_size={args.batch_size}", f"data.seq_len={args.seq_len}", f"model.dtype={args.dtype}"]
    cfg = cli.with_mesh_flag(cfg, args.mesh)
    return config_lib.apply_overrides(cfg, overrides + list(args.set))


class IdTokenizer:
    """Text of space-separated ids <-> ids, with zoo's ids (pad 0, eos 1, unk 2, sentinels on top).

    Random "documents" of ids go through a family's own `make_examples` and `generate` with it, so the
    benchmark needs no trained tokenizer and every family gets rows in its own layout.
    """

    pad_id, eos_id, unk_id, bos_id = 0, 1, 2, None

    def __init__(self, vocab_size: int, num_sentinels: int = 0):
        self.vocab_size, self.num_sentinels = vocab_size, num_sentinels

    def encode(self, text: str) -> list[int]:
        """Ids written in `text`."""
        return [int(t) for t in text.split()]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Any) -> str:
        """Ids as text."""
        return " ".join(str(int(i)) for i in ids)

    def sentinel_id(self, k: int) -> int:
        """Id of `<extra_id_k>` (the highest id is k = 0, as in T5)."""
        return self.vocab_size - 1 - k

    def id_to_piece(self, i: int) -> str:
        """The piece of an id (its decimal text)."""
        return str(i)


def random_text(rng: np.random.Generator, vocab_size: int, num_sentinels: int, length: int) -> str:
    """One document of `length` random ordinary ids (no special ids, no sentinels)."""
    return " ".join(map(str, rng.integers(_FIRST_ID, vocab_size - num_sentinels, size=length)))


def synthetic_batches(exp: experiment.Experiment, min_rows: int) -> data.Batches:
    """Batches of random tokens in the family's own row layout, made exactly as training makes them."""
    cfg = exp.config
    tok = IdTokenizer(cfg.model.vocab_size, exp.family.sentinels(cfg.model))
    with_ids = dataclasses.replace(exp, tokenizer=tok)
    rng = np.random.default_rng(cfg.train.seed)
    docs = max(4, min_rows)
    for _ in range(8):  # a family may cut documents differently: add text until there are enough rows
        records = [{"text": random_text(rng, tok.vocab_size, tok.num_sentinels, 2 * cfg.data.seq_len)}
                   for _ in range(docs)]
        try:
            batches = with_ids.batches("train", records)
        except data.DataError:
            batches = None
        if batches is not None and batches.rows >= min_rows:
            return batches
        docs *= 2
    raise RuntimeError(f"random documents gave too few {cfg.family} rows for batch size {cfg.data.batch_size}")


def peer_shape(family_name: str, model_cfg: Any, seq_len: int) -> peers.Shape:
    """The Hugging Face peer architecture of a zoo model config (generic over the config fields)."""
    get = lambda name, default=None: getattr(model_cfg, name, default)  # noqa: E731
    head_dim = get("head_size") or model_cfg.d_model // model_cfg.num_heads
    kw: dict[str, Any] = {}
    if family_name == "t5":
        act = get("activation", "relu")
        act = "gelu" if act.startswith("gelu") else act  # HF's "gelu"/"gated-gelu" use the tanh form
        kw = dict(num_decoder_layers=get("num_decoder_layers") or model_cfg.num_layers, d_kv=head_dim,
                  feed_forward_proj=("gated-" if get("gated_mlp") else "") + act,
                  tie_word_embeddings=bool(get("tie_embeddings", True)))
        for ours, theirs in (("relative_attention_num_buckets", "relative_attention_num_buckets"),
                             ("num_buckets", "relative_attention_num_buckets"),
                             ("relative_attention_max_distance", "relative_attention_max_distance"),
                             ("max_distance", "relative_attention_max_distance")):
            if get(ours) is not None:
                kw[theirs] = get(ours)
    if family_name == "bert" and get("type_vocab_size") is not None:
        kw["type_vocab_size"] = get("type_vocab_size")
    return peers.Shape(family_name, vocab_size=model_cfg.vocab_size, num_layers=model_cfg.num_layers,
                       num_heads=model_cfg.num_heads, d_model=model_cfg.d_model, d_ff=model_cfg.d_ff,
                       max_len=get("max_len") or seq_len, **kw)


def peer_mismatch(family_name: str, model_cfg: Any) -> str | None:
    """Why the peer is not the same architecture as ours (None when it is), for the report."""
    get = lambda name, default=None: getattr(model_cfg, name, default)  # noqa: E731
    if family_name in ("gpt", "bert"):
        diffs = [f"{k}={get(k)}" for k, want in (("position", "learned"), ("norm", "layernorm"),
                                                  ("gated_mlp", False), ("use_bias", True))
                 if get(k) is not None and get(k) != want]
        if family_name == "bert" and get("nsp"):
            diffs.append("nsp=True (an extra next-sentence head)")
        if family_name == "gpt" and get("num_kv_heads"):
            diffs.append(f"num_kv_heads={get('num_kv_heads')}")
        if diffs:
            return f"the peer is plain {'GPT-2' if family_name == 'gpt' else 'BERT'}, ours has " + ", ".join(diffs)
    if get("dropout"):
        return f"the peer runs without dropout, ours has dropout={get('dropout')} (--set model.dropout=0 to match)"
    return None


# ----------------------------------------------------------------------------------------------------
# Sections


def device_info() -> dict[str, Any]:
    """Platform, kind and count of the devices, and the JAX version."""
    d = jax.devices()[0]
    return {"platform": d.platform, "device_kind": d.device_kind, "device_count": jax.device_count(),
            "jax_version": jax.__version__}


def peak_info(dtype: str) -> dict[str, Any]:
    """The measured matmul rate (always) and the peak MFU divides by (data sheet, else measured)."""
    on_cpu = jax.devices()[0].platform == "cpu"
    n = 2048 if on_cpu else 8192
    measured = metrics.measured_matmul_flops(n, dtype)
    sheet = None if on_cpu else next((v for k, v in metrics.PEAK_FLOPS.items()
                                      if k.lower() in jax.devices()[0].device_kind.lower()), None)
    return {"matmul_n": n, "matmul_dtype": dtype, "measured_matmul_flops": measured,
            "peak_flops": sheet or measured, "peak_source": "datasheet" if sheet else "measured matmul"}


def _block(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def bench_train(cfg: config_lib.Config, timed_steps: int, peak: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Compile and time the real train step; returns the figures and the trained params."""
    probe = peers._MemProbe("hf-flax")  # the JAX probe: RSS high-water on CPU, allocator peak on GPU/TPU
    exp = experiment.build(cfg, None, tokenizer=experiment.NO_TOKENIZER)
    state = exp.init_state()
    step = steps.make_train_step(exp.family, exp.model, exp.tx, exp.layout, exp.mesh, exp.schedule,
                                 cfg.train.seed, cfg.optim.grad_accum)
    batch = data.to_global(synthetic_batches(exp, cfg.data.batch_size).get(0), exp.layout.batch_shardings)
    with steps.on_mesh(exp.mesh):
        t0 = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        state, m = _block(compiled(state, batch))
        first_step_s = compile_s + time.perf_counter() - t0
        times = []
        for _ in range(timed_steps):
            t0 = time.perf_counter()
            state, m = _block(compiled(state, batch))
            times.append(time.perf_counter() - t0)
    peak_mem, mem_source = probe.stop()
    loss = float(m["loss"])
    if not math.isfinite(loss):
        raise RuntimeError(f"the train step produced a non-finite loss {loss}")
    median = statistics.median(times)
    tokens_per_s = cfg.data.batch_size * cfg.data.seq_len / median
    flops_per_token = exp.family.flops_per_token(cfg.model, cfg.data.seq_len)
    return {
        "compile_s": compile_s, "first_step_s": first_step_s, "step_s_median": median,
        "step_s_min": min(times), "step_s_max": max(times), "tokens_per_s": tokens_per_s,
        "flops_per_token": flops_per_token, "mfu": _mfu(flops_per_token, tokens_per_s, peak),
        "mfu_vs_measured": flops_per_token * tokens_per_s / (peak["measured_matmul_flops"] * jax.device_count()),
        "peak_mem_bytes": peak_mem, "mem_source": mem_source, "loss": loss,
        "num_params": experiment.num_params(state.params), "load": _load(),
    }, state.params


def _mfu(flops_per_token: float, tokens_per_s: float, peak: dict[str, Any]) -> float:
    return flops_per_token * tokens_per_s / (peak["peak_flops"] * jax.device_count())


def bench_decode(cfg: config_lib.Config, params: Any, batch_sizes: list[int], prompt_len: int,
                 new_tokens: int) -> dict[str, Any]:
    """Greedy KV-cache generation through the family's `generate`, per batch size."""
    family = models.FAMILIES[cfg.family]
    if not hasattr(family, "generate"):
        return {"skipped": f"the {cfg.family} family has no generate"}
    exp = experiment.build(cfg, None, tokenizer=experiment.NO_TOKENIZER)
    if params is None:
        params = exp.init_state().params
    tok = IdTokenizer(cfg.model.vocab_size, family.sentinels(cfg.model))
    rng = np.random.default_rng(cfg.train.seed)
    out: dict[str, Any] = {"prompt_len": prompt_len, "new_tokens": new_tokens}
    for b in batch_sizes:
        prompts = [random_text(rng, tok.vocab_size, tok.num_sentinels, prompt_len) for _ in range(b)]
        run = lambda n: family.generate(exp.model, params, tok, prompts, n)  # noqa: E731
        decode_s, texts = _warm_then_time(lambda: run(new_tokens))
        first_token_s, _ = _warm_then_time(lambda: run(1))
        # Rows are cut after EOS on the host; the device work (a fixed-length loop) is the same.
        shortest = min(len(tok.encode(t)) for t in texts)
        out[f"batch_{b}"] = {"tokens_per_s": b * new_tokens / decode_s, "decode_s": decode_s,
                             "first_token_s": first_token_s, "shortest_row": shortest, "load": _load()}
    return out


def _warm_then_time(fn: Callable[[], Any]) -> tuple[float, Any]:
    fn()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def bench_input(cfg: config_lib.Config, source: str, count: int, step_s: float | None) -> dict[str, Any]:
    """Batches/s of host preparation + device placement alone, and its ratio to the step's consumption."""
    exp = experiment.build(cfg, None, tokenizer=experiment.NO_TOKENIZER)
    note = "random ids"
    batches = None
    if source == "source":
        t0 = time.perf_counter()
        records = exp.records("train")
        tok = data.get_tokenizer(None, records, cfg.data.vocab_size, sentinels=exp.family.sentinels(cfg.model))
        try:
            batches = dataclasses.replace(exp, tokenizer=tok).batches("train", records)
            note = f"{cfg.data.source}, {tok.vocab_size}-piece tokenizer ({time.perf_counter() - t0:.1f} s to build)"
        except data.DataError as err:
            note = f"random ids ({cfg.data.source} is too small: {err})"
    if batches is None:
        batches = synthetic_batches(exp, 64 * cfg.data.batch_size)
    shardings = exp.layout.batch_shardings
    _block(data.to_global(batches.get(0), shardings))
    t0 = time.perf_counter()
    for i in range(1, count + 1):
        _block(data.to_global(batches.get(i), shardings))
    per_s = count / (time.perf_counter() - t0)
    return {"data": note, "rows": batches.rows, "batches": count, "batches_per_s": per_s,
            "step_batches_per_s": None if step_s is None else 1.0 / step_s,
            "ratio_vs_step": None if step_s is None else per_s * step_s, "load": _load()}


def bench_compile(cfg: config_lib.Config, depths: list[int]) -> dict[str, Any]:
    """jit lower+compile time of the train step at each depth (same width); scan should keep it flat."""
    out: dict[str, Any] = {"d_model": cfg.model.d_model}
    for n in depths:
        c = config_lib.override(cfg, "model.num_layers", n)
        exp = experiment.build(c, None, tokenizer=experiment.NO_TOKENIZER)
        step = steps.make_train_step(exp.family, exp.model, exp.tx, exp.layout, exp.mesh, exp.schedule,
                                     c.train.seed, c.optim.grad_accum)
        example = exp.family.init_batch(c.data.batch_size, c.data.seq_len)
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=exp.layout.batch_shardings[k])
                 for k, v in example.items()}
        with steps.on_mesh(exp.mesh):
            t0 = time.perf_counter()
            step.lower(exp.layout.abstract, batch).compile()
            out[f"layers_{n}_s"] = time.perf_counter() - t0
    first, last = out[f"layers_{depths[0]}_s"], out[f"layers_{depths[-1]}_s"]
    out["ratio"] = last / first
    out["load"] = _load()
    return out


def peer_header(backend: str, cfg: config_lib.Config) -> dict[str, Any]:
    """The peer's shape and any architecture mismatch, or why it cannot run here."""
    missing = peers.peer_available(backend)
    if missing is not None:
        print(missing, flush=True)
        return {"unavailable": missing}
    out: dict[str, Any] = {"shape": dataclasses.asdict(peer_shape(cfg.family, cfg.model, cfg.data.seq_len))}
    mismatch = peer_mismatch(cfg.family, cfg.model)
    if mismatch:
        out["mismatch"] = mismatch
    return out


def bench_peer_train(backend: str, cfg: config_lib.Config, timed_steps: int, where: str) -> dict[str, Any]:
    """The peer's train-step figures on our shapes (an `error` entry instead of raising)."""
    shape = peer_shape(cfg.family, cfg.model, cfg.data.seq_len)
    return _guard(lambda: _peer_train(backend, shape, cfg.data.batch_size, cfg.data.seq_len, timed_steps,
                                      cfg.model.dtype, where))


def bench_peer_decode(backend: str, cfg: config_lib.Config, batch_sizes: list[int], prompt_len: int,
                      new_tokens: int) -> dict[str, Any]:
    """The peer's greedy `generate` figures per batch size (an `error` entry instead of raising)."""
    shape = peer_shape(cfg.family, cfg.model, cfg.data.seq_len)
    return {f"batch_{b}": _guard(lambda b=b: {
        **peers.time_decode(backend, shape, b, prompt_len, new_tokens, cfg.model.dtype), "load": _load()})
        for b in batch_sizes}


def _guard(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except Exception as err:  # a failing peer must not lose our own figures
        line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        print(f"peer failed: {line}")
        return {"error": line}


_CHILD = f"""
import json, sys
from zoo import peers
from zoo.bench import proc_status_bytes
a = json.loads(sys.argv[1])
peers.peer_available(a["backend"])  # import the peer stack first: its memory is not the step's
before = proc_status_bytes("VmRSS")
r = peers.time_train_step(a["backend"], peers.Shape(**a["shape"]), a["batch_size"], a["seq_len"], a["steps"], a["dtype"])
after = proc_status_bytes("VmHWM")
if r["mem_source"] == "rss" and before is not None and after is not None:
    r["peak_mem_bytes"], r["mem_source"] = max(0, after - before), "rss (VmHWM)"
print("\\n{_RESULT_MARK}" + json.dumps(r))
"""


def proc_status_bytes(key: str) -> int | None:
    """A memory figure of /proc/self/status (Linux), e.g. VmHWM, in bytes; None elsewhere.

    A fork+exec'd child's `ru_maxrss` starts at its parent's high-water mark (Linux folds the old
    address space's peak into it at exec), so peer subprocesses read their own peak, VmHWM, instead.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def _peer_train(backend: str, shape: peers.Shape, batch_size: int, seq_len: int, n: int, dtype: str,
                where: str) -> dict[str, Any]:
    if where == "inline":
        return {**peers.time_train_step(backend, shape, batch_size, seq_len, n, dtype), "load": _load()}
    request = json.dumps({"backend": backend, "shape": dataclasses.asdict(shape), "batch_size": batch_size,
                          "seq_len": seq_len, "steps": n, "dtype": dtype})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _CHILD, request], capture_output=True, text=True, env=env, cwd=_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[-1]
        raise RuntimeError(f"{backend} train step failed in its subprocess: {tail}")
    return {**json.loads(lines[-1][len(_RESULT_MARK):]), "load": _load()}


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {message}", flush=True)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------------------------------
# Report

# (label, section, key, format, better) for the figures compared with peers
_TRAIN_ROWS = (
    ("first step (compile) s", "first_step_s", "compile_s", "{:.2f}", "lower"),
    ("step s, median", "step_s_median", "step_s_median", "{:.3f}", "lower"),
    ("tokens/s", "tokens_per_s", "tokens_per_s", "{:,.0f}", "higher"),
    ("MFU", "mfu", "mfu", "{:.1%}", "higher"),
    ("peak memory MB", "peak_mem_bytes", "peak_mem_bytes", "{:,.0f}", "lower"),
)
_DECODE_ROWS = (("tokens/s", "tokens_per_s", "{:,.1f}", "higher"), ("first token s", "first_token_s", "{:.4f}", "lower"))


def add_ratios(result: dict[str, Any]) -> None:
    """Peer train MFU (same FLOPs formula) and ours/theirs ratios per figure, in place."""
    ours_train, ours_decode = result.get("train"), result.get("decode", {})
    for peer in result.get("peers", {}).values():
        if "unavailable" in peer:
            continue
        ratios: dict[str, float] = {}
        theirs = peer.get("train", {})
        if ours_train and "tokens_per_s" in theirs:
            theirs["mfu"] = _mfu(ours_train["flops_per_token"], theirs["tokens_per_s"], result["peak"])
            for _, ours_key, their_key, _, _ in _TRAIN_ROWS:
                if theirs.get(their_key):
                    ratios[f"train_{ours_key}"] = ours_train[ours_key] / theirs[their_key]
        for b, figures in peer.get("decode", {}).items():
            for _, key, _, _ in _DECODE_ROWS:
                if key in figures and key in ours_decode.get(b, {}):
                    ratios[f"decode_{b}_{key}"] = ours_decode[b][key] / figures[key]
        peer["ratios"] = ratios


def report(result: dict[str, Any]) -> str:
    """The human-readable table."""
    dev, peak, cfg = result["device"], result["peak"], result["config"]
    lines = [f"zoo bench: {result['model']} ({cfg['family']}), batch {cfg['data']['batch_size']} x seq "
             f"{cfg['data']['seq_len']}, {cfg['model']['dtype']}, remat={cfg['model'].get('remat')}, "
             f"attention={cfg['model'].get('attention_impl')} | {dev['device_kind']} x{dev['device_count']} "
             f"| jax {dev['jax_version']} | load {result['load_start']}",
             f"matmul {peak['matmul_n']}^2 {peak['matmul_dtype']} measured {peak['measured_matmul_flops'] / 1e9:,.0f} "
             f"GFLOP/s; MFU peak {peak['peak_flops'] / 1e9:,.0f} GFLOP/s ({peak['peak_source']})"]
    peer_items = [(k, v) for k, v in result.get("peers", {}).items()]
    for name, peer in peer_items:
        if "unavailable" in peer:
            lines.append(f"{name}: {peer['unavailable']}")
        elif "mismatch" in peer:
            lines.append(f"{name}: not like for like: {peer['mismatch']}")
    header = f"{'':26s}{'zoo':>14s}" + "".join(f"{name:>14s}{'zoo/' + name:>15s}" for name, _ in peer_items)
    if "train" in result:
        t = result["train"]
        lines += ["", "train" + header[5:]]
        lines.append(f"  {'lower+compile s':24s}{t['compile_s']:>14.2f}")
        for label, ours_key, their_key, fmt, better in _TRAIN_ROWS:
            lines.append(_row(label, t[ours_key], [(p.get("train", {}).get(their_key), p.get("ratios", {}).get(
                f"train_{ours_key}")) for _, p in peer_items], fmt, better, scale=1e-6 if "mem" in ours_key else 1))
        lines.append(f"  {'step s min-max':24s}{t['step_s_min']:>7.3f}-{t['step_s_max']:<6.3f}"
                     f"   (params {t['num_params']:,}, loss {t['loss']:.3f}, memory from {t['mem_source']})")
    if "decode" in result:
        d = result["decode"]
        if "skipped" in d:
            lines += ["", f"decode: skipped ({d['skipped']})"]
        else:
            lines += ["", f"decode (greedy, prompt {d['prompt_len']}, {d['new_tokens']} new)" + header[
                len(f"decode (greedy, prompt {d['prompt_len']}, {d['new_tokens']} new)"):]]
            for b in [k for k in d if k.startswith("batch_")]:
                for label, key, fmt, better in _DECODE_ROWS:
                    lines.append(_row(f"batch {b[6:]} {label}", d[b][key], [
                        (p.get("decode", {}).get(b, {}).get(key), p.get("ratios", {}).get(f"decode_{b}_{key}"))
                        for _, p in peer_items], fmt, better))
    if "input" in result:
        i = result["input"]
        ratio = "" if i["ratio_vs_step"] is None else (
            f" = {i['ratio_vs_step']:,.0f}x the train step's {i['step_batches_per_s']:.2f} batches/s")
        lines += ["", f"input: {i['batches_per_s']:,.1f} batches/s{ratio} ({i['data']}, {i['rows']} rows)"]
    if "compile" in result:
        c = result["compile"]
        depths = [k for k in c if k.startswith("layers_")]
        lines += ["", f"compile vs depth (d_model {c['d_model']}): " + ", ".join(
            f"{k[7:-2]} layers {c[k]:.2f} s" for k in depths) + f"; ratio {c['ratio']:.2f}"]
    return "\n".join(lines)


def _row(label: str, ours: float, theirs: list[tuple[Any, Any]], fmt: str, better: str, scale: float = 1) -> str:
    cell = lambda v: "-" if v is None else fmt.format(v * scale)  # noqa: E731
    text = f"  {label:24s}{cell(ours):>14s}"
    for value, ratio in theirs:
        text += f"{cell(value):>14s}{('-' if ratio is None else f'{ratio:.2f}x'):>15s}"
    return text + f"   ({better} is better)"


# ----------------------------------------------------------------------------------------------------
# Main


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise config_lib.ConfigError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise config_lib.ConfigError(f"{flag} expects positive integers, got {text!r}")
    return values


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every requested section (and peer) of one benchmark; the JSON-able result."""
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        raise config_lib.ConfigError(f"--only takes a subset of {','.join(SECTIONS)}, got {args.only!r}")
    if args.steps < 1:
        raise config_lib.ConfigError(f"--steps must be at least 1, got {args.steps}")
    decode_batches, depths = _ints(args.decode_batch, "--decode-batch"), _ints(args.depths, "--depths")
    cfg = bench_config(args)
    models.FAMILIES[cfg.family].validate(cfg.model, cfg.data.seq_len)
    peak = peak_info(cfg.model.dtype)
    result: dict[str, Any] = {"model": args.model, "family": cfg.family, "device": device_info(), "peak": peak,
                              "config": config_lib.to_dict(cfg), "steps": args.steps, "load_start": _load()}
    _say(f"matmul peak ({peak['matmul_n']}^2 {peak['matmul_dtype']}): "
         f"{peak['measured_matmul_flops'] / 1e9:,.0f} GFLOP/s measured")
    ready = {}
    if args.vs:
        result["peers"] = {b: peer_header(b, cfg) for b in dict.fromkeys(args.vs)}
        ready = {b: p for b, p in result["peers"].items() if "unavailable" not in p}
    params = None
    if "train" in sections:
        _say("train: ours")
        result["train"], params = bench_train(cfg, args.steps, peak)
        _say(f"train: {result['train']['tokens_per_s']:,.0f} tokens/s, MFU {result['train']['mfu']:.1%}")
        for backend, peer in ready.items():
            _say(f"train: {backend}")
            peer["train"] = bench_peer_train(backend, cfg, args.steps, args.peer_process)
    if "decode" in sections:
        _say("decode: ours")
        result["decode"] = bench_decode(cfg, params, decode_batches, args.prompt_len, args.new_tokens)
        if "skipped" not in result["decode"]:
            for backend, peer in ready.items():
                _say(f"decode: {backend}")
                peer["decode"] = bench_peer_decode(backend, cfg, decode_batches, args.prompt_len, args.new_tokens)
    params = None  # free the trained state before the other sections
    if "input" in sections:
        _say("input")
        step_s = result["train"]["step_s_median"] if "train" in result else None
        result["input"] = bench_input(cfg, args.input_data, args.input_batches, step_s)
    if "compile" in sections:
        _say("compile vs depth")
        result["compile"] = bench_compile(cfg, depths)
    add_ratios(result)
    result["load_end"] = _load()
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the benchmark, print the table, write --json."""
    args = parser().parse_args(argv)
    # Grow device memory on demand: peers run in other processes on the same accelerator.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    with cli.user_errors():
        result = run(args)
        print(report(result))
        if args.json:
            tmp = args.json + ".tmp"
            with open(tmp, "w") as f:
                json.dump(result, f, indent=2, sort_keys=True)
            os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
