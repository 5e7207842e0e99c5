"""The one op the QNN form adds to the core ops: `qnn.convert`, a change of quant spec.

In float it is the identity; its result carries another spec, so the fake-quant interpreter
re-quantizes there exactly as the emitted DequantizeLinear -> QuantizeLinear pair does (HTP
runs that pair as one Convert)."""
from __future__ import annotations

from qir.errors import QirError
from qir.ir import Op


class Convert(Op):
    name = "qnn.convert"
    num_operands = 1

    def infer_types(self):
        x = self.operands[0].type
        if not x.is_float:
            raise QirError(f"{self.name}: input must be a float tensor, got {x}")
        return [x]

    def jax(self, x):
        return x
