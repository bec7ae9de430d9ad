"""zoo: BERT, GPT and T5 in JAX/Flax, trained with sharded jitted steps and Orbax checkpoints.

    import zoo
    m = zoo.create("gpt2-small")        # random init from a preset
    m = zoo.load("runs/x")              # a trained workdir (latest checkpoint)
    m = zoo.load_hf("path/to/hf/gpt2")  # a Hugging Face checkpoint directory
    m.generate("Once", max_new_tokens=40)

The public API is loaded on first use, so `import zoo` (and importing a model) stays cheap.
"""

import importlib
from typing import Any

__all__ = ["ZooModel", "create", "load", "load_hf"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("zoo.api"), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
