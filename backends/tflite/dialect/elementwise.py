"""tfl.add, tfl.sub, tfl.mul: broadcasting binary ops on quantized integers or float32;
tfl.div and tfl.maximum in float graphs only."""
from __future__ import annotations

import numpy as np

from backends.tflite.dialect.base import TflOp, activation_range, clamp, scale_of, tensor_spec, zero_of
from backends.tflite.fixed_point import (quantize_multiplier, quantize_multiplier_smaller_than_one_exp,
                                         requantize)
from qir.errors import QirError
from qir.ops.base import broadcast_shape

# measured in ai-edge-litert 2.3 (docs/tflite-backend.md): both int8 and int16 round twice
ADD_ROUNDING = {"i8": "double", "i16": "double"}
MUL_ROUNDING = {"i8": "double", "i16": "double"}


class _Binary(TflOp):
    num_operands = 2
    options = {"fused_activation": "NONE"}
    float_dtypes = ("f32",)

    def infer_types(self):
        a, b = (v.type for v in self.operands)
        self.check_dtype(a, "input 1")
        if b.dtype != a.dtype:
            raise QirError(f"{self.name}: operands must have one dtype, got {a} and {b}")
        if max(a.rank, b.rank) > 6:
            raise QirError(f"{self.name}: the runtime broadcasts up to rank 6, got {a} and {b}")
        return [a.with_shape(broadcast_shape(self, a.shape, b.shape))]

    @classmethod
    def specs(cls, operands, results):
        s1 = tensor_spec(cls.name, operands[0], "input 1")
        s2 = tensor_spec(cls.name, operands[1], "input 2")
        if results[0] is None:
            raise QirError(f"{cls.name}: the result needs a quant spec")
        return s1, s2, results[0]


class _AddSub(_Binary):
    """Both inputs are shifted left by `left_shift` (20 for int8, 15 for int16), scaled to a common
    scale 2·max(s1, s2) by multipliers < 1, added (or subtracted), then scaled to the output:
    real_i = s_i / (2·max(s1, s2)), real_out = 2·max(s1, s2) / (2^left_shift · s_y)."""

    params = ("input1_offset", "input2_offset", "output_offset", "left_shift", "input1_multiplier",
              "input1_shift", "input2_multiplier", "input2_shift", "output_multiplier", "output_shift",
              "activation_min", "activation_max", "rounding")
    sign = 1
    rounding_by_dtype = ADD_ROUNDING

    @classmethod
    def derive(cls, operands, results, options):
        s1, s2, sy = cls.specs(operands, results)
        dtype = operands[0].type.dtype
        left_shift = 15 if dtype == "i16" else 20
        twice_max = 2 * max(scale_of(s1), scale_of(s2))
        m1, sh1 = quantize_multiplier_smaller_than_one_exp(scale_of(s1) / twice_max)
        m2, sh2 = quantize_multiplier_smaller_than_one_exp(scale_of(s2) / twice_max)
        mo, sho = quantize_multiplier_smaller_than_one_exp(twice_max / ((1 << left_shift) * scale_of(sy)))
        low, high = activation_range(options["fused_activation"], sy)
        return {"input1_offset": -zero_of(s1), "input2_offset": -zero_of(s2), "output_offset": zero_of(sy),
                "left_shift": left_shift, "input1_multiplier": m1, "input1_shift": sh1, "input2_multiplier": m2,
                "input2_shift": sh2, "output_multiplier": mo, "output_shift": sho, "activation_min": low,
                "activation_max": high, "rounding": ADD_ROUNDING[dtype]}

    def integer(self, a, b):
        at, rounding = self.attrs, self.attrs["rounding"]
        x1 = (np.asarray(a, np.int64) + at["input1_offset"]) << at["left_shift"]
        x2 = (np.asarray(b, np.int64) + at["input2_offset"]) << at["left_shift"]
        y1 = requantize(x1, at["input1_multiplier"], at["input1_shift"], rounding)
        y2 = requantize(x2, at["input2_multiplier"], at["input2_shift"], rounding)
        y = requantize(y1 + self.sign * y2, at["output_multiplier"], at["output_shift"], rounding)
        return clamp(y + at["output_offset"], *self.out_range(), self.results[0].type.dtype)


class Add(_AddSub):
    name = "tfl.add"
    tflite_op = "ADD"


class Sub(_AddSub):
    name = "tfl.sub"
    tflite_op = "SUB"
    sign = -1


class Mul(_Binary):
    """y = clamp(requantize((a + input1_offset) * (b + input2_offset)) + output_offset),
    real = s1 · s2 / s_y, evaluated in float32 as the runtime does."""

    name = "tfl.mul"
    tflite_op = "MUL"
    params = ("input1_offset", "input2_offset", "output_offset", "multiplier", "shift",
              "activation_min", "activation_max", "rounding")
    rounding_by_dtype = MUL_ROUNDING

    @classmethod
    def derive(cls, operands, results, options):
        s1, s2, sy = cls.specs(operands, results)
        dtype = operands[0].type.dtype
        # mul.cc forms this product and quotient in float32 (no cast to double), which moves the
        # multiplier's low bits: measured, and it changes results at near-ties
        real = np.float32(scale_of(s1)) * np.float32(scale_of(s2)) / np.float32(scale_of(sy))
        multiplier, shift = quantize_multiplier(float(real))
        low, high = activation_range(options["fused_activation"], sy)
        return {"input1_offset": -zero_of(s1), "input2_offset": -zero_of(s2), "output_offset": zero_of(sy),
                "multiplier": multiplier, "shift": shift, "activation_min": low, "activation_max": high,
                "rounding": MUL_ROUNDING[dtype]}

    def integer(self, a, b):
        at = self.attrs
        product = (np.asarray(a, np.int64) + at["input1_offset"]) * (np.asarray(b, np.int64) + at["input2_offset"])
        y = requantize(product, at["multiplier"], at["shift"], at["rounding"])
        return clamp(y + at["output_offset"], *self.out_range(), self.results[0].type.dtype)


class Div(_Binary):
    name = "tfl.div"
    tflite_op = "DIV"
    dtypes = ()


class Maximum(_Binary):
    name = "tfl.maximum"
    tflite_op = "MAXIMUM"
    dtypes = ()
    options = {}

