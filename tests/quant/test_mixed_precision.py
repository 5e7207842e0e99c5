"""quantize{min_sqnr=...} and a recipe's "min_sqnr": an 8-bit activation whose grid's SQNR on the
calibration data falls short takes 16 bits; the predicted SQNR matches measured rounding noise; the
built-in 8-bit recipes use 20 dB; the mixed graph runs in TFLite bit-exact with qir's integer rules;
bad options."""
import json
import math

import numpy as np
import pytest

import qir
from qir import PassContext, PassManager, QirError, parse_pipeline
from qir.mixed_precision import grid_sqnr_db
from qir.quant_params import affine_params
from qir.quant_recipe import BUILTIN, recipe_from_dict
from qir.stats import ValueStats
from passes.calibrate import STATS_KEY
from tests.passes.tiny_llama import tiny_llama, tokens

PIPELINE = "canonicalize,dce,decompose-norms,calibrate{histogram=false},quantize{recipe=w8a8%s}"


def quantized(options: str = ""):
    module = tiny_llama(outlier=30.0)
    ctx = PassContext(data={"calibration_inputs": tokens(8)})
    PassManager(parse_pipeline(PIPELINE % options)).run(module, ctx)
    return module, ctx


def specs(module) -> dict:
    return {r.name: r.quant for op in module.main.ops for r in op.results if r.quant is not None}


def sqnr_db(x: np.ndarray, scale: float, zero: int, qmin: int, qmax: int) -> float:
    rounded = (np.clip(np.round(x / scale) + zero, qmin, qmax) - zero) * scale
    return 10 * math.log10(np.mean(x * x) / np.mean((x - rounded) ** 2))


def test_predicted_sqnr_matches_measured_rounding_noise():
    x = np.random.default_rng(0).uniform(-1.0, 3.0, 200_000)
    rms = float(np.sqrt(np.mean(x * x)))
    stats = ValueStats(float(x.min()), float(x.max()), rms=rms, token_rms=rms)
    scale, zero, qmin, qmax = affine_params(stats.min, stats.max, 8, False)
    assert abs(grid_sqnr_db(stats, scale) - sqnr_db(x, scale, zero, qmin, qmax)) < 0.1
    assert grid_sqnr_db(ValueStats(0.0, 0.0, rms=0.0, token_rms=0.0), 1.0) == math.inf


def test_the_sqnr_is_the_median_tokens_which_massive_tokens_cannot_hide():
    """Two tokens of 64 carry values 30x the rest (SmolLM2's FFN outputs at its massive-activation
    tokens): the whole tensor's SQNR looks fine, the typical token's is what the grid leaves it."""
    x = np.random.default_rng(1).normal(0.0, 1.0, (1, 64, 512)).astype(np.float32)
    x[0, :2] *= 30.0
    module = qir.parse("module @m\nfunc @main(%x: f32[1,64,512]) -> f32[1,64,512] {\n"
                       "  %y = q.mul %x, %x : f32[1,64,512]\n  return %x\n}\n")
    ctx = PassContext(data={"calibration_inputs": [(x,)]})
    PassManager(parse_pipeline("calibrate{histogram=false}")).run(module, ctx)
    stats = ctx.data[STATS_KEY]["x"]
    rows = np.sqrt(np.mean(np.square(x[0], dtype=np.float64), axis=1))
    assert stats.token_rms == pytest.approx(np.median(rows), rel=1e-3)  # the median of 64 tokens' RMS
    assert stats.rms == pytest.approx(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), rel=1e-4)
    scale, zero, qmin, qmax = affine_params(stats.min, stats.max, 8, False)
    typical = sqnr_db(x[0, 2:], scale, zero, qmin, qmax)
    whole = sqnr_db(x, scale, zero, qmin, qmax)
    assert abs(grid_sqnr_db(stats, scale) - typical) < 0.5
    assert whole - typical > 10  # the tensor-wide figure would have kept this grid at any sane threshold


def test_short_grids_take_16_bits_and_the_rest_keep_the_recipe():
    plain_module, _ = quantized(",min_sqnr=0")
    module, ctx = quantized(",min_sqnr=30")
    stats, plain, mixed = ctx.data[STATS_KEY], specs(plain_module), specs(module)
    widened = ctx.data["quantize"]["widened"]
    assert widened and "blk1.ffn_hidden" in widened  # the FFN-down input the norm outlier feeds
    for name, spec in mixed.items():
        if name in widened:
            assert plain[name].bits == 8 and spec.bits == 16 and spec.zero_point == (0,)
            assert grid_sqnr_db(stats[name], plain[name].scale[0]) < 30
        else:
            assert spec == plain[name]
            assert spec.bits == 16 or grid_sqnr_db(stats[name], spec.scale[0]) >= 30
    # fewer rounding steps that coarse: the fake-quant logits move closer to float
    x = tokens(4, seed=5)
    ref = [qir.interpret(plain_module, *t)[0] for t in x]

    def error(m):
        fake = qir.Interpreter(m, "fake-quant")
        return sum(float(np.square(fake.run(*t)[0] - r).sum()) for t, r in zip(x, ref))
    assert error(module) < error(plain_module)


