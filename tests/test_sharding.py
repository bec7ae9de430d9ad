"""Sharded training equals one-device training; params are really split; checkpoints move between meshes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from zoo import checkpoint, data, experiment, sharding, sources, steps
from conftest import tiny_run_config
from zoo.tokenizer import Tokenizer

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8), (1, 8, 1)]
FAMILY_PRESETS = ["gpt-tiny", "bert-tiny", "t5-tiny"]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [r["text"] for r in sources.head(sources.open_source("builtin", "train"), 300)]
    return Tokenizer.train(texts, 512, sentinels=8)  # reserved top ids: BERT's specials, T5's sentinels


def build(cfg, tokenizer, mesh_shape):
    devices = jax.devices()[: int(np.prod(mesh_shape))]
    return experiment.build(cfg, None, tokenizer=tokenizer, mesh=sharding.make_mesh(*mesh_shape, devices=devices))


def records():
    return sources.RecordList(sources.head(sources.open_source("builtin", "train"), 200))


def host_batches(exp, count):
    """This process's first `count` training batches of `records()` as global arrays."""
    batches = exp.split("train", records()).batches()
    return [data.to_global(next(batches).inputs, exp.layout.batch_shardings) for _ in range(count)]


def run_steps(exp, count=3):
    train_step = steps.make_train_step(exp.family, exp.model, exp.tx, exp.layout, exp.mesh, exp.schedule, 0)
    state, losses = exp.init_state(), []
    with steps.on_mesh(exp.mesh):
        for batch in host_batches(exp, count):
            state, m = train_step(state, batch)
            losses.append(float(m["loss"]))
    return state, losses


@pytest.fixture(scope="module")
def references(tokenizer):
    cache = {}

    def reference(preset):
        if preset not in cache:
            cache[preset] = run_steps(build(tiny_run_config(preset), tokenizer, (1, 1, 1)))
        return cache[preset]

    return reference


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
@pytest.mark.parametrize("mesh_shape", MESHES)
def test_sharded_train_steps_match_one_device(mesh_shape, preset, tokenizer, references):
    ref_state, ref_losses = references(preset)
    state, losses = run_steps(build(tiny_run_config(preset), tokenizer, mesh_shape))
    # Tolerance: same math, different reduction order across shards (float32 sums of ~1e3 terms).
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_params_and_optimizer_state_are_split_as_the_rules_say(tokenizer):
    exp = build(tiny_run_config(), tokenizer, (2, 2, 2))
    state = exp.init_state()
    w_q = state.params["layers"]["attn"]["w_q"]  # [layers, embed, heads, kv]
    assert w_q.sharding.spec == P(None, "fsdp", "tensor", None)
    assert w_q.addressable_shards[0].data.shape == (1, 32, 4, 8)  # embed/2 (fsdp), heads/2 (tensor)
    mu = state.opt_state.mu["layers"]["mlp"]["w_in"]  # Adam moment follows its param (ZeRO-3)
    assert mu.sharding.spec == P(None, "fsdp", "tensor")
    embedding = state.params["token_embed"]["embedding"]
    assert embedding.sharding.spec == P("tensor", "fsdp")
    # The compiled step keeps that layout: nothing is silently replicated.
    train_step = steps.make_train_step(exp.family, exp.model, exp.tx, exp.layout, exp.mesh, exp.schedule, 0)
    batch = host_batches(exp, 1)[0]
    with steps.on_mesh(exp.mesh):
        compiled = train_step.lower(state, batch).compile()
    out_state_shardings = compiled.output_shardings[0]
    assert out_state_shardings.params["layers"]["attn"]["w_q"].spec == P(None, "fsdp", "tensor", None)
    assert compiled.input_shardings[0][1]["inputs"].spec == P(("data", "fsdp"), None)


def test_inspector_lists_every_param(tokenizer):
    exp = build(tiny_run_config(), tokenizer, (2, 2, 2))
    lines = sharding.describe(exp.layout.shardings.params, exp.layout.abstract.params)
    assert len(lines) == len(jax.tree.leaves(exp.layout.abstract.params))
    assert any("w_q" in line and "4x split" in line for line in lines)


