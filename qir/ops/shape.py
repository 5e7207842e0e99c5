"""Data movement: gather, reshape, transpose, slice, concat, cast."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from qir.errors import QirError
from qir.ir import Op, REQUIRED
from qir.ops.base import concat_type, normalize_axis
from qir.types import DTYPES


class Gather(Op):
    """Rows of `table` selected by integer `indices` along `axis` (embedding lookup)."""

    name = "q.gather"
    num_operands = 2
    attributes = {"axis": 0}

    def infer_types(self):
        table, indices = (v.type for v in self.operands)
        if indices.is_float:
            raise QirError(f"{self.name}: indices must be integers, got {indices}")
        axis = normalize_axis(self, self.attrs["axis"], table.rank)
        return [table.with_shape(table.shape[:axis] + indices.shape + table.shape[axis + 1:])]

    def jax(self, table, indices):
        return jnp.take(table, indices, axis=self.attrs["axis"])


class Reshape(Op):
    name = "q.reshape"
    attributes = {"shape": REQUIRED}

    def infer_types(self):
        x = self.operands[0].type
        shape = tuple(self.attrs["shape"])
        if int(np.prod(shape, dtype=np.int64)) != x.size or any(d < 0 for d in shape):
            raise QirError(f"{self.name}: cannot reshape {x} to {list(shape)}")
        return [x.with_shape(shape)]

    def jax(self, x):
        return x.reshape(self.attrs["shape"])


class Transpose(Op):
    name = "q.transpose"
    attributes = {"perm": REQUIRED}

    def infer_types(self):
        x = self.operands[0].type
        perm = tuple(self.attrs["perm"])
        if sorted(perm) != list(range(x.rank)):
            raise QirError(f"{self.name}: perm {list(perm)} is not a permutation of the {x.rank} axes of {x}")
        return [x.with_shape(tuple(x.shape[p] for p in perm))]

    def jax(self, x):
        return jnp.transpose(x, self.attrs["perm"])


class Slice(Op):
    """x[begin:end] per axis, unit stride."""

    name = "q.slice"
    attributes = {"begin": REQUIRED, "end": REQUIRED}

    def infer_types(self):
        x = self.operands[0].type
        begin, end = tuple(self.attrs["begin"]), tuple(self.attrs["end"])
        if len(begin) != x.rank or len(end) != x.rank or any(
                not 0 <= b <= e <= d for b, e, d in zip(begin, end, x.shape)):
            raise QirError(f"{self.name}: begin {list(begin)} / end {list(end)} do not fit {x}")
        return [x.with_shape(tuple(e - b for b, e in zip(begin, end)))]

    def jax(self, x):
        return x[tuple(slice(b, e) for b, e in zip(self.attrs["begin"], self.attrs["end"]))]


class Concat(Op):
    name = "q.concat"
    num_operands = (1, 1 << 16)
    attributes = {"axis": REQUIRED}

    def infer_types(self):
        types = [v.type for v in self.operands]
        return [concat_type(self, types, self.attrs["axis"])]

    def jax(self, *xs):
        return jnp.concatenate(xs, axis=self.attrs["axis"])


class Cast(Op):
    name = "q.cast"
    attributes = {"dtype": REQUIRED}

    def infer_types(self):
        if self.attrs["dtype"] not in DTYPES:
            raise QirError(f"{self.name}: unknown dtype {self.attrs['dtype']!r}; valid: {', '.join(DTYPES)}")
        return [self.operands[0].type.with_dtype(self.attrs["dtype"])]

    def jax(self, x):
        return x.astype(DTYPES[self.attrs["dtype"]])
