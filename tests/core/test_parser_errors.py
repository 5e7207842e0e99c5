"""Malformed IR text: qir.ParseError names the line and column of the offending token and says what
was expected, and the message shows the line with a caret under that column."""
from __future__ import annotations

import pytest

import qir

GOOD = """module @m
const @w : f32[3,4]
func @f(%x: f32[2,4]) -> f32[2,3] {
  %y = q.linear %x, @w : f32[2,3]
  %z = q.relu %y : f32[2,3]
  return %z
}
"""


def mutate(old: str, new: str) -> str:
    assert GOOD.count(old) == 1, old
    return GOOD.replace(old, new)


# (name, text, line, the text the column points at (its first occurrence on that line), message parts)
CASES = [
    ("unknown op with a suggestion", mutate("q.relu %y", "q.rellu %y"), 5, "q.rellu",
     ["unknown op 'q.rellu'", "did you mean q.relu"]),
    ("unknown op without a close match", mutate("q.relu %y", "zz.frobnicate %y"), 5, "zz.frobnicate",
     ["unknown op 'zz.frobnicate'"]),
    ("undefined value", mutate("q.relu %y", "q.relu %nope"), 5, "%nope", ["use of undefined value %nope"]),
    ("undeclared constant", mutate("%x, @w", "%x, @v"), 4, "@v", ["use of undeclared constant @v"]),
    ("redefined value", mutate("%z = q.relu", "%y = q.relu").replace("return %z", "return %y"), 5, "%y",
     ["%y is defined twice", "SSA"]),
    ("argument defined twice", mutate("(%x: f32[2,4])", "(%x: f32[2,4], %x: f32[2,4])"), 3, "%x: f32[2,4])",
     ["%x is defined twice"]),
    ("bad dtype", mutate("%z = q.relu %y : f32[2,3]", "%z = q.relu %y : f33[2,3]"), 5, "f33",
     ["unknown dtype 'f33'", "valid: f64, f32"]),
    ("non-static dimension ?", mutate("(%x: f32[2,4])", "(%x: f32[?,4])"), 3, "?",
     ["expected a static dimension (non-negative integer)", "got '?'"]),
    ("negative dimension", mutate("(%x: f32[2,4])", "(%x: f32[-1,4])"), 3, "-1",
     ["dimension -1 is not a non-negative integer", "static"]),
    ("fractional dimension", mutate("(%x: f32[2,4])", "(%x: f32[2.5,4])"), 3, "2.5",
     ["dimension 2.5 is not a non-negative integer"]),
    ("missing ':' and type, at the next line", mutate("%z = q.relu %y : f32[2,3]", "%z = q.relu %y"), 6, "return",
     ["expected ':' and the result type(s)", "got 'return'"]),
    ("missing ':' before a type", mutate("%z = q.relu %y : f32[2,3]", "%z = q.relu %y f32[2,3]"), 5, "f32",
     ["expected ':' and the result type(s)", "got 'f32'"]),
    ("unterminated attribute dict", mutate("%z = q.relu %y : f32[2,3]", "%z = q.softmax %y {axis = -1 : f32[2,3]"),
     5, ":", ["expected ',' or '}'", "got ':'"]),
    ("attribute dict cut by end of input", "module @m {kind = \"x\"", 1, None,
     ["expected ',' or '}'", "got end of input"]),
    ("attribute without a value", mutate("%z = q.relu %y : f32[2,3]", "%z = q.softmax %y {axis = } : f32[2,3]"),
     5, "}", ["expected a value (number, string, true/false or [list])"]),
    ("attribute given twice", mutate("%z = q.relu %y : f32[2,3]", "%z = q.softmax %y {axis = 1, axis = 1} : f32[2,3]"),
     5, "axis = 1}", ["attribute 'axis' is given twice"]),
    ("unknown attribute", mutate("%z = q.relu %y : f32[2,3]", "%z = q.softmax %y {axes = 1} : f32[2,3]"),
     5, "{", ["q.softmax: unknown attribute(s) axes", "valid: axis"]),
    ("missing required attribute", mutate("%z = q.relu %y : f32[2,3]", "%z = q.rms_norm %y, @w : f32[2,3]"),
     5, ":", ["q.rms_norm: missing required attribute 'eps'"]),
    ("bad quant storage", mutate("%z = q.relu %y : f32[2,3]", "%z = q.relu %y : f32[2,3] !q<x8 s=0.1>"), 5, "x8",
     ["quant storage must be like i8/u8/i16/i4", "'x8'"]),
    ("unknown quant field", mutate("%z = q.relu %y : f32[2,3]", "%z = q.relu %y : f32[2,3] !q<i8 scale=0.1>"),
     5, "scale", ["unexpected quant field 'scale'", "axis, block, s, k, z"]),
    ("quant field twice", mutate("%z = q.relu %y : f32[2,3]", "%z = q.relu %y : f32[2,3] !q<i8 s=0.1 s=0.2>"),
     5, "s=0.2", ["unexpected quant field 's'"]),
    ("quant spec without scale", mutate("%z = q.relu %y : f32[2,3]", "%z = q.relu %y : f32[2,3] !q<i8 z=0>"),
     5, "i8", ["quant spec needs a scale s=..."]),
    ("quant bits out of range", mutate("%z = q.relu %y : f32[2,3]", "%z = q.relu %y : f32[2,3] !q<i64 s=0.1>"),
     5, "i64", ["invalid quant spec", "64 bits is not supported"]),
    ("quant axis not an integer",
     mutate("%z = q.relu %y : f32[2,3]", "%z = q.relu %y : f32[2,3] !q<i8 axis=0.5 s=0.1>"),
     5, "i8", ["invalid quant spec", "axis must be an integer"]),
    ("quant zero point not an integer",
     mutate("%z = q.relu %y : f32[2,3]", "%z = q.relu %y : f32[2,3] !q<i8 s=0.1 z=0.5>"),
     5, "i8", ["invalid quant spec", "zero point must be an integer"]),
    ("quant spec not closed", mutate("%z = q.relu %y : f32[2,3]", "%z = q.relu %y : f32[2,3] !q<i8 s=0.1"),
     6, "return", ["unexpected quant field 'return'", "valid once each: axis, block, s, k, z"]),
    ("not a quant spec", mutate("%z = q.relu %y : f32[2,3]", "%z = q.relu %y : f32[2,3] !p<i8 s=0.1>"),
     5, "p<", ["expected 'q' in a quant spec !q<...>"]),
    ("wrong returned types", mutate("return %z", "return %x"), 6, "return",
     ["returned types (f32[2,4]) differ from the signature (f32[2,3])"]),
    ("returned quant differs", mutate("-> f32[2,3] {", "-> f32[2,3] !q<i8 s=0.5 z=0> {"), 6, "return",
     ["returned types (f32[2,3]) differ from the signature (f32[2,3] !q<i8 s=0.5 z=0>)"]),
    ("more results than types", mutate("%z = q.relu %y : f32[2,3]", "%z, %u = q.relu %y : f32[2,3]"), 5, "%z",
     ["2 result(s) but 1 type(s)"]),
    ("garbage character", mutate("%z = q.relu %y", "%z = q.relu %y;"), 5, ";", ["unexpected character ';'"]),
    ("garbage character at line start", mutate("  return %z", "# return %z"), 6, "#", ["unexpected character '#'"]),
    ("unterminated string", "module @m {kind = \"abc}\n", 1, "\"", ["unexpected character '\"'"]),
    ("empty input", "", 1, None, ["expected 'module' at the start of the IR", "got end of input"]),
    ("only a comment", "// nothing here\n", 2, None, ["expected 'module' at the start of the IR"]),
    ("no module name", "module {kind = 1}\n", 1, "{", ["expected a module name like @model"]),
    ("top-level junk", GOOD + "banana\n", 8, "banana", ["expected 'const' or 'func'", "got 'banana'"]),
    ("function without return", GOOD.replace("  return %z\n", ""), 6, "}",
     ["expected an op like '%y = q.add %a, %b : f32[4]' or 'return'", "got '}'"]),
    ("function not closed", GOOD.rstrip("}\n") + "\n", 7, None, ["expected '}' closing the function"]),
    ("missing arrow", mutate(") -> f32[2,3] {", ") f32[2,3] {"), 3, "f32[2,3] {", ["expected '->'"]),
    ("argument without type", mutate("(%x: f32[2,4])", "(%x)"), 3, ")", ["expected ':'"]),
    ("arguments without comma", mutate("(%x: f32[2,4])", "(%x: f32[2,4] %u: f32[1])"), 3, "%u",
     ["expected ',' or ')'"]),
    ("function defined twice", GOOD + GOOD[GOOD.index("func"):], 8, "@f", ["function @f is defined twice"]),
    ("constant declared twice", mutate("const @w : f32[3,4]", "const @w : f32[3,4]\nconst @w : f32[3,4]"), 3, "@w",
     ["constant @w is declared twice"]),
    ("inline value of the wrong size",
     mutate("const @w : f32[3,4]", "const @w : f32[3,4]\nconst @c : f32[2] = [1.0, 2.0, 3.0]"),
     3, "[1.0", ["the value of @c does not fit f32[2]"]),
    ("inline value not a number", mutate("const @w : f32[3,4]", "const @w : f32[3,4]\nconst @c : f32[] = \"x\""),
     3, "\"x\"", ["the value of @c does not fit f32[]"]),
    ("nan is not a literal", mutate("const @w : f32[3,4]", "const @w : f32[3,4]\nconst @c : f32[] = nan"),
     3, "nan", ["expected a value (number, string, true/false or [list])", "got 'nan'"]),
]


