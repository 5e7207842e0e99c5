"""Static tensor types. Dtypes come from numpy and ml_dtypes and print by short names."""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from qir.errors import QirError

# short name used in IR text -> numpy dtype
DTYPES: dict[str, np.dtype] = {
    "f64": np.dtype(np.float64),
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "f8e4m3": np.dtype(ml_dtypes.float8_e4m3fn),
    "f8e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "i64": np.dtype(np.int64),
    "i32": np.dtype(np.int32),
    "i16": np.dtype(np.int16),
    "i8": np.dtype(np.int8),
    "i4": np.dtype(ml_dtypes.int4),
    "u32": np.dtype(np.uint32),
    "u16": np.dtype(np.uint16),
    "u8": np.dtype(np.uint8),
    "u4": np.dtype(ml_dtypes.uint4),
    "bool": np.dtype(np.bool_),
}
_NAMES = {dt: name for name, dt in DTYPES.items()}
FLOAT_DTYPES = frozenset({"f64", "f32", "f16", "bf16", "f8e4m3", "f8e5m2"})


def dtype_name(dtype) -> str:
    """The IR name of a numpy/ml_dtypes dtype (or an IR name, returned as is)."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        return _NAMES[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise QirError(f"unsupported dtype {dtype!r}; supported: {', '.join(DTYPES)}") from None


@dataclass(frozen=True)
class TensorType:
    """A statically shaped tensor type, printed as `f32[1,256,576]` (a scalar is `f32[]`)."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        if any(d < 0 for d in self.shape):
            raise QirError(f"negative dimension in shape {self.shape}; qir needs static shapes")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def nbytes(self) -> int:
        bits = 4 if self.dtype in ("i4", "u4") else self.np_dtype.itemsize * 8
        return (self.size * bits + 7) // 8

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype) -> "TensorType":
        return TensorType(self.shape, dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"
