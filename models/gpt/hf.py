"""GPT <-> Hugging Face: GPT-2 (GPT2LMHeadModel) and the modern variant (LlamaForCausalLM).

Torch `Linear` weights are [out, in] and GPT-2's `Conv1D` weights [in, out]; ours are [in, out] with
the attention widths split into heads, stacked over layers.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from models.gpt.model import Config, modern_config
from zoo.convert import ConversionError, take

HF_MODEL_TYPES = ("gpt2", "llama")


def config_from_hf(hf: dict) -> Config:
    """Our config for a Hugging Face GPT-2 or Llama config.json."""
    if hf["model_type"] == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConversionError(f"GPT-2 activation {hf['activation_function']!r} is not supported; "
                                  f"zoo converts gelu_new and gelu_pytorch_tanh")
        return Config(num_layers=hf["n_layer"], d_model=hf["n_embd"], num_heads=hf["n_head"],
                      d_ff=hf.get("n_inner") or 4 * hf["n_embd"], vocab_size=hf["vocab_size"],
                      max_len=hf["n_positions"], norm_eps=hf.get("layer_norm_epsilon", 1e-5))
    if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("rope_scaling"):
        raise ConversionError("only plain Llama (silu, no attention bias, no rope scaling) converts")
    heads = hf["num_attention_heads"]
    return modern_config(hf["num_hidden_layers"], hf["hidden_size"], heads, hf.get("num_key_value_heads") or heads,
                   hf["intermediate_size"], vocab_size=hf["vocab_size"], max_len=hf["max_position_embeddings"],
                   norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=hf.get("rope_theta", 10000.0),
                   head_dim=hf.get("head_dim") or 0, tie_embeddings=hf.get("tie_word_embeddings", False))


def _is_gpt2(cfg: Config) -> bool:
    return cfg.position == "learned" and cfg.norm == "layernorm" and not cfg.gated_mlp and cfg.use_bias


def config_to_hf(cfg: Config) -> dict:
    """A Hugging Face config.json for our config (GPT-2 or Llama layout)."""
    if _is_gpt2(cfg):
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": cfg.num_layers,
                "n_embd": cfg.d_model, "n_head": cfg.num_heads, "n_inner": cfg.d_ff, "vocab_size": cfg.vocab_size,
                "n_positions": cfg.max_len, "layer_norm_epsilon": cfg.norm_eps, "activation_function": "gelu_new",
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True}
    if cfg.position != "rope" or cfg.norm != "rmsnorm" or not cfg.gated_mlp or cfg.use_bias or cfg.sliding_window:
        raise ConversionError("this GPT variant has no Hugging Face equivalent (GPT-2 or Llama layout)")
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": cfg.num_layers,
            "hidden_size": cfg.d_model, "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.head_size, "intermediate_size": cfg.d_ff, "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "hidden_act": "silu", "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False}


def params_from_hf(tensors: dict[str, np.ndarray], cfg: Config) -> dict:
    """Our (scanned) params from a Hugging Face state dict of the same shapes."""
    H, G, K, N = cfg.num_heads, cfg.kv_heads, cfg.head_size, cfg.num_layers
    stack = lambda fmt, f=lambda w: w: np.stack([f(take(tensors, fmt.format(i))) for i in range(N)])
    if _is_gpt2(cfg):
        p = "transformer." if "transformer.wte.weight" in tensors else ""
        D = cfg.d_model
        qkv_w = stack(p + "h.{}.attn.c_attn.weight")  # [N, D, 3D], HF Conv1D computes x @ W
        qkv_b = stack(p + "h.{}.attn.c_attn.bias")
        norm = lambda name: {"scale": stack(p + f"h.{{}}.{name}.weight"), "bias": stack(p + f"h.{{}}.{name}.bias")}
        attn = {f"w_{n}": qkv_w[:, :, i * D:(i + 1) * D].reshape(N, D, H, K) for i, n in enumerate("qkv")}
        attn |= {f"b_{n}": qkv_b[:, i * D:(i + 1) * D].reshape(N, H, K) for i, n in enumerate("qkv")}
        attn |= {"w_o": stack(p + "h.{}.attn.c_proj.weight").reshape(N, H, K, D),
                 "b_o": stack(p + "h.{}.attn.c_proj.bias")}
        mlp = {"w_in": stack(p + "h.{}.mlp.c_fc.weight"), "b_in": stack(p + "h.{}.mlp.c_fc.bias"),
               "w_out": stack(p + "h.{}.mlp.c_proj.weight"), "b_out": stack(p + "h.{}.mlp.c_proj.bias")}
        return {"token_embed": {"embedding": take(tensors, p + "wte.weight")},
                "pos_embed": take(tensors, p + "wpe.weight"),
                "layers": {"attn_norm": norm("ln_1"), "attn": attn, "mlp_norm": norm("ln_2"), "mlp": mlp},
                "final_norm": {"scale": take(tensors, p + "ln_f.weight"), "bias": take(tensors, p + "ln_f.bias")}}
    D = cfg.d_model
    layer = "model.layers.{}."
    heads = lambda name, n: stack(layer + name, lambda w: w.T.reshape(D, n, K))  # torch Linear stores [out, in]
    params = {"token_embed": {"embedding": take(tensors, "model.embed_tokens.weight")},
              "layers": {"attn_norm": {"scale": stack(layer + "input_layernorm.weight")},
                         "attn": {"w_q": heads("self_attn.q_proj.weight", H), "w_k": heads("self_attn.k_proj.weight", G),
                                  "w_v": heads("self_attn.v_proj.weight", G),
                                  "w_o": stack(layer + "self_attn.o_proj.weight", lambda w: w.T.reshape(H, K, D))},
                         "mlp_norm": {"scale": stack(layer + "post_attention_layernorm.weight")},
                         "mlp": {"w_in": stack(layer + "mlp.gate_proj.weight", np.transpose),
                                 "w_gate": stack(layer + "mlp.up_proj.weight", np.transpose),
                                 "w_out": stack(layer + "mlp.down_proj.weight", np.transpose)}},
              "final_norm": {"scale": take(tensors, "model.norm.weight")}}
    if not cfg.tie_embeddings:
        params["lm_head"] = take(tensors, "lm_head.weight").T
    return params


def params_to_hf(params: Any, cfg: Config) -> dict[str, np.ndarray]:
    """A Hugging Face state dict (GPT2LMHeadModel or LlamaForCausalLM names) from our params."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    L, N, D = p["layers"], cfg.num_layers, cfg.d_model
    out: dict[str, np.ndarray] = {}
    if _is_gpt2(cfg):
        out["transformer.wte.weight"] = p["token_embed"]["embedding"]
        out["transformer.wpe.weight"] = p["pos_embed"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = p["final_norm"]["scale"], p["final_norm"]["bias"]
        a, m = L["attn"], L["mlp"]
        for i in range(N):
            h = f"transformer.h.{i}."
            out[h + "ln_1.weight"], out[h + "ln_1.bias"] = L["attn_norm"]["scale"][i], L["attn_norm"]["bias"][i]
            out[h + "ln_2.weight"], out[h + "ln_2.bias"] = L["mlp_norm"]["scale"][i], L["mlp_norm"]["bias"][i]
            out[h + "attn.c_attn.weight"] = np.concatenate([a[f"w_{n}"][i].reshape(D, D) for n in "qkv"], axis=1)
            out[h + "attn.c_attn.bias"] = np.concatenate([a[f"b_{n}"][i].reshape(D) for n in "qkv"])
            out[h + "attn.c_proj.weight"], out[h + "attn.c_proj.bias"] = a["w_o"][i].reshape(D, D), a["b_o"][i]
            out[h + "mlp.c_fc.weight"], out[h + "mlp.c_fc.bias"] = m["w_in"][i], m["b_in"][i]
            out[h + "mlp.c_proj.weight"], out[h + "mlp.c_proj.bias"] = m["w_out"][i], m["b_out"][i]
        return out
    out["model.embed_tokens.weight"] = p["token_embed"]["embedding"]
    out["model.norm.weight"] = p["final_norm"]["scale"]
    a, m = L["attn"], L["mlp"]
    for i in range(N):
        h = f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = L["attn_norm"]["scale"][i]
        out[h + "post_attention_layernorm.weight"] = L["mlp_norm"]["scale"][i]
        for n in "qkv":
            out[h + f"self_attn.{n}_proj.weight"] = a[f"w_{n}"][i].reshape(D, -1).T
        out[h + "self_attn.o_proj.weight"] = a["w_o"][i].reshape(-1, D).T
        out[h + "mlp.gate_proj.weight"] = m["w_in"][i].T
        out[h + "mlp.up_proj.weight"] = m["w_gate"][i].T
        out[h + "mlp.down_proj.weight"] = m["w_out"][i].T
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = p["lm_head"].T
    return out


