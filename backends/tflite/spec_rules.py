"""Quant specs TFLite's integer kernels cannot run, found in a quantized `q.` module before it is
legalized. The built-in recipes never produce them; a hand-written or imported .qir file can,
and without these checks some would be silently clipped or ignored (a 9-bit weight squeezed
into int8, a weight zero point dropped)."""
from __future__ import annotations

import numpy as np

from backends.tflite.violations import Violation, raise_violations, source_of, value_ref
from qir.ir import Module, Value
from qir.quant import QuantSpec

ACTIVATION_BITS = (8, 16)
WEIGHT_BITS = range(2, 9)  # any grid of up to 8 bits runs unchanged in the int8 kernel


# -- activations: one rule each; a reason when the spec breaks it --------------------------------

def activation_signed(spec: QuantSpec, module: Module) -> str | None:
    if not spec.signed:
        return f"TFLite quantized activations are signed (int8, int16); {spec.storage} is not"


def activation_bits(spec: QuantSpec, module: Module) -> str | None:
    if spec.bits not in ACTIVATION_BITS:
        return f"TFLite kernels take 8- or 16-bit activations; no kernel runs {spec.bits}-bit ones"


def activation_per_tensor(spec: QuantSpec, module: Module) -> str | None:
    if spec.scheme != "per-tensor" or isinstance(spec.scale, str):
        return f"the runtime applies only the first scale of a {spec.scheme} activation; it needs one inline scale"


def int16_zero_point(spec: QuantSpec, module: Module) -> str | None:
    if spec.bits == 16 and spec.zero_point != (0,):
        return f"int16 kernels require zero point 0 (symmetric), this has {spec.zero_point[0]}"


ACTIVATION_RULES = {"activation-signed": activation_signed, "activation-bits": activation_bits,
                    "activation-per-tensor": activation_per_tensor, "int16-zero-point": int16_zero_point}


# -- weights of q.linear (FULLY_CONNECTED) ---------------------------------------------------------

def weight_signed(spec: QuantSpec, module: Module) -> str | None:
    if not spec.signed:
        return f"FULLY_CONNECTED weights are int8; unsigned {spec.storage} values would wrap"


def weight_bits(spec: QuantSpec, module: Module) -> str | None:
    if spec.bits not in WEIGHT_BITS:
        return f"FULLY_CONNECTED weights are int8: a grid of 2 to 8 bits fits, {spec.bits} bits do not"


def weight_zero_point(spec: QuantSpec, module: Module) -> str | None:
    zero = module.weights.get(spec.zero_point) if isinstance(spec.zero_point, str) else spec.zero_point
    if np.any(np.asarray(zero) != 0):
        return "the runtime ignores a weight zero point: weights need zero point 0 (symmetric)"


def weight_per_channel(spec: QuantSpec, module: Module) -> str | None:
    if spec.scheme == "lpbq":
        return ("LPBQ scales (a float per output channel times an integer per block) have no TFLite form: "
                "FULLY_CONNECTED has one scale per output channel at most; quantize weights per channel "
                "(drop \"scheme\": \"lpbq\" and \"block\" from the recipe)")
    if spec.scheme == "per-block":
        return ("FULLY_CONNECTED has one scale per output channel at most, no per-block scales; "
                "quantize weights per channel (drop \"block\" from the recipe)")
    if spec.scheme == "per-channel" and spec.axis != 0:
        return f"FULLY_CONNECTED scales go along the output axis 0, not axis {spec.axis}"


WEIGHT_RULES = {"weight-signed": weight_signed, "weight-bits": weight_bits,
                "weight-zero-point": weight_zero_point, "weight-per-channel": weight_per_channel}


def check_quant_specs(module: Module) -> None:
    """Raise QirError listing every spec of the main function the tflite target cannot run."""
    func = module.main
    found: list[Violation] = []
    for arg in func.args:
        found += _broken(ACTIVATION_RULES, arg, module, "", f"argument {value_ref(arg)}")
    for op in func.ops:
        for result in op.results:
            found += _broken(ACTIVATION_RULES, result, module, source_of(op), f"{op.name} {value_ref(result)}")
        if op.name == "q.linear" and op.operands[1].is_constant:
            w = op.operands[1]
            found += _broken(WEIGHT_RULES, w, module, source_of(op),
                             f"weight {value_ref(w)} of {op.name} {value_ref(op.results[0])}")
    raise_violations("tflite: quant specs the integer kernels cannot run", found)


def _broken(rules, value: Value, module: Module, where: str, subject: str) -> list[Violation]:
    spec = value.quant
    if spec is None or not value.type.is_float:
        return []
    found = []
    for name, rule in rules.items():
        reason = rule(spec, module)
        if reason:
            found.append(Violation(where, f"{subject} {spec}", name, reason))
    return found
