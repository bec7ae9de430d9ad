"""train.py and eval.py end to end in fresh processes: train, checkpoint, resume, evaluate, fail clearly."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_script

# A tiny GPT that still trains on the real embedded corpus and tokenizer.
TINY = ["--model", "gpt-tiny", "--batch-size", "4", "--seq-len", "32", "--set", "model.num_layers=1",
        "--set", "model.d_model=64", "--set", "model.d_ff=128", "--set", "data.vocab_size=400",
        "--set", "train.log_every=1", "--set", "train.eval_batches=2", "--set", "train.sample_tokens=8"]


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def tensorboard_scalars(workdir):
    """{tag: {step: value}} read back from the run's event files by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(workdir, "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def train_losses(workdir):
    return {m["step"]: m["loss"] for m in metrics(workdir) if "loss" in m}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    proc = run_script("train.py", *TINY, "--workdir", workdir, "--steps", "6", "--checkpoint-every", "3")
    return workdir, proc


def test_train_writes_config_tokenizer_checkpoints_metrics_and_samples(trained):
    workdir, proc = trained
    for name in ("config.json", "tokenizer.model", "metrics.jsonl"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[:2] == ["3", "6"]
    records = [m for m in metrics(workdir) if "loss" in m]
    assert [m["step"] for m in records] == [1, 2, 3, 4, 5, 6]
    board = tensorboard_scalars(workdir)
    for key in ("loss", "grad_norm", "learning_rate"):  # the same scalars, read back by TensorBoard
        assert board[key] == pytest.approx({m["step"]: m[key] for m in records}, rel=1e-6), key
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_sec", "mfu"):
        assert all(key in m for m in records), key
    assert "validation:" in proc.stdout and "--- " in proc.stdout  # metrics and samples printed


def test_eval_reports_metrics_as_json(trained, tmp_path):
    workdir, _ = trained
    out = tmp_path / "m.json"
    proc = run_script("eval.py", "--workdir", workdir, "--json", str(out), "--step", "3")
    result = json.loads(out.read_text())
    for key in ("loss", "perplexity", "tokens", "vocab_size", "accuracy"):
        assert key in result
    assert result["step"] == 3 and result["vocab_size"] == 400
    assert abs(result["perplexity"] - 2.718281828 ** result["loss"]) < 1e-3 * result["perplexity"]
    assert "validation:" in proc.stdout


def test_eval_on_a_sharded_mesh_gives_the_same_loss(trained, tmp_path):
    workdir, _ = trained
    one, eight = tmp_path / "one.json", tmp_path / "eight.json"
    run_script("eval.py", "--workdir", workdir, "--json", str(one), "--samples", "0")
    run_script("eval.py", "--workdir", workdir, "--json", str(eight), "--samples", "0",
               "--mesh", "data=2,fsdp=2,tensor=2", devices=8)
    a, b = json.loads(one.read_text()), json.loads(eight.read_text())
    assert a["tokens"] == b["tokens"]
    assert abs(a["loss"] - b["loss"]) < 1e-5


def test_zoo_load_continues_where_training_ended(trained):
    import zoo

    workdir, _ = trained
    m = zoo.load(workdir)
    assert m.config.preset == "gpt-tiny" and m.tokenizer.vocab_size == 400
    text = m.generate("The", max_new_tokens=5)
    assert isinstance(text, str)


def _kill_when(proc, workdir, step, sig):
    """Signal the run once it has logged `step` steps and finished writing its step-2 checkpoint."""
    deadline = time.time() + 240
    while time.time() < deadline:
        path = os.path.join(workdir, "metrics.jsonl")
        done = os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
        if done and os.path.exists(path) and len(train_losses(workdir)) >= step:
            proc.send_signal(sig)
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("training never reached the kill point")


def _start(workdir, steps):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "PYTHONPATH": ROOT}
    return subprocess.Popen([sys.executable, "train.py", *TINY, "--workdir", workdir, "--steps", str(steps),
                             "--checkpoint-every", "2"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_resume_repeats_the_uninterrupted_loss_sequence(trained, tmp_path):
    reference_dir, _ = trained
    workdir = str(tmp_path / "killed")
    os.makedirs(workdir)
    shutil.copy(os.path.join(reference_dir, "tokenizer.model"), workdir)  # same tokenizer, no retraining
    proc = _start(workdir, 6)
    _kill_when(proc, workdir, 3, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    resumed = run_script("train.py", *TINY, "--workdir", workdir, "--steps", "6", "--checkpoint-every", "2")
    assert "resumed from" in resumed.stdout
    assert train_losses(workdir) == train_losses(reference_dir)  # bit-identical, step by step


def _interrupted(trained, workdir, sig):
    """(exit code, stderr, saved steps) of a 400-step run sent `sig` after its third step."""
    os.makedirs(workdir)
    shutil.copy(os.path.join(trained[0], "tokenizer.model"), workdir)
    proc = _start(workdir, 400)
    _kill_when(proc, workdir, 3, sig)
    _, err = proc.communicate(timeout=120)
    saved = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
    return proc.returncode, err, saved


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(trained, tmp_path):
    code, err, saved = _interrupted(trained, str(tmp_path / "preempted"), signal.SIGTERM)
    assert code == 0, err[-2000:]
    assert "SIGTERM (preemption notice): checkpoint saved at step" in err
    assert 3 <= max(saved) < 400  # written at the step the notice arrived


def test_ctrl_c_saves_a_checkpoint_and_exits_non_zero(trained, tmp_path):
    workdir = str(tmp_path / "interrupted")
    code, err, saved = _interrupted(trained, workdir, signal.SIGINT)
    assert code == 130, err[-2000:]
    assert "Ctrl-C: checkpoint saved at step" in err and "Traceback" not in err
    assert 3 <= max(saved) < 400
    resumed = run_script("train.py", *TINY, "--workdir", workdir, "--steps", str(max(saved) + 1))
    assert f"resumed from {workdir} step {max(saved)}" in resumed.stdout


@pytest.fixture(scope="module")
def trained_on_8(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run8"))
    run_script("train.py", *TINY, "--workdir", workdir, "--steps", "2", "--batch-size", "8",
               "--mesh", "data=4,fsdp=2,tensor=1", devices=8)
    return workdir


def test_eval_runs_on_one_device_of_a_run_trained_on_eight(trained_on_8, tmp_path):
    one, eight = tmp_path / "one.json", tmp_path / "eight.json"
    proc = run_script("eval.py", "--workdir", trained_on_8, "--json", str(one), "--samples", "1")  # no --mesh
    assert "--- " in proc.stdout  # generation works there too
    run_script("eval.py", "--workdir", trained_on_8, "--json", str(eight), "--samples", "0",
               "--mesh", "data=4,fsdp=2,tensor=1", devices=8)
    a, b = json.loads(one.read_text()), json.loads(eight.read_text())
    assert a["tokens"] == b["tokens"] and abs(a["loss"] - b["loss"]) < 1e-5
    three = run_script("eval.py", "--workdir", trained_on_8, "--samples", "0", devices=3)  # batch 8 -> 9
    assert "validation:" in three.stdout


def test_keep_best_keeps_the_checkpoint_with_the_lowest_validation_loss(trained, tmp_path):
    reference_dir, _ = trained
    workdir = str(tmp_path / "best")
    os.makedirs(workdir)
    shutil.copy(os.path.join(reference_dir, "tokenizer.model"), workdir)
    every = ["--checkpoint-every", "100", "--set", "train.eval_every=2", "--set", "train.keep_checkpoints=1",
             "--set", "train.sample_tokens=0", "--set", "optim.warmup_steps=0"]
    run_script("train.py", *TINY, *every, "--workdir", workdir, "--steps", "6")
    # then resumed with a learning rate far too high: validation gets worse than it was
    run_script("train.py", *TINY, *every, "--workdir", workdir, "--steps", "12",
               "--set", "optim.learning_rate=0.5", "--set", "optim.clip_norm=0")
    valid = {m["step"]: m["valid_loss"] for m in metrics(workdir) if "valid_loss" in m}
    assert sorted(valid) == [2, 4, 6, 8, 10, 12]  # every eval step is a checkpoint step
    board = tensorboard_scalars(workdir)["valid_loss"]
    assert board.keys() == valid.keys() and all(abs(board[s] - valid[s]) < 1e-5 * abs(valid[s]) for s in valid)
    saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    best = min(valid, key=valid.get)
    assert best != 12, valid  # otherwise this test would not tell keep-best from keep-latest
    assert saved == [best, 12], (valid, saved)


def _fails(*args, devices=1, contains=""):
    proc = run_script(*args, devices=devices, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert contains in lines[0], lines[0]
    return lines[0]


def test_unknown_preset(tmp_path):
    _fails("train.py", "--model", "gpt-huge", "--workdir", str(tmp_path / "w"), contains="unknown preset")
    assert not os.path.exists(tmp_path / "w")  # nothing half-written


def test_bad_overrides(tmp_path):
    _fails("train.py", "--set", "optim.nope=1", "--workdir", str(tmp_path / "a"), contains="unknown config key")
    _fails("train.py", "--set", "optim.learning_rate=fast", "--workdir", str(tmp_path / "b"), contains="expects float")
    _fails("train.py", "--mesh", "data=3", "--workdir", str(tmp_path / "c"), devices=2, contains="devices")
    _fails("train.py", "--batch-size", "3", "--workdir", str(tmp_path / "d"), devices=2, contains="divisible")
    assert not any(os.path.exists(tmp_path / d) for d in "abcd")  # nothing half-written


def test_sequence_longer_than_the_model(tmp_path):
    _fails("train.py", *TINY, "--seq-len", "4096", "--workdir", str(tmp_path / "w"), contains="max_len")
    assert not os.path.exists(tmp_path / "w")


def test_missing_or_empty_data(tmp_path):
    _fails("train.py", "--data", f"text:{tmp_path}/nothing/*.txt", "--workdir", str(tmp_path / "a"),
           contains="no files match")
    (tmp_path / "empty.txt").write_text("   \n")
    _fails("train.py", "--data", f"text:{tmp_path}/empty.txt", "--workdir", str(tmp_path / "b"),
           contains="no text")


def test_missing_workdir_and_corrupt_checkpoint(trained, tmp_path):
    _fails("eval.py", "--workdir", str(tmp_path / "absent"), contains="config.json")
    workdir, _ = trained
    broken = str(tmp_path / "broken")
    shutil.copytree(workdir, broken)
    for root, _, files in os.walk(os.path.join(broken, "checkpoints", "6")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    _fails("eval.py", "--workdir", broken, contains="checkpoint")


def test_unreadable_tokenizer_and_another_models_workdir(trained, tmp_path):
    workdir, _ = trained
    broken = str(tmp_path / "tok")
    shutil.copytree(workdir, broken)
    with open(os.path.join(broken, "tokenizer.model"), "wb") as f:
        f.write(b"not a model")
    _fails("eval.py", "--workdir", broken, contains="tokenizer")
    _fails("train.py", "--model", "gpt2-small", "--workdir", workdir, contains="holds a gpt-tiny run")
