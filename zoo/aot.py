"""Before you rent a pod: compile a run's step for a Cloud TPU slice on this host, and see whether it fits.

    python -m zoo.aot --topology v5e-16 --model gpt2-xl --set mesh.fsdp=16 --batch-size 64 [train.py flags]
        [--step train|eval|generate] [--step-time S] [--search batch] [--hbm GIB] [--json PATH]

The step is the one train.py (or eval.py, or generation) builds for that config — the same mesh,
shardings, optimizer and jitted function, with the vocabulary train.py's tokenizer would have — but
over the slice's compile-only TPU devices (`zoo.topology`) and abstract arguments, so nothing is
allocated. libtpu compiles it, and the report gives per-device memory against the chip's HBM,
FLOPs per step and the MFU they imply, the collectives of the compiled program (`zoo.hlo`) and the
sharding inspector's table (`zoo.sharding.inspect`). Exit status 0 when it fits, else one `error:`
line. `--search batch` compiles candidates to find the largest global batch that fits, and the remat
policy with the least recomputation that fits it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np

import models
from zoo import aot_report, cli, config as config_lib, decode, experiment, losses, sharding, steps, topology, workdir
from zoo.errors import ZooError
from zoo.experiment import Experiment
from zoo.tokenizer import Tokenizer

GIB = topology.GIB
STEPS = ("train", "eval", "generate")
REMAT_BY_RECOMPUTE = ("none", "dots", "projections", "dots_no_batch", "full")  # least recomputation first
MAX_DOUBLINGS = 16


class DoesNotFit(ZooError):
    """The compiled step needs more memory per device than the chip has."""


def parser() -> argparse.ArgumentParser:
    """train.py's flags plus the topology, the step to compile and what to report."""
    p = cli.train_parser()
    p.description = "Compile a run's step for a Cloud TPU slice on this host and report whether it fits."
    p.set_defaults(workdir=None)  # read a run's config.json only when --workdir is given
    p.add_argument("--topology", required=True, help="Cloud TPU accelerator: v4-8, v5e-16, v5litepod-4, v5p-8, v6e-8")
    p.add_argument("--step", choices=STEPS, default="train", help="the step to compile (default train)")
    p.add_argument("--step-time", type=float, default=None, metavar="S",
                   help="a step time to turn FLOPs into MFU (default: report the step time of 50%% MFU)")
    p.add_argument("--search", choices=("batch",), default=None,
                   help="batch: the largest global batch that fits, and the remat policy that fits it")
    p.add_argument("--hbm", type=float, default=None, metavar="GIB",
                   help="HBM per chip to fit into (default: the chip's), e.g. less to keep headroom")
    p.add_argument("--new-tokens", type=int, default=32, help="--step generate: tokens generated per row")
    p.add_argument("--json", default=None, help="also write the report to this file as JSON")
    p.add_argument("--verbose", action="store_true", help="show what XLA printed while compiling")
    p.add_argument("--hlo", default=None, metavar="PATH", help="also write the compiled program's HLO text here")
    return p


def run_config(args: argparse.Namespace) -> config_lib.Config:
    """The config train.py would run, with the vocabulary its tokenizer would have (no tokenizer is trained)."""
    overrides = cli.overrides(args)
    if args.workdir:
        cfg = workdir.run_config(args.workdir, args.model, overrides)
        tokenizer = workdir.saved_tokenizer(args.workdir)
    else:
        cfg = config_lib.apply_overrides(models.run_config(args.model or "gpt-tiny"), overrides)
        tokenizer = None
    if tokenizer is None and cfg.data.tokenizer:
        tokenizer = Tokenizer.from_file(cfg.data.tokenizer)
    vocab = tokenizer.vocab_size if tokenizer is not None else cfg.data.vocab_size
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))


