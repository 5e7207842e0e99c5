"""The emitter: multi-op graphs bit-exact, deterministic bytes, aligned buffers, signatures,
XNNPACK within one step, the rejections, and the docs' support table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as fb

from backends.tflite.emit import BUFFER_ALIGNMENT, emit_tflite
from backends.tflite.reference import run_integer
from backends.tflite.runner import run_tflite
from backends.tflite.support_table import support_table
from qir import QirError, parse, print_module
from tests.backends.tflite.helpers import Graph, compare_with_runtime, random_ints, random_spec, spec
from tests.backends.tflite.test_ops_bitexact import batch_matmul_case, binary_case, fully_connected_case

DOC = Path(__file__).resolve().parents[3] / "docs" / "tflite-backend.md"


def fc_add_graph(seed: int, dtype: str = "i8") -> Graph:
    """x -> fully_connected -> add(residual) -> mul -> dequantize."""
    rng = np.random.default_rng(seed)
    g = Graph()
    sx = random_spec(rng, dtype)
    x = g.arg("x", random_ints(rng, dtype, (4, 32)), sx)
    w = g.const("w", rng.integers(-127, 128, (32, 32)).astype(np.int8),
                spec("i8", tuple(float(s) for s in rng.uniform(0.002, 0.01, 32)), 0, axis=0))
    b = g.const("b", rng.integers(-500, 500, 32).astype(np.int64 if dtype == "i16" else np.int32))
    zero = (lambda: 0) if dtype == "i16" else (lambda: int(rng.integers(-20, 20)))
    top = 128 if dtype == "i8" else 32768
    h = g.op("tfl.fully_connected", x, w, b, name="h",
             quant=spec(dtype, sx.scale[0] * 0.01 * top * 128 * 6 / top / 100, zero()))
    r = g.op("tfl.add", h, x, name="r", quant=spec(dtype, (h.quant.scale[0] + sx.scale[0]) * 0.8, zero()))
    m = g.op("tfl.mul", r, r, name="m", quant=spec(dtype, r.quant.scale[0] ** 2 * top / 3, zero()))
    y = g.op("tfl.dequantize", m, quant=None, name="y")
    return g.ret(y, r)


@pytest.mark.parametrize("dtype", ["i8", "i16"])
@pytest.mark.parametrize("seed", [0, 1])
def test_multi_op_graph_bitexact(dtype, seed):
    runtime = compare_with_runtime(fc_add_graph(seed, dtype), f"fc->add->mul->dequantize {dtype} #{seed}")
    assert np.unique(runtime["r"]).size > 4


def test_emit_is_deterministic():
    first = emit_tflite(fc_add_graph(3).module)
    second = emit_tflite(fc_add_graph(3).module)  # rebuilt from scratch
    assert first == second
    assert emit_tflite(fc_add_graph(4).module) != first  # different weights, different bytes


def test_buffers_aligned_and_signature_named():
    g = fc_add_graph(5)
    data = emit_tflite(g.module)
    model = fb.Model.GetRootAsModel(data, 0)
    sizes = 0
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            start = buffer.DataAsNumpy().ctypes.data - np.frombuffer(data, np.uint8).ctypes.data
            assert start % BUFFER_ALIGNMENT == 0, f"buffer {i} starts at byte {start}"
            sizes += 1
    assert sizes >= 2  # weights and bias
    signature = model.SignatureDefs(0)
    assert signature.SignatureKey() == b"main"
    assert [signature.Inputs(i).Name() for i in range(signature.InputsLength())] == [b"x"]
    assert sorted(signature.Outputs(i).Name() for i in range(signature.OutputsLength())) == [b"r", b"y"]
    versions = {model.OperatorCodes(i).BuiltinCode(): model.OperatorCodes(i).Version()
                for i in range(model.OperatorCodesLength())}
    assert versions[fb.BuiltinOperator.FULLY_CONNECTED] == 4 and versions[fb.BuiltinOperator.ADD] == 2


def test_tfl_ir_prints_and_parses_back():
    g = fc_add_graph(6)
    text = print_module(g.module)
    assert "scale = [" in text and "rounding = \"float64\"" in text
    assert print_module(parse(text)) == text


def test_tampered_parameters_fail_verification():
    text = print_module(fc_add_graph(7).module)
    op_line = next(line for line in text.splitlines() if "tfl.add" in line)
    tampered = op_line.replace("left_shift = 20", "left_shift = 19")
    assert tampered != op_line
    with pytest.raises(QirError, match="left_shift"):
        emit_tflite(parse(text.replace(op_line, tampered)))


@pytest.mark.parametrize("case", ["fc", "add", "mul", "batch_matmul", "graph"])
def test_xnnpack_within_one_step(case):
    """AUTO (XNNPACK where it takes the op) rounds differently: at most one step apart."""
    g = {"fc": lambda: fully_connected_case("i8", 1), "add": lambda: binary_case("tfl.add", "i8", 1),
         "mul": lambda: binary_case("tfl.mul", "i8", 2), "batch_matmul": lambda: batch_matmul_case("i8", 0),
         "graph": lambda: fc_add_graph(8)}[case]()
    fast = run_tflite(emit_tflite(g.module), g.feeds, reference=False)
    ours = run_integer(g.module, *(g.feeds[a.name] for a in g.module.main.args))
    for value, expected in zip(g.module.main.outputs, ours):
        if value.type.is_float:
            step = value.producer.operands[0].quant.scale[0]
            diff = np.abs(fast[value.name].astype(np.float64) - expected) / step
        else:
            diff = np.abs(fast[value.name].astype(np.int64) - expected)
        print(f"xnnpack {case} {value.name}: max |diff| {diff.max():.3g} steps, {int((diff > 0.5).sum())} differ")
        assert diff.max() <= 1.0 + 1e-4  # float outputs: the step itself is a rounded float32


# -- rejections: what the runtime silently miscomputes ------------------------------------------

def test_rejects_weight_zero_point():
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.arg("x", random_ints(rng, "i8", (2, 8)), spec("i8", 0.05, 3))
    w = g.const("w", rng.integers(-127, 128, (4, 8)).astype(np.int8), spec("i8", 0.01, 5))
    g.ret(g.op("tfl.fully_connected", x, w, quant=spec("i8", 0.1, 0), name="y"))
    with pytest.raises(QirError, match=r"@w: .*weights need zero point 0"):
        emit_tflite(g.module)


def test_rejects_per_channel_activation():
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.arg("x", random_ints(rng, "i8", (3, 3)), spec("i8", (0.1, 0.2, 0.3), 0, axis=0))
    g.ret(g.op("tfl.transpose", x, quant=x.quant, name="y", perm=[1, 0]))
    with pytest.raises(QirError, match=r"%x: .*activations need per-tensor quantization"):
        emit_tflite(g.module)


def test_rejects_int16_zero_point():
    rng = np.random.default_rng(0)
    g = Graph()
    q = spec("i16", 0.001, 7)
    x = g.arg("x", random_ints(rng, "i16", (3, 4)), q)
    g.ret(g.op("tfl.transpose", x, quant=q, name="y", perm=[1, 0]))
    with pytest.raises(QirError, match=r"%x: int16 tensors need zero point 0"):
        emit_tflite(g.module)


@pytest.mark.parametrize("op_name, options", [("tfl.reshape", {"shape": [12]}), ("tfl.transpose", {"perm": [1, 0]})])
def test_rejects_requantizing_data_movement(op_name, options):
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.arg("x", random_ints(rng, "i8", (3, 4)), spec("i8", 0.05, 0))
    g.ret(g.op(op_name, x, quant=spec("i8", 0.1, 0), name="y", **options))
    with pytest.raises(QirError, match=rf"%y: {op_name} moves integers without rescaling"):
        emit_tflite(g.module)


def test_rejects_core_ops():
    from qir import Builder, Module
    m = Module("m")
    b = Builder.new_function(m, "main")
    b.ret(b.relu(b.arg("x", (2,))))
    with pytest.raises(QirError, match="q.relu is not a tfl op"):
        emit_tflite(m)


def test_doc_has_current_support_table():
    assert support_table() in DOC.read_text(), "regenerate the table in docs/tflite-backend.md from support_table()"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fc_add_softmax_graph_bitexact(seed):
    rng = np.random.default_rng(100 + seed)
    g = Graph()
    sx = random_spec(rng, "i8")
    x = g.arg("x", random_ints(rng, "i8", (3, 48)), sx)
    w = g.const("w", rng.integers(-127, 128, (48, 48)).astype(np.int8),
                spec("i8", tuple(float(s) for s in rng.uniform(0.002, 0.01, 48)), 0, axis=0))
    h = g.op("tfl.fully_connected", x, w, name="h", quant=spec("i8", sx.scale[0] * 0.006 * 128 * 7 / 100, 2))
    r = g.op("tfl.add", h, x, name="r", quant=spec("i8", (h.quant.scale[0] + sx.scale[0]) * 0.8, -5))
    y = g.op("tfl.softmax", r, name="y", quant=spec("i8", 1 / 256, -128), beta=1.0)
    runtime = compare_with_runtime(g.ret(y), f"fc->add->softmax #{seed}")
    assert np.unique(runtime["y"]).size > 2
