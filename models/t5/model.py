"""T5: an encoder-decoder transformer trained on text-to-text tasks (Raffel et al., 2020).

Both stacks are pre-norm with RMS norm (no mean subtraction, no bias, eps 1e-6), have no biases
anywhere, and use no absolute positions: each stack adds a learned bias, indexed by bucketed
relative distance (key minus query) and shared by all its layers, to the attention logits, which
are not scaled by 1/sqrt(head_dim) (T5 folds that into its init). The decoder's self-attention is
causal with unidirectional buckets; its cross-attention has no position bias. v1.0 uses a ReLU MLP
and a head tied to the token embedding, applied to the decoder output scaled by d_model**-0.5;
v1.1 uses GeGLU (tanh GELU, gated), an untied head and no dropout in pretraining.

Objectives (`Config.objective`): span corruption and prefix LM for pretraining, and `seq2seq` for
any text-to-text task; their host-side data code lives in `models/data.py`. Decoding (greedy,
sampling, beam search, with cached keys/values) lives in `zoo/seq2seq.py`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.t5 import data
from zoo import decode, layers, losses, metrics, stacking
from zoo.config import AT_LEAST_ONE, NON_NEGATIVE, OPEN_UNIT, POSITIVE, ConfigError, Range

@dataclasses.dataclass(frozen=True)
class Config(layers.TransformerConfig):
    """T5 shape and objective; the shared fields take T5's values by default."""

    norm: str = "rmsnorm"
    norm_eps: Annotated[float, POSITIVE] = 1e-6
    activation: str = "relu"
    use_bias: bool = False
    position: str = "relative"
    vocab_size: Annotated[int, AT_LEAST_ONE] = 32128
    num_decoder_layers: Annotated[int, NON_NEGATIVE] = 0  # 0: as many as num_layers
    relative_attention_num_buckets: Annotated[int, Range(4)] = 32
    relative_attention_max_distance: Annotated[int, Range(2)] = 128
    tie_embeddings: bool = True  # v1.0: tied head on d_model**-0.5-scaled outputs; v1.1: untied
    objective: Literal["span_corruption", "prefix_lm", "seq2seq"] = "span_corruption"
    noise_density: Annotated[float, OPEN_UNIT] = 0.15  # span corruption: fraction of tokens masked
    mean_noise_span_length: Annotated[float, Range(1)] = 3.0
    target_len: Annotated[int, NON_NEGATIVE] = 0  # decoder length for prefix_lm / seq2seq; 0: seq_len (span corruption derives it)
    num_sentinels: Annotated[int, NON_NEGATIVE] = 100  # <extra_id_k> ids reserved at the top of the vocabulary

    @property
    def decoder_layers(self) -> int:
        """Number of decoder layers."""
        return self.num_decoder_layers or self.num_layers


def _v1_0(num_layers: int, d_model: int, num_heads: int, d_ff: int, **kw: Any) -> Config:
    return Config(num_layers=num_layers, d_model=d_model, num_heads=num_heads, head_dim=64, d_ff=d_ff,
                  dropout=0.1, **kw)


def _v1_1(num_layers: int, d_model: int, num_heads: int, d_ff: int, **kw: Any) -> Config:
    return Config(num_layers=num_layers, d_model=d_model, num_heads=num_heads, head_dim=64, d_ff=d_ff,
                  activation="gelu_tanh", gated_mlp=True, tie_embeddings=False, dropout=0.0, **kw)


PRESETS: dict[str, Config] = {
    "t5-tiny": Config(num_layers=4, d_model=256, num_heads=4, head_dim=64, d_ff=1024, vocab_size=8000),
    "t5-small": _v1_0(6, 512, 8, 2048),
    "t5-base": _v1_0(12, 768, 12, 3072),
    "t5-large": _v1_0(24, 1024, 16, 4096),
    "t5.1.1-small": _v1_1(8, 512, 6, 1024),
    "t5.1.1-base": _v1_1(12, 768, 12, 2048),
}


# ---- relative position bias ---------------------------------------------------------------------


