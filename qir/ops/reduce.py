"""Reductions over a set of axes."""
from __future__ import annotations

import jax.numpy as jnp

from qir.errors import QirError
from qir.ir import Op, REQUIRED
from qir.ops.base import normalize_axis
from qir.types import TensorType


def reduced_type(op: Op, x: TensorType, axes, keepdims: bool) -> TensorType:
    """The type of `x` reduced over `axes` (one rule for q and tfl reductions)."""
    normalized = {normalize_axis(op, a, x.rank) for a in axes}
    if len(normalized) != len(axes):
        raise QirError(f"{op.name}: axes {list(axes)} name an axis of {x} twice")
    if keepdims:
        shape = tuple(1 if i in normalized else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in normalized)
    return x.with_shape(shape)


class _Reduce(Op):
    attributes = {"axes": REQUIRED, "keepdims": False}

    def infer_types(self):
        return [reduced_type(self, self.operands[0].type, self.attrs["axes"], self.attrs["keepdims"])]


class ReduceSum(_Reduce):
    name = "q.reduce_sum"

    def jax(self, x):
        return jnp.sum(x, axis=tuple(self.attrs["axes"]), keepdims=self.attrs["keepdims"]).astype(x.dtype)


class ReduceMean(_Reduce):
    name = "q.reduce_mean"

    def jax(self, x):
        return jnp.mean(x, axis=tuple(self.attrs["axes"]), keepdims=self.attrs["keepdims"]).astype(x.dtype)
