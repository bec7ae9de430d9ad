"""GPT: a decoder-only transformer trained as a causal language model.

GPT-2 (Radford et al., 2019) is pre-norm with learned positions, LayerNorm, GELU (tanh form) and a
head tied to the token embedding. The modern variant swaps in rotary positions, RMSNorm, a SwiGLU
MLP, grouped-query attention and optionally sliding-window attention, all through config fields of
the same code.

Training rows come from packing documents end to end: each row of `seq_len + 1` tokens carries a
segment id per token, so attention and the loss never cross a document boundary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo import decode, layers, losses


@dataclasses.dataclass(frozen=True)
class Config(layers.TransformerConfig):
    """GPT shape: the shared transformer fields plus vocabulary, context length and head tying."""

    vocab_size: int = 8000
    max_len: int = 1024
    tie_embeddings: bool = True


def _gpt2(num_layers: int, d_model: int, num_heads: int, **kw: Any) -> Config:
    return Config(num_layers=num_layers, d_model=d_model, num_heads=num_heads, d_ff=4 * d_model,
                  vocab_size=50257, max_len=1024, **kw)


def _modern(num_layers: int, d_model: int, num_heads: int, num_kv_heads: int, d_ff: int, **kw: Any) -> Config:
    fields = dict(norm="rmsnorm", norm_eps=1e-6, activation="silu", gated_mlp=True, use_bias=False,
                  position="rope", tie_embeddings=False)
    return Config(num_layers=num_layers, d_model=d_model, num_heads=num_heads, num_kv_heads=num_kv_heads,
                  d_ff=d_ff, **{**fields, **kw})


PRESETS: dict[str, Config] = {
    "gpt-tiny": Config(num_layers=4, d_model=256, num_heads=4, d_ff=1024, vocab_size=8000, max_len=512),
    "gpt2-small": _gpt2(12, 768, 12),
    "gpt2-medium": _gpt2(24, 1024, 16),
    "gpt2-large": _gpt2(36, 1280, 20),
    "gpt2-xl": _gpt2(48, 1600, 25),
    "gpt-modern-tiny": _modern(4, 256, 4, 2, 688, vocab_size=8000, max_len=2048),
    "gpt-modern-small": _modern(12, 768, 12, 4, 2048, vocab_size=32000, max_len=4096),
    "gpt-modern-small-swa": _modern(12, 768, 12, 4, 2048, vocab_size=32000, max_len=4096, sliding_window=1024),
}


class Model(nn.Module):
    """Token ids [B, L] -> next-token logits [B, L, V] in float32.

    Decoding's call arguments: `last_only` gives the logits of the last position only ([B, 1, V]);
    `per_layer` runs the layers as separate modules on params from `layers.split_layers`.
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
        blocks = layers.scan_layers(layers.SelfAttentionBlock, cfg, cfg.num_layers, per_layer)
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
    """Raise ValueError with one line if the config cannot run at `seq_len`."""
    if cfg.d_model % cfg.num_heads and not cfg.head_dim:
        raise ValueError(f"d_model {cfg.d_model} is not divisible by num_heads {cfg.num_heads}")
    if cfg.num_heads % cfg.kv_heads:
        raise ValueError(f"num_heads {cfg.num_heads} is not a multiple of num_kv_heads {cfg.kv_heads}")
    if cfg.position not in ("learned", "rope", "none"):
        raise ValueError(f"GPT supports position learned, rope or none, not {cfg.position!r}")
    if cfg.position == "learned" and seq_len > cfg.max_len:
        raise ValueError(f"seq_len {seq_len} exceeds the model's max_len {cfg.max_len}; "
                         f"lower --seq-len or set model.max_len")


def sentinels(cfg: Config) -> int:
    """GPT's tokenizer reserves no sentinel ids."""
    del cfg
    return 0


def make_examples(records: list[dict[str, str]], run: Any, tokenizer: Any) -> dict[str, np.ndarray]:
    """Training rows of a split: every record's text tokenized and packed."""
    texts = [r["text"] if "text" in r else r["input"] + " " + r["target"] for r in records]
    return pack_documents(tokenizer.encode_batch(texts), run.data.seq_len, tokenizer.eos_id)


def pack_documents(docs: list[list[int]], seq_len: int, eos_id: int) -> dict[str, np.ndarray]:
    """Pack tokenized documents (each followed by EOS) into rows of seq_len + 1 tokens with segment ids."""
    lengths = np.array([len(d) + 1 for d in docs], dtype=np.int64)
    tokens = np.fromiter((t for d in docs for t in (*d, eos_id)), dtype=np.int32, count=int(lengths.sum()))
    doc_ids = np.repeat(np.arange(1, len(docs) + 1, dtype=np.int32), lengths)
    width = seq_len + 1
    rows = tokens.size // width
    if rows == 0:
        raise ValueError(f"the data holds {tokens.size} tokens, fewer than one row of {width}")
    return {"tokens": tokens[: rows * width].reshape(rows, width),
            "segments": doc_ids[: rows * width].reshape(rows, width)}


