"""Run a QDQ ONNX model on Qualcomm's HTP through onnxruntime-qnn (the x86 simulator here, the
same library on a device), and prove that it ran there in fixed point.

Two silent failure modes are turned into errors: a node that lands on ONNX Runtime's CPU EP
(fallback is disabled and placement is checked), and a node the QNN EP hands to HTP in float
(the QNN graph's JSON dump is read and every tensor must be fixed point, except the float
graph inputs and outputs that a Quantize / Dequantize at the edge converts)."""
from __future__ import annotations

import glob
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from qir.errors import QirError

EP_NAME = "QNNExecutionProvider"
# (htp_arch, soc_model) of the Snapdragon parts the simulator is run as
SOCS = {"SM8650": ("75", "57"), "SM8750": ("79", "69"), "SC8380XP": ("73", "60")}
DEFAULT_SOC = "SM8650"

# QNN_DATATYPE_* codes (QnnTypes.h) as they appear in the JSON graph dump
FIXED_POINT = {0x0308: "sfixed8", 0x0316: "sfixed16", 0x0332: "sfixed32",
               0x0408: "ufixed8", 0x0416: "ufixed16", 0x0432: "ufixed32"}
INTEGER = {0x0008: "int8", 0x0016: "int16", 0x0032: "int32", 0x0064: "int64",
           0x0108: "uint8", 0x0116: "uint16", 0x0132: "uint32", 0x0164: "uint64", 0x0508: "bool"}
FLOAT = {0x0216: "float16", 0x0232: "float32"}

_registered = False


def register_htp() -> None:
    """Register the QNN plugin EP with onnxruntime; once per process (a second registration fails)."""
    global _registered
    if _registered:
        return
    try:
        import onnxruntime as ort
        import onnxruntime_qnn as qnn
    except ImportError:
        raise QirError("the QNN runner needs onnxruntime-qnn: pip install 'qir[qnn]'") from None
    if not any(d.ep_name == EP_NAME for d in ort.get_ep_devices()):
        ort.register_execution_provider_library(qnn.get_ep_name(), qnn.get_library_path())
    _registered = True


@dataclass
class HtpRun:
    outputs: dict[str, np.ndarray]
    qnn_graphs: list[dict]  # the QNN graphs as the EP built them (JSON dump)


def htp_session(model: bytes | str, soc: str = DEFAULT_SOC, dump_dir: str | None = None, options: dict | None = None,
                config: dict | None = None):
    """An InferenceSession on the HTP backend with CPU fallback disabled (`model`: bytes or a file path;
    `options`: more QNN EP options; `config`: more session config entries)."""
    import onnxruntime as ort
    import onnxruntime_qnn as qnn
    register_htp()
    if soc not in SOCS:
        raise QirError(f"unknown SoC '{soc}'; known: {', '.join(SOCS)}")
    arch, soc_model = SOCS[soc]
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    provider = {"backend_path": qnn.get_qnn_htp_path(), "htp_arch": arch, "soc_model": soc_model}
    if dump_dir is not None:
        provider.update({"dump_json_qnn_graph": "1", "json_qnn_graph_dir": dump_dir})
    provider.update(options or {})

    def session(fallback: bool):
        so = ort.SessionOptions()
        so.log_severity_level = 4  # the EP logs unsupported nodes as errors; they are reported below
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if fallback else "1")
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        for key, value in (config or {}).items():
            so.add_session_config_entry(key, value)
        so.add_provider_for_devices(devices, provider)
        with stdout_to_stderr():
            return ort.InferenceSession(model if isinstance(model, str) else bytes(model), so)

    try:
        return session(fallback=False)
    except Exception as exc:  # onnxruntime raises its own exception types
        reason = first_line(exc)
    # name the nodes: build the session again with fallback allowed and see where they went
    try:
        check_placement(session(fallback=True))
    except QirError:
        raise
    except Exception:
        pass
    raise QirError(f"qnn: HTP cannot run the model: {reason}")


