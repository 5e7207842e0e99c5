"""Per-tensor quantization report: SQNR of every quantized value of the fake-quantized model
against the same value of the float model, on calibration inputs; worst first."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.table import Table

from qir.interpreter import Interpreter
from qir.ir import Module


def sqnr_by_value(module: Module, inputs: list[tuple]) -> dict[str, float]:
    """SQNR in dB = 10 log10(sum x_float^2 / sum (x_quant - x_float)^2), summed over the inputs
    (masked_fill results: over their unmasked elements)."""
    quantized = {r.name for f in module.functions.values() for op in f.ops for r in op.results if r.quant}
    # a masked_fill result is compared where it is not masked: the fill value (e.g. -1e4) saturates at
    # the bottom of the grid by design, and only its ~0 probability after softmax matters
    fills = {op.results[0].name: float(op.attrs["value"]) for f in module.functions.values() for op in f.ops
             if op.name == "q.masked_fill"}
    float_run, quant_run = Interpreter(module), Interpreter(module, mode="fake-quant")
    keep = lambda name, x: x  # noqa: E731  (every value leaves the compiled function)
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    for sample in inputs:
        _, reference = float_run.run_observed(*sample, key="all", observe=keep)
        _, observed = quant_run.run_observed(*sample, key="all", observe=keep)
        for name in quantized:
            ref, out = np.asarray(reference[name], np.float64), np.asarray(observed[name], np.float64)
            if name in fills:
                kept = ref != np.float32(fills[name])
                ref, out = ref[kept], out[kept]
            signal[name] = signal.get(name, 0.0) + float((ref ** 2).sum())
            noise[name] = noise.get(name, 0.0) + float(((out - ref) ** 2).sum())
    # a value that is exactly 0 wherever it is compared, in both modes (the pooling logits), has no SQNR
    order = [r.name for f in module.functions.values() for op in f.ops for r in op.results
             if r.name in quantized and (signal[r.name] > 0 or noise[r.name] > 0)]
    return {n: float(10 * np.log10(max(signal[n], 1e-30) / max(noise[n], 1e-30))) for n in order}


def bits_of(module: Module) -> dict[str, str]:
    return {r.name: r.quant.storage for f in module.functions.values() for op in f.ops for r in op.results if r.quant}


def report_table(sqnr: dict[str, float], bits: dict[str, str], worst: int = 15) -> Table:
    table = Table(title=f"quantization report: the {min(worst, len(sqnr))} worst of {len(sqnr)} quantized values",
                  title_justify="left")
    table.add_column("value")
    table.add_column("bits", justify="right")
    table.add_column("SQNR dB", justify="right")
    for name, db in sorted(sqnr.items(), key=lambda kv: kv[1])[:worst]:
        table.add_row(name, bits.get(name, ""), f"{db:.1f}")
    return table


def write_report(sqnr: dict[str, float], bits: dict[str, str], folder: Path) -> list[str]:
    """report.json (every value, graph order) and report.png (SQNR along the graph)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    (folder / "report.json").write_text(json.dumps(
        [{"value": n, "bits": bits.get(n), "sqnr_db": round(db, 3)} for n, db in sqnr.items()], indent=1))
    fig, ax = plt.subplots(figsize=(12, 4))
    names = list(sqnr)
    colors = ["tab:orange" if bits.get(n, "").endswith("16") else "tab:blue" for n in names]
    ax.scatter(range(len(names)), [sqnr[n] for n in names], s=6, c=colors)
    for name, db in sorted(sqnr.items(), key=lambda kv: kv[1])[:5]:
        ax.annotate(name, (names.index(name), db), fontsize=7)
    ax.set_xlabel("value, in graph order (blue: 8-bit, orange: 16-bit)")
    ax.set_ylabel("SQNR vs float (dB)")
    ax.set_title("SQNR of each quantized value against the float model (calibration data)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "report.png", dpi=120)
    plt.close(fig)
    return ["report.json", "report.png"]


LOSS_CURVES_KEY = "loss_curves"  # PassContext.data entry learning passes fill: {pass name: [loss per step]}
# PassContext.data entry learning passes fill: {pass name: {"before", "after", "kept_epoch", "epochs"}}
LOSS_SUMMARY_KEY = "loss_summaries"


def unique_run_name(name: str, ctx_data: dict) -> str:
    """`name`, or `name-2`, `name-3`... when a pass of that name already learned in this pipeline."""
    taken, key, n = ctx_data.get(LOSS_CURVES_KEY, {}), name, 2
    while key in taken:
        key, n = f"{name}-{n}", n + 1
    return key


def write_loss_curves(curves: dict[str, list[float]], folder: Path) -> list[str]:
    """<pass>-loss.png per learning pass: its training loss at every step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for name, losses in curves.items():
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot(range(1, len(losses) + 1), losses, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step (one calibration input each)")
        ax.set_ylabel("training loss")
        ax.set_title(f"{name}: training loss")
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        fig.savefig(folder / f"{name}-loss.png", dpi=120)
        plt.close(fig)
        written.append(f"{name}-loss.png")
    return written
