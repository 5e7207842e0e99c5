"""fold-norms: the same function, norms with unit weight, scales in the linears; post-norm BERT untouched."""
import numpy as np
import pytest

import qir
from qir import Builder, Module, PassContext, PassManager, QirError, parse_pipeline
from tests.passes.tiny_llama import tiny_llama, tokens


def fold(module, pipeline="fold-norms"):
    ctx = PassContext()
    PassManager(parse_pipeline(pipeline)).run(module, ctx)  # verifies after each pass
    return ctx.data.get("fold-norms")


@pytest.mark.parametrize("tie, bias", [(False, False), (True, True)])
def test_llama_outputs_unchanged_and_norms_unit(tie, bias):
    m = tiny_llama(tie=tie, bias=bias)
    (x,) = tokens(1, seed=1)[0]
    before = qir.interpret(m, x)[0]
    table = m.weights.get("token_embd").copy()
    q = m.weights.get("blk.0.attn_q").copy()
    g = m.weights.get("blk.0.attn_norm").copy()
    stats = fold(m)
    np.testing.assert_allclose(qir.interpret(m, x)[0], before, rtol=1e-5, atol=1e-5)
    assert stats == {"folded": 5, "left": 0}  # 2 per layer and the output norm
    for name in ["blk.0.attn_norm", "blk.0.ffn_norm", "blk.1.attn_norm", "blk.1.ffn_norm", "output_norm"]:
        np.testing.assert_array_equal(m.weights.get(name), 1.0)
    np.testing.assert_allclose(m.weights.get("blk.0.attn_q"), q * g[None, :], rtol=1e-6)
    head = m.main.outputs[0].producer.operands[1].name
    assert head == ("token_embd.output_norm" if tie else "output")  # a tied head got its own constant
    np.testing.assert_array_equal(m.weights.get("token_embd"), table)  # the embedding itself is not scaled


def test_folding_twice_changes_nothing():
    m = tiny_llama()
    fold(m)
    text = qir.print_module(m)
    assert fold(m) == {"folded": 0, "left": 5}
    assert qir.print_module(m) == text


def test_post_norm_bert_is_left_alone():
    """all-MiniLM-L6-v2: every LayerNorm also feeds the residual add, so none can be folded."""
    loaded = qir.load_model("minilm", seq_len=16)
    m = loaded.module
    norms = [op for op in m.main.ops if op.name == "q.layer_norm"]
    before = {op.operands[1].name: m.weights.get(op.operands[1].name).copy() for op in norms}
    assert len(norms) == 13  # the embedding norm and two per layer
    assert fold(m) == {"folded": 0, "left": 13}
    for name, data in before.items():
        np.testing.assert_array_equal(m.weights.get(name), data)


def test_a_norm_weight_used_elsewhere_is_left_alone():
    m = Module("shared")
    b = Builder.new_function(m, "main")
    x = b.arg("x", (2, 4))
    g = b.const("g", np.array([1.0, 2.0, 3.0, 4.0], np.float32))
    n = b.rms_norm(x, g, eps=1e-5, name="n")
    y = b.linear(n, b.const("w", np.ones((3, 4), np.float32)), name="y")
    b.ret(y, b.mul(x, g, name="scaled"))
    assert fold(m) == {"folded": 0, "left": 1}
    np.testing.assert_array_equal(m.weights.get("g"), [1.0, 2.0, 3.0, 4.0])


def test_a_weight_shared_by_two_functions_is_folded_once():
    text = """module @two
const @g : f32[4] = [1.0, 2.0, 0.5, -1.0]
const @w : f32[2,4] = [1.0, 1.0, 1.0, 1.0, 0.5, 0.25, -0.5, 2.0]

func @prefill(%x: f32[3,4]) -> f32[3,2] {
  %n = q.rms_norm %x, @g {eps = 1e-05} : f32[3,4]
  %y = q.linear %n, @w : f32[3,2]
  return %y
}

func @decode(%x: f32[1,4]) -> f32[1,2] {
  %n = q.rms_norm %x, @g {eps = 1e-05} : f32[1,4]
  %y = q.linear %n, @w : f32[1,2]
  return %y
}
"""
    m = qir.parse(text)
    rng = np.random.default_rng(0)
    x3, x1 = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((1, 4)).astype(np.float32)
    want = qir.interpret(m, x3)[0], qir.interpret(m, x1, function="decode")[0]
    assert fold(m) == {"folded": 2, "left": 0}
    np.testing.assert_allclose(m.weights.get("w"), [[1.0, 2.0, 0.5, -1.0], [0.5, 0.5, -0.25, -2.0]])
    assert set(m.constants) == {"g", "w"}
    np.testing.assert_allclose(qir.interpret(m, x3)[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(qir.interpret(m, x1, function="decode")[0], want[1], rtol=1e-6)


def test_folding_a_quantized_module_is_an_error():
    m = tiny_llama()
    ctx = PassContext(data={"calibration_inputs": tokens(1)})
    PassManager(parse_pipeline("calibrate{histogram=false},quantize{recipe=w8a8}")).run(m, ctx)
    with pytest.raises(QirError, match="fold-norms: the module is already quantized"):
        fold(m)
