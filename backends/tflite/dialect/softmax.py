"""tfl.softmax on int8: gemmlowp fixed-point exp of the (scaled) differences to the row maximum,
a fixed-point reciprocal of their sum, and an output fixed at scale 1/256, zero point -128."""
from __future__ import annotations

import math

import numpy as np

from backends.tflite.dialect.base import TflOp, scale_of, tensor_spec, zero_of
from backends.tflite.fixed_point import multiply_double_rounding, quantize_multiplier, rounding_divide_by_pot
from backends.tflite.gemmlowp_exp import exp_on_negative_values, reciprocal
from qir.errors import QirError

SCALED_DIFF_INTEGER_BITS = 5
ACCUMULATION_INTEGER_BITS = 12


class Softmax(TflOp):
    """Over the last axis. input_multiplier / input_shift encode beta · s_x · 2^26 (a multiplier
    greater than one); differences below diff_min (−CalculateInputRadius) give exp = 0."""

    name = "tfl.softmax"
    tflite_op = "SOFTMAX"
    dtypes = ("i8",)
    options = {"beta": 1.0}
    params = ("input_multiplier", "input_shift", "diff_min", "rounding")
    rounding_by_dtype = {"i8": "double (gemmlowp fixed point)"}

    def infer_types(self):
        x = self.operands[0].type
        if x.dtype not in self.dtypes or x.rank < 1:
            raise QirError(f"{self.name}: supports i8 tensors (softmax over the last axis), got {x}")
        return [x]

    @classmethod
    def derive(cls, operands, results, options):
        sx, sy = tensor_spec(cls.name, operands[0], "input"), results[0]
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

    def integer(self, x):
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
