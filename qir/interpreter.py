"""The reference semantics: each op's JAX rule, jit-compiled over a whole function."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from qir.errors import QirError
from qir.fake_quant import fake_quant
from qir.ir import Function, Module

jax.config.update("jax_enable_x64", False)


MODES = ("float", "fake-quant")


class Interpreter:
    """Runs functions of a module. Weights are read once and passed to the jitted function as
    arguments (not baked into the program), so compiling stays fast on large models.

    mode "float" ignores quant specs (the model as the checkpoint defines it); "fake-quant"
    quantize-dequantizes every value and constant that carries a spec, differentiably."""

    def __init__(self, module: Module, mode: str = "float"):
        if mode not in MODES:
            raise QirError(f"interpreter mode {mode!r} is not available; modes: {', '.join(MODES)}")
        self.module, self.mode = module, mode
        self._compiled: dict[tuple, object] = {}
        self._weights: dict[str, jax.Array] = {}

    def _param_names(self, func: Function) -> list[str]:
        """Constants named by the quant specs that fake-quant mode must read."""
        if self.mode != "fake-quant":
            return []
        specs = [self.module.constants[n].quant for n in func.used_constants()]
        specs += [a.quant for a in func.args] + [r.quant for op in func.ops for r in op.results]
        return sorted({p for s in specs if s is not None for p in s.constants})

    def weights_for(self, func: Function) -> dict[str, jax.Array]:
        names = func.used_constants() + self._param_names(func)
        for name in names:
            if name not in self._weights:
                self._weights[name] = jax.numpy.asarray(self.module.weights.get(name))
        return {name: self._weights[name] for name in names}

    def _trace(self, func: Function, observe=None, specs=None):
        fake = self.mode == "fake-quant"
        specs = specs or {}

        def run(weights, *inputs):
            def quantized(array, spec, constant=False):
                if not fake or spec is None or not jnp.issubdtype(array.dtype, jnp.floating):
                    return array
                param = lambda p: weights[p] if isinstance(p, str) else jnp.asarray(p)  # noqa: E731
                return fake_quant(array, spec, param(spec.scale), param(spec.zero_point),
                                  None if spec.block_scale is None else param(spec.block_scale), exact=constant)

            env = {id(a): quantized(x, specs.get("%" + a.name, a.quant)) for a, x in zip(func.args, inputs)}
            for name, ref in func._constants.items():
                if name in weights:
                    env[id(ref)] = quantized(weights[name], specs.get("@" + name, self.module.constants[name].quant),
                                             constant=True)
            for op in func.ops:
                out = op.jax(*(env[id(v)] for v in op.operands))
                outs = out if isinstance(out, (tuple, list)) else (out,)
                for value, array in zip(op.results, outs):
                    env[id(value)] = quantized(array, specs.get("%" + value.name, value.quant))
            outputs = tuple(env[id(v)] for v in func.outputs)
            if observe is None:
                return outputs
            values = func.args + [r for op in func.ops for r in op.results]
            observed = {v.name: observe(v.name, env[id(v)]) for v in values
                        if jnp.issubdtype(env[id(v)].dtype, jnp.floating)}
            return outputs, observed
        return jax.jit(run)

    def traced(self, function: str | None = None, observe=None, specs: dict | None = None):
        """The jitted `run(weights, *inputs)` of a function, returning its outputs (and, with `observe`,
        the observed summaries as `run_observed` does), for callers that differentiate it in `weights`.
        `specs` replaces quant specs in this trace only, keyed "%value" or "@constant": a learning
        pass points scales and zero points at entries of `weights` it computes from its parameters."""
        func = self.module.functions[function] if function else self.module.main
        return self._trace(func, observe, specs)

    def _prepare(self, inputs, function):
        func = self.module.functions[function] if function else self.module.main
        if len(inputs) != len(func.args):
            raise QirError(f"@{func.name} takes {len(func.args)} input(s), got {len(inputs)}")
        arrays = []
        for arg, x in zip(func.args, inputs):
            x = np.asarray(x)
            if tuple(x.shape) != arg.type.shape:
                raise QirError(f"input %{arg.name}: expected shape {list(arg.type.shape)}, got {list(x.shape)}")
            arrays.append(x.astype(arg.type.np_dtype, copy=False))
        return func, arrays

    def run_observed(self, *inputs, observe, key: str = "observe", function: str | None = None):
        """Run and also return {value name: observe(name, array)} for every float argument and op result,
        computed inside the compiled function (so only the small summaries leave it). `key` names
        the observer for caching: one compilation per (function, key); an observer that closes over
        Python data must use a new key whenever that data changes."""
        func, arrays = self._prepare(inputs, function)
        if (func.name, key) not in self._compiled:
            self._compiled[(func.name, key)] = self._trace(func, observe)
        outs, observed = self._compiled[(func.name, key)](self.weights_for(func), *arrays)
        return [np.asarray(o) for o in outs], observed

    def run(self, *inputs, function: str | None = None) -> list[np.ndarray]:
        func, arrays = self._prepare(inputs, function)
        if (func.name, None) not in self._compiled:
            self._compiled[(func.name, None)] = self._trace(func)
        outs = self._compiled[(func.name, None)](self.weights_for(func), *arrays)
        return [np.asarray(o) for o in outs]


def interpret(module: Module, *inputs, function: str | None = None) -> list[np.ndarray]:
    """One-shot convenience: run a function of `module` in float mode."""
    return Interpreter(module).run(*inputs, function=function)
