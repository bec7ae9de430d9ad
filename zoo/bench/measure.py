"""Clocks and memory high-water marks, shared by our sections, the peers and the peer child process.

Timings are wall clock around calls that block until their result is ready (the caller's job:
`jax.block_until_ready`, `torch.cuda.synchronize` on GPU).

Memory: `peak_mem_bytes` is how far a span raised a high-water mark. On CPU that is the process's
peak resident set size (`getrusage(RUSAGE_SELF).ru_maxrss`), which covers params, optimizer state,
activations and also allocator/compiler overhead; it is 0 when an earlier span in the same process
had already set a higher peak, so run each peer in a fresh process when memory matters. On an
accelerator it is the device allocator's peak (`memory_stats()["peak_bytes_in_use"]` for JAX,
`torch.cuda.max_memory_allocated` for PyTorch). The `mem_source` figure says which one was used.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from typing import Any, Callable


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages of this host, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


def say(message: str) -> None:
    """Print one progress line stamped with the time and the 1-minute load."""
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {message}", flush=True)


def timed_calls(step: Callable[[Any], Any], carry: Any, count: int) -> tuple[list[float], Any]:
    """Seconds of each of `count` calls `carry = step(carry)` (step must block), and the last carry."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        carry = step(carry)
        times.append(time.perf_counter() - t0)
    return times, carry


def warm_then_time(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of the second of two identical calls of `fn` (the first warms up), and its result."""
    fn()
    (seconds,), result = timed_calls(lambda _: fn(), None, 1)
    return seconds, result


def step_figures(times: list[float], tokens_per_step: int) -> dict[str, float]:
    """Median, min and max of timed steps and the tokens/s at the median."""
    median = statistics.median(times)
    return {"step_s_median": median, "step_s_min": min(times), "step_s_max": max(times),
            "tokens_per_s": tokens_per_step / median}


def proc_status_bytes(key: str) -> int | None:
    """A memory figure of /proc/self/status (Linux), e.g. VmHWM, in bytes; None elsewhere.

    A fork+exec'd child's `ru_maxrss` starts at its parent's high-water mark (Linux folds the old
    address space's peak into it at exec), so peer subprocesses read their own peak, VmHWM, instead.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


class MemProbe:
    """How far one span raised a memory high-water mark of `kind` "jax" or "torch" (module docstring)."""

    def __init__(self, kind: str) -> None:
        self.source, self.before = "rss", 0
        if kind == "torch":
            import torch

            if torch.cuda.is_available():
                self.source = "torch-cuda"
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.before = torch.cuda.memory_allocated()
                return
        else:
            stats = _jax_memory_stats()
            if stats is not None:
                self.source, self.before = "jax-device", stats.get("peak_bytes_in_use", 0)
                return
        self.before = _max_rss_bytes()

    def stop(self) -> tuple[int, str]:
        """(bytes, source) for the span since construction."""
        if self.source == "torch-cuda":
            import torch

            return max(0, torch.cuda.max_memory_allocated() - self.before), self.source
        if self.source == "jax-device":
            stats = _jax_memory_stats() or {}
            return max(0, stats.get("peak_bytes_in_use", 0) - self.before), self.source
        return max(0, _max_rss_bytes() - self.before), self.source


def _jax_memory_stats() -> dict[str, int] | None:
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    try:
        return device.memory_stats()
    except Exception:  # some runtimes do not implement memory_stats
        return None


def _max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes
