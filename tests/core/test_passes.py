"""Pass infrastructure: pipeline strings, the pass manager (verify after each pass, print and dump
the IR, timings), and the built-in canonicalize and dce passes preserving what the model computes."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest

import qir
from qir import Pass, PassContext, PassManager, PassResult, parse_pipeline

from tests.core.helpers import assert_same_outputs, check_use_lists, clone, restored_pass_registry, run_all


@pytest.fixture
def test_passes():
    """Passes defined for these tests only; removed from the registry afterwards."""
    with restored_pass_registry():
        yield define_test_passes()


def define_test_passes() -> dict[str, type[Pass]]:
    @dataclass(frozen=True)
    class Options(Pass):
        name = "test-options"
        summary = "does nothing, has options of each type"
        count: int = 1
        alpha: float = 0.5
        flag: bool = False
        label: str = "x"

        def run(self, module, ctx):
            ctx.data.setdefault("seen", []).append(self)
            return PassResult(modified=False)

    @dataclass(frozen=True)
    class BreakTypes(Pass):
        """Deliberately wrong: changes a declared result type without changing the op."""
        name = "test-break"

        def run(self, module, ctx):
            op = module.main.ops[0]
            op.results[0].type = op.results[0].type.with_shape((7,))
            return PassResult(modified=True)

    @dataclass(frozen=True)
    class NeedsRelu(Pass):
        name = "test-needs-relu"

        def requires(self, module):
            if not any(op.name == "q.relu" for op in module.main.ops):
                raise qir.QirError("test-needs-relu: the module has no q.relu")

        def run(self, module, ctx):
            return PassResult(modified=False)

    return {"options": Options, "break": BreakTypes, "needs": NeedsRelu}


SMALL = """module @m
const @w : f32[3,4] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]

