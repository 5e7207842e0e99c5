"""The canonical text form of the IR. `parse(print_module(m))` rebuilds `m`; printing that again
gives the same text."""
from __future__ import annotations

import json

import ml_dtypes
import numpy as np

from qir.ir import Function, Module, Op, Value
from qir.types import TensorType

INLINE_LIMIT = 16  # constants with at most this many elements print their values inline


def format_attr(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):  # module attributes are a plain dict: lists stay lists
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    raise TypeError(f"cannot print attribute value {value!r}")


def format_attrs(attrs) -> str:
    if not attrs:
        return ""
    return " {" + ", ".join(f"{k} = {format_attr(v)}" for k, v in attrs.items()) + "}"


def format_type(type: TensorType, quant=None) -> str:
    return f"{type} {quant}" if quant is not None else str(type)


def format_operand(value: Value) -> str:
    return f"@{value.name}" if value.is_constant else f"%{value.name}"


def format_op(op: Op) -> str:
    results = ", ".join(f"%{r.name}" for r in op.results)
    operands = ", ".join(format_operand(v) for v in op.operands)
    types = ", ".join(format_type(r.type, r.quant) for r in op.results)
    return f"{results} = {op.name}{' ' if operands else ''}{operands}{format_attrs(op.attrs)} : {types}"


def format_scalar(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if np.issubdtype(type(x), np.integer) or isinstance(x, (int, ml_dtypes.int4, ml_dtypes.uint4)):
        return str(int(x))
    text = str(x)  # shortest text that round-trips in the value's own precision
    return text if any(c in text for c in ".eEn") else text + ".0"


def format_dense(array: np.ndarray) -> str:
    flat = [format_scalar(x) for x in np.asarray(array).reshape(-1)]
    return flat[0] if array.ndim == 0 else "[" + ", ".join(flat) + "]"


def function_lines(func: Function, indent: str = "  ") -> tuple[list[str], dict[int, int]]:
    """The lines of `func` and, for each op (by id), its index among those lines."""
    args = ", ".join(f"%{a.name}: {format_type(a.type, a.quant)}" for a in func.args)
    outs = [format_type(v.type, v.quant) for v in func.outputs]
    ret = outs[0] if len(outs) == 1 else "(" + ", ".join(outs) + ")"
    lines = [f"func @{func.name}({args}) -> {ret} {{"]
    where = {}
    for op in func.ops:
        where[id(op)] = len(lines)
        lines.append(indent + format_op(op))
    lines.append(indent + "return " + ", ".join(format_operand(v) for v in func.outputs))
    lines.append("}")
    return lines, where


def module_lines(module: Module) -> tuple[list[str], dict[int, int]]:
    lines = [f"module @{module.name}{format_attrs(module.attrs)}"]
    for decl in module.constants.values():
        line = f"const @{decl.name} : {format_type(decl.type, decl.quant)}"
        if decl.type.size <= INLINE_LIMIT and module.weights.has(decl.name):
            line += " = " + format_dense(module.weights.get(decl.name).astype(decl.type.np_dtype))
        lines.append(line)
    where = {}
    for func in module.functions.values():
        flines, fwhere = function_lines(func)
        lines.append("")
        where.update({k: v + len(lines) for k, v in fwhere.items()})
        lines.extend(flines)
    return lines, where


def print_module(module: Module) -> str:
    return "\n".join(module_lines(module)[0]) + "\n"
