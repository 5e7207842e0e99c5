"""A builder for writing graphs in Python: `b.linear(x, w)` appends a `q.linear` op and returns its result."""
from __future__ import annotations

import numpy as np

from qir.errors import QirError
from qir.ir import OP_REGISTRY, Function, Module, Op, Value
from qir.types import TensorType


class Builder:
    """Appends ops to the end of a function. Any registered op is a method: the op name after
    its dialect prefix (`q.rms_norm` -> `b.rms_norm`), or call `b.op("dialect.name", ...)`."""

    def __init__(self, func: Function, dialect: str = "q"):
        self.func, self.module, self.dialect = func, func.module, dialect

    @classmethod
    def new_function(cls, module: Module, name: str) -> "Builder":
        return cls(module.add_function(name))

    def arg(self, name: str, shape, dtype="f32") -> Value:
        return self.func.add_arg(name, TensorType(tuple(shape), dtype))

    def const(self, name: str, data=None, shape=None, dtype=None) -> Value:
        """Declare module constant @name (unless it exists) and return its use in this function.
        `data` may be an array or a callable producing one (then give shape and dtype)."""
        if name not in self.module.constants:
            type = TensorType(tuple(shape), dtype) if shape is not None else None
            if data is not None and not callable(data):
                data = np.asarray(data) if dtype is None else np.asarray(data, dtype=TensorType((), dtype).np_dtype)
            self.module.add_constant(name, data, type)
        return self.func.constant(name)

    def op(self, op_name: str, *operands: Value, name: str = "", **attrs) -> Value:
        op = self.append(op_name, *operands, names=[name] if name else None, **attrs)
        return op.result

    def append(self, op_name: str, *operands: Value, names: list[str] | None = None, **attrs) -> Op:
        cls = OP_REGISTRY.get(op_name)
        if cls is None:
            raise QirError(f"unknown op '{op_name}'")
        op = cls(list(operands), attrs)
        for result, hint in zip(op.results, names or []):
            result.name = hint
        for i, result in enumerate(op.results):
            result.name = result.name or f"{len(self.func.ops)}" + (f".{i}" if len(op.results) > 1 else "")
        self.func.append(op)
        return op

    def ret(self, *values: Value) -> None:
        self.func.outputs = list(values)

    def __getattr__(self, attr: str):
        op_name = f"{self.dialect}.{attr}"
        if op_name not in OP_REGISTRY:
            raise AttributeError(f"no op {op_name} (known: {', '.join(sorted(OP_REGISTRY))})")
        return lambda *operands, name="", **attrs: self.op(op_name, *operands, name=name, **attrs)
