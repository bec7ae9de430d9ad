"""The "hf-torch" peer backend: transformers' PyTorch model of a config, eager AdamW steps, greedy generate.

Nothing here depends on the family: the model class is the config's `architectures[0]`, and the
model computes its own loss from the batch's `labels` (and `next_sentence_label` where it has NSP).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np

from zoo.bench import measure

LR = 1e-4
WEIGHT_DECAY = 0.01


def device() -> Any:
    """The torch device peers run on: the GPU when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    """Wait for queued GPU work (nothing to wait for on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def autocast(dtype: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to `dtype` on the peer device (a no-op for float32)."""
    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device().type, dtype=getattr(torch, dtype))


def build(config: Any, seed: int) -> Any:
    """The transformers PyTorch model named by `config.architectures[0]`, seeded, on the peer device."""
    import torch
    import transformers

    torch.manual_seed(seed)
    return getattr(transformers, config.architectures[0])(config).to(device())


def train(config: Any, batch_np: dict[str, np.ndarray], steps: int, dtype: str, seed: int) -> tuple[list[float], float]:
    """Seconds of 1 + `steps` eager AdamW steps on the model's own loss of `batch_np`, and the last loss."""
    import torch

    model = build(config, seed)
    model.train()  # every dropout rate is 0.0, so train mode only matters for bookkeeping
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    batch = {k: torch.as_tensor(v, dtype=torch.long, device=device()) for k, v in batch_np.items()}

    def step(_: Any) -> Any:
        with autocast(dtype):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return loss

    times, loss = measure.timed_calls(step, None, steps + 1)
    return times, float(loss.item())


def decoder(config: Any, prompt: np.ndarray, start_len: int, dtype: str, seed: int) -> Callable[[int], tuple]:
    """A function n -> output shape that runs greedy `generate` of exactly n new tokens.

    `start_len` is not needed here (`min_new_tokens` counts new tokens only); it keeps the
    signature of `peer_flax.decoder`.
    """
    import torch

    model = build(config, seed)
    model.eval()
    ids = torch.as_tensor(prompt, dtype=torch.long, device=device())
    mask = torch.ones_like(ids)  # explicit, so generate never infers padding from token ids

    def generate(n: int) -> tuple:
        with torch.inference_mode(), autocast(dtype):
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                                 min_new_tokens=n, pad_token_id=0)
        sync()
        return tuple(out.shape)

    return generate
