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

    LPBQ (low-power block quantization, `block_scale` set on a per-block spec): the scale has two
    levels. `scale` holds one float per output channel (axis 0) and `block_scale` names a constant
    of positive integers, one per block (the tensor's shape with `axis` divided by `block_size`);
    block b of channel c has the scale scale[c] · block_scale[c, b], computed in float32.
    Printed as `!q<i8 s=0.0213 z=0>`, `!q<i4 axis=1 block=32 s=@w.scale z=0>` or
    `!q<i4 axis=1 block=64 s=@w.scale k=@w.block_scale z=0>` (LPBQ).
    """

    bits: int
    signed: bool
    scale: Params | str
    zero_point: Params | str = (0,)
    axis: int | None = None
    block_size: int | None = None
    block_scale: str | None = None  # LPBQ: the constant of per-block integer multipliers

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
        if self.block_scale is not None:
            if not isinstance(self.block_scale, str):
                raise QirError(f"LPBQ block scales must name a constant, got {self.block_scale!r}")
            if self.block_size is None or self.axis == 0:
                raise QirError("an LPBQ quant spec (k=@...) is per-block along an axis other than the "
                               "output channel (axis 0): it needs axis >= 1 and block=")

    @property
    def storage(self) -> str:
        """The integer type name that holds one quantized element (i8, u8, i16, i4, ...)."""
        return f"{'i' if self.signed else 'u'}{self.bits}"

    @property
    def scheme(self) -> str:
        if self.block_scale is not None:
            return "lpbq"
        if self.block_size is not None:
            return "per-block"
        return "per-tensor" if self.axis is None else "per-channel"

    @property
    def constants(self) -> tuple[str, ...]:
        """Names of the module constants this spec reads its parameters from."""
        return tuple(p for p in (self.scale, self.zero_point, self.block_scale) if isinstance(p, str))

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
        if self.block_scale is not None:
            parts.append(f"k=@{self.block_scale}")
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
