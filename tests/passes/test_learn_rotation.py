"""learn-rotation (Quant.npu): the Cayley optimizer stays on the orthogonal manifold and descends;
on a tiny random llama the learned rotations keep the float function, every stage reports its loss,
the graph keeps its ops and runs in TFLite bit-exact with qir's integer rules; bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import qir
from qir import PassContext, PassManager, QirError, parse_pipeline
from qir.learning import cayley
from qir.recipes import recipe_pipeline
from tests.passes.test_learn import quantized, tiny_llama, tokens

ROTATED = ("canonicalize,dce,fold-norms,rotate,decompose-norms,calibrate,"
           "quantize{recipe=w8a8,weight_observer=mse}")


def test_cayley_keeps_the_matrix_orthogonal_and_finds_a_rotation():
    """min ‖X·Q − X·R‖² over orthogonal Q: the loss falls by orders of magnitude, QᵀQ stays I."""
    rng = np.random.default_rng(0)
    n = 16
    target, _ = np.linalg.qr(rng.standard_normal((n, n)))
    if np.linalg.det(target) < 0:  # reachable from the identity: a rotation, not a reflection
        target[:, 0] *= -1
    x = jnp.asarray(rng.standard_normal((64, n)), jnp.float32)
    y = x @ jnp.asarray(target, jnp.float32)
    loss = lambda q: jnp.mean(jnp.square(x @ q - y))  # noqa: E731
    tx = cayley(optax.cosine_decay_schedule(0.3, 300), momentum=0.5)
    q = jnp.eye(n, dtype=jnp.float32)
    state = tx.init(q)
    start = float(loss(q))
    for _ in range(300):
        updates, state = tx.update(jax.grad(loss)(q), state, q)
        q = optax.apply_updates(q, updates)
    assert float(loss(q)) < 1e-3 * start, (start, float(loss(q)))
    np.testing.assert_allclose(np.asarray(q.T @ q), np.eye(n), atol=1e-4)


def learned(**options):
    module, ctx = quantized(ROTATED)
    text = ",".join(f"{k}={v}" for k, v in options.items())
    PassManager(parse_pipeline(f"learn-rotation{{{text}}}" if text else "learn-rotation")).run(module, ctx)
    return module, ctx


def test_stages_report_and_the_float_function_is_kept():
    reference, _ = quantized(ROTATED)
    module, ctx = learned(rotation_epochs=2, param_epochs=1)
    report = ctx.data["learn-rotation"]
    assert report["rotated_constants"] == 16  # table, 2 x (q, k, v, o, gate, up, down), head
    assert report["mse_initialised"] > 0
    assert report["rotations"]["rotations"] == ["R1", "R2"] and report["rotations"]["steps"] == 16
    assert report["rotated"]["activations"] > 0 and report["rotated"]["clipped_weights"] == 14
    assert report["others"]["activations"] > 0 and report["others"]["clipped_weights"] == 0
    assert all(isinstance(r.quant.scale, tuple) for op in module.main.ops for r in op.results if r.quant is not None)
    # the rotations moved the weights, and cancel in float (orthogonal to float32 precision)
    # (only if an epoch of rotations lowered the mean loss: otherwise the start, rotate's Hadamards, is kept)
    moved = np.abs(module.weights.get("blk.0.attn_q") - reference.weights.get("blk.0.attn_q")).max()
    assert (moved > 1e-4) == (report["rotations"]["kept_epoch"] > 0), (moved, report["rotations"]["epoch_losses"])
    for x in tokens(3, seed=5):
        want = qir.interpret(reference, *x)[0]
        np.testing.assert_allclose(qir.interpret(module, *x)[0], want, atol=2e-3 * np.abs(want).max())
    # one curve per stage, each written as <name>-loss.png by qir-compile
    assert set(ctx.data["loss_curves"]) == {"learn-rotation-rotations", "learn-rotation-rotated",
                                            "learn-rotation-others"}


def test_clip_false_leaves_the_weight_grids_as_quantize_set_them():
    reference, _ = quantized(ROTATED)
    module, ctx = learned(rotation_epochs=0, param_epochs=1, clip="false")
    assert ctx.data["learn-rotation"]["rotated"]["clipped_weights"] == 0
    for op in module.main.ops:
        if op.name == "q.linear" and op.operands[1].is_constant:
            w = op.operands[1].name
            assert module.constants[w].quant == reference.constants[w].quant, w


def test_the_result_runs_in_tflite_bit_exact_with_the_same_ops():
    from backends.tflite.emit import emit_tflite
    from backends.tflite.legalize import legalize_tflite
    from backends.tflite.reference import run_integer
    from backends.tflite.runner import run_tflite
    module, _ = quantized(ROTATED)
    legal_before = [op.name for op in legalize_tflite(module).main.ops]
    module, _ = learned(rotation_epochs=1, param_epochs=1)
    legal = legalize_tflite(module)
    assert [op.name for op in legal.main.ops] == legal_before  # no rotation op, no requantization added
    x = tokens(1, seed=3)[0][0]
    runtime = run_tflite(emit_tflite(legal), {"tokens": x})
    assert np.count_nonzero(runtime[legal.main.outputs[0].name] != run_integer(legal, x)[0]) == 0


def test_quantnpu_recipe_runs_the_stages_in_order():
    pipeline = recipe_pipeline("quantnpu-w8a8")
    names = [p.name for p in parse_pipeline(pipeline)]
    assert names.index("rotate") < names.index("calibrate") < names.index("quantize") < names.index("learn-rotation")
    assert "learn" in [p.name for p in parse_pipeline(recipe_pipeline("mobilequant-w4a8"))]


def test_bad_input():
    module, ctx = quantized()  # quantized, but never rotated
    with pytest.raises(QirError, match="put 'fold-norms,rotate' before 'calibrate'"):
        PassManager(parse_pipeline("learn-rotation")).run(module, ctx)
    with pytest.raises(QirError, match="not quantized; put 'calibrate' and 'quantize' before it"):
        PassManager(parse_pipeline("learn-rotation")).run(tiny_llama(), PassContext(data={"calibration_inputs": tokens(2)}))
    with pytest.raises(QirError, match="needs epochs >= 0"):
        PassManager(parse_pipeline("learn-rotation{rotation_lr=-1}")).run(*quantized(ROTATED))


def test_dynamic_ranges_follow_the_tensor():
    from qir.fake_quant import DynamicRange, fake_quant
    from qir.quant import QuantSpec
    x = jnp.asarray([[-1.0, 0.5, 3.0, 2.0]])
    scale, zero = DynamicRange(QuantSpec(8, True, scale=(1.0,), zero_point=(0,)), ratio=0.5).params(x)
    assert np.isclose(float(scale[0]), 0.5 * 4.0 / 255) and float(zero[0]) == round(-128 + 0.5 / float(scale[0]))
    scale, zero = DynamicRange(QuantSpec(16, True, scale=(1.0,), zero_point=(0,))).params(-x)
    assert np.isclose(float(scale[0]), 3.0 / 32767) and float(zero[0]) == 0.0
    # the range's gradient reaches the extreme element: shrinking the outlier shrinks the step
    spec = DynamicRange(QuantSpec(8, True, scale=(1.0,), zero_point=(0,)))
    grad = jax.grad(lambda x: spec.params(x)[0][0])(x)
    assert float(grad[0, 2]) > 0 and float(grad[0, 0]) < 0 and float(grad[0, 1]) == 0.0
    y = fake_quant(x, spec.spec, *spec.params(x))
    assert float(jnp.abs(y - x).max()) <= float(spec.params(x)[0][0]) / 2 + 1e-6


def test_dynamic_rotation_stage_recalibrates():
    """dynamic=true: after the rotations every per-tensor activation is observed anew (static again);
    by default (false) nothing is recalibrated."""
    module, ctx = learned(rotation_epochs=1, param_epochs=0, dynamic="true")
    assert ctx.data["learn-rotation"]["recalibrated"] > 0
    assert all(isinstance(r.quant.scale, tuple) for op in module.main.ops for r in op.results if r.quant is not None)
    module, ctx = learned(rotation_epochs=1, param_epochs=0)
    assert "recalibrated" not in ctx.data["learn-rotation"]
