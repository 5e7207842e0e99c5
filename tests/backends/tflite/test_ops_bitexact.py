"""Every tfl op against ai-edge-litert's reference kernels (BUILTIN_REF): 0 differing elements.

Shapes, scales and zero points are drawn from seeded generators, several cases per op and dtype.
Each case also checks the output is not degenerate (saturated or constant), so a rule that
clamps everything could not pass by accident."""
from __future__ import annotations

import numpy as np
import pytest

from tests.backends.tflite.helpers import Graph, compare_with_runtime, random_ints, random_spec, spec

SEEDS = range(4)
BOTH = ["i8", "i16"]


def _lively(runtime: dict, name: str):
    values = np.unique(runtime[name])
    assert values.size > 4, f"degenerate output ({values.size} distinct values): the case tests nothing"


def _output_scale(rng, dtype, real_range):
    """A scale that maps `real_range` onto most of the dtype's integers (not saturated, not tiny)."""
    steps = 200.0 if dtype == "i8" else 50000.0
    return float(real_range / steps * rng.uniform(0.5, 2.0))


def fully_connected_case(dtype, seed, per_channel=True, activation="NONE", rank=2):
    rng = np.random.default_rng(seed)
    batch, k, n = int(rng.integers(2, 9)), int(rng.integers(8, 96)), int(rng.integers(4, 48))
    sx = random_spec(rng, dtype)
    w_scales = tuple(float(s) for s in rng.uniform(0.002, 0.02, n)) if per_channel else float(rng.uniform(0.002, 0.02))
    g = Graph()
    shape = (batch, k) if rank == 2 else (1, batch, k)
    x = g.arg("x", random_ints(rng, dtype, shape), sx)
    w = g.const("w", rng.integers(-127, 128, (n, k)).astype(np.int8),
                spec("i8", w_scales, 0, axis=0 if per_channel else None))
    bias_dtype = np.int64 if dtype == "i16" else np.int32
    b = g.const("b", rng.integers(-3000, 3000, n).astype(bias_dtype))
    real = sx.scale[0] * np.max(w_scales) * RANGE_OF[dtype] * 128 * np.sqrt(k) / 4
    zero = 0 if dtype == "i16" else int(rng.integers(-40, 40))
    out = spec(dtype, _output_scale(rng, dtype, real), zero)
    y = g.op("tfl.fully_connected", x, w, b, quant=out, name="y", fused_activation=activation)
    return g.ret(y)


@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("seed", SEEDS)
def test_fully_connected_per_channel(dtype, seed):
    _lively(compare_with_runtime(fully_connected_case(dtype, seed), f"fc {dtype} per-channel #{seed}"), "y")


@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_fully_connected_per_tensor_rank3(dtype, seed):
    g = fully_connected_case(dtype, 10 + seed, per_channel=False, rank=3)
    _lively(compare_with_runtime(g, f"fc {dtype} per-tensor rank-3 #{seed}"), "y")


@pytest.mark.parametrize("activation", ["RELU", "RELU6"])
def test_fully_connected_fused_activation(activation):
    g = fully_connected_case("i8", 20, activation=activation)
    runtime = compare_with_runtime(g, f"fc i8 {activation}")
    op = g.module.main.ops[0]
    assert runtime["y"].min() >= op.attrs["activation_min"] > -128


def _near_half_integer(e: float, limit: float) -> int | None:
    """The largest q with q·e < limit among the continued-fraction convergents h/q of 2e whose
    numerator h is odd: q·e is then within 1/(2·q_next) of the half-integer h/2."""
    num, den = (2 * e).as_integer_ratio()
    h0, h1, q0, q1, best = 0, 1, 1, 0, None
    while den:
        a, (num, den) = num // den, (den, num % den)
        h0, h1, q0, q1 = h1, a * h1 + h0, q1, a * q1 + q0
        if q1 * e >= limit:
            break
        if h1 % 2:
            best = q1
    return best


