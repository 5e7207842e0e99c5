"""Prefill throughput of qir's float interpreter against transformers (PyTorch), side by side.

    python benchmarks/prefill.py [--reps 7] [--seq-len 256] [--with-1b] [--folder-1b DIR]

SmolLM2-135M: both engines read the same GGUF (transformers dequantizes it to float32) and run
the same 256 real tokens, the first window qir-eval scores on Python's pydoc text. Each model
runs in its own process so the peak RSS reported is that comparison's own; inside it, qir and
transformers alternate repetition by repetition after a warm-up, so machine noise hits both.
qir's first call traces and jit-compiles the function; that one-time cost is reported apart,
phase by phase as JAX itself measures them.

--with-1b adds the random TinyLlama-1.1B-shaped folder (make_random_llama.py) on seeded random
token ids, which are as good as real ones for timing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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
RESULT = "RESULT "
THREADS = 2
# OpenMP and XLA worker threads spin for a while after a run; a pause keeps one engine's
# spinning threads from stealing the cores the other is timed on
PAUSE = 0.3


def rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tokens_for(loaded, seq_len: int, vocab: int):
    import numpy as np
    if loaded.tokenizer is not None:
        from qir.evaluate import token_windows
        from qir.text import pydoc_text
        windows, _ = token_windows(loaded, pydoc_text(), seq_len, seq_len)
        return windows[0], "pydoc text (first qir-eval window)"
    return np.random.default_rng(0).integers(0, vocab, (1, seq_len), dtype=np.int32), "seeded random ids"


def load_torch(model: str):
    import torch
    from transformers import AutoModelForCausalLM
    import qir.frontend
    path = qir.frontend.resolve_model_path(model)
    if path.suffix == ".gguf":
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    else:
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return hf.eval()


# JAX reports how long each compilation phase took; timing them directly beats subtracting a
# noisy steady-state run from the first one
COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "xla",
}


def watch_compilation() -> dict:
    import jax
    totals = dict.fromkeys(COMPILE_EVENTS.values(), 0.0)

    def listener(event, duration, **kwargs):
        if event in COMPILE_EVENTS:
            totals[COMPILE_EVENTS[event]] += duration
    jax.monitoring.register_event_duration_secs_listener(listener)
    return totals


def worker(model: str, seq_len: int, reps: int) -> dict:
    import numpy as np
    import torch
    import qir

    torch.set_num_threads(THREADS)
    result = {"rss_start_mb": rss_mb()}

    t = time.perf_counter()
    loaded = qir.load_model(model, seq_len=seq_len)
    interp = qir.Interpreter(loaded.module)
    func = loaded.module.main
    result["qir_lower_s"] = time.perf_counter() - t
    t = time.perf_counter()
    interp.weights_for(func)  # weights are lazy: read (and dequantize) them before the first run
    result["qir_weights_s"] = time.perf_counter() - t
    vocab = func.outputs[0].type.shape[-1]
    tokens, source = tokens_for(loaded, seq_len, vocab)
    result["tokens"] = source
    compile_s = watch_compilation()
    t = time.perf_counter()
    qir_logits = interp.run(tokens)[0]
    result["qir_first_s"] = time.perf_counter() - t
    result["qir_compile_s"] = dict(compile_s)
    result["rss_after_qir_mb"] = rss_mb()

    t = time.perf_counter()
    hf = load_torch(model)
    result["torch_load_s"] = time.perf_counter() - t
    ids = torch.from_numpy(tokens.astype(np.int64))

    def run_torch():
        with torch.inference_mode():
            return hf(input_ids=ids, use_cache=False).logits

    t = time.perf_counter()
    torch_logits = run_torch().numpy()
    result["torch_first_s"] = time.perf_counter() - t
    result["rss_after_torch_mb"] = rss_mb()
    # the two engines must agree, or the timing compares different work
    result["max_abs_diff"] = float(np.abs(qir_logits - torch_logits).max())
    result["argmax_agree"] = float((qir_logits.argmax(-1) == torch_logits.argmax(-1)).mean())
    del qir_logits, torch_logits

    run_qir = lambda: interp.run(tokens)  # noqa: E731  (returns host numpy: the timing includes the sync)
    run_qir(), run_torch()  # warm-up: one more of each after the first calls
    qir_times, torch_times = [], []
    for _ in range(reps):
        for fn, times in ((run_qir, qir_times), (run_torch, torch_times)):
            time.sleep(PAUSE)
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    result.update(qir_s=qir_times, torch_s=torch_times, seq_len=seq_len, peak_rss_mb=peak_rss_mb(),
                  parameters=loaded.module.parameter_count())
    return result


def run_worker(model: str, seq_len: int, reps: int) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", model, "--seq-len", str(seq_len),
            "--reps", str(reps)]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE.parent)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Prefill throughput: qir's float interpreter vs transformers.")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per engine (default 7)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--with-1b", action="store_true", help="also the random TinyLlama-1.1B-shaped model")
    parser.add_argument("--folder-1b", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--worker", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(RESULT + json.dumps(worker(args.worker, args.seq_len, args.reps)), flush=True)
        return 0

    models = {"SmolLM2-135M": "smollm2"}
    if args.with_1b:
        make_random_llama(args.folder_1b, log=lambda m: console.print(m, style="dim"))
        models["random llama 1.1B"] = str(args.folder_1b)
    # others share this machine: the load average says how quiet it was
    load_before = os.getloadavg()[0]
    results = {}
    for label, model in models.items():
        console.print(f"[dim]{label}: {args.reps} interleaved repetitions per engine...[/dim]")
        results[label] = run_worker(model, args.seq_len, args.reps)

    table = Table(title=f"Prefill of {args.seq_len} tokens, float32, {THREADS} threads, "
                        f"median of {args.reps} interleaved runs", title_justify="left")
    for col in ("model", "engine", "median s", "tokens/s", "runs (s)", "qir / transformers"):
        table.add_column(col, justify="left" if col in ("model", "engine") else "right")
    for label, r in results.items():
        q, t = statistics.median(r["qir_s"]), statistics.median(r["torch_s"])
        table.add_row(label, "qir interpreter (JAX jit)", f"{q:.3f}", f"{r['seq_len'] / q:,.0f}",
                      " ".join(f"{x:.3f}" for x in r["qir_s"]), f"{q / t:.2f}x time")
        table.add_row("", "transformers (PyTorch)", f"{t:.3f}", f"{r['seq_len'] / t:,.0f}",
                      " ".join(f"{x:.3f}" for x in r["torch_s"]), "", end_section=True)
    console.print(table)

    table = Table(title="One-time costs and memory (same process as the runs above)", title_justify="left")
    table.add_column("what")
    for label in results:
        table.add_column(label, justify="right")
    rows = [
        ("parameters", lambda r: f"{r['parameters'] / 1e6:,.1f} M"),
        ("tokens", lambda r: r["tokens"]),
        ("qir: load_model (lowering)", lambda r: f"{r['qir_lower_s']:.2f} s"),
        ("qir: read weights to device arrays", lambda r: f"{r['qir_weights_s']:.2f} s"),
        ("qir: first run (trace + jit compile + run)", lambda r: f"{r['qir_first_s']:.2f} s"),
        ("  of which: trace to jaxpr", lambda r: f"{r['qir_compile_s']['trace']:.2f} s"),
        ("  of which: lower to StableHLO", lambda r: f"{r['qir_compile_s']['lower']:.2f} s"),
        ("  of which: XLA compile", lambda r: f"{r['qir_compile_s']['xla']:.2f} s"),
        ("transformers: from_pretrained (float32)", lambda r: f"{r['torch_load_s']:.2f} s"),
        ("transformers: first run", lambda r: f"{r['torch_first_s']:.2f} s"),
        ("RSS at start (imports)", lambda r: f"{r['rss_start_mb']:,.0f} MB"),
        ("RSS after qir is ready (+ growth)",
         lambda r: f"{r['rss_after_qir_mb']:,.0f} MB (+{r['rss_after_qir_mb'] - r['rss_start_mb']:,.0f})"),
        ("RSS after transformers is ready (+ growth)",
         lambda r: f"{r['rss_after_torch_mb']:,.0f} MB (+{r['rss_after_torch_mb'] - r['rss_after_qir_mb']:,.0f})"),
        ("peak RSS of the process", lambda r: f"{r['peak_rss_mb']:,.0f} MB"),
        ("logits: max |qir - transformers|", lambda r: f"{r['max_abs_diff']:.2e}"),
        ("logits: argmax agreement", lambda r: f"{100 * r['argmax_agree']:.1f} %"),
    ]
    for name, cell in rows:
        table.add_row(name, *(cell(r) for r in results.values()))
    console.print(table)
    console.print(load_footer(load_before))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
