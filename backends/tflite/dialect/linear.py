"""tfl.fully_connected and tfl.batch_matmul: integer matmuls with a requantizing multiplier, or float32."""
from __future__ import annotations

import numpy as np

from backends.tflite.dialect.base import (INT_RANGES, TflOp, activation_range, clamp, f32, scale_of,
                                          tensor_spec, zero_of)
from backends.tflite.fixed_point import multiply_by_real, quantize_multiplier, requantize, wrap_int32
from qir.errors import QirError
from qir.ops.base import broadcast_shape

# How each kernel rounds its requantization in ai-edge-litert 2.3 (measured: see
# docs/tflite-backend.md). The reference FULLY_CONNECTED kernels (int8 and int16, per-tensor and
# per-channel) take the float scales and round double(acc) * (s_x * s_w[n] / s_y) in double: no
# integer multiplier. BATCH_MATMUL int16 accumulates in int64, which the runtime requantizes with a
# multiplier reduced to 16 bits.
FC_ROUNDING = {"i8": "float64", "i16": "float64"}
BATCH_MATMUL_ROUNDING = {"i8": "double", "i16": "int64"}


def weight_scales(op_name: str, w) -> list[float]:
    spec = w.quant
    if spec is None or isinstance(spec.scale, str):
        raise QirError(f"{op_name}: weight @{w.name} needs an inline quant spec, has {spec}")
    if spec.scheme == "per-block" or (spec.axis not in (None, 0)):
        raise QirError(f"{op_name}: weight @{w.name} must be per-tensor or per-channel along axis 0, has {spec}")
    return [f32(s) for s in spec.scale]


class FullyConnected(TflOp):
    """y = clamp(requantize(sum_k (x + input_offset) * w[n, k] + b[n]) + output_offset).

    x [..., K] (the leading axes are kept: keep_num_dims), w [N, K] int8 per-tensor or
    per-channel along axis 0 with zero point 0, b [N] int32 (int64 for int16 activations).
    One effective scale per output channel, double(s_x) * double(s_w[n]) / double(s_y), by which
    the reference kernel multiplies the accumulator in double before rounding half away: the
    (multiplier, shift) that Prepare also computes is used only by the optimized kernels."""

    name = "tfl.fully_connected"
    tflite_op = "FULLY_CONNECTED"
    num_operands = (2, 3)
    options = {"fused_activation": "NONE"}
    params = ("input_offset", "output_offset", "scale", "activation_min", "activation_max", "rounding")
    rounding_by_dtype = FC_ROUNDING

    float_dtypes = ("f32",)

    def infer_types(self):
        x, w = self.operands[0].type, self.operands[1].type
        weight_dtype = "f32" if self.is_float else "i8"
        if x.dtype not in self.allowed_dtypes or w.dtype != weight_dtype:
            raise QirError(f"{self.name}: needs {' or '.join(self.allowed_dtypes)} input and {weight_dtype} weight, "
                           f"got {x} and {w}")
        if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
            raise QirError(f"{self.name}: input {x} does not match weight {w} (weight is [out, in])")
        if len(self.operands) == 3:
            b = self.operands[2].type
            want = "f32" if self.is_float else "i64" if x.dtype == "i16" else "i32"
            if b.shape != (w.shape[0],) or b.dtype != want:
                raise QirError(f"{self.name}: bias must be {want}[{w.shape[0]}] for {x.dtype} input, got {b}")
        return [x.with_shape(x.shape[:-1] + (w.shape[0],))]

    @classmethod
    def derive(cls, operands, results, options):
        x, w = operands[0], operands[1]
        sx, sy = tensor_spec(cls.name, x, "input"), results[0]
        if sy is None:
            raise QirError(f"{cls.name}: the result needs a quant spec")
        scales = weight_scales(cls.name, w)
        # the kernel's order: (double(input_scale) * double(filter_scale)) / double(output_scale)
        effective = tuple(scale_of(sx) * s / scale_of(sy) for s in scales)
        low, high = activation_range(options["fused_activation"], sy)
        return {"input_offset": -zero_of(sx), "output_offset": zero_of(sy), "scale": effective,
                "activation_min": low, "activation_max": high, "rounding": FC_ROUNDING[x.type.dtype]}

    def integer(self, x, w, b=None):
        acc = np.einsum("...k,nk->...n", np.asarray(x, np.int64) + self.attrs["input_offset"],
                        np.asarray(w, np.int64))
        if b is not None:
            acc = acc + np.asarray(b, np.int64)
        scale = np.broadcast_to(np.asarray(self.attrs["scale"], np.float64), (w.shape[0],))
        # the offset is added in int32: after an out-of-range product (INT32_MIN) it wraps
        y = wrap_int32(multiply_by_real(acc, scale) + self.attrs["output_offset"])
        return clamp(y, *self.out_range(), self.results[0].type.dtype)


