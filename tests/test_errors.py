"""Bad input and faults against train.py and eval.py: one `error:` line, exit 2, nothing left behind.

The scripts' `main` runs in this process (the 8 emulated devices of conftest), so each case costs
what it costs a user, without a fresh interpreter.
"""

import json
import os

import pytest

import eval as eval_script
import models
import train as train_script
from zoo import workdir as workdir_lib

TINY = ["--set", "model.num_layers=1", "--set", "model.d_model=32", "--set", "model.num_heads=2",
        "--set", "model.d_ff=64", "--set", "data.vocab_size=400", "--seq-len", "16", "--batch-size", "8",
        "--set", "train.sample_tokens=0", "--set", "train.eval_batches=1"]


def fails(main, argv, capsys, contains):
    """Run a script's main, expect exit 2 with exactly one `error:` line containing `contains`."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert contains in lines[0], lines[0]
    return lines[0]


BAD_TRAIN_FLAGS = [
    (["--batch-size", "0"], "data.batch_size must be >= 1"),
    (["--batch-size", "-1"], "data.batch_size must be >= 1"),
    (["--set", "optim.grad_accum=0"], "optim.grad_accum must be >= 1"),
    (["--set", "train.log_every=0"], "train.log_every must be >= 1"),
    (["--set", "train.checkpoint_every=0"], "train.checkpoint_every must be >= 1"),
    (["--set", "model.num_heads=0"], "model.num_heads must be >= 1"),
    (["--seed", "99999999999999999999"], "train.seed must be in [0, 2,147,483,647]"),
    (["--set", "model.dtype=bfloat"], "model.dtype must be one of float32, bfloat16, float16"),
    (["--set", "model.activation=tanh"], "model.activation must be one of"),
    (["--steps", "0"], "train.steps must be >= 1"),
    (["--steps", "-5"], "train.steps must be >= 1"),
    (["--set", "optim.learning_rate=-1"], "optim.learning_rate must be > 0"),
    (["--set", "model.norm=batchnorm"], "model.norm must be one of layernorm, rmsnorm"),
    (["--set", "model.remat=ful"], "model.remat must be one of"),
    (["--set", "train.keep_checkpoints=0"], "train.keep_checkpoints must be >= 1"),
    (["--model", "gpt-modern-tiny", "--seq-len", "4096"], "exceeds the model's max_len 2048"),
    (["--set", "model.num_heads=3"], "model.d_model 128 is not divisible by model.num_heads 3"),
    (["--model", "gpt-modern-tiny", "--set", "model.num_kv_heads=3"], "is not a multiple of model.num_kv_heads"),
    (["--batch-size", "12"], "not divisible by the data-parallel size 8"),
    (["--set", "optim.grad_accum=3"], "not divisible by optim.grad_accum 3"),
    (["--mesh", "data=3"], "has 3 devices but 8 are available"),
    (["--mesh", "data=x"], "--mesh size for data must be an integer"),
    (["--set", "mesh.tensor=0"], "mesh.tensor must be >= 1"),
    (["--model", "nope"], "unknown preset 'nope'"),
    (["--set", "nope.x=1"], "unknown config key 'nope.x'"),
    (["--set", "model.num_layers=2.5"], "model.num_layers expects int"),
    (["--set", "optim.freeze_layers=9"], "optim.freeze_layers 9 is more than the model's 2 layers"),
    (["--set", "data.valid_fraction=1.5"], "data.valid_fraction must be in (0, 1)"),
    (["--set", "model.dropout=1.0"], "model.dropout must be in [0, 1)"),
    (["--set", "train.sample_temperature=-1"], "train.sample_temperature must be >= 0"),
    (["--data", "bogus:x"], "unknown data source 'bogus:x'"),
    (["--data", "text:/nonexistent/*.txt"], "no files match"),
    (["--init-from", "/nonexistent/run"], "/nonexistent/run has no config.json; is it a zoo workdir?"),
    (["--coordinator", "127.0.0.1:1"], "--coordinator needs --num-processes N and --process-id I"),
    (["--mesh", "data=1,fsdp=1,tensor=8", *TINY], "do not split 8 ways over mesh axes tensor"),
]


@pytest.mark.parametrize("argv,message", BAD_TRAIN_FLAGS, ids=[" ".join(a) for a, _ in BAD_TRAIN_FLAGS])
def test_bad_train_flags_stop_with_one_line_and_write_nothing(argv, message, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    fails(train_script.main, ["--workdir", workdir, *argv], capsys, message)
    assert not os.path.exists(workdir)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny GPT workdir trained for 2 steps."""
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    assert train_script.main(["--workdir", workdir, "--steps", "2", *TINY]) == 0
    return workdir


