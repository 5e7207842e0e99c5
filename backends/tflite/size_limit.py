"""A .tflite file is one flatbuffer, addressed with 32-bit offsets: it cannot reach 2 GiB. The file's
size is bounded from the tensor types alone, so a model too large for it is refused before any
weight is read or any byte is built."""
from __future__ import annotations

import flatbuffers

from backends.tflite.violations import value_ref
from qir.errors import QirError
from qir.ir import Function, Value
from qir.summary import human_bytes

FLATBUFFER_LIMIT = flatbuffers.builder.Builder.MAX_BUFFER_SIZE  # 2 GiB

# What a tensor, an op and the model cost around the data, generously (the flatbuffer's tables,
# vtables, vectors and padding measure a fraction of this): the bound must never be below the file.
BYTES_PER_TENSOR = 256
BYTES_PER_SCALE = 12  # a float32 scale and an int64 zero point
BYTES_PER_OP = 128
BYTES_FIXED = 4096
DATA_PADDING = 32  # the alignment of a buffer's data and its length prefix


def tensors_of(func: Function) -> list[Value]:
    """Every tensor the file holds for `func`, once each."""
    seen: dict[int, Value] = {}
    for value in list(func.args) + [v for op in func.ops for v in op.operands + op.results]:
        seen.setdefault(id(value), value)
    return list(seen.values())


def _scale_count(value: Value) -> int:
    """Scales the file may store for a tensor: one per channel, or one per element of a bias."""
    spec, shape = value.quant, value.type.shape
    if spec is not None and spec.axis is not None:
        return shape[spec.axis]
    return shape[0] if len(shape) == 1 else 1


def _tensor_bound(value: Value) -> int:
    data = value.type.nbytes + DATA_PADDING if value.is_constant else 0
    return (data + BYTES_PER_TENSOR + len(value.name.encode()) + 4 * value.type.rank
            + BYTES_PER_SCALE * _scale_count(value))


def _op_bound(op) -> int:
    """The op, and up to three small int32 tensors holding its attributes (shape, perm, begin...)."""
    rank, name = max(v.type.rank for v in op.operands + op.results), op.results[0].name.encode()
    return BYTES_PER_OP + 3 * (BYTES_PER_TENSOR + DATA_PADDING + len(name) + 8 + 8 * rank)


def file_size_bound(func: Function) -> int:
    """An upper bound of the .tflite bytes of `func`."""
    return BYTES_FIXED + sum(_op_bound(op) for op in func.ops) + sum(_tensor_bound(v) for v in tensors_of(func))


def check_file_size(func: Function) -> None:
    """Raise QirError naming the size, the limit and the largest tensors when `func` cannot be one
    flatbuffer."""
    total = file_size_bound(func)
    if total <= FLATBUFFER_LIMIT:
        return
    largest = sorted((v for v in tensors_of(func) if v.is_constant), key=lambda v: -v.type.nbytes)[:3]
    names = ", ".join(f"{value_ref(v)} {human_bytes(v.type.nbytes)}" for v in largest)
    raise QirError(f"@{func.name}: the .tflite file would take up to {human_bytes(total)} ({total} bytes), over "
                   f"the flatbuffer limit of {human_bytes(FLATBUFFER_LIMIT)} ({FLATBUFFER_LIMIT} bytes, 32-bit "
                   f"offsets); largest tensors: {names}. Keep fewer blocks (qir-compile --layers N) or split the "
                   f"model (4-bit weights take int8 storage here)")
