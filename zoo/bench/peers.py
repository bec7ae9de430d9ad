"""The Hugging Face peers of `python -m zoo.bench`: transformers' Flax and PyTorch models on our shapes.

A peer is built from the family's own Hugging Face mapping, never from a mapping of its own:
`hf_config(family, model_cfg)` is `family.hf.config_to_hf` of the model config with dropout 0; the
transformers config is `AutoConfig.for_model(**that)`, the PyTorch class is named by its
`architectures[0]` and the Flax class is the same name with a "Flax" prefix. Weights are a random
init and tokens come from a fixed numpy seed; every dropout-like rate is 0.0, so the compute is
deterministic and the same for every backend.

Backends: "hf-flax" (`peer_flax`: an `optax.adamw` and one `jax.jit`ted step) and "hf-torch"
(`peer_torch`: `torch.optim.AdamW`, eager). Both need `transformers>=4.57,<5`: 4.57 is the last
release with Flax models. What differs by family is only the objective each peer trains on
(causal LM / MLM, with NSP when the architecture has it / seq2seq) and whether it decodes; this is
the one module that knows it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from zoo.bench import measure, peer_flax, peer_torch
from zoo.family import Family

BACKENDS = ("hf-flax", "hf-torch")
INSTALL_HINT = "pip install 'zoo[hf]'  (torch==2.13.0 and transformers>=4.57,<5)"
SEED = 0
_FIRST_ID = 3  # random ids avoid 0..2 (pad/eos/unk in zoo and T5) and the last id (GPT-2's eos here)
_DECODERS = ("gpt", "t5")  # the families whose peers generate


def peer_available(backend: str) -> str | None:
    """None if `backend`'s stack imports, else one line saying what to install."""
    _check_backend(backend)
    try:
        import transformers

        if backend == "hf-flax":
            import flax  # noqa: F401
            import optax  # noqa: F401

            # transformers 5 dropped the Flax models; the attribute is missing there, not an ImportError.
            transformers.FlaxGPT2LMHeadModel  # noqa: B018
        else:
            import torch  # noqa: F401

            transformers.GPT2LMHeadModel  # noqa: B018
    except (ImportError, AttributeError) as e:
        return f"{backend} peer unavailable ({type(e).__name__}: {e}); install it with {INSTALL_HINT}"
    return None


def hf_config(family: Family, model_cfg: Any) -> dict[str, Any]:
    """The peer's Hugging Face config dict: the family's own mapping of `model_cfg` with dropout 0.

    Raises ValueError when the family has no Hugging Face equivalent of `model_cfg`, or (BERT) when
    the config is a fine-tuning head rather than pretraining, which the peers do not time.
    """
    cfg_hf = family.hf.config_to_hf(dataclasses.replace(model_cfg, dropout=0.0))
    arch = cfg_hf["architectures"][0]
    if family.name == "bert" and not arch.endswith(("ForPreTraining", "ForMaskedLM")):
        raise ValueError(f"the BERT peers time pretraining only, not {arch}")
    return cfg_hf


def mismatch(model_cfg: Any) -> str | None:
    """Why the peer does not compute what ours does (None when it does), for the report."""
    if model_cfg.dropout:
        return f"the peer runs without dropout, ours has dropout={model_cfg.dropout} (--set model.dropout=0 to match)"
    return None


def transformers_config(cfg_hf: dict[str, Any], **overrides: Any) -> Any:
    """The transformers config of `cfg_hf`, every dropout-like rate 0.0 and every special id in range."""
    import transformers

    config = transformers.AutoConfig.for_model(**{**cfg_hf, **overrides})
    for key, value in config.to_dict().items():
        if "drop" in key and isinstance(value, float):
            setattr(config, key, 0.0)
        # A default id past a small vocabulary (GPT-2's 50256) would index out of range in generate.
        elif key.endswith("token_id") and isinstance(value, int) and value >= config.vocab_size:
            setattr(config, key, config.vocab_size - 1)
    return config


def time_train_step(backend: str, family_name: str, cfg_hf: dict[str, Any], shapes: dict[str, list[int]],
                    steps: int, dtype: str = "float32") -> dict[str, Any]:
    """Time forward + loss + backward + AdamW update of the peer on random tokens of our batch's shapes.

    `shapes` are the shapes of our train batch (`ours.bench_train`'s `batch_shapes`, or
    `family.init_batch`'s): the peer trains on the same batch size, lengths and (BERT) number of
    scored positions. `tokens_per_s` counts batch x input length (encoder tokens for T5) per step.
    `dtype` is the compute dtype; params and optimizer state stay float32. The first step (jit
    compile for flax) is reported as `compile_s`, then `steps` steps are timed.
    """
    _check_backend(backend)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    batch = train_batch(family_name, cfg_hf, shapes)
    _check_length(cfg_hf, batch["input_ids"].shape[1])
    _require(backend)
    config = transformers_config(cfg_hf, use_cache=False)
    probe = measure.MemProbe("torch" if backend == "hf-torch" else "jax")
    if backend == "hf-flax":
        times, loss = peer_flax.train(config, flax_loss_fn(family_name), batch, steps, dtype, SEED)
    else:
        times, loss = peer_torch.train(config, batch, steps, dtype, SEED)
    peak, source = probe.stop()
    if not np.isfinite(loss):
        raise RuntimeError(f"{backend} {family_name} train step produced a non-finite loss {loss}")
    return {"compile_s": times[0], **measure.step_figures(times[1:], batch["input_ids"].size),
            "peak_mem_bytes": peak, "mem_source": source}


