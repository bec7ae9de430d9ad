"""Throughput and MFU, and the device peaks they are measured against.

MFU = model FLOPs per token x tokens per second / (number of devices x peak FLOP/s per device).
Model FLOPs per token come from each family's `flops_per_token` (its formula is stated there).
Peaks are dense bf16 figures from the vendors' data sheets for TPU/GPU kinds, and for a CPU the
float32 matmul rate measured once on this machine.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per chip (TPU) or per GPU, matched as substrings of device_kind.
PEAK_FLOPS: dict[str, float] = {
    "TPU v2": 45e12, "TPU v3": 123e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v5p": 459e12, "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12, "TPU7x": 2307e12,
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12, "V100": 125e12,
    "B200": 2250e12,
}


@functools.cache
def measured_matmul_flops(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
    """FLOP/s of a jitted n x n matmul on the default device (best of `repeats`).

    Accumulated in float32, as the models' projections are on CPU (`zoo.kernels.matmul`); on CPU a
    bfloat16 matmul with a bfloat16 output runs at half the rate.
    """
    a = jnp.ones((n, n), dtype)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    matmul(a, a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def device_peak_flops() -> float:
    """Peak FLOP/s of one device: the data-sheet figure, or a measured matmul rate on CPU."""
    device = jax.devices()[0]
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in device.device_kind.lower():
            return peak
    return measured_matmul_flops()


def mfu(flops_per_token: float, tokens_per_sec: float) -> float:
    """Model FLOPs utilisation of all devices, in [0, 1]."""
    return flops_per_token * tokens_per_sec / (device_peak_flops() * jax.device_count())
