"""Weights as lazy arrays: an array, a callable producing one, or an entry of a .safetensors file.

Nothing is read or converted until someone asks for it, so lowering a 1B-parameter model only
touches file headers."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Callable

import numpy as np

from qir.errors import QirError


class SafetensorsEntry:
    """One tensor inside a .safetensors file, read on demand."""

    __slots__ = ("path", "key")

    def __init__(self, path: Path, key: str):
        self.path, self.key = Path(path), key

    def __call__(self) -> np.ndarray:
        from safetensors import safe_open
        try:
            with safe_open(str(self.path), framework="numpy") as f:
                return f.get_tensor(self.key)
        except Exception as exc:  # corrupt or truncated files surface here
            raise QirError(f"cannot read tensor '{self.key}' from {self.path}: {exc}") from None


class WeightStore:
    """Maps constant names to lazy array sources."""

    def __init__(self):
        self._sources: dict[str, np.ndarray | Callable[[], np.ndarray]] = {}

    def set(self, name: str, source) -> None:
        self._sources[name] = source

    def has(self, name: str) -> bool:
        return name in self._sources

    def source(self, name: str):
        """The lazy source of @name as stored (array, callable or file entry), without reading it."""
        try:
            return self._sources[name]
        except KeyError:
            raise QirError(f"no data for constant @{name}") from None

    def get(self, name: str) -> np.ndarray:
        try:
            source = self._sources[name]
        except KeyError:
            raise QirError(f"no data for constant @{name}") from None
        return np.asarray(source() if callable(source) else source)

    def names(self) -> list[str]:
        return list(self._sources)

    def drop(self, name: str) -> None:
        self._sources.pop(name, None)

    @classmethod
    def from_safetensors(cls, path: Path) -> "WeightStore":
        """Lazy entries for every tensor in `path` (only the header is read here)."""
        from safetensors import safe_open
        store = cls()
        try:
            with safe_open(str(path), framework="numpy") as f:
                keys = list(f.keys())
        except FileNotFoundError:
            raise QirError(f"weights file not found: {path}") from None
        except Exception as exc:
            raise QirError(f"{path} is not a readable .safetensors file: {exc}") from None
        for key in keys:
            store.set(key, SafetensorsEntry(path, key))
        return store


# IR dtype -> safetensors dtype code
SAFETENSORS_DTYPES = {"f64": "F64", "f32": "F32", "f16": "F16", "bf16": "BF16", "f8e4m3": "F8_E4M3",
                      "f8e5m2": "F8_E5M2", "i64": "I64", "i32": "I32", "i16": "I16", "i8": "I8", "u32": "U32",
                      "u16": "U16", "u8": "U8", "bool": "BOOL"}


def save_weights(module, path: Path) -> int:
    """Write the data of every constant of `module` to `path` (atomically); returns bytes written.

    The safetensors library only writes from a dict of arrays held in memory at once; this writes
    the same format one tensor at a time, so peak memory is the largest tensor, not the model."""
    header, offset = {}, 0
    for name, decl in module.constants.items():
        if decl.type.dtype not in SAFETENSORS_DTYPES:
            raise QirError(f"constant @{name}: {decl.type.dtype} cannot be stored in .safetensors")
        nbytes = decl.type.size * decl.type.np_dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[decl.type.dtype], "shape": list(decl.type.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(encoded)) + encoded)
            for name, decl in module.constants.items():
                array = module.weights.get(name)
                if tuple(array.shape) != decl.type.shape:
                    raise QirError(f"constant @{name}: data has shape {tuple(array.shape)}, declared {decl.type}")
                f.write(np.ascontiguousarray(array.astype(decl.type.np_dtype, copy=False)).tobytes())
        os.chmod(tmp, 0o644)  # an ordinary readable file, like the other outputs
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path.stat().st_size