def test_the_builtin_8_bit_recipes_use_20_db_and_zero_turns_it_off(tmp_path):
    assert BUILTIN["w8a8"]["activations"]["min_sqnr"] == BUILTIN["w4a8"]["activations"]["min_sqnr"] == 20
    assert "min_sqnr" not in BUILTIN["a16w8"]["activations"]
    default, ctx = quantized()
    at_20, ctx20 = quantized(",min_sqnr=20")
    off, ctx0 = quantized(",min_sqnr=0")
    assert ctx.data["quantize"]["widened"] == ctx20.data["quantize"]["widened"]
    assert specs(default) == specs(at_20)
    assert ctx0.data["quantize"]["widened"] == []
    assert all(specs(off)[name].bits == 8 for name in ctx.data["quantize"]["widened"])
    # a JSON recipe without the key keeps its bits
    recipe = tmp_path / "plain.json"
    recipe.write_text(json.dumps({"weights": {"bits": 8}, "activations": {"bits": 8}}))
    module = tiny_llama(outlier=30.0)
    ctx = PassContext(data={"calibration_inputs": tokens(8)})
    PassManager(parse_pipeline(f"canonicalize,dce,calibrate{{histogram=false}},quantize{{recipe={recipe}}}")).run(
        module, ctx)
    assert ctx.data["quantize"]["widened"] == []


def tflite_keeps_the_widths(module, widened, inputs: dict) -> None:
    """Each widened value is computed in int16 in the TFLite graph (not in int8 and converted after,
    which would throw the widening away), and LiteRT runs the graph bit-exact with qir's rules."""
    from backends.tflite.emit import emit_tflite
    from backends.tflite.legalize import legalize_tflite
    from backends.tflite.reference import run_integer
    from backends.tflite.runner import run_tflite
    legal = legalize_tflite(module)
    produced = {r.name: r for op in legal.main.ops for r in op.results}
    narrow = [name for name in widened if produced[name].type.dtype != "i16"]
    assert not narrow, f"computed in 8 bits, then widened: {narrow}"
    runtime = run_tflite(emit_tflite(legal), inputs)
    ours = run_integer(legal, *inputs.values())
    for value, expected in zip(legal.main.outputs, ours):
        assert np.count_nonzero(runtime[value.name] != expected) == 0


@pytest.mark.parametrize("least", [30, 45])
def test_the_mixed_llama_runs_in_tflite_bit_exact(least):
    module, ctx = quantized(f",min_sqnr={least}")
    widened = ctx.data["quantize"]["widened"]
    if least == 45:  # linears, silu, rope and matmuls with int8 inputs and an int16 result
        assert {"blk0.q", "blk0.gate_act", "blk0.q_rope", "blk0.scores"} <= set(widened)
    tflite_keeps_the_widths(module, widened, {"tokens": tokens(1, seed=3)[0][0]})


def test_the_mixed_encoder_runs_in_tflite_bit_exact():
    from tests.backends.tflite.test_legalize_encoder import encoder_without_norms, padded_batch
    module = encoder_without_norms()
    ids, mask = padded_batch(1, (12, 10, 8, 6, 4, 3, 2, 1))
    ctx = PassContext(data={"calibration_inputs": [(ids[i:i + 1], mask[i:i + 1]) for i in range(len(ids))]})
    PassManager(parse_pipeline("calibrate,quantize{recipe=w8a8,min_sqnr=45}")).run(module, ctx)
    widened = ctx.data["quantize"]["widened"]
    assert any(name.endswith("ffn_act") for name in widened)  # gelu's table runs in int16
    ids, mask = padded_batch(7)
    tflite_keeps_the_widths(module, widened, {"input_ids": ids[:1], "attention_mask": mask[:1]})


def test_bad_options():
    with pytest.raises(QirError, match="min_sqnr must be a number of dB ≥ 0 \\(0: off; -1: the recipe's\\), not -3"):
        quantized(",min_sqnr=-3")
    for bad in (-1, "20", True):
        with pytest.raises(QirError, match="min_sqnr must be a number of dB ≥ 0"):
            recipe_from_dict("bad", {"activations": {"bits": 8, "min_sqnr": bad}})
    with pytest.raises(QirError, match="no per-token root mean square; run calibrate again"):
        grid_sqnr_db(ValueStats(0.0, 1.0), 0.1)


def test_views_keep_their_sources_width():
    """A reshape's rows differ from its source's (per head instead of per token), so its median token
    does too; it must still take its source's decision, or HTP meets an int8 -> int16 reshape
    (which the simulator ran 166 LSB off)."""
    module, ctx = quantized(",min_sqnr=42")
    assert ctx.data["quantize"]["widened"]
    for op in module.main.ops:
        if op.name in ("q.reshape", "q.transpose") and op.operands[0].quant is not None:
            assert op.result.quant.bits == op.operands[0].quant.bits, op.result.name
