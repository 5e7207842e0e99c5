"""The gemmlowp fixed-point exp and reciprocal that TFLite's int8 softmax kernel uses
(gemmlowp/fixedpoint/fixedpoint.h), vectorised on int64 arrays holding int32 raw values."""
from __future__ import annotations

import numpy as np

from backends.tflite.fixed_point import INT32_MAX, INT32_MIN, rounding_divide_by_pot
from backends.tflite.fixed_point import saturating_rounding_doubling_high_mul as mul


def saturating_shift_left(x, exponent: int) -> np.ndarray:
    """SaturatingRoundingMultiplyByPOT<exponent> for exponent > 0."""
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN, x << exponent))


def exp_on_interval_between_negative_one_quarter_and_0_excl(a):
    """exp(a) for a in [-1/4, 0), a and result with 0 integer bits: a Taylor series around -1/8."""
    constant_term = 1895147668  # exp(-1/8)
    constant_1_over_3 = 715827883
    x = a + (1 << 28)  # a + 1/8
    x2 = mul(x, x)
    x3 = mul(x2, x)
    x4 = mul(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(mul(x4_over_4 + x3, constant_1_over_3) + x2, 1)
    return constant_term + mul(constant_term, x + poly)


# (bit of the input's raw value, fixed-point exp(-2^k)) for k = -2 .. 4, with 26 fractional bits
_BARREL = [(24, 1672461947), (25, 1302514674), (26, 790015084), (27, 290630308), (28, 39332535),
           (29, 720401), (30, 242)]


def exp_on_negative_values(a):
    """exp(a) for a <= 0 given with 5 integer bits (raw = a · 2^26); the result has 0 integer bits."""
    a = np.asarray(a, np.int64)
    one_quarter = 1 << 24
    a_mod_quarter_minus_one_quarter = (a & (one_quarter - 1)) - one_quarter
    result = exp_on_interval_between_negative_one_quarter_and_0_excl(
        saturating_shift_left(a_mod_quarter_minus_one_quarter, 5))
    remainder = a_mod_quarter_minus_one_quarter - a
    for bit, multiplier in _BARREL:
        result = np.where(remainder & (1 << bit), mul(result, multiplier), result)
    return np.where(a == 0, INT32_MAX, result)


def one_over_one_plus_x_for_x_in_0_1(a):
    """1 / (1 + a) for a in [0, 1) with 0 integer bits; three Newton-Raphson steps in 2 integer bits."""
    total = a + INT32_MAX  # RoundingHalfSum(a, One)
    sign = np.where(total >= 0, 1, -1)
    half_denominator = np.where(total + sign >= 0, (total + sign) >> 1, -((-(total + sign)) >> 1))
    x = 1515870810 + mul(half_denominator, -1010580540)  # 48/17 - 32/17 · d
    for _ in range(3):
        one_minus = (1 << 29) - mul(half_denominator, x)
        x = x + saturating_shift_left(mul(x, one_minus), 2)
    return saturating_shift_left(x, 1)


def count_leading_zeros(x):
    x = np.asarray(x, np.int64)
    return np.where(x > 0, 32 - np.frexp(x.astype(np.float64))[1], 32)


def reciprocal(x, integer_digits: int):
    """GetReciprocal: (1 / x with 0 integer bits, num_bits_over_unit) for x > 0 with
    `integer_digits` integer bits."""
    headroom_plus_one = count_leading_zeros(x)
    num_bits_over_unit = integer_digits - headroom_plus_one
    shifted = ((x << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31)
    return one_over_one_plus_x_for_x_in_0_1(shifted), num_bits_over_unit