class BatchMatMul(TflOp):
    """y = clamp(requantize(sum_k (a + lhs_offset) * (b + rhs_offset)) + output_offset), batch axes
    broadcast; adj_x / adj_y transpose the last two axes of a / b. real = s_a * s_b / s_y."""

    name = "tfl.batch_matmul"
    tflite_op = "BATCH_MATMUL"
    num_operands = 2
    options = {"adj_x": False, "adj_y": False}
    params = ("lhs_offset", "rhs_offset", "output_offset", "multiplier", "shift", "rounding")
    rounding_by_dtype = BATCH_MATMUL_ROUNDING

    float_dtypes = ("f32",)

    def infer_types(self):
        a, b = (v.type for v in self.operands)
        self.check_dtype(a, "lhs")
        if b.dtype != a.dtype:
            raise QirError(f"{self.name}: operands must have one dtype, got {a} and {b}")
        if not 2 <= a.rank <= 5 or not 2 <= b.rank <= 5:
            raise QirError(f"{self.name}: operands must have rank 2 to 5, got {a} and {b}")
        m, ka = (a.shape[-1], a.shape[-2]) if self.attrs["adj_x"] else (a.shape[-2], a.shape[-1])
        kb, n = (b.shape[-1], b.shape[-2]) if self.attrs["adj_y"] else (b.shape[-2], b.shape[-1])
        if ka != kb:
            raise QirError(f"{self.name}: contraction sizes differ: {a} and {b}")
        return [a.with_shape(broadcast_shape(self, a.shape[:-2], b.shape[:-2]) + (m, n))]

    @classmethod
    def derive(cls, operands, results, options):
        sa = tensor_spec(cls.name, operands[0], "lhs")
        sb = tensor_spec(cls.name, operands[1], "rhs")
        sy = results[0]
        if sy is None:
            raise QirError(f"{cls.name}: the result needs a quant spec")
        multiplier, shift = quantize_multiplier(scale_of(sa) * scale_of(sb) / scale_of(sy))
        return {"lhs_offset": -zero_of(sa), "rhs_offset": -zero_of(sb), "output_offset": zero_of(sy),
                "multiplier": multiplier, "shift": shift, "rounding": BATCH_MATMUL_ROUNDING[operands[0].type.dtype]}

    def integer(self, a, b):
        a = np.asarray(a, np.int64) + self.attrs["lhs_offset"]
        b = np.asarray(b, np.int64) + self.attrs["rhs_offset"]
        if self.attrs["adj_x"]:
            a = np.swapaxes(a, -1, -2)
        if self.attrs["adj_y"]:
            b = np.swapaxes(b, -1, -2)
        acc = np.matmul(a, b)
        y = requantize(acc, self.attrs["multiplier"], self.attrs["shift"], self.attrs["rounding"])
        dtype = self.results[0].type.dtype
        return clamp(y + self.attrs["output_offset"], *INT_RANGES[dtype], dtype)
