"""Lowering and qir-compile: wall time and peak RSS, each job in a fresh process.

    python benchmarks/lowering.py [--reps 3] [--skip-1b] [--folder-1b DIR]

Models: SmolLM2-135M (the embedded GGUF) and a random-weight llama folder of TinyLlama-1.1B
shape (made by make_random_llama.py on first use). Per model and repetition, three jobs run
in their own process, interleaved so drift hits them alike:

- lower:   qir.load_model + qir.verify (timed inside the process, after imports)
- compile: the full `qir-compile MODEL --recipe float -o DIR` command (timed from outside,
           start-up included)
- stages:  the same steps as qir-compile, timed one by one, with the peak RSS reached by the end
           of each step (ru_maxrss only grows, so a step that raises it shows up)

Peak RSS is the job's own: os.wait4 returns the rusage of exactly that child.
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

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine_load import load_footer  # noqa: E402
from make_random_llama import DEFAULT_FOLDER, make_random_llama  # noqa: E402

# wide enough for the tables when the output goes to a file or a pipe
console = Console(highlight=False, width=None if sys.stdout.isatty() else 130)
RESULT = "RESULT "  # prefix of the one JSON line a worker prints
RECIPE = "float"  # the foundation: lower and clean up, no quantization


def peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------- workers

def job_import(model: str, outdir: Path) -> dict:
    import qir
    qir.frontend.frontends()  # imports every registered frontend, as load_model does
    return {}


def job_lower(model: str, outdir: Path) -> dict:
    import qir
    qir.frontend.frontends()  # imports are start-up cost, not lowering: keep them out of the timing
    start = time.perf_counter()
    loaded = qir.load_model(model)
    qir.verify(loaded.module)
    seconds = time.perf_counter() - start
    module = loaded.module
    return {"seconds": seconds, "ops": sum(len(f.ops) for f in module.functions.values()),
            "constants": len(module.constants), "parameters": module.parameter_count(),
            "weight_bytes": sum(c.type.nbytes for c in module.constants.values())}


def job_stages(model: str, outdir: Path) -> dict:
    """qir-compile's steps (qir/cli/compile.py), one timer each."""
    import qir
    from qir.printer import print_module
    from qir.recipes import recipe_pipeline
    from qir.weights import save_weights
    qir.frontend.frontends()
    stages = []

    def mark(name, start):
        stages.append((name, time.perf_counter() - start, peak_rss_mb()))

    t = time.perf_counter()
    loaded = qir.load_model(model)
    qir.verify(loaded.module)
    mark("load_model + verify", t)
    t = time.perf_counter()
    qir.PassManager(qir.parse_pipeline(recipe_pipeline(RECIPE))).run(loaded.module)
    mark(f"passes {recipe_pipeline(RECIPE)} + verify", t)
    outdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    save_weights(loaded.module, outdir / "model.safetensors")
    mark("save_weights -> model.safetensors", t)
    t = time.perf_counter()
    (outdir / "model.qir").write_text(print_module(loaded.module))
    mark("print_module -> model.qir", t)
    return {"stages": stages}


JOBS = {"import": job_import, "lower": job_lower, "stages": job_stages}


