"""tfl.rsqrt: 1/sqrt on quantized integers (RMSNorm's scale).

int8 (elementwise.cc RsqrtEvalQuantized): per element, gemmlowp's Newton–Raphson inverse square
root of (x − z_in) (GetInvSqrtQuantizedMultiplierExp), turned into an integer with 20 extra
bits, then requantized by (m, s) from 1 / (sqrtf(s_in) · s_out). int16: a 513-entry
LUTPopulate<int16_t> table of 1/sqrt (float32) read by LUTLookup."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from backends.tflite.dialect.base import INT_RANGES, TflOp, clamp, scale_of, tensor_spec, zero_of
from backends.tflite.fixed_point import quantize_multiplier, requantize, rounding_divide_by_pot
from backends.tflite.fixed_point import saturating_rounding_doubling_high_mul as mul
from backends.tflite.gemmlowp_exp import count_leading_zeros, saturating_shift_left
from backends.tflite.lut import lut_lookup_int16, lut_populate_int16
from qir.errors import QirError

F32 = np.float32
RSQRT_ROUNDING = {"i8": "double", "i16": "float32 table, interpolated (LUTLookup)"}
K_SHIFT = 20


def inv_sqrt_multiplier_exp(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GetInvSqrtQuantizedMultiplierExp(value, kReverseShift) for int32 values >= 1:
    (multiplier, shift) with 1/sqrt(value) = multiplier · 2^(shift − 31)."""
    v = np.asarray(value, np.int64)
    small = v <= 1
    v = np.where(small, 4, v)
    shift = np.full(v.shape, 11, np.int64)
    while np.any(v >= (1 << 29)):
        big = v >= (1 << 29)
        v = np.where(big, v // 4, v)
        shift = shift + big
    pairs = (count_leading_zeros(v) - 1) // 2 - 1
    shift = shift - pairs
    v = v << (2 * pairs)
    x_in = v >> 1  # F3 raw
    half_input = rounding_divide_by_pot(x_in, 1)
    half_three = (1 << 28) + (1 << 27)
    x = np.full(v.shape, 1 << 28, np.int64)  # F3 one
    for _ in range(5):
        x3 = saturating_shift_left(mul(mul(x, x), x), 6)  # F9 -> F3
        diff = _wrap32(mul(half_three, x) - mul(half_input, x3))  # F6, raw subtraction
        x = saturating_shift_left(diff, 3)  # F6 -> F3
    x = mul(x, 1518500250)  # · sqrt(2)/2, F3
    x = np.where(shift < 0, x << np.maximum(-shift, 0), x)
    shift = np.maximum(shift, 0)
    return np.where(small, (1 << 31) - 1, x), np.where(small, 0, -shift)


def _wrap32(x):
    return ((np.asarray(x, np.int64) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _rsqrt_transform(output_scale: float):
    limit = F32(32767) * F32(output_scale)

    def f(v):
        v = F32(v)
        if v <= F32(0):
            return limit
        return F32(1.0) / F32(math.sqrt(float(v)))
    return f


@lru_cache(maxsize=64)
def _table16(s_in: float, s_out: float) -> np.ndarray:
    return lut_populate_int16(s_in, 0, s_out, 0, _rsqrt_transform(s_out), np.float32)


class Rsqrt(TflOp):
    """int8: y = clamp(requantize(requantize(1; m_inv, s_inv + 20); m, s − 20) + z_out), where
    (m_inv, s_inv) is the fixed-point 1/sqrt(x − z_in) and (m, s) encodes 1 / (sqrtf(s_in) · s_out);
    x = z_in gives 127. Inputs below z_in are refused by the runtime at run time."""

    name = "tfl.rsqrt"
    tflite_op = "RSQRT"
    params = ("input_offset", "output_offset", "multiplier", "shift", "rounding")
    rounding_by_dtype = RSQRT_ROUNDING

    float_dtypes = ("f32",)

    def infer_types(self):
        x = self.operands[0].type
        self.check_dtype(x)
        return [x]

    @classmethod
    def derive(cls, operands, results, options):
        sx, sy = tensor_spec(cls.name, operands[0], "input"), results[0]
        if sy is None:
            raise QirError(f"{cls.name}: the result needs a quant spec")
        dtype = operands[0].type.dtype
        if dtype == "i16":
            if zero_of(sx) != 0 or zero_of(sy) != 0:
                raise QirError(f"{cls.name}: int16 needs zero points 0, got {sx} and {sy}")
            return {"input_offset": 0, "output_offset": 0, "multiplier": 0, "shift": 0,
                    "rounding": RSQRT_ROUNDING[dtype]}
        # sqrt of a float is a float, and its product with the output scale too
        denominator = F32(math.sqrt(float(F32(scale_of(sx))))) * F32(scale_of(sy))
        multiplier, shift = quantize_multiplier(1.0 / float(denominator))
        return {"input_offset": -zero_of(sx), "output_offset": zero_of(sy), "multiplier": multiplier,
                "shift": shift, "rounding": RSQRT_ROUNDING[dtype]}

    def integer(self, x):
        dtype = self.results[0].type.dtype
        if dtype == "i16":
            sx, sy = self.operands[0].quant, self.results[0].quant
            return lut_lookup_int16(x, _table16(scale_of(sx), scale_of(sy))).astype(np.int16)
        value = np.asarray(x, np.int64) + self.attrs["input_offset"]
        if np.any(value < 0):
            raise QirError(f"{self.name}: input below its zero point (the runtime refuses negative values)")
        inv_m, inv_s = inv_sqrt_multiplier_exp(np.maximum(value, 1))
        data = requantize(np.ones_like(value), inv_m, inv_s + K_SHIFT, self.attrs["rounding"])
        y = requantize(data, self.attrs["multiplier"], self.attrs["shift"] - K_SHIFT, self.attrs["rounding"])
        y = clamp(y + self.attrs["output_offset"], *INT_RANGES[dtype], dtype)
        return np.where(value == 0, INT_RANGES[dtype][1], y).astype(y.dtype)
