"""The training loop: steps, metrics, evaluation, checkpoints, preemption, and closing samples.

Step n+1 is dispatched before step n's metrics are fetched, so the device never waits on Python;
only a few scalars cross to the host per step.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import jax
from tqdm.auto import tqdm

from zoo import data, losses, metrics as metrics_lib, preemption, steps, throughput, workdir
from zoo.errors import ZooError
from zoo.experiment import Experiment


class TrainingError(ZooError, RuntimeError):
    """Training cannot go on (e.g. too many consecutive non-finite steps)."""


def evaluate(exp: Experiment, params: Any, split: data.Split, max_batches: int = 0) -> dict[str, float]:
    """Loss, perplexity, accuracy (and family extras) over `max_batches` batches of a split (0: all of it)."""
    eval_step = exp.eval_step
    totals: dict[str, float] = {}
    batches = split.batches()
    with contextlib.closing(batches), steps.on_mesh(exp.mesh):
        for i, batch in enumerate(batches):
            if (max_batches and i >= max_batches) or not data.any_real(batch):
                break
            # One step in flight at a time: on multi-process CPU runs, queued programs whose
            # collectives interleave across devices can deadlock.
            sums = jax.device_get(eval_step(params, data.to_global(batch.inputs, exp.layout.batch_shardings)))
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + float(value)
    summary = metrics_lib.summarize(totals)
    if exp.family.summarize is not None:  # family extras, e.g. BERT's F1
        summary.update(exp.family.summarize(totals))
    return summary


def fit(exp: Experiment, state: steps.TrainState, data_state: data.DataState, quiet: bool = False) -> steps.TrainState:
    """Train from `state` (whose training data is at `data_state`) to config.train.steps; return the state."""
    cfg = exp.config
    t = cfg.train
    is_main = jax.process_index() == 0
    checkpointer = exp.checkpointer()
    writer = workdir.MetricsWriter(exp.workdir)
    start = int(jax.device_get(state.step))
    writer.truncate_after(start)
    train_step = steps.make_train_step(exp.family, exp.model, exp.tx, exp.layout, exp.mesh, exp.schedule,
                                       t.seed, cfg.optim.grad_accum, t.spike_sigmas,
                                       losses.training_options(cfg.optim))
    train_split, eval_split = exp.split("train"), exp.split(cfg.data.eval_split)
    bar = tqdm(total=t.steps, initial=start, disable=quiet or not is_main, unit="step", dynamic_ncols=True)
    log = _StepLog(writer, bar, exp, start)
    prefetched = data.prefetch(train_split.batches(data_state), exp.layout.batch_shardings)
    position = data_state.batches
    try:
        # closing() stops the prefetch thread before we return, so it is never mid-transfer at exit
        with contextlib.closing(prefetched) as batches, preemption.watch() as stop, steps.on_mesh(exp.mesh):
            for step in range(start, t.steps):
                device_batch, host_batch = next(batches)
                state, step_metrics = train_step(state, device_batch)
                position += 1
                log.dispatched(step + 1, step_metrics)
                bar.update(1)
                done = step + 1
                valid_loss = None
                if (t.eval_every and done % t.eval_every == 0) or done == t.steps:
                    summary = evaluate(exp, state.params, eval_split, t.eval_batches)
                    valid_loss = summary["loss"]  # ranks the checkpoint saved below for keep-best
                    writer.write(done, {f"valid_{k}": v for k, v in summary.items()})
                stopping = stop.after(done)
                if done % t.checkpoint_every == 0 or valid_loss is not None or stopping:
                    cursors = data.global_cursors(host_batch, cfg.data.batch_size)
                    checkpointer.save(done, state, data.DataState(position, cursors).to_json(), valid_loss)
                if stopping:
                    log.finish()
                    raise stop.stopped(done)
            log.finish()
    finally:  # also when training fails: pending saves finish before the process exits
        bar.close()
        checkpointer.close()
        writer.close()
    return state


class _StepLog:
    """Checks and logs each step's metrics one step late, so fetching them never stalls the device,
    with the tokens/s and MFU of the steps since the last log line."""

    def __init__(self, writer: workdir.MetricsWriter, bar: tqdm, exp: Experiment, start: int) -> None:
        cfg = exp.config
        self.writer, self.bar, self.start = writer, bar, start
        self.log_every, self.max_bad_steps = cfg.train.log_every, cfg.train.max_bad_steps
        self.tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
        self.flops_per_token = exp.family.flops_per_token(cfg.model, cfg.data.seq_len)
        self.pending: tuple[int, Any] | None = None
        self.window_start, self.window_steps = time.perf_counter(), 0

    def dispatched(self, step: int, step_metrics: Any) -> None:
        """Step `step` was dispatched: check and maybe log the one before it."""
        if self.pending is not None:
            self.window_steps += 1
            _check_health(self.pending, self.max_bad_steps)
            done = self.pending[0]
            if done % self.log_every == 0:
                self._write(self.window_steps)
            if done % self.log_every == 0 or done == self.start + 1:
                # the first step includes compilation: throughput is timed from after it
                self.window_start, self.window_steps = time.perf_counter(), 0
        self.pending = (step, step_metrics)

    def finish(self) -> None:
        """Check and log the last dispatched step."""
        if self.pending is not None:
            _check_health(self.pending, self.max_bad_steps)
            self._write(self.window_steps + 1)

    def _write(self, window_steps: int) -> None:
        rate = self.tokens_per_step * window_steps / max(time.perf_counter() - self.window_start, 1e-9)
        _log(self.writer, self.bar, self.pending, rate, throughput.mfu(self.flops_per_token, rate))


def _check_health(pending: tuple[int, Any], max_bad_steps: int) -> None:
    """Stop when the last `max_bad_steps` steps all had a non-finite loss or gradient."""
    step, m = pending
    if int(m["bad_steps"]) >= max_bad_steps:
        raise TrainingError(f"{max_bad_steps} consecutive steps up to {step} had a non-finite loss or "
                            f"gradient; lower optim.learning_rate or check the data")


def _log(writer: workdir.MetricsWriter, bar: tqdm, pending: tuple[int, Any], rate: float, mfu: float) -> None:
    step, m = pending
    m = jax.device_get(m)
    record = {"loss": float(m["loss"]), "learning_rate": float(m["learning_rate"]),
              "grad_norm": float(m["grad_norm"]), "tokens_per_sec": rate, "mfu": mfu,
              "skipped_steps": int(m["skipped"]), "spikes_skipped": int(m["spikes"])}
    if "correct_sum" in m:  # a regression has no accuracy
        record["accuracy"] = float(m["correct_sum"]) / max(float(m["weight_sum"]), 1.0)
    writer.write(step, record)
    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{rate:,.0f}", mfu=f"{mfu:.1%}")
