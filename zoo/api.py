"""The public Python API: a model handle with its config, params and tokenizer.

`create` starts from a preset, `load` from a trained workdir, `load_hf` from a Hugging Face
checkpoint directory. The handle computes logits, generates text, and saves itself as a zoo
workdir (which train.py can continue) or as a Hugging Face directory.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np

import models
from zoo import (checkpoint, config as config_lib, convert, data, decode, experiment, optim, runs, steps,
                 workdir as workdir_lib)
from zoo.errors import ZooValueError
from zoo.family import Family
from zoo.hf_tokenizer import HFTokenizer
from zoo.tokenizer import Tokenizer


@dataclasses.dataclass
class ZooModel:
    """A model ready for inference: run config, family, Flax module, params, tokenizer (or None)."""

    config: config_lib.Config
    family: Family
    module: nn.Module
    params: Any
    tokenizer: Any = None

    @property
    def num_params(self) -> int:
        """Number of parameters."""
        return steps.count_params(self.params)

    def logits(self, input_ids: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        """Float32 logits for a batch of token ids (family-specific extras: attention_mask, ...)."""
        self._check_inputs(input_ids, *args, **kwargs)
        return np.asarray(_jitted_logits(self.family, self.module)(self.params, input_ids, *args, **kwargs))

    def _check_inputs(self, *args: Any, **kwargs: Any) -> None:
        """Raise ZooValueError for arguments the family's logits do not take, or ids that do not fit the model."""
        signature = inspect.signature(self.family.logits)
        try:
            bound = signature.bind(self.module, self.params, *args, **kwargs)
        except TypeError as e:
            takes = ", ".join(list(signature.parameters)[2:])
            raise ZooValueError(f"logits: {e}; the {self.family.name} family takes {takes}") from None
        cfg = self.config.model
        for name, value in bound.arguments.items():
            if name.endswith("input_ids") and value is not None:
                try:
                    ids = np.asarray(value)
                except ValueError:  # ragged rows
                    raise ZooValueError(f"the rows of {name} differ in length; pad them and pass a mask") from None
                _check_id_array(name, ids, cfg.vocab_size, _max_positions(cfg))

    def generate(self, prompt: str | list[str], max_new_tokens: int = 40, **sampling: Any) -> str | list[str]:
        """Continue (GPT) or answer (T5) a prompt; greedy unless temperature/top_k/top_p are given."""
        if self.tokenizer is None:
            raise ZooValueError("this model has no tokenizer; load one with zoo.load or zoo.load_hf")
        if self.family.generate is None:
            raise ZooValueError(f"the {self.config.family} family does not generate text; use logits")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ZooValueError("no prompts given; pass a string or a non-empty list of strings")
        out = self.family.generate(self.module, self.params, self.tokenizer, prompts, max_new_tokens, **sampling)
        return out[0] if isinstance(prompt, str) else out

    def save(self, workdir: str) -> None:
        """Write a zoo workdir (config, tokenizer, step-0 checkpoint with fresh optimizer state)."""
        if os.path.exists(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)):
            raise ZooValueError(f"{workdir} already holds checkpoints; choose an empty workdir")
        workdir_lib.save_config(self.config, workdir)
        if isinstance(self.tokenizer, Tokenizer):
            workdir_lib.save_tokenizer(self.tokenizer, workdir)
        tx = optim.make_optimizer(self.config.optim, self.config.train.steps, self.params)
        zero = jax.numpy.zeros((), jax.numpy.int32)
        state = steps.TrainState(step=zero, params=self.params, opt_state=tx.init(self.params), bad_steps=zero,
                                 spike_stats=steps.SpikeStats.zeros())
        saver = checkpoint.Checkpointer(workdir, async_save=False)
        saver.save(0, state, data.DataState.start(self.config.data.batch_size).to_json())
        saver.close()

    def save_hf(self, path: str) -> None:
        """Write a Hugging Face directory (config.json + model.safetensors) that transformers loads."""
        hf = self.family.hf
        hf_config = hf.config_to_hf(self.config.model)
        convert.write_hf_dir(path, hf_config, hf.params_to_hf(jax.device_get(self.params), self.config.model))


def _max_positions(cfg: Any) -> int:
    """Tokens a row may hold: max_len less any position offset (RoBERTa); 0 when unlimited (T5)."""
    # only the relative-position family (T5) has no max_len field
    return getattr(cfg, "max_len", 0) - getattr(cfg, "position_offset", 0)


