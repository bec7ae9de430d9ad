"""Two real JAX processes on 127.0.0.1 (4 CPU devices each) train like one process with 8 devices."""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np

from conftest import ROOT, run_script

ARGS = ["train.py", "--model", "gpt-tiny", "--batch-size", "8", "--seq-len", "32", "--steps", "4",
        "--checkpoint-every", "4", "--mesh", "data=4,fsdp=2,tensor=1", "--set", "model.num_layers=1",
        "--set", "model.d_model=64", "--set", "model.d_ff=128", "--set", "data.vocab_size=400",
        "--set", "train.log_every=1", "--set", "train.eval_batches=2", "--set", "train.sample_tokens=4"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if '"loss"' in line]


def test_two_processes_match_one_process(tmp_path):
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    run_script(*ARGS, "--workdir", single, devices=8)
    os.makedirs(multi)
    shutil.copy(os.path.join(single, "tokenizer.model"), multi)

    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": ROOT}
    procs = [subprocess.Popen([sys.executable, *ARGS, "--workdir", multi, "--coordinator", f"127.0.0.1:{port}",
                               "--num-processes", "2", "--process-id", str(i)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "validation:" in outputs[0][0] and "validation:" not in outputs[1][0]  # only process 0 reports

    # Same mesh shape, same global batches: the losses agree up to cross-process reduction order.
    np.testing.assert_allclose(losses(multi), losses(single), rtol=1e-5)
    import zoo

    a, b = zoo.load(single), zoo.load(multi)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
