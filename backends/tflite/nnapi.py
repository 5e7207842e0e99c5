"""What Android's NNAPI takes from a .tflite file: the rules `--target nnapi` checks on the legalized
`tfl` module before anything is written.

They follow the TFLite NNAPI delegate (`NNAPIDelegateKernel::Validate` in
tensorflow/lite/delegates/nnapi/nnapi_delegate.cc: builtins it maps, op versions, types) and the
NNAPI operation definitions it maps to (NeuralNetworks.h, the validation in
packages/modules/NeuralNetworks: operand types, ranks, fixed output specs), for Android 13 and later
(NNAPI feature level 6, which BATCH_MATMUL needs). An op that breaks a rule is not delegated (it
falls back to the CPU) or makes the NNAPI model fail to compile: on a phone's NPU either defeats
the purpose, so qir refuses the module and names every op that breaks a rule."""
from __future__ import annotations

from dataclasses import dataclass

from backends.tflite.emit import _operator_version as operator_version
from backends.tflite.violations import Violation, raise_violations, source_of, value_ref
from qir.ir import Module, Op


@dataclass(frozen=True)
class Delegated:
    """A TFLite builtin the delegate maps to an NNAPI operation."""

    max_version: int  # the highest op version Validate accepts
    float_only: bool = False  # NNAPI defines the operation for float tensors only
    note: str = ""


DELEGATED = {
    "ADD": Delegated(2),
    "SUB": Delegated(3),
    "MUL": Delegated(2, note="version 3 (a requantization multiplier ≥ 1) only when an accelerator is named"),
    "DIV": Delegated(1, float_only=True),
    "MAXIMUM": Delegated(3),
    "RELU": Delegated(2),
    "FULLY_CONNECTED": Delegated(5, note="per-tensor weights; keep_num_dims (always written) needs API 30"),
    "BATCH_MATMUL": Delegated(2, note="batch axes must match (no broadcasting); feature level 6"),
    "SOFTMAX": Delegated(2, note="int8 output s = 1/256, z = −128"),
    "LOGISTIC": Delegated(2, note="int8 output s = 1/256, z = −128"),
    "TANH": Delegated(2, note="int8 output s = 1/128, z = 0"),
    "RESHAPE": Delegated(1),
    "TRANSPOSE": Delegated(2),
    "CONCATENATION": Delegated(2),
    "GATHER": Delegated(2),
    "SLICE": Delegated(2),
    "STRIDED_SLICE": Delegated(2),
    "MEAN": Delegated(2, note="input and output share one quant spec"),
    "QUANTIZE": Delegated(2),
    "DEQUANTIZE": Delegated(2),
    "CAST": Delegated(1),
    "NOT_EQUAL": Delegated(2, note="int32 input (a runtime mask) since API 29"),
    "RSQRT": Delegated(1, float_only=True),
    "SUM": Delegated(1, float_only=True),
}
MAX_RANK = 4
# int8 output specs NNAPI fixes (TENSOR_QUANT8_ASYMM_SIGNED): (scale, zero point)
FIXED_OUTPUT = {"SOFTMAX": (1 / 256, -128), "LOGISTIC": (1 / 256, -128), "TANH": (1 / 128, 0)}


# -- the rules: each takes a tfl op and returns why it breaks the rule, or None ------------------

def mapped(op: Op) -> str | None:
    """The delegate maps the builtin to an NNAPI operation."""
    if op.tflite_op not in DELEGATED:
        return f"the NNAPI delegate has no mapping for {op.tflite_op}; it would run on the CPU"
    return None


def op_version(op: Op) -> str | None:
    """The op version is one the delegate accepts."""
    support, version = DELEGATED.get(op.tflite_op), operator_version(op)
    if support is not None and version > support.max_version:
        return f"{op.tflite_op} version {version}; the NNAPI delegate takes versions up to {support.max_version}"
    return None


def float_only(op: Op) -> str | None:
    """Quantized tensors only where NNAPI defines a quantized operation."""
    support = DELEGATED.get(op.tflite_op)
    if support is not None and support.float_only and not op.is_float:
        return f"NNAPI defines {op.tflite_op} for float tensors only"
    return None


def rank_at_most_4(op: Op) -> str | None:
    """NNAPI operations take tensors of rank 4 at most."""
    high = [v for v in op.operands + op.results if v.type.rank > MAX_RANK]
    if high:
        return "NNAPI takes tensors of rank ≤ 4; " + ", ".join(f"{value_ref(v)} has rank {v.type.rank}" for v in high)
    return None


