"""The backend registry: targets register an emitter under the entry-point group `qir.backends`."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from qir.errors import QirError
from qir.ir import Module


class Backend:
    """Subclass, set `name` (the --target value) and `description`; implement `legalize` (rewrite a
    quantized module into the target dialect, raising QirError for anything the target cannot
    run, before any file is written) and `emit` (write the artifact into a folder)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # passes the target needs before calibration (e.g. decomposing ops it runs as several kernels,
    # so that each intermediate is calibrated); qir-compile inserts them in front of `calibrate`
    prepare_pipeline: ClassVar[str] = ""

    def legalize(self, module: Module) -> Module:
        raise NotImplementedError

    def emit(self, module: Module, outdir: Path) -> list[Path]:
        raise NotImplementedError


def backends() -> dict[str, Backend]:
    from qir.plugins import load_group
    return {name: cls() for name, cls in load_group("qir.backends").items()}


def get_backend(target: str) -> Backend:
    available = backends()
    if target not in available:
        raise QirError(f"unknown target '{target}'; available: {', '.join(sorted(available)) or 'none installed'}")
    return available[target]