def _through_integer_multiplier(op, x, w, b) -> np.ndarray:
    """What the FC gave with QuantizeMultiplier and single rounding (the multiplier Prepare also
    derives, which only the optimized kernels use): wrong next to ties."""
    from backends.tflite.dialect.base import f32
    from backends.tflite.fixed_point import multiply_single_rounding, quantize_multiplier
    acc = (x.astype(np.int64) + op.attrs["input_offset"]) @ w.astype(np.int64).T + b
    sx, sy = f32(op.operands[0].quant.scale[0]), f32(op.results[0].quant.scale[0])
    mult, shift = zip(*(quantize_multiplier(sx * f32(s) / sy) for s in op.operands[1].quant.scale))
    y = multiply_single_rounding(acc, np.asarray(mult), np.asarray(shift)) + op.attrs["output_offset"]
    return np.clip(y, op.attrs["activation_min"], op.attrs["activation_max"])


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_fully_connected_int16_wide_near_ties(seed):
    """int16 x, per-channel int8 w, 4096 outputs (a logits layer): the reference kernel scales
    the accumulator by the double s_x·s_w[n]/s_y and rounds, which differs from QuantizeMultiplier's
    31-bit multiplier where the product sits within ~2^-31 (relative) of a half. The bias puts
    row 0 of every channel there (±q with q·e next to a half-integer); the other rows are random."""
    rng = np.random.default_rng(100 + seed)
    n, k, batch = 4096, 64, 4
    sx = spec("i16", float(rng.uniform(1e-4, 1e-3)))
    w_scales = tuple(float(np.float32(s)) for s in rng.uniform(0.002, 0.02, n))
    out = spec("i16", float(np.float32(sx.scale[0] * 0.02 * 128 * np.sqrt(k) * 32768 / 4 / 30000)))
    x = random_ints(rng, "i16", (batch, k))
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    b = rng.integers(-3000, 3000, n).astype(np.int64)
    dots = x[0].astype(np.int64) @ w.astype(np.int64).T
    for c in range(n):
        e = float(np.float32(sx.scale[0])) * w_scales[c] / float(np.float32(out.scale[0]))
        q = _near_half_integer(e, 30000.0)
        if q is not None:
            b[c] = (q if c % 2 else -q) - dots[c]
    g = Graph()
    y = g.op("tfl.fully_connected", g.arg("x", x, sx), g.const("w", w, spec("i8", w_scales, 0, axis=0)),
             g.const("b", b), quant=out, name="y")
    g.ret(y)
    runtime = compare_with_runtime(g, f"fc i16 per-channel N={n} near ties #{seed}")
    _lively(runtime, "y")
    # the case discriminates: through the integer multiplier, many near-tie elements come out wrong
    assert np.count_nonzero(_through_integer_multiplier(g.module.main.ops[0], x, w, b) != runtime["y"]) > 100


@pytest.mark.parametrize("dtype", BOTH)
def test_fully_connected_exact_ties_round_half_away(dtype):
    """Power-of-two scales make s_x·s_w[n]/s_y = 2^-3..2^-5 exactly: many products are exact halves,
    and the kernel's std::round takes the negative ones away from zero (a rounding right shift
    would take them up)."""
    rng = np.random.default_rng(7)
    n, k = 64, 8
    zero = 0 if dtype == "i16" else 3
    x = rng.integers(-20, 21, (32, k))
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    g = Graph()
    xv = g.arg("x", x.astype(np.int16 if dtype == "i16" else np.int8), spec(dtype, 2.0 ** -10, zero))
    w_scales = tuple(float(2.0 ** -s) for s in rng.integers(6, 9, n))
    b = rng.integers(-5, 6, n).astype(np.int64 if dtype == "i16" else np.int32)
    out = spec(dtype, 2.0 ** -13, 0 if dtype == "i16" else -4)
    g.ret(g.op("tfl.fully_connected", xv, g.const("w", w, spec("i8", w_scales, 0, axis=0)), g.const("b", b),
               quant=out, name="y"))
    op = g.module.main.ops[0]
    acc = (x + op.attrs["input_offset"]) @ w.astype(np.int64).T + b
    real = acc * (2.0 ** -10 * np.asarray(w_scales) / 2.0 ** -13)  # exact: powers of two
    low, high = INT_RANGE[dtype]
    ties = (real % 1 == 0.5) & (real < 0) & (real + op.attrs["output_offset"] > low)
    assert ties.sum() > 20
    _lively(compare_with_runtime(g, f"fc {dtype} exact ties"), "y")


