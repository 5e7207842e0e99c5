"""Local rewrites: patterns applied by a greedy worklist until nothing matches."""
from __future__ import annotations

from qir.ir import Function, Op, Value


class Rewriter:
    """What a pattern may do to the function; records whether anything changed."""

    def __init__(self, func: Function, worklist: list[Op]):
        self.func, self._worklist, self.changed = func, worklist, False

    def insert_before(self, anchor: Op, op: Op) -> Op:
        self.func.insert(self.func.ops.index(anchor), op)
        self._worklist.append(op)
        self.changed = True
        return op

    def replace_value(self, old: Value, new: Value) -> None:
        for user, _ in old.uses:
            self._worklist.append(user)
        old.replace_all_uses_with(new)
        self.func.outputs = [new if v is old else v for v in self.func.outputs]
        self.changed = True

    def replace_op(self, op: Op, new_values: list[Value]) -> None:
        """Replace every result of `op` by `new_values` and erase it."""
        for old, new in zip(op.results, new_values):
            self.replace_value(old, new)
        self.erase(op)

    def erase(self, op: Op) -> None:
        for value in op.operands:
            if value.producer is not None:
                self._worklist.append(value.producer)
        self.func.erase(op)
        self.changed = True


class RewritePattern:
    """Subclass and implement match_and_rewrite; return True when the IR was changed."""

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        raise NotImplementedError


def apply_patterns(func: Function, patterns: list[RewritePattern], max_steps: int = 1_000_000) -> bool:
    """Apply patterns greedily until a fixpoint; returns whether the function changed."""
    worklist = list(reversed(func.ops))
    rewriter = Rewriter(func, worklist)
    steps = 0
    while worklist and steps < max_steps:
        op = worklist.pop()
        steps += 1
        if op.function is not func:
            continue  # erased meanwhile
        for pattern in patterns:
            if pattern.match_and_rewrite(op, rewriter):
                break
    return rewriter.changed


def erase_dead_ops(func: Function) -> int:
    """Remove ops none of whose results are used; returns how many were removed."""
    live_outputs = {id(v) for v in func.outputs}
    removed = 0
    for op in reversed(list(func.ops)):
        if not any(r.uses or id(r) in live_outputs for r in op.results):
            func.erase(op)
            removed += 1
    return removed
