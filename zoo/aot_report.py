"""The report of `zoo.aot`: what one compiled step needs per device, what it computes and moves, as data and as text.

`build` gathers everything into plain JSON-able data (the `--json` file); `to_text` writes it as the
tables `python -m zoo.aot` prints; `advice` says what to change when it does not fit.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax

from zoo import hlo, sharding, steps, topology
from zoo.experiment import Experiment

GIB = topology.GIB


@dataclasses.dataclass
class Compiled:
    """A compilation's outcome: the executable, or the out-of-memory message XLA refused it with."""

    executable: Any | None
    oom: str | None
    stderr: str  # what XLA printed while compiling
    seconds: float


def build(exp: Experiment, topo: topology.Topology, step: str, traced: jax.stages.Traced, args: tuple,
          result: Compiled, hbm_bytes: int, step_time: float | None) -> dict[str, Any]:
    """Memory, FLOPs, MFU, collectives and sharding of one compiled step, as plain JSON-able data."""
    cfg, n = exp.config, exp.mesh.size
    expected_args = bytes_per_device(args)
    out: dict[str, Any] = {
        "accelerator": topo.accelerator, "topology_name": topo.topology_name, "devices": n,
        "device_kind": exp.mesh.devices.flat[0].device_kind, "mesh": dict(exp.mesh.shape),
        "preset": cfg.preset, "family": cfg.family, "step": step, "batch_size": cfg.data.batch_size,
        "seq_len": cfg.data.seq_len, "vocab_size": cfg.model.vocab_size, "dtype": cfg.model.dtype,
        "remat": cfg.model.remat, "params": steps.count_params(exp.layout.abstract.params),
        "hbm_bytes_per_device": hbm_bytes, "chip_hbm_bytes": topo.chip.hbm_bytes,
        "reported_hbm_bytes": topology.reported_hbm_bytes(exp.mesh.devices.flat[0]),
        "state_bytes_per_device": bytes_per_device(args[0]), "sharded_argument_bytes_per_device": expected_args,
        "compile_seconds": round(result.seconds, 1),
    }
    out |= _memory(result, hbm_bytes, expected_args)
    flops = hlo.traced_flops(traced)
    tokens = cfg.data.batch_size * cfg.data.seq_len
    model = exp.family.flops_per_token(cfg.model, cfg.data.seq_len) * tokens if step == "train" else flops
    peak_flops = topo.peak_flops
    out |= {"flops_per_step": flops, "model_flops_per_step": model, "peak_flops_per_device": peak_flops,
            "step_time_s": step_time, "mfu": model / (step_time * n * peak_flops) if step_time else None,
            "step_time_at_50pct_mfu_s": model / (0.5 * n * peak_flops)}
    remats = [line for line in result.stderr.splitlines() if "nvoluntary full rematerialization" in line]
    out["involuntary_remats"] = len(remats)
    out["involuntary_remat_examples"] = [line[:400] for line in remats[:3]]
    out["sharding"] = sharding.inspect(steps.abstract_params(exp.family, exp.model, 1, 8), exp.mesh)
    return out


