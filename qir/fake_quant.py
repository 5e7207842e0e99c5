"""Fake quantization: x -> s * (clip(round(x / s) + z, qmin, qmax) - z), differentiable with
straight-through rounding, for every scheme a QuantSpec can describe."""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from qir.quant import QuantSpec


def round_ste(x):
    """round(x) forward, identity gradient backward."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def broadcast_params(params, spec: QuantSpec, shape: tuple[int, ...]):
    """Shape per-channel / per-block parameters so they broadcast against x (blocked x is
    reshaped by the caller to [..., n_blocks, block, ...])."""
    params = jnp.asarray(params, jnp.float32).reshape(-1)
    if spec.axis is None:
        return params.reshape(())
    if spec.block_size is None:
        target = [1] * len(shape)
        target[spec.axis] = shape[spec.axis]
        return params.reshape(target)
    blocked = list(shape[:spec.axis]) + [shape[spec.axis] // spec.block_size, 1] + list(shape[spec.axis + 1:])
    return params.reshape(blocked)


def divide_exactly(x, s):
    """x / s in float32, one true division per element, as numpy (and so the backends' emitters,
    which quantize constants with it) computes it. XLA rewrites a division by a broadcast operand
    (a per-tensor or per-channel scale) into a multiplication by its reciprocal, which moves exact
    ties (x / s = n + 1/2) off the boundary that round-half-to-even breaks towards the even
    integer; materializing the scale behind an optimization barrier keeps the division."""
    return x / jax.lax.optimization_barrier(jnp.broadcast_to(s, x.shape))


def lpbq_scales(spec: QuantSpec, scale, block_scale, shape: tuple[int, ...]):
    """The per-block scales of an LPBQ spec: block_scale[c, b] · scale[c] in float32 (the product
    a DequantizeLinear of the integer block scales by the per-channel scales computes)."""
    blocked = list(shape)
    blocked[spec.axis] //= spec.block_size
    k = jnp.asarray(block_scale).astype(jnp.float32).reshape(blocked)
    s = jnp.asarray(scale, jnp.float32).reshape((shape[0],) + (1,) * (len(shape) - 1))
    return (k * s).reshape(-1)


def fake_quant(x, spec: QuantSpec, scale, zero_point, block_scale=None, exact: bool = False):
    """Quantize-dequantize x with `spec`; `scale` and `zero_point` are the resolved parameters
    (`block_scale` too for an LPBQ spec). `exact`: divide element by element (`divide_exactly`),
    as the interpreter does for constants: weights from bf16 checkpoints sit on exact ties of
    their scales often (SmolLM2 in LPBQ blocks: 8 to 21 weights per matrix), which XLA's
    reciprocal would round the other way than the integers a backend stores."""
    shape = x.shape
    if spec.block_scale is not None:
        scale = lpbq_scales(spec, scale, block_scale, shape)
    if spec.block_size is not None:
        a = spec.axis
        x = x.reshape(shape[:a] + (shape[a] // spec.block_size, spec.block_size) + shape[a + 1:])
    s = broadcast_params(scale, spec, shape)
    z = broadcast_params(zero_point, spec, shape) if jnp.size(jnp.asarray(zero_point)) > 1 else \
        jnp.asarray(zero_point, jnp.float32).reshape(())
    x32 = x.astype(jnp.float32)
    q = jnp.clip(round_ste(divide_exactly(x32, s) if exact else x32 / s) + z, spec.qmin, spec.qmax)
    return ((q - z) * s).astype(x.dtype).reshape(shape)


@dataclass(frozen=True)
class DynamicRange:
    """Stands in for a per-tensor activation spec in a trace: the range is the tensor's own min/max
    (with 0 inside) times `ratio`, recomputed on every input, so the range follows the tensor while
    what produces it is learned (rotations). A 16-bit spec stays symmetric (zero point 0)."""

    spec: QuantSpec
    ratio: float = 1.0
    constants = ()  # reads no weights entry

    def params(self, x):
        x = x.astype(jnp.float32)
        lo, hi = jnp.minimum(x.min(), 0.0) * self.ratio, jnp.maximum(x.max(), 0.0) * self.ratio
        if self.spec.bits == 16:  # as quantize sets 16-bit activations
            scale = jnp.maximum(jnp.maximum(-lo, hi), 1e-12) / self.spec.qmax
            return scale.reshape(1), jnp.zeros((1,), jnp.float32)
        scale = jnp.maximum(hi - lo, 1e-12) / (self.spec.qmax - self.spec.qmin)
        zero = jnp.clip(round_ste(self.spec.qmin - lo / scale), self.spec.qmin, self.spec.qmax)
        return scale.reshape(1), zero.reshape(1)
