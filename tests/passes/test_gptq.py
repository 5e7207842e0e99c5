"""gptq: the two-column case against its closed form; identity moments give round-to-nearest; on a
tiny llama at 4-bit weights the layer outputs and the held-out hidden state move less than with
round-to-nearest, the weights stay on their grids, the graph keeps its ops and runs bit-exact in
TFLite; bad input."""
import numpy as np
import pytest

import qir
from qir import PassContext, PassManager, QirError, parse_pipeline
from passes.gptq import grid_round, gptq_round, inverse_factor, output_error
from tests.passes.test_learn import DECOMPOSED, hidden_error, quantized, tokens

W4 = "canonicalize,dce,calibrate{histogram=false},quantize{recipe=w4a8}"


def test_two_columns_match_the_closed_form():
    """After rounding column 0, the best column 1 for inputs with moments H is w1 + (w0 - q0)·H01/H11."""
    w = np.array([[0.37, 0.52], [-0.81, 0.13]], np.float32)
    h = np.array([[2.0, 0.9], [0.9, 1.0]])
    s = np.full(w.shape, 0.25, np.float32)
    got = gptq_round(w, inverse_factor(h, damp=1e-12, by_energy=False), s, -8, 7)
    q0 = np.round(w[:, 0] / 0.25) * 0.25
    moved = w[:, 1] + (w[:, 0] - q0) * 0.9 / 1.0
    np.testing.assert_array_equal(got[:, 0], q0)
    np.testing.assert_array_equal(got[:, 1], np.round(moved / 0.25) * 0.25)
    assert not np.array_equal(got, grid_round(w, s, -8, 7))  # the move changed a rounding


def test_uncorrelated_inputs_give_round_to_nearest():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 40)).astype(np.float32)
    s = np.full(w.shape, 0.3, np.float32)
    np.testing.assert_array_equal(gptq_round(w, inverse_factor(np.diag(rng.uniform(1, 2, 40))), s, -8, 7, block=16),
                                  grid_round(w, s, -8, 7))


def test_blocks_change_speed_not_the_result():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 50)).astype(np.float32)
    x = rng.normal(size=(200, 50)) @ rng.normal(size=(50, 50))
    s = np.full(w.shape, 0.4, np.float32)
    one = gptq_round(w, inverse_factor(x.T @ x), s, -8, 7, block=50)
    assert np.array_equal(one, gptq_round(w, inverse_factor(x.T @ x), s, -8, 7, block=7))
    assert output_error(w, one, x.T @ x) < 0.8 * output_error(w, grid_round(w, s, -8, 7), x.T @ x)


def test_gptq_lowers_the_error_at_4_bit_weights_and_keeps_the_grids():
    module, ctx = quantized(W4, samples=16)
    reference, _ = quantized(W4, samples=16)
    held_out = tokens(8, seed=9)
    ops_before = [op.name for op in module.main.ops]
    specs_before = {n: c.quant for n, c in module.constants.items()}
    PassManager(parse_pipeline("gptq")).run(module, ctx)  # verifies after the pass
    report = ctx.data["gptq"]
    assert report["weights"] == 15 and not report["skipped"] and report["samples"] == 16
    assert report["output_error_gptq"] < 0.8 * report["output_error_nearest"], report
    assert hidden_error(module, held_out) < 0.9 * hidden_error(reference, held_out)
    assert [op.name for op in module.main.ops] == ops_before
    assert {n: c.quant for n, c in module.constants.items()} == specs_before
    fake = qir.Interpreter(module, "fake-quant")
    for name in ("blk.0.attn_q", "blk.1.ffn_down"):
        w = module.weights.get(name)
        np.testing.assert_array_equal(np.asarray(fake.weights_for(module.main)[name]), w)  # exactly on the grid


def test_the_result_runs_in_tflite_bit_exact():
    from backends.tflite.emit import emit_tflite
    from backends.tflite.legalize import legalize_tflite
    from backends.tflite.reference import run_integer
    from backends.tflite.runner import run_tflite
    module, ctx = quantized(DECOMPOSED.replace("w8a8", "w4a8"))
    PassManager(parse_pipeline("gptq")).run(module, ctx)
    legal = legalize_tflite(module)
    x = tokens(1, seed=3)[0][0]
    runtime = run_tflite(emit_tflite(legal), {"tokens": x})
    assert np.count_nonzero(runtime[legal.main.outputs[0].name] != run_integer(legal, x)[0]) == 0


