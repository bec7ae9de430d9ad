"""Shared transformer layers, written as explicit einsums.

Tensor names carry their shapes as suffixes, and einsum strings use the same letters:

    B batch      L query length   S key length   D model width   H heads   K head dim
    F MLP width  V vocabulary     N layers       T relative-position buckets
    R rows: batch and length flattened into one axis (and beams times batch in beam search)

so `x_BLD` is activations, `w_q_DHK` the query projection and `einsum('BLHK,BSHK->BHLS')` the
attention logits. Every parameter is created with logical axis names (`embed`, `heads`, `kv`,
`mlp`, `vocab`, `layers`, `relpos`); `zoo.sharding.LOGICAL_RULES` maps them onto the mesh.

Parameters are stored in `param_dtype` (float32) and cast to the compute `dtype` at use;
norms, softmax and logits stay in float32 whatever the compute dtype is.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from zoo import kernels
from zoo.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, RATE, ConfigError

Array = jax.Array
NEG_INF = -1e30  # finite, so fully masked rows (padding) give a uniform softmax, not NaN


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Fields every family shares; each family's config extends this."""

    num_layers: Annotated[int, AT_LEAST_ONE] = 2
    d_model: Annotated[int, AT_LEAST_ONE] = 128
    num_heads: Annotated[int, AT_LEAST_ONE] = 4
    num_kv_heads: Annotated[int, NON_NEGATIVE] = 0  # 0: same as num_heads; fewer gives grouped-query attention
    head_dim: Annotated[int, NON_NEGATIVE] = 0  # 0: d_model // num_heads
    d_ff: Annotated[int, AT_LEAST_ONE] = 512
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: Annotated[float, POSITIVE] = 1e-5
    pre_norm: bool = True  # False: post-norm residual blocks as in the original Transformer/BERT
    activation: Literal["gelu_tanh", "gelu", "relu", "silu"] = "gelu_tanh"
    gated_mlp: bool = False  # True: GLU-style MLP (SwiGLU with silu, GeGLU with gelu)
    use_bias: bool = True
    position: Literal["learned", "rope", "relative", "none"] = "learned"
    rope_theta: Annotated[float, POSITIVE] = 10000.0
    sliding_window: Annotated[int, NON_NEGATIVE] = 0  # 0: full attention; w: each query sees the last w keys
    dropout: Annotated[float, RATE] = 0.0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # compute dtype of activations and matmuls
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    # what the backward pass keeps of each layer: projections (every weight projection's output, in
    # the compute dtype; attention scores and elementwise work are recomputed) | dots (every matmul
    # output, in float32) | dots_no_batch | full (nothing: recompute the layer) | none (no remat)
    remat: Literal["projections", "dots", "dots_no_batch", "full", "none"] = "projections"
    attention_impl: Literal["einsum", "xla", "cudnn"] = "einsum"  # xla, cudnn: jax.nn.dot_product_attention

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads."""
        return self.num_kv_heads or self.num_heads

    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return self.head_dim or self.d_model // self.num_heads


def check_heads(cfg: TransformerConfig) -> None:
    """Raise ConfigError unless the heads split the width and the key/value heads divide the heads."""
    if cfg.d_model % cfg.num_heads and not cfg.head_dim:
        raise ConfigError(f"model.d_model {cfg.d_model} is not divisible by model.num_heads {cfg.num_heads}; "
                          f"change one or set model.head_dim")
    if cfg.num_heads % cfg.kv_heads:
        raise ConfigError(f"model.num_heads {cfg.num_heads} is not a multiple of model.num_kv_heads {cfg.kv_heads}")
    if cfg.position == "rope" and cfg.head_size % 2:
        raise ConfigError(f"rotary positions need an even head size, got {cfg.head_size}; set model.head_dim")


def compute_dtype(cfg: TransformerConfig) -> jnp.dtype:
    """The activation dtype named in a config."""
    return jnp.dtype(cfg.dtype)


def param_with_axes(module: nn.Module, name: str, init: Callable, shape: tuple, axes: tuple,
                    cfg: TransformerConfig) -> Array:
    """Create a parameter tagged with logical axis names."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(cfg.param_dtype))