def build(cfg: config_lib.Config, devices: list) -> Experiment:
    """train.py's experiment for `cfg`, over the given (compile-only) devices."""
    shape = sharding.mesh_shape(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * 3
    try:  # the physical ring order jax.make_mesh gives train.py on a TPU
        mesh = jax.make_mesh(shape, sharding.MESH_AXES, axis_types=auto, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        mesh = jax.sharding.Mesh(np.asarray(devices).reshape(shape), sharding.MESH_AXES, axis_types=auto)
    return experiment.build(cfg, None, tokenizer=experiment.NO_TOKENIZER, mesh=mesh)


class _ShapeTokenizer:
    """Enough of a tokenizer for a family's row maker to make a padding row of a run's real shapes."""

    pad_id, eos_id, unk_id = 0, 1, 2

    def __init__(self, vocab_size: int, num_sentinels: int):
        self.vocab_size, self.num_sentinels = vocab_size, num_sentinels

    def sentinel_id(self, k: int) -> int:
        return self.vocab_size - 1 - k

    def encode(self, text: str) -> list[int]:
        return []

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [[] for _ in texts]


def abstract_batch(exp: Experiment) -> dict[str, jax.ShapeDtypeStruct]:
    """One global batch as the run's data pipeline makes it (T5's decoder length, BERT's MLM slots), abstract."""
    cfg = exp.config
    maker = exp.family.row_maker(cfg, _ShapeTokenizer(cfg.model.vocab_size, exp.family.reserved_ids(cfg.model)))
    row = maker.finish(maker.empty_row(), np.random.default_rng(0))
    return {k: jax.ShapeDtypeStruct((cfg.data.batch_size, *v.shape), v.dtype,
                                    sharding=exp.layout.batch_shardings.get(k) or sharding.batch_sharding(
                                        exp.mesh, v.ndim + 1))
            for k, v in row.items()}


def trace_step(exp: Experiment, step: str, new_tokens: int = 32) -> tuple[jax.stages.Traced, tuple]:
    """The jitted `step` traced on abstract, sharded arguments, and those arguments."""
    cfg, layout = exp.config, exp.layout
    if step == "train":  # built off the mesh: the step's seed key is a host constant, not a mesh array
        jitted = steps.make_train_step(exp.family, exp.model, exp.tx, layout, exp.mesh, exp.schedule,
                                       cfg.train.seed, cfg.optim.grad_accum, cfg.train.spike_sigmas,
                                       losses.training_options(cfg.optim))
        args = (layout.abstract, abstract_batch(exp))
    elif step == "eval":
        jitted, args = exp.eval_step, (layout.abstract.params, abstract_batch(exp))
    else:
        return _trace_generate(exp, new_tokens)
    with steps.on_mesh(exp.mesh):
        return jitted.trace(*args), args


def _trace_generate(exp: Experiment, new_tokens: int) -> tuple[jax.stages.Traced, tuple]:
    """Generation of `new_tokens` tokens for data.batch_size prompts of data.seq_len tokens each."""
    cfg = exp.config
    if exp.family.generate is None:
        raise config_lib.ConfigError(f"{cfg.preset} does not generate text; use --step train or --step eval")
    B, P = cfg.data.batch_size, cfg.data.seq_len
    rows, rep = sharding.batch_sharding(exp.mesh), sharding.replicated(exp.mesh)
    ids = jax.ShapeDtypeStruct((B, P), np.int32, sharding=rows)
    rng = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=rep)
    temperature, top_k, top_p = (jax.ShapeDtypeStruct((), dtype, sharding=rep)
                                 for dtype in (np.float32, np.int32, np.float32))
    params = exp.layout.abstract.params
    if exp.family.generate.keywords["encoder_decoder"]:  # the family's generate is decode.generate_text
        args = (params, ids, ids, rng, temperature, top_k, top_p)
        with steps.on_mesh(exp.mesh):
            return decode._sample_seq2seq.trace(exp.model, *args, new_tokens), args
    if P + new_tokens > cfg.model.max_len:
        raise config_lib.ConfigError(f"prompts of --seq-len {P} plus --new-tokens {new_tokens} exceed the "
                                     f"model's max_len {cfg.model.max_len}; lower one of them")
    args = (params, ids, ids, ids, rng, temperature, top_k, top_p)
    with steps.on_mesh(exp.mesh):
        return decode._generate_causal.trace(exp.model, *args, new_tokens), args


def compile_traced(traced: jax.stages.Traced) -> aot_report.Compiled:
    """Lower and compile for the traced arguments' devices, capturing what XLA prints meanwhile."""
    start = time.perf_counter()
    with topology.captured_stderr() as captured:
        try:
            executable, oom = traced.lower().compile(), None
        except jax.errors.JaxRuntimeError as err:
            if "RESOURCE_EXHAUSTED" not in str(err):
                raise
            executable, oom = None, str(err)
    return aot_report.Compiled(executable, oom, captured[0], time.perf_counter() - start)


def compile_report(cfg: config_lib.Config, topo: topology.Topology, devices: list, step: str = "train",
                   hbm_bytes: int | None = None, step_time: float | None = None, new_tokens: int = 32,
                   verbose: bool = False, hlo_path: str | None = None) -> dict[str, Any]:
    """Build, trace and compile `step` of the run `cfg` over `devices`; the report (`zoo.aot_report.build`)."""
    exp = build(cfg, devices)
    traced, args = trace_step(exp, step, new_tokens)
    with steps.on_mesh(exp.mesh):
        result = compile_traced(traced)
    if verbose and result.stderr:
        sys.stderr.write(result.stderr)
    if hlo_path and result.executable is not None:
        workdir.write_atomic(hlo_path, result.executable.as_text())
    return aot_report.build(exp, topo, step, traced, args, result, hbm_bytes or topo.chip.hbm_bytes, step_time)


def search_batch(cfg: config_lib.Config, topo: topology.Topology, devices: list, step: str = "train",
                 hbm_bytes: int | None = None, **kwargs: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the report of the largest global batch that fits, every candidate tried as a short summary).

    Batches are the data-parallel size (times optim.grad_accum) doubled, compiled with the remat
    policy that saves least (`full`) until one does not fit; at the largest, the train step is
    compiled again with less recomputation (none, dots, projections, dots_no_batch) and the first
    that still fits wins. Without any fit, the report is that of the smallest batch.
    """
    shape = sharding.mesh_shape(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, len(devices))
    unit = math.lcm(shape[0] * shape[1], cfg.optim.grad_accum)
    tried: list[dict[str, Any]] = []

    def attempt(batch: int, remat: str) -> dict[str, Any]:
        candidate = config_lib.apply_overrides(cfg, [f"data.batch_size={batch}", f"model.remat={remat}"])
        result = compile_report(candidate, topo, devices, step, hbm_bytes, **kwargs)
        tried.append({k: result[k] for k in ("batch_size", "remat", "peak_bytes_per_device", "fits",
                                               "compile_seconds")})
        return result

    frugal = "full" if step == "train" else cfg.model.remat  # remat matters only with a backward pass
    best = first = attempt(unit, frugal)
    batch = unit
    while best["fits"] and len(tried) < MAX_DOUBLINGS:
        batch *= 2
        bigger = attempt(batch, frugal)
        if not bigger["fits"]:
            break
        best = bigger
    if not best["fits"]:
        return first, tried
    if step == "train":
        for remat in REMAT_BY_RECOMPUTE[:-1]:
            faster = attempt(best["batch_size"], remat)
            if faster["fits"]:
                return faster, tried
    return best, tried


def search_lines(tried: list[dict[str, Any]], best: dict[str, Any], hbm_bytes: int) -> list[str]:
    """The batch search as text: every candidate compiled, then the verdict."""
    out = [f"batch search (HBM {hbm_bytes / GIB:.2f} GiB per device)", "  batch  remat            peak GiB  fits  compile s"]
    for t in tried:
        out.append(f"  {t['batch_size']:5d}  {t['remat']:15s} {t['peak_bytes_per_device'] / GIB:9.3f}  "
                   f"{'yes' if t['fits'] else 'no':4s}  {t['compile_seconds']:9.1f}")
    if best["fits"]:
        out.append(f"  largest batch that fits: {best['batch_size']} (double it does not), with remat={best['remat']}"
                   f" the least recomputation that fits it")
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    """`python -m zoo.aot`: compile, report, and exit 0 when the step fits (else one `error:` line)."""
    args = parser().parse_args(argv)
    with cli.user_errors():
        cli.check_output_path(args.json)
        try:
            cli.check_output_path(args.hlo)
        except config_lib.ConfigError as err:
            raise config_lib.ConfigError(str(err).replace("--json", "--hlo")) from None
        for flag, value in (("--hbm", args.hbm), ("--step-time", args.step_time), ("--new-tokens", args.new_tokens)):
            if value is not None and value <= 0:
                raise config_lib.ConfigError(f"{flag} must be positive, got {value}")
        topo = topology.parse(args.topology)
        cfg = run_config(args)
        devices = topology.devices(topo)
        hbm = int(args.hbm * GIB) if args.hbm else topo.chip.hbm_bytes
        options = dict(step_time=args.step_time, new_tokens=args.new_tokens, verbose=args.verbose, hlo_path=args.hlo)
        if args.search:
            result, tried = search_batch(cfg, topo, devices, args.step, hbm, **options)
            result["search"] = {"batch": result["batch_size"] if result["fits"] else None,
                                "remat": result["remat"] if result["fits"] else None, "tried": tried}
            print("\n".join(search_lines(tried, result, hbm)))
        else:
            result = compile_report(cfg, topo, devices, args.step, hbm, **options)
        print(aot_report.to_text(result), flush=True)
        if args.json:
            workdir.write_json(args.json, result)
        if not result["fits"]:
            raise DoesNotFit(aot_report.not_fitting(result, searched=bool(args.search)))
    return 0


if __name__ == "__main__":
    if "JAX_PLATFORMS" not in os.environ:  # the host side needs no accelerator, and a local TPU may be busy
        jax.config.update("jax_platforms", "cpu")
    sys.exit(main())
