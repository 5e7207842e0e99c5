"""TFLite's lookup tables (tensorflow/lite/kernels/internal/common.h): `LUTPopulate` for int8
(a 256-entry table, one float evaluation per input integer) and int16 (513 entries sampled
over the input range, read with linear interpolation by `LUTLookup`), and the fixed
`sigmoid_table_uint16` of the int16 LOGISTIC / TANH kernels.

The runtime builds its tables in float32 or double; `np.float32` scalars reproduce the float32
arithmetic step by step, and each transcendental is evaluated in double and rounded once to
float32 (what a correctly rounded `expf` / `tanhf` / `erff` returns)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from backends.tflite.fixed_point import tflite_round

F32 = np.float32

# sigmoid(i / 24) in 0.16 fixed point, i = 0 .. 255 (common.h); tanh(x) = 2·sigmoid(2x) − 1
SIGMOID_TABLE_UINT16 = np.array([
    32768, 33451, 34133, 34813, 35493, 36169, 36843, 37513, 38180, 38841, 39498,
    40149, 40794, 41432, 42064, 42688, 43304, 43912, 44511, 45102, 45683, 46255,
    46817, 47369, 47911, 48443, 48964, 49475, 49975, 50464, 50942, 51409, 51865,
    52311, 52745, 53169, 53581, 53983, 54374, 54755, 55125, 55485, 55834, 56174,
    56503, 56823, 57133, 57433, 57724, 58007, 58280, 58544, 58800, 59048, 59288,
    59519, 59743, 59959, 60168, 60370, 60565, 60753, 60935, 61110, 61279, 61441,
    61599, 61750, 61896, 62036, 62172, 62302, 62428, 62549, 62666, 62778, 62886,
    62990, 63090, 63186, 63279, 63368, 63454, 63536, 63615, 63691, 63765, 63835,
    63903, 63968, 64030, 64090, 64148, 64204, 64257, 64308, 64357, 64405, 64450,
    64494, 64536, 64576, 64614, 64652, 64687, 64721, 64754, 64786, 64816, 64845,
    64873, 64900, 64926, 64950, 64974, 64997, 65019, 65039, 65060, 65079, 65097,
    65115, 65132, 65149, 65164, 65179, 65194, 65208, 65221, 65234, 65246, 65258,
    65269, 65280, 65291, 65301, 65310, 65319, 65328, 65337, 65345, 65352, 65360,
    65367, 65374, 65381, 65387, 65393, 65399, 65404, 65410, 65415, 65420, 65425,
    65429, 65433, 65438, 65442, 65445, 65449, 65453, 65456, 65459, 65462, 65465,
    65468, 65471, 65474, 65476, 65479, 65481, 65483, 65485, 65488, 65489, 65491,
    65493, 65495, 65497, 65498, 65500, 65501, 65503, 65504, 65505, 65507, 65508,
    65509, 65510, 65511, 65512, 65513, 65514, 65515, 65516, 65517, 65517, 65518,
    65519, 65520, 65520, 65521, 65522, 65522, 65523, 65523, 65524, 65524, 65525,
    65525, 65526, 65526, 65526, 65527, 65527, 65528, 65528, 65528, 65529, 65529,
    65529, 65529, 65530, 65530, 65530, 65530, 65531, 65531, 65531, 65531, 65531,
    65532, 65532, 65532, 65532, 65532, 65532, 65533, 65533, 65533, 65533, 65533,
    65533, 65533, 65533, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534,
    65534, 65534, 65535], np.int64)


def f32_of(fn: Callable[[float], float]) -> Callable[[np.float32], np.float32]:
    """A float32 libm function (expf, tanhf, erff): evaluated in double, rounded once."""
    return lambda v: F32(fn(float(v)))


def lut_populate_int8(input_scale: float, input_zero: int, output_scale: float, output_zero: int,
                      transform: Callable[[np.float32], np.float32]) -> np.ndarray:
    """LUTPopulateInt8: entry [q + 128] = clamp(round(transform(s_in·(q − z_in)) / s_out) + z_out),
    in float32. Returned indexed by q + 128 (the runtime indexes by the uint8 bit pattern)."""
    table = np.empty(256, np.int64)
    s_in, s_out = F32(input_scale), F32(output_scale)
    for q in range(-128, 128):
        dequantized = s_in * F32(q - input_zero)
        rescaled = tflite_round(float(transform(dequantized) / s_out))
        table[q + 128] = min(max(int(rescaled) + output_zero, -128), 127)
    return table


def lut_populate_int16(input_scale, input_zero: int, output_scale, output_zero: int, transform,
                       float_type=np.float64) -> np.ndarray:
    """LUTPopulateInt16<FloatT>: 512 samples over the input range, each biased by half the
    interpolation error at its midpoint, plus a 513th value for the last slope."""
    T = float_type
    s_in, s_out = T(input_scale), T(output_scale)
    input_min = s_in * T(-32768 - input_zero)
    input_max = s_in * T(32767 - input_zero)
    output_min = s_out * T(-32768 - output_zero)
    output_max = s_out * T(32767 - output_zero)
    steps = 512
    step = (input_max - input_min) / T(steps)
    half_step = step / T(2)
    scaling_inv = T(65536) / (output_max - output_min)

    def rnd(x):
        return T(tflite_round(float(x)))

    table = np.empty(steps + 1, np.int64)
    for i in range(steps):
        val = T(transform(input_min + T(i) * step))
        val_mid = T(transform(input_min + T(i) * step + half_step))
        val_next = T(transform(input_min + T(i + 1) * step))
        sample = rnd(val * scaling_inv)
        mid_interp = rnd((val_next * scaling_inv + rnd(val * scaling_inv)) / T(2))
        mid = rnd(val_mid * scaling_inv)
        bias = rnd((mid_interp - mid) / T(2))
        table[i] = int(min(max(sample - bias, T(-32768)), T(32767)))
    table[steps] = int(min(max(rnd(T(transform(input_max)) * scaling_inv), T(-32768)), T(32767)))
    return table


def _wrap16(x):
    return ((np.asarray(x, np.int64) + (1 << 15)) & 0xFFFF) - (1 << 15)


def lut_lookup_int16(value, table: np.ndarray) -> np.ndarray:
    """LUTLookup: base lut[256 + (v >> 7)] plus the rounded slope times the 7 low bits."""
    value = np.asarray(value, np.int64)
    index = 256 + (value >> 7)
    offset = value & 0x7F
    base = table[index]
    slope = _wrap16(table[index + 1] - base)
    delta = (slope * offset + 64) >> 7
    return _wrap16(base + delta)


def checked_log2(x: float) -> tuple[bool, int]:
    """CheckedLog2 (float32): whether x is a power of two (within 1e-3 in log2), and the rounded log2."""
    x_log2 = F32(F32(math.log(F32(x))) * F32(1.0 / float(F32(math.log(2.0)))))
    rounded = F32(tflite_round(float(x_log2)))
    return bool(abs(x_log2 - rounded) < F32(1e-3)), int(rounded)
