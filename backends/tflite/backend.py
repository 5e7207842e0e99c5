"""The `tflite` target: legalize a module to the tfl dialect (integer when it is quantized, float32
when not) and write model.tflite."""
from __future__ import annotations

from pathlib import Path

from qir.backend import Backend
from qir.ir import Module


class TFLiteBackend(Backend):
    name = "tflite"
    description = "TFLite for LiteRT (CPU / XNNPACK): fully integer, or float32 for an unquantized module"
    prepare_pipeline = "decompose-norms"  # TFLite has no norm kernel: MUL, MEAN, ADD, RSQRT
    artifact_suffixes = (".tflite",)

    def load_artifact(self, path: Path, kernels: str):
        from backends.tflite.runner import TFLiteArtifact
        return TFLiteArtifact(path, kernels)

    def legalize(self, module: Module) -> Module:
        if not module.is_quantized():  # e.g. --recipe float: the float32 graph of the same model
            from backends.tflite.legalize_float import legalize_tflite_float
            return legalize_tflite_float(module)
        from backends.tflite.legalize import legalize_tflite
        return legalize_tflite(module)

    def emit(self, module: Module, outdir: Path) -> list[Path]:
        from backends.tflite.emit import emit_tflite
        path = Path(outdir) / "model.tflite"
        path.write_bytes(emit_tflite(module))
        return [path]


class NNAPIBackend(TFLiteBackend):
    """The tflite target's legalization and file, refused unless NNAPI can run every op."""

    name = "nnapi"
    description = "TFLite for Android's NNAPI delegate: every op checked against what NNAPI runs"

    def legalize(self, module: Module) -> Module:
        from backends.tflite.nnapi import check_nnapi
        legal = super().legalize(module)
        check_nnapi(legal)  # before any file is written
        return legal
