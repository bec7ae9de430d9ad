"""Throughput and MFU, device peaks, and the metrics log (metrics.jsonl + TensorBoard events).

MFU = model FLOPs per token x tokens per second / (number of devices x peak FLOP/s per device).
Model FLOPs per token come from each family's `flops_per_token` (its formula is stated there).
Peaks are dense bf16 figures from the vendors' data sheets for TPU/GPU kinds, and for a CPU the
float32 matmul rate measured once on this machine.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

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

    Accumulated in float32, as the models' projections are (`zoo.layers.project`); on CPU a
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


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Loss, perplexity and accuracy from summed eval metrics (plus any other `*_sum` ratios)."""
    weight = max(float(sums["weight_sum"]), 1.0)
    loss = float(sums["loss_sum"]) / weight
    out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": int(sums["weight_sum"])}
    if "correct_sum" in sums:
        out["accuracy"] = float(sums["correct_sum"]) / weight
    for key, value in sums.items():  # family extras, e.g. nsp_correct_sum / nsp_count
        if key.endswith("_correct_sum") and key.replace("_correct_sum", "_count") in sums:
            out[key.replace("_correct_sum", "_accuracy")] = float(value) / max(
                float(sums[key.replace("_correct_sum", "_count")]), 1.0)
    return out


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard.

    Only process 0 writes; other processes get a writer that does nothing.
    """

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # writes event files without TensorFlow

            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, values: dict[str, Any]) -> None:
        """Log `values` for `step`."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.tb.add_scalar(key, value, step)

    def truncate_after(self, step: int) -> None:
        """Drop logged steps beyond `step` (after resuming from an earlier checkpoint)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(kept)

    def close(self) -> None:
        """Flush TensorBoard events."""
        if self.tb is not None:
            self.tb.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
