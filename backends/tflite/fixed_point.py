"""TFLite's fixed-point arithmetic, vectorised over numpy int64.

Every function reproduces one routine of tensorflow/lite/kernels/internal (quantization_util.cc,
common.h, gemmlowp's fixedpoint.h) to the bit. int64 holds every intermediate these routines form
from int32 operands, so nothing here overflows where the C++ would not."""
from __future__ import annotations

import math

import numpy as np

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def tflite_round(x: float) -> float:
    """std::round: halves away from zero (Python's round() goes to even)."""
    return math.copysign(math.floor(abs(x) + 0.5), x) if abs(x) < 2 ** 52 else x


def round_half_away(x: np.ndarray) -> np.ndarray:
    """std::round elementwise on float64 values (exact: no `+ 0.5` rounding error)."""
    x = np.asarray(x, dtype=np.float64)
    t = np.trunc(x)
    return np.where(np.abs(x - t) >= 0.5, t + np.sign(x), t)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """QuantizeMultiplier: real = multiplier * 2^(shift - 31), multiplier in [2^30, 2^31)."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(tflite_round(q * (1 << 31)))
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:  # every bit would be shifted out
        return 0, 0
    if shift > 30:  # single rounding cannot shift further left: saturate
        return (1 << 31) - 1, 30
    return q_fixed, shift


def quantize_multiplier_smaller_than_one_exp(real: float) -> tuple[int, int]:
    """QuantizeMultiplierSmallerThanOneExp: same encoding, for 0 < real < 1 (shift <= 0)."""
    if not 0.0 < real < 1.0:
        raise ValueError(f"multiplier {real} is not in (0, 1)")
    multiplier, shift = quantize_multiplier(real)
    if shift > 0:
        raise ValueError(f"multiplier {real} rounds to 1 or more")
    return multiplier, shift


def _as_i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def _c_div_pow2(x: np.ndarray, bits: int) -> np.ndarray:
    """C integer division by 2^bits: truncates toward zero (an arithmetic shift floors)."""
    return np.where(x >= 0, x >> bits, -((-x) >> bits))


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values: round(a * b / 2^31)."""
    a, b = _as_i64(a), _as_i64(b)
    product = a * b
    nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = _c_div_pow2(product + nudge, 31)
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2^exponent, ties away from zero."""
    x, exponent = _as_i64(x), _as_i64(exponent)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_double_rounding(x, multiplier, shift) -> np.ndarray:
    """MultiplyByQuantizedMultiplier (int32 x) without TFLITE_SINGLE_ROUNDING: a rounding high
    multiply, then a second rounding right shift."""
    x, multiplier, shift = _as_i64(x), _as_i64(multiplier), _as_i64(shift)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x << left, multiplier), right)


def multiply_single_rounding(x, multiplier, shift) -> np.ndarray:
    """MultiplyByQuantizedMultiplier (int32 x) with TFLITE_SINGLE_ROUNDING: one rounding shift."""
    x, multiplier, shift = _as_i64(x), _as_i64(multiplier), _as_i64(shift)
    total_shift = 31 - shift
    return (x * multiplier + (np.int64(1) << (total_shift - 1))) >> total_shift


def multiply_int64_accumulator(x, multiplier, shift) -> np.ndarray:
    """MultiplyByQuantizedMultiplier (int64 x, |x| < 2^47): the multiplier is first reduced to
    16 bits so that x * multiplier fits in int64; one rounding shift. Used by int16x8 kernels
    that accumulate in int64. The result is narrowed to int32 as the C++ does, before any clamp."""
    x, multiplier, shift = _as_i64(x), _as_i64(multiplier), _as_i64(shift)
    reduced = np.where(multiplier < 0x7FFF0000, (multiplier + (1 << 15)) >> 16, 0x7FFF)
    total_shift = 15 - shift
    return wrap_int32((x * reduced + (np.int64(1) << (total_shift - 1))) >> total_shift)


def wrap_int32(x) -> np.ndarray:
    """static_cast<int32_t> of an int64: keeps the low 32 bits (two's complement)."""
    return ((_as_i64(x) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def multiply_by_real(x, scale) -> np.ndarray:
    """static_cast<int32_t>(std::round(static_cast<double>(x) * scale)): the reference
    FULLY_CONNECTED kernels scale the accumulator by the double effective scale itself, with no
    integer multiplier. x -> double, the product and the half-away rounding are all IEEE double,
    as in the C++. A result outside int32 becomes INT32_MIN, whatever its sign: the conversion is
    undefined in C++ and x86-64's cvttsd2si gives that (measured: positive overflows come out of
    the runtime at the bottom of the output range)."""
    real = np.asarray(x, dtype=np.int64).astype(np.float64) * np.asarray(scale, dtype=np.float64)
    rounded = round_half_away(real)
    inside = (rounded >= INT32_MIN) & (rounded <= INT32_MAX)
    return np.where(inside, np.where(inside, rounded, 0).astype(np.int64), INT32_MIN)


ROUNDINGS = {
    "single": multiply_single_rounding,
    "double": multiply_double_rounding,
    "int64": multiply_int64_accumulator,
}


def requantize(x, multiplier, shift, rounding: str) -> np.ndarray:
    """x * multiplier * 2^(shift - 31) with the runtime's rounding `rounding`."""
    return ROUNDINGS[rounding](x, multiplier, shift)
