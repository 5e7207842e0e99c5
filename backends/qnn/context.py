"""Offline context binaries: the QDQ model prepared by QNN ahead of time for one Snapdragon SoC, in
onnxruntime's EPContext form — `model_ctx.onnx` (one EPContext node) and `model_ctx_qnn.bin` (the
HTP graph QNN built for that SoC's HTP architecture). A device loads the pair without compiling.

The binary is written by the QNN EP itself, from a session with `ep.context_enable`; that session
is the checked one (CPU fallback disabled, placement and fixed point proven), so a context binary
exists only for a model that runs entirely on HTP in fixed point. QNN records the SoC it built for
inside the binary (`soc_type=SM8650;arch=75;`), which is read back to check it and to load it."""
from __future__ import annotations

import re
from pathlib import Path

import onnx

from backends.qnn.runner import SOCS, checked_htp_session
from qir.errors import QirError

CONTEXT_MODEL = "model_ctx.onnx"
SOC_RECORD = re.compile(rb"soc_type=(\w+);arch=(\d+);")


def write_context(model: bytes, outdir: Path, soc: str) -> list[Path]:
    """Prepare `model` on HTP for `soc` and write the EPContext model and its binary into `outdir`."""
    if soc not in SOCS:
        raise QirError(f"unknown SoC '{soc}'; known: {', '.join(SOCS)}")
    path = Path(outdir) / CONTEXT_MODEL
    checked_htp_session(model, soc, config={"ep.context_enable": "1", "ep.context_file_path": str(path),
                                            "ep.context_embed_mode": "0"})  # 0: the binary in its own file
    if not path.is_file():
        raise QirError(f"qnn: the QNN EP wrote no context model for {soc}")
    binary = context_binary(path)
    built_for = binary_soc(binary)
    if built_for != soc:
        raise QirError(f"qnn: the context binary {binary.name} was built for {built_for or 'an unrecorded SoC'}, "
                       f"not {soc}")
    return [path, binary]


def read_model(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others
        raise QirError(f"{path}: not an ONNX model ({type(exc).__name__})") from None


def context_node(model: onnx.ModelProto):
    """The EPContext node of a context model, or None for an ordinary ONNX model."""
    return next((n for n in model.graph.node if n.op_type == "EPContext"), None)


def context_binary(path: Path) -> Path:
    """The binary file an EPContext model (embed mode 0) points to."""
    node = context_node(read_model(path))
    if node is None:
        raise QirError(f"{path}: not an EPContext model")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("embed_mode", 1) != 0:
        raise QirError(f"{path}: the context binary is embedded in the model; qir writes it as a separate file")
    binary = Path(path).parent / attrs["ep_cache_context"].decode()
    if not binary.is_file():
        raise QirError(f"{path}: its context binary {binary.name} is missing (keep the two files together)")
    return binary


def binary_soc(binary: Path) -> str | None:
    """The SoC a QNN context binary was built for, as QNN records it."""
    match = SOC_RECORD.search(Path(binary).read_bytes())
    return match.group(1).decode() if match else None