@functools.cache
def relative_buckets(n: int, bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of each relative position r = key - query in -(n-1)..(n-1), stored at index r + n - 1.

    Half the buckets (per direction, when bidirectional) hold exact distances; the rest grow
    logarithmically up to `max_distance`, beyond which all distances share the last bucket. The
    logarithm is taken in float32, as in Mesh TensorFlow and Hugging Face, so that boundary
    distances fall into the same bucket.
    """
    r = np.arange(-(n - 1), n, dtype=np.int64)
    buckets = np.zeros_like(r)
    if bidirectional:
        num_buckets //= 2
        buckets += (r > 0) * num_buckets
        distance = np.abs(r)
    else:
        distance = np.maximum(-r, 0)  # a causal query never sees later keys
    exact = num_buckets // 2
    with np.errstate(divide="ignore"):  # log(0) for distances handled as exact
        scaled = (np.log(distance.astype(np.float32) / np.float32(exact))
                  / np.float32(np.log(max_distance / exact)) * np.float32(num_buckets - exact))
    large = np.minimum(exact + np.where(distance < exact, 0, scaled).astype(np.int64), num_buckets - 1)
    return (buckets + np.where(distance < exact, distance, large)).astype(np.int32)


def relative_bias(w_TH: jax.Array, q_positions_L: jax.Array, k_positions_S: jax.Array, bidirectional: bool,
                  cfg: Config) -> jax.Array:
    """Attention-logit bias [1, H, L, S] in float32 from the bucket table w_TH.

    Positions are indices within the row: in a packed row the cross-document pairs are masked and
    key - query is the same as within the document, so one bias serves the whole batch.
    """
    n = max(q_positions_L.shape[0], k_positions_S.shape[0])
    table = jnp.asarray(relative_buckets(n, bidirectional, cfg.relative_attention_num_buckets,
                                         cfg.relative_attention_max_distance))
    bucket_LS = table[k_positions_S[None, :] - q_positions_L[:, None] + n - 1]
    bias_LSH = jnp.take(w_TH.astype(jnp.float32), bucket_LS, axis=0)
    return jnp.transpose(bias_LSH, (2, 0, 1))[None]


def _relpos_weights(module: nn.Module, cfg: Config) -> jax.Array:
    init = nn.initializers.normal(cfg.d_model ** -0.5)
    return layers.param_with_axes(module, "relpos_bias", init, (cfg.relative_attention_num_buckets, cfg.num_heads),
                                  ("relpos", "heads"), cfg)


# ---- blocks and stacks --------------------------------------------------------------------------


class EncoderBlock(nn.Module):
    """Bidirectional self-attention with the shared relative bias, then the MLP (for nn.scan)."""

    cfg: Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BSD: jax.Array, segments_BS: jax.Array, positions_BS: jax.Array,
                 bias_1HSS: jax.Array) -> tuple[jax.Array, None]:
        cfg, det = self.cfg, self.deterministic
        attn = layers.Attention(cfg, causal=False, qk_scale=1.0, name="attn")
        mlp = layers.Mlp(cfg, name="mlp")
        x_BSD = layers.residual(cfg, layers.Norm(cfg, name="attn_norm"), x_BSD, lambda h: attn(
            h, segments_BS, positions_BS, bias_BHLS=bias_1HSS, deterministic=det))
        x_BSD = layers.residual(cfg, layers.Norm(cfg, name="mlp_norm"), x_BSD, lambda h: mlp(h, deterministic=det))
        return layers.constrain(x_BSD, ("batch", "length", "embed")), None


class DecoderBlock(nn.Module):
    """Causal self-attention (relative bias), cross-attention over the encoder output, MLP (for nn.scan).

    With decode=True both attentions keep caches: self-attention its keys/values per step, and
    cross-attention the encoder's keys/values, projected once on the first call (which passes
    `encoded_BSD`) and reused by later calls (which pass None).
    """

    cfg: Config
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x_BLD: jax.Array, segments_BL: jax.Array, positions_BL: jax.Array, bias_1HLS: jax.Array,
                 encoded_BSD: jax.Array | None, encoder_segments_BS: jax.Array | None) -> tuple[jax.Array, None]:
        cfg, det = self.cfg, self.deterministic
        self_attn = layers.Attention(cfg, causal=True, qk_scale=1.0, decode=self.decode, name="self_attn")
        cross_attn = layers.Attention(cfg, causal=False, qk_scale=1.0, decode=self.decode, cross=True,
                                      name="cross_attn")
        mlp = layers.Mlp(cfg, name="mlp")
        x_BLD = layers.residual(cfg, layers.Norm(cfg, name="self_attn_norm"), x_BLD, lambda h: self_attn(
            h, segments_BL, positions_BL, bias_BHLS=bias_1HLS, deterministic=det))
        x_BLD = layers.residual(cfg, layers.Norm(cfg, name="cross_attn_norm"), x_BLD, lambda h: cross_attn(
            h, segments_BL, positions_BL, kv_BSD=encoded_BSD, kv_segments_BS=encoder_segments_BS,
            deterministic=det))
        x_BLD = layers.residual(cfg, layers.Norm(cfg, name="mlp_norm"), x_BLD, lambda h: mlp(h, deterministic=det))
        return layers.constrain(x_BLD, ("batch", "length", "embed")), None


class Encoder(nn.Module):
    """Embedded tokens [B, S, D] -> encoded [B, S, D] (final RMS norm applied)."""

    cfg: Config

    @nn.compact
    def __call__(self, x_BSD: jax.Array, segments_BS: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        positions_S = jnp.arange(x_BSD.shape[1])
        bias_1HSS = relative_bias(_relpos_weights(self, cfg), positions_S, positions_S, True, cfg)
        x_BSD = layers.Dropout(cfg.dropout)(x_BSD, deterministic=deterministic)
        blocks = stacking.scan_layers(EncoderBlock, cfg, cfg.num_layers)(cfg, deterministic=deterministic, name="layers")
        x_BSD, _ = blocks(x_BSD, segments_BS, jnp.broadcast_to(positions_S, segments_BS.shape), bias_1HSS)
        x_BSD = layers.Norm(cfg, name="final_norm")(x_BSD)
        return layers.Dropout(cfg.dropout)(x_BSD, deterministic=deterministic)


class Decoder(nn.Module):
    """Embedded decoder tokens [B, L, D] and the encoder output -> final hidden states [B, L, D].

    When decoding, the cache holds the running index and a `slots` array whose length is the cache
    length (fixed by the `init` call), so the relative bias of new queries against every slot is known.
    """

    cfg: Config

    @nn.compact
    def __call__(self, x_BLD: jax.Array, segments_BL: jax.Array, encoded_BSD: jax.Array | None,
                 encoder_segments_BS: jax.Array | None, deterministic: bool = True,
                 decode: bool = False, per_layer: bool = False) -> jax.Array:
        cfg = self.cfg
        L = x_BLD.shape[1]
        q_positions_L = k_positions_S = jnp.arange(L, dtype=jnp.int32)
        if decode:
            is_init = not self.has_variable("cache", "index")
            index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
            # only the length of `slots` matters: the cache may be created from shapes, as zeros
            slots = self.variable("cache", "slots", lambda: jnp.zeros((L,), jnp.int8))
            q_positions_L = index.value + q_positions_L
            k_positions_S = jnp.arange(slots.value.shape[0], dtype=jnp.int32)
            if not is_init:
                index.value = index.value + L
        bias_1HLS = relative_bias(_relpos_weights(self, cfg), q_positions_L, k_positions_S, False, cfg)
        x_BLD = layers.Dropout(cfg.dropout)(x_BLD, deterministic=deterministic)
        blocks = stacking.scan_layers(DecoderBlock, cfg, cfg.decoder_layers, per_layer)(
            cfg, deterministic=deterministic, decode=decode, name="layers")
        positions_BL = jnp.broadcast_to(q_positions_L, segments_BL.shape)
        x_BLD, _ = blocks(x_BLD, segments_BL, positions_BL, bias_1HLS, encoded_BSD, encoder_segments_BS)
        x_BLD = layers.Norm(cfg, name="final_norm")(x_BLD)
        return layers.Dropout(cfg.dropout)(x_BLD, deterministic=deterministic)


class Model(nn.Module):
    """(encoder ids [B, S], decoder ids [B, L]) -> logits [B, L, V] in float32.

    Segment ids mark padding (0) and packed examples (1, 2, ...); a decoder token attends to the
    encoder tokens of its own segment. `encode` and `decode` are the two halves, for generation.
    """

    cfg: Config

    def setup(self) -> None:
        cfg = self.cfg
        self.token_embed = layers.Embed(cfg.vocab_size, cfg, init_std=1.0)  # T5's embedding init
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = layers.param_with_axes(self, "lm_head", nn.initializers.normal(cfg.d_model ** -0.5),
                                                  (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg)

    def __call__(self, encoder_tokens: jax.Array, decoder_tokens: jax.Array,
                 encoder_segments: jax.Array | None = None, decoder_segments: jax.Array | None = None, *,
                 deterministic: bool = True, decode: bool = False, per_layer: bool = False) -> jax.Array:
        encoded_BSD = self.encode(encoder_tokens, encoder_segments, deterministic=deterministic)
        if encoder_segments is None:
            encoder_segments = jnp.ones_like(encoder_tokens)
        return self.decode(decoder_tokens, encoded_BSD, encoder_segments, decoder_segments,
                           deterministic=deterministic, decode=decode, per_layer=per_layer)

    def encode(self, encoder_tokens: jax.Array, encoder_segments: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
        """Encoder output [B, S, D]."""
        if encoder_segments is None:
            encoder_segments = jnp.ones_like(encoder_tokens)
        x_BSD = layers.constrain(self.token_embed(encoder_tokens), ("batch", "length", "embed"))
        return self.encoder(x_BSD, encoder_segments, deterministic=deterministic)

    def decode(self, decoder_tokens: jax.Array, encoded_BSD: jax.Array | None,
               encoder_segments: jax.Array | None = None, decoder_segments: jax.Array | None = None, *,
               deterministic: bool = True, decode: bool = False, per_layer: bool = False) -> jax.Array:
        """Logits [B, L, V]; with decode=True, encoded_BSD is needed only on the first call.

        `per_layer` runs the decoder layers as separate modules on params from `stacking.split_layers`.
        """
        if decoder_segments is None:
            decoder_segments = jnp.ones_like(decoder_tokens)
        if encoded_BSD is not None and encoder_segments is None:
            encoder_segments = jnp.ones(encoded_BSD.shape[:2], jnp.int32)
        x_BLD = layers.constrain(self.token_embed(decoder_tokens), ("batch", "length", "embed"))
        x_BLD = self.decoder(x_BLD, decoder_segments, encoded_BSD, encoder_segments,
                             deterministic=deterministic, decode=decode, per_layer=per_layer)
        if self.cfg.tie_embeddings:  # v1.0 rescales before the tied head (Mesh TF's convention)
            return self.token_embed.attend(x_BLD * self.cfg.d_model ** -0.5)
        return layers.project("BLD,DV->BLV", x_BLD, self.lm_head, out_dtype=jnp.float32)


# ---- the family interface -----------------------------------------------------------------------


def validate(cfg: Config, seq_len: int) -> None:
    """Raise ConfigError with one line if the config cannot run at `seq_len`."""
    layers.check_heads(cfg)
    if cfg.position != "relative":
        raise ConfigError(f"T5 uses relative position buckets; model.position must be 'relative', not {cfg.position!r}")
    data.check_lengths(cfg, seq_len)


def init_batch(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """A batch of the right keys and dtypes, encoder and decoder both `seq_len` long.

    Only the keys, ranks and dtypes matter to the callers (shardings, init): T5 has no parameter
    whose shape depends on a sequence length. Real batches have the decoder length of `decoder_len`.
    """
    ones = np.ones((batch_size, seq_len), np.int32)
    return {"encoder_inputs": ones, "encoder_segments": ones, "decoder_inputs": ones, "decoder_targets": ones,
            "decoder_segments": ones, "decoder_weights": ones.astype(np.float32)}


def init_params(model: Model, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    """Initial (boxed, logically partitioned) params."""
    return model.init(rng, batch["encoder_inputs"], batch["decoder_inputs"], batch["encoder_segments"],
                      batch["decoder_segments"])["params"]


def loss_sums(model: Model, params: Any, batch: dict[str, jax.Array], dropout_rng: jax.Array,
              train: bool, z_loss: float = 0.0, label_smoothing: float = 0.0) -> dict[str, jax.Array]:
    """Summed target-token cross-entropy, target weight and correct count (teacher forcing; z-loss and
    label smoothing in training only, see zoo.losses)."""
    logits_BLV = model.apply({"params": params}, batch["encoder_inputs"], batch["decoder_inputs"],
                             batch["encoder_segments"], batch["decoder_segments"], deterministic=not train,
                             rngs={"dropout": dropout_rng})
    return losses.cross_entropy_sums(logits_BLV, batch["decoder_targets"], batch["decoder_weights"],
                                     **losses.train_options(train, z_loss, label_smoothing))


def logits(model: Model, params: Any, input_ids: Any, decoder_input_ids: Any, attention_mask: Any = None,
           decoder_attention_mask: Any = None) -> jax.Array:
    """Logits [B, L, V] as Hugging Face's T5ForConditionalGeneration computes them (mask 0 = padding)."""
    ids = jnp.asarray(input_ids, jnp.int32)
    dec = jnp.asarray(decoder_input_ids, jnp.int32)
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    dec_mask = None if decoder_attention_mask is None else jnp.asarray(decoder_attention_mask, jnp.int32)
    return model.apply({"params": params}, ids, dec, mask, dec_mask)


