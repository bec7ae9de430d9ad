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

import ml_dtypes
import numpy as np

from zoo.errors import ZooError


class ConversionError(ZooError, ValueError):
    """A directory that is not a usable Hugging Face checkpoint."""


INDEX_FILE = "model.safetensors.index.json"
# safetensors dtype names -> numpy dtypes; numpy has no bfloat16 (or float8), ml_dtypes does
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_WIDENED = ("F64", "F16", "BF16", "F8_E4M3", "F8_E5M2")  # read as float32, what the conversions compute in


def read_hf_dir(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json contents, tensor name -> float32/int numpy array) of a Hugging Face checkpoint."""
    config = _read_config(path)
    if os.path.isfile(os.path.join(path, INDEX_FILE)):
        return config, _read_shards(path)
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if len(files) > 1:
        names = ", ".join(os.path.basename(f) for f in files)
        raise ConversionError(f"{path} holds several safetensors files ({names}) but no {INDEX_FILE}; "
                              f"keep one model.safetensors, or add the index that save_pretrained writes")
    if files:
        return config, _read_safetensors(files[0])
    if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        return config, _read_torch_bin(os.path.join(path, "pytorch_model.bin"))
    raise ConversionError(f"{path} holds no model.safetensors or pytorch_model.bin")


def _read_config(path: str) -> dict:
    """The directory's config.json as a dict, or ConversionError saying why it cannot be read."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ConversionError(f"{path} has no config.json; is it a Hugging Face checkpoint directory?")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{config_path} is not valid JSON ({e}); re-save it with save_pretrained") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{config_path} holds a JSON {type(config).__name__}, not an object of config keys")
    return config


def _read_shards(path: str) -> dict[str, np.ndarray]:
    """The tensors of an indexed shard set: only the files its weight_map names, each tensor where it says."""
    index_path = os.path.join(path, INDEX_FILE)
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ConversionError(f"{index_path} is not a safetensors index with a weight_map ({e!r})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"{index_path}: its weight_map names no tensors")
    tensors: dict[str, np.ndarray] = {}
    for name in sorted(set(weight_map.values())):
        if not os.path.isfile(os.path.join(path, name)):
            raise ConversionError(f"{path}: shard {name}, named in {INDEX_FILE}, is missing")
        tensors.update(_read_safetensors(os.path.join(path, name)))
    missing = [name for name in weight_map if name not in tensors]
    if missing:
        raise ConversionError(f"{path}: {weight_map[missing[0]]} has no tensor {missing[0]!r}, "
                              f"which {INDEX_FILE} places there")
    return tensors


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as numpy; 16-bit and 8-bit floats widened to float32."""
    import safetensors

    with open(file, "rb") as f:
        data = f.read()
    try:
        entries = safetensors.deserialize(data)
    except safetensors.SafetensorError as e:
        raise ConversionError(f"{file} is not a readable safetensors file ({e})") from None
    tensors = {}
    for name, entry in entries:
        if entry["dtype"] not in _DTYPES:
            raise ConversionError(f"{file}: tensor {name!r} has dtype {entry['dtype']}, which zoo does not read")
        array = np.frombuffer(entry["data"], dtype=_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        tensors[name] = array.astype(np.float32) if entry["dtype"] in _WIDENED else array
    return tensors


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
