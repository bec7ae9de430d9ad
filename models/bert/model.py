"""BERT: a bidirectional transformer encoder pretrained by masked language modelling (+ NSP).

BERT (Devlin et al., 2019) is post-norm, with learned absolute positions, token-type (segment A/B)
embeddings, LayerNorm (eps 1e-12), exact (erf) GELU and biases everywhere. It pretrains on masked
LM — 15% of the non-special tokens are predicted; 80% of those are replaced by [MASK], 10% by a
random token, 10% kept — plus next-sentence prediction on [CLS] A [SEP] B [SEP] pairs. The
RoBERTa-style presets (Liu et al., 2019) drop NSP and token types, redraw the mask every time a row
is seen (dynamic masking) and number positions from `position_offset` = 2 as Hugging Face's RoBERTa
does (its padding id 1, plus one), which is why their position table has 514 rows.

One parameter tree for every task, so `--init-from` a pretraining workdir carries the encoder
(and the pooler, when both have one) into a fine-tuning run and only new heads start fresh:

    token_embed/embedding [V, D]   pos_embed [max_len, D]   type_embed [T, D]   embed_norm/*
    layers/{attn, attn_norm, mlp, mlp_norm}/*     stacked over N by nn.scan
    pooler/{w, b}      tanh(dense([CLS]))          pretrain with NSP, classify
    nsp/{w, b}         NSP logits from the pooler  pretrain with NSP
    mlm/{dense, norm, bias}  MLM transform; the decoder is tied to token_embed   pretrain
    classifier/{w, b}  sequence (classify) or per-token (tag) logits; with num_labels 1, classify
                       is a regression (STS-B) and its one logit is the predicted score

A batch has the same keys for every task (see `init_batch`): token-level targets at
`target_positions` (the masked slots for MLM, every position for tagging) and one sequence-level
label per row (NSP's is-random-next, or the class). Host-side data (examples, masking, the default
fine-tuning tasks) lives in `models.bert.data`, the Hugging Face mapping in `models.bert.hf`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.bert import data
from zoo import layers, losses, metrics, stacking
from zoo.config import AT_LEAST_ONE, NON_NEGATIVE, OPEN_UNIT, POSITIVE, RATE, ConfigError



@dataclasses.dataclass(frozen=True)
class Config(layers.TransformerConfig):
    """BERT shape and objective: the shared transformer fields plus vocabulary, positions, types and task."""

    num_layers: Annotated[int, AT_LEAST_ONE] = 2
    d_model: Annotated[int, AT_LEAST_ONE] = 128
    num_heads: Annotated[int, AT_LEAST_ONE] = 2
    d_ff: Annotated[int, AT_LEAST_ONE] = 512
    norm_eps: Annotated[float, POSITIVE] = 1e-12
    pre_norm: bool = False  # post-norm residual blocks, as in BERT
    activation: str = "gelu"  # exact erf GELU, as in BERT
    dropout: Annotated[float, RATE] = 0.1
    vocab_size: Annotated[int, AT_LEAST_ONE] = 30522
    max_len: Annotated[int, AT_LEAST_ONE] = 512  # rows of the position table
    type_vocab_size: Annotated[int, AT_LEAST_ONE] = 2  # segment A/B; 1 for RoBERTa (a single, always-0 type)
    position_offset: Annotated[int, NON_NEGATIVE] = 0  # 2 for RoBERTa: positions count non-padding tokens from here
    task: Literal["pretrain", "classify", "tag"] = "pretrain"  # MLM [+ NSP] | per sequence | per token
    num_labels: Annotated[int, AT_LEAST_ONE] = 2  # classes of the classify / tag heads; 1: classify regresses
    nsp: bool = True  # pretrain with next-sentence prediction as well (BERT; not RoBERTa)
    mlm_probability: Annotated[float, OPEN_UNIT] = 0.15  # share of non-special tokens predicted in each row
    dynamic_masking: bool = False  # True: new mask each time a row is seen; False: one mask per row


def _bert(num_layers: int, d_model: int, num_heads: int) -> Config:
    return Config(num_layers=num_layers, d_model=d_model, num_heads=num_heads, d_ff=4 * d_model)


def _roberta(num_layers: int, d_model: int, num_heads: int) -> Config:
    return Config(num_layers=num_layers, d_model=d_model, num_heads=num_heads, d_ff=4 * d_model,
                  vocab_size=50265, max_len=514, type_vocab_size=1, position_offset=2, nsp=False,
                  dynamic_masking=True)


PRESETS: dict[str, Config] = {  # Turc et al. (2019) for tiny...medium; Devlin et al. base/large
    "bert-tiny": _bert(2, 128, 2),
    "bert-mini": _bert(4, 256, 4),
    "bert-small": _bert(4, 512, 8),
    "bert-medium": _bert(8, 512, 8),
    "bert-base": _bert(12, 768, 12),
    "bert-large": _bert(24, 1024, 16),
    "roberta-base": _roberta(12, 768, 12),
    "roberta-large": _roberta(24, 1024, 16),
}


class Dense(nn.Module):
    """`x @ w + b` over the last axis, for the small heads; logits come out in float32."""

    features: int
    cfg: Config
    axes: tuple = ("embed", None)

    @nn.compact
    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        w_DC = layers.param_with_axes(self, "w", nn.initializers.normal(0.02),
                                      (x_BxD.shape[-1], self.features), self.axes, cfg)
        b_C = layers.param_with_axes(self, "b", nn.initializers.zeros, (self.features,), self.axes[1:], cfg)
        y = jnp.einsum("...D,DC->...C", x_BxD, w_DC.astype(x_BxD.dtype), preferred_element_type=jnp.float32)
        return y + b_C


def default_positions(segments_BL: jax.Array, offset: int) -> jax.Array:
    """Position ids: 0..L-1 (BERT), or with an offset the RoBERTa rule — real tokens count up from
    `offset` and padding sits at `offset - 1` (Hugging Face's padding_idx)."""
    if offset == 0:
        return jnp.broadcast_to(jnp.arange(segments_BL.shape[1]), segments_BL.shape)
    real_BL = (segments_BL > 0).astype(jnp.int32)
    return jnp.cumsum(real_BL, axis=1) * real_BL + offset - 1


class Model(nn.Module):
    """The encoder plus the heads of `cfg.task`; returns a dict of float32 logits.

    `__call__(tokens_BL, segments_BL=None, positions_BL=None, token_types_BL=None, *,
    target_positions_BP=None, deterministic=True)`:
      segments_BL   1 for real tokens, 0 for padding (Hugging Face's attention_mask); default all 1.
      positions_BL  default `default_positions(segments_BL, cfg.position_offset)`.
      token_types_BL  segment A/B ids (Hugging Face's token_type_ids); default all 0.
      target_positions_BP  positions whose token-level logits are wanted (the masked slots while
                    pretraining, which saves the [B, L, V] projection); default every position.
    Returns pretrain: {"mlm_logits": [B, P|L, V], "nsp_logits": [B, 2] (with NSP)};
    classify: {"logits": [B, num_labels]} (with num_labels 1, [B, 1] predicted scores);
    tag: {"logits": [B, P|L, num_labels]}.
    """

    cfg: Config

    @nn.compact
    def __call__(self, tokens_BL: jax.Array, segments_BL: jax.Array | None = None,
                 positions_BL: jax.Array | None = None, token_types_BL: jax.Array | None = None, *,
                 target_positions_BP: jax.Array | None = None, deterministic: bool = True) -> dict[str, jax.Array]:
        cfg = self.cfg
        if segments_BL is None:
            segments_BL = jnp.ones_like(tokens_BL)
        if positions_BL is None:
            positions_BL = default_positions(segments_BL, cfg.position_offset)
        if token_types_BL is None:
            token_types_BL = jnp.zeros_like(tokens_BL)
        embed = layers.Embed(cfg.vocab_size, cfg, name="token_embed")
        init = nn.initializers.normal(0.02)
        pos_PD = layers.param_with_axes(self, "pos_embed", init, (cfg.max_len, cfg.d_model), (None, "embed"), cfg)
        type_TD = layers.param_with_axes(self, "type_embed", init, (cfg.type_vocab_size, cfg.d_model),
                                         (None, "embed"), cfg)
        x_BLD = embed(tokens_BL)
        x_BLD += jnp.take(pos_PD, positions_BL, axis=0).astype(x_BLD.dtype)
        x_BLD += jnp.take(type_TD, token_types_BL, axis=0).astype(x_BLD.dtype)
        x_BLD = layers.Norm(cfg, name="embed_norm")(x_BLD)  # BERT normalises the summed embeddings
        x_BLD = layers.Dropout(cfg.dropout)(x_BLD, deterministic=deterministic)
        x_BLD = layers.constrain(x_BLD, ("batch", "length", "embed"))
        blocks = stacking.scan_layers(layers.SelfAttentionBlock, cfg, cfg.num_layers)
        x_BLD, _ = blocks(cfg, causal=False, deterministic=deterministic, name="layers")(
            x_BLD, segments_BL, positions_BL)
        return self._heads(embed, x_BLD, target_positions_BP, deterministic)

    def _heads(self, embed: layers.Embed, x_BLD: jax.Array, target_positions_BP: jax.Array | None,
               deterministic: bool) -> dict[str, jax.Array]:
        cfg = self.cfg
        drop = layers.Dropout(cfg.dropout)
        if target_positions_BP is not None:  # token-level heads only where targets are
            x_BPD = jnp.take_along_axis(x_BLD, target_positions_BP[..., None], axis=1)
            # the gather loses the batch sharding: without this the MLM dense's backward gathers [B, P, D]
            x_BPD = layers.constrain(x_BPD, ("batch", "length", "embed"))
        else:
            x_BPD = x_BLD
        out = {}
        if cfg.task == "classify" or (cfg.task == "pretrain" and cfg.nsp):
            pooled_BD = jnp.tanh(Dense(cfg.d_model, cfg, name="pooler")(x_BLD[:, 0])).astype(x_BLD.dtype)
            if cfg.task == "pretrain":
                out["nsp_logits"] = Dense(2, cfg, name="nsp")(pooled_BD)
            else:
                pooled_BD = drop(pooled_BD, deterministic=deterministic)
                out["logits"] = Dense(cfg.num_labels, cfg, name="classifier")(pooled_BD)
        if cfg.task == "pretrain":
            out["mlm_logits"] = MlmHead(cfg, name="mlm")(x_BPD, embed)
        elif cfg.task == "tag":
            out["logits"] = Dense(cfg.num_labels, cfg, name="classifier")(drop(x_BPD, deterministic=deterministic))
        return out


class MlmHead(nn.Module):
    """dense -> activation -> LayerNorm -> logits through the (tied) token embedding + an output bias."""

    cfg: Config

    @nn.compact
    def __call__(self, x_BPD: jax.Array, embed: layers.Embed) -> jax.Array:
        cfg = self.cfg
        h_BPD = Dense(cfg.d_model, cfg, name="dense")(x_BPD).astype(x_BPD.dtype)
        h_BPD = layers.Norm(cfg, name="norm")(layers.ACTIVATIONS[cfg.activation](h_BPD))
        bias_V = layers.param_with_axes(self, "bias", nn.initializers.zeros, (cfg.vocab_size,), ("vocab",), cfg)
        return embed.attend(h_BPD) + bias_V


def validate(cfg: Config, seq_len: int) -> None:
    """Raise ConfigError with one line if the config cannot run at `seq_len`."""
    layers.check_heads(cfg)
    if cfg.position != "learned":
        raise ConfigError(f"BERT uses learned positions, not {cfg.position!r}")
    if seq_len + cfg.position_offset > cfg.max_len:
        raise ConfigError(f"seq_len {seq_len} (+ position offset {cfg.position_offset}) exceeds the model's "
                          f"max_len {cfg.max_len}; lower --seq-len or set model.max_len")
    if seq_len < 8:
        raise ConfigError(f"seq_len {seq_len} is too short for [CLS] ... [SEP] rows; use at least 8")
    if cfg.task == "tag" and cfg.num_labels < 2:
        raise ConfigError(f"model.num_labels must be at least 2 for task tag, got {cfg.num_labels}")
    if cfg.task == "pretrain" and cfg.nsp and cfg.type_vocab_size < 2:
        raise ConfigError("next-sentence prediction needs model.type_vocab_size >= 2 (segments A and B)")
    if not 0.0 < cfg.mlm_probability < 1.0:
        raise ConfigError(f"model.mlm_probability must be in (0, 1), got {cfg.mlm_probability}")


def init_batch(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """A batch of the right keys, shapes and dtypes (pretraining's), for shape inference and init."""
    P = data.num_predictions(seq_len, 0.15)
    ones = np.ones((batch_size, seq_len), np.int32)
    return {"inputs": ones, "segments": ones, "token_types": np.zeros_like(ones),
            "target_positions": np.zeros((batch_size, P), np.int32), "targets": np.zeros((batch_size, P), np.int32),
            "weights": np.ones((batch_size, P), np.float32),
            "labels": np.zeros((batch_size,), np.int32), "label_weights": np.ones((batch_size,), np.float32)}


def init_params(model: Model, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    """Initial (boxed, logically partitioned) params."""
    return model.init(rng, batch["inputs"], batch["segments"], None, batch["token_types"],
                      target_positions_BP=batch["target_positions"])["params"]


def loss_sums(model: Model, params: Any, batch: dict[str, jax.Array], dropout_rng: jax.Array,
              train: bool, z_loss: float = 0.0, label_smoothing: float = 0.0) -> dict[str, jax.Array]:
    """Summed losses and counts; the train objective is loss_sum / weight_sum.

    pretrain: weight_sum counts masked tokens, and each row adds its NSP loss once per masked token
    it holds, so loss_sum / weight_sum = mean MLM loss + NSP loss averaged over rows weighted by
    their masked-token count (~ BERT's sum of the two batch means, and exact over micro-batches).
    classify / tag: cross-entropy per example / per labelled token, plus a confusion matrix
    (`confusion_{true}_{pred}_sum`) from which `summarize` gives F1 and Matthews correlation.
    classify with num_labels 1 (regression): squared error of the score against the float label,
    so the objective is the mean squared error, plus the sums Pearson's r is computed from.
    z-loss and label smoothing (training only, see zoo.losses) apply to MLM, classify and tag, not to NSP.
    """
    cfg = model.cfg
    options = losses.train_options(train, z_loss, label_smoothing)
    out = model.apply({"params": params}, batch["inputs"], batch["segments"], None, batch["token_types"],
                      target_positions_BP=batch["target_positions"], deterministic=not train,
                      rngs={"dropout": dropout_rng})
    if cfg.task == "classify" and cfg.num_labels == 1:
        return _regression_sums(out["logits"][:, 0], batch["labels"], batch["label_weights"])
    if cfg.task == "classify":
        logits, targets, weights = out["logits"][:, None], batch["labels"][:, None], batch["label_weights"][:, None]
        return {**losses.cross_entropy_sums(logits, targets, weights, **options), **_confusion(logits, targets, weights)}
    if cfg.task == "tag":
        logits, targets, weights = out["logits"], batch["targets"], batch["weights"]
        return {**losses.cross_entropy_sums(logits, targets, weights, **options), **_confusion(logits, targets, weights)}
    mlm = losses.cross_entropy_sums(out["mlm_logits"], batch["targets"], batch["weights"], **options)
    sums = {**mlm, "mlm_loss_sum": mlm["loss_sum"], "mlm_correct_sum": mlm["correct_sum"],
            "mlm_count": mlm["weight_sum"]}
    if cfg.nsp:
        nsp_logits, labels, label_weights = out["nsp_logits"][:, None], batch["labels"][:, None], batch["label_weights"]
        nsp = losses.cross_entropy_sums(nsp_logits, labels, label_weights[:, None])
        per_masked = losses.cross_entropy_sums(nsp_logits, labels, (label_weights * batch["weights"].sum(-1))[:, None])
        sums.update(loss_sum=mlm["loss_sum"] + per_masked["loss_sum"], nsp_loss_sum=nsp["loss_sum"],
                    nsp_correct_sum=nsp["correct_sum"], nsp_count=nsp["weight_sum"])
    return sums


def _confusion(logits_BxC: jax.Array, targets_Bx: jax.Array, weights_Bx: jax.Array) -> dict[str, jax.Array]:
    """Weighted confusion-matrix cells as scalar sums (they add over batches and hosts)."""
    C = logits_BxC.shape[-1]
    true_BxC = jax.nn.one_hot(targets_Bx, C) * weights_Bx[..., None].astype(jnp.float32)
    pred_BxC = jax.nn.one_hot(jnp.argmax(logits_BxC, axis=-1), C)
    cm_CC = jnp.einsum("...t,...p->tp", true_BxC, pred_BxC)
    return {f"confusion_{t}_{p}_sum": cm_CC[t, p] for t in range(C) for p in range(C)}


def _regression_sums(scores_B: jax.Array, labels_B: jax.Array, weights_B: jax.Array) -> dict[str, jax.Array]:
    """Weighted squared error, and the moments Pearson's r needs, as scalar sums over rows."""
    x, y, w = scores_B.astype(jnp.float32), labels_B.astype(jnp.float32), weights_B.astype(jnp.float32)
    count = jnp.sum(w)
    return {"loss_sum": jnp.sum(w * jnp.square(x - y)), "weight_sum": count, "pearson_count": count,
            "pearson_x_sum": jnp.sum(w * x), "pearson_y_sum": jnp.sum(w * y), "pearson_xx_sum": jnp.sum(w * x * x),
            "pearson_yy_sum": jnp.sum(w * y * y), "pearson_xy_sum": jnp.sum(w * x * y)}


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Family metrics from summed eval metrics: MLM/NSP losses, F1 + Matthews correlation, Pearson's r.

    Binary tasks report the F1 of class 1 (GLUE's convention); more classes report macro F1. The
    Matthews correlation is the multi-class form (Gorodkin 2004), equal to the usual one for 2 classes.
    Regression (STS-B) reports Pearson's r of predicted and true scores (its loss is their MSE).
    GLUE also reports Spearman's rank correlation for STS-B; ranks need every prediction at once,
    which sums over batches cannot give, so it is left to a path that keeps the predictions.
    """
    out: dict[str, float] = {}
    if sums.get("mlm_count"):
        out["mlm_loss"] = sums["mlm_loss_sum"] / sums["mlm_count"]
        out["perplexity"] = math.exp(min(out["mlm_loss"], 700.0))  # of the MLM alone, not of MLM + NSP
    if sums.get("nsp_count"):
        out["nsp_loss"] = sums["nsp_loss_sum"] / sums["nsp_count"]
    cells = {tuple(map(int, k.split("_")[1:3])): v for k, v in sums.items() if k.startswith("confusion_")}
    if cells:
        C = 1 + max(max(k) for k in cells)
        cm = np.zeros((C, C))
        for (t, p), v in cells.items():
            cm[t, p] = v
        out.update(metrics.classification_metrics(cm))
    if sums.get("pearson_count"):
        out["pearson"] = metrics.pearson_from_sums(*(sums[f"pearson_{k}"] for k in
                                                     ("count", "x_sum", "y_sum", "xx_sum", "yy_sum", "xy_sum")))
    return out


def flops_per_token(cfg: Config, seq_len: int) -> float:
    """Training FLOPs per token: 6 * (encoder matmul params + head matmul params per token) + 12 * N * H * K * L.

    Encoder matmuls: N * (4 * D * H * K + 2 * D * F) (3 * D * F when gated). The MLM head (a D x D
    transform and the D x V tied decoder) runs only on the ceil(p * L) masked slots of a row, so it
    counts (D^2 + D * V) * ceil(p * L) / L per token; the tagging head D * C per token; the pooler
    and classifier (D^2 + 2 D) per row, i.e. / L. The last term is bidirectional attention scores and
    weighted values, forward and backward, over the full L x L grid.
    """
    D, F, H, K, N, L = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.head_size, cfg.num_layers, seq_len
    body = N * (4 * D * H * K + D * F * (3 if cfg.gated_mlp else 2))
    if cfg.task == "pretrain":
        head = (D * D + D * cfg.vocab_size) * data.num_predictions(L, cfg.mlm_probability) / L
        head += (D * D + 2 * D) / L if cfg.nsp else 0.0
    elif cfg.task == "tag":
        head = D * cfg.num_labels
    else:
        head = (D * D + D * cfg.num_labels) / L
    return 6.0 * (body + head) + 12.0 * N * H * K * L


def logits(model: Model, params: Any, input_ids: Any, attention_mask: Any = None,
           token_type_ids: Any = None) -> jax.Array:
    """Hugging Face-style call: MLM logits [B, L, V] when pretraining, else the task head's logits
    ([B, num_labels] for classify, [B, L, num_labels] for tag); mask 0 marks padding."""
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = None if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    types = None if token_type_ids is None else jnp.asarray(token_type_ids, jnp.int32)
    out = model.apply({"params": params}, ids, mask, None, types)
    return out["mlm_logits"] if model.cfg.task == "pretrain" else out["logits"]
