"""--target nnapi: what NNAPI runs passes and runs in LiteRT exactly as --target tflite writes it;
every op NNAPI would not run is named with its rule and the q op's file:line:col."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qir
from backends.tflite.legalize import legalize_tflite
from backends.tflite.nnapi import check_nnapi, nnapi_violations
from backends.tflite.reference import run_integer
from backends.tflite.runner import run_tflite
from backends.tflite.support_table import nnapi_rules_table, nnapi_support_table
from qir import Builder, Module
from qir.cli import compile as compile_cli
from qir.weights import save_weights
from tests.backends.tflite.helpers import Graph, spec
from tests.backends.tflite.test_compile_tflite import write_model

DOC = Path(__file__).resolve().parents[3] / "docs" / "tflite-backend.md"
TOKENS, VOCAB, HIDDEN, HEADS, FFN = 8, 40, 16, 2, 32
HEAD_DIM = HIDDEN // HEADS
# 8-bit everywhere and one scale per weight: what NNAPI's kernels take
NNAPI_RECIPE = {"weights": {"bits": 8, "scheme": "per-tensor"}, "activations": {"bits": 8}}


def llama_like(seed=0) -> Module:
    """Embedding -> attention (q/k/v, half-layout RoPE, scaled scores, softmax) -> residual ->
    SiLU-gated MLP -> residual -> head; random weights (a shape test of the target, not a model)."""
    rng = np.random.default_rng(seed)
    m = Module("llama_like")
    b = Builder.new_function(m, "main")
    tokens = b.arg("tokens", (1, TOKENS), "i32")
    w = lambda name, *shape: b.const(name, rng.normal(0, 0.3, shape).astype(np.float32))  # noqa: E731
    x = b.gather(w("token_embd", VOCAB, HIDDEN), tokens, axis=0, name="x")
    angles = np.arange(TOKENS)[:, None] * 1e4 ** (-np.arange(HEAD_DIM // 2) / (HEAD_DIM // 2))[None]
    table = np.concatenate([angles, angles], -1)
    cos, sin = b.const("rope.cos", np.cos(table).astype(np.float32)), b.const("rope.sin", np.sin(table).astype(np.float32))

    def heads(name):
        h = b.linear(x, w(f"attn_{name}", HIDDEN, HIDDEN), name=name)
        h = b.reshape(h, shape=(1, TOKENS, HEADS, HEAD_DIM), name=f"{name}.split")
        return b.transpose(h, perm=(0, 2, 1, 3), name=f"{name}.heads")

    q = b.rope(heads("q"), cos, sin, layout="half", name="q.rope")
    k = b.rope(heads("k"), cos, sin, layout="half", name="k.rope")
    scores = b.mul(b.matmul(q, k, transpose_b=True, name="scores"), b.const("attn_scale", np.float32(HEAD_DIM ** -0.5)),
                   name="scores.scaled")
    ctx = b.matmul(b.softmax(scores, name="probs"), heads("v"), name="ctx")
    ctx = b.reshape(b.transpose(ctx, perm=(0, 2, 1, 3), name="ctx.tokens"), shape=(1, TOKENS, HIDDEN), name="ctx.merged")
    h = b.add(x, b.linear(ctx, w("attn_output", HIDDEN, HIDDEN), name="attn_out"), name="h")
    gate = b.silu(b.linear(h, w("ffn_gate", FFN, HIDDEN), name="gate"), name="gate.act")
    up = b.mul(gate, b.linear(h, w("ffn_up", FFN, HIDDEN), name="up"), name="ffn")
    h = b.add(h, b.linear(up, w("ffn_down", HIDDEN, FFN), name="down"), name="h2")
    b.ret(b.linear(h, w("output", VOCAB, HIDDEN), name="logits"))
    qir.verify(m)
    return m


def token_batches(count, seed):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, VOCAB, (1, TOKENS)).astype(np.int32),) for _ in range(count)]


def write_llama_like(folder: Path) -> tuple[Path, Path, Path]:
    module = llama_like()
    module.attrs["weights"] = "llama_like.safetensors"
    save_weights(module, folder / "llama_like.safetensors")
    (folder / "llama_like.qir").write_text(qir.print_module(module))
    np.savez(folder / "calibration.npz", tokens=np.stack([t for (t,) in token_batches(8, seed=1)]))
    (folder / "nnapi.json").write_text(json.dumps(NNAPI_RECIPE))
    return folder / "llama_like.qir", folder / "nnapi.json", folder / "calibration.npz"


def test_llama_like_graph_passes_nnapi_and_runs_bit_exact_like_tflite(tmp_path):
    model, recipe, calibration = write_llama_like(tmp_path)
    written = {}
    for target in ("nnapi", "tflite"):
        outdir = tmp_path / target
        assert compile_cli.main([str(model), "--recipe", str(recipe), "--target", target, "--report-samples", "0",
                                 "--calibration-data", str(calibration), "-o", str(outdir)]) == 0
        written[target] = (outdir / "model.tflite").read_bytes()
    assert written["nnapi"] == written["tflite"]  # the same legalization and file, only checked
    legal = qir.parse_file(tmp_path / "nnapi" / "model.nnapi.qir")
    check_nnapi(legal)
    assert {op.name for op in legal.main.ops} >= {"tfl.fully_connected", "tfl.batch_matmul", "tfl.softmax",
                                                  "tfl.logistic", "tfl.strided_slice", "tfl.gather"}
    quantized = qir.parse_file(tmp_path / "nnapi" / "model.qir")
    ours_module = legalize_tflite(quantized)
    signal = noise = 0.0
    for (tokens,) in token_batches(3, seed=7):
        runtime = run_tflite(written["nnapi"], {"tokens": tokens})["logits.out"]
        ours = run_integer(ours_module, tokens)[0]
        mismatches = int(np.count_nonzero(runtime != ours))
        print(f"nnapi file in LiteRT BUILTIN_REF: {mismatches} of {ours.size} logits differ from the integer rules")
        assert mismatches == 0
        reference = qir.interpret(quantized, tokens)[0].astype(np.float64)
        signal += float((reference ** 2).sum())
        noise += float(((runtime - reference) ** 2).sum())
    sqnr = 10 * np.log10(signal / noise)
    print(f"int8 per-tensor logits against the float model: SQNR {sqnr:.1f} dB")
    assert sqnr > 10


def run_compile(*args):
    proc = subprocess.run([sys.executable, "-m", "qir.cli.compile", *map(str, args)], capture_output=True, text=True)
    return proc.returncode, proc.stderr


def test_builtin_w8a8_is_refused_with_every_violation_located(tmp_path):
    """The built-in w8a8 keeps attention in int16, weights per channel, and the tiny graph has
    GELU and a SELECT_V2 mask: one summary line, then one line per (op, rule) at its .qir line."""
    model = write_model(tmp_path)
    outdir = tmp_path / "out"
    code, err = run_compile(model, "--recipe", "w8a8", "--target", "nnapi", "--report-samples", "0",
                            "--calibration-data", tmp_path / "calibration.npz", "-o", outdir)
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: nnapi: ops NNAPI cannot run (") and lines[0].endswith(" violations):"), err
    count = int(lines[0].split("(")[1].split()[0])
    assert len(lines) == count + 1
    source = model.read_text().splitlines()
    rules = set()
    for line in lines[1:]:
        place, subject, rule, reason = (part.strip() for part in line.split(": ", 3))
        file, row, column = place.split(":")
        assert file == str(model) and reason
        assert subject.startswith("tfl.") and " %" in subject
        q_line = source[int(row) - 1]
        assert q_line[int(column) - 1:].startswith("%")  # the q op's result, where the op starts
        rules.add(rule)
    assert {"fc-per-tensor-weights", "delegated", "no-int16", "op-version"} <= rules
    assert "tfl.gelu %gelu: delegated: the NNAPI delegate has no mapping for GELU" in err
    assert "tfl.select_v2 %masked: delegated" in err
    assert not outdir.exists()


def test_violation_names_the_q_value_when_there_is_no_file():
    m = Module("gelu")
    b = Builder.new_function(m, "main")
    x = b.arg("x", (2, 8))
    b.ret(b.gelu(x, name="act"))
    qir.PassManager(qir.parse_pipeline("calibrate,quantize{recipe=w8a8}")).run(
        m, qir.PassContext(data={"calibration_inputs": [(np.linspace(-3, 3, 16, dtype=np.float32).reshape(2, 8),)]}))
    with pytest.raises(qir.QirError) as info:
        check_nnapi(legalize_tflite(m))
    assert str(info.value) == ("nnapi: ops NNAPI cannot run: q.gelu %act: tfl.gelu %act: delegated: "
                               "the NNAPI delegate has no mapping for GELU; it would run on the CPU")


# -- one rule at a time, on tfl graphs built directly ---------------------------------------------

S8, S16 = spec("i8", 0.05, 3), spec("i16", 0.001)


def batch_matmul(shape_b):
    g = Graph()
    a = g.arg("a", np.zeros((2, 4, 8), np.int8), S8)
    bv = g.arg("b", np.zeros(shape_b, np.int8), S8)
    return g.ret(g.op("tfl.batch_matmul", a, bv, quant=S8, name="y"))


def unary(op_name, dtype, out_spec, shape=(2, 8), **options):
    g = Graph()
    x = g.arg("x", np.zeros(shape, dtype), S8 if dtype == np.int8 else S16)
    return g.ret(g.op(op_name, x, quant=out_spec, name="y", **options))


def add(dtype, x_spec):
    g = Graph()
    x = g.arg("x", np.zeros((2, 8), dtype), x_spec)
    return g.ret(g.op("tfl.add", x, x, quant=x_spec, name="y"))


def mul_above_one():
    g = Graph()
    x = g.arg("x", np.zeros((2, 8), np.int8), spec("i8", 0.5))
    return g.ret(g.op("tfl.mul", x, x, quant=spec("i8", 0.01), name="y"))


def fully_connected(dtype, x_spec, w_spec, w_scales):
    g = Graph()
    x = g.arg("x", np.zeros((2, 4), dtype), x_spec)
    w = g.const("w", np.ones((3, 4), np.int8), w_spec)
    bias = g.const("b", np.zeros(3, np.int64 if dtype == np.int16 else np.int32))
    return g.ret(g.op("tfl.fully_connected", x, w, bias, quant=x_spec, name="y"))


CASES = {
    "batch matmul, same batch": (lambda: batch_matmul((2, 8, 4)), set()),
    "batch matmul, broadcast batch": (lambda: batch_matmul((1, 8, 4)), {"batch-matmul-no-broadcast"}),
    "rank 5 transpose": (lambda: unary("tfl.transpose", np.int8, S8, shape=(1, 2, 2, 2, 2), perm=[0, 1, 2, 4, 3]),
                         {"rank-4", "op-version"}),  # TRANSPOSE of rank 5 is version 4
    "int8 tanh at 1/128": (lambda: unary("tfl.tanh", np.int8, spec("i8", 1 / 128, 0)), set()),
    "int8 tanh at another spec": (lambda: unary("tfl.tanh", np.int8, spec("i8", 0.01, 0)), {"fixed-output-spec"}),
    "mean keeping its spec": (lambda: unary("tfl.mean", np.int8, S8, axes=[-1]), set()),
    "mean changing its spec": (lambda: unary("tfl.mean", np.int8, spec("i8", 0.02, 0), axes=[-1]), {"mean-same-spec"}),
    "quantized rsqrt": (lambda: unary("tfl.rsqrt", np.int8, spec("i8", 0.02, -128)), {"float-only"}),
    "int8 add": (lambda: add(np.int8, S8), set()),
    "int16 add": (lambda: add(np.int16, S16), {"op-version", "no-int16"}),
    "mul with a multiplier above one": (mul_above_one, {"op-version"}),
    "fc per tensor": (lambda: fully_connected(np.int8, S8, spec("i8", 0.1), 1), set()),
    "fc per channel": (lambda: fully_connected(np.int8, S8, spec("i8", (0.1, 0.2, 0.3), axis=0), 3),
                       {"fc-per-tensor-weights"}),
    "fc int16": (lambda: fully_connected(np.int16, S16, spec("i8", 0.1), 1), {"fc-no-int16"}),
}


@pytest.mark.parametrize("case", CASES)
def test_each_rule(case):
    build, expected = CASES[case]
    graph = build()
    qir.verify(graph.module)
    assert {v.rule for v in nnapi_violations(graph.module)} == expected


def test_every_rule_is_exercised():
    fired = set().union(*(expected for _, expected in CASES.values())) | {"delegated"}
    from backends.tflite.nnapi import RULES
    assert fired == set(RULES)


def test_doc_has_current_nnapi_tables():
    text = DOC.read_text()
    assert nnapi_rules_table() in text and nnapi_support_table() in text, \
        "regenerate the NNAPI tables in docs/tflite-backend.md from backends.tflite.support_table"
