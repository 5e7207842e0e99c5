"""canonicalize: local simplifications of data movement (reshape/transpose chains, no-op casts)."""
from dataclasses import dataclass

from qir import Module, Op, Pass, PassContext, PassResult, RewritePattern, Rewriter, apply_patterns


class DropIdentity(RewritePattern):
    """reshape to the same shape, transpose by the identity, cast to the same dtype: use the input."""

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        if op.name not in ("q.reshape", "q.transpose", "q.cast") or op.result.quant != op.operands[0].quant:
            return False
        if op.result.type != op.operands[0].type:
            return False
        if op.name == "q.transpose" and tuple(op.attrs["perm"]) != tuple(range(op.result.type.rank)):
            return False
        rewriter.replace_op(op, [op.operands[0]])
        return True


class MergeReshapes(RewritePattern):
    """reshape(reshape(x)) -> reshape(x)."""

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        inner = op.operands[0].producer
        if op.name != "q.reshape" or inner is None or inner.name != "q.reshape" or inner.result.quant is not None:
            return False
        merged = type(op)([inner.operands[0]], {"shape": op.attrs["shape"]}, result_names=[op.result.name + ".m"])
        merged.results[0].quant = op.result.quant
        rewriter.insert_before(op, merged)
        rewriter.replace_op(op, merged.results)
        if not inner.result.uses and not any(v is inner.result for v in rewriter.func.outputs):
            rewriter.erase(inner)
        return True


@dataclass(frozen=True)
class Canonicalize(Pass):
    name = "canonicalize"
    summary = "fold identity reshapes/transposes/casts and merge reshape chains"

    def run(self, module: Module, ctx: PassContext) -> PassResult:
        patterns = [DropIdentity(), MergeReshapes()]
        changed = [apply_patterns(func, patterns) for func in module.functions.values()]
        return PassResult(modified=any(changed))
