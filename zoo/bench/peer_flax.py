"""The "hf-flax" peer backend: transformers' Flax model of a config, an optax AdamW step, greedy generate.

Nothing here depends on the family: the model class is "Flax" + the config's `architectures[0]`
and the objective is the loss function `peers` passes in.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from typing import Any, Callable, Iterator

import numpy as np

from zoo.bench import measure

LR = 1e-4
WEIGHT_DECAY = 0.01


class _ClipCompatJnp:
    """`jax.numpy`, except that `clip` still accepts NumPy's old `a_min`/`a_max` keywords."""

    def __getattr__(self, name: str) -> Any:
        import jax.numpy as jnp

        return getattr(jnp, name)

    @staticmethod
    def clip(x: Any, min: Any = None, max: Any = None, *, a_min: Any = None, a_max: Any = None) -> Any:
        """`jnp.clip` taking either spelling of the bounds."""
        import jax.numpy as jnp

        return jnp.clip(x, a_min if min is None else min, a_max if max is None else max)


@contextlib.contextmanager
def clip_compat(cls: type) -> Iterator[None]:
    """Let a transformers Flax model run on JAX versions whose `jnp.clip` dropped `a_min`/`a_max`.

    transformers 4.57's Flax T5 (`_relative_position_bucket`) calls `jnp.clip(x, a_max=...)`, which
    raises TypeError since JAX removed those keywords. Rather than patching `jax.numpy` for the whole
    process, this swaps the `jnp` name inside the model's own module only for a proxy whose `clip`
    maps the old keywords onto `min`/`max`, and restores it on exit. Tracing (init, the first call of
    a jitted function) must happen inside the context; compiled functions no longer need it.
    """
    import jax.numpy as jnp

    module = sys.modules[cls.__module__]
    if "a_max" in inspect.signature(jnp.clip).parameters or getattr(module, "jnp", None) is not jnp:
        yield
        return
    module.jnp = _ClipCompatJnp()
    try:
        yield
    finally:
        module.jnp = jnp


def model_class(config: Any) -> type:
    """The transformers Flax class of `config`: "Flax" + its `architectures[0]`."""
    import transformers

    return getattr(transformers, "Flax" + config.architectures[0])


def train(config: Any, loss_fn: Callable[[Any, Any, dict[str, Any]], Any], batch_np: dict[str, np.ndarray],
          steps: int, dtype: str, seed: int) -> tuple[list[float], float]:
    """Seconds of 1 + `steps` jitted AdamW steps on `loss_fn(model, params, batch)`, and the last loss."""
    import jax
    import jax.numpy as jnp
    import optax

    cls = model_class(config)
    with clip_compat(cls):
        model = cls(config, seed=seed, dtype=jnp.dtype(dtype), _do_init=True)
        tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)

        def train_step(params: Any, opt_state: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
            loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, batch))(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        step = jax.jit(train_step, donate_argnums=(0, 1))
        # The step donates these buffers; model.params is not used after this.
        params = jax.device_put(model.params)
        batch = jax.device_put(batch_np)
        run = lambda c: jax.block_until_ready(step(c[0], c[1], batch))  # noqa: E731
        times, (_, _, loss) = measure.timed_calls(run, (params, jax.jit(tx.init)(params), None), steps + 1)
    return times, float(loss)


def decoder(config: Any, prompt: np.ndarray, start_len: int, dtype: str, seed: int) -> Callable[[int], tuple]:
    """A function n -> output shape that runs greedy generation of n tokens, jitted once per n.

    FlaxGenerationMixin.generate is not jitted: called eagerly it re-traces its `lax.while_loop` on every
    call, so it is wrapped in `jax.jit` with the params as an argument (not baked in as constants).
    Flax generate has no min_new_tokens; `min_length` (which counts the prompt of a decoder-only model
    and the decoder start token of an encoder-decoder) blocks EOS until the last token instead.
    """
    import jax
    import jax.numpy as jnp

    cls = model_class(config)
    with clip_compat(cls):
        model = cls(config, seed=seed, dtype=jnp.dtype(dtype), _do_init=True)
    params, ids = jax.device_put(model.params), jax.device_put(prompt)
    compiled: dict[int, Callable[[Any, Any], Any]] = {}

    def generate(n: int) -> tuple:
        if n not in compiled:
            kwargs = dict(do_sample=False, max_new_tokens=n, min_length=start_len + n, pad_token_id=0)
            compiled[n] = jax.jit(lambda p, x: model.generate(x, params=p, **kwargs).sequences)
        with clip_compat(cls):  # the first call traces
            return tuple(jax.block_until_ready(compiled[n](params, ids)).shape)

    return generate
