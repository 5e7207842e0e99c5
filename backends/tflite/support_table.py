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


def nnapi_support_table() -> str:
    """What the NNAPI delegate takes of each tfl op (backends/tflite/nnapi.py): i16 never runs."""
    from backends.tflite.dialect.base import TflOp
    from backends.tflite.nnapi import DELEGATED
    rows = ["| qir op | TFLite builtin | delegate's highest version | i8 | i16 | f32 | notes |",
            "|---|---|---|---|---|---|---|"]
    for name in sorted(n for n, cls in OP_REGISTRY.items() if isinstance(cls, type) and issubclass(cls, TflOp)):
        cls = OP_REGISTRY[name]
        support = DELEGATED.get(cls.tflite_op)
        if support is None:
            rows.append(f"| `{name}` | {cls.tflite_op} | not mapped | no | no | no | runs on the CPU |")
            continue
        i8 = "yes" if "i8" in cls.dtypes and not support.float_only else "no"
        f32 = "yes" if "f32" in cls.float_dtypes else "no"
        note = support.note or ("float only in NNAPI" if support.float_only else "")
        rows.append(f"| `{name}` | {cls.tflite_op} | {support.max_version} | {i8} | no | {f32} | {note} |")
    return "\n".join(rows) + "\n"


def nnapi_rules_table() -> str:
    """The rules `--target nnapi` checks, with the reason each one has."""
    from backends.tflite.nnapi import RULES
    rows = ["| rule | what NNAPI needs |", "|---|---|"]
    for name, rule in RULES.items():
        rows.append(f"| `{name}` | {' '.join(rule.__doc__.split())} |")
    return "\n".join(rows) + "\n"