func @f(%x: f32[2,4]) -> f32[2,3] {
  %r = q.reshape %x {shape = [8]} : f32[8]
  %r2 = q.reshape %r {shape = [2, 4]} : f32[2,4]
  %t = q.transpose %r2 {perm = [0, 1]} : f32[2,4]
  %dead = q.relu %t : f32[2,4]
  %y = q.linear %t, @w : f32[2,3]
  return %y
}
"""


# -- pipeline strings ------------------------------------------------------------------------------------
def test_pipeline_builtin_passes():
    passes = parse_pipeline(" canonicalize , dce ")
    assert [p.name for p in passes] == ["canonicalize", "dce"]
    assert parse_pipeline("") == []
    assert [p.name for p in parse_pipeline("dce,dce")] == ["dce", "dce"]


def test_pipeline_options_are_typed_from_fields(test_passes):
    (p,) = parse_pipeline("test-options{count=3, alpha=0.25,flag=true,label=abc}")
    assert isinstance(p, test_passes["options"])
    assert (p.count, p.alpha, p.flag, p.label) == (3, 0.25, True, "abc")
    assert type(p.count) is int and type(p.alpha) is float and type(p.flag) is bool
    default, other = parse_pipeline("test-options,test-options{flag=0,alpha=1}")
    assert (default.count, default.alpha, default.flag, default.label) == (1, 0.5, False, "x")
    assert other.flag is False and other.alpha == 1.0 and type(other.alpha) is float
    assert other.options_text() == "test-options{count=1,alpha=1.0,flag=False,label=x}"
    assert parse_pipeline("dce")[0].options_text() == "dce"


def test_pass_instances_are_frozen(test_passes):
    (p,) = parse_pipeline("test-options{count=2}")
    with pytest.raises(Exception):
        p.count = 3


def test_unknown_pass_lists_the_available_ones():
    with pytest.raises(qir.QirError) as info:
        parse_pipeline("canonicalise,dce")
    message = str(info.value)
    assert "unknown pass 'canonicalise'" in message
    assert "did you mean 'canonicalize'" in message
    assert "available passes:" in message and "canonicalize" in message.split("available passes:")[1]
    assert "dce" in message.split("available passes:")[1]
    with pytest.raises(qir.QirError, match="unknown pass 'zzz'; available passes: .*canonicalize, .*dce"):
        parse_pipeline("dce,zzz")


def test_unknown_option_lists_the_valid_ones(test_passes):
    with pytest.raises(qir.QirError) as info:
        parse_pipeline("test-options{cnt=3}")
    assert "pass 'test-options': unknown option 'cnt' (options: count, alpha, flag, label)" in str(info.value)
    with pytest.raises(qir.QirError, match=r"pass 'dce': unknown option 'x' \(options: none\)"):
        parse_pipeline("dce{x=1}")
    with pytest.raises(qir.QirError, match="unknown option 'count'"):  # an option needs a value
        parse_pipeline("test-options{count}")


@pytest.mark.parametrize("option,kind", [("count=three", "int"), ("count=1.5", "int"), ("alpha=fast", "float"),
                                         ("flag=yes", "bool")])
def test_bad_option_value(test_passes, option, kind):
    key, raw = option.split("=")
    with pytest.raises(qir.QirError, match=f"pass 'test-options': option {key}='{raw}' is not a valid {kind}"):
        parse_pipeline(f"test-options{{{option}}}")


@pytest.mark.parametrize("text", ["dce{", "dce}x", "dce,,canonicalize", "{a=1}", "dce canonicalize"])
def test_malformed_pipeline(text):
    with pytest.raises(qir.QirError, match="malformed pipeline at column"):
        parse_pipeline(text)


# -- the pass manager --------------------------------------------------------------------------------------
def test_verify_after_each_pass_catches_a_broken_pass(test_passes):
    module = qir.parse(SMALL)
    manager = PassManager(parse_pipeline("dce,test-break,canonicalize"))
    with pytest.raises(qir.VerifyError) as info:
        manager.run(module)
    message = str(info.value)
    assert message.startswith("the IR is invalid after pass 'test-break': ")
    assert "q.reshape: declared result type(s) f32[7]" in message
    assert [name for name, _, _ in manager.timings] == ["dce", "test-break"]  # canonicalize never ran


def test_without_verification_the_broken_ir_goes_through(test_passes):
    module = qir.parse(SMALL)
    PassManager(parse_pipeline("test-break"), verify_each=False).run(module)
    with pytest.raises(qir.VerifyError):
        qir.verify(module)


def test_requires_is_checked_before_running(test_passes):
    module = qir.parse(SMALL)
    manager = PassManager(parse_pipeline("test-options,test-needs-relu"))
    manager.run(module)  # there is a relu
    PassManager(parse_pipeline("dce")).run(module)
    with pytest.raises(qir.QirError, match="the module has no q.relu"):
        PassManager(parse_pipeline("test-needs-relu")).run(module)


def test_context_is_shared_across_passes(test_passes):
    ctx = PassContext()
    passes = parse_pipeline("test-options{count=1},dce,test-options{count=2}")
    PassManager(passes).run(qir.parse(SMALL), ctx)
    assert [p.count for p in ctx.data["seen"]] == [1, 2]


def strip_headers(text: str) -> dict[str, str]:
    """'// ----- IR after X -----' blocks of a print stream -> {header: IR text}."""
    blocks, header = {}, None
    for line in text.splitlines(keepends=True):
        if line.startswith("// ----- "):
            header = line.strip("/- \n")
            assert header not in blocks
            blocks[header] = ""
        else:
            blocks[header] += line
    return blocks


def test_print_before_and_after_a_named_pass():
    module = qir.parse(SMALL)
    stream = io.StringIO()
    PassManager(parse_pipeline("canonicalize,dce"), print_before={"dce"}, print_after={"canonicalize"},
                stream=stream).run(module)
    blocks = strip_headers(stream.getvalue())
    assert list(blocks) == ["IR after canonicalize", "IR before dce"]
    assert blocks["IR after canonicalize"] == blocks["IR before dce"]
    assert "%dead = q.relu" in blocks["IR before dce"] and "q.transpose" not in blocks["IR before dce"]
    for text in blocks.values():
        assert qir.print_module(qir.parse(text)) == text


def test_print_all():
    module = qir.parse(SMALL)
    stream = io.StringIO()
    PassManager(parse_pipeline("canonicalize,dce"), print_before={"all"}, print_after={"all"},
                stream=stream).run(module)
    blocks = strip_headers(stream.getvalue())
    assert list(blocks) == ["IR before canonicalize", "IR after canonicalize", "IR before dce", "IR after dce"]
    assert blocks["IR before canonicalize"] == qir.print_module(qir.parse(SMALL))
    assert blocks["IR after dce"] == qir.print_module(module)


def test_print_for_a_pass_not_in_the_pipeline():
    with pytest.raises(qir.QirError, match="names pass 'rotate', which is not in the pipeline"):
        PassManager(parse_pipeline("dce"), print_after={"rotate"})


def test_dump_dir_writes_numbered_files_that_parse_back(tmp_path):
    module = qir.parse(SMALL)
    original = qir.print_module(module)
    manager = PassManager(parse_pipeline("canonicalize,dce,canonicalize"), dump_dir=tmp_path / "dump")
    manager.run(module)
    files = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert files == ["00-input.qir", "01-canonicalize.qir", "02-dce.qir", "03-canonicalize.qir"]
    texts = [(tmp_path / "dump" / name).read_text() for name in files]
    assert texts[0] == original
    assert texts[-1] == qir.print_module(module)
    assert "%dead" in texts[1] and "%dead" not in texts[2]
    for name in files:
        dumped = qir.parse_file(tmp_path / "dump" / name)
        qir.verify(dumped)
        assert qir.print_module(dumped) == (tmp_path / "dump" / name).read_text()


def test_timings_are_recorded_per_pass():
    module = qir.parse(SMALL)
    manager = PassManager(parse_pipeline("canonicalize,dce,dce"))
    manager.run(module)
    assert [(name, modified) for name, _, modified in manager.timings] == [
        ("canonicalize", True), ("dce", True), ("dce", False)]
    assert all(isinstance(seconds, float) for _, seconds, _ in manager.timings)


# -- canonicalize and dce keep the numbers -----------------------------------------------------------------
def canonicalize_input() -> qir.Module:
    rng = np.random.default_rng(7)
    module = qir.Module("m")
    b = qir.Builder.new_function(module, "main")
    x = b.arg("x", (2, 3, 4))
    t = b.transpose(x, perm=[0, 1, 2], name="same")              # identity: dropped
    r1 = b.reshape(t, shape=[6, 4])
    r2 = b.reshape(r1, shape=[24], name="flat")                  # reshape chain: merged
    r3 = b.reshape(r2, shape=[2, 3, 4], name="back")             # ... back to x's shape: dropped
    c = b.cast(r3, dtype="f32")                                  # same dtype: dropped
    w = b.const("w", rng.standard_normal((5, 4)).astype(np.float32))
    y = b.linear(c, w, name="y")
    p = b.transpose(y, perm=[1, 0, 2], name="p")                 # a real transpose: kept
    q = b.reshape(p, shape=[3, 10], name="q")
    unused = b.silu(q, name="unused")                            # dead
    b.reshape(unused, shape=[30], name="unused2")                # dead
    kept = b.reshape(x, shape=[24], name="kept")                 # quantized: its quant spec must stay
    kept.quant = qir.QuantSpec(8, True, 0.05, 0)
    again = b.reshape(kept, shape=[4, 6])                        # inner has a quant spec: not merged
    b.ret(q, again)
    d = qir.Builder.new_function(module, "second")               # a second function sharing @w
    z = d.arg("z", (3, 4))
    d.ret(d.linear(d.reshape(d.reshape(z, shape=[12]), shape=[3, 4]), d.const("w")))
    qir.verify(module)
    return module


def test_canonicalize_preserves_outputs():
    module = canonicalize_input()
    before = run_all(clone(module), seed=3)
    ops_before = {n: [op.name for op in f.ops] for n, f in module.functions.items()}
    manager = PassManager(parse_pipeline("canonicalize"))
    manager.run(module)
    check_use_lists(module)
    main = [op.name for op in module.main.ops]
    assert main.count("q.transpose") == 1 and "q.cast" not in main
    assert len(main) < len(ops_before["main"])
    assert [op.name for op in module.functions["second"].ops] == ["q.linear"]
    assert any(op.result.quant is not None for op in module.main.ops)  # the quantized reshape stays
    assert_same_outputs(before, run_all(module, seed=3))
    assert manager.timings[0][2] is True
    again = PassManager(parse_pipeline("canonicalize"))
    again.run(module)
    assert again.timings[0][2] is False  # a fixpoint


def test_dce_preserves_outputs_and_removes_only_dead_ops():
    module = canonicalize_input()
    before = run_all(clone(module), seed=4)
    PassManager(parse_pipeline("dce")).run(module)
    check_use_lists(module)
    names = [r.name for op in module.main.ops for r in op.results]
    assert "unused" not in names and "unused2" not in names
    assert "same" in names  # dead-code elimination does not simplify live ops
    assert_same_outputs(before, run_all(module, seed=4))


def test_canonicalize_then_dce_preserves_outputs():
    module = canonicalize_input()
    before = run_all(clone(module), seed=5)
    PassManager(parse_pipeline("canonicalize,dce")).run(module)
    check_use_lists(module)
    assert [op.name for op in module.main.ops] == ["q.linear", "q.transpose", "q.reshape", "q.reshape", "q.reshape"]
    assert_same_outputs(before, run_all(module, seed=5))


def test_canonicalize_keeps_a_returned_inner_reshape():
    text = """module @m

func @f(%x: f32[2,3]) -> (f32[6], f32[3,2]) {
  %a = q.reshape %x {shape = [6]} : f32[6]
  %b = q.reshape %a {shape = [3, 2]} : f32[3,2]
  return %a, %b
}
"""
    module = qir.parse(text)
    before = run_all(clone(module))
    PassManager(parse_pipeline("canonicalize")).run(module)
    assert qir.print_module(module) == text.replace("%b = q.reshape %a", "%b.m = q.reshape %x").replace(
        "return %a, %b", "return %a, %b.m")
    assert_same_outputs(before, run_all(module))


def test_canonicalize_replaces_a_returned_identity():
    text = """module @m

func @f(%x: f32[2,3]) -> (f32[2,3], f32[2,3]) {
  %a = q.transpose %x {perm = [0, 1]} : f32[2,3]
  %b = q.relu %a : f32[2,3]
  return %a, %b
}
"""
    module = qir.parse(text)
    PassManager(parse_pipeline("canonicalize")).run(module)
    assert qir.print_module(module) == """module @m

func @f(%x: f32[2,3]) -> (f32[2,3], f32[2,3]) {
  %b = q.relu %x : f32[2,3]
  return %x, %b
}
"""
