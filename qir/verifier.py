"""The verifier: SSA, operand counts, attributes, inferred vs declared types, quant invariants.
A failure reprints the IR around the failing op."""
from __future__ import annotations

from qir.errors import QirError, VerifyError
from qir.ir import Function, Module, Op, Value
from qir.printer import module_lines
from qir.quant import QuantSpec
from qir.types import TensorType

WINDOW = 3  # lines of context on each side of the failing op


def check_quant(spec: QuantSpec, type: TensorType, module: Module, what: str) -> None:
    """Quant invariants every backend relies on."""
    if spec.axis is not None and not 0 <= spec.axis < type.rank:
        raise QirError(f"{what}: quant axis {spec.axis} is out of range for {type}")
    if spec.block_size is not None and (spec.block_size <= 0 or type.shape[spec.axis] % spec.block_size):
        raise QirError(f"{what}: block size {spec.block_size} does not divide dimension {spec.axis} of {type}")
    if spec.axis is None:
        groups = 1
    elif spec.block_size is None:
        groups = type.shape[spec.axis]
    else:
        groups = type.size // spec.block_size
    if spec.block_scale is not None:  # LPBQ: integer multipliers per block, float scales per channel
        decl = module.constants.get(spec.block_scale)
        if decl is None:
            raise QirError(f"{what}: LPBQ block scales refer to undeclared constant @{spec.block_scale}")
        if decl.type.is_float or decl.type.dtype == "bool":
            raise QirError(f"{what}: LPBQ block scales @{spec.block_scale} must be integers, are {decl.type}")
        if decl.type.size != groups:
            raise QirError(f"{what}: LPBQ quant needs {groups} block scale(s) in @{spec.block_scale}, "
                           f"has {decl.type.size}")
        groups = type.shape[0]
    for field in ("scale", "zero_point"):
        params = getattr(spec, field)
        if isinstance(params, str):
            if params not in module.constants:
                raise QirError(f"{what}: quant {field} refers to undeclared constant @{params}")
            count = module.constants[params].type.size
        else:
            count = len(params)
            if field == "scale" and any(not (s > 0 and s < float("inf")) for s in params):
                raise QirError(f"{what}: quant scales must be finite and positive, got {params[:4]}")
            if field == "zero_point" and any(not spec.qmin <= z <= spec.qmax for z in params):
                raise QirError(f"{what}: zero point outside [{spec.qmin}, {spec.qmax}] of {spec.storage}")
        if count not in (groups,) and not (field == "zero_point" and count == 1):
            raise QirError(f"{what}: {spec.scheme} quant needs {groups} {field} value(s), has {count}")


def _verify_op(op: Op, defined: set[int], module: Module) -> None:
    for index, value in enumerate(op.operands):
        if not value.is_constant and id(value) not in defined:
            raise QirError(f"{op.name}: operand {index} (%{value.name}) is used before it is defined")
        if (op, index) not in value.uses:
            raise QirError(f"{op.name}: use-list of operand {index} is out of date")
    op._check_operand_count()
    op.verify()
    inferred = op.infer_types()
    declared = [r.type for r in op.results]
    if inferred != declared:
        raise QirError(f"{op.name}: declared result type(s) {', '.join(map(str, declared))} but the operands give "
                       f"{', '.join(map(str, inferred))}")
    for r in op.results:
        if r.quant is not None:
            check_quant(r.quant, r.type, module, f"{op.name} result %{r.name}")


def verify_function(func: Function, module: Module) -> None:
    defined: set[int] = set()
    names: set[str] = set()

    def define(value: Value):
        if value.name in names:
            raise QirError(f"value name %{value.name} is defined twice in @{func.name}")
        names.add(value.name)
        defined.add(id(value))

    for arg in func.args:
        try:
            define(arg)
            if arg.quant is not None:
                check_quant(arg.quant, arg.type, module, f"argument %{arg.name}")
        except QirError as exc:
            raise VerifyError(f"@{func.name}: {exc}") from None
    for op in func.ops:
        try:
            _verify_op(op, defined, module)
            for r in op.results:
                define(r)
        except QirError as exc:
            raise VerifyError(_with_window(str(exc), op, module)) from None
        except (TypeError, ValueError) as exc:  # an attribute of the wrong kind, e.g. perm = 1
            raise VerifyError(_with_window(f"{op.name}: invalid attribute or operand ({exc})", op, module)) from None
    if not func.outputs:
        raise VerifyError(f"function @{func.name} returns nothing")
    for value in func.outputs:
        if not value.is_constant and id(value) not in defined:
            raise VerifyError(f"function @{func.name} returns %{value.name}, which it does not define")


def verify(module: Module) -> None:
    """Raise VerifyError naming the first broken invariant."""
    for decl in module.constants.values():
        if decl.quant is not None:
            try:
                check_quant(decl.quant, decl.type, module, f"constant @{decl.name}")
            except QirError as exc:
                raise VerifyError(str(exc)) from None
    if not module.functions:
        raise VerifyError(f"module @{module.name} has no function")
    for func in module.functions.values():
        verify_function(func, module)


def _with_window(message: str, op: Op, module: Module) -> str:
    lines, where = module_lines(module)
    at = where.get(id(op))
    place = f"{op.location[0]}:{op.location[1]}:{op.location[2]}: " if op.location else ""
    if at is None:
        return f"{place}{message}"
    window = []
    for n in range(max(0, at - WINDOW), min(len(lines), at + WINDOW + 1)):
        window.append(f"{'>' if n == at else ' '} {n + 1:5d} | {lines[n]}")
    return f"{place}{message}\n  in the printed IR (line {at + 1}):\n" + "\n".join(window)