def _memory(result: Compiled, hbm_bytes: int, expected_args: int) -> dict[str, Any]:
    """Per-device memory of a compilation; after an out-of-memory refusal, what XLA said it needed."""
    if result.executable is None:
        return {"argument_bytes_per_device": expected_args, "output_bytes_per_device": None,
                "temp_bytes_per_device": None, "alias_bytes_per_device": None, "code_bytes_per_device": None,
                "peak_bytes_per_device": oom_needs(result.oom or "", expected_args), "fits": False,
                "compile_error": (result.oom or "").strip().splitlines()[0][:300], "collectives": None,
                "largest_collectives": [], "xla_flops_per_device": None}
    executable = result.executable
    mem = executable.memory_analysis()
    peak = getattr(mem, "peak_memory_in_bytes", 0) or (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                                         - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    found = hlo.collectives(executable.as_text())
    return {"argument_bytes_per_device": mem.argument_size_in_bytes,
            "output_bytes_per_device": mem.output_size_in_bytes, "temp_bytes_per_device": mem.temp_size_in_bytes,
            "alias_bytes_per_device": mem.alias_size_in_bytes,
            "code_bytes_per_device": mem.generated_code_size_in_bytes,
            "peak_bytes_per_device": peak, "fits": peak <= hbm_bytes, "compile_error": None,
            "collectives": hlo.summarize(found),
            "largest_collectives": [dataclasses.asdict(c) for c in
                                    sorted(found, key=lambda c: -c.bytes * c.per_step)[:6]],
            "xla_flops_per_device": float((executable.cost_analysis() or {}).get("flops", 0.0))}


_SIZE = r"([\d.]+)([KMGT]?)"


def oom_needs(message: str, argument_bytes: int) -> int:
    """Bytes per device an out-of-memory compile error says the program needs (a lower bound)."""
    def size(number: str, unit: str) -> int:
        return int(float(number) * 1024 ** " KMGT".index(unit or " "))
    used = re.search(r"Used " + _SIZE + " of", message)
    total = re.search(r"Total hbm usage >= " + _SIZE, message)
    temps = re.search(r"HLO temporaries \(" + _SIZE + r"\)", message)
    needs = [size(*m.groups()) for m in (used, total) if m]
    if temps:
        needs.append(size(*temps.groups()) + argument_bytes)
    return max(needs, default=argument_bytes)


def bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded abstract arrays: each leaf's shard, not its whole."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) else leaf.shape
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


def advice(result: dict[str, Any], mesh: dict[str, int], searched: bool) -> str:
    """What to try when a step does not fit: all devices on fsdp, full remat, the batch search, a larger slice."""
    tries = []
    if mesh["fsdp"] * mesh["tensor"] < result["devices"]:
        tries.append(f"--set mesh.fsdp={result['devices'] // mesh['tensor']}")
    if result["step"] == "train" and result["remat"] != "full":
        tries.append("--set model.remat=full")
    if not searched:
        tries.append("--search batch")
    tries.append("a larger slice" if searched or not tries else "a smaller --batch-size")
    return ", ".join(tries[:-1]) + f" or {tries[-1]}" if len(tries) > 1 else tries[0]


def not_fitting(result: dict[str, Any], searched: bool = False) -> str:
    """The one line saying that (and by how much) a step does not fit, and what to try."""
    needs, has = result["peak_bytes_per_device"], result["hbm_bytes_per_device"]
    at_least = "at least " if result["compile_error"] else ""
    where = f" even at batch {result['batch_size']} with remat={result['remat']}" if searched else ""
    return (f"{result['preset']} does not fit {result['accelerator']}{where}: needs {at_least}{needs / GIB:.1f} GiB "
            f"per device, has {has / GIB:.1f} GiB; try {advice(result, result['mesh'], searched)}")


def _gib(x: int | None) -> str:
    return "-" if x is None else f"{x / GIB:9.3f}"


def _size(x: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{int(x)} B"


def to_text(r: dict[str, Any]) -> str:
    """The report as the text `python -m zoo.aot` prints."""
    mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
    lines = [f"{r['preset']} {r['step']} step on {r['accelerator']} ({r['topology_name']}: {r['devices']} x "
             f"{r['device_kind']}), mesh {mesh}",
             f"  {r['params'] / 1e6:,.1f}M params, {r['dtype']} activations, remat={r['remat']}, batch "
             f"{r['batch_size']} x {r['seq_len']} tokens, vocabulary {r['vocab_size']:,}; "
             f"compiled in {r['compile_seconds']} s", ""]
    lines += _memory_lines(r) + [""] + _flops_lines(r) + [""] + _collective_lines(r) + [""]
    lines += _sharding_lines(r["sharding"])
    return "\n".join(lines)


def _memory_lines(r: dict[str, Any]) -> list[str]:
    hbm, peak = r["hbm_bytes_per_device"], r["peak_bytes_per_device"]
    out = ["memory per device               GiB"]
    if r["compile_error"]:
        out.append(f"  XLA refused it: {r['compile_error']}")
    state = "params + optimizer state" if r["step"] == "train" else "params"
    out += [f"  arguments               {_gib(r['argument_bytes_per_device'])}   ({state} "
            f"{r['state_bytes_per_device'] / GIB:.3f}, the rest the batch)",
            f"  outputs                 {_gib(r['output_bytes_per_device'])}",
            f"  aliased (donated)       {_gib(r['alias_bytes_per_device'])}",
            f"  temporaries             {_gib(r['temp_bytes_per_device'])}",
            f"  peak (what XLA needs)   {_gib(peak)}{'   (at least)' if r['compile_error'] else ''}",
            f"  HBM                     {_gib(hbm)}   " + (f"fits, {(hbm - peak) / GIB:.2f} GiB to spare"
                                                          if r["fits"] else "DOES NOT FIT")]
    if hbm != r["chip_hbm_bytes"]:
        out.append(f"  (--hbm; the chip has {r['chip_hbm_bytes'] / GIB:.0f} GiB)")
    reported = r["reported_hbm_bytes"]
    out.append(f"  (the device reports {_size(reported)})" if reported else
               "  (compile-only devices report no memory size: the HBM above is the data sheet's)")
    return out


def _flops_lines(r: dict[str, Any]) -> list[str]:
    n, peak = r["devices"], r["peak_flops_per_device"]
    out = [f"FLOPs per step            {r['flops_per_step']:.3e}   (all devices; matmuls of the traced step, "
           f"loops x trips, remat recomputation included)"]
    if r["step"] == "train":
        out.append(f"  model FLOPs             {r['model_flops_per_step']:.3e}   (6 x matmul params + attention, "
                   f"per token: what the trainer's MFU counts)")
    if r["xla_flops_per_device"] is not None:
        out.append(f"  XLA cost_analysis       {r['xla_flops_per_device']:.3e}   per device (counts each loop "
                   f"body once)")
    out.append(f"  peak                    {peak / 1e12:,.0f} TFLOP/s bf16 per chip x {n}")
    tokens = r["batch_size"] * r["seq_len"]
    if r["step_time_s"]:
        hfu = r["flops_per_step"] / (r["step_time_s"] * n * peak)
        out.append(f"  at {r['step_time_s']:g} s per step      MFU {r['mfu']:.1%}, compiled-FLOP utilisation "
                   f"{hfu:.1%}, {tokens / r['step_time_s']:,.0f} tokens/s")
    else:
        t = r["step_time_at_50pct_mfu_s"]
        out.append(f"  50% MFU takes           {t:.4g} s per step ({tokens / t:,.0f} tokens/s); "
                   f"--step-time S gives the MFU of a measured step")
    return out


def _collective_lines(r: dict[str, Any]) -> list[str]:
    if r["collectives"] is None:
        return ["collectives: not compiled"]
    out = ["collectives                in HLO   per step   bytes per step per device"]
    for kind, row in r["collectives"].items():
        out.append(f"  {kind:22s} {row['ops']:8d} {row['per_step']:10d}   {_size(row['bytes_per_step'])}")
    for c in r["largest_collectives"][:4]:
        out.append(f"  largest: {c['kind']} {_size(c['bytes'])} x {c['per_step']}  {_short(c['op_name'])}")
    out.append(f"involuntary full rematerializations (XLA warnings): {r['involuntary_remats']}")
    out += [f"  {line[:200]}" for line in r["involuntary_remat_examples"]]
    return out


def _short(op_name: str) -> str:
    """The tail of an HLO op_name (which layer and operation), and whether it is of the backward pass."""
    parts = [p for p in re.sub(r"\w+\(|\)", "", op_name).split("/") if p not in ("while", "body", "closed_call")]
    return ("backward " if "transpose(" in op_name else "") + "/".join(parts[-4:])


def _sharding_lines(s: dict[str, Any]) -> list[str]:
    out = ["sharding of the parameters (optimizer state follows them)",
           f"  {'parameter':44s} {'shape':20s} {'logical axes':28s} {'PartitionSpec':36s} {'per device':>10s}"]
    for p in s["params"]:
        logical = ",".join(a or "-" for a in p["logical"])
        out.append(f"  {p['path'][:44]:44s} {str(p['shape']):20s} {logical[:28]:28s} {p['spec'][:36]:36s} "
                   f"{_size(p['bytes_per_device']):>10s}")
    undivided = [f"{p['path']} dim {d}" for p in s["params"] for d in p["undivided"]]
    out += [f"  rules no parameter uses: {', '.join(s['unused_rules']) or '-'}",
            f"  rules idle on this mesh (their mesh axes have size 1): {', '.join(s['idle_rules']) or '-'}",
            f"  logical axes without a rule (replicated): {', '.join(s['unknown_axes']) or '-'}",
            f"  dimensions that do not divide over their mesh axes: {', '.join(undivided) or '-'}"]
    return out
