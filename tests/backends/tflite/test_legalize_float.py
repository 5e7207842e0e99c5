"""Unquantized models as float32 .tflite files: tiny random llama graphs (both RoPE layouts,
SwiGLU and ReLU MLPs, tied head, biases), a tiny BERT with a runtime attention mask, and the real
SmolLM2, run in LiteRT (reference kernels and XNNPACK) against qir's float interpreter."""
import numpy as np
import pytest

import qir
from ai_edge_litert import schema_py_generated as fb
from backends.tflite.emit import emit_tflite
from backends.tflite.legalize_float import legalize_tflite_float
from backends.tflite.runner import run_tflite
from frontends.llama import LlamaConfig, build_llama, hf_tensor_shapes
from qir.cli import compile as compile_cli
from qir.weights import WeightStore
from tests.backends.tflite.test_compile_tflite import write_model
from tests.backends.tflite.test_legalize import token_batches, tiny_model

TOLERANCE = 1e-4  # max |LiteRT − interpreter| relative to max |interpreter|, per output


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - expected).max() / np.abs(expected).max())


def check_float_tflite(module: qir.Module, feeds: dict[str, np.ndarray], label: str) -> qir.Module:
    """Legalize, emit, run under BUILTIN_REF and XNNPACK; every output within TOLERANCE."""
    legal = legalize_tflite_float(module)
    assert all(op.is_float for op in legal.main.ops if op.name != "tfl.not_equal")
    model = emit_tflite(legal)
    expected = qir.interpret(module, *(feeds[a.name] for a in module.main.args))
    for reference in (True, False):
        got = run_tflite(model, feeds, reference=reference)
        for value, want in zip(module.main.outputs, expected):
            assert np.abs(want).max() > 1e-3, f"{label}: output %{value.name} is degenerate"
            error = relative_error(got[value.name + ".out"], np.asarray(want, np.float64))
            print(f"{label} {'BUILTIN_REF' if reference else 'XNNPACK'} %{value.name}: relative error {error:.2e}")
            assert error <= TOLERANCE, f"{label}: %{value.name} differs by {error:.2e} of its range"
    return legal


# -- llama family ---------------------------------------------------------------------------------

LLAMA_CASES = {
    "half-swiglu-gqa": LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                                   num_kv_heads=2, head_dim=16, rms_eps=1e-5, rope_theta=10000.0),
    "interleaved-relu-tied-biases": LlamaConfig(vocab_size=80, hidden_size=48, intermediate_size=64, num_layers=2,
                                                num_heads=6, num_kv_heads=2, head_dim=8, rms_eps=1e-6,
                                                rope_theta=500.0, tie_embeddings=True, qkv_bias=True, o_bias=True,
                                                mlp_bias=True, activation="relu", rope_layout="interleaved"),
}
SEQ_LEN = 16


def random_llama(config: LlamaConfig, seed: int = 0) -> qir.Module:
    """Norm weights around 1, matrices wide enough that attention and every token matter."""
    rng = np.random.default_rng(seed)
    weights = WeightStore()
    for name, shape in hf_tensor_shapes(config).items():
        if name.endswith("norm.weight"):
            data = 1 + 0.3 * rng.standard_normal(shape)
        else:
            data = rng.normal(0, 0.15 if len(shape) == 2 else 0.1, shape)
        weights.set(name, data.astype(np.float32))
    return build_llama(config, weights, SEQ_LEN)


@pytest.mark.parametrize("case", list(LLAMA_CASES))
def test_tiny_llama_matches_the_interpreter(case):
    config = LLAMA_CASES[case]
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, (1, SEQ_LEN)).astype(np.int32)
    legal = check_float_tflite(random_llama(config), {"tokens": tokens}, case)
    ops = {op.name for op in legal.main.ops}
    assert {"tfl.rsqrt", "tfl.mean", "tfl.strided_slice", "tfl.select_v2", "tfl.softmax"} <= ops
    assert ("tfl.logistic" in ops) == (config.activation == "silu") and ("tfl.relu" in ops) == (config.activation == "relu")


# -- BERT -----------------------------------------------------------------------------------------

def test_tiny_bert_with_padding_matches_the_interpreter(tmp_path):
    from tests.frontends.test_bert_parity import LENGTHS, SEQ_LEN as BERT_LEN, padded_inputs, tiny_bert
    reference = tiny_bert()
    reference.save_pretrained(tmp_path)
    loaded = qir.load_model(tmp_path, seq_len=BERT_LEN)
    ids, mask = padded_inputs(reference.config.vocab_size)
    for row in (0, LENGTHS.index(5)):  # no padding, then most of the row padded
        legal = check_float_tflite(loaded.module, {"input_ids": ids[row:row + 1], "attention_mask": mask[row:row + 1]},
                                   f"bert row {row}")
    assert {"tfl.not_equal", "tfl.select_v2", "tfl.gelu", "tfl.sub"} <= {op.name for op in legal.main.ops}


