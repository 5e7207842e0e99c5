"""Quantized q-graphs legalized to tfl, emitted, and run in LiteRT: bit-exact with qir's integer
rules, and close to the float model."""
import numpy as np
import pytest

import qir
from backends.tflite.emit import emit_tflite
from backends.tflite.legalize import legalize_tflite
from backends.tflite.reference import run_integer
from backends.tflite.runner import run_tflite
from qir import Builder, Module, PassContext, PassManager, parse_pipeline

TOKENS, VOCAB, HIDDEN = 8, 32, 16


def tiny_model(seed=0) -> Module:
    """Embedding -> gated MLP (relu, silu, gelu) + residual -> masked attention-like matmul/softmax -> head."""
    rng = np.random.default_rng(seed)
    m = Module("tiny")
    b = Builder.new_function(m, "main")
    tokens = b.arg("tokens", (1, TOKENS), "i32")
    w = lambda name, *shape: b.const(name, rng.normal(0, 0.3, shape).astype(np.float32))  # noqa: E731
    x = b.gather(w("embd", VOCAB, HIDDEN), tokens, name="x")
    h = b.relu(b.linear(x, w("up", 2 * HIDDEN, HIDDEN), w("up.bias", 2 * HIDDEN), name="up"), name="up_relu")
    g = b.silu(b.linear(x, w("gate", 2 * HIDDEN, HIDDEN), name="gate"), name="gate_act")
    h = b.mul(h, b.gelu(g, name="gelu"), name="hidden")
    y = b.add(x, b.linear(h, w("down", HIDDEN, 2 * HIDDEN), name="down"), name="resid")
    scores = b.mul(b.matmul(y, y, transpose_b=True, name="scores"), b.const("scale", np.float32(0.25)), name="scaled")
    causal = np.tril(np.ones((TOKENS, TOKENS), bool))
    scores = b.masked_fill(scores, b.const("causal", causal), value=-1e4, name="masked")
    probs = b.softmax(scores, name="probs")
    ctx = b.matmul(probs, b.reshape(y, shape=(1, TOKENS, HIDDEN), name="values"), name="ctx")
    b.ret(b.linear(ctx, w("head", VOCAB, HIDDEN), name="logits"))
    qir.verify(m)
    return m


def token_batches(count, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, VOCAB, (1, TOKENS)).astype(np.int32),) for _ in range(count)]


def quantized(recipe: str) -> Module:
    m = tiny_model()
    ctx = PassContext(data={"calibration_inputs": token_batches(8)})
    PassManager(parse_pipeline(f"calibrate{{samples=8}},quantize{{recipe={recipe}}}")).run(m, ctx)
    return m


@pytest.mark.parametrize("recipe", ["w8a8", "a16w8"])
def test_legalized_graph_is_bit_exact_with_litert(recipe):
    legal = legalize_tflite(quantized(recipe))
    model = emit_tflite(legal)
    for (tokens,) in token_batches(3, seed=7):
        runtime = run_tflite(model, {"tokens": tokens})["logits.out"]
        ours = run_integer(legal, tokens)[0]
        mismatches = int(np.count_nonzero(runtime != ours))
        print(f"{recipe}: {mismatches} of {ours.size} logits differ from LiteRT BUILTIN_REF")
        assert mismatches == 0


def test_integer_model_tracks_the_float_model():
    sqnr = {}
    for recipe in ("w8a8", "a16w8"):
        module = quantized(recipe)
        legal = legalize_tflite(module)
        signal = noise = 0.0
        for (tokens,) in token_batches(4, seed=9):
            reference = qir.interpret(module, tokens)[0].astype(np.float64)
            got = run_integer(legal, tokens)[0].astype(np.float64)
            signal += float((reference ** 2).sum())
            noise += float(((got - reference) ** 2).sum())
        sqnr[recipe] = 10 * np.log10(signal / noise)
    print("SQNR of the integer logits against the float model (dB):", sqnr)
    assert sqnr["a16w8"] >= sqnr["w8a8"] > 15


def test_fake_quant_predicts_the_integer_model():
    """Fake-quant mode models the recipe's specs; the runtime imposes some of its own (a quantized
    softmax's output is fixed at 1/256, int16 softmax runs in int8 here), so the two differ by more
    than rounding. Measure the gap relative to the output range and keep it small."""
    module = quantized("a16w8")
    legal = legalize_tflite(module)
    tokens = token_batches(1, seed=3)[0][0]
    fake = qir.Interpreter(module, mode="fake-quant").run(tokens)[0]
    gap = np.abs(run_integer(legal, tokens)[0] - fake).max() / np.ptp(fake)
    print(f"integer vs fake-quant: max gap {gap:.4%} of the output range")
    assert gap < 0.01


def test_unquantized_module_is_refused():
    with pytest.raises(qir.QirError, match="no quant spec"):
        legalize_tflite(tiny_model())


def test_op_without_lowering_is_named():
    m = Module("norm")
    b = Builder.new_function(m, "main")
    x = b.arg("x", (2, 4))
    b.ret(b.rms_norm(x, b.const("g", np.ones(4, np.float32)), eps=1e-5, name="normed"))
    ctx = PassContext(data={"calibration_inputs": [(np.ones((2, 4), np.float32),)]})
    PassManager(parse_pipeline("calibrate{samples=1},quantize{recipe=a16w8}")).run(m, ctx)
    with pytest.raises(qir.QirError, match=r"q.rms_norm \(%normed\) has no TFLite lowering"):
        legalize_tflite(m)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_lowers_bit_exact_and_close_to_float(layout):
    rng = np.random.default_rng(4)
    heads, length, dim = 2, 6, 8
    m = Module("rope")
    b = Builder.new_function(m, "main")
    x = b.arg("x", (1, heads, length, dim))
    angles = np.arange(length)[:, None] * (1e4 ** (-np.arange(dim // 2) / (dim // 2)))[None]
    table = np.repeat(angles, 2, axis=-1) if layout == "interleaved" else np.concatenate([angles, angles], -1)
    cos, sin = b.const("cos", np.cos(table).astype(np.float32)), b.const("sin", np.sin(table).astype(np.float32))
    b.ret(b.rope(x, cos, sin, layout=layout, name="rotated"))
    samples = [(rng.normal(size=(1, heads, length, dim)).astype(np.float32),) for _ in range(4)]
    PassManager(parse_pipeline("calibrate,quantize{recipe=a16w8}")).run(m, PassContext(data={"calibration_inputs": samples}))
    legal = legalize_tflite(m)
    test_input = rng.normal(size=(1, heads, length, dim)).astype(np.float32)
    runtime = run_tflite(emit_tflite(legal), {"x": test_input})["rotated.out"]
    ours = run_integer(legal, test_input)[0]
    assert np.count_nonzero(runtime != ours) == 0
    reference = qir.interpret(m, test_input)[0]
    sqnr = 10 * np.log10((reference ** 2).sum() / ((ours - reference) ** 2).sum())
    print(f"rope {layout}: 0 mismatches with LiteRT, SQNR vs float {sqnr:.1f} dB")
    assert sqnr > 40
