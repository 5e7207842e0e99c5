"""Building one-op tfl modules with random quant specs, and checking them against the runtime."""
from __future__ import annotations

import numpy as np

from backends.tflite.dialect import append_tfl
from backends.tflite.emit import emit_tflite
from backends.tflite.reference import run_integer
from backends.tflite.runner import run_tflite
from qir import Builder, Module, QuantSpec, TensorType

RANGES = {"i8": (-128, 127), "i16": (-32768, 32767)}


def spec(dtype: str, scale, zero=0, axis=None) -> QuantSpec:
    return QuantSpec(bits=int(dtype[1:]), signed=True, scale=scale, zero_point=zero, axis=axis)


def random_spec(rng, dtype: str, low=0.001, high=0.1) -> QuantSpec:
    zero = 0 if dtype == "i16" else int(rng.integers(-40, 40))
    return spec(dtype, float(rng.uniform(low, high)), zero)


def random_ints(rng, dtype: str, shape) -> np.ndarray:
    low, high = RANGES[dtype]
    return rng.integers(low, high + 1, shape).astype(TensorType((), dtype).np_dtype)


class Graph:
    """A module with one function `main` under construction."""

    def __init__(self):
        self.module = Module("case")
        self.b = Builder.new_function(self.module, "main")
        self.feeds: dict[str, np.ndarray] = {}

    def arg(self, name, data: np.ndarray, quant=None):
        self.feeds[name] = data
        return self.b.func.add_arg(name, TensorType(data.shape, data.dtype), quant)

    def const(self, name, data: np.ndarray, quant=None):
        self.module.add_constant(name, data, quant=quant)
        return self.b.func.constant(name)

    def op(self, op_name, *operands, quant, name="", **options):
        return append_tfl(self.b, op_name, *operands, quant=quant, name=name, **options)

    def ret(self, *values):
        self.b.ret(*values)
        return self


def compare_with_runtime(graph: Graph, label: str) -> dict[str, np.ndarray]:
    """Run the graph under BUILTIN_REF and through the integer rules; assert 0 mismatches."""
    runtime = run_tflite(emit_tflite(graph.module), graph.feeds)
    ours = run_integer(graph.module, *(graph.feeds[a.name] for a in graph.module.main.args))
    for value, expected in zip(graph.module.main.outputs, ours):
        got = runtime[value.name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, (label, got.dtype, got.shape)
        mismatches = int(np.count_nonzero(got != expected))
        print(f"{label}: {mismatches} of {got.size} elements differ")
        assert mismatches == 0, f"{label}: {mismatches} of {got.size} elements differ from the runtime"
    return runtime
