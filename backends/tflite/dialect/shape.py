"""Data movement: tfl.reshape, tfl.transpose, tfl.gather, tfl.concatenation. The integers move
unchanged, so input and output must share one quant spec (checked before emitting)."""
from __future__ import annotations

import numpy as np

from backends.tflite.dialect.base import TflOp
from qir.errors import QirError
from qir.ops.base import normalize_axis


class _Move(TflOp):
    dtypes = ("i8", "i16")

    def check_dtype(self, t):
        if t.dtype not in self.dtypes:
            raise QirError(f"{self.name}: supports {', '.join(self.dtypes)} tensors, got {t}")


class Reshape(_Move):
    name = "tfl.reshape"
    tflite_op = "RESHAPE"
    options = {"shape": ()}

    def infer_types(self):
        x = self.operands[0].type
        self.check_dtype(x)
        shape = tuple(self.attrs["shape"])
        if int(np.prod(shape, dtype=np.int64)) != x.size or any(d < 0 for d in shape):
            raise QirError(f"{self.name}: cannot reshape {x} to {list(shape)}")
        return [x.with_shape(shape)]

    def integer(self, x):
        return np.asarray(x).reshape(self.attrs["shape"])


class Transpose(_Move):
    name = "tfl.transpose"
    tflite_op = "TRANSPOSE"
    options = {"perm": ()}

    def infer_types(self):
        x = self.operands[0].type
        self.check_dtype(x)
        perm = tuple(self.attrs["perm"])
        if sorted(perm) != list(range(x.rank)):
            raise QirError(f"{self.name}: perm {list(perm)} is not a permutation of the {x.rank} axes of {x}")
        return [x.with_shape(tuple(x.shape[p] for p in perm))]

    def integer(self, x):
        return np.transpose(np.asarray(x), self.attrs["perm"])


class Gather(_Move):
    """Slices of `params` at int32 `indices` along `axis`."""

    name = "tfl.gather"
    tflite_op = "GATHER"
    num_operands = 2
    options = {"axis": 0}

    def infer_types(self):
        table, indices = (v.type for v in self.operands)
        self.check_dtype(table)
        if indices.dtype != "i32":
            raise QirError(f"{self.name}: indices must be i32, got {indices}")
        axis = normalize_axis(self, self.attrs["axis"], table.rank)
        return [table.with_shape(table.shape[:axis] + indices.shape + table.shape[axis + 1:])]

    def integer(self, table, indices):
        return np.take(np.asarray(table), np.asarray(indices), axis=self.attrs["axis"])


class Concatenation(_Move):
    name = "tfl.concatenation"
    tflite_op = "CONCATENATION"
    num_operands = (1, 1 << 16)
    options = {"axis": 0}

    def infer_types(self):
        types = [v.type for v in self.operands]
        first = types[0]
        self.check_dtype(first)
        axis = normalize_axis(self, self.attrs["axis"], first.rank)
        for t in types[1:]:
            if t.rank != first.rank or t.dtype != first.dtype or any(
                    a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
                raise QirError(f"{self.name}: {t} cannot be concatenated with {first} along axis {axis}")
        size = sum(t.shape[axis] for t in types)
        return [first.with_shape(first.shape[:axis] + (size,) + first.shape[axis + 1:])]

    def integer(self, *xs):
        return np.concatenate([np.asarray(x) for x in xs], axis=self.attrs["axis"])