@pytest.mark.parametrize("output_zero", [5, -5])
def test_fully_connected_product_beyond_int32(output_zero):
    """s_x·s_w/s_y = 10^6: products beyond int32 convert to INT32_MIN (positive ones too), then the
    output zero point is added in int32 — a negative one wraps that to the top of the range."""
    rng = np.random.default_rng(3)
    n, k = 16, 16
    g = Graph()
    x = g.arg("x", random_ints(rng, "i8", (4, k)), spec("i8", 1.0))
    w = g.const("w", rng.integers(-127, 128, (n, k)).astype(np.int8), spec("i8", (1.0,) * n, 0, axis=0))
    b = g.const("b", np.zeros(n, np.int32))
    g.ret(g.op("tfl.fully_connected", x, w, b, quant=spec("i8", 1e-6, output_zero), name="y"))
    runtime = compare_with_runtime(g, f"fc i8 beyond int32, output zero point {output_zero}")
    assert set(np.unique(runtime["y"])) <= {-128, 127}


def binary_case(op_name, dtype, seed):
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(2, 17)), int(rng.integers(8, 129))
    shape_b = (rows, cols) if seed % 2 == 0 else (cols,)  # every other case broadcasts
    g = Graph()
    s1, s2 = random_spec(rng, dtype), random_spec(rng, dtype)
    a = g.arg("a", random_ints(rng, dtype, (rows, cols)), s1)
    b = g.arg("b", random_ints(rng, dtype, shape_b), s2)
    top = RANGE_OF[dtype]
    if op_name == "tfl.mul":
        real = s1.scale[0] * s2.scale[0] * top * top / 4
    else:
        real = (s1.scale[0] + s2.scale[0]) * top
    out = spec(dtype, _output_scale(rng, dtype, real), 0 if dtype == "i16" else int(rng.integers(-40, 40)))
    return g.ret(g.op(op_name, a, b, quant=out, name="y"))


RANGE_OF = {"i8": 128, "i16": 32768}
INT_RANGE = {"i8": (-128, 127), "i16": (-32768, 32767)}


@pytest.mark.parametrize("op_name", ["tfl.add", "tfl.sub", "tfl.mul"])
@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("seed", SEEDS)
def test_elementwise(op_name, dtype, seed):
    _lively(compare_with_runtime(binary_case(op_name, dtype, seed), f"{op_name} {dtype} #{seed}"), "y")


def batch_matmul_case(dtype, seed):
    rng = np.random.default_rng(seed)
    batch, m, k, n = int(rng.integers(1, 4)), int(rng.integers(2, 17)), int(rng.integers(4, 65)), int(rng.integers(2, 33))
    adj_x, adj_y = bool(seed & 1), bool(seed & 2)
    g = Graph()
    s1, s2 = random_spec(rng, dtype), random_spec(rng, dtype)
    a = g.arg("a", random_ints(rng, dtype, (batch, k, m) if adj_x else (batch, m, k)), s1)
    # the rhs drops its batch axis in odd cases: the runtime broadcasts it
    rhs_shape = (n, k) if adj_y else (k, n)
    b = g.arg("b", random_ints(rng, dtype, rhs_shape if seed % 2 else (batch,) + rhs_shape), s2)
    real = s1.scale[0] * s2.scale[0] * RANGE_OF[dtype] ** 2 * np.sqrt(k) / 2
    out = spec(dtype, _output_scale(rng, dtype, real), 0 if dtype == "i16" else int(rng.integers(-40, 40)))
    return g.ret(g.op("tfl.batch_matmul", a, b, quant=out, name="y", adj_x=adj_x, adj_y=adj_y))


