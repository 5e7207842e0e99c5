"""Gradients computed a segment at a time equal the gradient of the whole program."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import qir
from qir.learning import build_model, materialize, spec_overrides
from qir.segmented import SegmentedGradient, crossing_counts, cut_points, upstream
from passes.learn import loss_target, make_plan
from tests.passes.test_learn import DECOMPOSED, QUANTIZE, quantized, tokens


def whole_and_segmented(pipeline, size):
    module, _ = quantized(pipeline, bias=pipeline == DECOMPOSED)
    func = module.main
    target = loss_target(func)
    plan = make_plan(module, func, target, ranges=True, clip=True, let=True)
    graphdef, params, fixed = nnx.split(build_model(module, plan), nnx.Param, ...)
    fake = qir.Interpreter(module, "fake-quant")
    base = fake.weights_for(func)
    specs = spec_overrides(module, plan)
    x = tokens(1, seed=3)[0]
    reference = jnp.asarray(np.random.default_rng(0).normal(size=target.type.shape), jnp.float32)

    def loss(y):
        return jnp.sum(jnp.square(y.astype(jnp.float32) - reference)) / jnp.sum(jnp.square(reference))

    def changed(p):
        weights = materialize(nnx.merge(graphdef, p, fixed), plan, base, module)
        return {k: v for k, v in weights.items() if k not in base or k in plan.touched()}

    run = fake.traced(specs=specs, observe=lambda n, a: a if n == target.name else jnp.zeros((0,), a.dtype))
    whole = jax.value_and_grad(lambda p: loss(run({**base, **changed(p)}, *x)[1][target.name]))(params)
    graph = SegmentedGradient(fake, func, target, specs, size=size)
    learned, pull = jax.vjp(changed, params)
    value, grads = graph.value_and_grad({**base, **learned}, set(learned), x, loss)
    segmented = pull({k: grads.get(k, jnp.zeros_like(v)) for k, v in learned.items()})[0]
    return whole, (value, segmented), graph


@pytest.mark.parametrize("pipeline", [QUANTIZE, DECOMPOSED])
def test_segmented_gradient_equals_the_whole_programs(pipeline):
    (whole_value, whole_grad), (value, grad), graph = whole_and_segmented(pipeline, size=12)
    assert len(graph.segments) >= 4
    assert abs(float(value) - float(whole_value)) <= 1e-6 * abs(float(whole_value))
    flat_whole, flat = jax.tree.leaves(whole_grad), jax.tree.leaves(grad)
    assert len(flat_whole) == len(flat)
    for a, b in zip(flat_whole, flat):
        scale = float(jnp.abs(a).max()) + 1e-12
        assert float(jnp.abs(a - b).max()) <= 1e-4 * scale, (float(jnp.abs(a - b).max()), scale)
    assert any(float(jnp.abs(a).max()) > 0 for a in flat)


def test_cuts_fall_where_fewest_values_cross():
    module, _ = quantized()
    func = module.main
    target = loss_target(func)
    ops = upstream(func, target)
    counts = crossing_counts(ops, target)
    size = 12
    cuts = cut_points(ops, target, size)
    assert len(cuts) >= 4 and cuts == sorted(cuts) and cuts[-1] < len(ops)
    for start, cut in zip([0] + cuts, cuts):  # the fewest crossing values within the window searched
        assert counts[cut] == min(counts[start + size // 2:start + size + size // 2]), (start, cut)
    # a crossing count is the values an op at or after the cut reads that were made before it
    made_before = {id(v) for v in func.args} | {id(r) for op in ops[:cuts[0]] for r in op.results}
    read_after = {id(v) for op in ops[cuts[0]:] for v in op.operands} | {id(target)}
    assert counts[cuts[0]] == len(made_before & read_after)
