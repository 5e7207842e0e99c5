"""Readable summaries of a module: op counts, parameters, bytes."""
from __future__ import annotations

from collections import Counter

from rich.table import Table

from qir.ir import Module


def op_counts(module: Module) -> Counter:
    return Counter(op.name for func in module.functions.values() for op in func.ops)


def activation_bits(module: Module) -> Counter:
    """How many op results are quantized at each bit width (views of a value count on their own)."""
    return Counter(r.quant.bits for func in module.functions.values() for op in func.ops for r in op.results
                   if r.quant is not None)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def module_table(module: Module, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    for func in module.functions.values():
        sig_in = ", ".join(str(a.type) for a in func.args)
        sig_out = ", ".join(str(v.type) for v in func.outputs)
        table.add_row(f"function @{func.name}", f"({sig_in}) -> ({sig_out})")
    counts = op_counts(module)
    table.add_row("ops", f"{sum(counts.values()):,}")
    for name, count in counts.most_common():
        table.add_row(f"  {name}", f"{count:,}")
    bits = activation_bits(module)
    if bits:
        table.add_row("quantized activations", ", ".join(f"{n:,} int{b}" for b, n in sorted(bits.items())))
    table.add_row("constants", f"{len(module.constants):,}")
    table.add_row("parameters", f"{module.parameter_count():,}")
    table.add_row("weight bytes", human_bytes(sum(c.type.nbytes for c in module.constants.values())))
    return table
