"""zoo: BERT, GPT and T5 in JAX/Flax, trained with sharded jitted steps and Orbax checkpoints.

    import zoo
    m = zoo.create("gpt2-small")        # random init from a preset
    m = zoo.load("runs/x")              # a trained workdir (latest checkpoint)
    m = zoo.load_hf("path/to/hf/gpt2")  # a Hugging Face checkpoint directory
    m.generate("Once", max_new_tokens=40)
"""

from zoo.api import ZooModel, create, load, load_hf

__all__ = ["ZooModel", "create", "load", "load_hf"]