def time_decode(backend: str, family_name: str, cfg_hf: dict[str, Any], batch_size: int, prompt_len: int,
                new_tokens: int, dtype: str = "float32") -> dict[str, float]:
    """Time greedy `generate` of exactly `new_tokens` tokens after a `prompt_len` prompt (gpt, t5).

    For an encoder-decoder the prompt is the encoder input and decoding starts from the decoder
    start token. Each timed call follows an untimed warm-up call with identical shapes (for flax: the
    same jitted function), so neither `tokens_per_s` (batch x new_tokens / time of one call) nor
    `first_token_s` (time of a call with max_new_tokens=1) includes compilation.
    """
    _check_backend(backend)
    if family_name not in _DECODERS:
        raise ValueError(f"{family_name} is an encoder: it has no decoding to time")
    if new_tokens < 1 or prompt_len < 1:
        raise ValueError(f"prompt_len and new_tokens must be >= 1, got {prompt_len} and {new_tokens}")
    _require(backend)
    config = transformers_config(cfg_hf)
    _check_length(cfg_hf, prompt_len if config.is_encoder_decoder else prompt_len + new_tokens)
    prompt = random_ids(np.random.default_rng(SEED), cfg_hf["vocab_size"], (batch_size, prompt_len))
    start_len = 1 if config.is_encoder_decoder else prompt_len
    make = peer_flax.decoder if backend == "hf-flax" else peer_torch.decoder
    generate = make(config, prompt, start_len, dtype, SEED)

    def run(n: int) -> None:
        # A shorter output would mean generation stopped early and tokens/s would be overstated.
        shape = generate(n)
        if shape != (batch_size, start_len + n):
            raise RuntimeError(f"generate returned shape {shape}, expected {(batch_size, start_len + n)}")

    decode_s, _ = measure.warm_then_time(lambda: run(new_tokens))
    first_token_s, _ = measure.warm_then_time(lambda: run(1))
    return {"tokens_per_s": batch_size * new_tokens / decode_s, "decode_s": decode_s, "first_token_s": first_token_s}


def random_ids(rng: np.random.Generator, vocab_size: int, shape: tuple[int, ...]) -> np.ndarray:
    """Random ordinary token ids of `shape` (int32), so that no backend sees padding or an end token."""
    return rng.integers(_FIRST_ID, vocab_size - 1, size=shape, dtype=np.int32)


def train_batch(family_name: str, cfg_hf: dict[str, Any], shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """The peer's numpy train batch for our batch `shapes`; `labels` -100 marks positions not scored."""
    rng = np.random.default_rng(SEED)
    vocab = cfg_hf["vocab_size"]
    if family_name == "t5":
        (B, L), T = shapes["encoder_inputs"], shapes["decoder_targets"][1]
        labels = random_ids(rng, vocab, (B, T))
        start = np.full_like(labels[:, :1], cfg_hf.get("decoder_start_token_id") or 0)
        return {"input_ids": random_ids(rng, vocab, (B, L)), "labels": labels,
                "decoder_input_ids": np.concatenate([start, labels[:, :-1]], axis=1)}
    B, L = shapes["inputs"]
    ids = random_ids(rng, vocab, (B, L))
    if family_name == "gpt":
        return {"input_ids": ids, "labels": ids}  # the models shift labels themselves
    # BERT: as many scored positions per row as ours; which ones changes neither FLOPs nor memory,
    # so the inputs are left unmasked.
    scored = np.argsort(rng.random((B, L)), axis=1)[:, : shapes["targets"][1]]
    labels = np.full_like(ids, -100)
    np.put_along_axis(labels, scored, np.take_along_axis(ids, scored, axis=1), axis=1)
    batch = {"input_ids": ids, "labels": labels}
    if cfg_hf["architectures"][0].endswith("ForPreTraining"):
        batch["next_sentence_label"] = rng.integers(0, 2, size=(B,), dtype=np.int32)
    return batch


def flax_loss_fn(family_name: str) -> Callable[[Any, Any, dict[str, Any]], Any]:
    """(model, params, batch) -> the mean float32 cross-entropy a Flax peer trains on (its heads take no labels)."""
    import jax.numpy as jnp
    import optax

    def xent(logits: Any, labels: Any, weights: Any = None) -> Any:
        weights = jnp.ones(labels.shape, jnp.float32) if weights is None else weights
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return jnp.sum(ce * weights) / jnp.sum(weights)

    # train=False only skips dropout, whose rate is 0.0 everywhere, so the compute is the training compute.
    def loss(model: Any, params: Any, batch: dict[str, Any]) -> Any:
        if family_name == "t5":
            out = model(input_ids=batch["input_ids"], decoder_input_ids=batch["decoder_input_ids"],
                        params=params, train=False)
            return xent(out.logits, batch["labels"])
        out = model(batch["input_ids"], params=params, train=False)
        if family_name == "gpt":
            return xent(out.logits[:, :-1], batch["labels"][:, 1:])
        labels = batch["labels"]
        scored = labels != -100
        if "next_sentence_label" not in batch:
            return xent(out.logits, jnp.where(scored, labels, 0), scored.astype(jnp.float32))
        mlm = xent(out.prediction_logits, jnp.where(scored, labels, 0), scored.astype(jnp.float32))
        return mlm + xent(out.seq_relationship_logits, batch["next_sentence_label"])

    return loss


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown peer backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def _check_length(cfg_hf: dict[str, Any], length: int) -> None:
    limit = cfg_hf.get("max_position_embeddings") or cfg_hf.get("n_positions")  # T5: relative, no limit
    if limit is not None and length > limit:
        raise ValueError(f"length {length} exceeds the peer's {limit} positions")


def _require(backend: str) -> None:
    missing = peer_available(backend)
    if missing is not None:
        raise RuntimeError(missing)