def constrain(x: Array, axes: tuple) -> Array:
    """Pin an activation's sharding by logical axis names (a no-op outside a mesh)."""
    return nn.with_logical_constraint(x, axes)


def project(spec: str, x: Array, w: Array, out_dtype: Any = None) -> Array:
    """`einsum(spec, x, w)` of activations with a weight, computed in x's dtype.

    Every weight projection of every model goes through here. The spec reads [rows..., contracted...]
    x [contracted..., out...] (or the weight with its contracted axes last) -> [rows..., out...]. The
    result has x's dtype unless `out_dtype` is given (float32 logits), and its gradient keeps w's
    dtype. `zoo.kernels.matmul` picks the form for the platform; the output is named for the default
    remat policy, which saves it for the backward pass.
    """
    return checkpoint_name(kernels.matmul(spec, x, w, out_dtype), "projection")


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


class Norm(nn.Module):
    """LayerNorm (mean and variance, scale and bias) or RMSNorm (scale only), computed in float32."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x_BLD: Array) -> Array:
        cfg = self.cfg
        D = x_BLD.shape[-1]
        x = x_BLD.astype(jnp.float32)
        scale_D = param_with_axes(self, "scale", nn.initializers.ones, (D,), ("embed",), cfg)
        if cfg.norm == "rmsnorm":
            x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + cfg.norm_eps)
            return (x * scale_D).astype(compute_dtype(cfg))
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        x = (x - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
        bias_D = param_with_axes(self, "bias", nn.initializers.zeros, (D,), ("embed",), cfg)
        return (x * scale_D + bias_D).astype(compute_dtype(cfg))


class Dropout(nn.Module):
    """Inverted dropout whose keep mask costs 16 random bits per element instead of 32.

    The keep probability is rounded to a multiple of 1/65536 (0.9 becomes 0.899994), and kept
    values are scaled by the inverse of that rounded probability, so the output stays unbiased.
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        threshold = round((1.0 - self.rate) * 65536)  # keep where 16 random bits fall below it
        if threshold >= 65536:
            return x
        if threshold <= 0:
            return jnp.zeros_like(x)
        last = x.shape[-1]
        words = jax.random.bits(self.make_rng("dropout"), x.shape[:-1] + ((last + 1) // 2,), jnp.uint32)
        halves = jax.lax.bitcast_convert_type(words, jnp.uint16)  # [..., (last+1)//2, 2]
        halves = halves.reshape(x.shape[:-1] + (-1,))[..., :last]
        return jnp.where(halves < threshold, x * jnp.asarray(65536 / threshold, x.dtype), jnp.zeros((), x.dtype))


class Embed(nn.Module):
    """Token embedding table; `attend` reuses it as the tied output projection."""

    vocab_size: int
    cfg: TransformerConfig
    init_std: float = 0.02

    def setup(self) -> None:
        init = nn.initializers.normal(self.init_std)
        self.embedding_VD = param_with_axes(
            self, "embedding", init, (self.vocab_size, self.cfg.d_model), ("vocab", "embed"), self.cfg)

    def __call__(self, ids_BL: Array) -> Array:
        return jnp.take(self.embedding_VD, ids_BL, axis=0).astype(compute_dtype(self.cfg))

    def attend(self, x_BLD: Array) -> Array:
        """Logits over the vocabulary from hidden states, in float32."""
        # Batch-sharded into the head: left to propagation, a head after a gather (BERT's MLM slots)
        # got its width sharded over fsdp, and the backward all-gathered the whole batch's logits.
        x_BLD = constrain(x_BLD, ("batch", "length", "embed"))
        return project("BLD,VD->BLV", x_BLD, self.embedding_VD, out_dtype=jnp.float32)


def rope(x_BLHK: Array, positions_BL: Array, theta: float) -> Array:
    """Rotary position embedding, rotating the two halves of each head (GPT-NeoX/Llama layout)."""
    K = x_BLHK.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, K, 2, dtype=jnp.float32) / K)
    angles_BLk = positions_BL[..., None].astype(jnp.float32) * inv_freq
    sin = jnp.sin(angles_BLk)[:, :, None, :]
    cos = jnp.cos(angles_BLk)[:, :, None, :]
    x1, x2 = jnp.split(x_BLHK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BLHK.dtype)


