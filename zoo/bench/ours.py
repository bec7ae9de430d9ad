"""zoo's own figures: the real train step, KV-cache decoding, the input pipeline and compile time."""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import numpy as np

from zoo import config as config_lib, data, experiment, losses, steps, throughput
from zoo.bench import measure, report, synthetic


def device_info() -> dict[str, Any]:
    """Platform, kind and count of the devices, and the JAX version."""
    d = jax.devices()[0]
    return {"platform": d.platform, "device_kind": d.device_kind, "device_count": jax.device_count(),
            "jax_version": jax.__version__}


def peak_info(dtype: str) -> dict[str, Any]:
    """The measured matmul rate (always) and the peak MFU divides by (data sheet, else measured)."""
    kind = jax.devices()[0].device_kind.lower()
    on_cpu = jax.devices()[0].platform == "cpu"
    n = 2048 if on_cpu else 8192
    measured = throughput.measured_matmul_flops(n, dtype)
    sheet = None if on_cpu else next((v for k, v in throughput.PEAK_FLOPS.items() if k.lower() in kind), None)
    return {"matmul_n": n, "matmul_dtype": dtype, "measured_matmul_flops": measured,
            "peak_flops": sheet or measured, "peak_source": "datasheet" if sheet else "measured matmul"}


def _build(cfg: config_lib.Config) -> tuple[experiment.Experiment, Any]:
    """The experiment of `cfg` (no tokenizer) and its train step, made as train.py makes them."""
    exp = experiment.build(cfg, None, tokenizer=experiment.NO_TOKENIZER)
    step = steps.make_train_step(exp.family, exp.model, exp.tx, exp.layout, exp.mesh, exp.schedule,
                                 cfg.train.seed, cfg.optim.grad_accum,
                                 loss_options=losses.training_options(cfg.optim))
    return exp, step


