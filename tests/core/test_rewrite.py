"""RewritePattern + apply_patterns: user patterns reach a fixpoint, keep the numbers, and leave every
use-list consistent."""
from __future__ import annotations

import numpy as np
import pytest

import qir
from qir import OP_REGISTRY, Op, RewritePattern, Rewriter, apply_patterns, erase_dead_ops
from qir.ir import REQUIRED

from tests.core.helpers import assert_same_outputs, check_use_lists, clone, run_all


class FuseTransposes(RewritePattern):
    """transpose(transpose(x, p1), p2) -> transpose(x, p1[p2]); the identity permutation -> x."""

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        if op.name != "q.transpose":
            return False
        perm = tuple(op.attrs["perm"])
        if perm == tuple(range(len(perm))) and op.result.quant is None:
            rewriter.replace_op(op, [op.operands[0]])
            return True
        inner = op.operands[0].producer
        if inner is None or inner.name != "q.transpose" or inner.result.quant is not None:
            return False
        composed = [inner.attrs["perm"][p] for p in perm]
        fused = type(op)([inner.operands[0]], {"perm": composed}, result_names=[op.result.name])
        fused.results[0].quant = op.result.quant
        rewriter.insert_before(op, fused)
        rewriter.replace_op(op, fused.results)
        if not inner.result.uses and not any(v is inner.result for v in rewriter.func.outputs):
            rewriter.erase(inner)
        return True


class DropDoubleRelu(RewritePattern):
    """relu(relu(x)) -> relu(x)."""

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        inner = op.operands[0].producer if op.operands else None
        if op.name != "q.relu" or inner is None or inner.name != "q.relu":
            return False
        rewriter.replace_value(op.result, inner.result)
        rewriter.erase(op)
        return True


def transpose_chain(length: int, seed: int = 0) -> qir.Module:
    rng = np.random.default_rng(seed)
    module = qir.Module("m")
    b = qir.Builder.new_function(module, "f")
    x = b.arg("x", (2, 3, 4, 5))
    v = x
    for i in range(length):
        v = b.transpose(v, perm=list(rng.permutation(4)), name=f"t{i}")
    r = b.relu(b.relu(b.relu(v, name="r0"), name="r1"), name="r2")
    b.ret(r, b.transpose(x, perm=[0, 1, 2, 3], name="id"))
    qir.verify(module)
    return module


@pytest.mark.parametrize("length", [1, 2, 5, 12])
def test_patterns_reach_a_fixpoint_and_keep_the_numbers(length):
    module = transpose_chain(length, seed=length)
    before = run_all(clone(module))
    func = module.main
    assert apply_patterns(func, [FuseTransposes(), DropDoubleRelu()]) is True
    check_use_lists(module)
    qir.verify(module)
    names = [op.name for op in func.ops]
    assert names.count("q.transpose") <= 1 and names.count("q.relu") == 1
    assert func.outputs[1] is func.args[0]  # the identity transpose of x became x itself
    assert apply_patterns(func, [FuseTransposes(), DropDoubleRelu()]) is False  # nothing left to do
    assert_same_outputs(before, run_all(module))


def test_pattern_order_does_not_change_the_result():
    a, b = transpose_chain(6, seed=9), transpose_chain(6, seed=9)
    apply_patterns(a.main, [FuseTransposes(), DropDoubleRelu()])
    apply_patterns(b.main, [DropDoubleRelu(), FuseTransposes()])
    assert qir.print_module(a) == qir.print_module(b)


def test_no_match_means_no_change():
    module = qir.parse("""module @m

func @f(%x: f32[4]) -> f32[4] {
  %y = q.silu %x : f32[4]
  return %y
}
""")
    text = qir.print_module(module)
    assert apply_patterns(module.main, [FuseTransposes(), DropDoubleRelu()]) is False
    assert qir.print_module(module) == text


def test_max_steps_bounds_a_pattern_that_never_settles():
    class Flip(RewritePattern):
        """Rewrites x + y into y + x forever."""

        def match_and_rewrite(self, op, rewriter):
            if op.name != "q.add":
                return False
            swapped = type(op)([op.operands[1], op.operands[0]], result_names=[op.result.name])
            rewriter.insert_before(op, swapped)
            rewriter.replace_op(op, swapped.results)
            return True

    module = qir.parse("""module @m

func @f(%x: f32[4], %y: f32[4]) -> f32[4] {
  %s = q.add %x, %y : f32[4]
  return %s
}
""")
    assert apply_patterns(module.main, [Flip()], max_steps=7) is True
    check_use_lists(module)
    qir.verify(module)
    assert len(module.main.ops) == 1 and module.main.ops[0].operands[0].name == "y"  # 7 flips


