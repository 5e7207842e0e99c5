"""Observers (minmax, percentile, mse), affine parameters, and what the calibrate pass records."""
import numpy as np
import pytest

import qir
from qir import Builder, Module, PassContext, PassManager, QirError, parse_pipeline
from qir.quant_params import affine_params, block_scales, symmetric_scales
from qir.stats import ValueStats, observed_range, quantization_error

BINS = 2048


def stats_of(samples: np.ndarray, bins: int = BINS) -> ValueStats:
    """Stats as calibrate gathers them: exact range, histogram of `bins` equal bins over it."""
    lo, hi = float(samples.min()), float(samples.max())
    hist, _ = np.histogram(samples, bins=bins, range=(lo, hi))
    return ValueStats(lo, hi, hist)


def test_minmax_is_the_exact_range():
    samples = np.random.default_rng(0).normal(0, 1, 10_000).astype(np.float32)
    st = stats_of(samples)
    assert observed_range(st, "minmax", 8, False) == (float(samples.min()), float(samples.max()))
    assert observed_range(ValueStats(-1.5, 3.25), "minmax", 8, False) == (-1.5, 3.25)  # no histogram needed


def test_percentile_clips_a_planted_outlier():
    samples = np.random.default_rng(1).normal(0, 1, 100_000)
    samples[1234] = 80.0  # one massive value: minmax spends almost the whole int8 range on it
    st = stats_of(samples)
    lo, hi = observed_range(st, "percentile", 8, False, percentile=99.9)
    print(f"minmax [{st.min:.2f}, {st.max:.2f}], percentile 99.9 [{lo:.2f}, {hi:.2f}]")
    assert st.max == 80.0
    assert 2.5 < hi < 4.5 and -4.5 < lo < -2.5  # about the 0.1 % / 99.9 % quantiles of N(0, 1)
    # 99.9999 % keeps everything but the outlier's bin, which is 1 of 100,000 values
    assert observed_range(st, "percentile", 8, False, percentile=99.9999)[1] < 80.0


def test_mse_range_is_no_worse_than_minmax_on_a_heavy_tail():
    samples = np.random.default_rng(2).standard_t(df=2, size=200_000)  # heavy tails, max ≫ typical
    st = stats_of(samples)
    for bits, symmetric in ((8, False), (8, True), (4, True)):
        lo, hi = observed_range(st, "mse", bits, symmetric)
        mse_err, minmax_err = quantization_error(st, np.array([lo, st.min]), np.array([hi, st.max]), bits, symmetric)
        print(f"{bits}-bit {'symmetric' if symmetric else 'asymmetric'}: mse range [{lo:.2f}, {hi:.2f}] "
              f"expected error {mse_err:.4g}, minmax [{st.min:.1f}, {st.max:.1f}] {minmax_err:.4g}")
        assert mse_err <= minmax_err
        assert hi < st.max  # on this tail the best range clips
        # the histogram error agrees with quantizing the samples themselves
        scale, zero, qmin, qmax = affine_params(lo, hi, bits, symmetric)
        q = np.clip(np.round(samples / scale) + zero, qmin, qmax)
        scale2, zero2, _, _ = affine_params(st.min, st.max, bits, symmetric)
        q2 = np.clip(np.round(samples / scale2) + zero2, qmin, qmax)
        assert ((samples - (q - zero) * scale) ** 2).sum() < ((samples - (q2 - zero2) * scale2) ** 2).sum()


def test_observers_without_histograms_or_unknown():
    with pytest.raises(QirError, match="needs histograms"):
        observed_range(ValueStats(0.0, 1.0), "percentile", 8, False)
    with pytest.raises(QirError, match="unknown observer 'kl'"):
        observed_range(ValueStats(0.0, 1.0, np.ones(8)), "kl", 8, False)


