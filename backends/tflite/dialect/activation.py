"""Elementwise activations: tfl.logistic, tfl.tanh, tfl.gelu (quantized or float32), tfl.relu
(float32; quantized graphs fuse it into the producing kernel's clamp).

int8 runs through a 256-entry table that `LUTPopulate<int8_t>` fills in float32 when the model
is prepared. int16 LOGISTIC and TANH rescale the input to 1/(3·4096) (or use a power-of-two
scale directly) and interpolate the fixed `sigmoid_table_uint16`; int16 GELU uses a 513-entry
`LUTPopulate<int16_t>` table (float32) read by `LUTLookup`."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from backends.tflite.dialect.base import TflOp, scale_of, tensor_spec, zero_of
from backends.tflite.lut import (SIGMOID_TABLE_UINT16, checked_log2, f32_of, lut_lookup_int16,
                                 lut_populate_int16, lut_populate_int8)
from qir.errors import QirError

F32 = np.float32


def _sigmoid(v):
    return F32(1.0) / (F32(1.0) + F32(math.exp(-float(v))))


_tanh = f32_of(math.tanh)


def _gelu(v):
    # reference/gelu.h GeluTransform: 0.5f · x · erfc(x · −M_SQRT1_2), float32
    return F32(0.5) * v * F32(math.erfc(float(v * F32(-math.sqrt(0.5)))))


def _gelu_approximate(v):
    # 0.5f · x · (1 + tanh(sqrt(2/π) · (x + 0.044715 · x³))), float32
    inner = F32(math.sqrt(2.0 / math.pi)) * (v + F32(0.044715) * v * v * v)
    return F32(0.5) * v * (F32(1.0) + F32(math.tanh(float(inner))))


TRANSFORMS = {"tfl.logistic": _sigmoid, "tfl.tanh": _tanh, "tfl.gelu": _gelu, "tfl.gelu/approximate": _gelu_approximate}


@lru_cache(maxsize=256)
def _table8(key: str, s_in: float, z_in: int, s_out: float, z_out: int) -> np.ndarray:
    return lut_populate_int8(s_in, z_in, s_out, z_out, TRANSFORMS[key])


@lru_cache(maxsize=64)
def _table16(key: str, s_in: float, s_out: float) -> np.ndarray:
    return lut_populate_int16(s_in, 0, s_out, 0, TRANSFORMS[key], np.float32)


class _Activation(TflOp):
    """One input, one output of the same dtype and shape."""

    lut_key = ""
    float_dtypes = ("f32",)

    def infer_types(self):
        x = self.operands[0].type
        self.check_dtype(x)
        return [x]

    @classmethod
    def specs(cls, operands, results):
        sx, sy = tensor_spec(cls.name, operands[0], "input"), results[0]
        if sy is None:
            raise QirError(f"{cls.name}: the result needs a quant spec")
        return sx, sy

    def table8(self) -> np.ndarray:
        sx, sy = self.operands[0].quant, self.results[0].quant
        return _table8(self.lut_key or self.name, scale_of(sx), zero_of(sx), scale_of(sy), zero_of(sy))

    def lookup8(self, x):
        return self.table8()[np.asarray(x, np.int64) + 128].astype(np.int8)


class _SigmoidTable16(_Activation):
    """int16 LOGISTIC / TANH: the input rescaled to 3·4096 steps per unit ((x·m + round) >> shift),
    or for a power-of-two input scale (multiplier 0) multiplied by 3 << shift; then the
    sigmoid table interpolated on the absolute value, mirrored for negative inputs."""

    params = ("input_multiplier", "input_left_shift")
    pot_shifts: tuple[int, ...] = (0,)

    @classmethod
    def derive(cls, operands, results, options):
        sx, sy = cls.specs(operands, results)
        dtype = operands[0].type.dtype
        if dtype == "i8":
            return cls.derive_int8(sx, sy)
        if zero_of(sx) != 0 or zero_of(sy) != 0:
            raise QirError(f"{cls.name}: int16 needs zero points 0, got {sx} and {sy}")
        pot_out, log2_out = checked_log2(scale_of(sy))
        if not pot_out or log2_out != -15:
            raise QirError(f"{cls.name}: the runtime requires the int16 output scale 1/32768, got {sy}")
        pot, log2_in = checked_log2(scale_of(sx))
        shift = 12 + log2_in
        if pot and shift in cls.pot_shifts:
            return {"input_multiplier": 0, "input_left_shift": shift}
        multiplier, shift = scale_of(sx) * 4096.0 * 3.0, 0
        while multiplier <= 32767.0 / 2.0 and shift <= 30:
            shift += 1
            multiplier *= 2.0
        if multiplier >= 32768.0 * 4:
            raise QirError(f"{cls.name}: input scale {scale_of(sx):g} is too large for the int16 kernel")
        return {"input_multiplier": int(multiplier), "input_left_shift": shift}

    @classmethod
    def derive_int8(cls, sx, sy):
        return {"input_multiplier": 0, "input_left_shift": 0}

    def rescaled_input(self, x):
        multiplier, shift = self.attrs["input_multiplier"], self.attrs["input_left_shift"]
        if multiplier == 0:  # power-of-two scale
            multiplier, shift = 3 << shift, 0
        rounding = (1 << (shift - 1)) if shift > 0 else 0
        return (np.asarray(x, np.int64) * multiplier + rounding) >> shift


class Logistic(_SigmoidTable16):
    """int8: a table of 1/(1 + exp(−x)) (float32); the output scale must be 1/256.
    int16: 512 steps of the sigmoid table per ±10.7, interpolated in 9 fractional bits."""

    name = "tfl.logistic"
    tflite_op = "LOGISTIC"
    rounding_by_dtype = {"i8": "float32 table (LUTPopulate)", "i16": "sigmoid_table_uint16, interpolated"}

    @classmethod
    def derive_int8(cls, sx, sy):
        if scale_of(sy) != 1 / 256:
            raise QirError(f"{cls.name}: the runtime requires the int8 output scale 1/256, got {sy}")
        return {"input_multiplier": 0, "input_left_shift": 0}

    def integer(self, x):
        if self.operands[0].type.dtype == "i8":
            return self.lookup8(x)
        v = self.rescaled_input(x)
        a = np.abs(v)
        uh = a >> 9
        index = np.minimum(uh, 254)
        ua, ub = SIGMOID_TABLE_UINT16[index], SIGMOID_TABLE_UINT16[index + 1]
        result = np.where(uh >= 255, 0x7FFF << 10, (ua << 9) + (a & 0x1FF) * (ub - ua))
        result = np.where(v >= 0, result + (1 << 9), (1 << 25) - result + (1 << 9) - 1)
        return (result >> 10).astype(np.int16)


class Tanh(_SigmoidTable16):
    """int8: a table of tanh (float32), any output spec. int16: tanh(x) = 2·sigmoid(2x) − 1 on the
    sigmoid table, 8 fractional bits of interpolation; output scale 1/32768."""

    name = "tfl.tanh"
    tflite_op = "TANH"
    pot_shifts = (0, 1)
    rounding_by_dtype = {"i8": "float32 table (LUTPopulate)", "i16": "sigmoid_table_uint16, interpolated"}

    def integer(self, x):
        if self.operands[0].type.dtype == "i8":
            return self.lookup8(x)
        v = self.rescaled_input(x)
        a = np.abs(v)
        uh = a >> 8
        index = np.minimum(uh, 254)
        ua, ub = SIGMOID_TABLE_UINT16[index], SIGMOID_TABLE_UINT16[index + 1]
        result = np.where(uh >= 255, 0xFFFF << 8, (ua << 8) + (a & 0xFF) * (ub - ua))
        result = np.where(v >= 0, result - (1 << 23) + (1 << 7), -result + (1 << 23) + (1 << 7) - 1)
        return (result >> 8).astype(np.int16)


class Gelu(_Activation):
    """A table of GELU: int8 256 entries, int16 513 interpolated entries (both float32);
    `approximate` selects the tanh form. Any output spec (int16: zero points 0)."""

    name = "tfl.gelu"
    tflite_op = "GELU"
    options = {"approximate": False}
    rounding_by_dtype = {"i8": "float32 table (LUTPopulate)", "i16": "float32 table, interpolated (LUTLookup)"}

    @classmethod
    def derive(cls, operands, results, options):
        sx, sy = cls.specs(operands, results)
        if operands[0].type.dtype == "i16" and (zero_of(sx) != 0 or zero_of(sy) != 0):
            raise QirError(f"{cls.name}: int16 needs zero points 0, got {sx} and {sy}")
        return {}

    @property
    def lut_key(self):
        return "tfl.gelu/approximate" if self.attrs["approximate"] else "tfl.gelu"

    def integer(self, x):
        if self.operands[0].type.dtype == "i8":
            return self.lookup8(x)
        sx, sy = self.operands[0].quant, self.results[0].quant
        table = _table16(self.lut_key, scale_of(sx), scale_of(sy))
        return lut_lookup_int16(x, table).astype(np.int16)


class Relu(_Activation):
    name = "tfl.relu"
    tflite_op = "RELU"
    dtypes = ()
