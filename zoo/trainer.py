"""The training loop: steps, metrics, evaluation, checkpoints, preemption, and closing samples.

Step n+1 is dispatched before step n's metrics are fetched, so the device never waits on Python;
only a few scalars cross to the host per step.
"""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Any, Iterator

import jax
from tqdm.auto import tqdm

from zoo import data, metrics as metrics_lib, steps, throughput, workdir
from zoo.errors import ZooError
from zoo.experiment import Experiment


class TrainingError(ZooError, RuntimeError):
    """Training cannot go on (e.g. too many consecutive non-finite steps)."""


@contextlib.contextmanager
def preemption_flag() -> Iterator[dict[str, bool]]:
    """A flag set by SIGTERM (Cloud TPU's preemption notice) while the block runs."""
    flag = {"stop": False}
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = True

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. a notebook helper thread): no handler
        pass
    try:
        yield flag
    finally:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)


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
                                       t.seed, cfg.optim.grad_accum)
    train_split, eval_split = exp.split("train"), exp.split(cfg.data.eval_split)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops_per_token = exp.family.flops_per_token(cfg.model, cfg.data.seq_len)
    bar = tqdm(total=t.steps, initial=start, disable=quiet or not is_main, unit="step", dynamic_ncols=True)
    prefetched = data.prefetch(train_split.batches(data_state), exp.layout.batch_shardings)
    position = data_state.batches
    pending: tuple[int, Any] | None = None
    window_start, window_steps = time.perf_counter(), 0
    try:
        # closing() stops the prefetch thread before we return, so it is never mid-transfer at exit
        with contextlib.closing(prefetched) as batches, preemption_flag() as preempted, steps.on_mesh(exp.mesh):
            for step in range(start, t.steps):
                device_batch, host_batch = next(batches)
                state, step_metrics = train_step(state, device_batch)
                position += 1
                if pending is not None:
                    window_steps += 1
                    _check_health(pending, t.max_bad_steps)
                    if pending[0] % t.log_every == 0:
                        elapsed = time.perf_counter() - window_start
                        rate = tokens_per_step * window_steps / max(elapsed, 1e-9)
                        _log(writer, bar, pending, rate, throughput.mfu(flops_per_token, rate))
                    if pending[0] % t.log_every == 0 or pending[0] == start + 1:
                        # the first step includes compilation: throughput is timed from after it
                        window_start, window_steps = time.perf_counter(), 0
                pending = (step + 1, step_metrics)
                bar.update(1)
                done = step + 1
                valid_loss = None
                if t.eval_every and done % t.eval_every == 0 and done < t.steps:
                    summary = evaluate(exp, state.params, eval_split, t.eval_batches)
                    valid_loss = summary["loss"]
                    writer.write(done, {f"valid_{k}": v for k, v in summary.items()})
                if done % t.checkpoint_every == 0 or done == t.steps or preempted["stop"]:
                    if done == t.steps and valid_loss is None:
                        valid_loss = evaluate(exp, state.params, eval_split, t.eval_batches)["loss"]
                    cursors = data.global_cursors(host_batch, cfg.data.batch_size)
                    checkpointer.save(done, state, data.DataState(position, cursors).to_json(), valid_loss)
                if preempted["stop"]:
                    if is_main:
                        tqdm.write(f"SIGTERM: checkpoint saved at step {done}; exiting")
                    break
            if pending is not None:
                _check_health(pending, t.max_bad_steps)
                elapsed = time.perf_counter() - window_start
                rate = tokens_per_step * (window_steps + 1) / max(elapsed, 1e-9)
                _log(writer, bar, pending, rate, throughput.mfu(flops_per_token, rate))
    finally:  # also when training fails: pending saves finish before the process exits
        bar.close()
        checkpointer.close()
        writer.close()
    return state


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
              "skipped_steps": int(m["skipped"])}
    if "correct_sum" in m:  # a regression has no accuracy
        record["accuracy"] = float(m["correct_sum"]) / max(float(m["weight_sum"]), 1.0)
    writer.write(step, record)
    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{rate:,.0f}", mfu=f"{mfu:.1%}")
