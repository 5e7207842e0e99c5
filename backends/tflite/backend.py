"""The `tflite` target: legalize a quantized module to the tfl dialect and write model.tflite."""
from __future__ import annotations

from pathlib import Path

from qir.backend import Backend
from qir.ir import Module


class TFLiteBackend(Backend):
    name = "tflite"
    description = "fully integer TFLite for LiteRT (CPU / XNNPACK)"
    prepare_pipeline = "decompose-norms"  # TFLite has no norm kernel: MUL, MEAN, ADD, RSQRT

    def legalize(self, module: Module) -> Module:
        from backends.tflite.legalize import legalize_tflite
        return legalize_tflite(module)

    def emit(self, module: Module, outdir: Path) -> list[Path]:
        from backends.tflite.emit import emit_tflite
        path = Path(outdir) / "model.tflite"
        path.write_bytes(emit_tflite(module))
        return [path]
