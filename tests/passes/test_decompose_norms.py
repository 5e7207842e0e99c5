"""decompose-norms: the same function, each intermediate a value of its own, the first row apart."""
import numpy as np
import pytest

import qir
from qir import Builder, Module, PassContext, PassManager, parse_pipeline
from qir.quant_recipe import load_recipe

L, D = 6, 16


def norm_module(kind: str) -> Module:
    rng = np.random.default_rng(0)
    m = Module("norms")
    b = Builder.new_function(m, "main")
    x = b.arg("x", (1, L, D))
    w = b.const("w", rng.normal(1, 0.2, D).astype(np.float32))
    if kind == "rms":
        y = b.rms_norm(x, w, eps=1e-5, name="normed")
    else:
        y = b.layer_norm(x, w, b.const("b", rng.normal(0, 0.2, D).astype(np.float32)), eps=1e-12, name="normed")
    b.ret(b.linear(y, b.const("proj", rng.normal(0, 0.3, (4, D)).astype(np.float32)), name="out"))
    return m


def inputs(seed=1):
    x = np.random.default_rng(seed).normal(0, 2, (1, L, D)).astype(np.float32)
    x[0, 0, 3] = 500.0  # a massive activation on the first token
    return x


@pytest.mark.parametrize("kind", ["rms", "layer"])
@pytest.mark.parametrize("split", [True, False])
def test_outputs_are_unchanged(kind, split):
    m = norm_module(kind)
    before = qir.Interpreter(m).run(inputs())[0]
    PassManager(parse_pipeline(f"decompose-norms{{split_first_row={str(split).lower()}}}")).run(m)
    ops = [op.name for op in m.main.ops]
    assert "q.rms_norm" not in ops and "q.layer_norm" not in ops
    assert ops.count("q.rsqrt") == (2 if split else 1)
    after = qir.Interpreter(m).run(inputs())[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_decomposed_rms_norm_reads_as_written():
    m = norm_module("rms")
    PassManager(parse_pipeline("decompose-norms{split_first_row=false}")).run(m)
    text = qir.print_module(m)
    assert """
  %normed.norm_rows = q.reshape %x {shape = [6, 1, 16]} : f32[6,1,16]
  %normed.norm_ssq = q.matmul %normed.norm_rows, %normed.norm_rows {transpose_b = true} : f32[6,1,1]
  %normed.norm_sumsq = q.reshape %normed.norm_ssq {shape = [1, 6, 1]} : f32[1,6,1]
  %normed.norm_var = q.add %normed.norm_sumsq, @norm_eps : f32[1,6,1]
  %normed.norm_rstd = q.rsqrt %normed.norm_var : f32[1,6,1]
  %normed.norm_normed = q.mul %x, %normed.norm_rstd : f32[1,6,16]
  %normed = q.mul %normed.norm_normed, @w.scaled : f32[1,6,16]
  %out = q.linear %normed, @proj : f32[1,6,4]
""" in text
    assert qir.print_module(qir.parse(text)) == text


def test_norms_with_one_epsilon_share_its_constant():
    m = Module("two")
    b = Builder.new_function(m, "main")
    x = b.arg("x", (1, L, D))
    w = b.const("w", np.ones(D, np.float32))
    b.ret(b.rms_norm(b.rms_norm(x, w, eps=1e-5, name="a"), w, eps=1e-5, name="c"))
    PassManager(parse_pipeline("decompose-norms")).run(m)
    assert [n for n in m.constants if n.startswith("norm_eps")] == ["norm_eps"]


def test_w8a8_keeps_norm_input_and_internals_in_16_bit():
    m = norm_module("rms")
    batches = [(inputs(s),) for s in range(4)]
    ctx = PassContext(data={"calibration_inputs": batches})
    PassManager(parse_pipeline("decompose-norms,calibrate{samples=4},quantize{recipe=w8a8}")).run(m, ctx)
    bits = {v.name: v.quant.bits for op in m.main.ops for v in op.results}
    bits["x"] = m.main.args[0].quant.bits
    internals = [n for n in bits if ".norm_" in n]
    assert len(internals) == 15 and all(bits[n] == 16 for n in internals)
    assert bits["x"] == 16  # it feeds the norm
    assert bits["normed"] == 8 and bits["out"] == 8  # the norm's output is an ordinary activation


def test_recipe_feeds_selector_is_checked():
    from qir.quant_recipe import recipe_from_dict
    recipe = recipe_from_dict("r", {"overrides": [{"feeds": r"head\..*", "activations": {"bits": 16}}]})
    assert recipe.settings_for("activations", "v", feeds=("head.in",))["bits"] == 16
    assert recipe.settings_for("activations", "v", feeds=("body",))["bits"] == 8
    with pytest.raises(qir.QirError, match="bad regex"):
        recipe_from_dict("r", {"overrides": [{"feeds": "(", "activations": {"bits": 16}}]})
    assert load_recipe("w8a8").overrides  # the built-in policy is there
