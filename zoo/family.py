"""What a model family is: one frozen value holding everything train.py, eval.py and the API use.

Each package in `models/` builds one `Family` (`models.gpt.FAMILY`, ...) and `models.FAMILIES` maps
family names to them. Nothing outside a family looks for other names on it: the required members
are the same for every family, and the optional ones are typed fields that are None when a family
has no such thing (BERT does not generate text).

Importing this module loads nothing heavy (no JAX), so a family package can depend on it freely.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable

Batch = dict[str, Any]  # named numpy or JAX arrays, all with a leading batch axis
Records = list[dict[str, str]]  # raw text records: {"text": ...} or {"input": ..., "target": ...}


@dataclasses.dataclass(frozen=True)
class HFMapping:
    """A family's Hugging Face interchange: configs and weights both ways (transformers 4.x names).

    The same mapping serves `zoo.load_hf` / `save_hf` and the benchmark's peers, which build the
    transformers model named in `config_to_hf(cfg)["architectures"][0]` (Flax: with a "Flax" prefix).
    """

    model_types: tuple[str, ...]  # config.json "model_type" values this family reads
    config_from_hf: Callable[[dict], Any]  # HF config dict -> the family's model Config
    config_to_hf: Callable[[Any], dict]  # model Config -> HF config dict (raises ValueError if none)
    params_from_hf: Callable[[dict, Any], dict]  # (HF state dict of numpy arrays, Config) -> params
    params_to_hf: Callable[[Any, Any], dict]  # (params, Config) -> HF state dict of numpy arrays


@dataclasses.dataclass(frozen=True, eq=False)  # compared and hashed by identity: a jit static argument
class Family:
    """One model family. Required members first; optional ones default to None."""

    name: str  # "gpt" | "bert" | "t5": the key in models.FAMILIES and config.json's "family"
    Config: type  # the frozen model config dataclass
    presets: Mapping[str, Any]  # preset name -> Config
    Model: type  # the Flax module, built as Model(cfg)
    train_defaults: Mapping[str, Any]  # run-config sections that differ from the generic defaults
    validate: Callable[[Any, int], None]  # (cfg, seq_len): raise ValueError (one line) if it cannot run
    reserved_ids: Callable[[Any], int]  # cfg -> ids a trained tokenizer reserves at the top (sentinels)
    init_batch: Callable[[int, int], Batch]  # (batch, seq_len) -> a batch with every key, for shapes
    init_params: Callable[[Any, Any, Batch], Any]  # (model, rng, batch) -> boxed params
    loss_sums: Callable[..., dict]  # (model, params, batch, dropout_rng, train) -> summed metrics
    logits: Callable[..., Any]  # (model, params, ids, ...) -> float32 logits, as Hugging Face computes them
    flops_per_token: Callable[[Any, int], float]  # (cfg, seq_len) -> training FLOPs per token
    row_maker: Callable[[Any, Any], Any]  # (run config, tokenizer) -> zoo.data.RowMaker: documents -> rows -> inputs
    hf: HFMapping
    # -- optional --
    summarize: Callable[[dict], dict] | None = None  # summed eval metrics -> family metrics (F1, ...)
    sample_prompts: Callable[[Any, Records, Any, int], list[str]] | None = None  # closing-sample prompts
    generate: Callable[..., list[str]] | None = None  # (model, params, tokenizer, prompts, n, **sampling)
    generation_metrics: Callable[..., dict] | None = None  # (model, params, tokenizer, records, run)
    preset_defaults: Mapping[str, tuple[str, ...]] | None = None  # preset -> `key=value` run defaults
    # (a tiny preset's tuned default run), applied before the user's overrides