def test_bad_input():
    module, ctx = quantized()
    with pytest.raises(QirError, match="gptq: needs damp > 0"):
        PassManager(parse_pipeline("gptq{damp=0}")).run(module, ctx)
    float_module, _ = quantized("canonicalize")
    with pytest.raises(QirError, match="gptq: the module is not quantized"):
        PassManager(parse_pipeline("gptq")).run(float_module, ctx)
    with pytest.raises(QirError, match="gptq needs calibration inputs"):
        PassManager(parse_pipeline("gptq")).run(module, PassContext())


def test_learning_after_gptq_trains_against_the_float_model_before_rounding():
    from passes.learn import float_references, loss_target, observed_values, typed_inputs
    module, ctx = quantized(W4, samples=8)
    target = loss_target(module.main)
    inputs = [typed_inputs(module.main, x) for x in ctx.data["calibration_inputs"]]
    unrounded = observed_values(module, target.name, inputs)
    PassManager(parse_pipeline("gptq")).run(module, ctx)
    rounded = observed_values(module, target.name, inputs)
    assert not np.allclose(rounded[0], unrounded[0], atol=1e-3)  # the rounded weights are another float model
    for kept, want in zip(float_references(module, ctx, target, inputs), unrounded):
        np.testing.assert_allclose(kept, want, rtol=1e-5, atol=1e-5)
    linears = {op.operands[1].name: module.weights.get(op.operands[1].name).copy()
               for op in module.main.ops if op.name == "q.linear" and op.operands[1].is_constant}
    PassManager(parse_pipeline("learn{clip=false,let=false,epochs=2}")).run(module, ctx)
    report = ctx.data["learn"]
    assert report["loss_after"] < report["loss_before"] and report["clipped_weights"] == 0, report
    for name, w in linears.items():  # the ranges are learned, the rounded weights stay
        np.testing.assert_array_equal(module.weights.get(name), w)


def test_learning_that_would_move_rounded_weights_is_refused():
    module, ctx = quantized(W4, samples=4)
    PassManager(parse_pipeline("gptq")).run(module, ctx)
    for pipeline in ("learn", "learn{let=false}", "learn{clip=false}"):
        with pytest.raises(QirError, match="learn after gptq: the weights are rounded already"):
            PassManager(parse_pipeline(pipeline)).run(module, ctx)
    with pytest.raises(QirError, match="learn-rotation after gptq: rotations would move"):
        PassManager(parse_pipeline("learn-rotation")).run(module, ctx)
    # a saved model rounded by gptq, learned in a new pipeline: the float model is gone
    fresh = PassContext(data={"calibration_inputs": ctx.data["calibration_inputs"]})
    with pytest.raises(QirError, match="learn needs gptq to run in the same pipeline"):
        PassManager(parse_pipeline("learn{clip=false,let=false}")).run(module, fresh)


def test_recipes_round_4_bit_weights_by_gptq_except_rtn_and_smoothquant():
    from qir.recipes import recipe_pipeline
    passes = lambda name: parse_pipeline(recipe_pipeline(name))  # noqa: E731
    assert passes("quarot-w4a8")[-1:] == passes("quarot-w4a16-lpbq")[-1:] == parse_pipeline("gptq")
    # the learning methods: no clipping learned before gptq, the ranges learned again after it
    assert passes("mobilequant-w4a8")[-3:] == parse_pipeline("learn{clip=false},gptq,learn{clip=false,let=false}")
    assert passes("quantnpu-w4a16")[-3:] == parse_pipeline("learn-rotation{rotation_epochs=0,param_epochs=0},gptq,"
                                                          "learn{clip=false,let=false}")
    for name in ("rtn-w4a8", "smoothquant-w4a8", "w4a8", "quarot-w8a8", "quantnpu-a16w8", "mobilequant-w8a8"):
        assert "gptq" not in [p.name for p in passes(name)], name


def test_qir_compile_reports_gptq_on_one_block_of_smollm2(tmp_path, capsys):
    from qir.cli import compile as compile_cli
    assert compile_cli.main(["smollm2", "--layers", "1", "--seq-len", "32", "--recipe", "quarot-w4a8",
                             "--calibration-samples", "4", "--report-samples", "0", "-o", str(tmp_path / "out")]) == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())  # the table's rows may wrap
    ratio = float(out.split("layer-output error")[1].split("x")[0])
    assert 0 < ratio < 1, out