def positions_in_segment(segments_BL: np.ndarray) -> np.ndarray:
    """Position of each token within its segment, restarting at 0 where the segment id changes."""
    B, L = segments_BL.shape
    index = np.broadcast_to(np.arange(L), (B, L))
    starts = np.concatenate([np.ones((B, 1), bool), segments_BL[:, 1:] != segments_BL[:, :-1]], axis=1)
    return (index - np.maximum.accumulate(np.where(starts, index, 0), axis=1)).astype(np.int32)


def prepare_batch_fn(run: Any, tokenizer: Any) -> Any:
    """The host-side batch function for a run (GPT's needs no settings)."""
    del run, tokenizer
    return prepare_batch


def prepare_batch(rows: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Causal-LM batch: inputs, next-token targets, segments, positions and loss weights."""
    del rng  # the causal objective needs no randomness
    tokens, segments = rows["tokens"], rows["segments"]
    inputs, seg_in = tokens[:, :-1], segments[:, :-1]
    weights = (segments[:, 1:] == seg_in) & (seg_in > 0)  # never predict across a document boundary
    return {"inputs": inputs, "targets": tokens[:, 1:], "segments": seg_in,
            "positions": positions_in_segment(seg_in), "weights": weights.astype(np.float32)}


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
              train: bool) -> dict[str, jax.Array]:
    """Summed next-token cross-entropy over weighted targets, target weight and correct count."""
    logits_BLV = model.apply({"params": params}, batch["inputs"], batch["segments"], batch["positions"],
                             deterministic=not train, rngs={"dropout": dropout_rng})
    return losses.cross_entropy_sums(logits_BLV, batch["targets"], batch["weights"])


def num_params(cfg: Config) -> int:
    """Parameter count from shapes alone."""
    shapes = jax.eval_shape(lambda: init_params(Model(cfg), jax.random.key(0),
                                                jax.tree.map(jnp.asarray, init_batch(1, 8))))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes)))


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


def train_defaults() -> dict[str, Any]:
    """Config sections that differ from the generic defaults for this family (none for GPT)."""
    return {}


def sample_prompts(run: Any, records: list[dict[str, str]], tokenizer: Any, count: int) -> list[str]:
    """The first few tokens of `count` documents, as prompts for closing samples."""
    del run
    texts = [r.get("text", r.get("input", "")) for r in records[:count]]
    return [tokenizer.decode(ids[:8]) for ids in tokenizer.encode_batch(texts) if ids]


def generate(model: Model, params: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
             **sampling: Any) -> list[str]:
    """Continuations of text prompts (greedy by default; temperature/top_k/top_p/seed to sample)."""
    ids = [tokenizer.encode(p) or [tokenizer.eos_id] for p in prompts]
    out = decode.generate(model, params, ids, max_new_tokens, eos_id=tokenizer.eos_id,
                          pad_id=tokenizer.pad_id, **sampling)
    return [tokenizer.decode([t for t in row if t != tokenizer.eos_id]) for row in out]


# --- Hugging Face interchange: GPT-2 (GPT2LMHeadModel) and the modern variant (LlamaForCausalLM) ---

HF_MODEL_TYPES = ("gpt2", "llama")


def config_from_hf(hf: dict) -> Config:
    """Our config for a Hugging Face GPT-2 or Llama config.json."""
    if hf["model_type"] == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"GPT-2 activation {hf['activation_function']!r} is not supported")
        return Config(num_layers=hf["n_layer"], d_model=hf["n_embd"], num_heads=hf["n_head"],
                      d_ff=hf.get("n_inner") or 4 * hf["n_embd"], vocab_size=hf["vocab_size"],
                      max_len=hf["n_positions"], norm_eps=hf.get("layer_norm_epsilon", 1e-5))
    if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("rope_scaling"):
        raise ValueError("only plain Llama (silu, no attention bias, no rope scaling) converts")
    heads = hf["num_attention_heads"]
    return _modern(hf["num_hidden_layers"], hf["hidden_size"], heads, hf.get("num_key_value_heads") or heads,
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
        raise ValueError("this GPT variant has no Hugging Face equivalent (GPT-2 or Llama layout)")
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": cfg.num_layers,
            "hidden_size": cfg.d_model, "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.head_size, "intermediate_size": cfg.d_ff, "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "hidden_act": "silu", "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False}


def params_from_hf(tensors: dict[str, np.ndarray], cfg: Config) -> dict:
    """Our (scanned) params from a Hugging Face state dict of the same shapes."""
    from zoo.convert import take

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


def logits(model: Model, params: Any, input_ids: Any, attention_mask: Any = None) -> jax.Array:
    """Next-token logits [B, L, V] for (right- or left-) padded ids; mask 0 marks padding."""
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    return model.apply({"params": params}, ids, mask, positions)
