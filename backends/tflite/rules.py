"""What the LiteRT runtime accepts but silently miscomputes: checked before any byte is written."""
from __future__ import annotations

from qir.errors import QirError
from qir.ir import Function, Module, Value

# ops whose output is the input's integers moved around: the quant spec must not change
PASS_THROUGH = ("tfl.reshape", "tfl.transpose", "tfl.gather", "tfl.concatenation", "tfl.slice",
                "tfl.strided_slice", "tfl.select_v2")


def _where(func: Function, value: Value) -> str:
    return f"@{func.name}: tensor {'@' if value.is_constant else '%'}{value.name}"


def check_runtime_rules(module: Module, func: Function) -> None:
    """Raise QirError naming the tensor and the rule it breaks."""
    seen: set[int] = set()
    values = list(func.args) + [r for op in func.ops for r in op.results]
    for value in values:
        _check_activation(func, value)
        seen.add(id(value))
    for op in func.ops:
        if op.name in ("tfl.fully_connected",) and len(op.operands) > 1:
            w = op.operands[1]
            if w.quant is not None and not isinstance(w.quant.zero_point, str) and any(w.quant.zero_point):
                raise QirError(f"{_where(func, w)}: the runtime ignores a weight zero point for "
                               f"{op.name}; weights need zero point 0, have {w.quant}")
            if not w.is_constant:
                raise QirError(f"{_where(func, w)}: {op.name} weights must be a constant")
        if op.name in PASS_THROUGH:
            out = op.results[0]
            data = (op.operands if op.name == "tfl.concatenation" else op.operands[1:] if op.name == "tfl.select_v2"
                    else op.operands[:1])
            for x in data:
                if x.quant != out.quant:
                    raise QirError(f"{_where(func, out)}: {op.name} moves integers without rescaling, so its "
                                   f"input %{x.name} ({x.quant}) and output ({out.quant}) need the same quant spec")
        for index, x in enumerate(op.operands):
            if x.is_constant and id(x) not in seen:
                seen.add(id(x))
                if not (op.name == "tfl.fully_connected" and index >= 1):
                    _check_activation(func, x)


def _check_activation(func: Function, value: Value) -> None:
    spec = value.quant
    if spec is None:
        return
    if spec.scheme != "per-tensor":
        raise QirError(f"{_where(func, value)}: the runtime applies only the first scale of a {spec.scheme} "
                       f"spec on an activation; activations need per-tensor quantization, have {spec}")
    if value.type.dtype == "i16" and spec.zero_point != (0,):
        raise QirError(f"{_where(func, value)}: int16 tensors need zero point 0 in the runtime, have {spec}")
