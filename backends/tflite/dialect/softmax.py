"""tfl.softmax. int8: gemmlowp fixed-point exp of the (scaled) differences to the row maximum,
a fixed-point reciprocal of their sum, and an output fixed at scale 1/256, zero point -128.
int16: an interpolated exp table over [-10, 0] and a 1/(1 + x) table, output scale 1/32768."""
from __future__ import annotations

import math

import numpy as np

from backends.tflite.dialect.base import TflOp, scale_of, tensor_spec, zero_of
from backends.tflite.fixed_point import multiply_double_rounding, quantize_multiplier, rounding_divide_by_pot
from backends.tflite.gemmlowp_exp import count_leading_zeros, exp_on_negative_values, reciprocal
from backends.tflite.lut import lut_lookup_int16, lut_populate_int16
from qir.errors import QirError

SCALED_DIFF_INTEGER_BITS = 5
ACCUMULATION_INTEGER_BITS = 12


# int16: the range of the int16 integers, and the two tables the runtime builds (in double)
INT16_RANGE = 65535


def _exp_table() -> np.ndarray:
    return lut_populate_int16(10.0 / INT16_RANGE, 32767, 2.0 / INT16_RANGE, 0, math.exp)


def _one_over_one_plus_x_table() -> np.ndarray:
    return lut_populate_int16(1.0 / INT16_RANGE, -32768, 2.0 / INT16_RANGE, 0, lambda v: 1.0 / (1.0 + v))


_TABLES: dict[str, np.ndarray] = {}


def int16_tables() -> tuple[np.ndarray, np.ndarray]:
    if not _TABLES:
        _TABLES["exp"], _TABLES["recip"] = _exp_table(), _one_over_one_plus_x_table()
    return _TABLES["exp"], _TABLES["recip"]


class Softmax(TflOp):
    """Over the last axis.

    int8: input_multiplier / input_shift encode beta · s_x · 2^26 (a multiplier greater than
    one); differences below diff_min (−CalculateInputRadius) give exp = 0.

    int16: input_multiplier / input_shift encode float32(s_x · beta) / (10 / 65535), so that a
    difference to the row maximum of −10.0 (real) maps to −65535; diff_min is unused (0)."""

    name = "tfl.softmax"
    tflite_op = "SOFTMAX"
    dtypes = ("i8", "i16")
    options = {"beta": 1.0}
    params = ("input_multiplier", "input_shift", "diff_min", "rounding")
    rounding_by_dtype = {"i8": "double (gemmlowp fixed point)", "i16": "double, then exp and 1/(1+x) tables"}

    float_dtypes = ("f32",)

    def infer_types(self):
        x = self.operands[0].type
        self.check_dtype(x)
        if x.rank < 1:
            raise QirError(f"{self.name}: runs over the last axis and needs rank 1 or more, got {x}")
        return [x]

    @classmethod
    def derive(cls, operands, results, options):
        sx, sy = tensor_spec(cls.name, operands[0], "input"), results[0]
        if operands[0].type.dtype == "i16":
            return cls.derive_int16(sx, sy, options)
        if sy is None or zero_of(sy) != -128 or abs(scale_of(sy) - 1 / 256) > 0.001 / 256:
            raise QirError(f"{cls.name}: the runtime requires the int8 output spec s=1/256 z=-128, got {sy}")
        beta = float(np.float32(options["beta"]))
        real = min(beta * scale_of(sx) * (1 << (31 - SCALED_DIFF_INTEGER_BITS)), (1 << 31) - 1.0)
        multiplier, shift = quantize_multiplier(real)
        if real <= 1.0 or shift < 0:
            raise QirError(f"{cls.name}: beta · input scale {beta * scale_of(sx):g} is too small for the runtime")
        radius = math.floor(((1 << SCALED_DIFF_INTEGER_BITS) - 1) * (1 << (31 - SCALED_DIFF_INTEGER_BITS))
                            / (1 << shift))
        return {"input_multiplier": multiplier, "input_shift": shift, "diff_min": -radius, "rounding": "double"}

    @classmethod
    def derive_int16(cls, sx, sy, options):
        if sy is None or zero_of(sy) != 0 or abs(scale_of(sy) - 1 / 32768) > 0.001 / 32768:
            raise QirError(f"{cls.name}: the runtime requires the int16 output spec s=1/32768 z=0, got {sy}")
        # params->beta is a float and the product with the scale is formed in float32
        product = float(np.float32(scale_of(sx)) * np.float32(options["beta"]))
        multiplier, shift = quantize_multiplier(product / (10.0 / INT16_RANGE))
        return {"input_multiplier": multiplier, "input_shift": shift, "diff_min": 0, "rounding": "double"}

    def integer(self, x):
        if self.operands[0].type.dtype == "i16":
            return self.integer_int16(x)
        x = np.asarray(x, np.int64)
        diff = x - x.max(axis=-1, keepdims=True)
        valid = diff >= self.attrs["diff_min"]
        scaled = multiply_double_rounding(diff, self.attrs["input_multiplier"], self.attrs["input_shift"])
        exps = np.where(valid, exp_on_negative_values(np.where(valid, scaled, 0)), 0)
        total = np.where(valid, rounding_divide_by_pot(exps, ACCUMULATION_INTEGER_BITS), 0).sum(axis=-1, keepdims=True)
        scale, bits_over_unit = reciprocal(total, ACCUMULATION_INTEGER_BITS)
        from backends.tflite.fixed_point import saturating_rounding_doubling_high_mul as mul
        out = rounding_divide_by_pot(mul(scale, exps), bits_over_unit + 31 - 8) - 128
        out = np.where(valid, np.clip(out, -128, 127), -128)
        return out.astype(np.int8)

    def integer_int16(self, x):
        exp_table, recip_table = int16_tables()
        x = np.asarray(x, np.int64)
        diff = x - x.max(axis=-1, keepdims=True)
        scaled = multiply_double_rounding(diff, self.attrs["input_multiplier"], self.attrs["input_shift"])
        exps = lut_lookup_int16(np.clip(scaled + 32767, -32768, 32767), exp_table)  # Q0.15
        total = exps.sum(axis=-1, keepdims=True)  # Q16.15
        headroom_plus_one = count_leading_zeros(total)
        shifted = ((total << (headroom_plus_one - 1)) + (1 << 13)) >> 14
        # 1/(1 + x) with x = sum − 1, recentred from [0, 65535] to the int16 range
        recip = lut_lookup_int16(np.clip(shifted - ((1 << 15) + (1 << 16)), -32768, 32767), recip_table)
        right_shift = 31 - headroom_plus_one
        out = (exps * recip + (np.int64(1) << (right_shift - 1))) >> right_shift
        return np.clip(out, 0, 32767).astype(np.int16)
