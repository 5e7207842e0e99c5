"""Pass infrastructure: passes as frozen dataclasses, a registry by name, pipeline strings, and a
pass manager that verifies, prints, dumps and times."""
from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, TextIO

from qir.errors import QirError
from qir.ir import Module

PASS_REGISTRY: dict[str, type["Pass"]] = {}


@dataclass
class PassResult:
    modified: bool


@dataclass
class PassContext:
    """Shared state of one pipeline run: analyses and statistics passes leave for later passes."""

    data: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Pass:
    """Subclass as a frozen dataclass; set `name`; options are the dataclass fields (with defaults),
    so `my-pass{alpha=0.5}` in a pipeline string sets field `alpha`. Subclasses register by name."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs_calibration_inputs: ClassVar[bool] = False  # qir-compile then supplies ctx.data["calibration_inputs"]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            PASS_REGISTRY[cls.name] = cls

    def run(self, module: Module, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def requires(self, module: Module) -> None:
        """Raise QirError if `module` is not in a state this pass can handle."""

    def options_text(self) -> str:
        fields = dataclasses.fields(self)
        if not fields:
            return self.name
        return self.name + "{" + ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields) + "}"


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Register a pass class explicitly (subclasses with a `name` are registered already)."""
    if not cls.name:
        raise QirError(f"pass class {cls.__name__} has no name")
    PASS_REGISTRY[cls.name] = cls
    return cls


def load_builtin_passes() -> None:
    from qir.plugins import load_group
    load_group("qir.passes")


def before_calibration(passes: list[Pass], extra: list[Pass]) -> list[Pass]:
    """`passes` with `extra` inserted in front of the first `calibrate` (unchanged without one)."""
    names = [p.name for p in passes]
    if "calibrate" not in names:
        return passes
    at = names.index("calibrate")
    return passes[:at] + extra + passes[at:]


_STEP = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def parse_pipeline(text: str) -> list[Pass]:
    """`a,b{k=v,k2=v2}` -> pass instances. Unknown passes and options are errors listing valid ones."""
    load_builtin_passes()
    passes, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _STEP.match(text, pos)
        if not m or m.end() == pos:
            raise QirError(f"malformed pipeline at column {pos + 1}: {text[pos:]!r} "
                           f"(expected name or name{{key=value,...}})")
        passes.append(make_pass(m.group(1), m.group(2) or ""))
        pos = m.end()
    return passes


def make_pass(name: str, options: str) -> Pass:
    cls = PASS_REGISTRY.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, PASS_REGISTRY, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise QirError(f"unknown pass '{name}'{hint}; available passes: {', '.join(sorted(PASS_REGISTRY)) or 'none'}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for item in filter(None, (s.strip() for s in options.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            valid = ", ".join(fields) or "none"
            raise QirError(f"pass '{name}': unknown option '{key}' (options: {valid})")
        kwargs[key] = _convert(name, key, raw.strip(), fields[key])
    return cls(**kwargs)


def _convert(pass_name: str, key: str, raw: str, field: dataclasses.Field):
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    try:
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return raw
    except ValueError:
        raise QirError(f"pass '{pass_name}': option {key}={raw!r} is not a valid {kind}") from None


class PassManager:
    """Runs passes in order; verifies after each one (unless told not to), prints the IR before or
    after chosen passes ("all" for every one), dumps one numbered file per pass, and times them."""

    def __init__(self, passes: list[Pass], verify_each: bool = True, print_before: set[str] = frozenset(),
                 print_after: set[str] = frozenset(), dump_dir: Path | None = None, stream: TextIO | None = None):
        self.passes, self.verify_each = passes, verify_each
        self.print_before, self.print_after = set(print_before), set(print_after)
        for requested in self.print_before | self.print_after:
            if requested != "all" and requested not in {p.name for p in passes}:
                raise QirError(f"--print-ir-before/after names pass '{requested}', which is not in the pipeline "
                               f"({', '.join(p.name for p in passes) or 'empty'}); use a pass name or 'all'")
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.stream = stream or sys.stderr
        self.timings: list[tuple[str, float, bool]] = []  # (pass, seconds, modified)

    def _wants(self, chosen: set[str], name: str) -> bool:
        return "all" in chosen or name in chosen

    def run(self, module: Module, ctx: PassContext | None = None,
            after_pass: Callable[[Pass, Module], None] | None = None) -> Module:
        """`after_pass(pass, module)`, if given, runs after each pass has been verified."""
        from qir.printer import print_module
        from qir.verifier import verify
        ctx = ctx or PassContext()
        if self.dump_dir:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / "00-input.qir").write_text(print_module(module))
        for index, p in enumerate(self.passes, start=1):
            if self._wants(self.print_before, p.name):
                self.stream.write(f"// ----- IR before {p.name} -----\n{print_module(module)}")
            p.requires(module)
            start = time.perf_counter()
            result = p.run(module, ctx)
            seconds = time.perf_counter() - start
            self.timings.append((p.name, seconds, bool(result.modified)))
            if self.verify_each:
                try:
                    verify(module)
                except QirError as exc:
                    raise type(exc)(f"the IR is invalid after pass '{p.name}': {exc}") from None
            if self._wants(self.print_after, p.name):
                self.stream.write(f"// ----- IR after {p.name} -----\n{print_module(module)}")
            if self.dump_dir:
                (self.dump_dir / f"{index:02d}-{p.name}.qir").write_text(print_module(module))
            if after_pass is not None:
                after_pass(p, module)
        return module
