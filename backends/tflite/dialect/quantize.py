"""tfl.quantize (float -> int, or int -> int requantization), tfl.dequantize (int -> f32), and in
float graphs tfl.cast (plain value conversion, e.g. an int32 mask to f32)."""
from __future__ import annotations

import numpy as np

from backends.tflite.dialect.base import INT_RANGES, TflOp, clamp, scale_of, tensor_spec, zero_of
from backends.tflite.fixed_point import quantize_multiplier, requantize, round_half_away
from qir.errors import QirError

REQUANTIZE_ROUNDING = {"i8": "double", "i16": "double"}  # measured, keyed by the input dtype


class Quantize(TflOp):
    """From f32: q = clamp(round(x / s) + z), the division in float32 (measured), halves away from zero.
    From an integer type: q = clamp(requantize(x - z_in) + z_out), real = s_in / s_out."""

    name = "tfl.quantize"
    tflite_op = "QUANTIZE"
    options = {"dtype": "i8"}
    params = ("input_offset", "output_offset", "multiplier", "shift", "rounding")
    rounding_by_dtype = {d: f"from f32: half away; from {d}: {r}" for d, r in REQUANTIZE_ROUNDING.items()}

    def infer_types(self):
        x = self.operands[0].type
        if self.attrs["dtype"] not in self.dtypes or x.dtype not in ("f32",) + self.dtypes:
            raise QirError(f"{self.name}: converts f32/i8/i16 to i8/i16, got {x} to {self.attrs['dtype']}")
        return [x.with_dtype(self.attrs["dtype"])]

    @classmethod
    def derive(cls, operands, results, options):
        sy = results[0]
        if sy is None:
            raise QirError(f"{cls.name}: the result needs a quant spec")
        x = operands[0]
        if x.type.dtype == "f32":
            return {"input_offset": 0, "output_offset": zero_of(sy), "multiplier": 0, "shift": 0, "rounding": "none"}
        sx = tensor_spec(cls.name, x, "input")
        multiplier, shift = quantize_multiplier(scale_of(sx) / scale_of(sy))
        return {"input_offset": -zero_of(sx), "output_offset": zero_of(sy), "multiplier": multiplier, "shift": shift,
                "rounding": REQUANTIZE_ROUNDING[x.type.dtype]}

    def integer(self, x):
        dtype = self.attrs["dtype"]
        if self.operands[0].type.dtype == "f32":
            scale = np.float32(scale_of(self.results[0].quant))
            q = round_half_away((np.asarray(x, np.float32) / scale).astype(np.float64))
            y = np.clip(q, -2.0 ** 40, 2.0 ** 40).astype(np.int64)
        else:
            y = requantize(np.asarray(x, np.int64) + self.attrs["input_offset"], self.attrs["multiplier"],
                           self.attrs["shift"], self.attrs["rounding"])
        return clamp(y + self.attrs["output_offset"], *INT_RANGES[dtype], dtype)


class Dequantize(TflOp):
    """x = f32(s · (q − z)), the product in double."""

    name = "tfl.dequantize"
    tflite_op = "DEQUANTIZE"
    params = ("zero_point",)
    rounding_by_dtype = {"i8": "f32(s·(q−z))", "i16": "f32(s·(q−z))"}

    def infer_types(self):
        x = self.operands[0].type
        if x.dtype not in self.dtypes:
            raise QirError(f"{self.name}: converts i8/i16 to f32, got {x}")
        return [x.with_dtype("f32")]

    @classmethod
    def derive(cls, operands, results, options):
        return {"zero_point": zero_of(tensor_spec(cls.name, operands[0], "input"))}

    def integer(self, x):
        scale = np.float64(scale_of(self.operands[0].quant))
        return (scale * (np.asarray(x, np.int64) - self.attrs["zero_point"])).astype(np.float32)


class Cast(TflOp):
    """Converts values, not quantized integers: float graphs only."""

    name = "tfl.cast"
    tflite_op = "CAST"
    dtypes = ()
    float_dtypes = ("f32", "i32", "bool")
    options = {"dtype": "f32"}

    def infer_types(self):
        x = self.operands[0].type
        self.check_dtype(x)
        if self.attrs["dtype"] not in self.float_dtypes:
            raise QirError(f"{self.name}: casts to {', '.join(self.float_dtypes)}, not {self.attrs['dtype']}")
        return [x.with_dtype(self.attrs["dtype"])]