def test_other_core_ops_match_the_interpreter():
    """What the model builders do not use today: casts, sums and means over inner axes, division,
    maximum, slices, concatenation, tanh, sigmoid, tanh-GELU, a float mask."""
    rng = np.random.default_rng(2)
    m = qir.Module("misc")
    b = qir.Builder.new_function(m, "main")
    x = b.arg("x", (2, 6, 8))
    flags = b.arg("flags", (2, 6, 1), "i32")
    weight = b.const("weight", rng.normal(0, 0.5, (8,)).astype(np.float32))
    count = b.reduce_sum(b.cast(flags, dtype="f32", name="flags_f32"), axes=[1], keepdims=True, name="count")
    safe = b.maximum(count, b.const("one", np.float32(1.0)), name="safe")
    mean = b.div(b.reduce_sum(b.mul(x, weight, name="weighted"), axes=[1], keepdims=True, name="total"), safe,
                 name="mean")
    centred = b.sub(x, b.reduce_mean(x, axes=[0, 2], keepdims=True, name="centre"), name="centred")
    left = b.tanh(b.slice(centred, begin=[0, 0, 0], end=[2, 6, 4], name="left"), name="left_tanh")
    right = b.sigmoid(b.slice(centred, begin=[0, 0, 4], end=[2, 6, 8], name="right"), name="right_sigmoid")
    joined = b.concat(left, right, axis=-1, name="joined")
    gated = b.gelu(b.add(joined, mean, name="shifted"), approximate="tanh", name="gated")
    b.ret(b.masked_fill(gated, flags, value=-3.0, name="kept"), b.reduce_mean(x, axes=[2], name="rows"))
    qir.verify(m)
    feeds = {"x": rng.normal(0, 2, (2, 6, 8)).astype(np.float32),
             "flags": rng.integers(0, 2, (2, 6, 1)).astype(np.int32)}
    legal = check_float_tflite(m, feeds, "misc")
    assert {"tfl.cast", "tfl.sum", "tfl.div", "tfl.maximum", "tfl.slice", "tfl.tanh"} <= {op.name for op in legal.main.ops}


# -- the real SmolLM2 -----------------------------------------------------------------------------

def test_smollm2_matches_the_interpreter():
    from qir.text import pydoc_text
    loaded = qir.load_model("smollm2", seq_len=64)
    ids = loaded.tokenizer.encode(pydoc_text()[:4000]).ids[:64]
    tokens = np.asarray(ids, np.int32)[None]
    check_float_tflite(loaded.module, {"tokens": tokens}, "smollm2 L=64")


# -- the command, the text form and errors --------------------------------------------------------

def test_compile_float_recipe_writes_a_float_tflite(tmp_path):
    model = write_model(tmp_path)
    outdir = tmp_path / "out"
    assert compile_cli.main([str(model), "--recipe", "float", "--target", "tflite", "-o", str(outdir)]) == 0
    assert {"model.tflite", "model.tflite.qir"} <= {p.name for p in outdir.iterdir()}
    text = (outdir / "model.tflite.qir").read_text()
    assert "!q<" not in text and print_parsed(text) == text
    data = (outdir / "model.tflite").read_bytes()
    model = fb.Model.GetRootAsModel(data, 0)
    versions = {(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).Version())
                for i in range(model.OperatorCodesLength())}
    assert (fb.BuiltinOperator.FULLY_CONNECTED, 5) in versions  # zero biases: no bias-less version 6
    assert not any(code == fb.BuiltinOperator.FULLY_CONNECTED and v != 5 for code, v in versions)
    tokens = token_batches(1, seed=3)[0][0]
    got = run_tflite(data, {"tokens": tokens})["logits.out"]
    expected = qir.interpret(tiny_model(), tokens)[0]
    assert relative_error(got, np.asarray(expected, np.float64)) <= TOLERANCE


def print_parsed(text: str) -> str:
    return qir.print_module(qir.parse(text))


def test_op_without_float_lowering_is_named_and_nothing_is_written(tmp_path, capsys):
    m = qir.Module("conv")
    b = qir.Builder.new_function(m, "main")
    x = b.arg("x", (1, 4, 4, 2))
    b.ret(b.conv2d(x, b.const("w", np.ones((3, 1, 1, 2), np.float32)), name="features"))
    (tmp_path / "conv.qir").write_text(qir.print_module(m))
    code = compile_cli.main([str(tmp_path / "conv.qir"), "--recipe", "float", "--target", "tflite",
                             "-o", str(tmp_path / "out")])
    assert code == 2
    assert "q.conv2d (%features) has no float TFLite lowering" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_float_op_refuses_a_quantized_result_and_unquantized_integers():
    from tests.backends.tflite.helpers import Graph, spec
    g = Graph()
    x = g.arg("x", np.ones((2, 3), np.float32))
    y = g.op("tfl.relu", x, quant=spec("i8", 0.1), name="y")
    with pytest.raises(qir.QirError, match="tfl.relu: a float op .* cannot give a quantized result"):
        qir.verify(g.ret(y).module)
    g = Graph()
    a = g.arg("a", np.ones((2, 3), np.int8))
    with pytest.raises(qir.QirError, match=r"tfl.add: input 1 i8\[2,3\] has no quant spec"):
        g.op("tfl.add", a, a, quant=None, name="y")