def no_int16(op: Op) -> str | None:
    """NNAPI quantized operations run 8-bit tensors: TENSOR_QUANT16_SYMM exists only for the
    16-bit LSTM's cell state, and the delegate treats int16 as unquantized."""
    if op.name == "tfl.fully_connected":
        return None  # fc_no_int16 names the delegate's own check
    wide = [v for v in op.operands + op.results if v.type.dtype == "i16"]
    if wide:
        return "NNAPI quantized ops take int8 tensors, not int16: " + ", ".join(value_ref(v) for v in wide)
    return None


def fc_no_int16(op: Op) -> str | None:
    """FULLY_CONNECTED runs int8: the delegate rejects an int16 output outright."""
    if op.name == "tfl.fully_connected" and any(v.type.dtype == "i16" for v in op.operands[:1] + op.results):
        return "the NNAPI delegate rejects FULLY_CONNECTED with int16 tensors (int8 input and output only)"
    return None


def fc_per_tensor_weights(op: Op) -> str | None:
    """NNAPI FULLY_CONNECTED takes weights of its input's type, one scale: per-channel weights
    (TENSOR_QUANT8_SYMM_PER_CHANNEL) exist only for the convolutions."""
    if op.name != "tfl.fully_connected" or op.is_float:
        return None
    w = op.operands[1]
    if w.quant is not None and w.quant.scheme != "per-tensor":
        return (f"weight {value_ref(w)} is {w.quant.scheme}; NNAPI FULLY_CONNECTED takes per-tensor weights "
                "only (quantize weights with \"scheme\": \"per-tensor\")")
    return None


def batch_matmul_same_batch(op: Op) -> str | None:
    """NNAPI BATCH_MATMUL multiplies matching batches: no broadcasting of batch axes."""
    if op.name != "tfl.batch_matmul":
        return None
    a, b = (v.type.shape for v in op.operands)
    if a[:-2] != b[:-2]:
        return f"batch axes {list(a[:-2])} and {list(b[:-2])} differ; NNAPI BATCH_MATMUL does not broadcast them"
    return None


def mean_keeps_spec(op: Op) -> str | None:
    """NNAPI MEAN on quantized tensors keeps the input's scale and zero point."""
    if op.name == "tfl.mean" and not op.is_float and op.operands[0].quant != op.results[0].quant:
        return "NNAPI MEAN needs the same quant spec on input and output"
    return None


def fixed_output_spec(op: Op) -> str | None:
    """NNAPI fixes the int8 output spec of SOFTMAX, LOGISTIC and TANH."""
    want = FIXED_OUTPUT.get(op.tflite_op)
    out = op.results[0]
    if want is None or out.type.dtype != "i8" or out.quant is None:
        return None
    scale, zero = float(out.quant.scale[0]), int(out.quant.zero_point[0])
    if abs(scale - want[0]) > 1e-9 * want[0] or zero != want[1]:
        return (f"NNAPI {op.tflite_op} outputs int8 at s = 1/{round(1 / want[0])}, z = {want[1]}; "
                f"{value_ref(out)} has s = {scale:.6g}, z = {zero}")
    return None


RULES = {
    "delegated": mapped,
    "float-only": float_only,
    "op-version": op_version,
    "rank-4": rank_at_most_4,
    "no-int16": no_int16,
    "fc-no-int16": fc_no_int16,
    "fc-per-tensor-weights": fc_per_tensor_weights,
    "batch-matmul-no-broadcast": batch_matmul_same_batch,
    "mean-same-spec": mean_keeps_spec,
    "fixed-output-spec": fixed_output_spec,
}


def nnapi_violations(module: Module) -> list[Violation]:
    """Every (op, rule) the main function breaks, in op order."""
    found = []
    for op in module.main.ops:
        for name, rule in RULES.items():
            reason = rule(op)
            if reason:
                found.append(Violation(source_of(op), f"{op.name} {value_ref(op.results[0])}", name, reason))
            if name in ("delegated", "float-only") and reason:
                break  # the other rules describe a mapping that does not exist for this op
    return found


def check_nnapi(module: Module) -> None:
    """Raise QirError listing every op of a legalized module NNAPI would not run."""
    raise_violations("nnapi: ops NNAPI cannot run", nnapi_violations(module))

