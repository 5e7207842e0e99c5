"""Run a function of `tfl.` ops through each op's integer rule: what the runtime's reference
kernels compute, bit for bit, without the runtime."""
from __future__ import annotations

import numpy as np

from qir.errors import QirError
from qir.ir import Module


def run_integer(module: Module, *inputs, function: str | None = None) -> list[np.ndarray]:
    func = module.functions[function] if function else module.main
    if len(inputs) != len(func.args):
        raise QirError(f"@{func.name} takes {len(func.args)} input(s), got {len(inputs)}")
    env: dict[int, np.ndarray] = {}
    for arg, x in zip(func.args, inputs):
        x = np.asarray(x)
        if x.shape != arg.type.shape:
            raise QirError(f"input %{arg.name}: expected shape {list(arg.type.shape)}, got {list(x.shape)}")
        env[id(arg)] = x.astype(arg.type.np_dtype, copy=False)

    def read(value):
        if id(value) not in env:
            if not value.is_constant:
                raise QirError(f"%{value.name} is used before it is defined")
            env[id(value)] = module.weights.get(value.name).astype(value.type.np_dtype).reshape(value.type.shape)
        return env[id(value)]

    for op in func.ops:
        if not hasattr(op, "integer"):
            raise QirError(f"{op.name} has no integer rule")
        out = op.integer(*(read(v) for v in op.operands))
        env[id(op.results[0])] = out
    return [read(v) for v in func.outputs]