def flops_per_token(cfg: Config, seq_len: int) -> float:
    """Training FLOPs per encoder token (the trainer counts batch_size * seq_len tokens a step).

    Per row, with S = seq_len, T = decoder_len, A = heads * head_dim and M = D F (3 D F if gated),
    the weight matmuls do these multiply-adds: encoder S N_e (4 D A + M); decoder T N_d (6 D A + M)
    (self-attention q, k, v, o and cross-attention q, o) plus S N_d 2 D A (cross-attention keys and
    values of the encoder output); head T D V. Training costs 6 FLOPs per multiply-add (2 forward,
    4 backward), and attention scores and weighted values add 12 A (N_e S^2 + N_d T^2 + N_d T S),
    masked entries counted in full as for GPT. The sum is divided by S.
    """
    D, A = cfg.d_model, cfg.num_heads * cfg.head_size
    Ne, Nd, S, T = cfg.num_layers, cfg.decoder_layers, seq_len, data.decoder_len(cfg, seq_len)
    M = cfg.d_model * cfg.d_ff * (3 if cfg.gated_mlp else 2)
    multiply_adds = S * Ne * (4 * D * A + M) + T * Nd * (6 * D * A + M) + S * Nd * 2 * D * A + T * D * cfg.vocab_size
    scores = 12.0 * A * (Ne * S * S + Nd * T * T + Nd * T * S)
    return (6.0 * multiply_adds + scores) / S


def generation_metrics(model: Model, params: Any, tokenizer: Any, records: list[dict[str, str]],
                       run: Any) -> dict[str, Any]:
    """Exact match, BLEU and ROUGE-L of generated targets when fine-tuning on a text-to-text task."""
    if run.model.objective != "seq2seq":
        return {}
    pairs = data.text_to_text_pairs(records)
    predictions = decode.generate_text(
        model, params, tokenizer, [p["input"] for p in pairs], data.decoder_len(run.model, run.data.seq_len),
        encoder_decoder=True, max_input_len=run.data.seq_len, batch_size=run.data.batch_size)
    return {**metrics.generation_scores(predictions, [p["target"] for p in pairs]), "generated": len(predictions)}
