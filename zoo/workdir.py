"""The workdir layout, owned here alone: what each file is called, how it is written, how it is read.

    WORKDIR/config.json     the run's Config (all eval.py and zoo.load need to rebuild the run)
    WORKDIR/tokenizer.model the sentencepiece model every later run and evaluation uses
    WORKDIR/checkpoints/    Orbax step directories (zoo.checkpoint)
    WORKDIR/metrics.jsonl   one JSON object per logged step
    WORKDIR/tensorboard/    TensorBoard event files of the same scalars
    WORKDIR/.lock           held (flock) by the run writing the workdir; says its pid and host

Files are written by process 0 only, atomically (a temporary file in the same directory, opened
without following symlinks, then `os.replace`), so a crash never leaves a half-written config or
tokenizer behind; a run that fails before its first checkpoint in a workdir it created removes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shutil
import socket
from typing import Any, Iterator

import jax

import models
from zoo import config as config_lib
from zoo import tokenizer as tokenizer_lib
from zoo.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"


def is_main_process() -> bool:
    """Whether this process writes the workdir's files (process 0)."""
    return jax.process_index() == 0


def write_atomic(path: str, data: str | bytes) -> None:
    """Write a whole file or nothing: a temporary file in the same directory, then a rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


@contextlib.contextmanager
def claim(workdir: str) -> Iterator[None]:
    """Hold the workdir's lock while a run writes it (process 0); a second writer stops with one line.

    If the run fails before its first checkpoint in a workdir that did not exist (or was empty),
    what it wrote is removed, so the next run does not pick up a half-made tokenizer or config.
    """
    if not is_main_process():
        yield
        return
    existed = os.path.isdir(workdir)
    was_empty = not existed or not os.listdir(workdir)
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise config_lib.ConfigError(f"{workdir} is in use by a run ({holder}); wait for it to end "
                                     f"or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    finished = False
    try:
        yield
        finished = True
    finally:
        os.close(fd)  # releases the lock
        if not finished and was_empty and not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
            _remove_contents(workdir, keep_dir=existed)


def _remove_contents(workdir: str, keep_dir: bool) -> None:
    if not keep_dir:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for name in os.listdir(workdir):
        path = os.path.join(workdir, name)
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def write_json(path: str, values: dict[str, Any]) -> None:
    """Write one JSON object atomically (process 0 only)."""
    if is_main_process():
        write_atomic(path, json.dumps(values, indent=2))


# ---- config ---------------------------------------------------------------------------------------


def has_config(workdir: str) -> bool:
    """Whether a workdir holds a saved run config."""
    return os.path.isfile(os.path.join(workdir, CONFIG_FILE))


def load_config(workdir: str) -> config_lib.Config:
    """The config saved in a workdir."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise config_lib.ConfigError(f"{workdir} has no {CONFIG_FILE}; is it a zoo workdir?")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise config_lib.ConfigError(f"cannot read {path}: {err}") from None
    family = models.FAMILIES.get(raw.get("family"))
    if family is None:
        raise config_lib.ConfigError(f"{path} names an unknown model family {raw.get('family')!r}")
    return config_lib.from_dict(raw, family.Config)


def save_config(cfg: config_lib.Config, workdir: str) -> None:
    """Write config.json (process 0 only)."""
    if is_main_process():
        write_atomic(os.path.join(workdir, CONFIG_FILE), config_lib.to_json(cfg))


def run_config(workdir: str, preset: str | None, overrides: list[str]) -> config_lib.Config:
    """The config of a train.py run: the workdir's saved one when resuming, else the preset's; then overrides.

    On resume only the model's runtime switches (`config_lib.RUNTIME_MODEL_FIELDS`: dtype, remat,
    attention kernel, dropout) may change; fields that shape the params or the data may not.
    """
    if not has_config(workdir):
        return config_lib.apply_overrides(models.run_config(preset or "gpt-tiny"), overrides)
    saved = load_config(workdir)
    if preset and preset != saved.preset:
        raise config_lib.ConfigError(f"{workdir} holds a {saved.preset} run, not {preset}; use another --workdir")
    cfg = config_lib.apply_overrides(saved, overrides)
    runtime = {name: getattr(cfg.model, name) for name in config_lib.RUNTIME_MODEL_FIELDS}
    changed = [f.name for f in dataclasses.fields(cfg.model)
               if getattr(dataclasses.replace(saved.model, **runtime), f.name) != getattr(cfg.model, f.name)]
    if changed:
        raise config_lib.ConfigError(f"model.{changed[0]} cannot change on resume ({workdir} was trained with "
                                     f"{getattr(saved.model, changed[0])!r}); use another --workdir")
    return cfg


