"""Cloud TPU accelerator names (v4-8, v5e-16, v5litepod-4, v5p-8, v6e-8) as compile-only TPU devices.

A name maps to the chip generation, the slice's chip layout (`get_topology_desc`'s topology name,
e.g. "v5e:4x4" or "v4:2x2x1"), each chip's HBM and peak bf16 FLOP/s. v4 and v5p names count
TensorCores, two per chip, which JAX drives as one "megacore" device (v4-8 is 4 chips, 4 devices);
v5e and v6e names count chips. The devices come from libtpu's compiler and run nothing: they are for
`jax.jit(...).lower(...).compile()` on any host, TPU or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import itertools
import math
import os
import re
import sys
import tempfile
from typing import Iterator

from zoo import throughput
from zoo.config import ConfigError
from zoo.errors import ZooError

GIB = 2**30


class TopologyError(ConfigError):
    """An accelerator name that names no Cloud TPU slice."""


class LibtpuMissing(ZooError):
    """libtpu, the TPU compiler, is not installed."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: how its names count, how libtpu names its layouts, and its data-sheet figures."""

    platform_name: str  # the prefix of get_topology_desc's topology name
    device_kind: str  # what jax's devices report
    hbm_bytes: int
    counts_cores: bool  # the accelerator name counts TensorCores (two per chip), not chips
    chip_config: str  # "megacore": one device per chip, driving both its TensorCores


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", "TPU v4", 32 * GIB, counts_cores=True, chip_config="megacore"),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GIB, counts_cores=False, chip_config="default"),
    "v5p": Chip("v5", "TPU v5", 95 * GIB, counts_cores=True, chip_config="megacore"),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GIB, counts_cores=False, chip_config="default"),
}
ALIASES = {"v5litepod": "v5e"}
# v5e and v6e slices are 2-D: the chip counts Cloud TPU offers and their layouts
GRIDS = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice: its accelerator name, chip generation, chip layout and per-chip figures."""

    accelerator: str  # as Cloud TPU spells it, e.g. "v5litepod-16"
    generation: str  # a key of CHIPS
    shape: tuple[int, ...]  # chips along each torus / grid axis
    chip: Chip

    @property
    def chips(self) -> int:
        """Number of chips, which is the number of JAX devices."""
        return math.prod(self.shape)

    @property
    def topology_name(self) -> str:
        """The name `jax.experimental.topologies.get_topology_desc` takes, e.g. "v5e:4x4"."""
        return f"{self.chip.platform_name}:{'x'.join(map(str, self.shape))}"

    @property
    def peak_flops(self) -> float:
        """Dense bf16 FLOP/s of one chip (zoo.throughput's table)."""
        return next(peak for kind, peak in throughput.PEAK_FLOPS.items()
                    if kind.lower() in self.chip.device_kind.lower())


def parse(name: str) -> Topology:
    """The slice a Cloud TPU accelerator name (v4-8, v5e-16, v5litepod-4, v5p-8, v6e-8) describes."""
    match = re.fullmatch(r"(v4|v5e|v5litepod|v5p|v6e)-(\d+)", name.strip().lower())
    if not match:
        raise TopologyError(f"unknown TPU topology {name!r}; use an accelerator name such as v4-8, v5e-16, "
                            f"v5litepod-4, v5p-8 or v6e-8")
    generation, count = ALIASES.get(match[1], match[1]), int(match[2])
    chip = CHIPS[generation]
    if chip.counts_cores:
        shape = _torus(count // 2) if count % 8 == 0 else None
        valid = "8, 16, 32, 64, then multiples of 128 (two TensorCores per chip)"
    else:
        shape = GRIDS.get(count)
        valid = ", ".join(map(str, GRIDS))
    if shape is None:
        raise TopologyError(f"{name} is not a {generation} slice; {generation} comes in sizes {valid}")
    accelerator = f"v5litepod-{count}" if generation == "v5e" else f"{generation}-{count}"
    return Topology(accelerator, generation, shape, chip)


def _torus(chips: int) -> tuple[int, int, int] | None:
    """The 3-D layout of a v4/v5p slice of `chips` chips: 2x2x1 up to 2x4x4, then whole 4x4x4 cubes
    arranged as close to a cube as they go (v4-384 is 4x4x12, v5p-768 is 4x8x12)."""
    small = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4)}
    if chips in small:
        return small[chips]
    if chips % 64:
        return None
    cubes = chips // 64
    layouts = [(a, b, cubes // (a * b)) for a, b in itertools.product(range(1, cubes + 1), repeat=2)
               if a <= b and cubes % (a * b) == 0 and b <= cubes // (a * b)]
    a, b, c = min(layouts, key=lambda s: (s[2] / s[0], s[2]))
    return 4 * a, 4 * b, 4 * c


def require_libtpu() -> None:
    """Raise LibtpuMissing (one line) unless the TPU compiler can be loaded."""
    if importlib.util.find_spec("libtpu") is None:
        raise LibtpuMissing("libtpu is not installed: pip install 'zoo[tpu]'")


def devices(topology: Topology) -> list:
    """The slice's compile-only TPU devices (one per chip, in the order libtpu numbers them)."""
    require_libtpu()
    from jax.experimental import topologies

    options: dict = {"chip_config_name": topology.chip.chip_config}
    if topology.chips == 1:  # the default host holds 2x2 chips
        options["chips_per_host_bounds"] = (1, 1, 1)
    with _libtpu_env(topology), captured_stderr():  # loading libtpu says this host has no TPU: the point
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology.topology_name,
                                                 **options).devices)


@contextlib.contextmanager
def _libtpu_env(topology: Topology) -> Iterator[None]:
    """The environment libtpu reads when it loads (once per process), set only while it may load.

    These devices only compile: let several processes load libtpu at once (a live training run on
    the same host holds its lock file), name the accelerator so that libtpu does not try to discover
    one on a host that has none, and send the compiler's warnings (involuntary full
    rematerialization, ...) to stderr, where `zoo.aot` reads them, not only to /tmp/tpu_logs.
    Variables the user set are left alone; the rest are removed again, so that subprocesses do not
    inherit them.
    """
    wanted = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_ACCELERATOR_TYPE": topology.accelerator,
              "TPU_WORKER_HOSTNAMES": "localhost", "TPU_STDERR_LOG_LEVEL": "1"}
    added = [k for k in wanted if k not in os.environ]
    os.environ.update({k: wanted[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def reported_hbm_bytes(device: object) -> int | None:
    """The HBM a device reports (`memory_stats()["bytes_limit"]`), or None: compile-only devices report none."""
    try:
        stats = device.memory_stats()  # type: ignore[attr-defined]  # jax Device, untyped here
    except Exception:  # compile-only devices raise INVALID_ARGUMENT; others may return None
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect everything written to file descriptor 2 (XLA's C++ warnings included) into the yielded list."""
    sys.stderr.flush()
    saved = os.dup(2)
    captured: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))
