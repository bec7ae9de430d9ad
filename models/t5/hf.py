"""T5 <-> Hugging Face: T5ForConditionalGeneration (transformers 4.x names, tied names included).

Torch Linear weights are [out, in]; ours are [in, out] with the attention widths split into heads,
stacked over layers; each stack's relative-position table sits in its layer 0 on the HF side.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from models.t5.model import Config
from zoo.convert import ConversionError, take

HF_MODEL_TYPES = ("t5",)

_HF_ACTIVATIONS = {"relu": "relu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                   "silu": "silu", "swish": "silu"}


def config_from_hf(hf: dict) -> Config:
    """Our config for a Hugging Face T5 config.json."""
    proj = hf.get("feed_forward_proj", "relu")
    gated = proj.startswith("gated-")
    act = "gelu_new" if proj == "gated-gelu" else proj.split("-")[-1]
    if act not in _HF_ACTIVATIONS:
        raise ConversionError(f"T5 feed_forward_proj {proj!r} is not supported")
    return Config(num_layers=hf["num_layers"], num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
                  d_model=hf["d_model"], num_heads=hf["num_heads"], head_dim=hf["d_kv"], d_ff=hf["d_ff"],
                  vocab_size=hf["vocab_size"], norm_eps=hf.get("layer_norm_epsilon", 1e-6),
                  activation=_HF_ACTIVATIONS[act], gated_mlp=gated, tie_embeddings=hf.get("tie_word_embeddings", True),
                  relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
                  relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
                  dropout=hf.get("dropout_rate", 0.1))


def config_to_hf(cfg: Any) -> dict:
    """A Hugging Face T5 config.json for our config."""
    if cfg.norm != "rmsnorm" or cfg.use_bias or not cfg.pre_norm or cfg.kv_heads != cfg.num_heads:
        raise ConversionError("only T5's own layout (RMS norm, pre-norm, no biases, no GQA) converts to Hugging Face")
    if cfg.gated_mlp:
        proj = {"gelu_tanh": "gated-gelu", "silu": "gated-silu", "relu": "gated-relu"}.get(cfg.activation)
    else:
        proj = {"gelu_tanh": "gelu_new", "relu": "relu", "gelu": "gelu", "silu": "silu"}.get(cfg.activation)
    if proj is None:
        raise ConversionError(f"activation {cfg.activation!r} (gated={cfg.gated_mlp}) has no Hugging Face T5 name")
    return {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "d_model": cfg.d_model,
            "d_kv": cfg.head_size, "d_ff": cfg.d_ff, "num_layers": cfg.num_layers,
            "num_decoder_layers": cfg.decoder_layers, "num_heads": cfg.num_heads, "vocab_size": cfg.vocab_size,
            "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
            "relative_attention_max_distance": cfg.relative_attention_max_distance,
            "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": proj, "tie_word_embeddings": cfg.tie_embeddings,
            "dropout_rate": cfg.dropout, "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1,
            "decoder_start_token_id": 0}


def _hf_layer_names(cfg: Any, stack: str) -> dict[tuple[str, ...], str]:
    """Our (sub-module, param) -> the Hugging Face name pattern ({} = layer index) of one stack."""
    attn = ("attn",) if stack == "encoder" else ("self_attn",)
    names = {attn + ("w_q",): "layer.0.SelfAttention.q.weight", attn + ("w_k",): "layer.0.SelfAttention.k.weight",
             attn + ("w_v",): "layer.0.SelfAttention.v.weight", attn + ("w_o",): "layer.0.SelfAttention.o.weight",
             (attn[0] + "_norm", "scale"): "layer.0.layer_norm.weight"}
    ff = "layer.1" if stack == "encoder" else "layer.2"
    if stack == "decoder":
        names |= {("cross_attn", f"w_{n}"): f"layer.1.EncDecAttention.{n}.weight" for n in "qkvo"}
        names[("cross_attn_norm", "scale")] = "layer.1.layer_norm.weight"
    wi = {("mlp", "w_in"): f"{ff}.DenseReluDense.wi_0.weight", ("mlp", "w_gate"): f"{ff}.DenseReluDense.wi_1.weight"}
    names |= wi if cfg.gated_mlp else {("mlp", "w_in"): f"{ff}.DenseReluDense.wi.weight"}
    names |= {("mlp", "w_out"): f"{ff}.DenseReluDense.wo.weight", ("mlp_norm", "scale"): f"{ff}.layer_norm.weight"}
    return {k: f"{stack}.block.{{}}.{v}" for k, v in names.items()}


def _to_ours(name: str, w: np.ndarray, cfg: Any) -> np.ndarray:
    """A torch Linear weight [out, in] in our einsum layout."""
    D, H, K = cfg.d_model, cfg.num_heads, cfg.head_size
    if name in ("w_q", "w_k", "w_v"):
        return w.T.reshape(D, H, K)
    if name == "w_o":
        return w.T.reshape(H, K, D)
    return w.T if w.ndim == 2 else w


def _to_hf(name: str, w: np.ndarray, cfg: Any) -> np.ndarray:
    """One layer's weight in torch Linear layout [out, in] (the inverse of `_to_ours`)."""
    if name in ("w_q", "w_k", "w_v"):
        return w.reshape(cfg.d_model, -1).T
    if name == "w_o":
        return w.reshape(-1, cfg.d_model).T
    return w.T if w.ndim == 2 else w


def params_from_hf(tensors: dict[str, np.ndarray], cfg: Any) -> dict:
    """Our (scanned) params from a Hugging Face T5ForConditionalGeneration state dict."""
    embed = take(tensors, "shared.weight" if "shared.weight" in tensors else "encoder.embed_tokens.weight")
    params: dict[str, Any] = {"token_embed": {"embedding": embed}}
    for stack, depth in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
        tree: dict[str, Any] = {}
        for (module, name), pattern in _hf_layer_names(cfg, stack).items():
            stacked = np.stack([_to_ours(name, take(tensors, pattern.format(i)), cfg) for i in range(depth)])
            tree.setdefault(module, {})[name] = stacked
        relpos = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"  # layer 0 holds the stack's
        params[stack] = {"layers": tree, "final_norm": {"scale": take(tensors, f"{stack}.final_layer_norm.weight")},
                         "relpos_bias": take(tensors, relpos)}
    if not cfg.tie_embeddings:
        params["lm_head"] = take(tensors, "lm_head.weight").T
    return params


def params_to_hf(params: Any, cfg: Any) -> dict[str, np.ndarray]:
    """A Hugging Face T5ForConditionalGeneration state dict (every tied name included) from our params."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    embed = p["token_embed"]["embedding"]
    out = {"shared.weight": embed, "encoder.embed_tokens.weight": embed, "decoder.embed_tokens.weight": embed,
           "lm_head.weight": embed if cfg.tie_embeddings else p["lm_head"].T}
    for stack, depth in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
        tree = p[stack]
        out[f"{stack}.final_layer_norm.weight"] = tree["final_norm"]["scale"]
        out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = tree["relpos_bias"]
        for (module, name), pattern in _hf_layer_names(cfg, stack).items():
            for i in range(depth):
                out[pattern.format(i)] = _to_hf(name, tree["layers"][module][name][i], cfg)
    return out
