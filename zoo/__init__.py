"""zoo: BERT, GPT and T5 in JAX/Flax, trained with sharded jitted steps and Orbax checkpoints.

    import zoo
    m = zoo.create("gpt2-small")        # random init from a preset
    m = zoo.load("runs/x")              # a trained workdir (latest checkpoint)
    m = zoo.load_hf("path/to/hf/gpt2")  # a Hugging Face checkpoint directory
    m.generate("Once", max_new_tokens=40)

Bad input (a wrong argument, an unusable checkpoint directory) raises `zoo.ZooError` with one line
saying what is wrong and what to do; a bad argument's error is also a ValueError.

The public API is loaded on first use, so `import zoo` (and importing a model) stays cheap.
"""

import importlib
from typing import Any

__all__ = ["ZooError", "ZooModel", "create", "load", "load_hf"]
_MODULES = {"ZooError": "zoo.errors", "ZooModel": "zoo.api", "create": "zoo.api", "load": "zoo.api",
            "load_hf": "zoo.api"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
