"""learn (MobileQuant): the loss falls on a tiny random llama and the error on held-out inputs with it;
the folded module computes what the learned parameters did; the result verifies, legalizes to TFLite
and runs there bit-exact with qir's integer rules; golden folds; bad input."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import qir
from qir import PassContext, PassManager, QirError, parse_pipeline
from qir.learning import fold, materialize, spec_overrides, build_model
from passes.learn import loss_target, make_plan, optimizer
from tests.passes.tiny_llama import tiny_llama as shared_tiny_llama

GOLDEN = Path(__file__).parent / "golden"
L, VOCAB = 16, 64
QUANTIZE = "canonicalize,dce,calibrate{histogram=false},quantize{recipe=w8a8}"
DECOMPOSED = "canonicalize,dce,decompose-norms,calibrate{histogram=false},quantize{recipe=w8a8}"


def tiny_llama(outlier: float = 20.0, bias: bool = False):
    """2 layers, 4 query heads over 2 KV heads, norm channel 5 times `outlier`."""
    return shared_tiny_llama(hidden=32, intermediate=48, head_dim=8, bias=bias, mlp_bias=False, outlier=outlier,
                             spread=0.2, rms_eps=1e-6, name=None, seq_len=L)


def tokens(count, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, VOCAB, (1, L)).astype(np.int32),) for _ in range(count)]


def quantized(pipeline=QUANTIZE, samples=8, **kwargs):
    module = tiny_llama(**kwargs)
    ctx = PassContext(data={"calibration_inputs": tokens(samples)})
    PassManager(parse_pipeline(pipeline)).run(module, ctx)
    return module, ctx


def hidden_error(module, inputs) -> float:
    """Relative squared error of the final hidden state, fake-quant against float, over `inputs`."""
    target = loss_target(module.main).name
    pick = lambda name, x: x if name == target else jnp.zeros((0,))  # noqa: E731
    fake, ref = qir.Interpreter(module, "fake-quant"), qir.Interpreter(module)
    num = den = 0.0
    for x in inputs:
        want = np.asarray(ref.run_observed(*x, key="t", observe=pick)[1][target], np.float64)
        got = np.asarray(fake.run_observed(*x, key="t", observe=pick)[1][target], np.float64)
        num, den = num + float(np.square(got - want).sum()), den + float(np.square(want).sum())
    return num / den


# -- learning ----------------------------------------------------------------------------------------

def test_learning_lowers_the_loss_and_the_held_out_error():
    # 32 inputs: with 8, straight-through training of this tiny model lands anywhere between 0.4x and
    # 1.3x of the held-out error from run to run (rounding amplifies float differences of 1e-7)
    module, ctx = quantized(samples=32)
    held_out = tokens(12, seed=9)
    before = hidden_error(module, held_out)
    PassManager(parse_pipeline("learn{samples=32}")).run(module, ctx)  # verifies after the pass
    report = ctx.data["learn"]
    assert report["target"] == "output_norm"
    assert report["steps"] == 128 and len(ctx.data["loss_curves"]["learn"]) == 128
    assert report["activations"] > 0 and report["clipped_weights"] == 14 and len(report["transforms"]) == 8
    assert report["loss_after"] < 0.95 * report["loss_before"], report
    after = hidden_error(module, held_out)
    assert after < 0.8 * before, (before, after)
    # nothing is left that names a learned parameter: every activation scale is inline and static
    for value in [r for op in module.main.ops for r in op.results] + module.main.args:
        if value.quant is not None:
            assert isinstance(value.quant.scale, tuple) and len(value.quant.scale) == 1
    assert not any(n.startswith("learn:") for n in module.constants)


def test_learning_keeps_the_float_function():
    """The equivalent transformations change weights, never the float model (clipping and ranges
    only act on quantization)."""
    module, ctx = quantized()
    held_out = tokens(3, seed=7)
    before = [qir.interpret(module, *x)[0] for x in held_out]
    PassManager(parse_pipeline("learn{epochs=2}")).run(module, ctx)
    for x, want in zip(held_out, before):
        np.testing.assert_allclose(qir.interpret(module, *x)[0], want, rtol=1e-4, atol=1e-4)


def perturbed(model, seed=0):
    """Parameters far from their start, so that a fold that forgets one of them shows."""
    graphdef, params, fixed = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(seed)
    import jax
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.uniform(-0.3, 0.3, p.shape), p.dtype), params)
    return nnx.merge(graphdef, params, fixed)


@pytest.mark.parametrize("pipeline,bias", [(QUANTIZE, False), (DECOMPOSED, True)])
def test_folded_module_computes_what_the_learned_parameters_do(pipeline, bias):
    module, ctx = quantized(pipeline, bias=bias)
    func = module.main
    plan = make_plan(module, func, loss_target(func), ranges=True, clip=True, let=True)
    assert plan.transforms and plan.clipped and plan.activations and (plan.biases or not bias)
    model = perturbed(build_model(module, plan))
    fake = qir.Interpreter(module, "fake-quant")
    weights = materialize(model, plan, fake.weights_for(func), module)
    run = fake.traced(specs=spec_overrides(module, plan))
    inputs = tokens(3, seed=4)
    learned = [np.asarray(run(weights, *x)[0]) for x in inputs]
    fold(module, plan, {k: np.asarray(v) for k, v in weights.items()})
    qir.verify(module)
    folded = qir.Interpreter(module, "fake-quant")
    for x, want in zip(inputs, learned):
        got = folded.run(*x)[0]
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), np.abs(got - want).max()
    # the float function did not move either: the transformations cancel
    reference = quantized(pipeline, bias=bias)[0]
    for x in inputs:
        np.testing.assert_allclose(qir.interpret(module, *x)[0], qir.interpret(reference, *x)[0], rtol=1e-4, atol=1e-4)


def test_the_result_runs_in_tflite_bit_exact_with_the_same_ops():
    from backends.tflite.emit import emit_tflite
    from backends.tflite.legalize import legalize_tflite
    from backends.tflite.reference import run_integer
    from backends.tflite.runner import run_tflite
    module, ctx = quantized(DECOMPOSED)
    ops_before = [op.name for op in module.main.ops]
    legal_before = [op.name for op in legalize_tflite(module).main.ops]
    PassManager(parse_pipeline("learn{epochs=2}")).run(module, ctx)
    assert [op.name for op in module.main.ops] == ops_before
    legal = legalize_tflite(module)
    assert [op.name for op in legal.main.ops] == legal_before  # no op added, none converted differently
    x = tokens(1, seed=3)[0][0]
    runtime = run_tflite(emit_tflite(legal), {"tokens": x})
    ours = run_integer(legal, x)[0]
    assert np.count_nonzero(runtime[legal.main.outputs[0].name] != ours) == 0


# -- bad input ---------------------------------------------------------------------------------------

def test_learn_needs_a_quantized_module_and_calibration_inputs():
    with pytest.raises(QirError, match="not quantized; put 'calibrate' and 'quantize' before 'learn'"):
        PassManager(parse_pipeline("learn")).run(tiny_llama(), PassContext(data={"calibration_inputs": tokens(2)}))
    module, _ = quantized()
    with pytest.raises(QirError, match="learn needs calibration inputs"):
        PassManager(parse_pipeline("learn")).run(module, PassContext())
    with pytest.raises(QirError, match=r"has shape \[1, 16\], a calibration sample has \[1, 17\]"):
        PassManager(parse_pipeline("learn")).run(module, PassContext(data={"calibration_inputs": [
            (np.zeros((1, L + 1), np.int32),)]}))


@pytest.mark.parametrize("options", ["epochs=0", "lr=-1", "samples=-2", "max_grad_ratio=0.5"])
def test_bad_options(options):
    module, ctx = quantized()
    with pytest.raises(QirError, match="learn: needs epochs >= 1"):
        PassManager(parse_pipeline(f"learn{{{options}}}")).run(module, ctx)


# -- golden fold ---------------------------------------------------------------------------------------

def test_golden_fold_of_chosen_parameters():
    """norm -> w1 is a pair; %h, the input of the last linear, is the loss target, so w2 lies outside
    the loss and is neither clipped nor scaled. Parameters set by hand, folded, and compared with
    the expected IR, whose numbers are checked here one kind at a time."""
    run_line, _, text = (GOLDEN / "learn.qir").read_text().partition("\n")
    assert run_line.startswith("// RUN: learn parameters")
    module = qir.parse(text)
    func = module.main
    plan = make_plan(module, func, loss_target(func), ranges=True, clip=True, let=True)
    assert plan.activations == ["x", "n", "h"] and list(plan.clipped) == ["w1"]
    assert [(t.key, t.divide, t.multiply) for t in plan.transforms] == [("norm -> w1", ["norm"], ["w1"])]
    assert plan.biases == {"b1": ("n", "w1")}
    model = build_model(module, plan)
    s = np.array([2.0, 1.0, 0.5, 1.0], np.float32)
    model.scales["norm -> w1"].log_s[...] = jnp.log(s)
    model.clips["w1"].logit[...] = jnp.array([4.0, 2.0, 4.0])
    model.ranges.log_scale[...] = jnp.array([0.0, 0.5, -0.25])
    model.ranges.offset[...] = jnp.array([0.0, 0.05, -0.02])
    before = {n: module.weights.get(n).copy() for n in ("norm", "w1", "w2")}
    specs = {v.name: v.quant for v in [func.args[0]] + [op.result for op in func.ops]}
    weights = materialize(model, plan, qir.Interpreter(module, "fake-quant").weights_for(func), module)
    fold(module, plan, {k: np.asarray(v) for k, v in weights.items()})
    expected = (GOLDEN / "learn.expected.qir").read_text()
    assert qir.print_module(module) == expected
    assert qir.print_module(qir.parse(expected)) == expected
    qir.verify(module)

    np.testing.assert_allclose(module.weights.get("norm"), before["norm"] / s, rtol=1e-6)
    w1 = before["w1"] * s
    np.testing.assert_allclose(module.weights.get("w1"), w1, rtol=1e-6)
    factor = 1 / (1 + np.exp(-np.array([4.0, 2.0, 4.0]))) * (1 + np.exp(-4.0))  # sigmoid(g) / sigmoid(4)
    w1_scale = factor * np.abs(w1).max(1) / 127
    np.testing.assert_allclose(module.weights.get("w1.scale"), w1_scale, rtol=1e-6)
    np.testing.assert_array_equal(module.weights.get("w2"), before["w2"])  # outside the loss: untouched
    assert module.constants["norm"].quant.scale[0] == pytest.approx(2.0 / 32767, rel=1e-6)
    n_scale = specs["n"].scale[0] * np.exp(0.5)
    assert func.ops[0].result.quant.scale[0] == pytest.approx(n_scale, rel=1e-6)
    assert func.ops[0].result.quant.zero_point == (round(specs["n"].zero_point[0] + 256 * 0.05),)
    assert func.ops[1].result.quant.zero_point == (round(specs["h"].zero_point[0] - 256 * 0.02),)
    np.testing.assert_allclose(module.weights.get("b1.scale"), n_scale * w1_scale, rtol=1e-6)
    assert func.args[0].quant.scale[0] == pytest.approx(specs["x"].scale[0], rel=1e-7)  # log-scale 0 (in float32)
    assert func.ops[2].result.quant == specs["y"]  # outside the loss: not learned


def test_one_outlier_gradient_does_not_stall_adam():
    """After one gradient 10^4 times the others and opposed to them, the clipped adam is back to its
    usual step within 20 steps; unclipped, the outlier steers adam's moments for the rest of the run."""
    params = {"ranges": {"x": jnp.zeros(4)}, "clips": {"w": jnp.zeros(4)}}

    def steps(max_grad_ratio):
        tx = optimizer(params, {"ranges": 0.01, "clips": 0.01}, 100, "constant", max_grad_ratio)
        state, out = tx.init(params), []
        for g in [1e-2] * 20 + [-1e2] + [1e-2] * 20:
            updates, state = tx.update(jax.tree_util.tree_map(lambda p: jnp.full_like(p, g), params), state, params)
            out.append(float(updates["ranges"]["x"][0]))
        return out

    clipped, unclipped = steps(4.0), steps(1e12)
    assert clipped[19] < 0 and clipped[-1] < 0 and abs(clipped[-1]) > 0.5 * abs(clipped[19])
    assert unclipped[-1] > 0  # still stepping the outlier's way


def test_a_diverging_rate_keeps_the_start():
    """Learning keeps the epoch with the lowest mean loss, the start included."""
    module, ctx = quantized()
    inputs = tokens(4, seed=2)
    before = hidden_error(module, inputs)
    PassManager(parse_pipeline("learn{epochs=2,lr=30,clip_lr=300,let_lr=30}")).run(module, ctx)
    report = ctx.data["learn"]
    later = np.asarray(report["epoch_losses"][1:])
    assert len(later) == 2 and not np.any(later < report["loss_before"])  # it diverged (to NaN here)
    assert report["kept_epoch"] == 0 and report["loss_after"] == report["loss_before"]
    assert abs(hidden_error(module, inputs) - before) <= 1e-3 * before
