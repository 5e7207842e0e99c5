"""tfl.mean, and in float graphs tfl.sum, over any axes.

Quantized: tfl.mean over the last axis with keep_dims (RMSNorm / LayerNorm statistics): the raw
integers summed in int32, z_in · n subtracted, and a requantization by (m, s) from s_in / s_out
with 1/n folded into the multiplier (QuantizedMeanOrSum). A quantized SUM is left out: its int8 /
int16 BUILTIN_REF kernel returns garbage in ai-edge-litert 2.3 (docs/tflite-backend.md)."""
from __future__ import annotations

import numpy as np

from backends.tflite.dialect.base import INT_RANGES, TflOp, clamp, scale_of, tensor_spec, zero_of
from backends.tflite.fixed_point import quantize_multiplier, requantize
from qir.errors import QirError
from qir.ops.reduce import reduced_type

REDUCE_ROUNDING = {"i8": "double", "i16": "double"}


class _Reduce(TflOp):
    options = {"axes": (-1,), "keepdims": True}
    params = ("input_offset", "output_offset", "multiplier", "shift", "rounding")
    rounding_by_dtype = REDUCE_ROUNDING

    float_dtypes = ("f32",)

    def infer_types(self):
        x = self.operands[0].type
        self.check_dtype(x)
        if self.is_float:  # the float kernels reduce any set of axes
            return [reduced_type(self, x, self.attrs["axes"], self.attrs["keepdims"])]
        if x.rank < 1:
            raise QirError(f"{self.name}: needs a tensor of rank 1 or more, got {x}")
        if tuple(self.attrs["axes"]) not in ((-1,), (x.rank - 1,)) or not self.attrs["keepdims"]:
            raise QirError(f"{self.name}: only the last axis with keepdims = true is supported, got "
                           f"axes {list(self.attrs['axes'])} keepdims {self.attrs['keepdims']}")
        return [x.with_shape(x.shape[:-1] + (1,))]

    @classmethod
    def derive(cls, operands, results, options):
        sx, sy = tensor_spec(cls.name, operands[0], "input"), results[0]
        if sy is None:
            raise QirError(f"{cls.name}: the result needs a quant spec")
        multiplier, shift = quantize_multiplier(scale_of(sx) / scale_of(sy))
        return {"input_offset": -zero_of(sx), "output_offset": zero_of(sy), "multiplier": multiplier,
                "shift": shift, "rounding": REDUCE_ROUNDING[operands[0].type.dtype]}



class Mean(_Reduce):
    """y = clamp(requantize(Σx − z_in·n; m', s − k) + z_out) with k = min(floor(log2 n), 32, 31 + s)
    and m' = (m << k) / n (integer division): QuantizedMeanOrSum, also with equal input and output
    specs (measured: the runtime rounds there too, it does not truncate)."""

    name = "tfl.mean"
    tflite_op = "MEAN"

    def integer(self, x):
        x = np.asarray(x, np.int64)
        n = x.shape[-1]
        total = x.sum(axis=-1, keepdims=True)
        dtype = self.results[0].type.dtype
        shift = min(n.bit_length() - 1, 32, 31 + self.attrs["shift"])
        multiplier = (self.attrs["multiplier"] << shift) // n
        y = requantize(total + self.attrs["input_offset"] * n, multiplier, self.attrs["shift"] - shift,
                       self.attrs["rounding"])
        return clamp(y + self.attrs["output_offset"], *INT_RANGES[dtype], dtype)


class Sum(_Reduce):
    """Float only: the int8 / int16 SUM of the reference kernels is broken (see above)."""

    name = "tfl.sum"
    tflite_op = "SUM"
    dtypes = ()
