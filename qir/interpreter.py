"""The reference semantics: each op's JAX rule, jit-compiled over a whole function."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from qir.errors import QirError
from qir.fake_quant import DynamicRange, fake_quant
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

    def spec(self, value, specs: dict | None = None):
        """The quant spec the fake-quant trace applies to a value or constant (`specs` overrides)."""
        key = ("@" if value.is_constant else "%") + value.name
        default = self.module.constants[value.name].quant if value.is_constant else value.quant
        return (specs or {}).get(key, default)

    def quantized(self, weights, array, spec, constant=False):
        """`array` quantize-dequantized by `spec` in fake-quant mode (parameters read from `weights`)."""
        if self.mode != "fake-quant" or spec is None or not jnp.issubdtype(array.dtype, jnp.floating):
            return array
        if isinstance(spec, DynamicRange):
            return fake_quant(array, spec.spec, *spec.params(array))
        param = lambda p: weights[p] if isinstance(p, str) else jnp.asarray(p)  # noqa: E731
        return fake_quant(array, spec, param(spec.scale), param(spec.zero_point),
                          None if spec.block_scale is None else param(spec.block_scale), exact=constant)

    def run_ops(self, weights, ops, env: dict, specs: dict | None = None) -> dict:
        """Run `ops` in program order on `env` (id(value) -> array, holding every non-constant
        operand); constants are read from `weights` (quantized) on first use."""
        for op in ops:
            for v in op.operands:
                if id(v) not in env and v.is_constant:
                    env[id(v)] = self.quantized(weights, weights[v.name], self.spec(v, specs), constant=True)
            out = op.jax(*(env[id(v)] for v in op.operands))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            for value, array in zip(op.results, outs):
                env[id(value)] = self.quantized(weights, array, self.spec(value, specs))
        return env

    def _trace(self, func: Function, observe=None, specs=None):
        def run(weights, *inputs):
            env = {id(a): self.quantized(weights, x, self.spec(a, specs)) for a, x in zip(func.args, inputs)}
            for ref in func._constants.values():  # every one, so that a returned constant is there too
                if ref.name in weights:
                    env[id(ref)] = self.quantized(weights, weights[ref.name], self.spec(ref, specs), constant=True)
            self.run_ops(weights, func.ops, env, specs)
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