def test_steps_below_the_current_step_says_so(trained, capsys):
    fails(train_script.main, ["--workdir", trained, "--steps", "1"], capsys, "is already at step 2, past --steps 1")


@pytest.mark.parametrize("argv,message", [
    (["--set", "model.d_model=64"], "model.d_model cannot change on resume"),
    (["--model", "bert-tiny"], "holds a gpt-tiny run, not bert-tiny"),
    (["--set", "model.norm=rmsnorm"], "model.norm cannot change on resume"),
])
def test_resume_refuses_another_model(trained, capsys, argv, message):
    fails(train_script.main, ["--workdir", trained, *argv], capsys, message)


def test_a_second_writer_is_refused_while_the_workdir_is_locked(trained, capsys):
    with workdir_lib.claim(trained):
        line = fails(train_script.main, ["--workdir", trained, "--steps", "3"], capsys, "is in use by a run")
    assert f"pid {os.getpid()}" in line
    assert os.path.isdir(os.path.join(trained, workdir_lib.CHECKPOINT_DIR))  # the lock holder's work is intact


def test_a_truncated_metrics_line_is_repaired_on_resume(trained, capsys):
    path = os.path.join(trained, workdir_lib.METRICS_FILE)
    with open(path, "a") as f:
        f.write('{"step": 3, "loss": 4.')  # a crash in the middle of a write
    assert train_script.main(["--workdir", trained, "--steps", "3"]) == 0
    with open(path) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records][-1] == 3


def test_init_from_another_family_names_both(trained, tmp_path, capsys):
    bert = str(tmp_path / "bert")
    workdir_lib.save_config(models.run_config("bert-tiny"), bert)
    fails(train_script.main, ["--workdir", str(tmp_path / "ft"), "--init-from", bert, *TINY], capsys,
          "holds a bert model (bert-tiny), not gpt")
    assert not os.path.exists(tmp_path / "ft")


def test_init_from_with_other_shapes_names_the_first_mismatch(trained, tmp_path, capsys):
    wider = [*TINY, "--set", "model.d_model=48", "--set", "model.d_ff=64"]
    fails(train_script.main, ["--workdir", str(tmp_path / "ft"), "--init-from", trained, "--steps", "1", *wider],
          capsys, "the model shapes must match")


@pytest.mark.parametrize("argv,message", [
    (["--json", "{tmp}"], "is a directory"),
    (["--json", "{tmp}/missing/out.json"], "does not exist"),
    (["--step", "99"], "no checkpoint for step 99"),
])
def test_bad_eval_flags_stop_before_evaluating(trained, tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    fails(eval_script.main, ["--workdir", trained, *argv], capsys, message)


def test_eval_of_a_folder_that_is_no_workdir(tmp_path, capsys):
    fails(eval_script.main, ["--workdir", str(tmp_path)], capsys, "has no config.json; is it a zoo workdir?")


def test_a_lone_coordinator_says_whom_it_waits_for_and_gives_up_with_one_line(script, tmp_path):
    proc = script("train.py", "--workdir", str(tmp_path / "run"), "--coordinator", "127.0.0.1:29517",
                  "--num-processes", "2", "--process-id", "0", "--init-timeout", "2", check=False, timeout=120)
    assert proc.returncode == 2
    assert "waiting up to 2 s for processes 1..1 to join it" in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        "error: not all 2 processes joined 127.0.0.1:29517 within 2 s; start processes 1..1 with "
        "--coordinator 127.0.0.1:29517, or raise --init-timeout"]
    assert not os.path.exists(tmp_path / "run")


def test_an_internal_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """The one-line handler catches only the project's own errors."""
    from zoo import experiment

    def broken(*args, **kwargs):
        raise ValueError("a bug inside")

    monkeypatch.setattr(experiment, "build", broken)
    with pytest.raises(ValueError, match="a bug inside"):
        train_script.main(["--workdir", str(tmp_path / "run"), *TINY])
    assert not os.path.exists(tmp_path / "run")  # even then nothing is left behind
