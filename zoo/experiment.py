"""Builds everything a run needs from a Config, the same way for train.py, eval.py, zoo.load and notebooks.

config -> mesh -> tokenizer -> model -> optimizer -> state layout; data batches on demand.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import optax
from jax.sharding import Mesh

import models
from zoo import checkpoint, config as config_lib, data, optim, sharding, steps, workdir as workdir_lib
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
        train_texts = lambda: data.record_texts(  # noqa: E731  (read only if a tokenizer must be trained)
            data.load_records(cfg.data.source, "train", cfg.data.valid_fraction, cfg.train.seed))
        tokenizer = workdir_lib.run_tokenizer(workdir, train_texts, cfg.data.vocab_size,
                                              family.reserved_ids(cfg.model), init_from=init_from)
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
