"""GPT: a decoder-only transformer trained as a causal language model.

GPT-2 (Radford et al., 2019) is pre-norm with learned positions, LayerNorm, GELU (tanh form) and a
head tied to the token embedding. The modern variant swaps in rotary positions, RMSNorm, a SwiGLU
MLP, grouped-query attention and optionally sliding-window attention, all through config fields of
the same code. Host-side data is in `models.gpt.data`, the Hugging Face mapping in `models.gpt.hf`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo import layers, losses, stacking
from zoo.config import AT_LEAST_ONE, ConfigError


@dataclasses.dataclass(frozen=True)
class Config(layers.TransformerConfig):
    """GPT shape: the shared transformer fields plus vocabulary, context length and head tying."""

    vocab_size: Annotated[int, AT_LEAST_ONE] = 8000
    max_len: Annotated[int, AT_LEAST_ONE] = 1024
    tie_embeddings: bool = True


def _gpt2(num_layers: int, d_model: int, num_heads: int, **kw: Any) -> Config:
    return Config(num_layers=num_layers, d_model=d_model, num_heads=num_heads, d_ff=4 * d_model,
                  vocab_size=50257, max_len=1024, **kw)


def modern_config(num_layers: int, d_model: int, num_heads: int, num_kv_heads: int, d_ff: int, **kw: Any) -> Config:
    """A Llama-layout config: RoPE, RMSNorm, SwiGLU, no biases, untied head (keywords override)."""
    fields = dict(norm="rmsnorm", norm_eps=1e-6, activation="silu", gated_mlp=True, use_bias=False,
                  position="rope", tie_embeddings=False)
    return Config(num_layers=num_layers, d_model=d_model, num_heads=num_heads, num_kv_heads=num_kv_heads,
                  d_ff=d_ff, **{**fields, **kw})


PRESETS: dict[str, Config] = {
    # the default run's model: sized so that `python train.py` learns in a few minutes on two CPU cores
    "gpt-tiny": Config(num_layers=2, d_model=128, num_heads=2, d_ff=512, vocab_size=512, max_len=512),
    "gpt2-small": _gpt2(12, 768, 12),
    "gpt2-medium": _gpt2(24, 1024, 16),
    "gpt2-large": _gpt2(36, 1280, 20),
    "gpt2-xl": _gpt2(48, 1600, 25),
    "gpt-modern-tiny": modern_config(4, 256, 4, 2, 688, vocab_size=8000, max_len=2048),
    "gpt-modern-small": modern_config(12, 768, 12, 4, 2048, vocab_size=32000, max_len=4096),
    "gpt-modern-small-swa": modern_config(12, 768, 12, 4, 2048, vocab_size=32000, max_len=4096, sliding_window=1024),
}

# `python train.py` (gpt-tiny on the builtin corpus), tuned on 2 cores: a 512-piece vocabulary (about
# 1.7 characters a piece), a high learning rate and 1,000 steps of 16 x 128 tokens (BENCHMARKS.md)
PRESET_DEFAULTS: dict[str, tuple[str, ...]] = {
    "gpt-tiny": ("data.vocab_size=512", "optim.learning_rate=3e-3", "train.steps=1000"),
}


class Model(nn.Module):
    """Token ids [B, L] -> next-token logits [B, L, V] in float32.

    Decoding's call arguments: `last_only` gives the logits of the last position only ([B, 1, V]);
    `per_layer` runs the layers as separate modules on params from `stacking.split_layers`.
    """

    cfg: Config

    @nn.compact
    def __call__(self, tokens_BL: jax.Array, segments_BL: jax.Array | None = None,
                 positions_BL: jax.Array | None = None, *, deterministic: bool = True,
                 decode: bool = False, last_only: bool = False, per_layer: bool = False) -> jax.Array:
        cfg = self.cfg
        if segments_BL is None:
            segments_BL = jnp.ones_like(tokens_BL)
        if positions_BL is None:
            positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
        embed = layers.Embed(cfg.vocab_size, cfg, name="token_embed")
        x_BLD = embed(tokens_BL)
        if cfg.position == "learned":
            pos_LD = layers.param_with_axes(self, "pos_embed", nn.initializers.normal(0.01),
                                            (cfg.max_len, cfg.d_model), (None, "embed"), cfg)
            x_BLD += jnp.take(pos_LD, positions_BL, axis=0).astype(x_BLD.dtype)
        x_BLD = layers.Dropout(cfg.dropout)(x_BLD, deterministic=deterministic)
        x_BLD = layers.constrain(x_BLD, ("batch", "length", "embed"))
        blocks = stacking.scan_layers(layers.SelfAttentionBlock, cfg, cfg.num_layers, per_layer)
        x_BLD, _ = blocks(cfg, causal=True, deterministic=deterministic, decode=decode, name="layers")(
            x_BLD, segments_BL, positions_BL)
        if last_only:  # a decoding prefill needs the next token after the prompt only
            x_BLD = x_BLD[:, -1:]
        x_BLD = layers.Norm(cfg, name="final_norm")(x_BLD)
        if cfg.tie_embeddings:
            return embed.attend(x_BLD)
        w_DV = layers.param_with_axes(self, "lm_head", nn.initializers.normal(0.02),
                                      (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg)
        return layers.project("BLD,DV->BLV", x_BLD, w_DV, out_dtype=jnp.float32)


def validate(cfg: Config, seq_len: int) -> None:
    """Raise ConfigError with one line if the config cannot run at `seq_len`."""
    layers.check_heads(cfg)
    if cfg.position not in ("learned", "rope", "none"):
        raise ConfigError(f"GPT supports model.position learned, rope or none, not {cfg.position!r}")
    if seq_len > cfg.max_len:  # rope and none too: max_len is the context the model is built for
        raise ConfigError(f"seq_len {seq_len} exceeds the model's max_len {cfg.max_len}; "
                          f"lower --seq-len or set model.max_len")


def init_batch(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """A batch of the right shapes and dtypes, for shape inference and init."""
    ones = np.ones((batch_size, seq_len), np.int32)
    return {"inputs": ones, "targets": ones, "segments": ones,
            "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), ones.shape).copy(),
            "weights": ones.astype(np.float32)}


def init_params(model: Model, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    """Initial (boxed, logically partitioned) params."""
    return model.init(rng, batch["inputs"], batch["segments"], batch["positions"])["params"]


def loss_sums(model: Model, params: Any, batch: dict[str, jax.Array], dropout_rng: jax.Array,
              train: bool, z_loss: float = 0.0, label_smoothing: float = 0.0) -> dict[str, jax.Array]:
    """Summed next-token cross-entropy over weighted targets, target weight and correct count
    (z-loss and label smoothing in training only, see zoo.losses)."""
    logits_BLV = model.apply({"params": params}, batch["inputs"], batch["segments"], batch["positions"],
                             deterministic=not train, rngs={"dropout": dropout_rng})
    return losses.cross_entropy_sums(logits_BLV, batch["targets"], batch["weights"],
                                     **losses.train_options(train, z_loss, label_smoothing))


def flops_per_token(cfg: Config, seq_len: int) -> float:
    """Training FLOPs per token: 6 * (matmul params incl. the output head) + 12 * N * H * K * seq_len.

    The first term is forward (2) + backward (4) FLOPs for every weight matmul; the second the
    attention scores and weighted values (forward + backward), counted in full as in the PaLM
    paper's MFU, without discounting the causal mask.
    """
    D, F, H, G, K, N = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.kv_heads, cfg.head_size, cfg.num_layers
    attn = D * H * K * 2 + D * G * K * 2
    mlp = D * F * (3 if cfg.gated_mlp else 2)
    matmul_params = N * (attn + mlp) + D * cfg.vocab_size
    return 6.0 * matmul_params + 12.0 * N * H * K * seq_len


def logits(model: Model, params: Any, input_ids: Any, attention_mask: Any = None) -> jax.Array:
    """Next-token logits [B, L, V] for (right- or left-) padded ids; mask 0 marks padding."""
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    return model.apply({"params": params}, ids, mask, positions)