def attention_mask(q_segments_BL: Array, k_segments_BS: Array, q_positions_BL: Array | None = None,
                   k_positions_BS: Array | None = None, window: int = 0) -> Array:
    """Boolean [B, 1, L, S] mask: same non-zero segment, and causal by position when positions are given.

    Segment 0 marks padding (and empty cache slots); packed documents get distinct segments, so no
    token attends across a document boundary. `window` > 0 limits each query to the last `window` keys.
    """
    mask = (q_segments_BL[:, :, None] == k_segments_BS[:, None, :]) & (q_segments_BL[:, :, None] > 0)
    if q_positions_BL is not None:
        delta_BLS = q_positions_BL[:, :, None] - k_positions_BS[:, None, :]
        mask &= delta_BLS >= 0
        if window:
            mask &= delta_BLS < window
    return mask[:, None, :, :]


def dot_product_attention(q_BLHK: Array, k_BSHK: Array, v_BSHK: Array, mask_B1LS: Array,
                          bias_BHLS: Array | None = None, impl: str = "einsum",
                          scale: float | None = None) -> Array:
    """Softmax attention of queries over keys; the einsum path is the reference for the fused ones."""
    H, G = q_BLHK.shape[2], k_BSHK.shape[2]
    if G != H:  # grouped-query attention: each kv head serves H // G query heads
        k_BSHK = jnp.repeat(k_BSHK, H // G, axis=2)
        v_BSHK = jnp.repeat(v_BSHK, H // G, axis=2)
    scale = q_BLHK.shape[-1] ** -0.5 if scale is None else scale
    if impl != "einsum":
        return kernels.fused_attention(q_BLHK, k_BSHK, v_BSHK, mask_B1LS, bias_BHLS, scale, impl)
    logits_BHLS = jnp.einsum("BLHK,BSHK->BHLS", q_BLHK, k_BSHK, preferred_element_type=jnp.float32)
    logits_BHLS = logits_BHLS * scale
    if bias_BHLS is not None:
        logits_BHLS = logits_BHLS + bias_BHLS.astype(jnp.float32)
    logits_BHLS = jnp.where(mask_B1LS, logits_BHLS, NEG_INF)
    probs_BHLS = jax.nn.softmax(logits_BHLS, axis=-1).astype(v_BSHK.dtype)
    return jnp.einsum("BHLS,BSHK->BLHK", probs_BHLS, v_BSHK)


class Attention(nn.Module):
    """Multi-head (or grouped-query) attention with an optional key/value cache for decoding.

    Self-attention when `kv_BSD` is None. With `decode=True` the keys and values of the new tokens
    are written into a `cache` collection at the running index, and queries attend to the cache.

    Cross-attention (`cross=True`, e.g. a decoder over its encoder's output) with `decode=True`
    projects `kv_BSD` into keys and values once, on the call that passes it, and caches them; later
    calls pass `kv_BSD=None` and reuse them, so decoding never re-projects the encoder output.
    """

    cfg: TransformerConfig
    causal: bool = True
    qk_scale: float | None = None  # T5 folds the 1/sqrt(K) into its init and uses scale 1
    decode: bool = False
    cross: bool = False  # attend over kv_BSD (another sequence); see the class docstring for decode

    @nn.compact
    def __call__(self, x_BLD: Array, segments_BL: Array, positions_BL: Array,
                 kv_BSD: Array | None = None, kv_segments_BS: Array | None = None,
                 bias_BHLS: Array | None = None, deterministic: bool = True) -> Array:
        cfg = self.cfg
        D, H, G, K = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_size
        dtype = compute_dtype(cfg)
        init = nn.initializers.normal(0.02)
        w_q_DHK = param_with_axes(self, "w_q", init, (D, H, K), ("embed", "heads", "kv"), cfg)
        w_k_DGK = param_with_axes(self, "w_k", init, (D, G, K), ("embed", "heads", "kv"), cfg)
        w_v_DGK = param_with_axes(self, "w_v", init, (D, G, K), ("embed", "heads", "kv"), cfg)
        w_o_HKD = param_with_axes(self, "w_o", init, (H, K, D), ("heads", "kv", "embed"), cfg)
        is_self = kv_BSD is None and not self.cross
        source_BSD = x_BLD if is_self else kv_BSD
        if source_BSD is None and not self.decode:
            raise ValueError("cross-attention needs kv_BSD (it is cached only when decoding)")
        q_BLHK = project("BLD,DHK->BLHK", x_BLD, w_q_DHK)
        k_BSGK = v_BSGK = None  # cached cross-attention: keys and values come from the cache
        if source_BSD is not None:
            k_BSGK = project("BSD,DGK->BSGK", source_BSD, w_k_DGK)
            v_BSGK = project("BSD,DGK->BSGK", source_BSD, w_v_DGK)
        if cfg.use_bias:
            zeros = nn.initializers.zeros
            q_BLHK += param_with_axes(self, "b_q", zeros, (H, K), ("heads", "kv"), cfg).astype(dtype)
            b_k_GK = param_with_axes(self, "b_k", zeros, (G, K), ("heads", "kv"), cfg).astype(dtype)
            b_v_GK = param_with_axes(self, "b_v", zeros, (G, K), ("heads", "kv"), cfg).astype(dtype)
            if source_BSD is not None:
                k_BSGK, v_BSGK = k_BSGK + b_k_GK, v_BSGK + b_v_GK
        q_BLHK = constrain(q_BLHK, ("batch", "length", "heads", "kv"))
        if self.cross and self.decode:
            k_BSGK, v_BSGK, kv_segments_BS = self._cross_cache(k_BSGK, v_BSGK, kv_segments_BS)
        if is_self:  # self-attention: keys live at the same positions as queries
            if cfg.position == "rope":
                q_BLHK = rope(q_BLHK, positions_BL, cfg.rope_theta)
                k_BSGK = rope(k_BSGK, positions_BL, cfg.rope_theta)
            k_segments_BS, k_positions_BS = segments_BL, positions_BL
            if self.decode:
                k_BSGK, v_BSGK, k_segments_BS, k_positions_BS = self._update_cache(
                    k_BSGK, v_BSGK, segments_BL, positions_BL)
            mask = attention_mask(segments_BL, k_segments_BS,
                                  positions_BL if self.causal else None,
                                  k_positions_BS if self.causal else None, cfg.sliding_window)
        else:
            mask = attention_mask(segments_BL, kv_segments_BS)
        out_BLHK = dot_product_attention(q_BLHK, k_BSGK, v_BSGK, mask, bias_BHLS,
                                         cfg.attention_impl, self.qk_scale)
        out_BLD = project("BLHK,HKD->BLD", out_BLHK, w_o_HKD)
        if cfg.use_bias:
            out_BLD += param_with_axes(self, "b_o", nn.initializers.zeros, (D,), ("embed",), cfg).astype(dtype)
        return Dropout(cfg.dropout)(out_BLD, deterministic=deterministic)

    def _cross_cache(self, k_BSGK: Array | None, v_BSGK: Array | None, segments_BS: Array | None):
        """Store cross-attention keys/values/segments when given; return the cached ones."""
        if k_BSGK is None and not self.has_variable("cache", "cross_k"):
            raise ValueError("cached cross-attention needs kv_BSD on its first decode call")
        if k_BSGK is not None:
            if segments_BS is None:
                segments_BS = jnp.ones(k_BSGK.shape[:2], jnp.int32)
            for name, value in (("cross_k", k_BSGK), ("cross_v", v_BSGK), ("cross_segments", segments_BS)):
                variable = self.variable("cache", name, jnp.zeros, value.shape, value.dtype)
                variable.value = value
        return (self.get_variable("cache", "cross_k"), self.get_variable("cache", "cross_v"),
                self.get_variable("cache", "cross_segments"))

    def _update_cache(self, k_BLGK: Array, v_BLGK: Array, segments_BL: Array, positions_BL: Array):
        """Write new keys/values at the cache index; return the whole cache to attend over.

        The cache length is fixed when the cache is created (by `init` on a [B, S] input with
        decode=True); empty slots have segment 0 and are masked out.
        """
        is_init = not self.has_variable("cache", "k")
        k_cache = self.variable("cache", "k", jnp.zeros, k_BLGK.shape, k_BLGK.dtype)
        v_cache = self.variable("cache", "v", jnp.zeros, v_BLGK.shape, v_BLGK.dtype)
        seg_cache = self.variable("cache", "segments", jnp.zeros, segments_BL.shape, jnp.int32)
        pos_cache = self.variable("cache", "positions", jnp.zeros, positions_BL.shape, jnp.int32)
        index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
        if is_init:
            return k_BLGK, v_BLGK, segments_BL, positions_BL
        i = index.value
        k_cache.value = jax.lax.dynamic_update_slice(k_cache.value, k_BLGK.astype(k_cache.value.dtype), (0, i, 0, 0))
        v_cache.value = jax.lax.dynamic_update_slice(v_cache.value, v_BLGK.astype(v_cache.value.dtype), (0, i, 0, 0))
        seg_cache.value = jax.lax.dynamic_update_slice(seg_cache.value, segments_BL.astype(jnp.int32), (0, i))
        pos_cache.value = jax.lax.dynamic_update_slice(pos_cache.value, positions_BL.astype(jnp.int32), (0, i))
        index.value = i + k_BLGK.shape[1]
        return k_cache.value, v_cache.value, seg_cache.value, pos_cache.value


class Mlp(nn.Module):
    """Position-wise feed-forward block, plain or gated (GLU family)."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x_BLD: Array, deterministic: bool = True) -> Array:
        cfg = self.cfg
        D, F = cfg.d_model, cfg.d_ff
        dtype = compute_dtype(cfg)
        init = nn.initializers.normal(0.02)
        act = ACTIVATIONS[cfg.activation]
        w_in_DF = param_with_axes(self, "w_in", init, (D, F), ("embed", "mlp"), cfg)
        h_BLF = project("BLD,DF->BLF", x_BLD, w_in_DF)
        if cfg.use_bias:
            h_BLF += param_with_axes(self, "b_in", nn.initializers.zeros, (F,), ("mlp",), cfg).astype(dtype)
        h_BLF = act(h_BLF)
        if cfg.gated_mlp:
            w_gate_DF = param_with_axes(self, "w_gate", init, (D, F), ("embed", "mlp"), cfg)
            h_BLF = h_BLF * project("BLD,DF->BLF", x_BLD, w_gate_DF)
        h_BLF = constrain(h_BLF, ("batch", "length", "mlp"))
        h_BLF = Dropout(cfg.dropout)(h_BLF, deterministic=deterministic)
        w_out_FD = param_with_axes(self, "w_out", init, (F, D), ("mlp", "embed"), cfg)
        out_BLD = project("BLF,FD->BLD", h_BLF, w_out_FD)
        if cfg.use_bias:
            out_BLD += param_with_axes(self, "b_out", nn.initializers.zeros, (D,), ("embed",), cfg).astype(dtype)
        return Dropout(cfg.dropout)(out_BLD, deterministic=deterministic)


class SelfAttentionBlock(nn.Module):
    """One transformer layer: self-attention then MLP, each with a pre- or post-norm residual.

    Written for `nn.scan`: it takes and returns the residual stream as the carry.
    """

    cfg: TransformerConfig
    causal: bool = True
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x_BLD: Array, segments_BL: Array, positions_BL: Array) -> tuple[Array, None]:
        cfg = self.cfg
        attn = Attention(cfg, causal=self.causal, decode=self.decode, name="attn")
        mlp = Mlp(cfg, name="mlp")
        x_BLD = residual(cfg, Norm(cfg, name="attn_norm"), x_BLD, lambda h: attn(
            h, segments_BL, positions_BL, deterministic=self.deterministic))
        x_BLD = residual(cfg, Norm(cfg, name="mlp_norm"), x_BLD,
                         lambda h: mlp(h, deterministic=self.deterministic))
        return constrain(x_BLD, ("batch", "length", "embed")), None


def residual(cfg: TransformerConfig, norm: Norm, x_BLD: Array, sublayer: Callable[[Array], Array]) -> Array:
    """`x + f(norm(x))` when pre-norm, `norm(x + f(x))` when post-norm."""
    if cfg.pre_norm:
        return x_BLD + sublayer(norm(x_BLD))
    return norm(x_BLD + sublayer(x_BLD))
