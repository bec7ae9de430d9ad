"""z-loss and label smoothing in cross_entropy_sums against a float64 numpy reference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import losses


def case(seed=0, B=2, L=3, V=7):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(B, L, V)) * 3).astype(np.float32)
    targets = rng.integers(0, V, size=(B, L)).astype(np.int32)
    weights = np.array([[1, 1, 0], [1, 0.5, 1]], np.float32)
    return logits, targets, weights


def numpy_reference(logits, targets, weights, z_loss, smoothing):
    """(objective sum, plain cross-entropy sum, z-loss sum, d objective / d logits) in float64."""
    x = logits.astype(np.float64)
    V = x.shape[-1]
    log_z = np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1)) + x.max(-1)
    log_p = x - log_z[..., None]
    onehot = np.eye(V)[targets]
    q = (1 - smoothing) * onehot + smoothing / V  # the smoothed target distribution
    w = weights.astype(np.float64)
    objective = np.sum((-(q * log_p).sum(-1) + z_loss * log_z ** 2) * w)
    nll = np.sum(-(onehot * log_p).sum(-1) * w)
    p = np.exp(log_p)
    grad = (p - q + 2 * z_loss * log_z[..., None] * p) * w[..., None]
    return objective, nll, np.sum(z_loss * log_z ** 2 * w), grad


@pytest.mark.parametrize("z_loss,smoothing", [(1e-4, 0.0), (0.0, 0.1), (0.01, 0.2), (0.5, 0.0)])
def test_z_loss_and_label_smoothing_match_numpy(z_loss, smoothing):
    logits, targets, weights = case()
    sums = losses.cross_entropy_sums(jnp.asarray(logits), targets, weights, z_loss=z_loss, label_smoothing=smoothing)
    objective, nll, z_sum, grad = numpy_reference(logits, targets, weights, z_loss, smoothing)
    np.testing.assert_allclose(float(sums["loss_sum"]), objective, rtol=1e-6)
    np.testing.assert_allclose(float(sums["nll_sum"]), nll, rtol=1e-6)
    if z_loss:
        np.testing.assert_allclose(float(sums["z_loss_sum"]), z_sum, rtol=1e-6)
    ours = jax.grad(lambda x: losses.cross_entropy_sums(x, targets, weights, z_loss=z_loss,
                                                        label_smoothing=smoothing)["loss_sum"])(jnp.asarray(logits))
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(np.asarray(ours), grad, rtol=1e-5, atol=1e-7)


def test_defaults_are_todays_numbers_exactly():
    logits, targets, weights = case(1)
    plain = losses.cross_entropy_sums(jnp.asarray(logits), targets, weights)
    zero = losses.cross_entropy_sums(jnp.asarray(logits), targets, weights, z_loss=0.0, label_smoothing=0.0)
    assert set(plain) == {"loss_sum", "weight_sum", "correct_sum"} and set(zero) == set(plain)
    for key in plain:
        assert float(plain[key]) == float(zero[key])
    objective, *_ = numpy_reference(logits, targets, weights, 0.0, 0.0)
    np.testing.assert_allclose(float(plain["loss_sum"]), objective, rtol=1e-6)


def test_family_losses_apply_the_options_in_training_only():
    from conftest import random_params
    from models.gpt import FAMILY as gpt, model as gpt_model

    cfg = dataclasses.replace(gpt_model.PRESETS["gpt-tiny"], num_layers=1, d_model=16, num_heads=2, head_dim=8,
                              d_ff=32, vocab_size=32, max_len=8, dropout=0.0)
    model, params = gpt.Model(cfg), random_params(gpt, cfg)
    batch = {k: jnp.asarray(v) for k, v in gpt.init_batch(2, 8).items()}
    batch["inputs"] = batch["inputs"] * 3
    options = {"z_loss": 0.1, "label_smoothing": 0.1}
    rng = jax.random.key(0)
    train, evaluation, plain = jax.jit(lambda p: (  # one compilation for the three
        gpt.loss_sums(model, p, batch, rng, True, **options), gpt.loss_sums(model, p, batch, rng, False, **options),
        gpt.loss_sums(model, p, batch, rng, True)))(params)
    assert set(evaluation) == set(plain)  # evaluation scores plain cross-entropy
    np.testing.assert_allclose(float(evaluation["loss_sum"]), float(plain["loss_sum"]), rtol=1e-6)
    np.testing.assert_allclose(float(train["nll_sum"]), float(plain["loss_sum"]), rtol=1e-6)
    assert float(train["loss_sum"]) > float(train["nll_sum"])


@pytest.mark.parametrize("preset", ["gpt-tiny", "bert-tiny", "t5-tiny"])
def test_train_step_applies_the_configured_options_and_evaluation_does_not(preset):
    from conftest import tiny_run_config
    from zoo import config as config_lib, experiment, steps

    cfg = config_lib.apply_overrides(tiny_run_config(preset), ["optim.z_loss=0.1", "optim.label_smoothing=0.1",
                                                               "model.dropout=0"])
    exp = experiment.build(cfg, None, tokenizer=experiment.NO_TOKENIZER)
    state = exp.init_state()
    rng = np.random.default_rng(0)
    batch = {k: np.asarray(v) for k, v in exp.family.init_batch(cfg.data.batch_size, cfg.data.seq_len).items()}
    for key in ("inputs", "targets", "decoder_inputs", "mlm_targets"):  # varied ids, so the loss is not trivial
        if key in batch:
            batch[key] = rng.integers(3, cfg.model.vocab_size - 10, size=batch[key].shape).astype(batch[key].dtype)
    key = jax.random.key(0)
    with steps.on_mesh(exp.mesh):
        plain = exp.family.loss_sums(exp.model, state.params, batch, key, True)
        options = losses.training_options(cfg.optim)
        trained = exp.family.loss_sums(exp.model, state.params, batch, key, True, **options)
        evaluated = exp.family.loss_sums(exp.model, state.params, batch, key, False, **options)
        plain_eval = exp.family.loss_sums(exp.model, state.params, batch, key, False)
        step = steps.make_train_step(exp.family, exp.model, exp.tx, exp.layout, exp.mesh, exp.schedule, 0,
                                     loss_options=options)
        _, metrics = step(state, {k: jax.device_put(v, exp.layout.batch_shardings[k]) for k, v in batch.items()})
    assert float(trained["z_loss_sum"]) > 0
    # BERT's loss_sum adds NSP, which the options leave alone: nll_sum is its MLM cross-entropy
    assert float(trained["nll_sum"]) == pytest.approx(float(plain.get("mlm_loss_sum", plain["loss_sum"])), rel=1e-5)
    assert float(trained["loss_sum"]) != pytest.approx(float(plain["loss_sum"]), rel=1e-3)
    assert float(evaluated["loss_sum"]) == pytest.approx(float(plain_eval["loss_sum"]), rel=1e-6)
    assert "z_loss_sum" not in evaluated
    assert float(metrics["z_loss_sum"]) == pytest.approx(float(trained["z_loss_sum"]), rel=1e-4)
