"""The IR objects: values with use-lists, ops (one class per op, open to extension), functions, modules."""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any, ClassVar, Iterable

import numpy as np

from qir.errors import QirError
from qir.quant import QuantSpec
from qir.types import TensorType

REQUIRED = object()  # marks an attribute without a default in Op.attributes

# op name -> class; filled by Op.__init_subclass__, so ops defined outside qir register the same way
OP_REGISTRY: dict[str, type["Op"]] = {}


class Value:
    """An SSA value: a function argument, an op result, or a reference to a module constant."""

    __slots__ = ("name", "type", "quant", "producer", "uses")

    def __init__(self, name: str, type: TensorType, quant: QuantSpec | None = None, producer: "Op | None" = None):
        self.name, self.type, self.quant, self.producer = name, type, quant, producer
        self.uses: list[tuple[Op, int]] = []  # (user op, operand index)

    @property
    def is_constant(self) -> bool:
        return False

    def replace_all_uses_with(self, other: "Value") -> None:
        for op, index in list(self.uses):
            op.set_operand(index, other)

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class ConstantRef(Value):
    """A use site of module constant `@name` inside a function (one per function and name)."""

    __slots__ = ()

    @property
    def is_constant(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"@{self.name}: {self.type}"


class Op:
    """Base of every op. Subclasses set `name`, `num_operands` and `attributes`, and implement
    `infer_types` (result types from operand types and attributes) and `jax` (the reference rule).
    Defining a subclass with a `name` registers it, so user ops parse and print like built-in ones."""

    name: ClassVar[str] = ""
    num_operands: ClassVar[int | tuple[int, int]] = 1  # exact count or (min, max)
    attributes: ClassVar[dict[str, Any]] = {}  # attribute name -> default (or REQUIRED)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            OP_REGISTRY[cls.name] = cls

    def __init__(self, operands: Iterable[Value], attrs: dict[str, Any] | None = None,
                 result_types: list[TensorType] | None = None, result_names: list[str] | None = None):
        self.operands: list[Value] = []
        for value in operands:
            self._add_operand(value)
        given = dict(attrs or {})
        unknown = sorted(set(given) - set(self.attributes))
        if unknown:
            raise QirError(f"{self.name}: unknown attribute(s) {', '.join(unknown)}; "
                           f"valid: {', '.join(self.attributes) or 'none'}")
        merged = {}
        for key, default in self.attributes.items():
            if key in given:
                merged[key] = _freeze(given[key])
            elif default is REQUIRED:
                raise QirError(f"{self.name}: missing required attribute '{key}'")
            else:
                merged[key] = default
        self.attrs = MappingProxyType(merged)
        self.function: Function | None = None
        self.location: tuple[str, int, int] | None = None  # (file, line, column) when parsed
        self.origin: Op | None = None  # the op this one was lowered from (set by a backend's legalizer)
        if result_types is None:
            self._check_operand_count()
            result_types = self.infer_types()
        names = result_names or [""] * len(result_types)
        self.results = [Value(n, t, producer=self) for n, t in zip(names, result_types)]

    # -- to implement in subclasses --------------------------------------------------
    def infer_types(self) -> list[TensorType]:
        raise NotImplementedError(f"{type(self).__name__} does not infer its result types")

    def verify(self) -> None:
        """Extra checks beyond operand count and type inference; raise QirError with a message."""

    def jax(self, *args):
        raise NotImplementedError(f"{self.name} has no reference rule")

    # -- helpers ---------------------------------------------------------------------
    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise QirError(f"{self.name} has {len(self.results)} results, not one")
        return self.results[0]

    def _add_operand(self, value: Value) -> None:
        if not isinstance(value, Value):
            raise QirError(f"{self.name}: operand {len(self.operands)} is {type(value).__name__}, not a Value")
        value.uses.append((self, len(self.operands)))
        self.operands.append(value)

    def set_operand(self, index: int, value: Value) -> None:
        old = self.operands[index]
        old.uses.remove((self, index))
        value.uses.append((self, index))
        self.operands[index] = value

    def drop_operands(self) -> None:
        for index, value in enumerate(self.operands):
            value.uses.remove((self, index))
        self.operands = []

    def _check_operand_count(self) -> None:
        n = self.num_operands
        low, high = (n, n) if isinstance(n, int) else n
        if not low <= len(self.operands) <= high:
            want = str(low) if low == high else f"{low} to {high}"
            raise QirError(f"{self.name} takes {want} operand(s), got {len(self.operands)}")

    def __repr__(self) -> str:
        from qir.printer import format_op
        return format_op(self)


def _freeze(value):
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()  # numpy scalars and arrays become the Python values the printer knows
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, float) and math.isnan(value):
        raise QirError("NaN is not a valid attribute value")
    return value


