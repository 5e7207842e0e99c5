"""QuantSpec: how a real-valued tensor is stored as integers, carried on every quantized value."""
from __future__ import annotations

from dataclasses import dataclass

from qir.errors import QirError

Params = tuple  # inline scale / zero-point values, one per channel or block (one for per-tensor)


@dataclass(frozen=True)
class QuantSpec:
    """real = scale * (q - zero_point), q stored in `bits` bits.

    Scheme: per-tensor (axis None), per-channel (axis set), per-block (axis and block_size set:
    `block_size` consecutive elements along `axis` share one scale). `scale` and `zero_point` are
    inline tuples, or the name of a module constant when they are large.
    Printed as `!q<i8 s=0.0213 z=0>` or `!q<i4 axis=0 block=32 s=@w.scale z=0>`.
    """

    bits: int
    signed: bool
    scale: Params | str
    zero_point: Params | str = (0,)
    axis: int | None = None
    block_size: int | None = None

    def __post_init__(self):
        for field in ("scale", "zero_point"):
            value = getattr(self, field)
            if not isinstance(value, str):
                items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
                cast = float if field == "scale" else (lambda v: _integer(v, "zero point"))
                object.__setattr__(self, field, tuple(cast(v) for v in items))
        for field in ("axis", "block_size"):
            if getattr(self, field) is not None:
                object.__setattr__(self, field, _integer(getattr(self, field), field.replace("_size", " size")))
        if not 2 <= self.bits <= 32:
            raise QirError(f"quantization to {self.bits} bits is not supported (2..32)")
        if self.block_size is not None and self.axis is None:
            raise QirError("a per-block quant spec needs an axis")

    @property
    def storage(self) -> str:
        """The integer type name that holds one quantized element (i8, u8, i16, i4, ...)."""
        return f"{'i' if self.signed else 'u'}{self.bits}"

    @property
    def scheme(self) -> str:
        if self.block_size is not None:
            return "per-block"
        return "per-tensor" if self.axis is None else "per-channel"

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def __str__(self) -> str:
        parts = [self.storage]
        if self.axis is not None:
            parts.append(f"axis={self.axis}")
        if self.block_size is not None:
            parts.append(f"block={self.block_size}")
        parts.append(f"s={_params(self.scale)}")
        parts.append(f"z={_params(self.zero_point)}")
        return f"!q<{' '.join(parts)}>"


def _integer(value, what: str) -> int:
    if isinstance(value, (tuple, list, str)) or int(value) != value:
        raise QirError(f"the quant {what} must be an integer, got {value!r}")
    return int(value)


def _params(value) -> str:
    if isinstance(value, str):
        return f"@{value}"
    if len(value) == 1:
        return repr(value[0])
    return "[" + ",".join(repr(v) for v in value) + "]"
