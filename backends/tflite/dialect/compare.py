"""tfl.not_equal: an int32 tensor (an attention mask of 0 / 1) turned into the bool condition
SELECT_V2 takes. Plain integers, no quant specs: the kernel compares values as they are."""
from __future__ import annotations

import numpy as np

from backends.tflite.dialect.base import TflOp
from qir.errors import QirError
from qir.ops.base import broadcast_shape


class NotEqual(TflOp):
    """x != y elementwise, broadcasting (the reference kernel broadcasts up to rank 4)."""

    name = "tfl.not_equal"
    tflite_op = "NOT_EQUAL"
    num_operands = 2
    dtypes = ("i32",)
    support_note = "i32 -> bool, compared without quantization"

    def infer_types(self):
        a, b = (v.type for v in self.operands)
        if a.dtype not in self.dtypes or b.dtype != a.dtype:
            raise QirError(f"{self.name}: operands must both be i32, got {a} and {b}")
        if max(a.rank, b.rank) > 4:
            raise QirError(f"{self.name}: the runtime broadcasts up to rank 4, got {a} and {b}")
        return [a.with_shape(broadcast_shape(self, a.shape, b.shape)).with_dtype("bool")]

    def verify(self):
        super().verify()
        for v in list(self.operands) + list(self.results):
            if v.quant is not None:
                raise QirError(f"{self.name}: compares plain integers; %{v.name} must have no quant spec")

    def integer(self, a, b):
        return np.not_equal(np.asarray(a), np.asarray(b))
