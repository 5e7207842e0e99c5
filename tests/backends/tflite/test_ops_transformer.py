"""The ops a llama / BERT block lowers to (softmax int16, logistic, tanh, select_v2, mean, sum,
rsqrt, slice, strided_slice, neg, gelu) against BUILTIN_REF: 0 differing elements, several
seeded cases per op and dtype, each checked to be non-degenerate."""
from __future__ import annotations

import numpy as np
import pytest

from tests.backends.tflite.helpers import Graph, compare_with_runtime, random_ints, spec
from tests.backends.tflite.test_ops_bitexact import _lively

SEEDS = range(4)
BOTH = ["i8", "i16"]


@pytest.mark.parametrize("seed", range(6))
def test_softmax_int16(seed):
    rng = np.random.default_rng(seed)
    g = Graph()
    rows, depth = int(rng.integers(1, 8)), int(rng.integers(2, 200))
    data = random_ints(rng, "i16", (rows, depth)) // int(rng.choice([1, 4, 16]))
    x = g.arg("x", data, spec("i16", float(rng.uniform(1e-4, 1e-3))))
    beta = float(rng.choice([0.5, 1.0, 2.0]))
    g.ret(g.op("tfl.softmax", x, quant=spec("i16", 1 / 32768, 0), name="y", beta=beta))
    _lively(compare_with_runtime(g, f"softmax i16 [{rows},{depth}] beta={beta} #{seed}"), "y")


def activation_case(op_name, dtype, seed, **options):
    """int8: every input integer once (the whole table); int16: random integers. Seed 0 of int16
    uses the power-of-two input scale 2^-12, which the kernels treat separately."""
    rng = np.random.default_rng(seed)
    g = Graph()
    if dtype == "i8":
        sx = spec("i8", float(rng.uniform(0.01, 0.1)), int(rng.integers(-40, 40)))
        data = rng.permutation(np.arange(-128, 128)).astype(np.int8).reshape(8, 32)
        if op_name == "tfl.logistic":
            out = spec("i8", 1 / 256, -128)
        elif op_name == "tfl.tanh":
            out = spec("i8", float(rng.uniform(1 / 128, 1 / 100)), int(rng.integers(-5, 5)))
        else:
            out = spec("i8", float(sx.scale[0] * rng.uniform(0.6, 1.0)), int(rng.integers(-60, -20)))
    else:
        scale = 2.0 ** -12 if seed == 0 else float(rng.uniform(1e-4, 6e-4))
        sx = spec("i16", scale)
        data = random_ints(rng, "i16", (16, 64))
        out = spec("i16", 1 / 32768) if op_name != "tfl.gelu" else spec("i16", scale * rng.uniform(1.0, 1.2))
    x = g.arg("x", data, sx)
    return g.ret(g.op(op_name, x, quant=out, name="y", **options))


@pytest.mark.parametrize("op_name", ["tfl.logistic", "tfl.tanh", "tfl.gelu"])
@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("seed", SEEDS)
def test_activation(op_name, dtype, seed):
    g = activation_case(op_name, dtype, seed)
    _lively(compare_with_runtime(g, f"{op_name} {dtype} #{seed}"), "y")


@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_gelu_approximate(dtype, seed):
    g = activation_case("tfl.gelu", dtype, 10 + seed, approximate=True)
    _lively(compare_with_runtime(g, f"gelu approximate {dtype} #{seed}"), "y")


def test_silu_graph():
    """SiLU = x · logistic(x) in int16, as a llama MLP lowers it."""
    rng = np.random.default_rng(7)
    g = Graph()
    sx = spec("i16", 3e-4)
    x = g.arg("x", random_ints(rng, "i16", (4, 96)), sx)
    s = g.op("tfl.logistic", x, quant=spec("i16", 1 / 32768), name="s")
    y = g.op("tfl.mul", x, s, quant=spec("i16", 3e-4), name="y")
    g.ret(y, s)
    _lively(compare_with_runtime(g, "silu i16"), "y")


