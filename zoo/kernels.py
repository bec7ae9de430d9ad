"""Platform-specific kernels behind the shared layers' signatures, chosen by one switch.

The model code (zoo.layers) calls `matmul` for every weight projection and `fused_attention` for a
fused attention kernel. What runs depends on the platform the computation is compiled for
(`platform()`): the mesh's devices inside `zoo.steps.on_mesh`, else JAX's default backend.

- TPU and GPU: a plain `jnp.einsum` in the compute dtype, the form XLA's TPU and GPU compilers
  tile onto the MXU / tensor cores (they accumulate bfloat16 products in float32 internally and
  round the output to bfloat16, logits included, as T5X does; the loss is then taken in float32).
- CPU: the same product as one 2-D matmul accumulated in float32, whose bfloat16 backward stays
  in bfloat16 (a custom VJP) and, on one device, multiplies a row-major copy of the transposed
  activations. Each lever was measured on XLA:CPU (see BENCHMARKS.md); none is wanted elsewhere.

`for_platform("tpu")` forces a platform's kernels, e.g. to check the accelerator path on a CPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("zoo_kernel_platform", default=None)


def platform() -> str:
    """The platform whose kernels are used now: "cpu", "gpu" or "tpu"."""
    chosen = _PLATFORM.get() or jax.default_backend()
    return "gpu" if chosen in ("cuda", "rocm") else chosen


@contextlib.contextmanager
def for_platform(name: str) -> Iterator[None]:
    """Use `name`'s kernels while the block traces (a mesh's platform, or a forced one in tests)."""
    token = _PLATFORM.set(name)
    try:
        yield
    finally:
        _PLATFORM.reset(token)


def matmul(spec: str, x: Array, w: Array, out_dtype: Any = None) -> Array:
    """`einsum(spec, x, w)` with w cast to x's dtype; the result in `out_dtype` (default x's dtype)."""
    if platform() == "cpu":
        return _cpu_matmul(spec, x, w, out_dtype)
    return jnp.einsum(spec, x, w.astype(x.dtype)).astype(jnp.dtype(out_dtype or x.dtype))


def fused_attention(q_BLHK: Array, k_BSHK: Array, v_BSHK: Array, mask_B1LS: Array, bias_BHLS: Array | None,
                    scale: float, impl: str) -> Array:
    """Softmax attention through `jax.nn.dot_product_attention` ("xla", or "cudnn" on NVIDIA GPUs)."""
    return jax.nn.dot_product_attention(q_BLHK, k_BSHK, v_BSHK, bias=bias_BHLS, mask=mask_B1LS, scale=scale,
                                        implementation=impl)


# ---- XLA:CPU ------------------------------------------------------------------------------------


def _cpu_matmul(spec: str, x: Array, w: Array, out_dtype: Any) -> Array:
    """The projection as one 2-D matmul accumulated in float32, with a low-precision backward."""
    inputs, out_axes = spec.split("->")
    x_axes, w_axes = inputs.split(",")
    contracted = "".join(a for a in x_axes if a in w_axes)
    rows, outs = x_axes[: len(x_axes) - len(contracted)], "".join(a for a in w_axes if a not in x_axes)
    weight_last = w_axes == outs + contracted  # e.g. a tied embedding table [V, D] as the output head
    if x_axes != rows + contracted or out_axes != rows + outs or w_axes not in (contracted + outs, outs + contracted):
        raise ValueError(f"project needs [rows, contracted] x [contracted, out] -> [rows, out], got {spec!r}")
    # always one 2-D matmul: its gradients are 2-D matmuls too, which XLA:CPU runs fastest (and, for
    # bfloat16 into float32, is the only form it supports for every layout)
    out_shape = (*x.shape[: len(rows)], *(w.shape[: len(outs)] if weight_last else w.shape[len(contracted):]))
    size_c = int(np.prod(x.shape[len(rows):]))
    x_RC = x.reshape(-1, size_c)
    w_2d = w.reshape(-1, size_c) if weight_last else w.reshape(size_c, -1)
    matmul = _matmul if x.dtype == jnp.float32 else _low_precision_matmul
    y_RF = matmul(weight_last, x_RC, w_2d)
    return y_RF.astype(jnp.dtype(out_dtype or x.dtype)).reshape(out_shape)


def _matmul(weight_last: bool, x_RC: Array, w: Array) -> Array:
    """x [R, C] times w [C, F] (or [F, C] when `weight_last`) -> [R, F] in float32."""
    return jnp.einsum("RC,FC->RF" if weight_last else "RC,CF->RF", x_RC, w.astype(x_RC.dtype),
                      preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _low_precision_matmul(weight_last: bool, x_RC: Array, w: Array) -> Array:
    """A 2-D low-precision matmul into float32 whose gradients also multiply in x's dtype.

    JAX's own gradient of a matmul with a float32 `preferred_element_type` upcasts both operands to
    float32, which halves the bfloat16 rate on CPU; this keeps the backward products in x's dtype
    with float32 accumulation (measured 1.6x faster for a [1024,768]x[768,3072] gradient).
    """
    return _matmul(weight_last, x_RC, w)


def _low_precision_matmul_fwd(weight_last: bool, x_RC: Array, w: Array) -> tuple[Array, tuple]:
    return _matmul(weight_last, x_RC, w), (x_RC, w)


def _low_precision_matmul_bwd(weight_last: bool, saved: tuple, g_RF: Array) -> tuple[Array, Array]:
    x_RC, w = saved
    g_RF = g_RF.astype(x_RC.dtype)
    dx_RC = jnp.einsum("RF,FC->RC" if weight_last else "RF,CF->RC", g_RF, w.astype(x_RC.dtype),
                       preferred_element_type=jnp.float32)
    dw_CF = jnp.einsum("CR,RF->CF", _transposed_in_memory(x_RC), g_RF, preferred_element_type=jnp.float32)
    # the barrier stops XLA folding this transpose into the matmul's output layout, a bf16 form
    # XLA:CPU has no kernel for
    dw = jax.lax.optimization_barrier(dw_CF).T if weight_last else dw_CF
    return dx_RC.astype(x_RC.dtype), dw.astype(w.dtype)


def _transposed_in_memory(x_RC: Array) -> Array:
    """x.T, on a single CPU device copied into row-major order rather than left to the matmul.

    XLA:CPU runs a bfloat16 matmul that contracts the leading axis of both operands (a weight
    gradient) at half the rate of the forward form: 145-177 against 251-334 GFLOP/s measured at
    gpt2-small shapes. A flat copy behind a barrier keeps layout assignment from folding the
    transpose back into the matmul. Skipped on sharded meshes, where the flat copy would gather.
    """
    if jax.default_backend() != "cpu" or jax.device_count() > 1:
        return x_RC.T
    return jax.lax.optimization_barrier(x_RC.T.reshape(-1)).reshape(x_RC.shape[1], x_RC.shape[0])


_low_precision_matmul.defvjp(_low_precision_matmul_fwd, _low_precision_matmul_bwd)


