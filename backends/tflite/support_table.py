"""The markdown table of supported tfl ops × activation dtypes (quantized i8 / i16, float f32), generated from the op classes
(docs/tflite-backend.md embeds its output; a test keeps the two in step)."""
from __future__ import annotations

from qir.ir import OP_REGISTRY


def support_table() -> str:
    from backends.tflite.dialect.base import TflOp
    rows = ["| qir op | TFLite builtin | i8 | i16 | f32 | requantization rounding |", "|---|---|---|---|---|---|"]
    for name in sorted(n for n, cls in OP_REGISTRY.items() if isinstance(cls, type) and issubclass(cls, TflOp)):
        cls = OP_REGISTRY[name]
        marks = ["yes" if d in cls.dtypes else "no" for d in ("i8", "i16")]
        marks.append("yes" if "f32" in cls.float_dtypes else "no")
        rounding = getattr(cls, "rounding_by_dtype", None)
        if not cls.dtypes:
            text = "none (float only)"
        elif getattr(cls, "support_note", ""):
            text = cls.support_note
        elif rounding:
            text = ", ".join(f"{d}: {rounding[d]}" for d in ("i8", "i16") if d in rounding)
        else:
            text = "none (integers move unchanged)" if not cls.params else "see below"
        rows.append(f"| `{name}` | {cls.tflite_op} | {' | '.join(marks)} | {text} |")
    return "\n".join(rows) + "\n"
