"""Exact gradients of one value of a function, compiled a segment at a time.

XLA's compile time grows faster than the program: the training step of SmolLM2 compiled whole took
14 s for 2 blocks, 50 s for 8 and 139 s for 16 (about 16 minutes for all 30 under load). Here the
ops upstream of the value are cut into consecutive segments of about `SEGMENT_OPS` ops, at points
where the fewest values cross (block boundaries, in a transformer), and every segment is compiled
on its own: forward (outputs from inputs) and backward (its VJP, recomputing its forward). The
forward runs segment by segment keeping each segment's inputs; the backward runs the segments'
VJPs from the last to the first, chaining the cotangents of the values that cross the cuts. The
gradient is that of the whole program; compiling is linear in its length.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from qir.ir import Function, Op, Value

SEGMENT_OPS = 64  # ops per segment, roughly: a transformer block of the quantized module


@dataclass
class Segment:
    ops: list[Op]
    inputs: list[Value]       # non-constant values it reads that an earlier segment (or the caller) made
    outputs: list[Value]      # values it makes that later segments read, or the target
    weights: list[str]        # entries of the weights dict it reads: constants and spec parameters
    forward: object = None
    backward: object = None


def upstream(func: Function, target: Value) -> list[Op]:
    """The ops `target` depends on, in program order."""
    needed, stack = set(), [target]
    while stack:
        op = stack.pop().producer
        if op is not None and id(op) not in needed:
            needed.add(id(op))
            stack += op.operands
    return [op for op in func.ops if id(op) in needed]


def crossing_counts(ops: list[Op], target: Value) -> list[int]:
    """counts[i]: how many non-constant values made before op i are read at or after it."""
    last_use = {id(target): len(ops)}
    for i, op in enumerate(ops):
        for v in op.operands:
            if not v.is_constant:
                last_use[id(v)] = i
    born = {}
    for v in {id(v): v for op in ops for v in op.operands if not v.is_constant and v.producer is None}.values():
        born[id(v)] = -1  # function arguments
    for i, op in enumerate(ops):
        for r in op.results:
            born[id(r)] = i
    delta = [0] * (len(ops) + 2)
    for key, b in born.items():
        if key in last_use and last_use[key] > b:  # live over the cuts b+1 .. last_use
            delta[b + 1] += 1
            delta[last_use[key] + 1] -= 1
    counts, running = [], 0
    for i in range(len(ops) + 1):
        running += delta[i]
        counts.append(running)
    return counts


def cut_points(ops: list[Op], target: Value, size: int = SEGMENT_OPS) -> list[int]:
    """Where to cut: about every `size` ops, at the position with the fewest values crossing
    within half a segment of the ideal one."""
    counts, cuts, start = crossing_counts(ops, target), [], 0
    while len(ops) - start > size + size // 2:
        window = range(start + size // 2, min(start + size + size // 2, len(ops)))
        cut = min(window, key=lambda i: (counts[i], abs(i - start - size)))
        cuts.append(cut)
        start = cut
    return cuts


def outputs_of(ops: list[Op]) -> list[Value]:
    return [r for op in ops for r in op.results]


def is_float(value: Value) -> bool:
    return value.type.is_float


class SegmentedGradient:
    """Value and gradient of `loss(target)` with respect to chosen entries of the weights dict, for
    one function run by `interpreter` (with its trace's `specs`), segment by segment."""

    def __init__(self, interpreter, func: Function, target: Value, specs: dict | None = None,
                 size: int = SEGMENT_OPS):
        self.interpreter, self.func, self.target, self.specs = interpreter, func, target, specs or {}
        ops = upstream(func, target)
        bounds = [0] + cut_points(ops, target, size) + [len(ops)]
        self.segments = [self._segment(ops[a:b], ops[b:]) for a, b in zip(bounds, bounds[1:])]

    def _segment(self, ops: list[Op], later: list[Op]) -> Segment:
        made = {id(r) for op in ops for r in op.results}
        inputs = list({id(v): v for op in ops for v in op.operands
                       if not v.is_constant and id(v) not in made}.values())
        read_later = {id(v) for op in later for v in op.operands} | {id(self.target)}
        outputs = [r for op in ops for r in op.results if id(r) in read_later]
        names = [v.name for op in ops for v in op.operands if v.is_constant]
        for v in [v for op in ops for v in op.operands if v.is_constant or v.producer is None] + outputs_of(ops):
            spec = self.interpreter.spec(v, self.specs)
            names += spec.constants if spec is not None else ()
        segment = Segment(ops, inputs, outputs, list(dict.fromkeys(names)))
        segment.forward = jax.jit(self._forward_fn(segment))
        segment.backward = jax.jit(self._backward_fn(segment))
        return segment

    def _forward_fn(self, segment: Segment):
        interpreter, specs = self.interpreter, self.specs

        def forward(weights, *inputs):
            env = {}
            for v, x in zip(segment.inputs, inputs):  # a function argument is quantized where it is read
                env[id(v)] = interpreter.quantized(weights, x, interpreter.spec(v, specs)) if v.producer is None else x
            interpreter.run_ops(weights, segment.ops, env, specs)
            return [env[id(v)] for v in segment.outputs]
        return forward

    def _backward_fn(self, segment: Segment):
        forward = self._forward_fn(segment)
        float_in = [i for i, v in enumerate(segment.inputs) if is_float(v)]
        float_out = [i for i, v in enumerate(segment.outputs) if is_float(v)]

        def backward(learned, fixed, inputs, cotangents):
            def float_part(learned, float_inputs):
                xs = list(inputs)
                for i, x in zip(float_in, float_inputs):
                    xs[i] = x
                outs = forward({**fixed, **learned}, *xs)
                return [outs[i] for i in float_out]
            _, pull = jax.vjp(float_part, learned, [inputs[i] for i in float_in])
            return pull(cotangents)
        return backward

    def forward(self, weights: dict, inputs: tuple) -> tuple[dict, list[list]]:
        """Every crossing value's array (id -> array; the target's among them) and every segment's
        inputs (kept for the backward)."""
        env = {id(a): x for a, x in zip(self.func.args, inputs)}
        saved = []
        for segment in self.segments:
            xs = [env[id(v)] for v in segment.inputs]
            saved.append(xs)
            outs = segment.forward({n: weights[n] for n in segment.weights}, *xs)
            env.update({id(v): y for v, y in zip(segment.outputs, outs)})
        return env, saved

    def value_and_grad(self, weights: dict, learned: set[str], inputs: tuple, loss):
        """loss(target array) and its gradient with respect to the weights named in `learned`."""
        env, saved = self.forward(weights, inputs)
        value, dy = jax.value_and_grad(loss)(env[id(self.target)])
        cotangent, grads = {id(self.target): dy}, {}
        for segment, xs in zip(reversed(self.segments), reversed(saved)):
            mine = [n for n in segment.weights if n in learned]
            learned_w = {n: weights[n] for n in mine}
            fixed_w = {n: weights[n] for n in segment.weights if n not in learned}
            outs = [v for v in segment.outputs if is_float(v)]
            cts = [cotangent.pop(id(v), None) for v in outs]
            if all(c is None for c in cts):
                continue  # nothing downstream depends on this segment's float outputs
            cts = [jnp.zeros_like(env[id(v)]) if c is None else c for c, v in zip(cts, outs)]
            g_learned, g_inputs = segment.backward(learned_w, fixed_w, xs, cts)
            for n, g in g_learned.items():
                grads[n] = grads[n] + g if n in grads else g
            for v, g in zip([v for v in segment.inputs if is_float(v)], g_inputs):
                if v.producer is not None:
                    cotangent[id(v)] = cotangent[id(v)] + g if id(v) in cotangent else g
        return value, grads
