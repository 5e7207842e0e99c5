"""The backend registry: targets register an emitter under the entry-point group `qir.backends`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

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

    # artifact files this target writes and can run back (qir-eval --compiled), e.g. (".tflite",)
    artifact_suffixes: ClassVar[tuple[str, ...]] = ()
    # chips the target can also compile ahead of time for (qir-compile --soc), e.g. ("SM8650",)
    socs: ClassVar[tuple[str, ...]] = ()

    def legalize(self, module: Module) -> Module:
        raise NotImplementedError

    def load_artifact(self, path: Path, kernels: str) -> "Artifact":
        raise NotImplementedError

    def emit(self, module: Module, outdir: Path) -> list[Path]:
        raise NotImplementedError

    def emit_for_soc(self, module: Module, outdir: Path, soc: str) -> list[Path]:
        """After `emit`: the artifact compiled ahead of time for one chip of `socs`, in the same folder."""
        raise NotImplementedError

    def check_soc(self, soc: str) -> None:
        if not self.socs:
            raise QirError(f"--target {self.name} compiles for no particular SoC; leave out --soc")
        if soc not in self.socs:
            raise QirError(f"unknown SoC '{soc}' for --target {self.name}; known: {', '.join(self.socs)}")


class Artifact:
    """A compiled model loaded in its runtime: `inputs` maps each input name to (shape, dtype);
    `run(**arrays)` returns the outputs by name. `description` says what runs it."""

    inputs: dict[str, tuple[tuple[int, ...], str]]
    description: str

    def run(self, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def profile(self, **arrays: np.ndarray) -> "CycleProfile":
        """Cycles per op of one run on these inputs (qir-eval --profile), where the runtime counts them."""
        raise QirError(f"{self.description}: this runtime reports no cycles per op")


@dataclass
class OpCycles:
    name: str  # the op as the runtime names it
    kind: str  # its type in the runtime ('' when the runtime does not say)
    cycles: float


@dataclass
class CycleProfile:
    """Cycles of one run of a compiled model, per op and in total, as the runtime's profiler counts
    them: of `runs` runs (a simulator's counts vary from run to run), the one with the median total."""
    ops: list[OpCycles]
    total_cycles: float
    runs: int
    source: str  # what counted them, e.g. "HTP simulator (SM8650), profiling_level=detailed"
    run_totals: list[float]  # every run's total, in order


def load_artifact(path: str | Path, kernels: str = "optimized") -> Artifact:
    """The compiled file at `path`, in the runtime of the backend that writes its kind of file."""
    path = Path(path)
    if not path.is_file():
        raise QirError(f"compiled model not found: {path}")
    for backend in backends().values():
        if path.suffix in backend.artifact_suffixes:
            return backend.load_artifact(path, kernels)
    known = sorted(s for b in backends().values() for s in b.artifact_suffixes)
    raise QirError(f"{path}: no backend runs '{path.suffix}' files (known: {', '.join(known) or 'none'})")


def backends() -> dict[str, Backend]:
    from qir.plugins import load_group
    return {name: cls() for name, cls in load_group("qir.backends").items()}


def get_backend(target: str) -> Backend:
    available = backends()
    if target not in available:
        raise QirError(f"unknown target '{target}'; available: {', '.join(sorted(available)) or 'none installed'}")
    return available[target]
