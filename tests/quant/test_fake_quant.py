"""Fake quantization against a numpy reference for every scheme, its straight-through gradient, and
its fixed points (values already on the quantization grid)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qir import QirError, QuantSpec
from qir.fake_quant import fake_quant


def reference(x, scale, zero, qmin, qmax):
    """s * (clip(round(x / s) + z, qmin, qmax) - z), all in float32 like the JAX rule."""
    x, scale, zero = np.float32(x), np.float32(scale), np.float32(zero)
    q = np.clip(np.round(x / scale) + zero, qmin, qmax)
    return ((q - zero) * scale).astype(np.float32)


def run(x, spec, scale, zero):
    return np.asarray(fake_quant(jnp.asarray(x), spec, jnp.asarray(scale, jnp.float32), jnp.asarray(zero)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("bits,zero", [(8, 0), (8, -17), (16, 0), (4, 3)])
def test_per_tensor_matches_numpy(rng, bits, zero):
    x = rng.normal(0, 2, (3, 5, 7)).astype(np.float32)
    spec = QuantSpec(bits, True, scale=(0.05,), zero_point=(zero,))
    expected = reference(x, 0.05, zero, spec.qmin, spec.qmax)
    np.testing.assert_array_equal(run(x, spec, [0.05], [zero]), expected)
    lo, hi = np.float32(0.05) * (spec.qmin - zero), np.float32(0.05) * (spec.qmax - zero)
    inside = (x >= lo) & (x <= hi)
    assert np.abs(expected - x)[inside].max() <= 0.025 + 1e-6  # rounding error at most half a step
    np.testing.assert_allclose(expected[~inside], np.where(x[~inside] > hi, hi, lo))  # saturates outside


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_per_channel_matches_numpy(rng, axis):
    x = rng.normal(0, 1, (4, 6, 8)).astype(np.float32)
    scales = rng.uniform(0.005, 0.05, x.shape[axis]).astype(np.float32)
    spec = QuantSpec(8, True, scale=tuple(scales), zero_point=(0,), axis=axis)
    shape = [1, 1, 1]
    shape[axis] = -1
    expected = reference(x, scales.reshape(shape), 0, -128, 127)
    np.testing.assert_array_equal(run(x, spec, scales, [0]), expected)


@pytest.mark.parametrize("axis,block", [(1, 4), (1, 8), (0, 2)])
def test_per_block_matches_numpy(rng, axis, block):
    x = rng.normal(0, 1, (6, 16)).astype(np.float32)
    n_blocks = x.shape[axis] // block
    scales = rng.uniform(0.05, 0.3, (6, n_blocks) if axis == 1 else (n_blocks, 16)).astype(np.float32)
    spec = QuantSpec(4, True, scale="w.scale", zero_point=(0,), axis=axis, block_size=block)
    per_element = np.repeat(scales, block, axis=axis)  # each block's scale on each of its elements
    expected = reference(x, per_element, 0, -8, 7)
    np.testing.assert_array_equal(run(x, spec, scales, [0]), expected)
    # a different scale in every block: quantizing with one block's scale everywhere differs
    assert not np.array_equal(expected, reference(x, scales.flat[0], 0, -8, 7))


def test_straight_through_gradient_is_identity_inside_and_zero_outside():
    spec = QuantSpec(8, True, scale=(0.1,), zero_point=(10,))
    lo, hi = 0.1 * (spec.qmin - 10), 0.1 * (spec.qmax - 10)  # the representable range [-13.8, 11.7]
    x = jnp.asarray([-20.0, -13.0, -0.37, 0.0, 0.04, 5.55, 11.6, 12.5, 40.0], jnp.float32)
    grad = np.asarray(jax.grad(lambda v: fake_quant(v, spec, jnp.float32(0.1), jnp.float32(10)).sum())(x))
    inside = (np.asarray(x) > lo) & (np.asarray(x) < hi)
    np.testing.assert_array_equal(grad, np.where(inside, 1.0, 0.0))
    assert inside.sum() == 6 and (~inside).sum() == 3


def test_straight_through_gradient_per_channel():
    spec = QuantSpec(8, True, scale=(0.01, 1.0), zero_point=(0,), axis=0)
    x = jnp.asarray([[0.5, 2.0], [0.5, 2.0]], jnp.float32)  # row 0 saturates at 1.27, row 1 does not
    grad = np.asarray(jax.grad(lambda v: fake_quant(v, spec, jnp.asarray([0.01, 1.0]), jnp.float32(0)).sum())(x))
    np.testing.assert_array_equal(grad, [[1.0, 0.0], [1.0, 1.0]])


@pytest.mark.parametrize("bits,zero", [(8, 5), (8, 0), (4, -2), (16, 0)])
def test_values_on_the_grid_are_unchanged(bits, zero):
    spec = QuantSpec(bits, True, scale=(0.037,), zero_point=(zero,))
    q = np.arange(spec.qmin, spec.qmax + 1, max(1, (spec.qmax - spec.qmin) // 500))
    x = ((q - np.float32(zero)) * np.float32(0.037)).astype(np.float32)
    np.testing.assert_array_equal(run(x, spec, [0.037], [zero]), x)


def test_on_grid_per_block_weights_are_unchanged(rng):
    scales = rng.uniform(0.01, 0.1, (3, 2)).astype(np.float32)
    q = rng.integers(-8, 8, (3, 8)).astype(np.float32)
    x = (q * np.repeat(scales, 4, axis=1)).astype(np.float32)
    spec = QuantSpec(4, True, scale="s", zero_point=(0,), axis=1, block_size=4)
    np.testing.assert_array_equal(run(x, spec, scales, [0]), x)


def test_spec_invariants():
    assert (QuantSpec(8, True, scale=0.1).qmin, QuantSpec(8, True, scale=0.1).qmax) == (-128, 127)
    assert (QuantSpec(4, True, scale=0.1).qmin, QuantSpec(4, True, scale=0.1).qmax) == (-8, 7)
    assert (QuantSpec(16, True, scale=0.1).qmin, QuantSpec(16, True, scale=0.1).qmax) == (-32768, 32767)
    assert str(QuantSpec(4, True, scale="w.scale", axis=0, block_size=32)) == "!q<i4 axis=0 block=32 s=@w.scale z=0>"
    with pytest.raises(QirError, match="needs an axis"):
        QuantSpec(4, True, scale=(0.1,), block_size=32)
    with pytest.raises(QirError, match="1 bits"):
        QuantSpec(1, True, scale=(0.1,))
    with pytest.raises(QirError, match="zero point must be an integer"):
        QuantSpec(8, True, scale=(0.1,), zero_point=(0.5,))


def test_ties_round_half_to_even_under_jit():
    """x / s = 2.5 exactly (a bf16 weight over its block's scale): with exact=True (the interpreter's
    constants) the even neighbour, as numpy and the emitters give it, even where XLA would divide
    by multiplying with 1/s."""
    x = jnp.asarray(np.array([[0.29296875, -0.41015625, 0.0]], np.float32).repeat(4, 0))
    for spec, scale in ((QuantSpec(8, True, scale=(0.1171875,)), (0.1171875,)),
                        (QuantSpec(8, True, scale="s", axis=0), (0.1171875,) * 4)):
        got = jax.jit(lambda x, s: fake_quant(x, spec, s, jnp.asarray((0,)), exact=True))(
            x, jnp.asarray(scale, jnp.float32))
        np.testing.assert_array_equal(np.asarray(got)[:, :2] / 0.1171875, [[2.0, -4.0]] * 4)
