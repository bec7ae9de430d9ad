"""Stopping a run together: a preemption notice (SIGTERM) or Ctrl-C on any process makes every process
save the same step's checkpoint and stop.

On one process, signal handlers set a flag that the training loop reads after every step. On several,
a flag per process is not enough: the processes would enter Orbax's collective save at different steps
and hang. There JAX's preemption sync service (started by `jax.distributed.initialize`) hears SIGTERM
on any process and every process learns the same step from `reached_preemption_sync_point`: one past
the furthest step any process had reached. Asking costs a local lookup per step, no collective. Ctrl-C
is turned into the same notice (the process signals itself SIGTERM), and that process exits non-zero.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, Iterator

import jax
from jax.experimental import multihost_utils

EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C


class Stopped(Exception):
    """Training stopped early on a signal after saving a checkpoint; `exit_code` is what train.py returns."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequests:
    """Whether the run must stop after a step: read once per step, on every process, with the step number."""

    def __init__(self, coordinated: bool):
        self.coordinated = coordinated
        self.notice = False  # SIGTERM seen by this process (single-process runs only)
        self.interrupted = False  # Ctrl-C seen by this process

    def after(self, step: int) -> bool:
        """True when every process must save `step` and stop (the same step on all of them)."""
        if self.coordinated:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.notice or self.interrupted

    def stopped(self, step: int) -> Stopped:
        """The exception that ends training after the checkpoint of `step` was saved."""
        if self.interrupted:
            return Stopped(f"Ctrl-C: checkpoint saved at step {step}; exiting", EXIT_INTERRUPTED)
        return Stopped(f"SIGTERM (preemption notice): checkpoint saved at step {step}; exiting", 0)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.notice = True

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupted:  # a second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self.interrupted = True
        if self.coordinated:  # tell the other processes through JAX's own SIGTERM listener
            os.kill(os.getpid(), signal.SIGTERM)


def _sync_service_running() -> bool:
    return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)


@contextlib.contextmanager
def watch() -> Iterator[StopRequests]:
    """Listen for SIGTERM and Ctrl-C while the block runs (handlers can only be set on the main thread;
    elsewhere, e.g. a notebook's helper thread, signals keep their usual effect)."""
    requests = StopRequests(coordinated=_sync_service_running())
    handlers = {signal.SIGINT: requests._on_sigint}
    if not requests.coordinated:  # with the sync service, JAX's C++ listener owns SIGTERM
        handlers[signal.SIGTERM] = requests._on_sigterm
    previous = {}
    for signum, handler in handlers.items():
        with contextlib.suppress(ValueError):  # not the main thread
            previous[signum] = signal.signal(signum, handler)
    try:
        yield requests
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
