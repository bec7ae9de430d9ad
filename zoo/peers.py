"""Peer implementations for `python -m zoo.bench`: Hugging Face Flax and PyTorch models on our shapes.

The benchmark reports zoo's numbers as ratios against these peers, measured in the same process on the
same shapes, so everything here is built from a `Shape` rather than from a checkpoint: random init,
random tokens from a fixed numpy seed, every dropout rate 0.0 so the compute is deterministic and the
same for every backend.

Backends: "hf-flax" (transformers' Flax models, an `optax.adamw` and one `jax.jit`ted step) and
"hf-torch" (the PyTorch models, `torch.optim.AdamW`, eager). Both need `transformers>=4.57,<5`:
4.57 is the last release with Flax models. Timings are wall clock around calls that block until the
result is ready (`jax.block_until_ready`, `torch.cuda.synchronize` on GPU).

Memory: `peak_mem_bytes` is how far the call raised a high-water mark. On CPU that is the process's peak
resident set size (`getrusage(RUSAGE_SELF).ru_maxrss`), which covers params, optimizer state,
activations and also allocator/compiler overhead; it is 0 when an earlier call in the same process had
already set a higher peak, so run each peer in a fresh process when memory matters. On an accelerator
it is the device allocator's peak (`memory_stats()["peak_bytes_in_use"]` for JAX,
`torch.cuda.max_memory_allocated` for PyTorch). The `mem_source` key says which one was used.
"""

from __future__ import annotations

import contextlib
import inspect
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

BACKENDS = ("hf-flax", "hf-torch")
FAMILIES = ("gpt", "bert", "t5")
INSTALL_HINT = "pip install 'zoo[hf]'  (torch==2.13.0 and transformers>=4.57,<5)"

_LR = 1e-4
_WEIGHT_DECAY = 0.01
_MLM_RATE = 0.15
_SEED = 0


@dataclass(frozen=True)
class Shape:
    """Architecture of one peer model: enough to build the matching Hugging Face config."""

    family: str  # "gpt" | "bert" | "t5"
    vocab_size: int
    num_layers: int  # t5: encoder layers
    num_heads: int
    d_model: int
    d_ff: int
    max_len: int  # learned position table size (gpt, bert); t5 uses relative positions
    # t5 only
    num_decoder_layers: int | None = None  # None: same as num_layers
    d_kv: int | None = None  # head dim; None: d_model // num_heads
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    # bert only
    type_vocab_size: int = 2

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; expected one of {', '.join(FAMILIES)}")


