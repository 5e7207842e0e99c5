"""A compiled QNN model loaded for `qir-eval --compiled`. The QDQ model.onnx: `--kernels reference`
runs it on onnxruntime's CPU EP (the reference semantics, fast enough for the full model),
`--kernels optimized` on HTP (the x86 simulator here: 30-100x slower than the CPU, for small
graphs), proven to run every node there in fixed point. A context model (model_ctx.onnx + its
.bin) runs only on HTP, as the SoC its binary was built for."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import helper

from backends.qnn.context import binary_soc, context_binary, context_node, read_model
from backends.qnn.runner import (DEFAULT_SOC, check_placement, checked_htp_session, cpu_session, first_line,
                                 htp_session, run_session)
from qir.backend import Artifact, CycleProfile
from qir.errors import QirError

KERNELS = {"reference": "onnxruntime's CPU EP (the QDQ reference)",
           "optimized": "HTP (onnxruntime-qnn's simulator, {soc})"}


class QNNArtifact(Artifact):
    """The model's inputs read from the file; one onnxruntime session, created at the first run (a
    profile makes its own, so `qir-eval --profile` prepares the graph on HTP once)."""

    def __init__(self, path: Path, kernels: str = "optimized", soc: str = DEFAULT_SOC):
        if kernels not in KERNELS:
            raise QirError(f"unknown kernels '{kernels}'; choose from {', '.join(KERNELS)}")
        model = read_model(path)
        self.path, self.kernels, self.context = path, kernels, context_node(model) is not None
        if self.context:
            if kernels == "reference":
                raise QirError(f"{path} is a context binary for HTP (EPContext); only --kernels optimized runs it")
            soc = binary_soc(context_binary(path)) or soc
        self.soc, self.session = soc, None
        initializers = {t.name for t in model.graph.initializer}
        self.inputs = {}
        for i in model.graph.input:
            if i.name in initializers:
                continue
            dims = i.type.tensor_type.shape.dim
            if not all(d.HasField("dim_value") for d in dims):
                raise QirError(f"{path}: input '{i.name}' has a dynamic shape; HTP needs static shapes")
            dtype = helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
            self.inputs[i.name] = (tuple(d.dim_value for d in dims), dtype.name)
        self.description = f"{path.name} on {KERNELS[kernels].format(soc=soc)}"

    def open(self):
        if self.session is not None:
            return self.session
        if self.context:
            self.session = htp_session(str(self.path), self.soc)  # the model's folder resolves its .bin
            check_placement(self.session)
        elif self.kernels == "reference":
            try:
                self.session = cpu_session(str(self.path))
            except Exception as exc:  # onnxruntime raises its own exception types
                raise QirError(f"{self.path}: onnxruntime cannot load it on the CPU EP: {first_line(exc)}") from None
        else:
            self.session, _ = checked_htp_session(self.path.read_bytes(), self.soc)
        return self.session

    def run(self, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        return run_session(self.open(), self.feeds(arrays))

    def profile(self, **arrays: np.ndarray) -> CycleProfile:
        """Cycles per op on HTP (whichever kernels the model was loaded with: only HTP counts cycles)."""
        from backends.qnn.profile import profile_htp
        model = str(self.path) if self.context else self.path.read_bytes()
        return profile_htp(model, self.feeds(arrays), self.soc, check=not self.context)

    def feeds(self, arrays: dict) -> dict[str, np.ndarray]:
        if set(arrays) != set(self.inputs):
            raise QirError(f"the compiled model takes inputs {sorted(self.inputs)}, got {sorted(arrays)}")
        return {k: np.asarray(v, self.inputs[k][1]) for k, v in arrays.items()}