@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("seed", SEEDS)
def test_slices_and_select(dtype, seed):
    """slice, strided_slice (unit strides, negative bounds) and select_v2 with a broadcast
    [T, T] causal mask over [H, T, T] scores, in one graph."""
    rng = np.random.default_rng(seed)
    heads, t, d = int(rng.integers(1, 4)), int(rng.integers(4, 17)), int(rng.integers(8, 33))
    q = spec(dtype, float(rng.uniform(0.001, 0.1)), 0 if dtype == "i16" else int(rng.integers(-40, 40)))
    g = Graph()
    x = g.arg("x", random_ints(rng, dtype, (heads, t, d)), q)
    scores = g.arg("scores", random_ints(rng, dtype, (heads, t, t)), q)
    mask = g.arg("mask", np.tril(np.ones((t, t), bool)) if seed % 2 == 0 else rng.random((t, t)) < 0.5)
    floor = g.arg("floor", np.full((1, 1, 1), -128 if dtype == "i8" else -32768, np.int8 if dtype == "i8" else np.int16), q)
    b0, b1 = int(rng.integers(0, t // 2)), int(rng.integers(0, d // 2))
    s = g.op("tfl.slice", x, quant=q, name="s", begin=[0, b0, b1], size=[heads, -1, d // 2])
    half = d // 2
    ss = g.op("tfl.strided_slice", x, quant=q, name="ss", begin=[0, 0, -half], end=[heads, t - 1, d], strides=[1, 1, 1])
    m = g.op("tfl.select_v2", mask, scores, floor, quant=q, name="m")
    g.ret(s, ss, m)
    runtime = compare_with_runtime(g, f"slice/strided_slice/select_v2 {dtype} #{seed}")
    np.testing.assert_array_equal(runtime["ss"], g.feeds["x"][:, :t - 1, d - half:])
    _lively(runtime, "m")


def test_select_v2_rejects_different_specs():
    from backends.tflite.emit import emit_tflite
    from qir import QirError
    rng = np.random.default_rng(0)
    g = Graph()
    c = g.arg("c", rng.random((2, 8)) < 0.5)
    a = g.arg("a", random_ints(rng, "i8", (2, 8)), spec("i8", 0.1, 0))
    b = g.arg("b", random_ints(rng, "i8", (2, 8)), spec("i8", 0.2, 0))
    g.ret(g.op("tfl.select_v2", c, a, b, quant=spec("i8", 0.1, 0), name="y"))
    with pytest.raises(QirError, match="same quant spec"):
        emit_tflite(g.module)


@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("seed", SEEDS)
def test_mean_last_axis(dtype, seed):
    """Seed 0 keeps the input spec on the output (the runtime still rounds, it does not truncate)."""
    rng = np.random.default_rng(seed)
    g = Graph()
    rows, n = int(rng.integers(8, 32)), int(rng.integers(3, 300))
    zero = 0 if dtype == "i16" else int(rng.integers(-40, 40))
    sx = spec(dtype, float(rng.uniform(0.001, 0.1)), zero)
    out = sx if seed == 0 else spec(dtype, float(sx.scale[0] * rng.uniform(0.05, 0.5)),
                                     0 if dtype == "i16" else int(rng.integers(-20, 20)))
    top = 128 if dtype == "i8" else 32768
    centres = rng.integers(-top // 2, top // 2, (rows, 1))  # rows with different means
    data = np.clip(centres + rng.integers(-top // 2, top // 2, (rows, n)), -top, top - 1).astype(
        np.int8 if dtype == "i8" else np.int16)
    x = g.arg("x", data, sx)
    g.ret(g.op("tfl.mean", x, quant=out, name="y"))
    _lively(compare_with_runtime(g, f"mean {dtype} n={n} #{seed}"), "y")


def rsqrt_case(dtype, seed):
    """int8: every integer from the zero point up (the runtime refuses values below it);
    int16: random non-negative integers."""
    rng = np.random.default_rng(seed)
    g = Graph()
    if dtype == "i8":
        zero = int(rng.integers(-128, -60))
        sx = spec("i8", float(rng.uniform(0.001, 0.1)), zero)
        data = rng.permutation(np.arange(zero, 128)).astype(np.int8)[None, :]
        out = spec("i8", float(1 / np.sqrt(sx.scale[0]) / 200 * rng.uniform(0.5, 1.5)), int(rng.integers(-128, -100)))
    else:
        sx = spec("i16", float(rng.uniform(1e-5, 1e-3)))
        data = rng.integers(0, 32768, (8, 64)).astype(np.int16)
        out = spec("i16", float(1 / np.sqrt(sx.scale[0] * 30) / 32768 * rng.uniform(0.5, 2)))
    x = g.arg("x", data, sx)
    return g.ret(g.op("tfl.rsqrt", x, quant=out, name="y"))


@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("seed", SEEDS)
def test_rsqrt(dtype, seed):
    _lively(compare_with_runtime(rsqrt_case(dtype, seed), f"rsqrt {dtype} #{seed}"), "y")


def test_rsqrt_int8_below_zero_point_is_refused():
    from backends.tflite.emit import emit_tflite
    from backends.tflite.reference import run_integer
    from backends.tflite.runner import run_tflite
    from qir import QirError
    g = rsqrt_case("i8", 0)
    zero = g.module.main.args[0].quant.zero_point[0]
    g.feeds["x"][0, 0] = zero - 1
    with pytest.raises(RuntimeError):
        run_tflite(emit_tflite(g.module), g.feeds)
    with pytest.raises(QirError, match="below its zero point"):
        run_integer(g.module, g.feeds["x"])


def test_rmsnorm_int16_graph():
    """RMSNorm in int16: mul(x, x) -> mean -> rsqrt -> mul(x, ·) -> mul(·, gamma)."""
    rng = np.random.default_rng(3)
    g = Graph()
    d = 64
    x = g.arg("x", random_ints(rng, "i16", (6, d)) // rng.integers(1, 16, (6, 1)).astype(np.int16), spec("i16", 1e-3))
    gamma = g.const("gamma", rng.integers(8000, 32767, (d,)).astype(np.int16), spec("i16", 1 / 16384))
    sq = g.op("tfl.mul", x, x, quant=spec("i16", 1e-6 * 32768 / 32767 * 1.1), name="sq")
    ms = g.op("tfl.mean", sq, quant=spec("i16", 2e-6), name="ms")
    inv = g.op("tfl.rsqrt", ms, quant=spec("i16", 1 / 1024), name="inv")
    n = g.op("tfl.mul", x, inv, quant=spec("i16", 1 / 8192), name="n")
    y = g.op("tfl.mul", n, gamma, quant=spec("i16", 1 / 8192), name="y")
    g.ret(y, inv)
    runtime = compare_with_runtime(g, "rmsnorm i16")
    _lively(runtime, "y")
