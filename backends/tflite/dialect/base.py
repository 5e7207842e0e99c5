"""The base of every `tfl.` op: options, integer parameters derived from quant specs, and the
integer rule that reproduces the runtime's reference kernel. An op none of whose operands
carries a quant spec is a float op: it has only its options and runs the runtime's float kernel."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from qir.builder import Builder
from qir.errors import QirError
from qir.ir import REQUIRED, Op, Value
from qir.quant import QuantSpec
from qir.types import TensorType

# the TFLite storage types of quantized activations, and their integer ranges
INT_RANGES = {"i8": (-128, 127), "i16": (-32768, 32767), "i32": (-(1 << 31), (1 << 31) - 1)}
ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")


def f32(x: float) -> float:
    """The file stores scales as float32: every parameter is derived from that rounded value."""
    return float(np.float32(x))


def tensor_spec(op_name: str, value: Value, what: str) -> QuantSpec:
    """The per-tensor quant spec of an activation (per-channel specs only exist on weights)."""
    spec = value.quant
    if spec is None:
        raise QirError(f"{op_name}: {what} %{value.name} has no quant spec")
    if spec.scheme != "per-tensor" or isinstance(spec.scale, str) or isinstance(spec.zero_point, str):
        raise QirError(f"{op_name}: {what} %{value.name} needs an inline per-tensor quant spec, has {spec}")
    if spec.storage != value.type.dtype:
        raise QirError(f"{op_name}: {what} %{value.name} is {value.type.dtype} but its quant spec stores {spec.storage}")
    return spec


def scale_of(spec: QuantSpec) -> float:
    return f32(spec.scale[0])


def zero_of(spec: QuantSpec) -> int:
    return int(spec.zero_point[0])


def activation_range(activation: str, spec: QuantSpec) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: the fused activation as a clamp in the output's integers."""
    qmin, qmax = INT_RANGES[spec.storage]
    scale, zero = np.float32(scale_of(spec)), zero_of(spec)

    def quantize(f):
        from backends.tflite.fixed_point import tflite_round
        return zero + int(tflite_round(float(np.float32(f) / scale)))

    if activation == "RELU":
        return max(qmin, quantize(0.0)), qmax
    if activation == "RELU6":
        return max(qmin, quantize(0.0)), min(qmax, quantize(6.0))
    if activation == "RELU_N1_TO_1":
        return max(qmin, quantize(-1.0)), min(qmax, quantize(1.0))
    return qmin, qmax


class TflOp(Op):
    """A `tfl.` op. Subclasses declare `options` (user-chosen attributes with defaults) and
    `params` (integer parameters derived from the quant specs by `derive`); the attributes are
    options then params, in that order. `verify` re-derives the params and checks they match,
    so the printed IR always shows what the runtime will compute.

    A float op (dtypes in `float_dtypes`, no operand with a quant spec) has only its options:
    the runtime's float kernel needs nothing derived, and qir's float interpreter is its reference."""

    tflite_op: ClassVar[str] = ""  # the BuiltinOperator name
    options: ClassVar[dict[str, Any]] = {}
    params: ClassVar[tuple[str, ...]] = ()
    # activation dtypes the op supports, e.g. ("i8", "i16"): the support table is built from these
    dtypes: ClassVar[tuple[str, ...]] = ("i8", "i16")
    # dtypes the op takes without quant specs (a float graph); () for ops that exist only quantized
    float_dtypes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, operands, attrs=None, result_types=None, result_names=None):
        operands = list(operands)
        self.is_float = self.float_operands(operands)
        if self.is_float:
            self.attributes = dict(self.options)  # a float kernel takes no integer parameters
        super().__init__(operands, attrs, result_types, result_names)

    def __init_subclass__(cls, **kwargs):
        if "attributes" not in cls.__dict__:
            cls.attributes = {**cls.options, **{p: REQUIRED for p in cls.params}}
        super().__init_subclass__(**kwargs)

    # -- to implement ----------------------------------------------------------------------------
    @classmethod
    def derive(cls, operands: list[Value], results: list[QuantSpec | None], options: dict) -> dict[str, Any]:
        """The integer parameters the runtime computes from the operands' and results' specs."""
        return {}

    def integer(self, *arrays: np.ndarray) -> np.ndarray:
        """The reference kernel on integer arrays (computed in int64, returned in the result dtype)."""
        raise NotImplementedError(f"{self.name} has no integer rule")

    # -- shared -----------------------------------------------------------------------------------
    @classmethod
    def float_operands(cls, operands) -> bool:
        """Whether an op of this class on `operands` is a float op: it has float kernels and no
        operand is quantized."""
        return bool(cls.float_dtypes) and all(v.quant is None for v in operands)

    @property
    def allowed_dtypes(self) -> tuple[str, ...]:
        return self.float_dtypes if self.is_float else self.dtypes

    def check_dtype(self, t: TensorType, what: str = "input") -> None:
        """Raise QirError unless `t` is a dtype this op takes (quantized or float, as it is)."""
        if t.dtype in self.allowed_dtypes:
            return
        if self.is_float and t.dtype in self.dtypes:
            raise QirError(f"{self.name}: {what} {t} has no quant spec")
        if not self.allowed_dtypes:
            raise QirError(f"{self.name}: runs in float only; {what} {t} is quantized")
        raise QirError(f"{self.name}: supports {', '.join(self.allowed_dtypes)} tensors, got {t}")

    @property
    def option_values(self) -> dict[str, Any]:
        return {k: self.attrs[k] for k in self.options}

    def verify(self) -> None:
        if "fused_activation" in self.options and self.attrs["fused_activation"] not in ACTIVATIONS:
            raise QirError(f"{self.name}: fused_activation must be one of {', '.join(ACTIVATIONS)}")
        if self.is_float:
            if any(r.quant is not None for r in self.results):
                raise QirError(f"{self.name}: a float op (no quantized operand) cannot give a quantized result")
            return
        expected = self.derive(self.operands, [r.quant for r in self.results], self.option_values)
        for key, value in expected.items():
            have = self.attrs[key]
            if _normalise(have) != _normalise(value):
                raise QirError(f"{self.name}: attribute {key} = {have!r} does not match the quant specs, "
                               f"which give {value!r}")

    def out_range(self) -> tuple[int, int]:
        return self.attrs["activation_min"], self.attrs["activation_max"]


def _normalise(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def append_tfl(b: Builder, op_name: str, *operands: Value, quant: QuantSpec | None, name: str = "",
               **options) -> Value:
    """Append a `tfl.` op whose result has quant spec `quant`, deriving its integer parameters."""
    from qir.ir import OP_REGISTRY
    cls = OP_REGISTRY.get(op_name)
    if cls is None or not issubclass(cls, TflOp):
        raise QirError(f"unknown tfl op '{op_name}'")
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise QirError(f"{op_name}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(cls.options) or 'none'}")
    merged = {**cls.options, **options}
    params = {} if cls.float_operands(operands) else cls.derive(list(operands), [quant], merged)
    op = b.append(op_name, *operands, names=[name] if name else None, **merged, **params)
    op.result.quant = quant
    return op.result


def result_type(op: Op, shape, dtype: str) -> list[TensorType]:
    return [TensorType(tuple(shape), dtype)]


def clamp(x: np.ndarray, low: int, high: int, dtype: str) -> np.ndarray:
    return np.clip(x, low, high).astype(TensorType((), dtype).np_dtype)
