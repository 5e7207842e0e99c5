"""dce: remove ops whose results nobody uses."""
from dataclasses import dataclass

from qir import Module, Pass, PassContext, PassResult, erase_dead_ops


@dataclass(frozen=True)
class EliminateDeadCode(Pass):
    name = "dce"
    summary = "remove ops whose results are unused"

    def run(self, module: Module, ctx: PassContext) -> PassResult:
        removed = sum(erase_dead_ops(func) for func in module.functions.values())
        return PassResult(modified=removed > 0)
