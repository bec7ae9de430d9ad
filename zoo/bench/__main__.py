"""`python -m zoo.bench`: the flags and the run (sections, then peers, then ratios); see `zoo.bench`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import models
from zoo import cli, config as config_lib
from zoo.bench import compare, measure, ours, peers, report

SECTIONS = ("train", "decode", "input", "compile")


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


def bench_config(args: argparse.Namespace) -> config_lib.Config:
    """The run config: the preset with the benchmark's batch shape, dtype, mesh and --set overrides."""
    cfg = cli.with_mesh_flag(models.run_config(args.model), args.mesh)
    overrides = [f"data.batch_size={args.batch_size}", f"data.seq_len={args.seq_len}", f"model.dtype={args.dtype}"]
    return config_lib.apply_overrides(cfg, overrides + list(args.set))


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise config_lib.ConfigError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise config_lib.ConfigError(f"{flag} expects positive integers, got {text!r}")
    return values


def _sections(args: argparse.Namespace) -> list[str]:
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    if set(sections) - set(SECTIONS) or not sections:
        raise config_lib.ConfigError(f"--only takes a subset of {','.join(SECTIONS)}, got {args.only!r}")
    if args.steps < 1:
        raise config_lib.ConfigError(f"--steps must be at least 1, got {args.steps}")
    return sections


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every requested section (and peer) of one benchmark; the JSON-able result."""
    sections = _sections(args)
    decode_batches, depths = _ints(args.decode_batch, "--decode-batch"), _ints(args.depths, "--depths")
    cfg = bench_config(args)
    family = models.FAMILIES[cfg.family]
    family.validate(cfg.model, cfg.data.seq_len)
    peak = ours.peak_info(cfg.model.dtype)
    result: dict[str, Any] = {"model": args.model, "family": cfg.family, "device": ours.device_info(), "peak": peak,
                              "config": config_lib.to_dict(cfg), "steps": args.steps, "load_start": measure.load()}
    measure.say(f"matmul peak ({peak['matmul_n']}^2 {peak['matmul_dtype']}): "
                f"{peak['measured_matmul_flops'] / 1e9:,.0f} GFLOP/s measured")
    if args.vs:
        result["peers"] = {b: compare.header(b, family, cfg.model) for b in dict.fromkeys(args.vs)}
    ready = {b: p for b, p in result.get("peers", {}).items() if "unavailable" not in p}
    params = None
    if "train" in sections:
        measure.say("train: ours")
        result["train"], params = ours.bench_train(cfg, args.steps, peak)
        measure.say(f"train: {result['train']['tokens_per_s']:,.0f} tokens/s, MFU {result['train']['mfu']:.1%}")
        for backend, peer in ready.items():
            measure.say(f"train: {backend}")
            peer["train"] = compare.train(backend, peer, cfg, result["train"]["batch_shapes"], args.steps,
                                          args.peer_process)
    if "decode" in sections:
        measure.say("decode: ours")
        result["decode"] = ours.bench_decode(cfg, params, decode_batches, args.prompt_len, args.new_tokens)
        for backend, peer in ready.items():
            if "skipped" not in result["decode"]:
                measure.say(f"decode: {backend}")
                peer["decode"] = compare.decode(backend, peer, cfg, decode_batches, args.prompt_len, args.new_tokens)
    params = None  # free the trained state before the other sections
    if "input" in sections:
        measure.say("input")
        step_s = result["train"]["step_s_median"] if "train" in result else None
        result["input"] = ours.bench_input(cfg, args.input_data, args.input_batches, step_s)
    if "compile" in sections:
        measure.say("compile vs depth")
        result["compile"] = ours.bench_compile(cfg, depths)
    report.add_ratios(result)
    result["load_end"] = measure.load()
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the benchmark, print the table, write --json; the exit status."""
    args = parser().parse_args(argv)
    # Grow device memory on demand: peers run in other processes on the same accelerator.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    with cli.user_errors():
        result = run(args)
        print(report.report(result))
        if args.json:
            tmp = args.json + ".tmp"
            with open(tmp, "w") as f:
                json.dump(result, f, indent=2, sort_keys=True)
            os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
