"""qir-eval [MODEL] [--text pydoc|FILE] [--tokens N] [--context L] [--json]: perplexity of a causal
LM on real text, or sentence embeddings of an encoder."""
from __future__ import annotations

import json
import sys

import numpy as np

from rich.table import Table

from qir.cli.common import ArgumentParser, console, out, run_main
from qir.frontend import DEFAULT_MODEL, DEFAULT_SEQ_LEN, EMBEDDED_MODELS


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="qir-eval", description="Evaluate a model on real text that needs no download.")
    parser.add_argument("model", nargs="?", help=f"a .gguf file, a Hugging Face folder, a .qir file, or one of "
                                                 f"{', '.join(EMBEDDED_MODELS)} (default: {DEFAULT_MODEL})")
    parser.add_argument("--text", default="pydoc", help="'pydoc' (Python's own documentation prose, the default) "
                                                        "or a UTF-8 text file")
    parser.add_argument("--tokens", type=int, default=4096, help="causal LM: evaluate the first N tokens (default 4096)")
    parser.add_argument("--context", type=int,
                        help=f"causal LM: window length L (default {DEFAULT_SEQ_LEN}, or the compiled model's); "
                             "encoder: padded length")
    parser.add_argument("--sentences", type=int, default=64,
                        help="encoder: how many sentences to embed (default 64; from a file: its non-empty lines)")
    parser.add_argument("--mode", choices=("auto", "float", "fake-quant"), default="auto",
                        help="interpreter mode; auto: fake-quant for a quantized model (compared with its float "
                             "self: KL, top-1, cosine), float otherwise")
    parser.add_argument("--reference", metavar="MODEL",
                        help="fake-quant: the float model to compare with (default: MODEL's own float weights, "
                             "which already carry any rounding a pass such as gptq wrote into them)")
    parser.add_argument("--layers", type=int, help="keep only the first N blocks of the model (of the --reference "
                                                   "model when MODEL is a .qir)")
    parser.add_argument("--compiled", metavar="FILE",
                        help="evaluate this compiled artifact (e.g. OUT/model.tflite) in its runtime instead of "
                             "the interpreter; MODEL is the float model it is compared with")
    parser.add_argument("--kernels", choices=("optimized", "reference"), default="optimized",
                        help="with --compiled: the runtime's optimized kernels (default) or its reference kernels "
                             "(bit-exact with qir's integer rules, slower)")
    parser.add_argument("--profile", action="store_true",
                        help="with --compiled: run the first window (or sentence) once under the runtime's cycle "
                             "profiler and print cycles per op and the prefill throughput they imply, instead of "
                             "evaluating (qnn: on HTP, whatever --kernels says)")
    parser.add_argument("--clock-mhz", type=float, default=1000.0,
                        help="with --profile: the accelerator clock the throughput estimate assumes (default 1000)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on standard output")
    return parser


def body(argv) -> int:
    from qir.errors import QirError
    from qir.evaluate import embeddings, perplexity
    from qir.frontend import load_model
    from qir.interpreter import Interpreter
    from qir.text import load_text, sentences

    args = build_parser().parse_args(argv)
    if args.profile and not args.compiled:
        raise QirError("--profile needs --compiled FILE: it profiles a compiled model in its runtime")
    if args.clock_mhz <= 0:
        raise QirError("--clock-mhz must be positive")
    if args.reference and args.compiled:
        raise QirError("--reference is for the interpreter; with --compiled, MODEL is the float model compared with")
    compiled = None
    if args.compiled:
        from qir.backend import load_artifact
        with console.status(f"loading {args.compiled}"):
            compiled = load_artifact(args.compiled, args.kernels)
        args.context = compiled_context(compiled, args.context)
    args.context = args.context or DEFAULT_SEQ_LEN
    if args.tokens < 2 or args.context < 2 or args.sentences < 1:
        raise QirError("--tokens and --context must be at least 2, --sentences at least 1")
    text = load_text(args.text)
    with console.status("loading the model"):
        # a .qir is loaded as written: with --reference, --layers cuts the reference checkpoint alone
        own_layers = None if args.reference and str(args.model).endswith(".qir") else args.layers
        loaded = load_model(args.model, seq_len=args.context, layers=own_layers)
    name = args.model or DEFAULT_MODEL
    if args.profile:
        return profile(args, loaded, compiled, text)
    if compiled is not None:
        mode = f"compiled: {compiled.description}"
        model_run, float_run = CompiledRun(loaded, compiled), Interpreter(loaded.module)
    else:
        mode = args.mode if args.mode != "auto" else ("fake-quant" if loaded.module.is_quantized() else "float")
        model_run = Interpreter(loaded.module, mode=mode)
        float_run = None if mode == "float" else Interpreter(float_reference(args, loaded))
    if loaded.kind == "causal-lm":
        reference = (lambda w: float_run.run(w)[0]) if float_run else None
        result = {"model": name, "text": args.text, "mode": mode,
                  **perplexity(loaded, text, args.tokens, args.context, console,
                               run=lambda w: model_run.run(w)[0], reference=reference)}
        if args.json:
            print(json.dumps(result, indent=2))
            return 0
        table = Table(title=f"qir-eval: {name} ({mode if compiled else mode + ' interpreter'})", title_justify="left", show_header=False)
        for key in ("text", "tokens", "context", "windows", "bos_per_window", "nll", "perplexity",
                    "float_perplexity", "kl_to_float", "top1_agreement"):
            if key in result:
                table.add_row(key, f"{result[key]:.4f}" if isinstance(result[key], float) else str(result[key]))
        out.print(table)
        return 0
    if loaded.kind == "encoder":
        if args.text == "pydoc":
            chosen = sentences(args.sentences)
        else:
            chosen = [line.strip() for line in text.splitlines() if line.strip()][:args.sentences]
        vectors = embeddings(loaded, chosen, console, run=lambda i, m: model_run.run(i, m)[1])
        cosine = {}
        if float_run is not None:
            reference = embeddings(loaded, chosen, console, run=lambda i, m: float_run.run(i, m)[1])
            cos = (vectors * reference).sum(1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1))
            cosine = {"cosine_to_float_mean": float(cos.mean()), "cosine_to_float_min": float(cos.min())}
        if args.json:
            print(json.dumps({"model": name, "text": args.text, "mode": mode, "context": loaded.seq_len, **cosine,
                              "sentences": chosen, "embeddings": vectors.round(7).tolist()}))
            return 0
        if cosine:
            out.print(f"cosine to float embeddings: mean {cosine['cosine_to_float_mean']:.6f}, "
                      f"min {cosine['cosine_to_float_min']:.6f}")
        table = Table(title=f"qir-eval: {name} sentence embeddings ({vectors.shape[1]} dims)", title_justify="left")
        table.add_column("sentence")
        table.add_column("norm", justify="right")
        for sentence, vector in zip(chosen, vectors):
            table.add_row(sentence[:70], f"{(vector ** 2).sum() ** 0.5:.4f}")
        out.print(table)
        return 0
    raise QirError(f"qir-eval does not know how to evaluate a model of kind '{loaded.kind}'")


