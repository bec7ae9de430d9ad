"""BERT/RoBERTa <-> Hugging Face (BertForPreTraining, BertForMaskedLM, RobertaForMaskedLM, and the
*ForSequenceClassification / *ForTokenClassification models).

HF Linear weights are [out, in]; ours are [in, out] with heads split out of the attention widths.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.bert.model import Config
from zoo.convert import ConversionError, take

HF_MODEL_TYPES = ("bert", "roberta")
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
                   "silu": "silu", "swish": "silu"}


def config_from_hf(hf: dict[str, Any]) -> Config:
    """Our Config from a Hugging Face BERT or RoBERTa config.json dict."""
    model_type = hf.get("model_type", "bert")
    if model_type not in HF_MODEL_TYPES:
        raise ConversionError(f"not a BERT/RoBERTa config: model_type {model_type!r}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"only absolute position embeddings are supported, not {hf['position_embedding_type']!r}")
    act = hf.get("hidden_act", "gelu")
    if act not in _HF_ACTIVATIONS:
        raise ConversionError(f"hidden_act {act!r} is not supported; use one of {', '.join(_HF_ACTIVATIONS)}")
    archs = hf.get("architectures") or []
    task = "pretrain"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        task = "classify"
    elif any(a.endswith("ForTokenClassification") for a in archs):
        task = "tag"
    nsp = model_type == "bert" and (not archs or any(a in ("BertForPreTraining", "BertForNextSentencePrediction")
                                                     for a in archs))
    roberta = model_type == "roberta"
    return Config(
        num_layers=hf["num_hidden_layers"], d_model=hf["hidden_size"], num_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"], norm_eps=hf.get("layer_norm_eps", 1e-12), activation=_HF_ACTIVATIONS[act],
        dropout=hf.get("hidden_dropout_prob", 0.1), vocab_size=hf["vocab_size"],
        max_len=hf["max_position_embeddings"], type_vocab_size=hf.get("type_vocab_size", 2),
        position_offset=hf.get("pad_token_id", 1) + 1 if roberta else 0, task=task,
        num_labels=len(hf.get("id2label") or {0: 0, 1: 1}), nsp=nsp, dynamic_masking=roberta)


def config_to_hf(cfg: Config) -> dict[str, Any]:
    """A Hugging Face config.json dict (BertForPreTraining / BertForMaskedLM / RobertaForMaskedLM / *ForSequence-
    or *ForTokenClassification, by task) for our Config."""
    roberta = cfg.position_offset > 0
    prefix = "Roberta" if roberta else "Bert"
    head = {"classify": "ForSequenceClassification", "tag": "ForTokenClassification"}.get(
        cfg.task, "ForPreTraining" if cfg.nsp and not roberta else "ForMaskedLM")
    act = {v: k for k, v in reversed(list(_HF_ACTIVATIONS.items()))}[cfg.activation]
    out = {"architectures": [prefix + head], "model_type": "roberta" if roberta else "bert",
           "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.num_layers,
           "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.d_ff, "hidden_act": act,
           "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
           "max_position_embeddings": cfg.max_len, "type_vocab_size": cfg.type_vocab_size,
           "layer_norm_eps": cfg.norm_eps, "initializer_range": 0.02, "position_embedding_type": "absolute",
           "pad_token_id": cfg.position_offset - 1 if roberta else 0, "tie_word_embeddings": True,
           "torch_dtype": "float32"}
    if roberta:
        out.update(bos_token_id=0, eos_token_id=2)
    if cfg.task != "pretrain":
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    return out


def _hf_table(cfg: Config) -> tuple[list[tuple[str, tuple, str]], list[tuple[str, tuple, str]]]:
    """(global, per-layer) lists of (HF name, our param path, layout) for this config's param tree."""
    roberta = cfg.position_offset > 0
    p = "roberta" if roberta else "bert"

    def pair(hf: str, ours: tuple, w: str = "w", b: str = "b", layout: str = "linear") -> list:
        return [(f"{hf}.weight", (*ours, w), layout), (f"{hf}.bias", (*ours, b), "heads" if layout == "in_heads"
                                                        else "copy")]

    def norm(hf: str, ours: tuple) -> list:
        return pair(hf, ours, "scale", "bias", "copy")

    glob = [(f"{p}.embeddings.{hf}_embeddings.weight", ours, "copy") for hf, ours in
            (("word", ("token_embed", "embedding")), ("position", ("pos_embed",)), ("token_type", ("type_embed",)))]
    glob += norm(f"{p}.embeddings.LayerNorm", ("embed_norm",))
    layer = [e for n in ("query", "key", "value")
             for e in pair(f"attention.self.{n}", ("attn",), f"w_{n[0]}", f"b_{n[0]}", "in_heads")]
    layer += pair("attention.output.dense", ("attn",), "w_o", "b_o", "out_heads")
    layer += norm("attention.output.LayerNorm", ("attn_norm",)) + norm("output.LayerNorm", ("mlp_norm",))
    layer += pair("intermediate.dense", ("mlp",), "w_in", "b_in") + pair("output.dense", ("mlp",), "w_out", "b_out")
    if cfg.task == "pretrain":
        if cfg.nsp:
            glob += pair(f"{p}.pooler.dense", ("pooler",)) + pair("cls.seq_relationship", ("nsp",))
        head = "lm_head" if roberta else "cls.predictions"
        glob += pair("lm_head.dense" if roberta else "cls.predictions.transform.dense", ("mlm", "dense"))
        glob += norm("lm_head.layer_norm" if roberta else "cls.predictions.transform.LayerNorm", ("mlm", "norm"))
        glob += [(f"{head}.bias", ("mlm", "bias"), "copy")]
    elif cfg.task == "classify" and roberta:  # RoBERTa's head: dense + tanh on <s>, then out_proj
        glob += pair("classifier.dense", ("pooler",)) + pair("classifier.out_proj", ("classifier",))
    elif cfg.task == "classify":
        glob += pair(f"{p}.pooler.dense", ("pooler",)) + pair("classifier", ("classifier",))
    else:
        glob += pair("classifier", ("classifier",))
    return glob, [(f"{p}.encoder.layer.{{i}}.{name}", ours, layout) for name, ours, layout in layer]


