"""Train state, its sharded initialisation, and the jitted train and eval steps.

Every family plugs in through three members of its `Family`: `init_params(model, rng, batch)`,
`loss_sums(model, params, batch, dropout_rng, train)` returning summed metrics with `loss_sum`
and `weight_sum`, and `init_batch(batch_size, seq_len)` giving example shapes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from zoo import kernels, sharding
from zoo.family import Family


SPIKE_WARMUP_STEPS = 50  # steps averaged before the spike guard may skip one
SPIKE_DECAY = 0.98  # the running statistics weigh about the last 50 steps


@flax.struct.dataclass
class SpikeStats:
    """Running mean and variance of [loss, log gradient norm] over recent finite steps (the spike guard's)."""

    mean: jax.Array  # [2] float32
    var: jax.Array  # [2] float32
    count: jax.Array  # finite steps seen, int32
    spikes: jax.Array  # steps skipped as spikes so far, int32

    @classmethod
    def zeros(cls) -> SpikeStats:
        """No steps seen."""
        zero = jnp.zeros((), jnp.int32)
        return cls(mean=jnp.zeros(2, jnp.float32), var=jnp.zeros(2, jnp.float32), count=zero, spikes=zero)


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training and goes into a checkpoint."""

    step: jax.Array
    params: Any
    opt_state: Any
    bad_steps: jax.Array  # consecutive non-finite steps, reset by a good one
    spike_stats: SpikeStats


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Shapes and mesh shardings of the train state and of one batch, for jit and checkpoint restore."""

    abstract: TrainState  # leaves are jax.ShapeDtypeStruct carrying their sharding
    shardings: TrainState
    batch_shardings: dict[str, jax.sharding.NamedSharding]


@contextlib.contextmanager
def on_mesh(mesh: Mesh) -> Iterator[None]:
    """Make `mesh`, the logical-axis rules and the mesh platform's kernels current (for tracing and arrays)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES), \
            kernels.for_platform(mesh.devices.flat[0].platform):
        yield


def abstract_params(family: Family, model: nn.Module, batch_size: int, seq_len: int) -> Any:
    """Boxed (LogicallyPartitioned) parameter shapes, computed without allocating anything."""
    batch = family.init_batch(batch_size, seq_len)
    # the batch is an argument, not a closed-over constant: as a constant, everything that depends
    # on it alone (attention masks, [B, 1, L, L]) would be computed for real (15 GB at 8192 x 512)
    return jax.eval_shape(lambda b: family.init_params(model, jax.random.key(0), b), batch)


def count_params(tree: Any) -> int:
    """Number of scalars in a parameter tree (arrays or shapes)."""
    return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(tree)))


def num_params(family: Family, cfg: Any) -> int:
    """Parameter count of a model config, from shapes alone."""
    return count_params(abstract_params(family, family.Model(cfg), 1, 8))


def state_layout(family: Family, model: nn.Module, tx: optax.GradientTransformation,
                 mesh: Mesh, batch_size: int, seq_len: int) -> StateLayout:
    """Where every leaf of the train state lives on `mesh`, from the logical-axis rules."""
    boxed = abstract_params(family, model, batch_size, seq_len)
    param_shardings = sharding.logical_shardings(boxed, mesh)
    params = nn.meta.unbox(boxed)
    opt_state = jax.eval_shape(tx.init, params)
    rep = sharding.replicated(mesh)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, opt_state, param_shardings, transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    stats = jax.eval_shape(SpikeStats.zeros)
    abstract = TrainState(step=scalar, params=params, opt_state=opt_state, bad_steps=scalar, spike_stats=stats)
    shardings = TrainState(step=rep, params=param_shardings, opt_state=opt_shardings, bad_steps=rep,
                           spike_stats=jax.tree.map(lambda _: rep, stats))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    example = family.init_batch(batch_size, seq_len)
    batch_shardings = {k: sharding.batch_sharding(mesh, v.ndim) for k, v in example.items()}
    return StateLayout(abstract, shardings, batch_shardings)


def init_state(family: Family, model: nn.Module, tx: optax.GradientTransformation,
               layout: StateLayout, mesh: Mesh, seed: int) -> TrainState:
    """A fresh train state, created directly in its sharded layout (no host-side copy of the params)."""
    batch = family.init_batch(1, 8)

    def init(rng: jax.Array) -> TrainState:
        params = nn.meta.unbox(family.init_params(model, rng, batch))
        zero = jnp.zeros((), jnp.int32)
        return TrainState(step=zero, params=params, opt_state=tx.init(params), bad_steps=zero,
                          spike_stats=SpikeStats.zeros())

    with on_mesh(mesh):
        return jax.jit(init, out_shardings=layout.shardings)(jax.random.key(seed))


def _micro_batches(batch: dict[str, jax.Array], count: int) -> dict[str, jax.Array]:
    """Split [B, ...] into [count, B/count, ...] taking rows i::count, so no row changes device."""
    def split(x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def _spike_guard(stats: SpikeStats, loss: jax.Array, grad_norm: jax.Array, finite: jax.Array,
                 sigmas: float) -> tuple[jax.Array, SpikeStats]:
    """(is this step a spike, the updated statistics).

    A spike is a loss or log gradient norm more than `sigmas` running standard deviations above its
    running mean, once SPIKE_WARMUP_STEPS finite steps were seen (never when `sigmas` is 0). The
    statistics take in every finite step, spikes clipped to the bound: one spike barely moves them,
    while a lasting shift (new data, a schedule change) is absorbed within a few dozen steps.
    """
    x = jnp.stack([loss, jnp.log(jnp.maximum(grad_norm, 1e-30))]).astype(jnp.float32)
    bound = stats.mean + sigmas * jnp.sqrt(stats.var)
    armed = (stats.count >= SPIKE_WARMUP_STEPS) & (sigmas > 0)
    spike = finite & armed & jnp.any(x > bound)
    x = jnp.where(armed, jnp.minimum(x, bound), x)
    rate = jnp.maximum(1.0 / (stats.count + 1), 1.0 - SPIKE_DECAY)  # an exact mean over the first steps
    delta = x - stats.mean
    updated = SpikeStats(mean=stats.mean + rate * delta, var=(1 - rate) * (stats.var + rate * delta ** 2),
                         count=stats.count + 1, spikes=stats.spikes + spike.astype(jnp.int32))
    return spike, jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, stats)


def make_train_step(family: Family, model: nn.Module, tx: optax.GradientTransformation,
                    layout: StateLayout, mesh: Mesh, schedule: optax.Schedule, seed: int,
                    grad_accum: int = 1, spike_sigmas: float = 0.0, loss_options: Mapping[str, float] | None = None,
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """A jitted `(state, batch) -> (state, metrics)`; the input state's buffers are donated.
    `loss_options` go to the family's training loss (`z_loss`, `label_smoothing`: zoo.losses).

    Gradients are of the summed loss over all micro-batches divided by the total target weight, so
    accumulation gives the same update as one big batch. A step with a non-finite loss or gradient
    leaves params and optimizer state unchanged and counts in `bad_steps`. A loss spike (see
    `_spike_guard`) is skipped the same way and counted in the `spike` metric, not in `bad_steps`.
    """
    base_key = jax.random.key(seed)

    def sums_and_grads(params: Any, batch: dict, rng: jax.Array) -> tuple[dict, Any]:
        def objective(p: Any) -> tuple[jax.Array, dict]:
            sums = family.loss_sums(model, p, batch, rng, True, **(loss_options or {}))
            return sums["loss_sum"], sums
        (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return sums, grads

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        with nn.logical_axis_rules(sharding.LOGICAL_RULES):
            rng = jax.random.fold_in(base_key, state.step)
            if grad_accum == 1:
                sums, grads = sums_and_grads(state.params, batch, rng)
            else:
                def body(carry: tuple, xs: tuple) -> tuple[tuple, None]:
                    micro, i = xs
                    sums, grads = sums_and_grads(state.params, micro, jax.random.fold_in(rng, i))
                    return jax.tree.map(jnp.add, carry, (sums, grads)), None
                zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
                    sums_and_grads, state.params, jax.tree.map(lambda x: x[0], _micro_batches(batch, grad_accum)), rng))
                (sums, grads), _ = jax.lax.scan(body, zeros, (_micro_batches(batch, grad_accum), jnp.arange(grad_accum)))
            weight = jnp.maximum(sums["weight_sum"], 1.0)
            loss = sums["loss_sum"] / weight
            grad_norm = optax.tree.norm(grads) / weight
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            spike, spike_stats = _spike_guard(state.spike_stats, loss, grad_norm, finite, spike_sigmas)
            ok = finite & ~spike

            def apply(params: Any, opt_state: Any) -> tuple[Any, Any]:
                # dividing here, inside the branch, fuses into the update instead of writing a copy
                updates, opt_state = tx.update(jax.tree.map(lambda g: g / weight, grads), opt_state, params)
                return optax.apply_updates(params, updates), opt_state

            # A cond, not an elementwise where(ok, new, old): on CPU that select makes the update
            # about 3.5x slower, and a skipped step need not compute the update at all.
            params, opt_state = jax.lax.cond(ok, apply, lambda p, s: (p, s), state.params, state.opt_state)
            new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                                   bad_steps=jnp.where(finite, 0, state.bad_steps + 1), spike_stats=spike_stats)
            metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
                       "skipped": (~ok).astype(jnp.int32), "spike": spike.astype(jnp.int32), "spikes": spike_stats.spikes,
                       "bad_steps": new_state.bad_steps,
                       **{k: v for k, v in sums.items()}}
            return new_state, metrics

    rep = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(layout.shardings, layout.batch_shardings),
                   out_shardings=(layout.shardings, rep), donate_argnums=(0,))


def make_eval_step(family: Family, model: nn.Module, layout: StateLayout,
                   mesh: Mesh) -> Callable[[Any, dict], dict]:
    """A jitted `(params, batch) -> summed metrics` with dropout off."""
    def step(params: Any, batch: dict) -> dict:
        with nn.logical_axis_rules(sharding.LOGICAL_RULES):
            return family.loss_sums(model, params, batch, jax.random.key(0), False)

    return jax.jit(step, in_shardings=(layout.shardings.params, layout.batch_shardings),
                   out_shardings=sharding.replicated(mesh))