def init_from_config(init_from: str, cfg: config_lib.Config) -> config_lib.Config:
    """The config of an --init-from workdir, or ConfigError unless its model is of `cfg`'s family."""
    other = load_config(init_from)
    if other.family != cfg.family:
        raise config_lib.ConfigError(f"--init-from {init_from} holds a {other.family} model ({other.preset}), "
                                     f"not {cfg.family}; start from a {cfg.family} workdir")
    return other


# ---- tokenizer ------------------------------------------------------------------------------------


def saved_tokenizer(workdir: str) -> Tokenizer | None:
    """The tokenizer saved in a workdir, or None."""
    path = os.path.join(workdir, TOKENIZER_FILE)
    return Tokenizer.from_file(path) if os.path.isfile(path) else None


def require_tokenizer(workdir: str) -> Tokenizer:
    """The tokenizer saved in a workdir, or ConfigError saying it is not a zoo workdir."""
    tokenizer = saved_tokenizer(workdir)
    if tokenizer is None:
        raise config_lib.ConfigError(f"{workdir} has no {TOKENIZER_FILE}; is it a zoo workdir?")
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, workdir: str) -> None:
    """Write the workdir's tokenizer (process 0 only)."""
    if is_main_process():
        write_atomic(os.path.join(workdir, TOKENIZER_FILE), tokenizer.to_bytes())


def run_tokenizer(workdir: str | None, cfg: config_lib.Config, reserved: int,
                  init_from: str | None = None) -> Tokenizer:
    """The one tokenizer resolver: the workdir's own; else --init-from's (a fine-tune keeps the pretrained
    vocabulary); else the file `data.tokenizer` names; else one trained on a bounded sample of the train
    split (`data.tokenizer_sample_chars`). A new one is saved into the workdir."""
    own = saved_tokenizer(workdir) if workdir else None
    if own is not None:
        return own
    if init_from:
        tokenizer = require_tokenizer(init_from)
    elif cfg.data.tokenizer:
        tokenizer = _given_tokenizer(cfg.data.tokenizer, reserved)
    else:
        tokenizer = tokenizer_lib.train_on_sample(
            cfg.data.source, cfg.data.vocab_size, model_type=cfg.data.tokenizer_type, sentinels=reserved,
            sample_chars=cfg.data.tokenizer_sample_chars, valid_fraction=cfg.data.valid_fraction,
            seed=cfg.train.seed)
    if workdir:
        save_tokenizer(tokenizer, workdir)
    return tokenizer


def _given_tokenizer(path: str, reserved: int) -> Tokenizer:
    """The tokenizer of `data.tokenizer`, or ConfigError unless it has the `reserved` sentinels the model needs."""
    tokenizer = Tokenizer.from_file(path)
    if tokenizer.num_sentinels < reserved:
        raise config_lib.ConfigError(
            f"data.tokenizer {path} has {tokenizer.num_sentinels} sentinels at the top of its vocabulary but this "
            f"model reserves {reserved}; train it with python -m zoo.tokenizer --sentinels {reserved}")
    return tokenizer


# ---- metrics log ----------------------------------------------------------------------------------


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard.

    Only process 0 writes; other processes get a writer that does nothing.
    """

    def __init__(self, workdir: str):
        self.enabled = is_main_process()
        self.path = os.path.join(workdir, METRICS_FILE)
        self.tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # writes event files without TensorFlow

            self.tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

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
        """Drop logged steps beyond `step` (after resuming from an earlier checkpoint), and a line
        left unfinished by a crash mid-write."""
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a truncated line: the step it logged is logged again after resuming
                if record["step"] <= step:
                    kept.append(json.dumps(record) + "\n")
        write_atomic(self.path, "".join(kept))

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
