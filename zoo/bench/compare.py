"""The peers beside our figures: what each peer is, and its train and decode figures, never fatal.

A peer that cannot be built (no stack installed, no Hugging Face equivalent of the config) is
reported as `unavailable`; one that fails while timing gets an `error` entry instead of figures,
so a failing peer never loses our own.
"""

from __future__ import annotations

from typing import Any, Callable

from zoo import config as config_lib
from zoo.bench import measure, peer_child, peers
from zoo.family import Family


def header(backend: str, family: Family, model_cfg: Any) -> dict[str, Any]:
    """The peer's Hugging Face config and any way it is not like ours, or why it cannot run here."""
    missing = peers.peer_available(backend)
    if missing is not None:
        print(missing, flush=True)
        return {"unavailable": missing}
    try:
        cfg_hf = peers.hf_config(family, model_cfg)
    except ValueError as err:
        line = f"{backend} peer unavailable: no Hugging Face {family.name} model for this config ({err})"
        print(line, flush=True)
        return {"unavailable": line}
    out: dict[str, Any] = {"hf_config": cfg_hf}
    why = peers.mismatch(model_cfg)
    if why:
        out["mismatch"] = why
    return out


def train(backend: str, peer: dict[str, Any], cfg: config_lib.Config, shapes: dict[str, list[int]],
          steps: int, where: str) -> dict[str, Any]:
    """The peer's train-step figures on our batch `shapes`, in a subprocess or `where="inline"`."""
    time_it = peers.time_train_step if where == "inline" else peer_child.run
    request = dict(backend=backend, family_name=cfg.family, cfg_hf=peer["hf_config"], shapes=shapes,
                   steps=steps, dtype=cfg.model.dtype)
    return guard(lambda: {**time_it(**request), "load": measure.load()})


def decode(backend: str, peer: dict[str, Any], cfg: config_lib.Config, batch_sizes: list[int], prompt_len: int,
           new_tokens: int) -> dict[str, Any]:
    """The peer's greedy `generate` figures per batch size."""
    def one(b: int) -> dict[str, Any]:
        figures = peers.time_decode(backend, cfg.family, peer["hf_config"], b, prompt_len, new_tokens, cfg.model.dtype)
        return {**figures, "load": measure.load()}

    return {f"batch_{b}": guard(lambda b=b: one(b)) for b in batch_sizes}


def guard(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`fn()`, or `{"error": its last line}` (printed) if it raises."""
    try:
        return fn()
    except Exception as err:  # a failing peer must not lose our own figures
        line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        print(f"peer failed: {line}")
        return {"error": line}
