"""The reference semantics: each op's JAX rule, jit-compiled over a whole function."""
from __future__ import annotations

import jax
import numpy as np

from qir.errors import QirError
from qir.ir import Function, Module

jax.config.update("jax_enable_x64", False)


class Interpreter:
    """Runs functions of a module. Weights are read once and passed to the jitted function as
    arguments (not baked into the program), so compiling stays fast on large models."""

    def __init__(self, module: Module, mode: str = "float"):
        if mode != "float":
            raise QirError(f"interpreter mode {mode!r} is not available; modes: float")
        self.module, self.mode = module, mode
        self._compiled: dict[str, object] = {}
        self._weights: dict[str, jax.Array] = {}

    def weights_for(self, func: Function) -> dict[str, jax.Array]:
        names = func.used_constants()
        for name in names:
            if name not in self._weights:
                self._weights[name] = jax.numpy.asarray(self.module.weights.get(name))
        return {name: self._weights[name] for name in names}

    def _trace(self, func: Function):
        def run(weights, *inputs):
            env = {id(a): x for a, x in zip(func.args, inputs)}
            for name, ref in func._constants.items():
                if name in weights:
                    env[id(ref)] = weights[name]
            for op in func.ops:
                out = op.jax(*(env[id(v)] for v in op.operands))
                outs = out if isinstance(out, (tuple, list)) else (out,)
                for value, array in zip(op.results, outs):
                    env[id(value)] = array
            return tuple(env[id(v)] for v in func.outputs)
        return jax.jit(run)

    def run(self, *inputs, function: str | None = None) -> list[np.ndarray]:
        func = self.module.functions[function] if function else self.module.main
        if len(inputs) != len(func.args):
            raise QirError(f"@{func.name} takes {len(func.args)} input(s), got {len(inputs)}")
        arrays = []
        for arg, x in zip(func.args, inputs):
            x = np.asarray(x)
            if tuple(x.shape) != arg.type.shape:
                raise QirError(f"input %{arg.name}: expected shape {list(arg.type.shape)}, got {list(x.shape)}")
            arrays.append(x.astype(arg.type.np_dtype, copy=False))
        if func.name not in self._compiled:
            self._compiled[func.name] = self._trace(func)
        outs = self._compiled[func.name](self.weights_for(func), *arrays)
        return [np.asarray(o) for o in outs]


def interpret(module: Module, *inputs, function: str | None = None) -> list[np.ndarray]:
    """One-shot convenience: run a function of `module` in float mode."""
    return Interpreter(module).run(*inputs, function=function)