def _check_id_array(name: str, ids: np.ndarray, vocab_size: int, max_positions: int) -> None:
    """ZooValueError unless `ids` is a [batch, length] integer array of in-vocabulary ids that fits the model."""
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ZooValueError(f"{name} must be a [batch, length] array of integer token ids, "
                            f"got shape {ids.shape} of {ids.dtype}")
    if max_positions and ids.shape[1] > max_positions:
        raise ZooValueError(f"{name} has {ids.shape[1]} tokens per row, more than the model's {max_positions} "
                            f"positions (max_len); shorten the input")
    decode.check_ids(ids, vocab_size, what=f"{name} row")


@functools.cache
def _jitted_logits(family: Family, module: nn.Module) -> Any:
    return jax.jit(functools.partial(family.logits, module))


def _init_params(family: Family, module: nn.Module, seed: int) -> Any:
    batch = family.init_batch(1, 8)
    return jax.jit(lambda rng: nn.meta.unbox(family.init_params(module, rng, batch)))(jax.random.key(seed))


def create(preset: str, seed: int = 0, **model_overrides: Any) -> ZooModel:
    """A randomly initialised model from a preset; keyword arguments override model config fields."""
    family, model_cfg = models.preset(preset)
    for key, value in model_overrides.items():
        model_cfg = config_lib.override(model_cfg, key, value)
    cfg = models.run_config(preset, model=model_cfg)
    config_lib.check_fields(cfg)
    family.validate(model_cfg, 8)  # a short sequence: only the shape rules apply
    module = family.Model(model_cfg)
    return ZooModel(cfg, family, module, _init_params(family, module, seed))


def load(workdir: str, step: int | None = None) -> ZooModel:
    """A trained model from a zoo workdir: its config, tokenizer and the params of `step` (default latest)."""
    cfg = workdir_lib.load_config(workdir)
    cfg = runs.for_these_devices(cfg)
    tokenizer = workdir_lib.saved_tokenizer(workdir)
    exp = experiment.build(cfg, workdir, tokenizer=tokenizer or experiment.NO_TOKENIZER)
    params, _ = runs.restore_params(exp, step)
    return ZooModel(exp.config, exp.family, exp.model, params, tokenizer)


def load_hf(path: str) -> ZooModel:
    """A model from a Hugging Face checkpoint directory (config.json + safetensors or .bin)."""
    hf_config, tensors = convert.read_hf_dir(path)
    family = models.family_for_hf(hf_config.get("model_type"))
    try:
        model_cfg = family.hf.config_from_hf(hf_config)
    except KeyError as e:  # every family reads the keys it needs as hf[key]
        raise convert.ConversionError(f"{os.path.join(path, 'config.json')} has no {e.args[0]!r}, which a "
                                      f"{hf_config['model_type']} config needs; re-save it with "
                                      f"save_pretrained") from None
    params = jax.tree.map(jax.numpy.asarray, family.hf.params_from_hf(tensors, model_cfg))
    expected = nn.meta.unbox(steps.abstract_params(family, family.Model(model_cfg), 1, 8))
    _check_tree(params, expected, path)
    cfg = config_lib.Config(preset=f"hf:{hf_config['model_type']}", family=family.name, model=model_cfg,
                            **family.train_defaults)
    return ZooModel(cfg, family, family.Model(model_cfg), params, _hf_tokenizer(path))


def _check_tree(params: Any, expected: Any, path: str) -> None:
    got = {k: v.shape for k, v in _flat(params).items()}
    want = {k: v.shape for k, v in _flat(expected).items()}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[0][0]
        raise convert.ConversionError(f"{path}: converted parameter {diff} does not match the model")


def _flat(tree: Any) -> dict[str, Any]:
    import flax.traverse_util as traverse

    return {"/".join(k): v for k, v in traverse.flatten_dict(tree).items()}


def _hf_tokenizer(path: str) -> Any:
    """The directory's tokenizer if it has one we can read, else None (logits still work)."""
    file = lambda name: os.path.join(path, name)
    if os.path.exists(file("spiece.model")):  # T5: 100 sentinels appended above the sentencepiece vocab
        return Tokenizer.from_file(file("spiece.model"), extra_ids=100)
    try:
        if os.path.exists(file("tokenizer.json")):
            return HFTokenizer.from_file(file("tokenizer.json"))
        if os.path.exists(file("vocab.txt")):
            settings = {}
            if os.path.exists(file("tokenizer_config.json")):
                with open(file("tokenizer_config.json")) as f:
                    settings = json.load(f)
            return HFTokenizer.from_vocab(file("vocab.txt"), lowercase=settings.get("do_lower_case", True))
        if os.path.exists(file("vocab.json")) and os.path.exists(file("merges.txt")):
            return HFTokenizer.from_bpe(file("vocab.json"), file("merges.txt"))
    except ImportError:  # the `tokenizers` package comes with the hf extra
        return None
    return None
