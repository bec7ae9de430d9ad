"""Shared layers (and both kernel paths behind `layers.project`) against plain float32/float64 einsums."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import kernels, layers

CASES = [("BLD,DHK->BLHK", (2, 5, 8), (8, 3, 4)), ("BLHK,HKD->BLD", (2, 5, 3, 4), (3, 4, 8)),
         ("BLD,VD->BLV", (2, 5, 8), (11, 8)), ("BD,DF->BF", (3, 8), (8, 6))]


PLATFORMS = ["cpu", "tpu"]  # the XLA:CPU matmul form, and the plain einsum TPU and GPU get


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("spec,x_shape,w_shape", CASES)
def test_project_in_float32_is_the_einsum(spec, x_shape, w_shape, platform):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=x_shape).astype(np.float32), rng.normal(size=w_shape).astype(np.float32)
    with kernels.for_platform(platform):
        y = layers.project(spec, jnp.asarray(x), jnp.asarray(w))
    np.testing.assert_allclose(y, np.einsum(spec, x.astype(np.float64), w.astype(np.float64)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("spec,x_shape,w_shape", CASES)
def test_project_in_bfloat16_has_float64_gradients_to_bfloat16_accuracy(spec, x_shape, w_shape, platform):
    with kernels.for_platform(platform):
        check_bfloat16_project(spec, x_shape, w_shape)


def test_accelerator_projection_is_one_plain_einsum_with_plain_gradients():
    """What TPU and GPU compile: a dot_general in the compute dtype, no reshape, no custom VJP."""
    x, w = jnp.ones((2, 5, 8), jnp.bfloat16), jnp.ones((8, 3, 4), jnp.float32)

    def traced(platform):  # a new function each time: traces are cached per function
        grad = jax.grad(lambda x, w: layers.project("BLD,DHK->BLHK", x, w).astype(jnp.float32).sum(), (0, 1))
        with kernels.for_platform(platform):
            return str(jax.make_jaxpr(grad)(x, w))

    accelerator, cpu = traced("tpu"), traced("cpu")
    assert "custom_vjp" not in accelerator and "reshape" not in accelerator
    assert accelerator.count("dot_general") == 3  # forward, and one per gradient
    assert "reshape" in cpu  # the CPU form (one 2-D matmul) is really another path


def test_project_in_bfloat16_on_one_cpu_device(script):
    """One CPU device takes another backward path (the weight gradient's operand copied transposed)."""
    code = ("import sys; sys.path.insert(0, 'tests'); import jax, test_layers; assert jax.device_count() == 1\n"
            "for case in test_layers.CASES: test_layers.check_bfloat16_project(*case)")
    script("-c", code, devices=1)


def check_bfloat16_project(spec, x_shape, w_shape):
    """bfloat16 `project` and its gradients against float64 einsums of the same (rounded) inputs."""
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=x_shape), rng.normal(size=w_shape).astype(np.float32)
    g = rng.normal(size=np.einsum(spec, x, w).shape)
    x_bf = jnp.asarray(x, jnp.bfloat16)
    x64 = np.asarray(x_bf.astype(jnp.float32), np.float64)  # the exact values the bf16 path sees
    w64 = np.asarray(jnp.asarray(w, jnp.bfloat16).astype(jnp.float32), np.float64)

    def loss(x, w):
        y = layers.project(spec, x, w, out_dtype=jnp.float32)
        return jnp.sum(y * g.astype(np.float32))

    y = layers.project(spec, x_bf, jnp.asarray(w))
    assert y.dtype == jnp.bfloat16
    dx, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x_bf, jnp.asarray(w))
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32  # the weight gradient keeps the param dtype
    x_axes, w_axes = spec.split("->")[0].split(",")
    out_axes = spec.split("->")[1]
    g_bf = np.asarray(jnp.asarray(g, jnp.bfloat16).astype(jnp.float32), np.float64)
    ref_dx = np.einsum(f"{out_axes},{w_axes}->{x_axes}", g_bf, w64)
    ref_dw = np.einsum(f"{x_axes},{out_axes}->{w_axes}", x64, g_bf)
    np.testing.assert_allclose(np.einsum(spec, x64, w64), np.asarray(y.astype(jnp.float32)), rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(dx.astype(jnp.float32)), ref_dx, rtol=2e-2, atol=2e-2)
    # XLA:CPU's form keeps the weight gradient in float32; TPU/GPU round it to bfloat16 like every output
    tolerance = 1e-5 if kernels.platform() == "cpu" else 2e-2
    np.testing.assert_allclose(np.asarray(dw), ref_dw, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("rate,shape", [(0.1, (64, 100, 64)), (0.5, (32, 50, 33)), (0.9, (64, 10, 128))])
def test_dropout_keeps_each_entry_with_probability_one_minus_rate_and_is_unbiased(rate, shape):
    x = jnp.asarray(np.random.default_rng(0).uniform(1.0, 2.0, size=shape), jnp.float32)
    drop = layers.Dropout(rate)
    y = np.asarray(drop.apply({}, x, False, rngs={"dropout": jax.random.key(3)}))
    kept = y != 0
    keep_prob = round((1 - rate) * 65536) / 65536
    assert abs(kept.mean() - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / x.size)
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / keep_prob, rtol=1e-6)
    assert abs(y.mean() - np.asarray(x).mean()) < 5 * y.std() / np.sqrt(x.size)  # unbiased
    # neighbours along the last axis (the two 16-bit halves of one random word among them) are independent
    assert abs(np.corrcoef(kept[..., :-1].ravel(), kept[..., 1:].ravel())[0, 1]) < 0.02
    other = np.asarray(drop.apply({}, x, False, rngs={"dropout": jax.random.key(4)})) != 0
    assert (other != kept).mean() > rate * (1 - rate)  # another key draws another mask
    np.testing.assert_array_equal(drop.apply({}, x, True), x)  # deterministic: the identity
    np.testing.assert_array_equal(layers.Dropout(0.0).apply({}, x, False), x)
