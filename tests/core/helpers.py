"""Shared checks for the core tests: seeded inputs, running every function, use-list integrity."""
from __future__ import annotations

import contextlib

import numpy as np

import qir


def seeded_inputs(func: qir.Function, seed: int = 0) -> list[np.ndarray]:
    """One array per argument of `func`: normal floats, small non-negative integers, or booleans."""
    rng = np.random.default_rng(seed)
    arrays = []
    for arg in func.args:
        t = arg.type
        if t.is_float:
            arrays.append(rng.standard_normal(t.shape).astype(t.np_dtype))
        elif t.dtype == "bool":
            arrays.append(rng.random(t.shape) < 0.5)
        else:
            arrays.append(rng.integers(0, 3, size=t.shape).astype(t.np_dtype))
    return arrays


def run_all(module: qir.Module, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Interpret every function of `module` on seeded inputs."""
    interpreter = qir.Interpreter(module)
    return {name: interpreter.run(*seeded_inputs(func, seed), function=name)
            for name, func in module.functions.items()}


def clone(module: qir.Module) -> qir.Module:
    """An independent copy through the text form, sharing the weight data."""
    copy = qir.parse(qir.print_module(module))
    for name in module.weights.names():
        copy.weights.set(name, module.weights.get(name))
    return copy


def assert_same_outputs(a: dict, b: dict, rtol: float = 0.0, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert len(a[name]) == len(b[name])
        for x, y in zip(a[name], b[name]):
            assert x.shape == y.shape and x.dtype == y.dtype
            if rtol == 0.0 and atol == 0.0:
                np.testing.assert_array_equal(x, y)
            else:
                np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def check_use_lists(module: qir.Module) -> None:
    """Every operand's use-list holds (op, index) exactly once, and every use points back."""
    for func in module.functions.values():
        live = {id(op) for op in func.ops}
        values = list(func.args) + [r for op in func.ops for r in op.results] + list(func._constants.values())
        for op in func.ops:
            for index, operand in enumerate(op.operands):
                assert operand.uses.count((op, index)) == 1, f"{op.name} operand {index} missing from uses"
        for value in values:
            for user, index in value.uses:
                assert id(user) in live, f"%{value.name} is used by an op no longer in @{func.name}"
                assert user.operands[index] is value


@contextlib.contextmanager
def restored_pass_registry():
    """Passes registered inside the block are unregistered after it (built-in ones stay)."""
    from qir.passes import PASS_REGISTRY, load_builtin_passes
    load_builtin_passes()  # registered by importing their modules, which happens only once
    before = dict(PASS_REGISTRY)
    try:
        yield
    finally:
        PASS_REGISTRY.clear()
        PASS_REGISTRY.update(before)
