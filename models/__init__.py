"""Model families and the one dispatch table: family name -> module, preset name -> (family, config).

Each family module provides: `Config` (a frozen dataclass), `PRESETS`, `Model` (a Flax module),
`validate(cfg, seq_len)`, `make_examples`, `prepare_batch`, `init_batch`, `init_params`,
`loss_sums`, `flops_per_token`, and the Hugging Face mapping `hf_*` functions.
"""

from __future__ import annotations

import types

from models import bert, gpt, t5

FAMILIES: dict[str, types.ModuleType] = {"gpt": gpt, "bert": bert, "t5": t5}

PRESETS: dict[str, tuple[str, object]] = {
    name: (family_name, cfg) for family_name, family in FAMILIES.items() for name, cfg in family.PRESETS.items()
}


def preset(name: str) -> tuple[types.ModuleType, object]:
    """The family module and model config of a preset, or ValueError naming the valid presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    family_name, cfg = PRESETS[name]
    return FAMILIES[family_name], cfg
