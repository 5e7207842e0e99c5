"""Shared shapes of ops: unary elementwise, broadcasting binary, and common checks."""
from __future__ import annotations

import numpy as np

from qir.errors import QirError
from qir.ir import Op
from qir.types import TensorType


def broadcast_shape(op: Op, *shapes) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise QirError(f"{op.name}: shapes {' and '.join(map(str, shapes))} do not broadcast") from None


def normalize_axis(op: Op, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise QirError(f"{op.name}: axis {axis} is out of range for rank {rank}")
    return axis % rank


def concat_type(op: Op, types: list[TensorType], axis: int) -> TensorType:
    """The type of `types` joined along `axis`: same rank and dtype, equal sizes off the axis."""
    first = types[0]
    axis = normalize_axis(op, axis, first.rank)
    for t in types[1:]:
        if t.rank != first.rank or t.dtype != first.dtype or any(
                a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
            raise QirError(f"{op.name}: {t} cannot be concatenated with {first} along axis {axis}")
    size = sum(t.shape[axis] for t in types)
    return first.with_shape(first.shape[:axis] + (size,) + first.shape[axis + 1:])


def require_float(op: Op, value_type: TensorType, what: str = "input") -> None:
    if not value_type.is_float:
        raise QirError(f"{op.name}: {what} must be a float tensor, got {value_type}")


class UnaryOp(Op):
    """Elementwise on one float tensor; the result has the operand's type."""

    num_operands = 1

    def infer_types(self):
        require_float(self, self.operands[0].type)
        return [self.operands[0].type]


class BinaryOp(Op):
    """Elementwise on two tensors with numpy broadcasting; the result takes the first operand's dtype."""

    num_operands = 2

    def infer_types(self):
        a, b = (v.type for v in self.operands)
        return [TensorType(broadcast_shape(self, a.shape, b.shape), a.dtype)]
