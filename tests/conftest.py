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
