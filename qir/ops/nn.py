"""Linear algebra and the normalisations, softmax and rotary embedding a transformer needs."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from qir.errors import QirError
from qir.ir import Op, REQUIRED
from qir.ops.base import broadcast_shape, normalize_axis, require_float


class Linear(Op):
    """y = x @ w.T (+ b); w is [out, in] as in PyTorch and Hugging Face checkpoints."""

    name = "q.linear"
    num_operands = (2, 3)

    def infer_types(self):
        x, w = self.operands[0].type, self.operands[1].type
        require_float(self, x)
        if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
            raise QirError(f"{self.name}: input {x} does not match weight {w} (weight is [out, in])")
        if len(self.operands) == 3 and self.operands[2].type.shape != (w.shape[0],):
            raise QirError(f"{self.name}: bias {self.operands[2].type} must be [{w.shape[0]}]")
        return [x.with_shape(x.shape[:-1] + (w.shape[0],))]

    def jax(self, x, w, b=None):
        y = jnp.einsum("...k,nk->...n", x, w.astype(x.dtype), precision=jax.lax.Precision.HIGHEST)
        return y if b is None else y + b.astype(x.dtype)


class MatMul(Op):
    """Batched a @ b (or a @ b^T with transpose_b); leading dimensions broadcast."""

    name = "q.matmul"
    num_operands = 2
    attributes = {"transpose_b": False}

    def infer_types(self):
        a, b = (v.type for v in self.operands)
        if a.rank < 2 or b.rank < 2:
            raise QirError(f"{self.name}: operands must have rank >= 2, got {a} and {b}")
        bk, bn = (b.shape[-1], b.shape[-2]) if self.attrs["transpose_b"] else (b.shape[-2], b.shape[-1])
        if a.shape[-1] != bk:
            raise QirError(f"{self.name}: contraction sizes differ: {a} and {b} (transpose_b={self.attrs['transpose_b']})")
        batch = broadcast_shape(self, a.shape[:-2], b.shape[:-2])
        return [a.with_shape(batch + (a.shape[-2], bn))]

    def jax(self, a, b):
        b = b.astype(a.dtype)
        if self.attrs["transpose_b"]:
            b = jnp.swapaxes(b, -1, -2)
        return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


class Softmax(Op):
    name = "q.softmax"
    attributes = {"axis": -1}

    def infer_types(self):
        x = self.operands[0].type
        require_float(self, x)
        normalize_axis(self, self.attrs["axis"], x.rank)
        return [x]

    def jax(self, x):
        return jax.nn.softmax(x, axis=self.attrs["axis"])


class RmsNorm(Op):
    """x / sqrt(mean(x^2, last axis) + eps) * w."""

    name = "q.rms_norm"
    num_operands = 2
    attributes = {"eps": REQUIRED}

    def infer_types(self):
        x, w = (v.type for v in self.operands)
        require_float(self, x)
        if w.shape != x.shape[-1:]:
            raise QirError(f"{self.name}: weight {w} must be [{x.shape[-1]}] for input {x}")
        return [x]

    def jax(self, x, w):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.attrs["eps"])
        return (y * w.astype(jnp.float32)).astype(x.dtype)


class LayerNorm(Op):
    """(x - mean) / sqrt(var + eps) * w + b over the last axis."""

    name = "q.layer_norm"
    num_operands = 3
    attributes = {"eps": REQUIRED}

    def infer_types(self):
        x, w, b = (v.type for v in self.operands)
        require_float(self, x)
        if w.shape != x.shape[-1:] or b.shape != x.shape[-1:]:
            raise QirError(f"{self.name}: weight {w} and bias {b} must be [{x.shape[-1]}] for input {x}")
        return [x]

    def jax(self, x, w, b):
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.attrs["eps"])
        return (y * w.astype(jnp.float32) + b.astype(jnp.float32)).astype(x.dtype)


class Rope(Op):
    """Rotary position embedding: x * cos + rotate(x) * sin, with cos/sin tables [L, D] broadcast
    over the leading axes of x [..., L, D].

    layout = "half": rotate pairs (i, i + D/2), the Hugging Face layout;
    layout = "interleaved": rotate pairs (2i, 2i + 1), the original / llama.cpp layout.
    The tables hold each frequency twice, in the same layout as x."""

    name = "q.rope"
    num_operands = 3
    attributes = {"layout": "half"}

    def infer_types(self):
        x, cos, sin = (v.type for v in self.operands)
        require_float(self, x)
        if x.rank < 2 or cos.shape != x.shape[-2:] or sin.shape != x.shape[-2:]:
            raise QirError(f"{self.name}: tables {cos}, {sin} must be [L, D] = {list(x.shape[-2:])} for input {x}")
        if x.shape[-1] % 2:
            raise QirError(f"{self.name}: head dimension {x.shape[-1]} must be even")
        return [x]

    def verify(self):
        if self.attrs["layout"] not in ("half", "interleaved"):
            raise QirError(f'{self.name}: layout must be "half" or "interleaved", not {self.attrs["layout"]!r}')

    def jax(self, x, cos, sin):
        if self.attrs["layout"] == "half":
            x1, x2 = jnp.split(x, 2, axis=-1)
            rotated = jnp.concatenate([-x2, x1], axis=-1)
        else:
            pairs = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
            rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
        return (x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)).astype(x.dtype)
