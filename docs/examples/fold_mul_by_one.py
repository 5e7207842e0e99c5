"""fold-mul-by-one: replace `x * c` by `x` when the constant `c` is 1.0 everywhere.

Frontends leave such multiplications behind (a LayerNorm without scale, a residual scale of 1,
a rotation folded into neighbouring weights), and every one of them costs a requantization step on
an NPU. Use it from the command line with

    qir-opt model.qir --plugin docs/examples/fold_mul_by_one.py -p 'fold-mul-by-one{tolerance=1e-6}'

See docs/writing-a-pass.md."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import qir


class FoldMulByOne(qir.RewritePattern):
    """q.mul x, c -> x (or q.mul c, x -> x) when c is a constant of ones."""

    def __init__(self, module: qir.Module, tolerance: float):
        self.module, self.tolerance = module, tolerance

    def is_one(self, value: qir.Value) -> bool:
        if not value.is_constant or not self.module.weights.has(value.name):
            return False  # an activation, or a constant whose data is not loaded
        data = self.module.weights.get(value.name).astype(np.float64)
        return bool(np.all(np.abs(data - 1.0) <= self.tolerance))

    def match_and_rewrite(self, op: qir.Op, rewriter: qir.Rewriter) -> bool:
        if op.name != "q.mul":
            return False
        for x, c in ((op.operands[0], op.operands[1]), (op.operands[1], op.operands[0])):
            # Only a no-op when the product has x's own type and quant spec: broadcasting to a larger
            # shape, a different result dtype or a requantization to another scale must stay.
            if self.is_one(c) and x.type == op.result.type and x.quant == op.result.quant:
                rewriter.replace_op(op, [x])  # every use of the product (and a return) now uses x
                return True
        return False


@dataclass(frozen=True)
class FoldMulByOnePass(qir.Pass):
    """Subclassing qir.Pass with a `name` registers the pass: importing this file is enough."""

    name = "fold-mul-by-one"
    summary = "replace x * c by x where the constant c is 1.0 everywhere (within tolerance)"

    tolerance: float = 0.0  # an option: `fold-mul-by-one{tolerance=1e-6}` in a pipeline

    def requires(self, module: qir.Module) -> None:
        if self.tolerance < 0:
            raise qir.QirError(f"{self.name}: tolerance must be >= 0, got {self.tolerance}")

    def run(self, module: qir.Module, ctx: qir.PassContext) -> qir.PassResult:
        pattern = FoldMulByOne(module, self.tolerance)
        before = sum(len(f.ops) for f in module.functions.values())
        changed = [qir.apply_patterns(func, [pattern]) for func in module.functions.values()]
        after = sum(len(f.ops) for f in module.functions.values())
        ctx.data[self.name] = {"folded": before - after}  # statistics for later passes or reports
        return qir.PassResult(modified=any(changed))
