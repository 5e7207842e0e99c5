"""A float16 checkpoint's embedding is gathered and cast to f32 (frontends/llama.py): the integer
graph lowers that cast to at most a requantization, bit-exact with LiteRT."""
import numpy as np
import pytest

import qir
from backends.tflite.emit import emit_tflite
from backends.tflite.legalize import legalize_tflite
from backends.tflite.reference import run_integer
from backends.tflite.runner import run_tflite
from qir import Builder, Module, PassContext, PassManager, parse_pipeline


def f16_embedding_model() -> Module:
    rng = np.random.default_rng(0)
    m = Module("f16")
    b = Builder.new_function(m, "main")
    tokens = b.arg("tokens", (1, 8), "i32")
    x = b.cast(b.gather(b.const("embd", rng.normal(0, 0.5, (32, 16)).astype(np.float16)), tokens, name="embd"),
               dtype="f32", name="embd_f32")
    b.ret(b.linear(x, b.const("head", rng.normal(0, 0.3, (24, 16)).astype(np.float32)), name="logits"))
    return m


def test_cast_between_float_widths_lowers_bit_exact():
    m = f16_embedding_model()
    batches = [(np.random.default_rng(s).integers(0, 32, (1, 8)).astype(np.int32),) for s in range(4)]
    PassManager(parse_pipeline("calibrate{samples=4},quantize{recipe=w8a8}")).run(
        m, PassContext(data={"calibration_inputs": batches}))
    legal = legalize_tflite(m)
    tokens = batches[0][0]
    runtime = run_tflite(emit_tflite(legal), {"tokens": tokens})["logits.out"]
    assert np.count_nonzero(runtime != run_integer(legal, tokens)[0]) == 0
    reference = qir.interpret(f16_embedding_model(), tokens)[0]
    assert np.abs(runtime - reference).max() < 0.05 * np.abs(reference).max()


def test_cast_to_integers_is_refused_by_name():
    m = Module("to_int")
    b = Builder.new_function(m, "main")
    x = b.arg("x", (2, 4))
    b.ret(b.add(b.cast(b.cast(x, dtype="i32", name="ints"), dtype="f32", name="back"), x, name="y"))
    PassManager(parse_pipeline("calibrate{samples=1},quantize{recipe=w8a8}")).run(
        m, PassContext(data={"calibration_inputs": [(np.ones((2, 4), np.float32),)]}))
    with pytest.raises(qir.QirError, match=r"q.cast %ints from f32 to i32 has no integer lowering"):
        legalize_tflite(m)