def worker(job: str, model: str, outdir: Path) -> None:
    result = JOBS[job](model, outdir)
    result["worker_peak_rss_mb"] = peak_rss_mb()
    print(RESULT + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- parent

def run_child(argv: list[str]) -> dict:
    """Run argv in a fresh process; wall seconds, its own peak RSS, and its RESULT line if any."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent,
                                env={**os.environ, "COLUMNS": "200"})
        _, status, usage = os.wait4(proc.pid, 0)  # reap it ourselves to get this child's rusage
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{text[-3000:]}")
    result = {}
    for line in text.splitlines():
        if line.startswith(RESULT):
            result = json.loads(line[len(RESULT):])
    result.update(wall=wall, peak_rss_mb=usage.ru_maxrss / 1024)
    return result


def compile_command() -> list[str]:
    script = Path(sys.executable).parent / "qir-compile"
    return [str(script)] if script.exists() else [sys.executable, "-m", "qir.cli.compile"]


def worker_argv(job: str, model: str, outdir: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", job, model, str(outdir)]


def fmt_s(values: list[float]) -> tuple[str, str]:
    return f"{statistics.median(values):.2f}", " ".join(f"{v:.2f}" for v in values)


def fmt_mb(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} MB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Lowering and qir-compile time and peak RSS, fresh process each.")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-1b", action="store_true", help="measure SmolLM2-135M only")
    parser.add_argument("--folder-1b", type=Path, default=DEFAULT_FOLDER,
                        help=f"the random TinyLlama-shaped folder (made if missing; default {DEFAULT_FOLDER})")
    parser.add_argument("--worker", nargs=3, metavar=("JOB", "MODEL", "OUTDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job, model, outdir = args.worker
        worker(job, model, Path(outdir))
        return 0

    models = {"SmolLM2-135M (GGUF Q4_1)": "smollm2"}
    if not args.skip_1b:
        make_random_llama(args.folder_1b, log=lambda m: console.print(m, style="dim"))
        models["random llama 1.1B (HF, f16)"] = str(args.folder_1b)

    # others share this machine: the load average says how quiet it was
    load_before = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="qir-bench-lowering-"))
    runs = {label: {"lower": [], "compile": [], "stages": []} for label in models}
    try:
        baseline = run_child(worker_argv("import", "-", scratch / "unused"))
        for rep in range(1, args.reps + 1):
            for label, model in models.items():
                console.print(f"[dim]rep {rep}/{args.reps}: {label}[/dim]")
                runs[label]["lower"].append(run_child(worker_argv("lower", model, scratch / "unused")))
                outdir = scratch / "compile"
                command = compile_command() + [model, "--recipe", RECIPE, "-o", str(outdir)]
                runs[label]["compile"].append(run_child(command))
                runs[label]["compile"][-1]["out_bytes"] = sum(p.stat().st_size for p in outdir.iterdir())
                shutil.rmtree(outdir)
                runs[label]["stages"].append(run_child(worker_argv("stages", model, scratch / "stages")))
                shutil.rmtree(scratch / "stages")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    console.print(f"baseline: a process that imports qir and its frontends peaks at "
                  f"{baseline['peak_rss_mb']:,.0f} MB RSS ({baseline['wall']:.2f} s wall)")

    table = Table(title=f"Lowering: qir.load_model + qir.verify, fresh process, median of {args.reps}",
                  title_justify="left")
    for col in ("model", "parameters", "constants", "ops", "median s", "runs (s)", "peak RSS"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for label, r in runs.items():
        first = r["lower"][0]
        median, each = fmt_s([x["seconds"] for x in r["lower"]])
        table.add_row(label, f"{first['parameters'] / 1e6:,.1f} M", f"{first['constants']:,}", f"{first['ops']:,}",
                      median, each, fmt_mb([x["peak_rss_mb"] for x in r["lower"]]))
    console.print(table)

    table = Table(title=f"qir-compile MODEL --recipe {RECIPE} -o DIR, whole command, median of {args.reps}",
                  title_justify="left")
    for col in ("model", "median s", "runs (s)", "peak RSS", "output"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for label, r in runs.items():
        median, each = fmt_s([x["wall"] for x in r["compile"]])
        table.add_row(label, median, each, fmt_mb([x["peak_rss_mb"] for x in r["compile"]]),
                      f"{r['compile'][0]['out_bytes'] / 2**20:,.0f} MiB")
    console.print(table)

    table = Table(title=f"qir-compile's steps, timed one by one in one process, median of {args.reps}",
                  title_justify="left")
    for col in ("model", "step", "median s", "runs (s)", "peak RSS by end of step"):
        table.add_column(col, justify="left" if col in ("model", "step") else "right")
    for label, r in runs.items():
        for i, (name, _, _) in enumerate(r["stages"][0]["stages"]):
            median, each = fmt_s([x["stages"][i][1] for x in r["stages"]])
            table.add_row(label if i == 0 else "", name, median, each,
                          fmt_mb([x["stages"][i][2] for x in r["stages"]]))
        median, each = fmt_s([sum(s[1] for s in x["stages"]) for x in r["stages"]])
        table.add_row("", "sum of steps", median, each, fmt_mb([x["peak_rss_mb"] for x in r["stages"]]),
                      end_section=True)
    console.print(table)
    console.print(load_footer(load_before))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
