"""Ahead-of-time compilation for Cloud TPU slices (zoo.aot): names, memory, the CLI, the batch search.

Compiling needs libtpu (`pip install 'zoo[tpu]'`); those tests skip without it. Models are shrunk
to one layer of width 128 (one 128-wide head), so a compile takes seconds; widths are multiples of
128 so that TPU tiles pad only the scalars.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import models
from zoo import aot, config as config_lib, topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
SMALL = ["model.num_layers=1", "model.d_model=128", "model.num_heads=1", "model.head_dim=128", "model.d_ff=256",
         "model.vocab_size=512", "data.vocab_size=512", "data.seq_len=128", "data.batch_size=16"]
SMALL_FLAGS = [x for o in SMALL for x in ("--set", o)]


def tiny(preset: str = "gpt-tiny", *overrides: str) -> config_lib.Config:
    """A preset shrunk to one 128-wide layer, batch 16 x 128."""
    extra = ["model.num_decoder_layers=1"] if preset.startswith("t5") else []
    return config_lib.apply_overrides(models.run_config(preset), SMALL + extra + list(overrides))


@pytest.fixture(scope="module")
def v5e_4():
    topo = topology.parse("v5e-4")
    return topo, topology.devices(topo)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "zoo.aot", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("name, chips, layout", [
    ("v4-8", 4, "v4:2x2x1"), ("v4-128", 64, "v4:4x4x4"), ("v4-384", 192, "v4:4x4x12"),
    ("v5e-16", 16, "v5e:4x4"), ("v5litepod-4", 4, "v5e:2x2"), ("v5e-1", 1, "v5e:1x1"),
    ("v5p-8", 4, "v5:2x2x1"), ("v5p-768", 384, "v5:4x8x12"), ("v6e-8", 8, "v6e:2x4"), ("V6E-256", 256, "v6e:16x16"),
])
def test_accelerator_names_map_to_layouts(name, chips, layout):
    topo = topology.parse(name)
    assert (topo.chips, topo.topology_name) == (chips, layout)
    assert topo.chip.hbm_bytes == {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}[topo.generation] * 2**30


@pytest.mark.parametrize("name", ["v5e-3", "v4-4", "v4-12", "v5p-96", "tpu-8", "v7-8", "v5e", "", "v5e-4x4"])
def test_unknown_names_are_one_line_config_errors(name):
    with pytest.raises(config_lib.ConfigError) as err:
        topology.parse(name)
    assert "\n" not in str(err.value)


def test_missing_libtpu_is_one_line(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(topology.LibtpuMissing, match=r"^libtpu is not installed: pip install 'zoo\[tpu\]'$"):
        topology.devices(topology.parse("v5e-4"))


def padded_bytes(shape: tuple, itemsize: int) -> int:
    """Bytes of a 32-bit array in TPU tiles: the last dim in 128s, the one before in rows of up to 8."""
    if not shape:
        shape = (1,)
    *major, rows, cols = (1, *shape) if len(shape) == 1 else shape
    rows_tile = 8 if rows >= 8 else 2 ** math.ceil(math.log2(rows))
    return math.prod(major) * -(-rows // rows_tile) * rows_tile * -(-cols // 128) * 128 * itemsize


@needs_libtpu
def test_argument_bytes_are_the_sharded_state_plus_the_batch(v5e_4):
    topo, devices = v5e_4
    # width 256 over fsdp=2: every sharded dimension stays a multiple of 128
    cfg = tiny("gpt-tiny", "model.num_layers=2", "model.d_model=256", "mesh.data=2", "mesh.fsdp=2")
    report = aot.compile_report(cfg, topo, devices)
    exp = aot.build(cfg, devices)
    mesh = exp.mesh.shape
    expected = unpadded = 0
    for leaf in jax.tree.leaves((exp.layout.abstract, aot.abstract_batch(exp))):
        ways = [math.prod(mesh[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))
                for axes in tuple(leaf.sharding.spec) + (None,) * (leaf.ndim - len(leaf.sharding.spec))]
        shard = tuple(size // w for size, w in zip(leaf.shape, ways))
        expected += padded_bytes(shard, np.dtype(leaf.dtype).itemsize)
        unpadded += math.prod(shard) * np.dtype(leaf.dtype).itemsize
    assert report["argument_bytes_per_device"] == expected
    assert report["sharded_argument_bytes_per_device"] == unpadded  # the report's own sum, before tiles
    assert report["fits"] and report["peak_bytes_per_device"] >= report["argument_bytes_per_device"]
    # fsdp gathers each layer's weights inside the scanned stack: those gathers run once per layer
    gathers = report["collectives"]["all-gather"]
    assert gathers["per_step"] > gathers["ops"] > 0
    rows = {p["path"]: p for p in report["sharding"]["params"]}
    assert rows["layers/mlp/w_in"]["spec"] == "P(None, 'fsdp', 'tensor')"
    assert rows["layers/mlp/w_in"]["bytes_per_device"] == 2 * 256 * 256 * 4 // 2
    assert "batch" in report["sharding"]["unused_rules"] and "heads" in report["sharding"]["idle_rules"]


@needs_libtpu
def test_cli_report_and_json(tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("--topology", "v5litepod-4", "--model", "gpt-tiny", *SMALL_FLAGS, "--step-time", "0.01",
                   "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fits" in proc.stdout and "all-gather" in proc.stdout and "PartitionSpec" in proc.stdout
    r = json.loads(out.read_text())
    for key in ("fits", "devices", "device_kind", "hbm_bytes_per_device", "peak_bytes_per_device",
                "argument_bytes_per_device", "flops_per_step", "mfu", "collectives", "sharding"):
        assert key in r
    assert (r["fits"], r["devices"], r["device_kind"], r["hbm_bytes_per_device"]) == (True, 4, "TPU v5 lite", 16 * 2**30)
    # one layer: a loop of one trip, which XLA's own count gets right; ours agrees with it
    assert r["flops_per_step"] == pytest.approx(r["xla_flops_per_device"] * 4, rel=0.15)
    assert r["flops_per_step"] >= r["model_flops_per_step"]
    assert r["mfu"] == pytest.approx(r["model_flops_per_step"] / (0.01 * 4 * 197e12))


@needs_libtpu
@pytest.mark.parametrize("flags", [
    [*SMALL_FLAGS, "--hbm", "0.002"],  # compiles, but needs more than 2 MiB per device
    # XLA itself refuses it: 4096 x 512 tokens of 8000 logits are 16 GiB per device
    ["--set", "model.num_layers=1", "--set", "data.vocab_size=8000", "--batch-size", "4096", "--seq-len", "512", "--set", "model.remat=none"],
], ids=["over-hbm", "xla-out-of-memory"])
def test_what_does_not_fit_exits_with_one_line(flags, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("--topology", "v5e-4", "--model", "gpt-tiny", *flags, "--json", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors[0].startswith("error: gpt-tiny does not fit v5litepod-4: needs ")
    assert "GiB per device, has " in errors[0] and "--set mesh.fsdp=4" in errors[0]
    r = json.loads(out.read_text())
    assert r["fits"] is False and r["peak_bytes_per_device"] > r["hbm_bytes_per_device"]


@needs_libtpu
def test_bad_topology_through_the_cli():
    proc = run_cli("--topology", "v9-8")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: unknown TPU topology")


@needs_libtpu
def test_search_finds_the_largest_batch_that_fits(v5e_4):
    topo, devices = v5e_4
    cfg = tiny("gpt-tiny", "data.batch_size=4")
    hbm = 10 * 2**20  # the state takes ~3 MiB, so the activations of a few dozen rows decide
    best, tried = aot.search_batch(cfg, topo, devices, hbm_bytes=hbm)
    batch = best["batch_size"]
    assert best["fits"] and batch >= 8 and batch % 4 == 0
    double = config_lib.apply_overrides(cfg, [f"data.batch_size={2 * batch}", "model.remat=full"])
    assert not aot.compile_report(double, topo, devices, hbm_bytes=hbm)["fits"]
    assert [t["batch_size"] for t in tried[:2]] == [4, 8]
    assert {"batch_size": batch, "remat": best["remat"], "fits": True}.items() <= next(
        t for t in tried if (t["batch_size"], t["remat"]) == (batch, best["remat"])).items()


@needs_libtpu
@pytest.mark.parametrize("preset, step", [("bert-tiny", "train"), ("t5-tiny", "train"), ("t5-tiny", "generate"),
                                          ("gpt-tiny", "generate"), ("bert-tiny", "eval")])
def test_every_family_and_step_compiles(preset, step, v5e_4):
    topo, devices = v5e_4
    report = aot.compile_report(tiny(preset), topo, devices, step, new_tokens=4)
    assert report["fits"] and report["flops_per_step"] > 0 and report["step"] == step


RESHARD = """
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P, Mesh
from zoo import aot, topology
mesh = Mesh(np.array(topology.devices(topology.parse("v5e-8"))).reshape(4, 2), ("x", "y"))
before, after = NamedSharding(mesh, P("y", None, "x")), NamedSharding(mesh, P(None, ("x", "y"), None))
f = jax.jit(lambda a: jax.lax.with_sharding_constraint(a * 2, after) + 1)
result = aot.compile_traced(f.trace(jax.ShapeDtypeStruct((16, 16, 16), np.float32, sharding=before)))
print(sum("nvoluntary full rematerialization" in line for line in result.stderr.splitlines()))
"""


@needs_libtpu
def test_compiler_warnings_are_captured():
    # a fresh process: libtpu reads where its warnings go when it loads, once per process
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", RESHARD], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) >= 1 and "nvoluntary" not in proc.stderr  # captured, not printed
