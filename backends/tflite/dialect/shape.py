"""Data movement: tfl.reshape, tfl.transpose, tfl.gather, tfl.concatenation, tfl.slice,
tfl.strided_slice, tfl.select_v2. The integers move unchanged, so input and output must share
one quant spec (checked before emitting); float graphs move f32 (and i32, bool) tensors."""
from __future__ import annotations

import numpy as np

from backends.tflite.dialect.base import TflOp
from qir.errors import QirError
from qir.ops.base import broadcast_shape, concat_type, normalize_axis


class _Move(TflOp):
    dtypes = ("i8", "i16")
    float_dtypes = ("f32", "i32", "bool")  # a float graph also moves token ids and masks


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
        self.check_dtype(types[0])
        return [concat_type(self, types, self.attrs["axis"])]

    def integer(self, *xs):
        return np.concatenate([np.asarray(x) for x in xs], axis=self.attrs["axis"])


class _Window(_Move):
    """A contiguous window of the input; subclasses turn their options into (begin, end) per axis."""

    def bounds(self, shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
        raise NotImplementedError

    def infer_types(self):
        x = self.operands[0].type
        self.check_dtype(x)
        begin, end = self.bounds(x.shape)
        return [x.with_shape(tuple(e - b for b, e in zip(begin, end)))]

    def integer(self, x):
        begin, end = self.bounds(np.shape(x))
        return np.asarray(x)[tuple(slice(b, e) for b, e in zip(begin, end))]


class Slice(_Window):
    """x[begin : begin + size] on every axis (size −1: to the end)."""

    name = "tfl.slice"
    tflite_op = "SLICE"
    options = {"begin": (), "size": ()}

    def bounds(self, shape):
        begin, size = tuple(self.attrs["begin"]), tuple(self.attrs["size"])
        if len(begin) != len(shape) or len(size) != len(shape):
            raise QirError(f"{self.name}: begin {list(begin)} and size {list(size)} need one entry per axis of {list(shape)}")
        ends = []
        for b, n, d in zip(begin, size, shape):
            e = d if n == -1 else b + n
            if not 0 <= b <= e <= d:
                raise QirError(f"{self.name}: begin {list(begin)} size {list(size)} is out of bounds for {list(shape)}")
            ends.append(e)
        return begin, tuple(ends)



class StridedSlice(_Window):
    """x[begin : end : strides] with every mask 0; strides must be 1 here (the unit-stride case
    a transformer needs: splitting heads, rotary halves). Negative begin / end count from the end."""

    name = "tfl.strided_slice"
    tflite_op = "STRIDED_SLICE"
    options = {"begin": (), "end": (), "strides": ()}

    def bounds(self, shape):
        begin, end, strides = (tuple(self.attrs[k]) for k in ("begin", "end", "strides"))
        if not len(begin) == len(end) == len(strides) == len(shape):
            raise QirError(f"{self.name}: begin, end and strides need one entry per axis of {list(shape)}")
        if any(s != 1 for s in strides):
            raise QirError(f"{self.name}: only unit strides are supported, got {list(strides)}")
        out_b, out_e = [], []
        for b, e, d in zip(begin, end, shape):
            b, e = b + d if b < 0 else b, e + d if e < 0 else e
            b, e = min(max(b, 0), d), min(max(e, 0), d)
            if e < b:
                raise QirError(f"{self.name}: begin {list(begin)} end {list(end)} gives an empty range on {list(shape)}")
            out_b.append(b)
            out_e.append(e)
        return tuple(out_b), tuple(out_e)



class SelectV2(_Move):
    """where(condition, x, y) with numpy broadcasting of all three; condition is bool, x and y
    share the result's quant spec (the kernel copies integers, it does not rescale)."""

    name = "tfl.select_v2"
    tflite_op = "SELECT_V2"
    num_operands = 3

    def infer_types(self):
        c, x, y = (v.type for v in self.operands)
        if c.dtype != "bool":
            raise QirError(f"{self.name}: the condition must be bool, got {c}")
        self.check_dtype(x)
        if y.dtype != x.dtype:
            raise QirError(f"{self.name}: x and y must have one dtype, got {x} and {y}")
        if max(c.rank, x.rank, y.rank) > 5:
            raise QirError(f"{self.name}: the runtime broadcasts up to rank 5, got {c}, {x}, {y}")
        return [x.with_shape(broadcast_shape(self, c.shape, x.shape, y.shape))]

    def integer(self, c, x, y):
        return np.where(np.asarray(c, bool), np.asarray(x), np.asarray(y))