@pytest.mark.parametrize("name,text,line,at,parts", CASES, ids=[c[0] for c in CASES])
def test_parse_error(name, text, line, at, parts):
    with pytest.raises(qir.ParseError) as info:
        qir.parse(text, "model.qir")
    err = info.value
    lines = text.split("\n")
    if at is None:  # end of input: the column just after the last character
        column = len(lines[line - 1]) + 1
    else:
        column = lines[line - 1].index(at) + 1
    assert (err.line, err.column) == (line, column), str(err)
    message = str(err)
    assert message.startswith(f"model.qir:{line}:{column}: "), message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    if lines[line - 1]:  # the offending line is shown with a caret under the column
        shown = message.split("\n")
        assert shown[1] == "  " + lines[line - 1]
        assert shown[2] == "  " + " " * (column - 1) + "^"


def test_parse_error_is_a_qir_error_and_the_good_text_parses():
    assert issubclass(qir.ParseError, qir.QirError)
    module = qir.parse(GOOD)
    qir.verify(module)
    assert qir.print_module(module).replace("\n\n", "\n") == GOOD


def test_comments_and_free_whitespace_are_accepted():
    text = "// header\nmodule @m // the module\n  func @f( %x : f32[ 2 ] )->f32[2]{ // body\n" \
           "%y=q.relu %x:f32[2]\n return %y }\n"
    assert qir.print_module(qir.parse(text)) == ("module @m\n\nfunc @f(%x: f32[2]) -> f32[2] {\n"
                                                "  %y = q.relu %x : f32[2]\n  return %y\n}\n")


def test_parse_file_errors(tmp_path):
    with pytest.raises(qir.QirError, match="file not found"):
        qir.parse_file(tmp_path / "missing.qir")
    binary = tmp_path / "binary.qir"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(qir.QirError, match="not IR text"):
        qir.parse_file(binary)
    bad = tmp_path / "bad.qir"
    bad.write_text(GOOD.replace("q.relu %y", "q.rellu %y"))
    with pytest.raises(qir.ParseError) as info:
        qir.parse_file(bad)
    assert str(info.value).startswith(f"{bad}:5:8: unknown op 'q.rellu'")