@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("seed", SEEDS)
def test_batch_matmul(dtype, seed):
    _lively(compare_with_runtime(batch_matmul_case(dtype, seed), f"batch_matmul {dtype} #{seed}"), "y")


@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("seed", SEEDS)
def test_quantize_from_float(dtype, seed):
    rng = np.random.default_rng(seed)
    out = random_spec(rng, dtype, 0.01, 0.1) if dtype == "i8" else spec("i16", float(rng.uniform(1e-4, 1e-3)))
    g = Graph()
    top = RANGE_OF[dtype] * out.scale[0]
    data = rng.uniform(-1.2 * top, 1.2 * top, (8, 64)).astype(np.float32)
    # exact halves of the step: where round-half-away and round-half-even disagree
    data[0] = ((np.arange(64) - 32) + 0.5).astype(np.float32) * np.float32(out.scale[0])
    x = g.arg("x", data)
    g.ret(g.op("tfl.quantize", x, quant=out, name="y", dtype=dtype))
    _lively(compare_with_runtime(g, f"quantize f32->{dtype} #{seed}"), "y")


@pytest.mark.parametrize("pair", [("i8", "i8"), ("i16", "i16"), ("i8", "i16"), ("i16", "i8")])
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_requantize(pair, seed):
    src, dst = pair
    rng = np.random.default_rng(seed)
    sx = random_spec(rng, src)
    real = sx.scale[0] * RANGE_OF[src]
    zero = 0 if dst == "i16" else int(rng.integers(-40, 40))
    g = Graph()
    x = g.arg("x", random_ints(rng, src, (8, 64)), sx)
    g.ret(g.op("tfl.quantize", x, quant=spec(dst, _output_scale(rng, dst, real), zero), name="y", dtype=dst))
    _lively(compare_with_runtime(g, f"requantize {src}->{dst} #{seed}"), "y")


@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_dequantize(dtype, seed):
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.arg("x", random_ints(rng, dtype, (4, 32)), random_spec(rng, dtype))
    g.ret(g.op("tfl.dequantize", x, quant=None, name="y"))
    _lively(compare_with_runtime(g, f"dequantize {dtype} #{seed}"), "y")


@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_data_movement(dtype, seed):
    """reshape, transpose, gather and concatenation in one graph: they only move integers."""
    rng = np.random.default_rng(seed)
    q = random_spec(rng, dtype)
    g = Graph()
    x = g.arg("x", random_ints(rng, dtype, (2, 6, 8)), q)
    table = g.arg("table", random_ints(rng, dtype, (10, 8)), q)
    ids = g.arg("ids", rng.integers(0, 10, (2, 3)).astype(np.int32))
    r = g.op("tfl.reshape", x, quant=q, name="r", shape=[2, 3, 16])
    t = g.op("tfl.transpose", x, quant=q, name="t", perm=[0, 2, 1])
    e = g.op("tfl.gather", table, ids, quant=q, name="e", axis=0)
    c = g.op("tfl.concatenation", x, e, quant=q, name="c", axis=1)
    g.ret(r, t, e, c)
    runtime = compare_with_runtime(g, f"data movement {dtype} #{seed}")
    np.testing.assert_array_equal(runtime["t"], np.transpose(g.feeds["x"], (0, 2, 1)))


@pytest.mark.parametrize("seed", range(6))
def test_softmax_int8(seed):
    rng = np.random.default_rng(seed)
    g = Graph()
    rows, depth = int(rng.integers(1, 8)), int(rng.integers(2, 100))
    x = g.arg("x", random_ints(rng, "i8", (rows, depth)), random_spec(rng, "i8", 0.02, 0.2))
    beta = float(rng.choice([0.5, 1.0, 2.0]))
    g.ret(g.op("tfl.softmax", x, quant=spec("i8", 1 / 256, -128), name="y", beta=beta))
    runtime = compare_with_runtime(g, f"softmax i8 [{rows},{depth}] beta={beta} #{seed}")
    assert np.unique(runtime["y"]).size > 2
