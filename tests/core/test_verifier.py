"""Verifier failures: each raises qir.VerifyError naming the op and reprinting a window of IR with
'>' on the failing line."""
from __future__ import annotations

import pytest

import qir

BASE = """module @m
const @w : f32[3,4]
const @g : f32[3] = [1.0, 1.0, 1.0]
func @f(%x: f32[2,4], %b: f32[3]) -> f32[2,3] {
  %y = q.linear %x, @w : f32[2,3]
  %n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3]
  %z = q.add %n, %b : f32[2,3]
  return %z
}
"""


def text_with(old: str, new: str) -> str:
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new).replace("func @f", "const @g.scale : f32[2] = [0.5, 0.5]\nfunc @f")


def verify_error(module: qir.Module) -> str:
    with pytest.raises(qir.VerifyError) as info:
        qir.verify(module)
    return str(info.value)


def marked_line(message: str) -> str:
    """The window line marked with '>' (exactly one)."""
    marked = [line for line in message.split("\n") if line.startswith(">")]
    assert len(marked) == 1, message
    return marked[0]


# (name, old, new, the failing op line as printed, message parts)
TEXT_CASES = [
    ("wrong declared result type", "%y = q.linear %x, @w : f32[2,3]", "%y = q.linear %x, @w : f32[2,5]",
     "%y = q.linear %x, @w : f32[2,5]", ["q.linear: declared result type(s) f32[2,5] but the operands give f32[2,3]"]),
    ("wrong declared dtype", "{eps = 1e-05} : f32[2,3]", "{eps = 1e-05} : f16[2,3]",
     "%n = q.rms_norm %y, @g {eps = 1e-05} : f16[2,3]", ["q.rms_norm: declared result type(s) f16[2,3]"]),
    ("too few operands", "%z = q.add %n, %b : f32[2,3]", "%z = q.add %n : f32[2,3]",
     "%z = q.add %n : f32[2,3]", ["q.add takes 2 operand(s), got 1"]),
    ("too many operands", "%y = q.linear %x, @w : f32[2,3]", "%y = q.linear %x, @w, %b, %b : f32[2,3]",
     "%y = q.linear %x, @w, %b, %b : f32[2,3]", ["q.linear takes 2 to 3 operand(s), got 4"]),
    ("bad attribute value", "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3]",
     "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3]\n  %s = q.softmax %n {axis = 2} : f32[2,3]",
     "%s = q.softmax %n {axis = 2} : f32[2,3]", ["q.softmax: axis 2 is out of range for rank 2"]),
    ("bad string attribute", "%z = q.add %n, %b : f32[2,3]",
     "%z0 = q.add %n, %b : f32[2,3]\n  %z = q.gelu %z0 {approximate = \"fast\"} : f32[2,3]",
     "%z = q.gelu %z0 {approximate = \"fast\"} : f32[2,3]", ["q.gelu: approximate must be \"none\" or \"tanh\""]),
    ("attribute of the wrong kind", "%z = q.add %n, %b : f32[2,3]",
     "%z0 = q.add %n, %b : f32[2,3]\n  %z = q.transpose %z0 {perm = 1} : f32[2,3]",
     "%z = q.transpose %z0 {perm = 1} : f32[2,3]", ["q.transpose: invalid attribute or operand"]),
    ("broadcast failure", "%b: f32[3]", "%b: f32[4]", "%z = q.add %n, %b : f32[2,3]",
     ["q.add: shapes (2, 3) and (4,) do not broadcast"]),
    ("weight of the wrong shape", "const @g : f32[3] = [1.0, 1.0, 1.0]", "const @g : f32[2] = [1.0, 1.0]",
     "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3]", ["q.rms_norm: weight f32[2] must be [3]"]),
    ("quant axis out of range", "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3]",
     "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3] !q<i8 axis=2 s=[0.1,0.1,0.1] z=0>",
     "%n = q.rms_norm", ["q.rms_norm result %n: quant axis 2 is out of range for f32[2,3]"]),
    ("wrong number of per-channel scales", "%y = q.linear %x, @w : f32[2,3]",
     "%y = q.linear %x, @w : f32[2,3] !q<i8 axis=1 s=[0.1,0.2] z=0>",
     "%y = q.linear", ["q.linear result %y: per-channel quant needs 3 scale value(s), has 2"]),
    ("wrong number of per-channel zero points", "%y = q.linear %x, @w : f32[2,3]",
     "%y = q.linear %x, @w : f32[2,3] !q<u8 axis=1 s=[0.1,0.2,0.3] z=[1,2]>",
     "%y = q.linear", ["per-channel quant needs 3 zero_point value(s), has 2"]),
    ("wrong number of per-block scales", "%y = q.linear %x, @w : f32[2,3]",
     "%y = q.linear %x, @w : f32[2,3] !q<i4 axis=0 block=2 s=[0.1,0.2] z=0>",
     "%y = q.linear", ["per-block quant needs 3 scale value(s), has 2"]),
    ("block does not divide the axis", "%y = q.linear %x, @w : f32[2,3]",
     "%y = q.linear %x, @w : f32[2,3] !q<i4 axis=1 block=2 s=[0.1,0.2,0.3] z=0>",
     "%y = q.linear", ["block size 2 does not divide dimension 1 of f32[2,3]"]),
    ("scale constant of the wrong size", "%y = q.linear %x, @w : f32[2,3]",
     "%y = q.linear %x, @w : f32[2,3] !q<i8 axis=1 s=@g.scale z=0>",
     "%y = q.linear", ["q.linear result %y: per-channel quant needs 3 scale value(s), has 2"]),
    ("zero point above the range", "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3]",
     "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3] !q<i8 s=0.1 z=128>",
     "%n = q.rms_norm", ["q.rms_norm result %n: zero point outside [-128, 127] of i8"]),
    ("zero point below the range", "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3]",
     "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3] !q<u4 s=0.1 z=-1>",
     "%n = q.rms_norm", ["zero point outside [0, 15] of u4"]),
    ("zero scale", "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3]",
     "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3] !q<i8 s=0.0 z=0>",
     "%n = q.rms_norm", ["q.rms_norm result %n: quant scales must be finite and positive"]),
    ("negative scale", "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3]",
     "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3] !q<i8 axis=1 s=[0.1,-0.1,0.1] z=0>",
     "%n = q.rms_norm", ["quant scales must be finite and positive"]),
    ("infinite scale", "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3]",
     "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3] !q<i8 s=inf z=0>",
     "%n = q.rms_norm", ["quant scales must be finite and positive"]),
    ("scale in an undeclared constant", "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3]",
     "%n = q.rms_norm %y, @g {eps = 1e-05} : f32[2,3] !q<i8 s=@nope z=0>",
     "%n = q.rms_norm", ["quant scale refers to undeclared constant @nope"]),
]