class Function:
    """One graph: arguments, ops in order (SSA), and returned values."""

    def __init__(self, name: str, module: "Module | None" = None):
        self.name = name
        self.module = module
        self.args: list[Value] = []
        self.ops: list[Op] = []
        self.outputs: list[Value] = []
        self._constants: dict[str, ConstantRef] = {}
        self._names: set[str] = set()

    def unique_name(self, hint: str) -> str:
        hint = hint or "v"
        if hint not in self._names:
            self._names.add(hint)
            return hint
        i = 1
        while f"{hint}.{i}" in self._names:
            i += 1
        self._names.add(f"{hint}.{i}")
        return f"{hint}.{i}"

    def add_arg(self, name: str, type: TensorType, quant: QuantSpec | None = None) -> Value:
        value = Value(self.unique_name(name), type, quant)
        self.args.append(value)
        return value

    def constant(self, name: str) -> ConstantRef:
        """The reference to module constant @name used inside this function."""
        if name not in self._constants:
            if self.module is None or name not in self.module.constants:
                raise QirError(f"unknown constant @{name}")
            decl = self.module.constants[name]
            self._constants[name] = ConstantRef(name, decl.type, decl.quant)
        return self._constants[name]

    def append(self, op: Op) -> Op:
        return self.insert(len(self.ops), op)

    def insert(self, index: int, op: Op) -> Op:
        for r in op.results:
            r.name = self.unique_name(r.name)
        op.function = self
        self.ops.insert(index, op)
        return op

    def erase(self, op: Op) -> None:
        if any(r.uses for r in op.results) or any(r in self.outputs for r in op.results):
            raise QirError(f"cannot erase {op.name}: its result is still used")
        op.drop_operands()
        self.ops.remove(op)
        op.function = None
        for r in op.results:
            self._names.discard(r.name)

    def used_constants(self) -> list[str]:
        return [n for n, ref in self._constants.items() if ref.uses or any(v is ref for v in self.outputs)]

    @property
    def input_types(self) -> list[TensorType]:
        return [a.type for a in self.args]

    @property
    def output_types(self) -> list[TensorType]:
        return [v.type for v in self.outputs]


class ConstantDecl:
    """A named constant of a module: its type (and quant spec); the data lives in module.weights."""

    __slots__ = ("name", "type", "quant")

    def __init__(self, name: str, type: TensorType, quant: QuantSpec | None = None):
        self.name, self.type, self.quant = name, type, quant


class Module:
    """Functions that share named constants. Weight data is held lazily by `weights`."""

    def __init__(self, name: str, attrs: dict[str, Any] | None = None, weights=None):
        from qir.weights import WeightStore
        self.name = name
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.constants: dict[str, ConstantDecl] = {}
        self.functions: dict[str, Function] = {}
        self.weights: WeightStore = weights if weights is not None else WeightStore()

    def add_constant(self, name: str, data=None, type: TensorType | None = None,
                     quant: QuantSpec | None = None) -> ConstantDecl:
        """Declare @name. `data` is an array or a zero-argument callable returning one (lazy);
        a lazy constant must state its type."""
        if name in self.constants:
            raise QirError(f"constant @{name} is declared twice")
        if type is None:
            if data is None or callable(data):
                raise QirError(f"constant @{name}: a lazy or missing value needs an explicit type")
            type = TensorType(data.shape, data.dtype)
        decl = ConstantDecl(name, type, quant)
        self.constants[name] = decl
        if data is not None:
            self.weights.set(name, data)
        return decl

    def add_function(self, name: str) -> Function:
        if name in self.functions:
            raise QirError(f"function @{name} is defined twice")
        func = Function(name, self)
        self.functions[name] = func
        return func

    @property
    def main(self) -> Function:
        return next(iter(self.functions.values()))

    def is_quantized(self) -> bool:
        """Whether any constant, argument or op result carries a quant spec."""
        return any(c.quant for c in self.constants.values()) or any(
            v.quant for f in self.functions.values() for v in f.args + [r for op in f.ops for r in op.results])

    def parameter_count(self) -> int:
        return sum(c.type.size for c in self.constants.values())

    def __str__(self) -> str:
        from qir.printer import print_module
        return print_module(self)
