"""Starting and finishing a run: restore-or-init, params for evaluation, the closing report."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.traverse_util as traverse
import jax

from zoo import checkpoint, config as config_lib, data, experiment, sharding, sources, steps, trainer
from zoo import workdir as workdir_lib
from zoo.experiment import Experiment


def restore_or_init(exp: Experiment, init_from: str | None = None) -> tuple[steps.TrainState, data.DataState]:
    """(state, training data state): the workdir's latest checkpoint, else --init-from params, else fresh."""
    checkpointer = exp.checkpointer()
    try:
        if checkpointer.latest_step() is not None:
            state, position, step = checkpointer.restore(exp.layout.abstract)
            if step > exp.config.train.steps:
                raise checkpoint.CheckpointError(
                    f"{exp.workdir} is already at step {step}, past --steps {exp.config.train.steps}; "
                    f"pass a larger --steps to train on, or run eval.py to evaluate it")
            if jax.process_index() == 0:
                print(f"resumed from {exp.workdir} step {step}")
            return state, data.DataState.from_json(position, exp.config.data.batch_size)
    finally:
        checkpointer.close()
    state = exp.init_state()
    if init_from:
        state = state.replace(params=params_from_workdir(exp, init_from, state.params))
    return state, data.DataState.start(exp.config.data.batch_size)


def params_from_workdir(exp: Experiment, workdir: str, fresh: Any) -> Any:
    """`fresh` params with every entry that another workdir's latest checkpoint also has replaced.

    This is how fine-tuning starts from a pretrained run: the shared body is loaded and new heads
    keep their fresh initialisation. The other run must be of the same family, and every parameter
    both have must have the same shape (CheckpointError naming the first that does not).
    """
    other_cfg = workdir_lib.init_from_config(workdir, exp.config)
    # only its params are read: its batch needs no more than to fit this mesh
    other_cfg = dataclasses.replace(other_cfg, data=exp.config.data, optim=exp.config.optim)
    other = experiment.build(other_cfg, workdir, tokenizer=workdir_lib.require_tokenizer(workdir), mesh=exp.mesh)
    source = checkpoint.Checkpointer(workdir, read_only=True)
    try:
        loaded = source.restore_params(other.layout.abstract.params)
    finally:
        source.close()
    flat_loaded = traverse.flatten_dict(loaded)
    flat_fresh = traverse.flatten_dict(fresh)
    used = 0
    for key, value in flat_fresh.items():
        old = flat_loaded.get(key)
        if old is not None and old.shape != value.shape:
            raise checkpoint.CheckpointError(f"--init-from {workdir}: parameter {'/'.join(key)} is {old.shape} there "
                                             f"but {value.shape} here; the model shapes must match")
        if old is not None:
            flat_fresh[key] = jax.device_put(old, value.sharding)
            used += 1
    if used == 0:
        raise checkpoint.CheckpointError(f"--init-from {workdir}: no parameter matches this model")
    if jax.process_index() == 0:
        print(f"initialised {used}/{len(flat_fresh)} parameter arrays from {workdir}")
    return traverse.unflatten_dict(flat_fresh)


def restore_params(exp: Experiment, step: int | None = None) -> tuple[Any, int]:
    """(params, step) of a checkpoint in the experiment's workdir, on the experiment's mesh (the
    optimizer state is not read)."""
    checkpointer = exp.checkpointer(read_only=True)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise checkpoint.CheckpointError(f"{exp.workdir} has no checkpoint yet; train first")
        if step not in checkpointer.all_steps():
            available = ", ".join(map(str, checkpointer.all_steps()))
            raise checkpoint.CheckpointError(f"no checkpoint for step {step} in {exp.workdir} (available: {available})")
        return checkpointer.restore_params(exp.layout.abstract.params, step), step
    finally:
        checkpointer.close()


def for_these_devices(cfg: config_lib.Config, mesh: config_lib.MeshConfig | None = None) -> config_lib.Config:
    """A trained run's config for evaluation and generation on the devices this process sees, whatever
    mesh it was trained on: every device on `data` unless `mesh` is given, the batch rounded up to a
    multiple of the batch shards, and no gradient accumulation."""
    mesh = config_lib.MeshConfig() if mesh is None else mesh
    data_size, fsdp, _ = sharding.mesh_shape(mesh.data, mesh.fsdp, mesh.tensor, jax.device_count())
    shards = data_size * fsdp
    batch_size = -(-cfg.data.batch_size // shards) * shards
    return dataclasses.replace(cfg, mesh=mesh, data=dataclasses.replace(cfg.data, batch_size=batch_size),
                               optim=dataclasses.replace(cfg.optim, grad_accum=1))


def report(exp: Experiment, params: Any, step: int | None = None, samples: int = 3, max_batches: int = 0,
           max_records: int = 1000) -> dict[str, Any]:
    """Evaluate `max_batches` batches (0: all) of the evaluation split (`data.eval_split`), print metrics and
    sampled continuations; return them. Generation metrics read its first `max_records` records."""
    source = exp.source(exp.config.data.eval_split)
    summary = trainer.evaluate(exp, params, exp.split(exp.config.data.eval_split, source), max_batches)
    summary.update(vocab_size=exp.tokenizer.vocab_size, preset=exp.config.preset)
    if step is not None:
        summary["step"] = step
    records = sources.head(source, max_records)
    family = exp.family
    if family.generation_metrics is not None:  # e.g. T5's exact match, BLEU, ROUGE-L
        summary.update(family.generation_metrics(exp.model, params, exp.tokenizer, records, exp.config))
    texts: list[dict[str, str]] = []
    if samples > 0 and exp.config.train.sample_tokens > 0 and family.generate is not None \
            and family.sample_prompts is not None:
        prompts = family.sample_prompts(exp.config, records, exp.tokenizer, samples)
        t = exp.config.train
        outputs = family.generate(exp.model, params, exp.tokenizer, prompts, t.sample_tokens,
                                  temperature=t.sample_temperature, top_k=t.sample_top_k, seed=t.seed)
        texts = [{"prompt": p, "continuation": o} for p, o in zip(prompts, outputs)]
    if jax.process_index() == 0:
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
        print(f"validation: {shown}")
        for t in texts:
            print(f"--- {t['prompt']!r} -> {t['continuation']!r}")
    summary["samples"] = texts
    return summary
