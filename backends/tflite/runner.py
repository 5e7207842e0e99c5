"""Run a .tflite in ai-edge-litert: the reference kernels (the bit-exact target) or XNNPACK."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from qir.backend import Artifact
from qir.errors import QirError


def make_interpreter(model: bytes, reference: bool = True, num_threads: int = 2):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    resolver = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    return Interpreter(model_content=bytes(model), experimental_op_resolver_type=resolver,
                       num_threads=1 if reference else num_threads)


def run_tflite(model: bytes, inputs: dict[str, np.ndarray], signature: str | None = None,
               reference: bool = True, num_threads: int = 2) -> dict[str, np.ndarray]:
    """Feed `inputs` by signature input name; returns outputs by signature output name.
    reference=True runs BUILTIN_REF (deterministic reference kernels); False runs AUTO (XNNPACK)."""
    interpreter = make_interpreter(model, reference, num_threads)
    signatures = interpreter.get_signature_list()
    if signature is None:
        if len(signatures) != 1:
            raise QirError(f"the model has signatures {sorted(signatures)}; name one")
        signature = next(iter(signatures))
    if signature not in signatures:
        raise QirError(f"no signature '{signature}'; the model has {sorted(signatures)}")
    wanted = set(signatures[signature]["inputs"])
    if set(inputs) != wanted:
        raise QirError(f"signature '{signature}' takes inputs {sorted(wanted)}, got {sorted(inputs)}")
    runner = interpreter.get_signature_runner(signature)
    outputs = runner(**{k: np.asarray(v) for k, v in inputs.items()})
    return {k: np.array(v) for k, v in outputs.items()}


KERNELS = {"reference": "LiteRT reference kernels",
           "optimized": "LiteRT XNNPACK, 2 threads"}


class TFLiteArtifact(Artifact):
    """A .tflite file loaded once in ai-edge-litert, run by its only signature."""

    def __init__(self, path: Path, kernels: str = "optimized"):
        if kernels not in KERNELS:
            raise QirError(f"unknown kernels '{kernels}'; choose from {', '.join(KERNELS)}")
        try:
            interpreter = make_interpreter(path.read_bytes(), reference=kernels == "reference")
        except ValueError as exc:
            raise QirError(f"{path}: LiteRT cannot load it: {str(exc).splitlines()[0]}") from None
        signatures = interpreter.get_signature_list()
        if len(signatures) != 1:
            raise QirError(f"{path}: expected one signature, found {sorted(signatures) or 'none'}")
        self.runner = interpreter.get_signature_runner(next(iter(signatures)))
        details = self.runner.get_input_details()
        self.inputs = {name: (tuple(int(d) for d in info["shape"]), np.dtype(info["dtype"]).name)
                       for name, info in details.items()}
        self.description = f"{path.name} on {KERNELS[kernels]}"

    def run(self, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        if set(arrays) != set(self.inputs):
            raise QirError(f"the compiled model takes inputs {sorted(self.inputs)}, got {sorted(arrays)}")
        outputs = self.runner(**{k: np.asarray(v, self.inputs[k][1]) for k, v in arrays.items()})
        return {k: np.array(v) for k, v in outputs.items()}
