"""Quantizing a masked_fill of a constant (BERT's pooling logits: a row of zeros masked at run time):
its range comes from the constant's data, and the quantization report leaves out a value that is
exactly 0 wherever it is compared."""
import numpy as np

import qir
from passes.quantize import MASK_MARGIN
from qir import Builder, Module, PassContext, PassManager, parse_pipeline
from qir.quant_report import sqnr_by_value

L, H = 8, 4


def mean_pool_module() -> Module:
    m = Module("pool")
    b = Builder.new_function(m, "main")
    hidden, mask = b.arg("hidden", (1, L, H)), b.arg("attention_mask", (1, L), "i32")
    tokens = b.reshape(mask, shape=[1, 1, L], name="pool.mask")
    logits = b.masked_fill(b.const("pool_logits", np.zeros((1, 1, L), np.float32)), tokens, value=-1e4,
                           name="pool.logits")
    weights = b.softmax(logits, name="pool.weights")
    b.ret(b.matmul(weights, hidden, name="pool.mean"), weights)
    qir.verify(m)
    return m


def samples(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in (8, 5, 2):
        mask = (np.arange(L) < n).astype(np.int32)[None]
        out.append((rng.normal(size=(1, L, H)).astype(np.float32), mask))
    return out


def test_masked_constant_takes_its_range_and_pools_exactly():
    m = mean_pool_module()
    PassManager(parse_pipeline("calibrate,quantize{recipe=a16w8}")).run(m, PassContext(data={"calibration_inputs": samples()}))
    logits = next(op for op in m.main.ops if op.results[0].name == "pool.logits").results[0]
    # the zeros' range [0, 0], extended down by the margin (int16: symmetric)
    assert np.isclose(logits.quant.scale[0] * 32767, MASK_MARGIN)
    hidden, mask = samples()[1]
    pooled, weights = qir.Interpreter(m, mode="fake-quant").run(hidden, mask)
    # every real token gets one weight, ~1/5, and padding exactly 0: the mean up to one scale
    assert len(np.unique(weights[0, 0, :5])) == 1 and abs(weights[0, 0, 0] - 1 / 5) < 1e-4
    assert not weights[0, 0, 5:].any()
    np.testing.assert_allclose(pooled[0, 0], hidden[0, :5].mean(0), atol=1e-3)

    sqnr = sqnr_by_value(m, samples())  # on the calibration inputs, as qir-compile reports
    assert "pool.logits" not in sqnr  # 0 on every unmasked element, in both modes: no SQNR
    assert sqnr["pool.weights"] > 60 and sqnr["pool.mean"] > 40
