"""The TFLite target: compile cost, and the int8 graph against the float32 graph of the same model.

    python benchmarks/tflite.py [--reps 7] [--compile-reps 1] [--seq-len 256] [--skip-1b] [--folder-1b DIR]

(a) `qir-compile MODEL --recipe w8a8 --target tflite -o DIR`, each run in a fresh process: wall
    time from outside (start-up included) and the command's own peak RSS (os.wait4), repetitions
    interleaved. SmolLM2-135M as is, again with `--report-samples 0` (the quantization report
    apart), and with `--recipe float`; the random TinyLlama-1.1B-shaped folder
    (make_random_llama.py) with `--report-samples 0` and seeded random token ids as
    `--calibration-data` (the folder has no tokenizer).
(b) Prefill latency in LiteRT with XNNPACK (OpResolverType.AUTO, 2 threads) of the int8 and the
    float32 file qir wrote for SmolLM2, on the same tokens (the first 256 tokens of Python's pydoc
    text), after one warm-up each, alternating run by run: medians and their ratio, and how often
    the two files pick the same next token. The 1.1B model's int8 file is timed on its own: its
    float32 file would need 4.4 GB of weights, beyond the 2 GiB one flatbuffer holds.
(c) The two SmolLM2 files' sizes and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lowering import compile_command, run_child  # noqa: E402
from machine_load import load_footer  # noqa: E402
from make_random_llama import DEFAULT_FOLDER, make_random_llama  # noqa: E402

# wide enough for the tables when the output goes to a file or a pipe
console = Console(highlight=False, width=None if sys.stdout.isatty() else 130)
RESULT = "RESULT "
THREADS = 2
PAUSE = 0.3  # lets the other interpreter's worker threads go idle before a timed run


# ----------------------------------------------------------------------------- latency worker

def pydoc_tokens(tokenizer_json: Path, seq_len: int):
    """The first seq_len tokens of Python's pydoc text, as qir-eval's first window reads them."""
    import numpy as np
    from tokenizers import Tokenizer
    from qir.text import pydoc_text
    ids = Tokenizer.from_file(str(tokenizer_json)).encode(pydoc_text()).ids[:seq_len]
    return np.asarray(ids, np.int32)[None]


def latency_worker(files: dict[str, str], tokens_from: str, seq_len: int, reps: int) -> dict:
    """Time each file's prefill signature in XNNPACK, alternating file by file."""
    import numpy as np
    from backends.tflite.runner import make_interpreter
    tokens = pydoc_tokens(Path(tokens_from), seq_len) if tokens_from != "-" else None
    runners, outputs = {}, {}
    for label, path in files.items():
        interpreter = make_interpreter(Path(path).read_bytes(), reference=False, num_threads=THREADS)
        signature = next(iter(interpreter.get_signature_list()))
        runners[label] = interpreter.get_signature_runner(signature)
        if tokens is None:
            vocab = interpreter.get_output_details()[0]["shape"][-1]
            tokens = np.random.default_rng(0).integers(0, vocab, (1, seq_len), dtype=np.int32)
        outputs[label] = next(iter(runners[label](tokens=tokens).values()))  # warm-up, and the logits
    times = {label: [] for label in files}
    for _ in range(reps):
        for label, runner in runners.items():
            time.sleep(PAUSE)
            start = time.perf_counter()
            runner(tokens=tokens)
            times[label].append(time.perf_counter() - start)
    result = {"times": times}
    if len(outputs) == 2:  # the two graphs of one model: they must compute the same thing
        a, b = outputs.values()
        result["argmax_agree"] = float((a.argmax(-1) == b.argmax(-1)).mean())
    return result


def run_latency(files: dict[str, Path], tokens_from: Path | None, seq_len: int, reps: int) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker",
            json.dumps({k: str(v) for k, v in files.items()}), str(tokens_from or "-"),
            "--seq-len", str(seq_len), "--reps", str(reps)]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE.parent)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


# ----------------------------------------------------------------------------- parent