def hf_config(shape: Shape) -> Any:
    """The transformers config for `shape`, with every dropout rate 0.0."""
    import transformers

    if shape.family == "gpt":
        # GPT-2 puts <|endoftext|> (bos = eos) at the last id; keep that so the id is in range for any vocab.
        return transformers.GPT2Config(
            vocab_size=shape.vocab_size,
            n_positions=shape.max_len,
            n_embd=shape.d_model,
            n_layer=shape.num_layers,
            n_head=shape.num_heads,
            n_inner=shape.d_ff,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            summary_first_dropout=0.0,
            bos_token_id=shape.vocab_size - 1,
            eos_token_id=shape.vocab_size - 1,
        )
    if shape.family == "bert":
        return transformers.BertConfig(
            vocab_size=shape.vocab_size,
            hidden_size=shape.d_model,
            num_hidden_layers=shape.num_layers,
            num_attention_heads=shape.num_heads,
            intermediate_size=shape.d_ff,
            hidden_act="gelu",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            max_position_embeddings=shape.max_len,
            type_vocab_size=shape.type_vocab_size,
        )
    return transformers.T5Config(
        vocab_size=shape.vocab_size,
        d_model=shape.d_model,
        d_kv=shape.d_kv if shape.d_kv is not None else shape.d_model // shape.num_heads,
        d_ff=shape.d_ff,
        num_layers=shape.num_layers,
        num_decoder_layers=shape.num_decoder_layers,
        num_heads=shape.num_heads,
        relative_attention_num_buckets=shape.relative_attention_num_buckets,
        relative_attention_max_distance=shape.relative_attention_max_distance,
        dropout_rate=0.0,
        feed_forward_proj=shape.feed_forward_proj,
        tie_word_embeddings=shape.tie_word_embeddings,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


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


def time_train_step(
    backend: str, shape: Shape, batch_size: int, seq_len: int, steps: int, dtype: str = "float32"
) -> dict[str, float | str]:
    """Time forward + loss + backward + AdamW update of the peer model on random tokens.

    Objectives: gpt causal LM on `seq_len` tokens; bert MLM on `seq_len` tokens with ~15% of positions
    scored; t5 seq2seq with encoder length `seq_len` and decoder length `seq_len // 4`. `tokens_per_s`
    counts `batch_size * seq_len` (encoder tokens for t5) per step. `dtype` is the compute dtype
    ("float32" or "bfloat16"); params and optimizer state stay float32. One untimed-for-throughput
    first step (jit compile for flax) is reported as `compile_s`, then `steps` steps are timed.
    """
    _check_backend(backend)
    _check_lengths(shape, seq_len)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    _require(backend)
    batch = _train_batch(shape, batch_size, seq_len)
    mem = _MemProbe(backend)
    if backend == "hf-flax":
        first, times = _flax_train(shape, batch, steps, dtype)
    else:
        first, times = _torch_train(shape, batch, steps, dtype)
    peak, source = mem.stop()
    median = statistics.median(times)
    return {
        "compile_s": first,
        "step_s_median": median,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "tokens_per_s": batch_size * seq_len / median,
        "peak_mem_bytes": peak,
        "mem_source": source,
    }


def time_decode(
    backend: str, shape: Shape, batch_size: int, prompt_len: int, new_tokens: int, dtype: str = "float32"
) -> dict[str, float]:
    """Time greedy `generate` of exactly `new_tokens` tokens after a `prompt_len` prompt (gpt, t5).

    For t5 the prompt is the encoder input and decoding starts from the decoder start token. Each timed
    call follows an untimed warm-up call with identical shapes (for flax: the same jitted function), so
    neither `tokens_per_s` (batch * new_tokens / time of one call) nor `first_token_s` (time of a call
    with max_new_tokens=1) includes compilation.
    """
    _check_backend(backend)
    if shape.family == "bert":
        raise ValueError("bert is an encoder: it has no decoding to time")
    if new_tokens < 1 or prompt_len < 1:
        raise ValueError(f"prompt_len and new_tokens must be >= 1, got {prompt_len} and {new_tokens}")
    _check_lengths(shape, prompt_len + new_tokens if shape.family == "gpt" else prompt_len)
    _require(backend)
    prompt = _tokens(np.random.default_rng(_SEED), shape.vocab_size, (batch_size, prompt_len))
    make = _flax_decoder if backend == "hf-flax" else _torch_decoder
    with _flax_t5_clip_shim(backend, shape.family):
        generate = make(shape, prompt, dtype)
        decode_s = _warm_then_time(lambda: generate(new_tokens))
        first_token_s = _warm_then_time(lambda: generate(1))
    return {
        "tokens_per_s": batch_size * new_tokens / decode_s,
        "decode_s": decode_s,
        "first_token_s": first_token_s,
    }


# ----------------------------------------------------------------------------------------------------
# Inputs


def _tokens(rng: np.random.Generator, vocab_size: int, shape: tuple[int, ...]) -> np.ndarray:
    # Ids 0 and 1 (t5's pad/eos) and the last id (gpt's eos) are left out so that no backend treats a
    # random token as padding or end of sequence.
    return rng.integers(2, vocab_size - 1, size=shape, dtype=np.int32)


def _train_batch(shape: Shape, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """Host-side numpy batch; `labels` follow the PyTorch convention (-100 = not scored)."""
    rng = np.random.default_rng(_SEED)
    ids = _tokens(rng, shape.vocab_size, (batch_size, seq_len))
    if shape.family == "gpt":
        return {"input_ids": ids, "labels": ids}  # the models shift labels themselves
    if shape.family == "bert":
        scored = rng.random(ids.shape) < _MLM_RATE
        scored[:, 0] = True  # at least one scored position per row, so the loss is never 0/0
        # Which positions are scored changes neither FLOPs nor memory, so inputs are left uncorrupted.
        return {"input_ids": ids, "labels": np.where(scored, ids, -100).astype(np.int32)}
    labels = _tokens(rng, shape.vocab_size, (batch_size, max(1, seq_len // 4)))
    decoder_input_ids = np.concatenate([np.zeros_like(labels[:, :1]), labels[:, :-1]], axis=1)  # start id 0
    return {"input_ids": ids, "labels": labels, "decoder_input_ids": decoder_input_ids}


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown peer backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def _check_lengths(shape: Shape, length: int) -> None:
    if shape.family != "t5" and length > shape.max_len:
        raise ValueError(f"{shape.family} length {length} exceeds max_len {shape.max_len}")


def _require(backend: str) -> None:
    missing = peer_available(backend)
    if missing is not None:
        raise RuntimeError(missing)


def _warm_then_time(fn: Callable[[], None]) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------
# hf-flax


class _ClipCompatJnp:
    """`jax.numpy`, except that `clip` still accepts NumPy's old `a_min`/`a_max` keywords."""

    def __getattr__(self, name: str) -> Any:
        import jax.numpy as jnp

        return getattr(jnp, name)

    @staticmethod
    def clip(x: Any, min: Any = None, max: Any = None, *, a_min: Any = None, a_max: Any = None) -> Any:
        import jax.numpy as jnp

        return jnp.clip(x, a_min if min is None else min, a_max if max is None else max)


@contextlib.contextmanager
def _flax_t5_clip_shim(backend: str, family: str) -> Iterator[None]:
    """Let transformers' Flax T5 run on JAX versions whose `jnp.clip` dropped `a_min`/`a_max`.

    transformers 4.57's `FlaxT5Attention._relative_position_bucket` calls `jnp.clip(x, a_max=...)`,
    which raises TypeError since JAX removed those keywords. Rather than patching `jax.numpy` for the
    whole process, this swaps the `jnp` name *inside modeling_flax_t5 only* for a proxy whose `clip`
    maps the old keywords onto `min`/`max`, and restores it on exit. Tracing (init, the first call of a
    jitted function) must happen inside the context; cached compiled functions no longer need it.
    """
    import jax.numpy as jnp

    params = inspect.signature(jnp.clip).parameters
    if backend != "hf-flax" or family != "t5" or "a_max" in params:
        yield
        return
    from transformers.models.t5 import modeling_flax_t5

    saved = modeling_flax_t5.jnp
    modeling_flax_t5.jnp = _ClipCompatJnp()
    try:
        yield
    finally:
        modeling_flax_t5.jnp = saved


def _flax_model(shape: Shape, dtype: str) -> Any:
    import jax.numpy as jnp
    import transformers

    cls = {
        "gpt": transformers.FlaxGPT2LMHeadModel,
        "bert": transformers.FlaxBertForMaskedLM,
        "t5": transformers.FlaxT5ForConditionalGeneration,
    }[shape.family]
    return cls(hf_config(shape), seed=_SEED, dtype=jnp.dtype(dtype), _do_init=True)


def _flax_loss_fn(shape: Shape, model: Any) -> Callable[[Any, dict[str, Any]], Any]:
    """Mean token cross-entropy in float32; the Flax heads take no labels, so the loss is computed here."""
    import jax.numpy as jnp
    import optax

    def xent(logits: Any, labels: Any, weights: Any) -> Any:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return jnp.sum(ce * weights) / jnp.sum(weights)

    # train=False only skips dropout, whose rate is 0.0 everywhere, so the compute is the training compute.
    def loss_fn(params: Any, batch: dict[str, Any]) -> Any:
        if shape.family == "gpt":
            logits = model(batch["input_ids"], params=params, train=False).logits
            labels = batch["labels"][:, 1:]
            return xent(logits[:, :-1], labels, jnp.ones(labels.shape, jnp.float32))
        if shape.family == "bert":
            logits = model(batch["input_ids"], params=params, train=False).logits
            labels = batch["labels"]
            scored = labels != -100
            return xent(logits, jnp.where(scored, labels, 0), scored.astype(jnp.float32))
        logits = model(
            input_ids=batch["input_ids"],
            decoder_input_ids=batch["decoder_input_ids"],
            params=params,
            train=False,
        ).logits
        labels = batch["labels"]
        return xent(logits, labels, jnp.ones(labels.shape, jnp.float32))

    return loss_fn


def _flax_train(
    shape: Shape, batch_np: dict[str, np.ndarray], steps: int, dtype: str
) -> tuple[float, list[float]]:
    import jax
    import optax

    with _flax_t5_clip_shim("hf-flax", shape.family):
        try:
            model = _flax_model(shape, dtype)
            loss_fn = _flax_loss_fn(shape, model)
            tx = optax.adamw(_LR, weight_decay=_WEIGHT_DECAY)

            def train_step(params: Any, opt_state: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
                loss, grads = jax.value_and_grad(loss_fn)(params, batch)
                updates, opt_state = tx.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), opt_state, loss

            step = jax.jit(train_step, donate_argnums=(0, 1))
            # The step donates these buffers; model.params is not used after this.
            params = jax.device_put(model.params)
            opt_state = jax.jit(tx.init)(params)
            batch = jax.device_put(batch_np)
            times = []
            for _ in range(steps + 1):
                t0 = time.perf_counter()
                params, opt_state, loss = step(params, opt_state, batch)
                jax.block_until_ready((params, opt_state, loss))
                times.append(time.perf_counter() - t0)
        except TypeError as e:
            if shape.family == "t5" and "clip" in str(e):
                raise RuntimeError(
                    f"transformers' Flax T5 does not run on this JAX even with the clip shim: {e}"
                ) from e
            raise
    if not np.isfinite(float(loss)):
        raise RuntimeError(f"hf-flax {shape.family} train step produced a non-finite loss {float(loss)}")
    return times[0], times[1:]


def _flax_decoder(shape: Shape, prompt: np.ndarray, dtype: str) -> Callable[[int], None]:
    """A function n -> None that runs greedy generation of n tokens, jitted once per n.

    FlaxGenerationMixin.generate is not jitted: called eagerly it re-traces its `lax.while_loop` on every
    call, so it is wrapped in `jax.jit` with the params as an argument (not baked in as constants).
    Flax generate has no min_new_tokens; `min_length` (which counts the prompt for gpt and the decoder
    start token for t5) blocks EOS until the last token instead.
    """
    import jax

    model = _flax_model(shape, dtype)
    params = jax.device_put(model.params)
    ids = jax.device_put(prompt)
    start_len = prompt.shape[1] if shape.family == "gpt" else 1
    compiled: dict[int, Callable[[Any, Any], Any]] = {}

    def generate(n: int) -> None:
        if n not in compiled:
            kwargs = dict(do_sample=False, max_new_tokens=n, min_length=start_len + n, pad_token_id=0)
            compiled[n] = jax.jit(lambda p, x: model.generate(x, params=p, **kwargs).sequences)
        out = jax.block_until_ready(compiled[n](params, ids))
        _check_generated(out.shape, prompt.shape[0], start_len + n)

    return generate


# ----------------------------------------------------------------------------------------------------
# hf-torch


def _torch_model(shape: Shape) -> Any:
    import torch
    import transformers

    cls = {
        "gpt": transformers.GPT2LMHeadModel,
        "bert": transformers.BertForMaskedLM,
        "t5": transformers.T5ForConditionalGeneration,
    }[shape.family]
    torch.manual_seed(_SEED)
    return cls(hf_config(shape)).to(_torch_device())


def _torch_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _torch_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _torch_autocast(dtype: str) -> contextlib.AbstractContextManager[Any]:
    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=_torch_device().type, dtype=getattr(torch, dtype))


def _torch_train(
    shape: Shape, batch_np: dict[str, np.ndarray], steps: int, dtype: str
) -> tuple[float, list[float]]:
    import torch

    model = _torch_model(shape)
    model.train()  # every dropout rate is 0.0, so train mode only matters for bookkeeping
    opt = torch.optim.AdamW(model.parameters(), lr=_LR, weight_decay=_WEIGHT_DECAY)
    device = _torch_device()
    # The models shift gpt labels and build t5 decoder inputs from labels themselves.
    batch = {
        k: torch.as_tensor(v, dtype=torch.long, device=device)
        for k, v in batch_np.items()
        if k != "decoder_input_ids"
    }
    extra = {} if shape.family == "bert" else {"use_cache": False}
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with _torch_autocast(dtype):
            loss = model(**batch, **extra).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _torch_sync()
        times.append(time.perf_counter() - t0)
    if not torch.isfinite(loss):
        raise RuntimeError(f"hf-torch {shape.family} train step produced a non-finite loss {loss.item()}")
    return times[0], times[1:]


def _torch_decoder(shape: Shape, prompt: np.ndarray, dtype: str) -> Callable[[int], None]:
    """A function n -> None that runs greedy `generate` of exactly n new tokens."""
    import torch

    model = _torch_model(shape)
    model.eval()
    ids = torch.as_tensor(prompt, dtype=torch.long, device=_torch_device())
    mask = torch.ones_like(ids)  # explicit, so generate never infers padding from token ids
    start_len = prompt.shape[1] if shape.family == "gpt" else 1

    def generate(n: int) -> None:
        with torch.inference_mode(), _torch_autocast(dtype):
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=0,
            )
        _torch_sync()
        _check_generated(tuple(out.shape), prompt.shape[0], start_len + n)

    return generate


def _check_generated(shape: tuple[int, ...], batch_size: int, length: int) -> None:
    # A shorter output would mean generation stopped early and tokens/s would be overstated.
    if tuple(shape) != (batch_size, length):
        raise RuntimeError(f"generate returned shape {tuple(shape)}, expected {(batch_size, length)}")


# ----------------------------------------------------------------------------------------------------
# Memory


class _MemProbe:
    """Measures how far one call raised a memory high-water mark (see the module docstring)."""

    def __init__(self, backend: str) -> None:
        self.source = "rss"
        self.before = 0
        if backend == "hf-torch":
            import torch

            if torch.cuda.is_available():
                self.source = "torch-cuda"
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.before = torch.cuda.memory_allocated()
                return
        else:
            stats = _jax_memory_stats()
            if stats is not None:
                self.source = "jax-device"
                self.before = stats.get("peak_bytes_in_use", 0)
                return
        self.before = _max_rss_bytes()

    def stop(self) -> tuple[int, str]:
        """(bytes, source) for the span since construction."""
        if self.source == "torch-cuda":
            import torch

            return max(0, torch.cuda.max_memory_allocated() - self.before), self.source
        if self.source == "jax-device":
            stats = _jax_memory_stats() or {}
            return max(0, stats.get("peak_bytes_in_use", 0) - self.before), self.source
        return max(0, _max_rss_bytes() - self.before), self.source


def _jax_memory_stats() -> dict[str, int] | None:
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    try:
        return device.memory_stats()
    except Exception:  # some runtimes do not implement memory_stats
        return None


def _max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes
