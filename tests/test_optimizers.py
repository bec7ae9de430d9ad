"""Optimizers by name and schedules: each equals its reference (optax's own transforms, the `adamp`
package's torch AdamP), trains through the real train step on 8 emulated devices, and its state
checkpoints on one mesh and restores on another."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo import adamp as adamp_lib, checkpoint, config as config_lib, losses, optim, optimizers, sharding, steps
from zoo.family import Family

NAMES = ["adamw", "adam", "adafactor", "lamb", "lion", "sgd", "adamp"]
GRAD_SIZES = [3.0, 0.01, 5.0, 0.1, 2.0]  # global norms above and below clip_norm


def small_params(rng, dtype=jnp.float32):
    """A tree like a model's: a stacked layer matrix and bias, a norm scale, an embedding."""
    tree = {"layers": {"mlp": {"w_in": rng.normal(size=(2, 16, 12)), "b_in": rng.normal(size=(2, 12))}},
            "final_norm": {"scale": rng.normal(size=12)}, "token_embed": {"embedding": rng.normal(size=(20, 16))}}
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def optim_config(name, **changes):
    # adafactor_min_dim 8 factors the small matrices, so the factored path is the one tested
    return config_lib.OptimConfig(**{"name": name, "learning_rate": 0.02, "warmup_steps": 2, "clip_norm": 1.0,
                                     "adafactor_min_dim": 8, **changes})


def reference(cfg, total, params):
    """Each optimizer spelled with optax's (or zoo.adamp's) own constructors, after global-norm clipping."""
    s, decays = optim.learning_rate_schedule(cfg, total), optim.decay_mask(params)
    wd = cfg.weight_decay
    core = {
        "adamw": lambda: optax.adamw(s, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd, mask=decays),
        "adam": lambda: optax.adam(s, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        # T5X's settings are optax's defaults; decay decoupled: times the learning rate
        "adafactor": lambda: optax.adafactor(s, min_dim_size_to_factor=8, weight_decay_rate=lambda c: wd * s(c),
                                             weight_decay_mask=decays),
        "lamb": lambda: optax.lamb(s, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd, mask=decays),
        "lion": lambda: optax.lion(s, b1=cfg.b1, b2=cfg.b2, weight_decay=wd, mask=decays),
        "sgd": lambda: optax.chain(optax.add_decayed_weights(wd, decays), optax.sgd(s, momentum=cfg.momentum)),
        "adamp": lambda: adamp_lib.adamp(s, cfg.b1, cfg.b2, cfg.eps, wd, decays=decays,
                                         stacked=optim.stacked_mask(params)),
    }[cfg.name]()
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), core)


# adamw: the one-pass update against optax's clip + adamw chain
@pytest.mark.parametrize("freeze_layers", [0, 1])
@pytest.mark.parametrize("name", NAMES)
def test_each_optimizer_equals_its_optax_reference(name, freeze_layers):
    rng = np.random.default_rng(0)
    params = small_params(rng)
    cfg = optim_config(name, freeze_layers=freeze_layers)
    ours, ref = optim.make_optimizer(cfg, 6, params), reference(cfg, 6, params)
    keep = optim.trainable_mask(params, freeze_layers)
    masked = lambda tree: jax.tree.map(lambda x, m: x * m, tree, keep)  # noqa: E731
    p_ours, p_ref, s_ours, s_ref = params, params, ours.init(params), ref.init(params)
    update, update_ref = jax.jit(ours.update), jax.jit(ref.update)
    for step, size in enumerate(GRAD_SIZES):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * size, jnp.float32), params)
        u_ours, s_ours = update(grads, s_ours, p_ours)
        u_ref, s_ref = update_ref(masked(grads), s_ref, p_ref)
        p_ours, p_ref = optax.apply_updates(p_ours, u_ours), optax.apply_updates(p_ref, masked(u_ref))
        for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref)):
            np.testing.assert_allclose(a, b, rtol=3e-6, atol=3e-7, err_msg=f"{name} step {step}")
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(params))]
    assert all(moved) if not freeze_layers else any(moved)
    if freeze_layers:  # frozen entries did not move at all
        np.testing.assert_array_equal(p_ours["token_embed"]["embedding"], params["token_embed"]["embedding"])
        np.testing.assert_array_equal(p_ours["layers"]["mlp"]["w_in"][0], params["layers"]["mlp"]["w_in"][0])
        assert not np.array_equal(p_ours["layers"]["mlp"]["w_in"][1], params["layers"]["mlp"]["w_in"][1])


def test_adafactor_factors_the_second_moments_of_matrices():
    params = small_params(np.random.default_rng(0))
    tx = optim.make_optimizer(optim_config("adafactor"), 6, params)
    state = jax.eval_shape(tx.init, params)
    factored = [s for s in jax.tree.leaves(state) if s.shape == (2, 16)]  # the stacked w_in's row moments
    assert factored, "no factored moments"
    adam = optim.make_optimizer(optim_config("adamw"), 6, params)
    assert optimizers.state_bytes_per_param(tx, params) < optimizers.state_bytes_per_param(adam, params) / 2


def test_adafactor_factors_attention_weights_as_matrices():
    rng = np.random.default_rng(2)  # stacked [layers, D, H, K] and [layers, H, K, D], as T5X factors them
    params = {"layers": {"attn": {"w_q": jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32),
                                  "w_o": jnp.asarray(rng.normal(size=(2, 2, 8, 16)), jnp.float32)}}}
    assert optimizers.matrix_view((2, 16, 2, 8), True, 8) == (2, 16, 16)
    assert optimizers.matrix_view((2, 2, 8, 16), True, 8) == (2, 16, 16)
    assert optimizers.matrix_view((2, 16, 2, 4), True, 16) == (2, 16, 2, 4)  # too small to factor: as is
    cfg = optim_config("adafactor", clip_norm=0.0, weight_decay=0.0)
    tx = optim.make_optimizer(cfg, 6, params)
    ref = optax.adafactor(optim.learning_rate_schedule(cfg, 6), min_dim_size_to_factor=8)
    views = lambda tree: jax.tree.map(lambda x: x.reshape(2, 16, 16), tree)  # noqa: E731
    state, ref_state = tx.init(params), ref.init(views(params))
    assert sorted(s.shape for s in jax.tree.leaves(ref_state) if s.ndim == 2) == [(2, 16)] * 4
    for _ in range(3):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
        updates, state = tx.update(grads, state, params)
        expected, ref_state = ref.update(views(grads), ref_state, views(params))
        for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
            np.testing.assert_allclose(np.asarray(a).reshape(b.shape), b, rtol=1e-6, atol=1e-8)
        params = optax.apply_updates(params, updates)
    assert optimizers.state_bytes_per_param(tx, params) < 1.0


def _torch_adamp_steps(params, grads_per_step, cfg, decays):
    """The `adamp` package's AdamP over the same clipped gradients, in float64; one tensor per layer."""
    import torch
    from adamp import AdamP

    def split(tree):  # per-layer tensors, as the reference would hold them, with their decay flag
        out = []
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            stacked = "layers" in [str(getattr(k, "key", k)) for k in path][:-1]
            out.extend(list(np.asarray(leaf)) if stacked else [np.asarray(leaf)])
        return out

    flags = split(jax.tree.map(lambda p, d: np.full(p.shape, d), params, decays))
    tensors = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in split(params)]
    groups = [{"params": [t for t, f in zip(tensors, flags) if f.all() == d], "weight_decay": wd}
              for d, wd in ((True, cfg.weight_decay), (False, 0.0))]
    opt = AdamP(groups, lr=cfg.learning_rate, betas=(cfg.b1, cfg.b2), eps=cfg.eps, delta=cfg.adamp_delta,
                wd_ratio=cfg.adamp_wd_ratio)
    for grads in grads_per_step:
        for t, g in zip(tensors, split(grads)):
            t.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return [t.detach().numpy() for t in tensors], split


def _orthogonal(g, p, per_row):
    """g without its component along p (per first-axis row, or as a whole): AdamP's projection case."""
    view = (p.shape[0], -1) if per_row else (1, -1)
    g2, p2 = g.reshape(view), p.reshape(view)
    p_n = p2 / np.linalg.norm(p2, axis=1, keepdims=True)
    return (g2 - p_n * np.sum(p_n * g2, axis=1, keepdims=True)).reshape(g.shape)


def test_adamp_equals_the_reference_torch_adamp():
    rng = np.random.default_rng(1)
    cfg = config_lib.OptimConfig(name="adamp", learning_rate=2.0 ** -6, warmup_steps=0, schedule="constant",
                                 clip_norm=1.0, weight_decay=0.1, b2=0.999)
    with jax.enable_x64(True):
        params = small_params(rng, jnp.float64)
        tx = optim.make_optimizer(cfg, 10, params)
        state, p, clipped, update = tx.init(params), params, [], jax.jit(tx.update)
        for size in [3.0, 0.1, 2.0, 0.05]:
            g = jax.tree.map(lambda x: rng.normal(size=x.shape) * size, params)
            w, b = np.asarray(p["layers"]["mlp"]["w_in"]), g["layers"]["mlp"]["w_in"]
            # layer 0: gradient orthogonal to each row (channel-wise projection); layer 1: to the whole
            # tensor only (layer-wise); the embedding: channel-wise; the rest: generic (no projection)
            g["layers"]["mlp"]["w_in"] = np.stack([_orthogonal(b[0], w[0], True), _orthogonal(b[1], w[1], False)])
            g["token_embed"]["embedding"] = _orthogonal(g["token_embed"]["embedding"],
                                                        np.asarray(p["token_embed"]["embedding"]), True)
            norm = math.sqrt(sum(float(np.sum(x ** 2)) for x in jax.tree.leaves(g)))
            clipped.append(jax.tree.map(lambda x: x * min(1.0, cfg.clip_norm / norm), g))
            updates, state = update(jax.tree.map(jnp.asarray, g), state, p)
            p = optax.apply_updates(p, updates)
        expected, split = _torch_adamp_steps(params, clipped, cfg, optim.decay_mask(params))
        for ours, theirs in zip(split(p), expected):
            np.testing.assert_allclose(ours, theirs, rtol=1e-11, atol=1e-13)
        # both projections were taken where the gradients were made orthogonal, and only there
        w = params["layers"]["mlp"]["w_in"]
        ratios = [float(adamp_lib.projected(g, g, x, 0.1, 0.1, 1e-8)[1]) for g, x in [
            (_orthogonal(rng.normal(size=w[0].shape), np.asarray(w[0]), True), w[0]),
            (_orthogonal(rng.normal(size=w[1].shape), np.asarray(w[1]), False), w[1]),
            (rng.normal(size=w[1].shape), w[1])]]
        assert ratios == [0.1, 0.1, 1.0]


def test_unknown_optimizer_or_schedule_is_one_line_config_error():
    base = config_lib.Config(preset="gpt-tiny", family="gpt", model=None)
    with pytest.raises(config_lib.ConfigError, match="optim.name must be one of adamw, adam, adafactor") as err:
        config_lib.apply_overrides(base, ["optim.name=adagrad"])
    assert "\n" not in str(err.value) and "adamp" in str(err.value)
    with pytest.raises(config_lib.ConfigError, match="optim.schedule must be one of cosine, linear"):
        config_lib.apply_overrides(base, ["optim.schedule=step"])
    with pytest.raises(config_lib.ConfigError, match="optim.name must be one of"):
        optim.make_optimizer(config_lib.OptimConfig(name="adagrad"), 10, small_params(np.random.default_rng(0)))
    with pytest.raises(config_lib.ConfigError, match="optim.adamp_wd_ratio must be in"):
        config_lib.apply_overrides(base, ["optim.adamp_wd_ratio=2"])


