"""Device mesh over ('data', 'fsdp', 'tensor') and the one table mapping logical axes onto it.

Parallelism is chosen here, never in model code: batches split over data x fsdp, parameters and
optimizer state over fsdp (ZeRO-3 style: gathered layer by layer inside the step), and heads, MLP
width and vocabulary over tensor (Megatron-style).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zoo.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),  # activations' embed dim stays whole: fsdp is already taken by batch there
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("relpos", None),
)


def init_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None,
                     timeout_s: int = 300) -> None:
    """Start JAX's multi-process runtime when asked to (or automatically on a Cloud TPU pod).

    Says which process is waiting for whom, and if the others have not all joined within
    `timeout_s`, stops with one `error:` line (JAX's own timeout aborts the process with a C++ trace).
    """
    if not coordinator:
        if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:  # multi-host TPU slice
            jax.distributed.initialize()
        return
    if num_processes is None or process_id is None or not 0 <= process_id < num_processes:
        raise ConfigError("--coordinator needs --num-processes N and --process-id I with 0 <= I < N")
    if timeout_s < 1:
        raise ConfigError(f"--init-timeout must be at least 1 second, got {timeout_s}")
    if process_id == 0:
        waiting = f"processes 1..{num_processes - 1} to join it" if num_processes > 1 else "nobody"
        what = f"process 0 of {num_processes}: coordinating at {coordinator}, waiting up to {timeout_s} s for {waiting}"
        failure = (f"not all {num_processes} processes joined {coordinator} within {timeout_s} s; start processes "
                   f"1..{num_processes - 1} with --coordinator {coordinator}, or raise --init-timeout")
    else:
        what = f"process {process_id} of {num_processes}: waiting up to {timeout_s} s for the coordinator (process 0)"
        failure = (f"process {process_id} could not join the coordinator (process 0) at {coordinator} within "
                   f"{timeout_s} s; start it, check the address, or raise --init-timeout")
    print(what, file=sys.stderr, flush=True)
    watchdog = threading.Timer(timeout_s, lambda: (print(f"error: {failure}", file=sys.stderr, flush=True),
                                                   os._exit(2)))
    watchdog.daemon = True
    watchdog.start()
    try:  # JAX's own deadline comes later, so that the watchdog speaks first
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id,
                                   initialization_timeout=timeout_s + 30)
    finally:
        watchdog.cancel()


def mesh_shape(data: int, fsdp: int, tensor: int, device_count: int) -> tuple[int, int, int]:
    """Resolve a mesh shape (data=-1 takes what is left) and check it covers every device."""
    if min(fsdp, tensor) < 1 or data == 0 or data < -1:
        raise ConfigError(f"mesh sizes must be positive (got data={data}, fsdp={fsdp}, tensor={tensor})")
    if data == -1:
        if device_count % (fsdp * tensor):
            raise ConfigError(f"fsdp*tensor={fsdp * tensor} does not divide the {device_count} devices")
        data = device_count // (fsdp * tensor)
    if data * fsdp * tensor != device_count:
        raise ConfigError(f"mesh data={data},fsdp={fsdp},tensor={tensor} has {data * fsdp * tensor} "
                         f"devices but {device_count} are available; make the product {device_count}")
    return data, fsdp, tensor


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: list | None = None) -> Mesh:
    """A mesh over all (or the given) devices, with Auto axes so logical partitioning applies."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    if devices == jax.devices():
        return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def batch_size_per_shard(mesh: Mesh) -> int:
    """How many ways the batch dimension is split."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def logical_shardings(boxed_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree whose leaves may be LogicallyPartitioned (others are replicated)."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def check_divisible(abstract: Any) -> None:
    """Raise ConfigError naming the first array whose sharded dimension does not split evenly over its mesh axes."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        for dim, (size, axes) in enumerate(zip(leaf.shape, leaf.sharding.spec)):
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            ways = math.prod(leaf.sharding.mesh.shape[a] for a in names)
            if size % ways:
                name = "/".join(str(getattr(k, "key", k)) for k in path)
                raise ConfigError(f"parameter {name} has {size} entries on axis {dim}, which do not split "
                                  f"{ways} ways over mesh axes {'x'.join(names)}; change --mesh or the model's width")


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a [B, ...] host batch: rows over data x fsdp."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def process_rows(batch_sharding: NamedSharding, global_batch: int) -> slice:
    """The contiguous rows of a global batch that this process's devices hold."""
    indices = batch_sharding.addressable_devices_indices_map((global_batch,)).values()
    starts = [i[0].start or 0 for i in indices]
    stops = [global_batch if i[0].stop is None else i[0].stop for i in indices]
    start, stop = min(starts), max(stops)
    if stop - start != global_batch * len(batch_sharding.addressable_devices) // batch_sharding.mesh.size \
            and batch_sharding.mesh.size > len(batch_sharding.addressable_devices):
        raise ValueError("this process's devices do not hold a contiguous block of the batch")
    return slice(start, stop)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a fully replicated array (scalars, metrics)."""
    return NamedSharding(mesh, P())


def describe(shardings: Any, params: Any) -> list[str]:
    """One line per parameter: path, shape and how its axes map onto the mesh (a sharding inspector)."""
    lines = []
    flat_s = jax.tree_util.tree_flatten_with_path(shardings)[0]
    flat_p = jax.tree.leaves(params)
    for (path, sharding), leaf in zip(flat_s, flat_p):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        shards = math.prod(sharding.shard_shape(leaf.shape)) if leaf.shape else 1
        lines.append(f"{name:60s} {str(tuple(leaf.shape)):22s} {str(sharding.spec):40s} "
                     f"{math.prod(leaf.shape) // max(shards, 1)}x split")
    return lines


def inspect(boxed: Any, mesh: Mesh) -> dict[str, Any]:
    """The sharding inspector's findings for boxed (LogicallyPartitioned) parameter shapes on `mesh`.

    `params`: per parameter its path, shape, logical axes, PartitionSpec, the ways it is split, its
    bytes on one device and the dimensions that do not divide evenly over their mesh axes.
    `unused_rules`: LOGICAL_RULES names no parameter carries (batch and length name activations).
    `idle_rules`: rules whose mesh axes all have size 1 on this mesh, so they shard nothing here.
    `unknown_axes`: logical names parameters carry that no rule maps (those dimensions are replicated).
    """
    shardings = logical_shardings(boxed, mesh)
    logical = nn.get_partition_spec(boxed)
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    leaves = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=is_box)[0]
    rows, carried = [], set()
    for (path, leaf), sharding, names in zip(leaves, jax.tree.leaves(shardings),
                                             jax.tree.leaves(logical, is_leaf=lambda x: x is None or isinstance(x, P))):
        value = nn.meta.unbox(leaf)
        names = tuple(names) if names is not None else (None,) * len(value.shape)
        carried.update(n for n in names if n)
        ways = [math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else tuple(axes or ())))
                for axes in tuple(sharding.spec) + (None,) * (len(value.shape) - len(sharding.spec))]
        per_device = math.prod(-(-size // w) for size, w in zip(value.shape, ways)) * value.dtype.itemsize
        rows.append({"path": "/".join(str(getattr(k, "key", k)) for k in path), "shape": tuple(value.shape),
                     "logical": names, "spec": str(sharding.spec), "ways": math.prod(ways),
                     "bytes_per_device": per_device,
                     "undivided": [d for d, (size, w) in enumerate(zip(value.shape, ways)) if size % w]})
    rules = dict(LOGICAL_RULES)
    idle = [name for name, axes in LOGICAL_RULES if axes is not None and
            math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)) == 1]
    return {"params": rows, "unused_rules": [name for name in rules if name not in carried],
            "idle_rules": idle, "unknown_axes": sorted(carried - set(rules))}
