"""Hugging Face checkpoint directories <-> (HF config dict, flat numpy tensors).

The per-family name mapping lives in each family's `hf.py` (its `Family.hf`); this module only
reads and writes files:
`config.json` plus `model.safetensors` (or sharded safetensors with an index, or a PyTorch
`pytorch_model.bin`, read with torch when it is installed).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np


class ConversionError(ValueError):
    """A directory that is not a usable Hugging Face checkpoint."""


def read_hf_dir(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json contents, tensor name -> float32/int numpy array) of a Hugging Face checkpoint."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ConversionError(f"{path} has no config.json; is it a Hugging Face checkpoint directory?")
    with open(config_path) as f:
        config = json.load(f)
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if files:
        from safetensors.numpy import load_file

        tensors: dict[str, np.ndarray] = {}
        for file in files:
            tensors.update(load_file(file))
    elif os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        tensors = _read_torch_bin(os.path.join(path, "pytorch_model.bin"))
    else:
        raise ConversionError(f"{path} holds no model.safetensors or pytorch_model.bin")
    return config, tensors


def _read_torch_bin(file: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConversionError(f"reading {file} needs PyTorch (pip install 'zoo[hf]'), "
                              f"or convert it to safetensors") from None
    state = torch.load(file, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def write_hf_dir(path: str, config: dict, tensors: dict[str, np.ndarray]) -> None:
    """Write config.json and model.safetensors (what `from_pretrained` reads)."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(contiguous, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def take(tensors: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A tensor by name as float32, or ConversionError naming the missing weight."""
    if name not in tensors:
        raise ConversionError(f"the checkpoint has no weight {name!r}")
    return np.asarray(tensors[name], dtype=np.float32)
