"""Reductions over a set of axes."""
from __future__ import annotations

import jax.numpy as jnp

from qir.errors import QirError
from qir.ir import Op, REQUIRED
from qir.ops.base import normalize_axis


class _Reduce(Op):
    attributes = {"axes": REQUIRED, "keepdims": False}

    def infer_types(self):
        x = self.operands[0].type
        axes = {normalize_axis(self, a, x.rank) for a in self.attrs["axes"]}
        if len(axes) != len(self.attrs["axes"]):
            raise QirError(f"{self.name}: axes {list(self.attrs['axes'])} name an axis of {x} twice")
        if self.attrs["keepdims"]:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return [x.with_shape(shape)]


class ReduceSum(_Reduce):
    name = "q.reduce_sum"

    def jax(self, x):
        return jnp.sum(x, axis=tuple(self.attrs["axes"]), keepdims=self.attrs["keepdims"]).astype(x.dtype)


class ReduceMean(_Reduce):
    name = "q.reduce_mean"

    def jax(self, x):
        return jnp.mean(x, axis=tuple(self.attrs["axes"]), keepdims=self.attrs["keepdims"]).astype(x.dtype)