def fmt_runs(values: list[float], digits: int = 2) -> str:
    return " ".join(f"{v:.{digits}f}" for v in values)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="TFLite target: compile cost, int8 vs float32 latency and size.")
    parser.add_argument("--reps", type=int, default=7, help="timed prefill runs per file (default 7)")
    parser.add_argument("--compile-reps", type=int, default=1, help="qir-compile runs per job (default 1)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--skip-1b", action="store_true", help="SmolLM2-135M only")
    parser.add_argument("--folder-1b", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--worker", nargs=2, metavar=("FILES", "TOKENIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        files, tokens_from = args.worker
        print(RESULT + json.dumps(latency_worker(json.loads(files), tokens_from, args.seq_len, args.reps)), flush=True)
        return 0

    # (label, recipe, extra qir-compile flags) -> model
    jobs = {("SmolLM2-135M", "w8a8", ()): "smollm2",
            ("SmolLM2-135M", "w8a8", ("--report-samples", "0")): "smollm2",
            ("SmolLM2-135M", "float", ()): "smollm2"}
    if not args.skip_1b:
        make_random_llama(args.folder_1b, log=lambda m: console.print(m, style="dim"))
    load_before = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="qir-bench-tflite-"))
    try:
        if not args.skip_1b:
            calibration = scratch / "random-tokens.npz"
            vocab = json.loads((args.folder_1b / "config.json").read_text())["vocab_size"]
            np.savez(calibration, tokens=np.random.default_rng(0).integers(0, vocab, (16, 1, args.seq_len),
                                                                            dtype=np.int32))
            jobs[("random llama 1.1B", "w8a8", ("--report-samples", "0", "--calibration-data", str(calibration)))] = \
                str(args.folder_1b)
        compiles = {job: [] for job in jobs}
        for rep in range(1, args.compile_reps + 1):
            for (label, recipe, extra), model in jobs.items():
                console.print(f"[dim]compile {rep}/{args.compile_reps}: {label} --recipe {recipe} {' '.join(extra)}[/dim]")
                outdir = scratch / f"{label}-{recipe}-{len(extra)}-{rep}".replace(" ", "_")
                command = compile_command() + [model, "--recipe", recipe, "--target", "tflite",
                                               "--seq-len", str(args.seq_len), *extra, "-o", str(outdir)]
                try:
                    result = run_child(command)
                except SystemExit as failure:  # killed (out of memory on a shared machine) or an error
                    console.print(f"[red]{str(failure).splitlines()[0]}[/red]")
                    continue
                result["outdir"] = outdir
                result["tflite_bytes"] = (outdir / "model.tflite").stat().st_size
                compiles[(label, recipe, extra)].append(result)
                console.print(f"[dim]  {result['wall']:.1f} s, peak RSS {result['peak_rss_mb']:,.0f} MB[/dim]")

        first = {}  # model and recipe -> the first file written (the report does not change it)
        for (label, recipe, _), runs in compiles.items():
            if runs:
                first.setdefault((label, recipe), runs[0]["outdir"])
        sizes = {key: (outdir / "model.tflite").stat().st_size for key, outdir in first.items()}
        console.print(f"[dim]SmolLM2-135M: int8 and float32 prefill, {args.reps} alternating runs each...[/dim]")
        smollm2 = run_latency({"int8 (w8a8)": first[("SmolLM2-135M", "w8a8")] / "model.tflite",
                               "float32": first[("SmolLM2-135M", "float")] / "model.tflite"},
                              first[("SmolLM2-135M", "w8a8")] / "tokenizer.json", args.seq_len, args.reps)
        latency = {"SmolLM2-135M": smollm2}
        if ("random llama 1.1B", "w8a8") in first:
            console.print(f"[dim]random llama 1.1B: int8 prefill, {args.reps} runs...[/dim]")
            latency["random llama 1.1B"] = run_latency(
                {"int8 (w8a8)": first[("random llama 1.1B", "w8a8")] / "model.tflite"}, None, args.seq_len, args.reps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    table = Table(title=f"qir-compile MODEL --recipe R --target tflite --seq-len {args.seq_len}, whole command, "
                        f"fresh process, median of {args.compile_reps}", title_justify="left")
    for col in ("model", "recipe", "other flags", "median s", "runs (s)", "peak RSS", "model.tflite"):
        table.add_column(col, justify="left" if col in ("model", "recipe", "other flags") else "right")
    for (label, recipe, extra), runs in compiles.items():
        flags = " ".join(extra).replace(str(scratch) + "/", "")
        if not runs:
            table.add_row(label, recipe, flags, "failed", "", "", "")
            continue
        table.add_row(label, recipe, flags, f"{statistics.median(r['wall'] for r in runs):.1f}",
                      fmt_runs([r["wall"] for r in runs], 1),
                      f"{statistics.median(r['peak_rss_mb'] for r in runs):,.0f} MB",
                      f"{runs[0]['tflite_bytes'] / 2**20:,.1f} MiB")
    console.print(table)

    table = Table(title=f"Prefill of {args.seq_len} tokens in LiteRT, XNNPACK, {THREADS} threads, "
                        f"median of {args.reps} alternating runs", title_justify="left")
    for col in ("model", "graph", "median s", "tokens/s", "runs (s)", "float32 / int8"):
        table.add_column(col, justify="left" if col in ("model", "graph") else "right")
    for label, r in latency.items():
        medians = {graph: statistics.median(t) for graph, t in r["times"].items()}
        for i, (graph, times) in enumerate(r["times"].items()):
            ratio = ""
            if graph == "float32":
                ratio = f"{medians['float32'] / medians['int8 (w8a8)']:.2f}x time"
            table.add_row(label if i == 0 else "", graph, f"{medians[graph]:.3f}", f"{args.seq_len / medians[graph]:,.0f}",
                          fmt_runs(times, 3), ratio, end_section=i == len(r["times"]) - 1)
    console.print(table)
    if "argmax_agree" in smollm2:
        console.print(f"SmolLM2-135M: the int8 and float32 files pick the same next token at "
                      f"{100 * smollm2['argmax_agree']:.1f} % of the {args.seq_len} positions")

    int8, float32 = sizes[("SmolLM2-135M", "w8a8")], sizes[("SmolLM2-135M", "float")]
    table = Table(title="model.tflite size, SmolLM2-135M", title_justify="left")
    for col in ("int8 (w8a8)", "float32", "int8 / float32"):
        table.add_column(col, justify="right")
    table.add_row(f"{int8 / 2**20:,.1f} MiB", f"{float32 / 2**20:,.1f} MiB", f"{int8 / float32:.3f}")
    console.print(table)
    console.print(load_footer(load_before))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