def test_qir_compile_keeps_both_learning_runs_of_mobilequant_w4a8(tmp_path, capsys):
    from qir.cli import compile as compile_cli
    assert compile_cli.main(["smollm2", "--layers", "1", "--seq-len", "32", "--recipe", "mobilequant-w4a8",
                             "--calibration-samples", "4", "--report-samples", "0", "-o", str(tmp_path / "out")]) == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "learn training loss" in out and "learn-2 training loss" in out, out
    assert (tmp_path / "out" / "learn-loss.png").exists() and (tmp_path / "out" / "learn-2-loss.png").exists()


def test_qir_compile_gives_a_saved_qir_calibration_inputs_for_gptq(tmp_path, capsys):
    """gptq on a quantized .qir written earlier: qir-compile draws the inputs from its tokenizer."""
    from qir.cli import compile as compile_cli
    common = ["--seq-len", "16", "--calibration-samples", "2", "--report-samples", "0"]
    assert compile_cli.main(["minilm", "--layers", "1", "-p", W4, "-o", str(tmp_path / "q"), *common]) == 0
    assert compile_cli.main([str(tmp_path / "q" / "model.qir"), "-p", "gptq", "-o", str(tmp_path / "g"), *common]) == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "layer-output error" in out
    # two short sentences hold far fewer tokens than the FFN-down input's 1,536 channels
    assert "gptq warning" in out and "give more --calibration-samples" in out


def test_qir_eval_compares_a_gptq_model_with_its_source_when_asked(tmp_path, capsys):
    """The float weights of a gptq-rounded .qir carry the rounding: against them the weight error
    vanishes, so qir-eval says so, and --reference puts the source model back as the float side."""
    import json
    from qir.cli import compile as compile_cli
    from qir.cli import eval as eval_cli
    assert compile_cli.main(["minilm", "--layers", "1", "-p", W4 + ",gptq", "-o", str(tmp_path / "g"), "--seq-len", "32",
                             "--calibration-samples", "4", "--report-samples", "0"]) == 0
    capsys.readouterr()
    cosine = {}
    for reference in ([], ["--reference", "minilm", "--layers", "1"]):
        assert eval_cli.main([str(tmp_path / "g" / "model.qir"), "--sentences", "4", *reference, "--json"]) == 0
        captured = capsys.readouterr()
        assert ("gptq rounded this model's weights" in captured.err) == (not reference), captured.err
        cosine[bool(reference)] = json.loads(captured.out.strip().splitlines()[-1])["cosine_to_float_mean"]
    assert cosine[True] < cosine[False], cosine
    assert eval_cli.main([str(tmp_path / "g" / "model.qir"), "--reference", "smollm2", "--layers", "1"]) == 2
    assert "is it the model this one was compiled from?" in capsys.readouterr().err


def test_padding_tokens_are_left_out_of_the_input_moments():
    """An encoder's padded rows do not count: H of an FFN input equals the sum over the rows the
    attention mask marks, and changing the padding's token ids does not change it."""
    from passes.gptq import input_moments
    from tests.passes.test_smooth import bert_inputs, tiny_bert
    module = tiny_bert()
    (ids, mask), = bert_inputs(1, seed=3)
    assert 0 < mask.sum() < mask.size
    name = next(op.operands[0].name for op in module.main.ops if op.name == "q.linear"
                and op.operands[0].type.shape[-1] == 48)  # the FFN-down input
    moments, tokens, _ = input_moments(module, [name], [(ids, mask)])
    h = moments[name]
    assert tokens == mask.sum()
    rows = np.asarray(qir.Interpreter(module).run_observed(ids, mask, key="rows", observe=lambda n, x: x if n == name
                                                 else np.zeros((0,)))[1][name]).reshape(-1, 48)
    kept = rows[mask.reshape(-1) == 1].astype(np.float64)
    np.testing.assert_allclose(h, kept.T @ kept, rtol=1e-4, atol=1e-4 * np.abs(h).max())
    other = ids.copy()
    other[mask == 0] = 7
    np.testing.assert_allclose(input_moments(module, [name], [(other, mask)])[0][name], h, rtol=1e-4,
                               atol=1e-4 * np.abs(h).max())
