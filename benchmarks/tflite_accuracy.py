"""Accuracy of the emitted integer .tflite, run in LiteRT, against the float model.

    python benchmarks/tflite_accuracy.py [--models smollm2,minilm] [--recipes a16w8,w8a8]
                                         [--observers minmax,mse] [--tokens 4096] [--sentences 64]
    python benchmarks/tflite_accuracy.py --observers recipe \
        --recipes rtn-w8a8,smoothquant-w8a8,quarot-w8a8,mobilequant-w8a8,quantnpu-w8a8   # the accuracy passes

For each model × recipe × observer: `qir-compile MODEL -p ...quantize{recipe=R,observer=O}
--target tflite` (decompose-norms runs in front of calibrate, as for --recipe R), then
`qir-eval MODEL --compiled OUT/model.tflite --json` (XNNPACK, 2 threads). Causal LMs report
perplexity, KL(float || tflite) per token and top-1 agreement on held-out pydoc text; encoders
the cosine of the sentence embeddings to float. Calibration reads text disjoint from evaluation.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from child_process import run_child  # noqa: E402
from machine_load import load_footer  # noqa: E402
from qir.parser import parse_file  # noqa: E402
from qir.summary import activation_bits  # noqa: E402

console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
BIN = Path(sys.executable).parent


def measure(model: str, recipe: str, observer: str, outdir: Path, args) -> dict:
    if observer == "recipe":  # the named recipe as qir-compile --recipe runs it (METHOD-BITS)
        how = ["--recipe", recipe]
    else:
        how = ["-p", f"canonicalize,dce,calibrate{{histogram={str(observer != 'minmax').lower()}}},"
                     f"quantize{{recipe={recipe},observer={observer}}}"]
    _, seconds, rss = run_child([str(BIN / "qir-compile"), model, *how, "--target", "tflite",
                                 "--report-samples", "0", "-o", str(outdir)])
    evaluate = [str(BIN / "qir-eval"), model, "--compiled", str(outdir / "model.tflite"), "--json"]
    evaluate += ["--tokens", str(args.tokens)] if model != "minilm" else ["--sentences", str(args.sentences)]
    out, _, _ = run_child(evaluate)
    result = json.loads(out)
    result.pop("embeddings", None)
    result.pop("sentences", None)
    size = (outdir / "model.tflite").stat().st_size
    bits = activation_bits(parse_file(outdir / "model.qir"))
    return {"model": model, "recipe": recipe, "observer": observer, "compile_s": seconds,
            "compile_rss_mb": rss, "tflite_mb": size / 2**20, "int8_results": bits[8],
            "int16_results": bits[16], **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,minilm")
    parser.add_argument("--recipes", default="a16w8,w8a8")
    parser.add_argument("--observers", default="minmax,mse",
                        help="activation observers to try; 'recipe': run each recipe as named (METHOD-BITS, e.g. "
                             "quarot-w4a8, with its own pipeline and observers)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--keep", type=Path, help="write each compiled model to KEEP/MODEL-RECIPE-OBSERVER "
                                                  "(e.g. to emit it for another backend) instead of a temporary folder")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or tmp
        for model in args.models.split(","):
            for recipe in args.recipes.split(","):
                for observer in args.observers.split(","):
                    console.print(f"[dim]{model} {recipe} {observer} ...[/]")
                    try:
                        rows.append(measure(model, recipe, observer, Path(tmp) / f"{model}-{recipe}-{observer}", args))
                    except SystemExit as failed:  # a recipe that does not apply (quarot on a LayerNorm model)
                        rows.append({"model": model, "recipe": recipe, "observer": observer,
                                     "error": str(failed).strip().splitlines()[-1]})
                    console.print(f"[dim]{json.dumps(rows[-1])}[/]")  # each row as soon as it is measured
    table = Table(title="integer .tflite in LiteRT (XNNPACK, 2 threads) vs the float model", title_justify="left")
    for column in ("model", "recipe", "observer", "perplexity (float)", "KL", "top-1", "cosine mean / min",
                   "int16 / int8 results", "compile s", "peak RSS MB", ".tflite MB"):
        table.add_column(column, justify="left" if column in ("model", "recipe", "observer") else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["model"], r["recipe"], r["observer"], "[red]failed (below)[/]")
            continue
        lm = "perplexity" in r
        table.add_row(r["model"], r["recipe"], r["observer"],
                      f"{r['perplexity']:.3f} ({r['float_perplexity']:.3f})" if lm else "",
                      f"{r['kl_to_float']:.4f}" if lm else "", f"{r['top1_agreement']:.3f}" if lm else "",
                      "" if lm else f"{r['cosine_to_float_mean']:.5f} / {r['cosine_to_float_min']:.5f}",
                      f"{r['int16_results']} / {r['int8_results']}",
                      f"{r['compile_s']:.1f}", f"{r['compile_rss_mb']:.0f}", f"{r['tflite_mb']:.1f}")
    console.print(table)
    for r in rows:
        if "error" in r:
            console.print(f"[red]{r['model']} {r['recipe']}:[/] {r['error']}")
    console.print(load_footer(load_before))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
