"""Builds everything a run needs from a Config, the same way for train.py, eval.py, zoo.load and notebooks.

config -> mesh -> tokenizer -> model -> optimizer -> state layout; data splits on demand.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import optax
from jax.sharding import Mesh

import models
from zoo import checkpoint, config as config_lib, data, optim, sharding, sources, steps, workdir as workdir_lib
from zoo.errors import DataError
from zoo.family import Family
from zoo.tokenizer import Tokenizer

NO_TOKENIZER = "none"  # pass as `tokenizer` to build a model without one (vocab size from the config)


@dataclasses.dataclass
class Experiment:
    """The built pieces of one run; `config.model.vocab_size` matches the tokenizer."""

    config: config_lib.Config
    workdir: str | None
    family: Family
    mesh: Mesh
    tokenizer: Tokenizer | None
    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    layout: steps.StateLayout

    def source(self, split: str) -> sources.Source:
        """The records of a split of the configured source, read lazily."""
        d = self.config.data
        return sources.open_source(d.source, split, d.valid_fraction, self.config.train.seed)

    def split(self, split: str, source: sources.Source | None = None) -> data.Split:
        """This process's batches of a split (of `source` if given): shuffled and endless for train,
        in order and once (then padding) otherwise."""
        cfg = self.config
        rows = sharding.process_rows(next(iter(self.layout.batch_shardings.values())), cfg.data.batch_size)
        source = self.source(split) if source is None else source
        if len(source) == 0:
            raise DataError(f"the {split} split of {cfg.data.source} holds no records")
        return data.Split(source, self.family.row_maker(cfg, self.tokenizer), cfg.data.batch_size, cfg.train.seed,
                          shuffle=split == "train", local=rows, workers=cfg.data.workers)

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


def validate(cfg: config_lib.Config, mesh: Mesh) -> None:
    """Raise a one-line ConfigError/ValueError if the run cannot work on `mesh`, before anything is written."""
    config_lib.check_fields(cfg)
    models.FAMILIES[cfg.family].validate(cfg.model, cfg.data.seq_len)
    shards = sharding.batch_size_per_shard(mesh)
    if cfg.data.batch_size % shards:
        raise config_lib.ConfigError(f"batch size {cfg.data.batch_size} is not divisible by the data-parallel size "
                         f"{shards} (data x fsdp); change --batch-size or --mesh")
    if cfg.optim.freeze_layers > cfg.model.num_layers:
        raise config_lib.ConfigError(f"optim.freeze_layers {cfg.optim.freeze_layers} is more than the model's "
                                     f"{cfg.model.num_layers} layers")
    if cfg.data.batch_size % cfg.optim.grad_accum:
        raise config_lib.ConfigError(f"batch size {cfg.data.batch_size} is not divisible by optim.grad_accum "
                                     f"{cfg.optim.grad_accum}; change --batch-size or optim.grad_accum")


def build(cfg: config_lib.Config, workdir: str | None, tokenizer: Tokenizer | str | None = None,
          mesh: Mesh | None = None, init_from: str | None = None) -> Experiment:
    """Mesh, tokenizer (given, else `workdir.run_tokenizer`'s), model, optimizer, state layout."""
    family = models.FAMILIES[cfg.family]
    if mesh is None:
        mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    validate(cfg, mesh)
    if init_from:
        workdir_lib.init_from_config(init_from, cfg)
    if tokenizer is None:
        tokenizer = workdir_lib.run_tokenizer(workdir, cfg, family.reserved_ids(cfg.model), init_from=init_from)
    if isinstance(tokenizer, str):
        tokenizer = None
    elif cfg.model.vocab_size != tokenizer.vocab_size:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size))
    model = family.Model(cfg.model)
    params_shape = nn.meta.unbox(steps.abstract_params(family, model, 1, 8))
    schedule = optim.learning_rate_schedule(cfg.optim, cfg.train.steps)
    tx = optim.make_optimizer(cfg.optim, cfg.train.steps, params_shape)
    layout = steps.state_layout(family, model, tx, mesh, cfg.data.batch_size, cfg.data.seq_len)
    sharding.check_divisible(layout.abstract.params)
    return Experiment(cfg, workdir, family, mesh, tokenizer, model, tx, schedule, layout)
