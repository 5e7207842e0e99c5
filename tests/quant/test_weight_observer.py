"""The mse weight observer: a clip per channel (or block) that never loses to min/max, wins at 4 bits
on near-Gaussian weights, and is checked in recipes and options."""
import numpy as np
import pytest

from qir import PassContext, PassManager, QirError, parse_pipeline
from qir.quant_params import WEIGHT_CLIPS, block_scales, clip_factors, symmetric_scales
from qir.quant_recipe import recipe_from_dict
from tests.passes.tiny_llama import tiny_llama, tokens


def rounding_error(w: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """Squared error of symmetric quantization per row (one scale per row)."""
    qmax = (1 << (bits - 1)) - 1
    s = scales[:, None]
    return ((np.clip(np.round(w / s), -qmax - 1, qmax) * s - w) ** 2).sum(axis=1)


@pytest.mark.parametrize("bits", [4, 8])
def test_mse_never_loses_to_minmax_and_wins_at_4_bits(bits):
    w = np.random.default_rng(0).standard_normal((64, 576)).astype(np.float32)  # like a rotated weight
    minmax, mse = symmetric_scales(w, 0, bits), symmetric_scales(w, 0, bits, "mse")
    e_minmax, e_mse = rounding_error(w, minmax, bits), rounding_error(w, mse, bits)
    assert (e_mse <= e_minmax * (1 + 1e-6)).all()
    ratio = e_mse.sum() / e_minmax.sum()
    print(f"{bits} bits: mse / minmax squared error {ratio:.3f}, mean clip {np.mean(mse / minmax):.3f}")
    if bits == 4:
        assert ratio < 0.8 and (mse < minmax).all()


def test_clip_factors_are_on_the_grid_and_one_without_tails():
    rows = np.array([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]], np.float32)  # exactly representable
    np.testing.assert_array_equal(clip_factors(rows, 4), [1.0, 1.0])
    c = clip_factors(np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32), 4)
    assert np.isin(np.round(c.astype(np.float64), 6), np.round(WEIGHT_CLIPS, 6)).all() and (c < 1).all()


def test_block_scales_use_a_clip_per_block():
    w = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    minmax, mse = block_scales(w, 1, 32, 4), block_scales(w, 1, 32, 4, "mse")
    assert mse.shape == minmax.shape == (4, 2) and (mse <= minmax).all() and (mse < minmax).any()


def test_recipe_and_option_are_checked():
    assert recipe_from_dict("r", {"weights": {"bits": 4, "observer": "mse"}}).weights["observer"] == "mse"
    with pytest.raises(QirError, match="weight observer must be one of minmax, mse, got 'percentile'"):
        recipe_from_dict("r", {"weights": {"observer": "percentile"}})
    m = tiny_llama()
    ctx = PassContext(data={"calibration_inputs": tokens(1)})
    with pytest.raises(QirError, match="quantize: unknown weight observer 'max' \\(weight observers: minmax, mse\\)"):
        PassManager(parse_pipeline("calibrate{histogram=false},quantize{recipe=w4a8,weight_observer=max}")).run(m, ctx)


def test_quantize_with_the_mse_weight_observer():
    scales = {}
    for observer in ("minmax", "mse"):
        m = tiny_llama()
        ctx = PassContext(data={"calibration_inputs": tokens(1)})
        pipeline = f"calibrate{{histogram=false}},quantize{{recipe=w4a8,weight_observer={observer}}}"
        PassManager(parse_pipeline(pipeline)).run(m, ctx)
        scales[observer] = m.weights.get("blk.0.attn_q.scale")
    assert (scales["mse"] <= scales["minmax"]).all() and (scales["mse"] < scales["minmax"]).any()
