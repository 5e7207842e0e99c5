"""The `qnn` target: legalize a quantized module into the form HTP runs in fixed point and write
it as QDQ ONNX (model.onnx), which onnxruntime-qnn runs on HTP; with a SoC, also the offline
context binary for it (model_ctx.onnx + model_ctx_qnn.bin)."""
from __future__ import annotations

from pathlib import Path

from backends.qnn.runner import SOCS
from qir.backend import Backend
from qir.ir import Module


class QNNBackend(Backend):
    name = "qnn"
    description = "QDQ ONNX for Qualcomm HTP (onnxruntime-qnn)"
    artifact_suffixes = (".onnx",)
    socs = tuple(SOCS)

    def load_artifact(self, path: Path, kernels: str):
        from backends.qnn.artifact import QNNArtifact
        return QNNArtifact(path, kernels)

    def legalize(self, module: Module) -> Module:
        from backends.qnn.legalize import legalize_qnn
        return legalize_qnn(module)

    def emit(self, module: Module, outdir: Path) -> list[Path]:
        from backends.qnn.emit import emit_onnx
        model = emit_onnx(module)
        path = Path(outdir) / "model.onnx"
        path.write_bytes(model.SerializeToString())
        return [path]

    def emit_for_soc(self, module: Module, outdir: Path, soc: str) -> list[Path]:
        from backends.qnn.context import write_context
        return write_context((Path(outdir) / "model.onnx").read_bytes(), Path(outdir), soc)
