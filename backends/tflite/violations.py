"""Reporting every rule a module breaks at once: one line per violation, each pointing at the op of
the user's IR it came from (file:line:column when the IR was read from a .qir file)."""
from __future__ import annotations

from dataclasses import dataclass

from qir.errors import QirError
from qir.ir import Op, Value


def source_of(op: Op | None) -> str:
    """file:line:col of the q op behind `op` (itself when it is one), else that op and its value."""
    source = op.origin if op is not None and op.origin is not None else op
    if source is None:
        return ""
    if source.location:
        return ":".join(map(str, source.location))
    return f"{source.name} %{source.results[0].name}" if source.results else source.name


def value_ref(value: Value) -> str:
    return f"{'@' if value.is_constant else '%'}{value.name}"


@dataclass(frozen=True)
class Violation:
    where: str  # source_of(...) of the offending op, or "" for a function argument
    subject: str  # what breaks the rule: "tfl.fully_connected %up" or "weight @w of q.linear %up"
    rule: str  # a short name, the same in the docs
    reason: str  # why the target refuses it

    def line(self) -> str:
        place = f"{self.where}: " if self.where else ""
        return f"{place}{self.subject}: {self.rule}: {self.reason}"


def raise_violations(summary: str, violations: list[Violation]) -> None:
    """Nothing when the list is empty; one line for one violation; else a summary line, then one
    line per violation."""
    if not violations:
        return
    if len(violations) == 1:
        raise QirError(f"{summary}: {violations[0].line()}")
    raise QirError(f"{summary} ({len(violations)} violations):\n" + "\n".join(f"  {v.line()}" for v in violations))