@pytest.mark.parametrize("lo,hi", [(-1.0, 3.0), (-0.3, 0.0), (0.2, 5.0), (-7.1, -2.0), (-1e-3, 250.0), (0.0, 0.0)])
def test_affine_int8_zero_is_exactly_representable(lo, hi):
    scale, zero, qmin, qmax = affine_params(lo, hi, 8, symmetric=False)
    assert (qmin, qmax) == (-128, 127) and scale > 0
    assert isinstance(zero, int) and qmin <= zero <= qmax
    assert (zero - zero) * scale == 0.0  # real 0 -> q = z exactly -> back to 0
    # the grid covers [min(lo, 0), max(hi, 0)] to within rounding
    assert (qmin - zero) * scale <= min(lo, 0.0) + scale / 2 and (qmax - zero) * scale >= max(hi, 0.0) - scale / 2


@pytest.mark.parametrize("lo,hi", [(-1.0, 3.0), (0.0, 9.0), (-5.0, -1.0)])
def test_affine_int16_is_symmetric_with_zero_point_0(lo, hi):
    scale, zero, qmin, qmax = affine_params(lo, hi, 16, symmetric=True)
    assert zero == 0 and (qmin, qmax) == (-32768, 32767)
    assert scale == pytest.approx(max(abs(lo), abs(hi)) / 32767)


def test_weight_scales():
    w = np.array([[1.0, -2.54, 0.5], [0.0, 0.0, 0.0], [0.1, 0.2, -0.3]], np.float32)
    np.testing.assert_allclose(symmetric_scales(w, 0, 8), [2.54 / 127, 1.0, 0.3 / 127], rtol=1e-6)
    w = np.arange(16, dtype=np.float32).reshape(2, 8) - 7
    np.testing.assert_allclose(block_scales(w, 1, 4, 4), [[7 / 7, 3 / 7], [4 / 7, 8 / 7]], rtol=1e-6)


def small_module() -> Module:
    m = Module("m")
    b = Builder.new_function(m, "main")
    x = b.arg("x", [4, 8])
    w = b.const("w", np.random.default_rng(0).normal(0, 0.3, (6, 8)).astype(np.float32))
    y = b.linear(x, w, name="y")
    b.ret(b.relu(y, name="r"))
    return m


def test_calibrate_records_exact_ranges_and_full_histograms():
    m = small_module()
    rng = np.random.default_rng(3)
    inputs = [(rng.normal(0, 1, (4, 8)).astype(np.float32),) for _ in range(3)]
    ctx = PassContext()
    ctx.data["calibration_inputs"] = inputs
    PassManager(parse_pipeline("calibrate{bins=64}")).run(m, ctx)
    stats = ctx.data["calibration"]
    assert set(stats) == {"x", "y", "r"}  # every float argument and op result
    assert stats["x"].min == min(float(x.min()) for (x,) in inputs)
    ys = [qir.Interpreter(m).run(x)[0] for (x,) in inputs]  # relu output; y is its input
    w = np.asarray(m.weights.get("w"))
    pre = np.stack([x @ w.T for (x,) in inputs])
    assert stats["y"].min == pytest.approx(pre.min(), abs=1e-5) and stats["y"].max == pytest.approx(pre.max(), abs=1e-5)
    assert stats["r"].min == 0.0 and stats["r"].max == pytest.approx(max(y.max() for y in ys), abs=1e-5)
    assert len(stats["y"].hist) == 64 and stats["y"].hist.sum() == 3 * 4 * 6  # every element, over every sample
    reference, _ = np.histogram(pre, bins=64, range=(stats["y"].min, stats["y"].max))
    assert np.abs(stats["y"].hist - reference).sum() <= 4  # equal up to elements on bin edges


def test_calibrate_needs_inputs():
    with pytest.raises(QirError, match="calibration inputs"):
        PassManager(parse_pipeline("calibrate")).run(small_module(), PassContext())


@pytest.mark.parametrize("pipeline,used", [("calibrate", 20), ("calibrate{samples=2}", 2)])
def test_calibrate_uses_every_given_input_unless_capped(pipeline, used):
    rng = np.random.default_rng(4)
    ctx = PassContext()
    ctx.data["calibration_inputs"] = [(rng.normal(0, 1, (4, 8)).astype(np.float32),) for _ in range(20)]
    PassManager(parse_pipeline(pipeline)).run(small_module(), ctx)
    assert ctx.data["calibration"]["r"].hist.sum() == used * 4 * 6