def bench_train(cfg: config_lib.Config, timed_steps: int, peak: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Compile and time the real train step; returns the figures and the trained params."""
    probe = measure.MemProbe("jax")  # RSS high-water on CPU, allocator peak on GPU/TPU
    exp, step = _build(cfg)
    state = exp.init_state()
    host_batch = synthetic.first_batch(exp)
    batch = data.to_global(host_batch, exp.layout.batch_shardings)
    with steps.on_mesh(exp.mesh):
        t0 = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        run = lambda carry: jax.block_until_ready(compiled(carry[0], batch))  # noqa: E731
        (first_s,), carry = measure.timed_calls(run, (state, None), 1)
        times, (state, m) = measure.timed_calls(run, carry, timed_steps)
    peak_mem, mem_source = probe.stop()
    loss = float(m["loss"])
    if not math.isfinite(loss):
        raise RuntimeError(f"the train step produced a non-finite loss {loss}")
    figures = measure.step_figures(times, cfg.data.batch_size * cfg.data.seq_len)
    flops_per_token = exp.family.flops_per_token(cfg.model, cfg.data.seq_len)
    devices = jax.device_count()
    return {
        "compile_s": compile_s, "first_step_s": compile_s + first_s, **figures, "flops_per_token": flops_per_token,
        "mfu": report.mfu(flops_per_token, figures["tokens_per_s"], peak["peak_flops"], devices),
        "mfu_vs_measured": report.mfu(flops_per_token, figures["tokens_per_s"], peak["measured_matmul_flops"],
                                      devices),
        "peak_mem_bytes": peak_mem, "mem_source": mem_source, "loss": loss,
        "num_params": steps.count_params(state.params),
        "batch_shapes": {k: list(np.shape(v)) for k, v in host_batch.items()}, "load": measure.load(),
    }, state.params


def bench_decode(cfg: config_lib.Config, params: Any, batch_sizes: list[int], prompt_len: int,
                 new_tokens: int) -> dict[str, Any]:
    """Greedy KV-cache generation through the family's `generate`, per batch size."""
    exp = experiment.build(cfg, None, tokenizer=experiment.NO_TOKENIZER)
    generate = exp.family.generate
    if generate is None:
        return {"skipped": f"the {cfg.family} family has no generate"}
    if params is None:
        params = exp.init_state().params
    tok = synthetic.id_tokenizer(exp)
    rng = np.random.default_rng(cfg.train.seed)
    out: dict[str, Any] = {"prompt_len": prompt_len, "new_tokens": new_tokens}
    for b in batch_sizes:
        prompts = [synthetic.random_text(rng, tok, prompt_len) for _ in range(b)]
        run = lambda n: generate(exp.model, params, tok, prompts, n)  # noqa: E731
        decode_s, texts = measure.warm_then_time(lambda: run(new_tokens))
        first_token_s, _ = measure.warm_then_time(lambda: run(1))
        # Rows are cut after EOS on the host; the device work (a fixed-length loop) is the same.
        shortest = min(len(tok.encode(t)) for t in texts)
        out[f"batch_{b}"] = {"tokens_per_s": b * new_tokens / decode_s, "decode_s": decode_s,
                             "first_token_s": first_token_s, "shortest_row": shortest, "load": measure.load()}
    return out


def _source_split(cfg: config_lib.Config) -> tuple[data.Split, str]:
    """The config's training split with a freshly trained tokenizer, as train.py would build it."""
    t0 = time.perf_counter()
    exp = experiment.build(cfg, None)  # no workdir: trains a tokenizer on a sample of the source
    split = exp.split("train")
    seconds = time.perf_counter() - t0
    return split, f"{cfg.data.source}, {exp.tokenizer.vocab_size}-piece tokenizer ({seconds:.1f} s to build)"


def bench_input(cfg: config_lib.Config, source: str, count: int, step_s: float | None) -> dict[str, Any]:
    """Batches/s of host preparation + device placement alone, and its ratio to the step's consumption."""
    exp = experiment.build(cfg, None, tokenizer=experiment.NO_TOKENIZER)
    split, note = _source_split(cfg) if source == "source" else (synthetic.split(exp), "random ids")
    shardings = exp.layout.batch_shardings
    batches = split.batches()
    place = lambda: jax.block_until_ready(data.to_global(next(batches).inputs, shardings))  # noqa: E731
    place()
    t0 = time.perf_counter()
    for _ in range(count):
        place()
    per_s = count / (time.perf_counter() - t0)
    batches.close()
    tokens_per_s = per_s * cfg.data.batch_size * cfg.data.seq_len
    # What one v5e chip eats at 50% MFU, and so how many processes like this one it needs
    v5e_tokens_per_s = 0.5 * throughput.PEAK_FLOPS["TPU v5e"] / exp.family.flops_per_token(cfg.model, cfg.data.seq_len)
    return {"data": note, "workers": cfg.data.workers, "batches": count, "batches_per_s": per_s,
            "tokens_per_s": tokens_per_s, "v5e_tokens_per_s_at_half_mfu": v5e_tokens_per_s,
            "processes_per_v5e_chip": v5e_tokens_per_s / tokens_per_s,
            "step_batches_per_s": None if step_s is None else 1.0 / step_s,
            "ratio_vs_step": None if step_s is None else per_s * step_s, "load": measure.load()}


def bench_compile(cfg: config_lib.Config, depths: list[int]) -> dict[str, Any]:
    """jit lower+compile time of the train step at each depth (same width); scan should keep it flat."""
    out: dict[str, Any] = {"d_model": cfg.model.d_model}
    for n in depths:
        exp, step = _build(config_lib.override(cfg, "model.num_layers", n))
        example = exp.family.init_batch(cfg.data.batch_size, cfg.data.seq_len)
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=exp.layout.batch_shardings[k])
                 for k, v in example.items()}
        with steps.on_mesh(exp.mesh):
            t0 = time.perf_counter()
            step.lower(exp.layout.abstract, batch).compile()
            out[f"layers_{n}_s"] = time.perf_counter() - t0
    out["ratio"] = out[f"layers_{depths[-1]}_s"] / out[f"layers_{depths[0]}_s"]
    out["load"] = measure.load()
    return out
