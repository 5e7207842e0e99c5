"""qir-compile [MODEL] [-p PIPELINE | --recipe NAME] [-o OUTDIR]: lower a model, run a pipeline,
write OUTDIR/model.qir + model.safetensors (+ tokenizer.json) and print a summary."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from qir.cli.common import ArgumentParser, add_pass_manager_flags, console, make_pass_manager, out, run_main
from qir.frontend import DEFAULT_MODEL, DEFAULT_SEQ_LEN, EMBEDDED_MODELS

# facts about the model a .qir file keeps for later evaluation (module attributes)
KEPT_INFO = ("bos_token_id", "eos_token_id", "pad_token_id", "add_bos")


def build_parser() -> ArgumentParser:
    from qir.recipes import BITS, DEFAULT_RECIPE, METHODS
    parser = ArgumentParser(prog="qir-compile", description="Lower a model to qir IR, run a recipe or pipeline, "
                                                            "and write the result.")
    parser.add_argument("model", nargs="?", help=f"a .gguf file, a Hugging Face folder, a .qir file, or one of "
                                                 f"{', '.join(EMBEDDED_MODELS)} (default: {DEFAULT_MODEL})")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-p", "--pipeline", help="passes to run, e.g. 'canonicalize,dce'")
    group.add_argument("--recipe", default=None,
                       help=f"float, BITS or METHOD-BITS (e.g. rtn-w8a8); BITS: {', '.join(BITS)}; METHOD: "
                            f"{', '.join(METHODS)}; or a recipe .json file (default: {DEFAULT_RECIPE})")
    parser.add_argument("-o", "--outdir", type=Path, default=Path("qir-out"), help="output folder (default: qir-out)")
    parser.add_argument("--target", help="a backend to emit for, e.g. tflite (integer when the recipe quantizes, "
                                         "float32 for --recipe float)")
    parser.add_argument("--soc", help="with --target: also compile ahead of time for this chip (qnn: SM8650, "
                                      "SM8750, SC8380XP -> model_ctx.onnx + its .bin)")
    parser.add_argument("--calibration-data", type=Path, metavar="FILE.npz",
                        help="calibration inputs: one array per function argument, samples stacked on axis 0 "
                             "(default: text from Python's own docs through the model's tokenizer)")
    parser.add_argument("--calibration-samples", type=int,
                        help="calibration inputs made available to the passes: windows of a causal LM (default 16), "
                             "sentences of an encoder (default 128: about 2,500 tokens, as gptq needs more tokens "
                             "than its widest input has channels); learning passes train on the first 16")
    parser.add_argument("--report-samples", type=int, default=2,
                        help="inputs the quantization report (SQNR per value) runs on (default 2; 0 skips it)")
    parser.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN,
                        help=f"static sequence length L of the lowered functions (default: {DEFAULT_SEQ_LEN})")
    parser.add_argument("--layers", type=int, help="keep only the first N blocks of the model (quick looks, small "
                                                   "test graphs of real weights)")
    add_pass_manager_flags(parser)
    return parser


def body(argv) -> int:
    from qir.errors import QirError
    from qir.frontend import load_model
    from qir.output import staged_directory
    from qir.printer import print_module
    from qir.recipes import DEFAULT_RECIPE, recipe_pipeline
    from qir.summary import human_bytes, module_table
    from qir.verifier import verify
    from qir.backend import get_backend
    from qir.calibration_data import INPUTS_KEY, calibration_file_inputs, calibration_inputs, default_calibration_samples
    from qir.passes import PassContext, before_calibration, parse_pipeline
    from qir.quant_report import (LOSS_CURVES_KEY, LOSS_SUMMARY_KEY, bits_of, report_table, sqnr_by_value,
                                  write_loss_curves, write_report)
    from qir.weights import save_weights

    args = build_parser().parse_args(argv)
    if args.seq_len < 1 or (args.calibration_samples is not None and args.calibration_samples < 1) \
            or args.report_samples < 0:
        raise QirError("--seq-len and --calibration-samples must be positive, --report-samples not negative")
    pipeline = args.pipeline if args.pipeline is not None else recipe_pipeline(args.recipe or DEFAULT_RECIPE)
    manager = make_pass_manager(args, pipeline)
    backend = get_backend(args.target) if args.target else None
    if args.soc is not None:
        if backend is None:
            raise QirError("--soc needs a --target to compile for")
        backend.check_soc(args.soc)
    if backend is not None and backend.prepare_pipeline:
        manager.passes = before_calibration(manager.passes, parse_pipeline(backend.prepare_pipeline))

    start = time.perf_counter()
    with console.status("loading and lowering the model"):
        loaded = load_model(args.model, seq_len=args.seq_len, layers=args.layers)
        verify(loaded.module)
    lowered = time.perf_counter() - start
    module = loaded.module
    ctx = PassContext()
    if any(p.needs_calibration_inputs for p in manager.passes):
        with console.status("preparing calibration data"):
            ctx.data[INPUTS_KEY] = (calibration_file_inputs(args.calibration_data, loaded) if args.calibration_data
                                    else calibration_inputs(loaded, args.calibration_samples
                                                            or default_calibration_samples(loaded.kind)))
    def check_target(p, module):
        # the target's verdict on the quantized ops before later passes spend minutes: they change numbers only
        if backend is not None and p.name == "quantize" and p is not manager.passes[-1]:
            with console.status(f"checking the quantized ops against --target {args.target}"):
                backend.legalize(module)

    manager.run(module, ctx, after_pass=check_target)
    report = None
    if module.is_quantized() and args.report_samples > 0:
        with console.status("measuring SQNR per quantized value"):
            inputs = ctx.data.get(INPUTS_KEY) or calibration_inputs(loaded, args.report_samples)
            report = (sqnr_by_value(module, inputs[:args.report_samples]), bits_of(module))

    backend_module = None
    if backend is not None:
        with console.status(f"legalizing for {args.target}"):
            backend_module = backend.legalize(module)  # errors surface here, before any file is written

    with staged_directory(args.outdir) as stage, console.status(f"writing {args.outdir}"):
        module.attrs["kind"] = loaded.kind
        module.attrs.update({k: loaded.info[k] for k in KEPT_INFO if isinstance(loaded.info.get(k), (int, bool))})
        if loaded.tokenizer is not None:
            loaded.tokenizer.save(str(stage / "tokenizer.json"))
            module.attrs["tokenizer"] = "tokenizer.json"
        weight_bytes = save_weights(module, stage / "model.safetensors")
        module.attrs["weights"] = "model.safetensors"
        (stage / "model.qir").write_text(print_module(module))
        written = ["model.qir", f"model.safetensors ({human_bytes(weight_bytes)})"]
        written += ["tokenizer.json"] if loaded.tokenizer is not None else []
        if report is not None:
            written += write_report(*report, stage)
        written += write_loss_curves(ctx.data.get(LOSS_CURVES_KEY, {}), stage)
        if backend_module is not None:
            (stage / f"model.{args.target}.qir").write_text(print_module(backend_module))
            written += [f"model.{args.target}.qir"] + [p.name for p in backend.emit(backend_module, stage)]
            if args.soc is not None:  # after the portable artifact, from it
                written += [p.name for p in backend.emit_for_soc(backend_module, stage, args.soc)]
    total = time.perf_counter() - start

    table = module_table(module, f"qir-compile: {args.model or DEFAULT_MODEL} -> {args.outdir}")
    table.add_row("lower + verify", f"{lowered:.2f} s")
    for name, seconds, modified in manager.timings:
        table.add_row(f"pass {name}", f"{seconds:.3f} s{'' if modified else ' (no change)'}")
    widened = ctx.data.get("quantize", {}).get("widened", [])
    if widened:
        table.add_row("widened to int16 (min_sqnr)", f"{len(widened):,} activations")
    for run, loss in ctx.data.get(LOSS_SUMMARY_KEY, {}).items():
        table.add_row(run, f"training loss {loss['before']:.4g} -> {loss['after']:.4g} "
                           f"(epoch {loss['kept_epoch']} of {loss['epochs']} kept)")
    gptq = ctx.data.get("gptq")
    if gptq and gptq["output_error_nearest"] > 0:
        table.add_row("gptq", f"{gptq['weights']} weights from {gptq['tokens']:,} tokens; layer-output error "
                              f"{gptq['output_error_gptq'] / gptq['output_error_nearest']:.2f}x round-to-nearest's")
        if gptq["tokens"] < gptq["widest_input"]:
            table.add_row("[yellow]gptq warning[/]", f"{gptq['tokens']:,} calibration tokens for inputs of up to "
                                                    f"{gptq['widest_input']:,} channels: the rounding fits the "
                                                    "calibration text; give more --calibration-samples")
    table.add_row("total", f"{total:.2f} s")
    table.add_row("wrote", ", ".join(written))
    out.print(table)
    if report is not None:
        out.print(report_table(*report))
    return 0


def main(argv=None) -> int:
    return run_main(body, argv)


if __name__ == "__main__":
    sys.exit(main())