def test_use_lists_through_rewriter_operations():
    module = qir.parse("""module @m
const @w : f32[4,4]

func @f(%x: f32[4]) -> (f32[4], f32[4]) {
  %a = q.relu %x : f32[4]
  %b = q.add %a, %a : f32[4]
  %c = q.linear %b, @w : f32[4]
  %d = q.mul %c, %a : f32[4]
  return %d, %a
}
""")
    func = module.main
    a, b, c, d = (op.result for op in func.ops)
    assert a.uses == [(b.producer, 0), (b.producer, 1), (d.producer, 1)]
    worklist = []
    rewriter = Rewriter(func, worklist)
    s = rewriter.insert_before(a.producer, OP_REGISTRY["q.sigmoid"]([func.args[0]], result_names=["s"]))
    rewriter.replace_value(a, s.result)  # every use and the returned value move to %s
    check_use_lists(module)
    assert a.uses == [] and func.outputs[1] is s.result
    assert s.result.uses == [(b.producer, 0), (b.producer, 1), (d.producer, 1)]
    rewriter.erase(a.producer)
    assert rewriter.changed and b.producer in worklist and d.producer in worklist
    check_use_lists(module)
    d.producer.set_operand(0, func.args[0])
    assert c.uses == [] and (d.producer, 0) in func.args[0].uses
    assert erase_dead_ops(func) == 2  # %c, then %b which only %c used
    check_use_lists(module)
    qir.verify(module)
    assert [op.name for op in func.ops] == ["q.sigmoid", "q.mul"]
    assert func.used_constants() == []  # @w lost its only use


def test_erasing_a_used_op_is_refused():
    module = qir.parse("""module @m

func @f(%x: f32[4]) -> f32[4] {
  %a = q.relu %x : f32[4]
  %b = q.relu %a : f32[4]
  return %b
}
""")
    with pytest.raises(qir.QirError, match="cannot erase q.relu: its result is still used"):
        module.main.erase(module.main.ops[0])
    with pytest.raises(qir.QirError, match="cannot erase q.relu: its result is still used"):
        module.main.erase(module.main.ops[1])  # returned
    check_use_lists(module)


def test_a_returned_constant_is_used_and_runs():
    module = qir.parse("""module @m
const @c : f32[2] = [1.5, -2.0]

func @f(%x: f32[2]) -> (f32[2], f32[2]) {
  %y = q.add %x, @c : f32[2]
  return %y, @c
}

func @g(%x: f32[2]) -> f32[2] {
  return @c
}
""")
    qir.verify(module)
    out = qir.Interpreter(module)
    np.testing.assert_array_equal(out.run(np.ones(2), function="g")[0], [1.5, -2.0])
    np.testing.assert_array_equal(out.run(np.ones(2), function="f")[1], [1.5, -2.0])


# -- an op with two results, defined outside the core -------------------------------------------------------
@pytest.fixture
def split_op():
    class Split2(Op):
        """Splits the last axis into two equal halves."""
        name = "test.split2"
        attributes = {"tag": REQUIRED}

        def infer_types(self):
            x = self.operands[0].type
            half = x.with_shape(x.shape[:-1] + (x.shape[-1] // 2,))
            return [half, half]

        def jax(self, x):
            h = x.shape[-1] // 2
            return x[..., :h], x[..., h:]

    yield Split2
    del OP_REGISTRY["test.split2"]


def test_user_op_with_two_results(split_op):
    module = qir.Module("m")
    b = qir.Builder.new_function(module, "f")
    x = b.arg("x", (3, 4))
    op = b.append("test.split2", x, tag="a")
    lo, hi = op.results
    assert (lo.name, hi.name) == ("0.0", "0.1")
    b.ret(b.sub(hi, lo, name="d"), lo)
    qir.verify(module)
    text = qir.print_module(module)
    assert '  %0.0, %0.1 = test.split2 %x {tag = "a"} : f32[3,2], f32[3,2]\n' in text
    parsed = qir.parse(text)
    qir.verify(parsed)
    assert qir.print_module(parsed) == text
    x_in = np.arange(12, dtype=np.float32).reshape(3, 4)
    d, first = qir.interpret(parsed, x_in)
    np.testing.assert_array_equal(d, x_in[:, 2:] - x_in[:, :2])
    np.testing.assert_array_equal(first, x_in[:, :2])

    class SwapHalves(RewritePattern):
        def match_and_rewrite(self, op, rewriter):
            if op.name != "test.split2" or op.attrs["tag"] != "a":
                return False
            new = type(op)(op.operands, {"tag": "b"}, result_names=["lo", "hi"])
            rewriter.insert_before(op, new)
            rewriter.replace_op(op, new.results)
            return True

    assert apply_patterns(parsed.main, [SwapHalves()])
    check_use_lists(parsed)
    qir.verify(parsed)
    assert "%lo, %hi = test.split2 %x {tag = \"b\"}" in qir.print_module(parsed)
    assert parsed.main.outputs[1].name == "lo"
    with pytest.raises(qir.QirError, match="test.split2 has 2 results, not one"):
        parsed.main.ops[0].result
