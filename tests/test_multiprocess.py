"""Real JAX processes on 127.0.0.1: two processes of 4 CPU devices train like one process of 8, a
run started on two processes and resumed on one sees exactly the batches of an uninterrupted run, and
a preemption notice to one process stops both at the same step.

The objectives here draw noise (T5 span corruption, RoBERTa dynamic masking), which the pipeline
seeds per global example, so the batches cannot depend on how many processes made them.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, run_script

COMMON = ["train.py", "--batch-size", "8", "--seq-len", "32", "--steps", "4", "--checkpoint-every", "2",
          "--mesh", "data=4,fsdp=2,tensor=1", "--set", "model.num_layers=1", "--set", "model.d_model=64",
          "--set", "model.d_ff=128", "--set", "data.vocab_size=400", "--set", "train.log_every=1",
          "--set", "train.eval_batches=1", "--set", "train.sample_tokens=0",
          # a constant learning rate: a run of 2 steps resumed to 4 follows the schedule of a 4-step run
          "--set", "optim.warmup_steps=0", "--set", "optim.min_lr_ratio=1.0"]
RUNS = {
    "t5": ["--model", "t5-tiny", "--set", "model.num_decoder_layers=1", "--set", "model.num_heads=4",
           "--set", "model.head_dim=16", "--set", "model.num_sentinels=8"],
    "roberta": ["--model", "bert-tiny", "--set", "model.dynamic_masking=true", "--set", "model.nsp=false"],
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def start_two_processes(args, workdir, cache):
    """Two processes of 4 CPU devices each running `args` on `workdir`, coordinated on 127.0.0.1."""
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": ROOT, **cache}
    return [subprocess.Popen([sys.executable, *args, "--workdir", workdir, "--coordinator", f"127.0.0.1:{port}",
                              "--num-processes", "2", "--process-id", str(i)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def two_processes(args, workdir, cache):
    procs = start_two_processes(args, workdir, cache)
    outputs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "validation:" in outputs[0][0] and "validation:" not in outputs[1][0]  # only process 0 reports


@pytest.mark.parametrize("name", sorted(RUNS))
def test_two_processes_match_one_and_resume_on_one(name, tmp_path):
    args = COMMON + RUNS[name]
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    # the resumed run compiles what the single-process run compiled: share XLA's cache
    cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    run_script(*args, "--workdir", single, devices=8, env=cache)
    os.makedirs(multi)
    shutil.copy(os.path.join(single, "tokenizer.model"), multi)

    two_processes([*args[:args.index("--steps") + 1], "2", *args[args.index("--steps") + 2:]], multi, cache)
    run_script(*args, "--workdir", multi, devices=8, env=cache)  # steps 3 and 4 on one process

    # Same global batches: the losses agree up to cross-process reduction order, before and after resuming.
    want, got = losses(single), losses(multi)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-5)
    import zoo

    a, b = zoo.load(single), zoo.load(multi)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


def test_sigterm_to_one_process_stops_both_at_the_same_step_and_resume_continues(tmp_path):
    """A preemption notice reaches one host of a pod: both save one step's checkpoint collectively and exit 0."""
    args = COMMON + RUNS["roberta"]
    args[args.index("--steps") + 1] = "400"
    args[args.index("--checkpoint-every") + 1] = "1000"  # the only checkpoint is the preemption's
    workdir, reference = str(tmp_path / "preempted"), str(tmp_path / "reference")
    cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    procs = start_two_processes(args, workdir, cache)
    deadline = time.time() + 300
    while time.time() < deadline and len(losses(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl"))
                                         else {}) < 3:
        assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only
    signalled = time.time()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert time.time() - signalled < 120
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    saved = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
    assert len(saved) == 1 and 3 <= saved[0] < 400, saved  # one step, written by both together
    stopped = saved[0]
    assert all(f"checkpoint saved at step {stopped}" in err for _, err in outputs)

    # Resumed on one process of 8 devices, it continues with the batches of an uninterrupted run.
    until = ["--steps", str(stopped + 2)]
    run_script(*args, *until, "--workdir", workdir, devices=8, env=cache)
    os.makedirs(reference)
    shutil.copy(os.path.join(workdir, "tokenizer.model"), reference)
    run_script(*args, *until, "--workdir", reference, devices=8, env=cache)
    want, got = losses(reference), losses(workdir)
    assert sorted(got) == sorted(want) == list(range(1, stopped + 3))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-5)