def test_schedules_follow_their_formulas():
    total, w, lr, floor = 100, 10, 2.0, 0.2
    make = lambda name, **kw: optim.learning_rate_schedule(config_lib.OptimConfig(  # noqa: E731
        **{"schedule": name, "learning_rate": lr, "warmup_steps": w, "min_lr_ratio": 0.1, **kw}), total)
    expected = {
        "linear": lambda t: lr + (floor - lr) * (t - w) / (total - w),
        "constant": lambda t: lr,
        "rsqrt": lambda t: lr * math.sqrt(w / t),
        "wsd": lambda t: lr if t < 80 else lr + (floor - lr) * (t - 80) / 20,
        "cosine": lambda t: floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * (t - w) / (total - w))),
    }
    for name, formula in expected.items():
        schedule = make(name, decay_fraction=0.2)
        for t in [0, 3, 9]:  # the same linear warmup for all
            assert float(schedule(t)) == pytest.approx(lr * t / w, rel=1e-6), (name, t)
        for t in [10, 11, 37, 79, 80, 90, 100]:
            assert float(schedule(t)) == pytest.approx(formula(t), rel=1e-5), (name, t)
    assert float(make("rsqrt", warmup_steps=0)(0)) == pytest.approx(lr)  # no warmup: w counts as 1
    assert float(make("rsqrt", warmup_steps=0)(16)) == pytest.approx(lr / 4)


# ---- through the train step, on emulated meshes --------------------------------------------------

V, D, N = 16, 16, 2


class TinyLM(nn.Module):
    """A bag-of-layers token model with logically partitioned params (stacked `layers`, as scanned models)."""

    @nn.compact
    def __call__(self, ids_BL: jax.Array) -> jax.Array:
        part = nn.with_logical_partitioning
        embed = self.param("token_embed", part(nn.initializers.normal(1.0), ("vocab", "embed")), (V, D))
        w_NDF = self.param("layers_w", part(nn.initializers.normal(0.3), ("layers", "embed", "mlp")), (N, D, D))
        scale = self.param("scale", part(nn.initializers.ones, ("embed",)), (D,))
        head = self.param("head", part(nn.initializers.normal(0.3), ("embed", "vocab")), (D, V))
        x = embed[ids_BL]
        for i in range(N):
            x = x + jnp.tanh(x @ w_NDF[i])
        return (x * scale) @ head


def init_params(model, rng, batch):
    """Boxed params, with the stacked matrix under `layers` like a scanned model's."""
    p = model.init(rng, batch["inputs"])["params"]
    return {"layers": {"w": p["layers_w"]}, "token_embed": {"embedding": p["token_embed"]},
            "final_norm": {"scale": p["scale"]}, "head": {"kernel": p["head"]}}


def loss_sums(model, params, batch, rng, train):
    """Summed next-token cross-entropy."""
    flat = {"layers_w": params["layers"]["w"], "token_embed": params["token_embed"]["embedding"],
            "scale": params["final_norm"]["scale"], "head": params["head"]["kernel"]}
    logits = model.apply({"params": flat}, batch["inputs"])
    return losses.cross_entropy_sums(logits, batch["targets"], batch["weights"])


def init_batch(batch_size, seq_len):
    """Example shapes."""
    ones = np.ones((batch_size, seq_len), np.int32)
    return {"inputs": ones, "targets": ones, "weights": ones.astype(np.float32)}


TINY = Family(name="tiny", Config=object, presets={}, Model=lambda cfg: TinyLM(), train_defaults={},
              validate=None, reserved_ids=None, init_batch=init_batch, init_params=init_params,
              loss_sums=loss_sums, logits=None, flops_per_token=None, row_maker=None, hf=None)


