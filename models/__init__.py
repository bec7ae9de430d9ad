"""Model families and the one dispatch table: family name -> Family, preset name -> (family, config).

Each family is a package (`models/gpt`, `models/bert`, `models/t5`) with the same files: `model.py`
(config, presets, Flax modules, loss, FLOPs), `data.py` (records -> examples -> batches, numpy) and
`hf.py` (the Hugging Face mapping both ways); its `__init__` exports one `zoo.family.Family` value.
"""

from __future__ import annotations

from typing import Any

from models import bert, gpt, t5
from zoo import config as config_lib
from zoo.family import Family

FAMILIES: dict[str, Family] = {f.name: f for f in (gpt.FAMILY, bert.FAMILY, t5.FAMILY)}

PRESETS: dict[str, tuple[str, Any]] = {
    name: (family.name, cfg) for family in FAMILIES.values() for name, cfg in family.presets.items()
}


def preset(name: str) -> tuple[Family, Any]:
    """The family and model config of a preset, or ConfigError naming the valid presets."""
    if name not in PRESETS:
        raise config_lib.ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    family_name, cfg = PRESETS[name]
    return FAMILIES[family_name], cfg


def run_config(name: str, model: Any = None) -> config_lib.Config:
    """The run config of a preset: its model config (or `model`) with the family's training defaults and
    the preset's own (`Family.preset_defaults`)."""
    family, model_cfg = preset(name)
    cfg = config_lib.Config(preset=name, family=family.name, model=model_cfg if model is None else model,
                            **family.train_defaults)
    return config_lib.apply_overrides(cfg, (family.preset_defaults or {}).get(name, ()))


def family_for_hf(model_type: str | None) -> Family:
    """The family that reads a Hugging Face config's `model_type`, or ConfigError naming the known ones."""
    for family in FAMILIES.values():
        if model_type in family.hf.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.hf.model_types)
    raise config_lib.ConfigError(f"Hugging Face model_type {model_type!r} is not supported; known: {', '.join(known)}")
