"""Parser for the IR text format (see docs/ir-text-format.md). Errors name line:column and what
was expected."""
from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import numpy as np

from qir.errors import ParseError, QirError
from qir.ir import OP_REGISTRY, Function, Module, Value
from qir.printer import format_type
from qir.quant import QuantSpec
from qir.types import DTYPES, TensorType

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n]+|//[^\n]*)
  | (?P<value>%[A-Za-z0-9_.$-]+)
  | (?P<symbol>@[A-Za-z0-9_.$-]+)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>[-+]?(?:(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|inf)(?![A-Za-z_]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<arrow>->)
  | (?P<punct>[=,:(){}\[\]<>!?])
""", re.VERBOSE)


class Token:
    __slots__ = ("kind", "text", "line", "col")

    def __init__(self, kind, text, line, col):
        self.kind, self.text, self.line, self.col = kind, text, line, col

    def describe(self) -> str:
        return "end of input" if self.kind == "eof" else repr(self.text)


def _tokenize(text: str, source: str) -> list[Token]:
    tokens, pos, line, line_start = [], 0, 1, 0
    lines = text.split("\n")
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        col = pos - line_start + 1
        if not m:
            raise ParseError(f"unexpected character {text[pos]!r}", line, col, source, lines[line - 1])
        kind = m.lastgroup
        if kind != "ws":
            tokens.append(Token(kind, m.group(), line, col))
        newlines = m.group().count("\n")
        if newlines:
            line += newlines
            line_start = m.start() + m.group().rfind("\n") + 1
        pos = m.end()
    tokens.append(Token("eof", "", line, pos - line_start + 1))
    return tokens


class Parser:
    def __init__(self, text: str, source: str = "<text>", base_dir: Path | None = None):
        self.source, self.base_dir = source, base_dir
        self.lines = text.split("\n")
        self.tokens = _tokenize(text, source)
        self.i = 0

    # -- token helpers ---------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def error(self, message: str, tok: Token | None = None) -> ParseError:
        tok = tok or self.tok
        source_line = self.lines[tok.line - 1] if tok.line - 1 < len(self.lines) else ""
        return ParseError(message, tok.line, tok.col, self.source, source_line)

    def expect(self, text: str | None = None, kind: str | None = None, what: str | None = None) -> Token:
        tok = self.tok
        if (text is not None and tok.text != text) or (kind is not None and tok.kind != kind):
            raise self.error(f"expected {what or repr(text)}, got {tok.describe()}")
        self.i += 1
        return tok

    def accept(self, text: str) -> bool:
        if self.tok.text == text and self.tok.kind in ("punct", "arrow", "ident"):
            self.i += 1
            return True
        return False

    # -- grammar ---------------------------------------------------------------------
    def parse_module(self) -> Module:
        self.expect("module", what="'module' at the start of the IR")
        name = self.expect(kind="symbol", what="a module name like @model").text[1:]
        attrs = self.parse_attr_dict() if self.tok.text == "{" else {}
        module = Module(name, attrs)
        weights_file = attrs.get("weights")
        inline: dict[str, np.ndarray] = {}
        while self.tok.kind != "eof":
            if self.tok.text == "const":
                self.parse_const(module, inline)
            elif self.tok.text == "func":
                self.parse_func(module)
            else:
                raise self.error(f"expected 'const' or 'func', got {self.tok.describe()}")
        if weights_file is not None:
            self.attach_weights(module, weights_file)
        for name, data in inline.items():
            module.weights.set(name, data)
        return module

    def attach_weights(self, module: Module, weights_file) -> None:
        from qir.weights import WeightStore
        if not isinstance(weights_file, str):
            raise QirError(f"{self.source}: module attribute 'weights' must be a file name string")
        path = Path(weights_file)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        if not path.exists():
            return  # the text stays usable without its data; interpreting reports what is missing
        store = WeightStore.from_safetensors(path)
        for name in module.constants:
            if store.has(name):
                module.weights.set(name, store.source(name))

    def parse_const(self, module: Module, inline: dict) -> None:
        self.expect("const")
        tok = self.expect(kind="symbol", what="a constant name like @weight")
        self.expect(":")
        type, quant = self.parse_type_quant()
        if tok.text[1:] in module.constants:
            raise self.error(f"constant {tok.text} is declared twice", tok)
        module.add_constant(tok.text[1:], type=type, quant=quant)
        if self.accept("="):
            start = self.tok
            values = self.parse_literal()
            try:
                data = np.asarray(values, dtype=type.np_dtype).reshape(type.shape)
            except (ValueError, TypeError, OverflowError):
                raise self.error(f"the value of {tok.text} does not fit {type}", start) from None
            inline[tok.text[1:]] = data

    def parse_func(self, module: Module) -> None:
        self.expect("func")
        tok = self.expect(kind="symbol", what="a function name like @main")
        if tok.text[1:] in module.functions:
            raise self.error(f"function {tok.text} is defined twice", tok)
        func = module.add_function(tok.text[1:])
        scope: dict[str, Value] = {}
        self.expect("(")
        while self.tok.text != ")":
            if func.args:
                self.expect(",", what="',' or ')'")
            arg = self.expect(kind="value", what="an argument like %x")
            self.expect(":")
            type, quant = self.parse_type_quant()
            self.define(scope, arg, func.add_arg(arg.text[1:], type, quant))
        self.expect(")")
        self.expect("->")
        if self.accept("("):
            out_types = [self.parse_type_quant()]
            while self.accept(","):
                out_types.append(self.parse_type_quant())
            self.expect(")")
        else:
            out_types = [self.parse_type_quant()]
        self.expect("{")
        while self.tok.text != "return":
            if self.tok.kind != "value":
                raise self.error(f"expected an op like '%y = q.add %a, %b : f32[4]' or 'return', got {self.tok.describe()}")
            self.parse_op(func, scope)
        ret = self.expect("return")
        outputs = [self.use(func, scope)]
        while self.accept(","):
            outputs.append(self.use(func, scope))
        if [(v.type, v.quant) for v in outputs] != out_types:
            raise self.error(f"returned types ({', '.join(format_type(v.type, v.quant) for v in outputs)}) differ "
                             f"from the signature ({', '.join(format_type(t, q) for t, q in out_types)})", ret)
        func.outputs = outputs
        self.expect("}", what="'}' closing the function")

    def define(self, scope, tok: Token, value: Value) -> None:
        if tok.text[1:] in scope:
            raise self.error(f"{tok.text} is defined twice (values are SSA)", tok)
        if value.name != tok.text[1:]:
            raise self.error(f"{tok.text} clashes with an earlier value name", tok)
        scope[tok.text[1:]] = value

    def use(self, func: Function, scope) -> Value:
        tok = self.tok
        if tok.kind == "value":
            self.i += 1
            if tok.text[1:] not in scope:
                raise self.error(f"use of undefined value {tok.text}", tok)
            return scope[tok.text[1:]]
        if tok.kind == "symbol":
            self.i += 1
            if tok.text[1:] not in func.module.constants:
                raise self.error(f"use of undeclared constant {tok.text}", tok)
            return func.constant(tok.text[1:])
        raise self.error(f"expected a value (%name) or constant (@name), got {tok.describe()}")

    def parse_op(self, func: Function, scope) -> None:
        start = self.tok
        result_toks = [self.expect(kind="value")]
        while self.accept(","):
            result_toks.append(self.expect(kind="value", what="a result name like %y"))
        self.expect("=")
        name_tok = self.expect(kind="ident", what="an op name like q.add")
        cls = OP_REGISTRY.get(name_tok.text)
        if cls is None:
            close = difflib.get_close_matches(name_tok.text, OP_REGISTRY, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise self.error(f"unknown op '{name_tok.text}'{hint}", name_tok)
        operands = []
        if self.tok.kind in ("value", "symbol"):
            operands.append(self.use(func, scope))
            while self.accept(","):
                operands.append(self.use(func, scope))
        attrs_tok = self.tok
        attrs = self.parse_attr_dict() if self.tok.text == "{" else {}
        self.expect(":", what="':' and the result type(s)")
        types = [self.parse_type_quant()]
        while self.accept(","):
            types.append(self.parse_type_quant())
        if len(types) != len(result_toks):
            raise self.error(f"{len(result_toks)} result(s) but {len(types)} type(s)", start)
        try:
            op = cls(operands, attrs, result_types=[t for t, _ in types],
                     result_names=[t.text[1:] for t in result_toks])
        except QirError as exc:
            raise self.error(str(exc), attrs_tok) from None
        for result, (_, quant) in zip(op.results, types):
            result.quant = quant
        op.location = (self.source, start.line, start.col)
        func.append(op)
        for tok, result in zip(result_toks, op.results):
            self.define(scope, tok, result)

    def parse_type_quant(self) -> tuple[TensorType, QuantSpec | None]:
        type = self.parse_type()
        quant = self.parse_quant() if self.tok.text == "!" else None
        return type, quant

    def parse_type(self) -> TensorType:
        tok = self.expect(kind="ident", what="a type like f32[1,16]")
        if tok.text not in DTYPES:
            raise self.error(f"unknown dtype '{tok.text}'; valid: {', '.join(DTYPES)}", tok)
        self.expect("[", what="'[' and the shape")
        dims = []
        while self.tok.text != "]":
            if dims:
                self.expect(",", what="',' or ']'")
            dim = self.expect(kind="number", what="a static dimension (non-negative integer)")
            if not re.fullmatch(r"\d+", dim.text):
                raise self.error(f"dimension {dim.text} is not a non-negative integer (shapes are static)", dim)
            dims.append(int(dim.text))
        self.expect("]")
        return TensorType(tuple(dims), tok.text)

    def parse_quant(self) -> QuantSpec:
        self.expect("!")
        self.expect("q", what="'q' in a quant spec !q<...>")
        self.expect("<")
        storage = self.expect(kind="ident", what="a storage type like i8")
        m = re.fullmatch(r"([iu])(\d+)", storage.text)
        if not m:
            raise self.error(f"quant storage must be like i8/u8/i16/i4, got '{storage.text}'", storage)
        fields = {}
        while self.tok.text != ">":
            key = self.expect(kind="ident", what="axis=, block=, s=, k= or z=")
            if key.text not in ("axis", "block", "s", "k", "z") or key.text in fields:
                raise self.error(f"unexpected quant field '{key.text}' (valid once each: axis, block, s, k, z)", key)
            self.expect("=")
            if self.tok.kind == "symbol":
                fields[key.text] = self.expect(kind="symbol").text[1:]
            elif key.text == "k":
                raise self.error("quant field k= names the constant of LPBQ block scales (k=@name)", key)
            else:
                fields[key.text] = self.parse_literal()
        self.expect(">")
        if "s" not in fields:
            raise self.error("quant spec needs a scale s=...", storage)
        try:
            return QuantSpec(bits=int(m.group(2)), signed=m.group(1) == "i", scale=fields["s"],
                             zero_point=fields.get("z", (0,)), axis=fields.get("axis"),
                             block_size=fields.get("block"), block_scale=fields.get("k"))
        except (QirError, ValueError, TypeError) as exc:
            raise self.error(f"invalid quant spec: {exc}", storage) from None

    def parse_attr_dict(self) -> dict:
        self.expect("{")
        attrs = {}
        while self.tok.text != "}":
            if attrs:
                self.expect(",", what="',' or '}'")
            key = self.expect(kind="ident", what="an attribute name")
            if key.text in attrs:
                raise self.error(f"attribute '{key.text}' is given twice", key)
            self.expect("=")
            attrs[key.text] = self.parse_literal()
        self.expect("}")
        return attrs

    def parse_literal(self):
        tok = self.tok
        if tok.kind == "number":
            self.i += 1
            if re.fullmatch(r"[-+]?\d+", tok.text):
                return int(tok.text)
            return float(tok.text)
        if tok.kind == "string":
            self.i += 1
            return json.loads(tok.text)
        if tok.kind == "ident" and tok.text in ("true", "false"):
            self.i += 1
            return tok.text == "true"
        if tok.text == "[":
            self.i += 1
            items = []
            while self.tok.text != "]":
                if items:
                    self.expect(",", what="',' or ']'")
                items.append(self.parse_literal())
            self.expect("]")
            return tuple(items)
        raise self.error(f"expected a value (number, string, true/false or [list]), got {tok.describe()}")


def parse(text: str, source: str = "<text>", base_dir: Path | None = None) -> Module:
    """Parse IR text into a Module (not yet verified: call qir.verify)."""
    parser = Parser(text, source, base_dir)
    module = parser.parse_module()
    return module


def parse_file(path) -> Module:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise QirError(f"file not found: {path}") from None
    except UnicodeDecodeError:
        raise QirError(f"{path} is not IR text (not UTF-8)") from None
    return parse(text, str(path), path.parent)
