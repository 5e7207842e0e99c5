"""The runner turns HTP's silent failure modes into errors naming the node: a node left to the CPU
EP, and a node HTP runs in float (read from the QNN graph's JSON dump)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from backends.qnn.runner import register_htp, run_cpu, run_htp
from qir import QirError


def qdq_matmul(a_dtype, b_dtype, y_dtype, scales=(1 / 32767, 1 / 32767, 0.01)) -> bytes:
    """y = a @ b of two activations, each a QuantizeLinear -> DequantizeLinear pair."""
    zero = {np.uint8: 128, np.uint16: 32768, np.int16: 0}
    inits, nodes = [], []
    for name, dtype, scale in zip("aby", (a_dtype, b_dtype, y_dtype), scales):
        inits += [numpy_helper.from_array(np.float32(scale), name + ".scale"),
                  numpy_helper.from_array(np.asarray(zero[dtype], dtype), name + ".zero")]
        source = "mm" if name == "y" else name
        nodes += [helper.make_node("QuantizeLinear", [source, name + ".scale", name + ".zero"], [name + ".q"],
                                   name=name + ".quantize"),
                  helper.make_node("DequantizeLinear", [name + ".q", name + ".scale", name + ".zero"],
                                   [name + ".dq"], name=name + ".dequantize")]
    nodes.append(helper.make_node("MatMul", ["a.dq", "b.dq"], ["mm"], name="scores"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4, 8]),
                                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8, 4])],
                              [helper.make_tensor_value_info("y.dq", TensorProto.FLOAT, [1, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model.SerializeToString()


FEEDS = {"a": np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 4, 8),
         "b": np.linspace(1, -1, 32, dtype=np.float32).reshape(1, 8, 4)}


def test_fixed_point_graph_runs_and_matches_the_cpu_ep():
    model = qdq_matmul(np.uint16, np.int16, np.uint16)
    run = run_htp(model, FEEDS)
    types = {t["data_type"] for g in run.qnn_graphs for t in g["graph"]["tensors"].values()}
    assert 0x0416 in types and 0x0316 in types  # ufixed16 and sfixed16 tensors inside
    steps = np.abs(run.outputs["y.dq"] - run_cpu(model, FEEDS)["y.dq"]).max() / np.float32(0.01)
    print(f"u16 x s16 -> u16 MatMul: {steps:.4f} LSB from the CPU EP")
    assert steps <= 1.01


def test_float_island_is_an_error_naming_the_node():
    """HTP runs a u8 x u8 -> u16 MatMul in float32 (measured): the runner refuses it."""
    with pytest.raises(QirError, match=r"HTP runs node 'scores' \(MatMul\) in float"):
        run_htp(qdq_matmul(np.uint8, np.uint8, np.uint16, scales=(1 / 127, 1 / 127, 0.01)), FEEDS)


def test_cpu_fallback_is_an_error_naming_the_node():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="determinant")], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    with pytest.raises(QirError, match="Det 'determinant' run on CPUExecutionProvider, not on HTP"):
        run_htp(model.SerializeToString(), {"x": np.eye(3, dtype=np.float32)[None].repeat(2, 0)})


def test_registering_twice_is_harmless():
    register_htp()
    register_htp()


def test_unknown_soc_is_an_error():
    with pytest.raises(QirError, match="unknown SoC 'SM0000'"):
        run_htp(qdq_matmul(np.uint16, np.int16, np.uint16), FEEDS, soc="SM0000")


def test_standard_output_keeps_only_results():
    """libQnnHtp prints a banner on stdout when a process first loads it (it broke qir-eval --json)."""
    import subprocess
    import sys
    from pathlib import Path
    code = ("import numpy as np; from tests.backends.qnn.test_runner import qdq_matmul;"
            "from backends.qnn.runner import htp_session;"
            "htp_session(qdq_matmul(np.uint16, np.int16, np.uint16)); print('{\"ok\": 1}')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr
    assert done.stdout == '{"ok": 1}\n'