def mesh(shape):
    return sharding.make_mesh(*shape, devices=jax.devices()[: int(np.prod(shape))])


def train(name, mesh_shape, count, grad_accum=1):
    """(layout, state, losses) after `count` steps of optimizer `name` on a fixed batch of a cycle task."""
    cfg = optim_config(name, learning_rate=0.05, warmup_steps=0, schedule="constant", grad_accum=grad_accum)
    model, m = TinyLM(), mesh(mesh_shape)
    params = nn.meta.unbox(steps.abstract_params(TINY, model, 1, 8))
    tx = optim.make_optimizer(cfg, 20, params)
    layout = steps.state_layout(TINY, model, tx, m, 8, 8)
    state = steps.init_state(TINY, model, tx, layout, m, 0)
    step = steps.make_train_step(TINY, model, tx, layout, m, optim.learning_rate_schedule(cfg, 20), 0,
                                 grad_accum=grad_accum)
    ids = (np.arange(8)[:, None] * 3 + np.arange(9)[None, :]) % V  # next token = this one + 1
    batch = {"inputs": ids[:, :-1].astype(np.int32), "targets": ids[:, 1:].astype(np.int32),
             "weights": np.ones((8, 8), np.float32)}
    batch = {k: jax.device_put(v, layout.batch_shardings[k]) for k, v in batch.items()}
    losses_ = []
    with steps.on_mesh(m):
        for _ in range(count):
            state, metrics = step(state, batch)
            losses_.append(float(metrics["loss"]))
    return layout, state, losses_


# adamw: test_sharding trains it on five meshes and restores its checkpoints on three
@pytest.mark.parametrize("name", [n for n in NAMES if n != "adamw"])
def test_every_optimizer_trains_sharded_and_restores_on_another_mesh(name, tmp_path):
    # accumulation happens before the optimizer: two of them are enough to see it compose
    layout, state, losses_ = train(name, (2, 2, 2), 4, grad_accum=2 if name in ("adafactor", "adamp") else 1)
    assert all(np.isfinite(losses_)) and losses_[-1] < losses_[0] - 0.05, losses_
    # every optimizer-state leaf got a sharding of its own rank; param-shaped moments follow their param
    for leaf in jax.tree.leaves(state.opt_state):
        assert len(leaf.sharding.spec) <= leaf.ndim
    saver = checkpoint.Checkpointer(str(tmp_path))
    saver.save(4, state, {"batches": 4})
    saver.close()
    model = TinyLM()
    params = nn.meta.unbox(steps.abstract_params(TINY, model, 1, 8))
    tx = optim.make_optimizer(optim_config(name, learning_rate=0.05, warmup_steps=0, schedule="constant"), 20, params)
    other = steps.state_layout(TINY, model, tx, mesh((1, 1, 8)), 8, 8)
    restored, _, step = checkpoint.Checkpointer(str(tmp_path)).restore(other.abstract)
    assert step == 4
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding.mesh.devices.size == 8 and a.sharding.mesh.shape["tensor"] == 8


def test_adam_moments_are_sharded_like_their_params_and_factored_ones_replicated():
    for name in ["adam", "adafactor"]:
        model = TinyLM()
        params = nn.meta.unbox(steps.abstract_params(TINY, model, 1, 8))
        layout = steps.state_layout(TINY, model, optim.make_optimizer(optim_config(name), 20, params),
                                    mesh((2, 2, 2)), 8, 8)
        specs = {tuple(s.shape): s.sharding.spec for s in jax.tree.leaves(layout.abstract.opt_state)}
        if name == "adam":  # mu of the stacked matrix [layers, embed, mlp]
            assert specs[(N, D, D)] == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
        else:
            assert (N, D) in specs and specs[(N, D)] == jax.sharding.PartitionSpec()