def _from_hf_layout(x: np.ndarray, layout: str, cfg: Config) -> np.ndarray:
    H, K = cfg.num_heads, cfg.head_size
    if layout == "linear":
        return x.T
    if layout == "in_heads":  # [H*K, D] -> [D, H, K]
        return x.T.reshape(x.shape[1], H, K)
    if layout == "heads":
        return x.reshape(H, K)
    if layout == "out_heads":  # [D, H*K] -> [H, K, D]
        return x.T.reshape(H, K, x.shape[0])
    return x


def _to_hf_layout(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "linear":
        return x.T
    if layout == "in_heads":
        return x.reshape(x.shape[0], -1).T
    if layout == "heads":
        return x.reshape(-1)
    if layout == "out_heads":
        return x.reshape(-1, x.shape[-1]).T
    return x


def _normalise_hf_names(tensors: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Accept checkpoints saved from the bare encoder (no `bert.` prefix) and TF-era LayerNorm gamma/beta."""
    prefix = "roberta." if cfg.position_offset > 0 else "bert."
    out = {}
    for name, value in tensors.items():
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[prefix + name if name.startswith(("embeddings.", "encoder.", "pooler.")) else name] = value
    return out


def params_from_hf(tensors: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Our nested params (float32 numpy) from a Hugging Face state dict (names as in `BertForPreTraining`,
    `RobertaForMaskedLM` or the classification models); tensors the config does not use are ignored."""
    tensors = _normalise_hf_names(tensors, cfg)
    glob, layer = _hf_table(cfg)
    wanted = [n for n, _, _ in glob] + [n.format(i=i) for n, _, _ in layer for i in range(cfg.num_layers)]
    missing = [n for n in wanted if n not in tensors]
    if missing:
        hint = "; set model.nsp=false for a checkpoint without an NSP head" if any(
            "seq_relationship" in n for n in missing) else ""
        raise ConversionError(f"the checkpoint lacks {len(missing)} tensors this config needs, "
                              f"e.g. {missing[0]!r}{hint}")
    params: dict[str, Any] = {}

    def put(path: tuple, value: np.ndarray) -> None:
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    for name, path, layout in glob:
        put(path, _from_hf_layout(take(tensors, name), layout, cfg))
    for name, path, layout in layer:
        put(("layers", *path), np.stack([_from_hf_layout(take(tensors, name.format(i=i)), layout, cfg)
                                         for i in range(cfg.num_layers)]))
    return params


def params_to_hf(params: dict[str, Any], cfg: Config) -> dict[str, np.ndarray]:
    """A Hugging Face state dict (float32 numpy, contiguous) for our params; tied decoder weights are left
    out, as `save_pretrained` does, and `from_pretrained` ties them back."""
    glob, layer = _hf_table(cfg)

    def get(path: tuple) -> np.ndarray:
        node = params
        for key in path:
            node = node[key]
        return np.asarray(node, np.float32)

    out = {name: _to_hf_layout(get(path), layout) for name, path, layout in glob}
    for name, path, layout in layer:
        stacked = get(("layers", *path))
        out.update({name.format(i=i): _to_hf_layout(stacked[i], layout) for i in range(cfg.num_layers)})
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