def float_reference(args, loaded):
    """The float module a fake-quant run is compared with: --reference's, or the model's own."""
    from qir.errors import QirError
    from qir.evaluate import WEIGHTS_ROUNDED_ATTR
    from qir.frontend import load_model
    if args.reference:
        with console.status("loading the reference model"):
            reference = load_model(args.reference, seq_len=loaded.seq_len, layers=args.layers).module
        shapes = lambda m: [(a.name, list(a.type.shape)) for a in m.main.args]  # noqa: E731
        if shapes(reference) != shapes(loaded.module):
            raise QirError(f"--reference {args.reference} takes {shapes(reference)}, the model {shapes(loaded.module)}: "
                           "is it the model this one was compiled from?")
        return reference
    rounded_by = loaded.module.attrs.get(WEIGHTS_ROUNDED_ATTR)
    if rounded_by:
        console.print(f"[yellow]note:[/] {rounded_by} rounded this model's weights, so its own float weights "
                      "leave their rounding error out; pass --reference with the model it was compiled from")
    return loaded.module


def profile(args, loaded, compiled, text) -> int:
    """Cycles per op of one input of real text, and the prefill estimate (qir/cycles.py)."""
    from qir.cycles import summarize, tables
    from qir.errors import QirError
    from qir.evaluate import encode_static, token_windows
    from qir.text import sentences
    if loaded.kind == "causal-lm":
        inputs = (token_windows(loaded, text, args.context, args.context)[0][0],)
    elif loaded.kind == "encoder":
        inputs = encode_static(loaded, sentences(1)[0])
    else:
        raise QirError(f"qir-eval --profile does not know the inputs of a model of kind '{loaded.kind}'")
    run = CompiledRun(loaded, compiled)
    with console.status(f"profiling {args.compiled}"):
        result = compiled.profile(**dict(zip(run.args, inputs)))
    summary = summarize(result, loaded.seq_len, args.clock_mhz)
    if args.json:
        print(json.dumps({"model": args.model or DEFAULT_MODEL, "compiled": args.compiled, **summary}, indent=2))
        return 0
    for table in tables(summary):
        out.print(table)
    return 0


def compiled_context(compiled, context: int | None) -> int:
    """The static sequence length a compiled model was built for (its first input is [1, L])."""
    from qir.errors import QirError
    shape = next(iter(compiled.inputs.values()))[0]
    if len(shape) != 2:
        raise QirError(f"the compiled model's input has shape {list(shape)}; expected [1, L]")
    if context is not None and context != shape[1]:
        raise QirError(f"--context {context} does not match the compiled model, which takes L = {shape[1]}")
    return shape[1]


class CompiledRun:
    """A compiled artifact called like the interpreter: positional inputs in the order of the
    model's arguments, outputs in the order of its results (an emitter names them `<value>.out`)."""

    def __init__(self, loaded, compiled):
        from qir.errors import QirError
        func = loaded.module.main
        self.compiled, self.args = compiled, [a.name for a in func.args]
        if set(self.args) != set(compiled.inputs):
            raise QirError(f"the compiled model takes {sorted(compiled.inputs)}, the model {sorted(self.args)}: "
                           "was it compiled from this model?")
        self.outputs = [v.name for v in func.outputs]

    def run(self, *arrays):
        from qir.errors import QirError
        got = self.compiled.run(**dict(zip(self.args, arrays)))
        picked = []
        for name in self.outputs:
            key = name + ".out" if name + ".out" in got else name
            if key not in got:
                raise QirError(f"the compiled model has no output for %{name} (it has {sorted(got)})")
            picked.append(got[key])
        return picked


def main(argv=None) -> int:
    return run_main(body, argv)


if __name__ == "__main__":
    sys.exit(main())
