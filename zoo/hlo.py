"""What a compiled step does, read from its programs: collectives per step and FLOPs per step.

XLA's `cost_analysis()` counts the body of a loop once, and every layer stack here is a loop
(`nn.scan`), so both figures are counted with loop trip counts instead: collectives from the
compiled HLO text (a while loop's trip count from its condition, `counter < N`), FLOPs from the
traced jaxpr (scan lengths are static). Both are per step; collective bytes are per device.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
from jax.extend import core as jex_core

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
               "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|branch_computations|called_computations)="
                     r"\{?((?:%[\w.\-]+(?:, )?)+)\}?")


@dataclasses.dataclass
class Collective:
    """One collective instruction of the compiled program."""

    kind: str  # one of COLLECTIVES
    name: str  # the HLO instruction name
    bytes: int  # of its result, on one device
    per_step: int  # times it runs per step (the trip counts of the loops around it)
    op_name: str  # the JAX operation it came from (HLO metadata), for finding its cause
    replica_groups: str


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective of a compiled HLO module, with its result bytes and how often it runs per step."""
    computations, entry = _computations(hlo_text)
    runs = _runs_per_step(computations, entry)
    out, channels = [], set()
    for comp, lines in computations.items():
        for line in lines:
            m = _INSTRUCTION.match(line)
            if not m:
                continue
            kind = m[3].removesuffix("-done")
            if kind not in COLLECTIVES or m[3].endswith("-start"):  # -start/-done pairs count once, at -done
                continue
            result = m[2]
            if comp.startswith("all-reduce-scatter"):  # TPU's reduce-scatter: a fused all-reduce + slice
                kind, result = "reduce-scatter", _root_shape(lines)
            # TPU async collective fusions split one collective over several fusions; they share its channel
            channel = re.search(r"channel_id=(\d+)", line)
            if channel:
                if channel[1] in channels:
                    continue
                channels.add(channel[1])
            op = re.search(r'op_name="([^"]*)"', line)
            groups = re.search(r"replica_groups=(\S+(?: \{[^}]*\})?)", line)
            out.append(Collective(kind, m[1], shape_bytes(result), runs.get(comp, 1), op[1] if op else "",
                                  groups[1] if groups else ""))
    return out


def summarize(found: list[Collective]) -> dict[str, dict[str, int]]:
    """Per kind: instructions in the program, executions per step, and bytes moved per step per device."""
    table = {kind: {"ops": 0, "per_step": 0, "bytes_per_step": 0} for kind in COLLECTIVES}
    for c in found:
        row = table[c.kind]
        row["ops"] += 1
        row["per_step"] += c.per_step
        row["bytes_per_step"] += c.bytes * c.per_step
    return table


def shape_bytes(shape_text: str) -> int:
    """Bytes of an HLO result shape (an array or a tuple of arrays), e.g. "(f32[2,4]{1,0}, bf16[8])"."""
    return sum(DTYPE_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(",") if d)
               for dtype, dims in _ARRAY.findall(shape_text))


def _root_shape(lines: list[str]) -> str:
    """The result shape of a computation's ROOT instruction."""
    root = next((m for line in lines if line.lstrip().startswith("ROOT") and (m := _INSTRUCTION.match(line))), None)
    return root[2] if root else ""


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
    """{computation name: its instruction lines}, and the entry computation's name."""
    computations: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m[1]
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif line.startswith("}"):
            current = None
        elif current is not None:
            computations[current].append(line)
    return computations, entry


def _runs_per_step(computations: dict[str, list[str]], entry: str) -> dict[str, int]:
    """How many times each computation runs per step: a while body runs its trip count times its caller."""
    runs = {entry: 1}
    stack = [entry]
    while stack:
        comp = stack.pop()
        for line in computations.get(comp, ()):
            trips = 1
            if re.search(r" while\(", line):
                cond = re.search(r"condition=%?([\w.\-]+)", line)
                trips = _trip_count(computations.get(cond[1], [])) if cond else 1
            for group in _CALLED.findall(line):
                for callee in re.findall(r"%([\w.\-]+)", group):
                    if callee in computations and callee not in runs:
                        runs[callee] = runs[comp] * trips
                        stack.append(callee)
    return runs


def _trip_count(condition: list[str]) -> int:
    """N for a loop condition `counter < N` with a constant N (what scans compile to); 1 if unknown."""
    constants = dict(re.findall(r"%?([\w.\-]+) = [su](?:32|64)\[\]\S* constant\((\d+)\)", "\n".join(condition)))
    for line in condition:
        m = re.search(r"compare\(%?[\w.\-]+, %?([\w.\-]+)\), direction=LT", line)
        if m and m[1] in constants:
            return int(constants[m[1]])
    return 1


def jaxpr_flops(jaxpr: Any) -> float:
    """Matmul FLOPs of a (closed) jaxpr, global (all devices together): every dot_general and
    convolution, scan bodies times their length, the costlier branch of a cond, remat recomputation
    included (it is part of the differentiated program)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            # out = batch x lhs-free x rhs-free; each output element is a length-`contracted` dot
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / out_features
        elif name == "cond":
            total += max(jaxpr_flops(branch) for branch in eqn.params["branches"])
        else:
            inner = sum(jaxpr_flops(p) for p in _subjaxprs(eqn.params))
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def _subjaxprs(params: dict) -> list:
    """The jaxprs among an equation's parameters (pjit, remat, custom_jvp/vjp, while, scan bodies)."""
    found = []
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, (jex_core.ClosedJaxpr, jex_core.Jaxpr)):
                found.append(item)
    return found


def traced_flops(traced: jax.stages.Traced) -> float:
    """Matmul FLOPs per call of a traced jitted function (see `jaxpr_flops`)."""
    return jaxpr_flops(traced.jaxpr)