def checked_htp_session(model: bytes, soc: str = DEFAULT_SOC, options: dict | None = None,
                        config: dict | None = None):
    """An HTP session proven to run every node on HTP in fixed point, and the QNN graphs it built
    (JSON dump); QirError naming the node otherwise."""
    with tempfile.TemporaryDirectory(prefix="qir-qnn-") as dump:
        session = htp_session(model, soc, dump_dir=dump, options=options, config=config)
        check_placement(session)
        graphs = [json.load(open(path)) for path in sorted(glob.glob(os.path.join(dump, "*.json")))
                  if not path.endswith("_tensor_log.json")]
    if not graphs:
        raise QirError("qnn: the QNN EP built no graph (nothing ran on HTP)")
    for graph in graphs:
        check_fixed_point(graph)
    return session, graphs


def run_htp(model: bytes, inputs: dict[str, np.ndarray], soc: str = DEFAULT_SOC) -> HtpRun:
    """Run on HTP; raise QirError naming the node if any node is not on HTP or any QNN tensor is float."""
    session, graphs = checked_htp_session(model, soc)
    return HtpRun(run_session(session, inputs), graphs)


def cpu_session(model: bytes | str):
    """The QDQ graph on onnxruntime's CPU EP with graph optimizations off: every DequantizeLinear ->
    op -> QuantizeLinear runs as written, in float32, which is the QDQ reference semantics."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model if isinstance(model, str) else bytes(model), so,
                                providers=["CPUExecutionProvider"])


def run_cpu(model: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_session(cpu_session(model), inputs)


def run_session(session, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    outputs = session.run(None, {k: np.asarray(v) for k, v in inputs.items()})
    return {o.name: v for o, v in zip(session.get_outputs(), outputs)}


def check_placement(session) -> None:
    for subgraph in session.get_provider_graph_assignment_info():
        if subgraph.ep_name != EP_NAME:
            nodes = ", ".join(f"{n.op_type} '{n.name}'" for n in subgraph.get_nodes())
            raise QirError(f"qnn: node(s) {nodes} run on {subgraph.ep_name}, not on HTP")


def check_fixed_point(graph: dict) -> None:
    """Every tensor of a QNN graph is fixed point or integer, except graph inputs read only by
    Quantize and graph outputs written only by Dequantize (the float edges of a QDQ model)."""
    nodes, tensors = graph["graph"]["nodes"], graph["graph"]["tensors"]
    readers: dict[str, list[str]] = {}
    writer: dict[str, str] = {}
    for name, node in nodes.items():
        for t in node["input_names"]:
            readers.setdefault(t, []).append(name)
        for t in node["output_names"]:
            writer[t] = name
    islands = []
    for tname, tensor in tensors.items():
        dtype = tensor["data_type"]
        if dtype in FIXED_POINT or dtype in INTEGER:
            continue
        if dtype not in FLOAT:
            raise QirError(f"qnn: QNN tensor '{tname}' has an unknown data type 0x{dtype:04x}")
        edge_in = tname not in writer and all(nodes[r]["type"] == "Quantize" for r in readers.get(tname, []))
        edge_out = tname in writer and nodes[writer[tname]]["type"] == "Dequantize" and not readers.get(tname)
        if not (edge_in or edge_out):
            islands.append(tname)
    if not islands:
        return
    # name the op that computes in float (not the Quantize / Dequantize around it) where there is one
    touching = [(name, node) for name, node in nodes.items()
                if set(node["input_names"] + node["output_names"]) & set(islands)]
    name, node = next(((n, v) for n, v in touching if v["type"] not in ("Quantize", "Dequantize")), touching[0])
    tname = next(t for t in node["input_names"] + node["output_names"] if t in islands)
    raise QirError(f"qnn: HTP runs node '{name}' ({node['type']}) in float: tensor '{tname}' is "
                   f"{FLOAT[tensors[tname]['data_type']]}, not fixed point")


@contextmanager
def stdout_to_stderr():
    """libQnnHtp prints a banner on the process's standard output when the first session loads it;
    send it to standard error so that stdout keeps only results (qir-eval --json)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