@pytest.mark.parametrize("name,old,new,failing,parts", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_verify_error_from_text(name, old, new, failing, parts):
    module = qir.parse(text_with(old, new), "model.qir")  # parses: these are not syntax errors
    message = verify_error(module)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    # the failing op is named at its place in the source, and marked in a window of printed IR
    line_no = next(i for i, line in enumerate(text_with(old, new).split("\n"), 1) if failing in line)
    assert message.startswith(f"model.qir:{line_no}:3: "), message
    assert "in the printed IR (line " in message
    assert failing in marked_line(message)
    window = [line for line in message.split("\n") if " | " in line]
    assert 3 <= len(window) <= 7  # the failing line with up to 3 lines of context on each side


def test_window_lines_are_the_printed_ir():
    module = qir.parse(text_with("%y = q.linear %x, @w : f32[2,3]", "%y = q.linear %x, @w : f32[2,5]"))
    message = verify_error(module)
    printed = qir.print_module(module).split("\n")
    for line in message.split("\n"):
        if " | " in line:
            number, _, content = line[1:].partition(" | ")
            assert printed[int(number) - 1] == content
    at = int(marked_line(message)[1:].partition(" | ")[0])
    assert f"(line {at})" in message


def good_module() -> qir.Module:
    module = qir.parse(BASE)
    qir.verify(module)
    return module


def test_use_before_def_after_a_bad_manual_rewrite():
    module = good_module()
    ops = module.main.ops
    ops[0], ops[1] = ops[1], ops[0]  # the norm now comes before the linear that defines its input
    message = verify_error(module)
    assert "q.rms_norm: operand 0 (%y) is used before it is defined" in message
    assert "%n = q.rms_norm %y" in marked_line(message)


def test_operand_from_an_erased_op():
    module = good_module()
    func = module.main
    linear = func.ops[0]
    func.ops.remove(linear)  # removed by hand, without replacing its uses
    message = verify_error(module)
    assert "q.rms_norm: operand 0 (%y) is used before it is defined" in message
    assert "q.rms_norm" in marked_line(message)


def test_duplicate_value_names():
    module = good_module()
    module.main.ops[1].result.name = "y"  # rename %n to %y by hand
    message = verify_error(module)
    assert "value name %y is defined twice in @f" in message
    assert "%y = q.rms_norm" in marked_line(message)


def test_duplicate_argument_names():
    module = good_module()
    module.main.args[1].name = "x"
    message = verify_error(module)
    assert "@f: value name %x is defined twice" in message


def test_use_list_out_of_date():
    module = good_module()
    add = module.main.ops[2]
    add.operands[1] = add.operands[0]  # assigned directly, bypassing set_operand
    message = verify_error(module)
    assert "q.add: use-list of operand 1 is out of date" in message
    assert "q.add" in marked_line(message)


def test_operand_count_after_manual_edit():
    module = good_module()
    add = module.main.ops[2]
    add.drop_operands()
    message = verify_error(module)
    assert "q.add takes 2 operand(s), got 0" in message
    assert "%z = q.add : f32[2,3]" in marked_line(message)


def test_argument_quant_spec():
    module = qir.parse(text_with("%b: f32[3]", "%b: f32[3] !q<i8 axis=1 s=[0.1] z=0>"))
    message = verify_error(module)
    assert "@f: argument %b: quant axis 1 is out of range for f32[3]" in message


def test_constant_quant_spec():
    module = qir.parse(text_with("const @w : f32[3,4]", "const @w : i8[3,4] !q<i8 axis=0 s=[0.1,0.2] z=0>"))
    message = verify_error(module)
    assert "constant @w: per-channel quant needs 3 scale value(s), has 2" in message


def test_returning_an_undefined_value():
    module = good_module()
    stray = qir.Value("stray", qir.TensorType((2, 3), "f32"))
    module.main.outputs = [stray]
    assert "function @f returns %stray, which it does not define" in verify_error(module)


def test_function_returning_nothing_and_module_without_function():
    module = good_module()
    module.main.outputs = []
    assert "function @f returns nothing" in verify_error(module)
    assert "module @empty has no function" in verify_error(qir.Module("empty"))


def test_errors_in_the_second_function_point_there():
    text = BASE + "\nfunc @g(%a: f32[4]) -> f32[5] {\n  %r = q.relu %a : f32[5]\n  return %r\n}\n"
    message = verify_error(qir.parse(text, "two.qir"))
    assert message.startswith("two.qir:12:3: q.relu: declared result type(s) f32[5]")
    assert "%r = q.relu %a : f32[5]" in marked_line(message)


def test_builder_made_ops_have_a_window_but_no_source_location():
    module = qir.Module("m")
    b = qir.Builder.new_function(module, "f")
    x = b.arg("x", (4,))
    y = b.relu(x, name="y")
    b.ret(y)
    y.quant = qir.QuantSpec(8, True, 0.5, 300)
    message = verify_error(module)
    assert message.startswith("q.relu result %y: zero point outside [-128, 127] of i8")
    assert "%y = q.relu %x : f32[4] !q<i8 s=0.5 z=300>" in marked_line(message)
