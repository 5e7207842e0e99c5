"""dce: remove ops whose results nobody uses, then constants no function or quant spec uses."""
from dataclasses import dataclass

from qir import Module, Pass, PassContext, PassResult, erase_dead_ops


def quant_constant_names(module: Module) -> set[str]:
    """Constants named by quant specs (scales, zero points, LPBQ block scales) anywhere in the module."""
    specs = [c.quant for c in module.constants.values()]
    for func in module.functions.values():
        specs += [a.quant for a in func.args]
        specs += [r.quant for op in func.ops for r in op.results]
    return {p for s in specs if s is not None for p in s.constants}


@dataclass(frozen=True)
class EliminateDeadCode(Pass):
    name = "dce"
    summary = "remove unused ops and unused constants"

    def run(self, module: Module, ctx: PassContext) -> PassResult:
        removed = sum(erase_dead_ops(func) for func in module.functions.values())
        used = quant_constant_names(module)
        for func in module.functions.values():
            used.update(func.used_constants())
        for name in [n for n in module.constants if n not in used]:
            del module.constants[name]
            module.weights.drop(name)
            removed += 1
        return PassResult(modified=removed > 0)
