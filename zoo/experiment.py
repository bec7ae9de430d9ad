"""Builds everything a run needs from a Config, the same way for train.py, eval.py, zoo.load and notebooks.

config -> mesh -> tokenizer -> model -> optimizer -> state layout; data batches on demand.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
from typing import Any

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh

import models
from zoo import checkpoint, config as config_lib, data, optim, sharding, steps
from zoo.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
NO_TOKENIZER = "none"  # pass as `tokenizer` to build a model without one (vocab size from the config)


@dataclasses.dataclass
class Experiment:
    """The built pieces of one run; `config.model.vocab_size` matches the tokenizer."""

    config: config_lib.Config
    workdir: str | None
    family: types.ModuleType
    mesh: Mesh
    tokenizer: Tokenizer | None
    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    layout: steps.StateLayout

    def records(self, split: str) -> list[dict[str, str]]:
        """Raw records of a split of the configured source."""
        d = self.config.data
        return data.load_records(d.source, split, d.valid_fraction, self.config.train.seed)

    def batches(self, split: str, records: list[dict[str, str]] | None = None) -> data.Batches:
        """Deterministic batches of a split (shuffled for train, in order for validation)."""
        cfg = self.config
        records = self.records(split) if records is None else records
        examples = self.family.make_examples(records, cfg, self.tokenizer)
        rows = sharding.process_rows(next(iter(self.layout.batch_shardings.values())), cfg.data.batch_size)
        return data.Batches(examples, cfg.data.batch_size, self.family.prepare_batch_fn(cfg, self.tokenizer),
                            seed=cfg.train.seed, shuffle=split == "train", local_rows=rows)

    @functools.cached_property
    def eval_step(self) -> Any:
        """The jitted eval step, compiled once per experiment."""
        return steps.make_eval_step(self.family, self.model, self.layout, self.mesh)

    def init_state(self) -> steps.TrainState:
        """A fresh, sharded train state."""
        return steps.init_state(self.family, self.model, self.tx, self.layout, self.mesh, self.config.train.seed)

    def checkpointer(self, read_only: bool = False) -> checkpoint.Checkpointer:
        """The workdir's checkpoint manager."""
        return checkpoint.Checkpointer(self.workdir, keep=self.config.train.keep_checkpoints, read_only=read_only)


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
    """Write config.json atomically (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(config_lib.to_json(cfg))
    os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def build(cfg: config_lib.Config, workdir: str | None, tokenizer: Tokenizer | str | None = None,
          mesh: Mesh | None = None) -> Experiment:
    """Mesh, tokenizer (given, else loaded from the workdir or trained), model, optimizer, state layout."""
    family = models.FAMILIES[cfg.family]
    family.validate(cfg.model, cfg.data.seq_len)  # before anything (a tokenizer) is written
    if mesh is None:
        mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    if cfg.data.batch_size % sharding.batch_size_per_shard(mesh):
        raise ValueError(f"batch size {cfg.data.batch_size} is not divisible by the data-parallel size "
                         f"{sharding.batch_size_per_shard(mesh)} (data x fsdp); change --batch-size or --mesh")
    if cfg.data.batch_size % cfg.optim.grad_accum:
        raise ValueError(f"batch size {cfg.data.batch_size} is not divisible by grad_accum {cfg.optim.grad_accum}")
    if tokenizer is None:
        train_records = None if _has_tokenizer(workdir) else data.load_records(
            cfg.data.source, "train", cfg.data.valid_fraction, cfg.train.seed)
        tokenizer = data.get_tokenizer(workdir, train_records or [], cfg.data.vocab_size,
                                       sentinels=family.sentinels(cfg.model))
    if isinstance(tokenizer, str):
        tokenizer = None
    elif cfg.model.vocab_size != tokenizer.vocab_size:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size))
    model = family.Model(cfg.model)
    params_shape = nn.meta.unbox(steps.abstract_params(family, model, 1, 8))
    schedule = optim.learning_rate_schedule(cfg.optim, cfg.train.steps)
    tx = optim.make_optimizer(cfg.optim, cfg.train.steps, params_shape)
    layout = steps.state_layout(family, model, tx, mesh, cfg.data.batch_size, cfg.data.seq_len)
    return Experiment(cfg, workdir, family, mesh, tokenizer, model, tx, schedule, layout)


def _has_tokenizer(workdir: str | None) -> bool:
    return bool(workdir) and os.path.exists(os.path.join(workdir, data.TOKENIZER_FILE))


def num_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return sum(int(x.size) for x in jax.tree.leaves(params))
