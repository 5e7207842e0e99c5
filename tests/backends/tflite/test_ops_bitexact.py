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
