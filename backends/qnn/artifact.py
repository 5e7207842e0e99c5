"""A compiled QNN model loaded for `qir-eval --compiled`. The QDQ model.onnx: `--kernels reference`
runs it on onnxruntime's CPU EP (the reference semantics, fast enough for the full model),
`--kernels optimized` on HTP (the x86 simulator here: 30-100x slower than the CPU, for small
graphs), proven to run every node there in fixed point. A context model (model_ctx.onnx + its
.bin) runs only on HTP, as the SoC its binary was built for."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from backends.qnn.context import binary_soc, context_binary, context_node
from backends.qnn.runner import (DEFAULT_SOC, check_placement, checked_htp_session, cpu_session, first_line,
                                 htp_session, run_session)
from qir.backend import Artifact, CycleProfile
from qir.errors import QirError

KERNELS = {"reference": "onnxruntime's CPU EP (the QDQ reference)",
           "optimized": "HTP (onnxruntime-qnn's simulator, {soc})"}
ONNX_TYPES = {"tensor(float)": "float32", "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool"}


class QNNArtifact(Artifact):
    """One onnxruntime session, created once and run per input."""

    def __init__(self, path: Path, kernels: str = "optimized", soc: str = DEFAULT_SOC):
        if kernels not in KERNELS:
            raise QirError(f"unknown kernels '{kernels}'; choose from {', '.join(KERNELS)}")
        self.path, self.context = path, context_node(path) is not None
        if self.context:
            if kernels == "reference":
                raise QirError(f"{path} is a context binary for HTP (EPContext); only --kernels optimized runs it")
            soc = binary_soc(context_binary(path)) or soc
            self.session = htp_session(str(path), soc)  # the binary's folder resolves its .bin
            check_placement(self.session)
        elif kernels == "reference":
            try:
                self.session = cpu_session(str(path))
            except Exception as exc:  # onnxruntime raises its own exception types
                raise QirError(f"{path}: onnxruntime cannot load it on the CPU EP: {first_line(exc)}") from None
        else:
            self.session, _ = checked_htp_session(path.read_bytes(), soc)
        for i in self.session.get_inputs():
            if not all(isinstance(d, int) for d in i.shape):
                raise QirError(f"{path}: input '{i.name}' has a dynamic shape {i.shape}; HTP needs static shapes")
        self.inputs = {i.name: (tuple(i.shape), ONNX_TYPES.get(i.type, i.type)) for i in self.session.get_inputs()}
        self.soc = soc
        self.description = f"{path.name} on {KERNELS[kernels].format(soc=soc)}"

    def run(self, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        return run_session(self.session, self.feeds(arrays))

    def profile(self, **arrays: np.ndarray) -> CycleProfile:
        """Cycles per op on HTP (whichever kernels the model was loaded with: only HTP counts cycles)."""
        from backends.qnn.profile import profile_htp
        model = str(self.path) if self.context else self.path.read_bytes()
        return profile_htp(model, self.feeds(arrays), self.soc, check=not self.context)

    def feeds(self, arrays: dict) -> dict[str, np.ndarray]:
        if set(arrays) != set(self.inputs):
            raise QirError(f"the compiled model takes inputs {sorted(self.inputs)}, got {sorted(arrays)}")
        return {k: np.asarray(v, self.inputs[k][1]) for k, v in arrays.items()}
