"""Command-line flags of train.py and eval.py, and one-line errors for people."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from typing import Iterator

from zoo import config as config_lib
from zoo.errors import ZooError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the project's own errors (`ZooError`: the user asked for something that cannot work) into
    `error: <one line>` on stderr and exit status 2, with no traceback.

    Any other exception is a bug and keeps its traceback. Set ZOO_DEBUG=1 to see the traceback of a
    ZooError too.
    """
    try:
        yield
    except ZooError as err:
        if os.environ.get("ZOO_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def train_parser() -> argparse.ArgumentParser:
    """Flags of train.py."""
    p = argparse.ArgumentParser(description="Train a zoo model (resumes if WORKDIR has a checkpoint).")
    p.add_argument("--model", default=None, help="preset name (default gpt-tiny; see models.PRESETS)")
    p.add_argument("--data", default=None, help="builtin | text:GLOB (.txt/.jsonl) | tfds:NAME")
    p.add_argument("--workdir", default="runs/default", help="where config, tokenizer, checkpoints and logs go")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--mesh", default=None, help="data=D,fsdp=F,tensor=T (default: all devices on data)")
    p.add_argument("--init-from", default=None, help="workdir whose latest params initialise a fresh run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field, e.g. --set optim.learning_rate=3e-4 (repeatable)")
    _distributed_flags(p)
    return p


def eval_parser() -> argparse.ArgumentParser:
    """Flags of eval.py."""
    p = argparse.ArgumentParser(description="Evaluate a checkpoint of a zoo workdir.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--json", default=None, help="write the metrics to this file as one JSON object")
    p.add_argument("--mesh", default=None,
                   help="data=D,fsdp=F,tensor=T (default: every device here on data, whatever mesh trained the run)")
    p.add_argument("--samples", type=int, default=3, help="sampled continuations to print")
    _distributed_flags(p)
    return p


def _distributed_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-process runs)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--init-timeout", type=int, default=300, metavar="SECONDS",
                   help="how long a process waits for all the others to join (multi-process runs)")


def parse_mesh(text: str) -> dict[str, int]:
    """`data=2,fsdp=2,tensor=2` -> {'data': 2, 'fsdp': 2, 'tensor': 2}."""
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in ("data", "fsdp", "tensor"):
            raise config_lib.ConfigError(f"--mesh expects data=D,fsdp=F,tensor=T, got {text!r}")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            raise config_lib.ConfigError(f"--mesh size for {name} must be an integer, got {value!r}") from None
    return out


def overrides(args: argparse.Namespace) -> list[str]:
    """train.py's typed flags and --set values as dotted overrides, in that order."""
    pairs = [("data.source", args.data), ("train.steps", args.steps), ("data.batch_size", args.batch_size),
             ("data.seq_len", args.seq_len), ("train.seed", args.seed),
             ("train.checkpoint_every", args.checkpoint_every)]
    out = [f"{k}={v}" for k, v in pairs if v is not None]
    if args.mesh:
        mesh = {"data": 1, "fsdp": 1, "tensor": 1, **parse_mesh(args.mesh)}
        out += [f"mesh.{k}={v}" for k, v in mesh.items()]
    return out + list(args.set)


def check_output_path(path: str | None) -> None:
    """Raise ConfigError now, not after the work, if `path` cannot be written as a file."""
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise config_lib.ConfigError(f"--json {path} is a directory; give a file name")
    if not os.path.isdir(parent):
        raise config_lib.ConfigError(f"--json {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise config_lib.ConfigError(f"--json {path}: the folder {parent} is not writable")


def mesh_flag(mesh_text: str | None) -> config_lib.MeshConfig | None:
    """The mesh a --mesh flag names (axes it leaves out are 1), or None without one."""
    if not mesh_text:
        return None
    return config_lib.MeshConfig(**{"data": 1, "fsdp": 1, "tensor": 1, **parse_mesh(mesh_text)})


def with_mesh_flag(cfg: config_lib.Config, mesh_text: str | None) -> config_lib.Config:
    """Replace the config's mesh by a --mesh flag, if given."""
    mesh = mesh_flag(mesh_text)
    return cfg if mesh is None else dataclasses.replace(cfg, mesh=mesh)
