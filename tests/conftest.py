"""Test setup: 8 emulated CPU devices (for every sharding path) and shared tiny fixtures."""

import os
import sys

# Must happen before JAX initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import subprocess  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    """grain workers need absl flags marked parsed."""
    try:
        from absl import flags

        flags.FLAGS.mark_as_parsed()
    except ImportError:
        pass


def run_script(*args: str, devices: int = 1, timeout: float = 300, check: bool = True,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run train.py/eval.py (or any script of the repo) in a fresh process on `devices` CPU devices."""
    full_env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                "PYTHONPATH": ROOT, **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def perturbed(model, scale: float = 0.05):
    """A torch model with every parameter moved by seeded noise, in eval mode.

    Hugging Face inits biases and norms to constants; randomising them all makes a weight mapping
    that swaps or drops a tensor show up in the logits.
    """
    import torch
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


@pytest.fixture
def script():
    """The run_script helper as a fixture."""
    return run_script


# ---- shared helpers for the model tests ---------------------------------------------------------


def random_params(family, cfg, seed: int = 0, scale: float = 0.1):
    """Unboxed params of every shape `cfg` builds, drawn from a seeded normal (no init to compile)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import flax.linen as nn

    from zoo import steps

    shapes = steps.abstract_params(family, family.Model(cfg), 1, 8)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), jnp.float32), nn.meta.unbox(shapes))


def init_params(family, cfg, seed: int = 0):
    """(model, unboxed params from the family's own init)."""
    import flax.linen as nn
    import jax

    model = family.Model(cfg)
    return model, nn.meta.unbox(family.init_params(model, jax.random.key(seed), family.init_batch(1, 8)))


def assert_trees_close(actual, expected, atol: float = 0.0, rtol: float = 0.0):
    """Same tree structure, and every leaf equal within tolerance (bit-equal by default)."""
    import jax
    import numpy as np

    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=atol, rtol=rtol)


class FakeTokenizer:
    """Ids below `vocab_size` with zoo's conventions (pad 0, eos 1, unk 2) and reserved top ids.

    Words map to ids by a hash, so host-side tests need no trained sentencepiece model; `decode`
    writes one letter per id.
    """

    pad_id, eos_id, unk_id = 0, 1, 2

    def __init__(self, vocab_size: int = 64, num_sentinels: int = 3):
        self.vocab_size, self.num_sentinels = vocab_size, num_sentinels

    def sentinel_id(self, k: int) -> int:
        return self.vocab_size - 1 - k

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts):
        top = self.vocab_size - self.num_sentinels - 3
        return [[3 + (sum(map(ord, w)) % top) for w in t.split()] for t in texts]

    def decode(self, ids) -> str:
        return " ".join(chr(97 + i % 26) for i in ids if i > 2)


def tiny_t5_config():
    """The T5 v1.1 shapes that test_t5's tiny Hugging Face model and test_seq2seq share (one compilation)."""
    from models.t5 import model as t5

    return t5.Config(num_layers=2, num_decoder_layers=2, d_model=32, num_heads=4, head_dim=8, d_ff=48,
                     vocab_size=96, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                     activation="gelu_tanh", gated_mlp=True, tie_embeddings=False, dropout=0.0)


def tiny_run_config(preset: str = "gpt-tiny", **model):
    """A run config of a preset shrunk to one small layer, batch 8 x 16 tokens, 4 steps."""
    import dataclasses

    import models
    from zoo import config as config_lib

    family, model_cfg = models.preset(preset)
    small = {"num_layers": 1, "d_model": 64, "num_heads": 8, "head_dim": 8, "d_ff": 128, **model}
    if family.name == "t5":
        small |= {"num_decoder_layers": 1, "num_sentinels": 8}
    return config_lib.Config(
        preset=preset, family=family.name, model=dataclasses.replace(model_cfg, **small),
        data=config_lib.DataConfig(batch_size=8, seq_len=16),
        optim=config_lib.OptimConfig(learning_rate=3e-3, warmup_steps=1),
        train=config_lib.TrainConfig(steps=4))


T5_INPUTS = [[5, 9, 23, 7, 44, 1], [11, 3, 1]]  # encoder inputs of different lengths: padding must not leak
T5_STEPS = 6
