"""A compiled model's cycle profile (qir.backend.CycleProfile) as qir-eval --profile reports it: cycles
per op type and the costliest ops, and the prefill throughput they imply at a stated clock.

The estimate is tokens / (cycles / clock): one window of L tokens costs the profile's total cycles.
It counts what the runtime's profiler counts (on HTP: the accelerator's execution, transfers in and
out included, not the host's share), and scales linearly with the clock assumed."""
from __future__ import annotations

from rich.table import Table

from qir.backend import CycleProfile


def summarize(profile: CycleProfile, tokens: int, clock_mhz: float, top: int = 20) -> dict:
    by_kind: dict[str, float] = {}
    for op in profile.ops:
        by_kind[op.kind or "(unnamed)"] = by_kind.get(op.kind or "(unnamed)", 0.0) + op.cycles
    seconds = profile.total_cycles / (clock_mhz * 1e6)
    return {
        "source": profile.source, "runs": profile.runs, "tokens": tokens, "clock_mhz": clock_mhz,
        "total_cycles": profile.total_cycles, "run_totals": list(profile.run_totals), "ops": len(profile.ops),
        "prefill_ms": seconds * 1e3, "prefill_tokens_per_s": tokens / seconds if seconds else float("inf"),
        "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "top_ops": [{"name": op.name, "kind": op.kind, "cycles": op.cycles}
                    for op in sorted(profile.ops, key=lambda o: -o.cycles)[:top]],
        "all_ops": [{"name": op.name, "kind": op.kind, "cycles": op.cycles} for op in profile.ops],
    }


def tables(summary: dict) -> list[Table]:
    total = summary["total_cycles"] or 1.0
    kinds = Table(title=f"cycles by op type ({summary['source']}; the median of {summary['runs']} runs)",
                  title_justify="left")
    for column in ("op type", "cycles", "share"):
        kinds.add_column(column, justify="left" if column == "op type" else "right")
    for kind, cycles in summary["by_kind"].items():
        kinds.add_row(kind, f"{cycles:,.0f}", f"{100 * cycles / total:.1f} %")
    top = Table(title=f"the {len(summary['top_ops'])} costliest of {summary['ops']} ops (an op fused into the "
                      "next shows 0: its cycles are counted there)", title_justify="left")
    for column in ("op", "type", "cycles", "share"):
        top.add_column(column, justify="left" if column in ("op", "type") else "right")
    for op in summary["top_ops"]:
        top.add_row(op["name"], op["kind"], f"{op['cycles']:,.0f}", f"{100 * op['cycles'] / total:.1f} %")
    estimate = Table(title="prefill estimate", title_justify="left", show_header=False)
    estimate.add_row("tokens per window", str(summary["tokens"]))
    estimate.add_row("cycles per window", f"{summary['total_cycles']:,.0f} (runs: "
                     + ", ".join(f"{t:,.0f}" for t in summary["run_totals"]) + ")")
    estimate.add_row("clock (assumed)", f"{summary['clock_mhz']:g} MHz")
    estimate.add_row("time per window", f"{summary['prefill_ms']:.3f} ms")
    estimate.add_row("prefill throughput", f"{summary['prefill_tokens_per_s']:,.0f} tokens/s")
    return [kinds, top, estimate]
