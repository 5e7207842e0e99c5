"""A runtime attention mask (int32, as the application passes it) against BUILTIN_REF: reshape of
plain int32, NOT_EQUAL against 0 into a bool condition, and SELECT_V2 broadcasting that condition
over int8 / int16 scores. 0 differing elements, several seeded cases per dtype."""
from __future__ import annotations

import numpy as np
import pytest

from backends.tflite.emit import emit_tflite
from qir import QirError
from tests.backends.tflite.helpers import Graph, compare_with_runtime, random_ints, spec
from tests.backends.tflite.test_ops_bitexact import _lively

SEEDS = range(4)


def mask_values(rng, length: int) -> np.ndarray:
    """Right padding (1 then 0) in even cases; in odd ones any int32, where only 0 means padding."""
    if rng.integers(2) == 0:
        mask = np.zeros((1, length), np.int32)
        mask[0, :int(rng.integers(1, length))] = 1
        return mask
    values = rng.choice(np.array([0, 1, 2, -1, 7, -(1 << 31), (1 << 31) - 1], np.int32), (1, length))
    values[0, 0] = 0
    return values


@pytest.mark.parametrize("seed", SEEDS)
def test_not_equal_int32(seed):
    rng = np.random.default_rng(seed)
    length = int(rng.integers(4, 40))
    g = Graph()
    mask = g.arg("mask", mask_values(rng, length))
    other = g.arg("other", rng.integers(-2, 3, (3, 1, length)).astype(np.int32))  # broadcasts both ways
    zero = g.const("zero", np.zeros((), np.int32))
    c0 = g.op("tfl.not_equal", mask, zero, quant=None, name="c0")
    c1 = g.op("tfl.not_equal", mask, other, quant=None, name="c1")
    runtime = compare_with_runtime(g.ret(c0, c1), f"not_equal i32 #{seed}")
    np.testing.assert_array_equal(runtime["c0"], g.feeds["mask"] != 0)
    assert runtime["c0"].dtype == bool and runtime["c1"].shape == (3, 1, length)
    assert 0 < runtime["c0"].sum() < length  # both outcomes occur


@pytest.mark.parametrize("dtype", ["i8", "i16"])
@pytest.mark.parametrize("seed", SEEDS)
def test_runtime_mask_selects_scores(dtype, seed):
    """attention_mask [1, L] -> reshape [1, 1, 1, L] -> != 0 -> select over [1, H, L, L] scores, and
    the same mask reshaped to [1, 1, L] over a constant row (the pooling weights' logits)."""
    rng = np.random.default_rng(seed)
    heads, length = int(rng.integers(1, 5)), int(rng.integers(4, 33))
    q = spec(dtype, float(rng.uniform(0.001, 0.1)), 0 if dtype == "i16" else int(rng.integers(-40, 40)))
    low = -128 if dtype == "i8" else -32768
    g = Graph()
    mask = g.arg("attention_mask", mask_values(rng, length))
    scores = g.arg("scores", random_ints(rng, dtype, (1, heads, length, length)), q)
    fill = g.const("fill", np.full((), low, np.int8 if dtype == "i8" else np.int16), q)
    row = g.const("row", random_ints(rng, dtype, (1, 1, length)), q)
    zero = g.const("zero", np.zeros((), np.int32))
    keys = g.op("tfl.reshape", mask, quant=None, name="key_mask", shape=[1, 1, 1, length])
    masked = g.op("tfl.select_v2", g.op("tfl.not_equal", keys, zero, quant=None, name="keep"), scores, fill,
                  quant=q, name="masked")
    tokens = g.op("tfl.reshape", mask, quant=None, name="token_mask", shape=[1, 1, length])
    pooled = g.op("tfl.select_v2", g.op("tfl.not_equal", tokens, zero, quant=None, name="real"), row, fill,
                  quant=q, name="pooled")
    runtime = compare_with_runtime(g.ret(masked, pooled), f"runtime mask select {dtype} #{seed}")
    keep = (g.feeds["attention_mask"] != 0).reshape(1, 1, 1, length)
    np.testing.assert_array_equal(runtime["masked"], np.where(keep, g.feeds["scores"], low))
    _lively(runtime, "masked")


def test_not_equal_refuses_quantized_and_narrow_operands():
    g = Graph()
    x = g.arg("x", np.zeros((2, 4), np.int8), spec("i8", 0.1, 0))
    zero = g.const("zero", np.zeros((), np.int8), spec("i8", 0.1, 0))
    with pytest.raises(QirError, match="tfl.not_equal: operands must both be i32"):
        g.op("tfl.not_equal", x, zero, quant=None, name="c")
    g = Graph()
    m = g.arg("m", np.zeros((2, 4), np.int32))
    z = g.const("z", np.zeros((), np.int32), spec("i8", 0.1, 0))
    g.ret(g.op("tfl.not_equal", m, z, quant=None, name="c"))
    with pytest.raises(QirError, match="%z must have no quant spec"):
        emit_tflite(g.module)
