"""Elementwise arithmetic and activations."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from qir.errors import QirError
from qir.ops.base import BinaryOp, UnaryOp, broadcast_shape
from qir.ir import Op, REQUIRED


class Add(BinaryOp):
    name = "q.add"

    def jax(self, a, b):
        return (a + b).astype(a.dtype)


class Sub(BinaryOp):
    name = "q.sub"

    def jax(self, a, b):
        return (a - b).astype(a.dtype)


class Mul(BinaryOp):
    name = "q.mul"

    def jax(self, a, b):
        return (a * b).astype(a.dtype)


class Div(BinaryOp):
    name = "q.div"

    def jax(self, a, b):
        return (a / b).astype(a.dtype)


class Maximum(BinaryOp):
    name = "q.maximum"

    def jax(self, a, b):
        return jnp.maximum(a, b).astype(a.dtype)


class Relu(UnaryOp):
    name = "q.relu"

    def jax(self, x):
        return jax.nn.relu(x)


class Silu(UnaryOp):
    name = "q.silu"

    def jax(self, x):
        return jax.nn.silu(x)


class Gelu(UnaryOp):
    """GELU; approximate = "none" (erf, as BERT) or "tanh"."""

    name = "q.gelu"
    attributes = {"approximate": "none"}

    def verify(self):
        if self.attrs["approximate"] not in ("none", "tanh"):
            raise QirError(f"{self.name}: approximate must be \"none\" or \"tanh\"")

    def jax(self, x):
        return jax.nn.gelu(x, approximate=self.attrs["approximate"] == "tanh")


class Sigmoid(UnaryOp):
    name = "q.sigmoid"

    def jax(self, x):
        return jax.nn.sigmoid(x)


class Tanh(UnaryOp):
    name = "q.tanh"

    def jax(self, x):
        return jnp.tanh(x)


class Rsqrt(UnaryOp):
    """1 / sqrt(x): the scale of a decomposed norm (see passes/decompose_norms.py)."""

    name = "q.rsqrt"

    def jax(self, x):
        return jax.lax.rsqrt(x)


class MaskedFill(Op):
    """Where `mask` is zero, replace `x` by the finite constant `value`.

    Masks are a select, not an addition of -inf: the result stays quantizable."""

    name = "q.masked_fill"
    num_operands = 2
    attributes = {"value": REQUIRED}

    def infer_types(self):
        x, mask = (v.type for v in self.operands)
        shape = broadcast_shape(self, x.shape, mask.shape)
        if shape != x.shape:
            raise QirError(f"{self.name}: mask {mask} must broadcast to the input {x}, not enlarge it")
        return [x]

    def jax(self, x, mask):
        return jnp.where(mask != 0, x, jnp.asarray(self.attrs["value"], x.dtype))