@pytest.mark.parametrize("target", [(8, 1, 1), (1, 1, 8), (1, 1, 1)])
def test_checkpoint_restores_identically_on_another_mesh(target, tokenizer, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ckpt"))
    source = build(tiny_run_config(), tokenizer, (2, 2, 2))
    state, _ = run_steps(source, 1)
    saver = checkpoint.Checkpointer(workdir)
    saver.save(1, state, {"batches": 1})
    saver.close()
    other = build(tiny_run_config(), tokenizer, target)
    restored, position, step = checkpoint.Checkpointer(workdir).restore(other.layout.abstract)
    assert (position, step) == ({"batches": 1}, 1)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding.mesh.devices.size == int(np.prod(target))


def test_restoring_another_models_checkpoint_names_the_parameter(tokenizer, tmp_path):
    exp = build(tiny_run_config(), tokenizer, (1, 1, 1))
    saver = checkpoint.Checkpointer(str(tmp_path))
    saver.save(0, exp.init_state(), {"batches": 0})
    saver.close()
    wider = build(tiny_run_config(d_ff=256), tokenizer, (1, 1, 1))
    with pytest.raises(checkpoint.CheckpointError, match="mlp"):
        checkpoint.Checkpointer(str(tmp_path)).restore(wider.layout.abstract)


def test_gradient_accumulation_equals_one_big_batch(tokenizer):
    cfg = tiny_run_config()
    accum = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, grad_accum=4))
    exp_one, exp_acc = build(cfg, tokenizer, (2, 1, 1)), build(accum, tokenizer, (2, 1, 1))
    (s1, l1), (s4, l4) = run_steps(exp_one, 2), run_steps(exp_acc, 2)
    np.testing.assert_allclose(l1, l4, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_non_finite_step_is_skipped_and_counted(tokenizer):
    exp = build(tiny_run_config(), tokenizer, (1, 1, 1))
    state = exp.init_state()
    poisoned = state.params["layers"]["mlp"]["w_in"].at[0, 0, 0].set(np.nan)  # makes loss and grads NaN
    state = state.replace(params={**state.params, "layers": {**state.params["layers"], "mlp": {
        **state.params["layers"]["mlp"], "w_in": poisoned}}})
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    train_step = steps.make_train_step(exp.family, exp.model, exp.tx, exp.layout, exp.mesh, exp.schedule, 0)
    with steps.on_mesh(exp.mesh):
        for batch in host_batches(exp, 2):
            state, m = train_step(state, batch)
    assert int(m["skipped"]) == 1 and int(state.bad_steps) == 2 and int(state.step) == 2
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(a, np.asarray(b))  # unchanged, bit for bit (NaN == NaN here)


def test_spike_guard_skips_a_jump_and_absorbs_a_lasting_shift():
    rng = np.random.default_rng(0)
    stats, finite = steps.SpikeStats.zeros(), jnp.bool_(True)

    def feed(loss, grad_norm, sigmas=6.0):
        nonlocal stats
        spike, stats = steps._spike_guard(stats, jnp.float32(loss), jnp.float32(grad_norm), finite, sigmas)
        return bool(spike)

    early = [feed(3 + rng.normal(0, 0.05), 1 + rng.uniform(0, 0.1)) for _ in range(steps.SPIKE_WARMUP_STEPS)]
    assert not any(early)  # not armed before the warm-up
    np.testing.assert_allclose(float(stats.mean[0]), 3.0, atol=0.05)
    assert not any(feed(3 + rng.normal(0, 0.05), 1 + rng.uniform(0, 0.1)) for _ in range(20))
    mean_before = float(stats.mean[0])
    assert feed(9.0, 1.0)  # the loss jumps
    assert feed(3.0, 50.0)  # the gradient norm jumps
    assert float(stats.mean[0]) - mean_before < 0.05  # a clipped spike barely moves the statistics
    assert int(stats.spikes) == 2
    shifted = [feed(4.0 + rng.normal(0, 0.05), 1.05) for _ in range(40)]  # a lasting shift, e.g. new data
    assert shifted[0] and not any(shifted[-20:])
    assert not feed(100.0, 1.0, sigmas=0.0)  # 0 turns the guard off
    spike, unchanged = steps._spike_guard(stats, jnp.float32(np.nan), jnp.float32(1.0), jnp.bool_(False), 6.0)
    assert not bool(spike) and int(unchanged.count) == int(stats.count)  # non-finite steps are not averaged


def test_a_spike_step_leaves_the_state_unchanged_and_is_counted(tokenizer):
    exp = build(tiny_run_config(), tokenizer, (1, 1, 1))
    state = exp.init_state()
    # statistics of a run whose loss sat at 0.1 with almost no spread: any real loss is a spike
    armed = steps.SpikeStats(mean=jnp.array([0.1, 0.0]), var=jnp.array([1e-6, 1e-6]),
                             count=jnp.int32(100), spikes=jnp.int32(0))
    state = state.replace(spike_stats=armed)
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    train_step = steps.make_train_step(exp.family, exp.model, exp.tx, exp.layout, exp.mesh, exp.schedule, 0,
                                       spike_sigmas=6.0)
    with steps.on_mesh(exp.mesh):
        state, m = train_step(state, host_batches(exp, 1)[0])
    assert int(m["skipped"]) == 1 and int(m["spike"]) == 1 and int(m["spikes"]) == 1
    assert int(state.bad_steps) == 0 and int(state.step) == 1  # skipped, but not a non-finite step
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(a, np.asarray(b))
