"""learn: MobileQuant-style learned fully static quantization, on a module `quantize` has quantized.

Three kinds of parameters (Flax nnx modules, qir/learning.py), trained together end to end:

    activation ranges   per-tensor scale and zero point of every quantized activation
    weight clipping     per-output-channel factor on the min/max scale of every linear weight
    LET                 per-channel scales s across norm -> linears, up -> down and v -> o:
                        X / s in the producer's constants, W · diag(s) in the linears' columns

The loss is the relative squared error of the final hidden state (the input of the last linear:
the last norm's output of a causal LM; otherwise the last output, an encoder's pooled embedding) of the fake-quantized module
against the float module, ||y_q - y||² / ||y||², one calibration input per step, with adam and
straight-through rounding. Afterwards everything is folded into the weights and static quant
params: the result is an ordinary quantized module. After `gptq` only the ranges may be learned
(clip=false, let=false), against the float values gptq kept from before its rounding. See
docs/accuracy-passes.md."""
from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from qir import Function, Interpreter, Module, Op, Pass, PassContext, PassResult, QirError, Value
from qir.calibration_data import INPUTS_KEY
from qir.evaluate import WEIGHTS_ROUNDED_ATTR, progress_bar
from qir.quant_report import LOSS_CURVES_KEY, LOSS_SUMMARY_KEY, unique_run_name
from qir.segmented import SegmentedGradient, upstream
from qir.learning import (LearnPlan, Transform, build_model, cayley, clip_to_running_norm, fold, materialize,
                          spec_overrides, start_factors)

from passes.quantize import VIEWS  # integer runtimes keep a view's input quant params
from passes.smooth import SmoothPair, constant_use_counts, find_pairs, linear_readers

RESULT_KEY = "learn"  # ctx.data entry: losses and counts
# ctx.data entry {target value name: [its float value per calibration input]}, kept by a pass that
# rounds the float weights (gptq) so that a learning pass after it still trains against the float model
FLOAT_REFERENCES_KEY = "float-references"


# -- what is learned ---------------------------------------------------------------------------------

def loss_target(func: Function) -> Value:
    """What the loss compares: a causal LM's final hidden state (the activation input of the linear
    producing its first output, the logits); otherwise the last output, which for an encoder is the
    pooled sentence embedding. Not an encoder's hidden states: their padded rows are garbage the
    pooling drops, and on all-MiniLM-L6-v2 fitting them lowered the embedding cosine 0.937 -> 0.877."""
    out = func.outputs[0]
    op = out.producer
    if op is not None and op.name == "q.linear" and not op.operands[0].is_constant:
        return op.operands[0]
    return func.outputs[-1]


def scaled_mul_pair(func: Function, op: Op) -> SmoothPair | None:
    """A norm that decompose-norms has split: `mul(x, w)` (or `add(mul(x, w), b)`) by constant [C]
    vectors, read only by linears. Any such per-channel multiplication is a pair, as a norm is."""
    if op.name == "q.add" and op.operands[1].is_constant and op.operands[0].producer is not None:
        mul, bias = op.operands[0].producer, [op.operands[1].name]
        if len(op.operands[0].uses) != 1:
            return None
    elif op.name == "q.mul":
        mul, bias = op, []
    else:
        return None
    if mul.name != "q.mul" or mul.operands[0].is_constant:
        return None
    channels = op.result.type.shape[-1]
    if any(not c.is_constant or c.type.shape != (channels,) for c in [mul.operands[1]] + op.operands[1:] * bool(bias)):
        return None
    readers = linear_readers(func, op.result)
    if readers is None:
        return None
    names = ", ".join(lin.operands[1].name for lin in readers)
    return SmoothPair(f"{mul.operands[1].name} -> {names}", op.result, readers, [mul.operands[1].name] + bias,
                      np.arange(channels))


def let_pairs(module: Module, func: Function, cone: set[int], target: Value) -> list[SmoothPair]:
    """The pairs `smooth` folds (norm -> linears, up -> down, v -> o) plus decomposed norms, where
    everything scaled lies upstream of the loss and the scaled tensor is not the loss target itself."""
    uses = constant_use_counts(module)
    pairs = find_pairs(module, func)
    for op in func.ops:
        pair = scaled_mul_pair(func, op)
        if pair is not None and all(uses.get(n) == 1 and module.weights.has(n)
                                    for n in pair.divide + [lin.operands[1].name for lin in pair.linears]):
            pairs.append(pair)
    return [p for p in pairs if p.activation is not target and all(id(lin) in cone for lin in p.linears)]


def shared_params(ops: list[Op]):
    """value name -> the first value (in program order) whose quant params it must keep equal:
    a reshape/transpose keeps its input's params in integer runtimes, and a concatenation whose
    parts already share its params would need a requantization if one of them moved."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.get(name, name) != name:
            name = parent[name]
        return name

    for op in ops:
        linked = op.operands[:1] if op.name in VIEWS else op.operands if op.name == "q.concat" else []
        for source in linked:
            if not source.is_constant and source.quant is not None and source.quant == op.result.quant:
                a, b = find(source.name), find(op.result.name)
                if a != b:
                    parent[b] = a
    # the first member in program order is the representative
    order: dict[str, int] = {}
    for op in ops:
        for v in list(op.operands) + op.results:
            order.setdefault(v.name, len(order))
    firsts: dict[str, str] = {}
    for name in sorted(parent.keys() | set(parent.values()), key=lambda n: order.get(n, -1)):
        firsts.setdefault(find(name), name)
    return lambda name: firsts.get(find(name), name)


def make_plan(module: Module, func: Function, target: Value, ranges: bool, clip: bool, let: bool) -> LearnPlan:
    in_order = upstream(func, target)
    cone = {id(op) for op in in_order}
    activations, tie, specs = [], {}, {}
    if ranges:
        root = shared_params(in_order)
        for value in func.args + [r for op in in_order for r in op.results]:
            if value.quant is None or not value.type.is_float:
                continue
            first = root(value.name)
            if first in specs:
                tie[value.name] = first
            else:
                activations.append(value.name)
                specs[value.name] = value.quant

    uses = {}
    for f in module.functions.values():
        for op in f.ops:
            for index, v in enumerate(op.operands):
                if v.is_constant:
                    uses.setdefault(v.name, []).append((op, index))
    clipped = {}
    if clip:
        for op in in_order:
            w = op.operands[1] if op.name == "q.linear" else None
            spec = module.constants[w.name].quant if w is not None and w.is_constant else None
            if spec is None or spec.zero_point != (0,) or spec.bits > 8:
                continue
            if not all(u.name == "q.linear" and i == 1 and id(u) in cone for u, i in uses[w.name]):
                continue  # a tied embedding: its rows are also gathered
            if spec.axis is None:
                clipped[w.name] = 1
            elif (spec.block_size is None and spec.axis == 0) or (spec.block_size and spec.axis == w.type.rank - 1):
                clipped[w.name] = w.type.shape[0]

    transforms = []
    if let:
        for pair in let_pairs(module, func, cone, target):
            transforms.append(Transform(pair.name, pair.divide, [lin.operands[1].name for lin in pair.linears],
                                        pair.channels))

    biases = {}
    for op in in_order:
        if op.name == "q.linear" and len(op.operands) > 2 and op.operands[2].is_constant:
            x, w, b = op.operands[:3]
            b_spec = module.constants[b.name].quant
            if b_spec is not None and b_spec.bits == 32 and x.quant is not None and w.quant is not None:
                biases[b.name] = (x.name, w.name)
                specs.setdefault(x.name, x.quant)
    touched = [n for t in transforms for n in t.divide + t.multiply]
    constants = [n for n in dict.fromkeys(touched + list(clipped))
                 if module.constants[n].quant is not None and n not in biases]
    return LearnPlan(func.name, activations, tie, specs, transforms, clipped, constants, biases,
                     factors=start_factors(module, constants))


# -- the pass ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Learn(Pass):
    name = "learn"
    needs_calibration_inputs = True
    summary = ("MobileQuant: learn activation ranges, weight clipping and equivalent transformations end to end "
               "(needs quantize), then fold them into weights and static quant params")
    # SmolLM2 w8a8, 6 blocks, held-out error of the final hidden state 0.146 before learning: 0.139
    # with rates 20x lower than these and 2 epochs, 0.052 with these, 0.034 at 2x, 0.130 at 4x (diverging)
    epochs: int = 4          # passes over the training inputs
    samples: int = 16        # the first calibration inputs to train on (a step each); 0: all
    lr: float = 2e-2         # activation ranges (log scale; zero point as a fraction of the grid)
    clip_lr: float = 2e-1    # weight clipping logits
    let_lr: float = 1e-1     # log of the equivalent-transformation scales
    schedule: str = "cosine"  # learning rates decay to 0 over the steps ("cosine") or stay ("constant")
    max_grad_ratio: float = 4.0  # a gradient's norm is clipped to this times its kind's running mean
    ranges: bool = True
    clip: bool = True
    let: bool = True

    def requires(self, module: Module) -> None:
        if not module.is_quantized():
            raise QirError("learn: the module is not quantized; put 'calibrate' and 'quantize' before 'learn'")
        if self.schedule not in ("cosine", "constant"):
            raise QirError(f"learn: schedule must be 'cosine' or 'constant', got '{self.schedule}'")
        if (self.epochs < 1 or self.samples < 0 or min(self.lr, self.clip_lr, self.let_lr) < 0
                or self.max_grad_ratio < 1):
            raise QirError(f"learn: needs epochs >= 1, samples >= 0, learning rates >= 0 and max_grad_ratio >= 1; "
                           f"got epochs={self.epochs}, samples={self.samples}, lr={self.lr}, clip_lr={self.clip_lr}, "
                           f"let_lr={self.let_lr}, max_grad_ratio={self.max_grad_ratio}")

    def run(self, module: Module, ctx: PassContext) -> PassResult:
        rounded_by = module.attrs.get(WEIGHTS_ROUNDED_ATTR)
        if rounded_by and (self.clip or self.let):
            raise QirError(f"learn after {rounded_by}: the weights are rounded already, and clipping or equivalent "
                           f"transformations would move them off their grid; learn only the ranges with "
                           f"learn{{clip=false,let=false}}")
        inputs = training_inputs(module, ctx, self.name, self.samples)
        target = loss_target(module.main)
        plan = make_plan(module, module.main, target, self.ranges, self.clip, self.let)
        rates = {"ranges": self.lr, "clips": self.clip_lr, "scales": self.let_lr}
        ctx.data[RESULT_KEY] = train(module, ctx, plan, target, inputs, rates, self.epochs, self.schedule, self.name,
                                      self.max_grad_ratio)
        return PassResult(modified=True)


def training_inputs(module: Module, ctx: PassContext, name: str, samples: int) -> list[tuple]:
    inputs = ctx.data.get(INPUTS_KEY)
    if not inputs:
        raise QirError(f"{name} needs calibration inputs: qir-compile provides them from the model's tokenizer; "
                       f"from Python, set ctx.data['{INPUTS_KEY}'] to a list of input tuples")
    return [typed_inputs(module.main, x, name) for x in (inputs[:samples] if samples > 0 else inputs)]


def train(module: Module, ctx: PassContext, plan: LearnPlan, target: Value, inputs: list[tuple],
          rates: dict[str, float], epochs: int, schedule: str, name: str, max_grad_ratio: float = 4.0) -> dict:
    """Train the plan's parameters end to end on the relative squared error of `target` (adam; the
    Cayley optimizer for rotations), fold them into the module, and return a report. `rates` has
    a learning rate per kind of parameter: ranges, clips, scales, rotations; the gradient of each
    kind but rotations is clipped to `max_grad_ratio` times its running mean."""
    func = module.main
    model = build_model(module, plan)
    graphdef, params, fixed = nnx.split(model, nnx.Param, ...)
    references = float_references(module, ctx, target, inputs)
    fake = Interpreter(module, mode="fake-quant")
    base = fake.weights_for(func)
    # compiled a segment at a time: the whole step compiled at once took XLA ~16 min on SmolLM2
    graph = SegmentedGradient(fake, func, target, spec_overrides(module, plan))
    touched = set(plan.touched())

    def learned(params, base):
        """The entries of the weights dict the parameters set: transformed constants, scales, zero points."""
        weights = materialize(nnx.merge(graphdef, params, fixed), plan, base, module)
        return {k: v for k, v in weights.items() if k not in base or k in touched}

    compute = jax.jit(learned)
    pull_back = jax.jit(lambda params, base, g: jax.vjp(lambda p: learned(p, base), params)[1](g)[0])

    def relative_error(reference):
        return lambda y: (jnp.sum(jnp.square(y.astype(jnp.float32) - reference))
                          / jnp.maximum(jnp.sum(jnp.square(reference)), 1e-30))

    def value_and_grad(params, x, reference):
        changed = compute(params, base)
        loss, grads = graph.value_and_grad({**base, **changed}, set(changed), x, relative_error(reference))
        return loss, pull_back(params, base, {k: grads.get(k, jnp.zeros_like(v)) for k, v in changed.items()})

    def mean_loss(params) -> float:
        weights = {**base, **compute(params, base)}
        return float(np.mean([relative_error(r)(graph.forward(weights, x)[0][id(target)])
                              for x, r in zip(inputs, references)]))

    steps = epochs * len(inputs)
    tx = optimizer(params, rates, steps, schedule, max_grad_ratio)

    @jax.jit
    def apply(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    # the parameters kept are those of the epoch with the lowest mean loss, the start included: a
    # rate too high for a model (all-MiniLM-L6-v2 diverges at rates SmolLM2 needs) cannot end worse
    before = mean_loss(params)
    best, best_epoch, epoch_losses = (before, params), 0, [before]
    state, curve, seconds = tx.init(params), [], []
    with progress_bar() as bar:
        task = bar.add_task(name, total=steps, status="")
        for epoch in range(epochs):
            for i in np.random.default_rng(epoch).permutation(len(inputs)):
                start = time.perf_counter()
                loss, grads = value_and_grad(params, inputs[i], references[i])
                params, state = apply(grads, state, params)
                curve.append(float(loss))
                seconds.append(time.perf_counter() - start)
                bar.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs}  loss {curve[-1]:.4g}")
            epoch_losses.append(mean_loss(params))
            if epoch_losses[-1] < best[0]:
                best, best_epoch = (epoch_losses[-1], params), epoch + 1
    after, params = best

    fold(module, plan, {k: np.asarray(v) for k, v in compute(params, base).items()})
    run = unique_run_name(name, ctx.data)  # a second learn in one pipeline keeps the first one's curve
    ctx.data.setdefault(LOSS_CURVES_KEY, {})[run] = curve
    ctx.data.setdefault(LOSS_SUMMARY_KEY, {})[run] = {"before": before, "after": after, "kept_epoch": best_epoch,
                                                      "epochs": epochs}
    return {"target": target.name, "loss_before": before, "loss_after": after, "kept_epoch": best_epoch,
            "epoch_losses": epoch_losses, "loss": curve,
            "steps": len(curve), "samples": len(inputs), "first_step_seconds": seconds[0] if seconds else None,
            "step_seconds": float(np.median(seconds[1:])) if len(seconds) > 1 else None,
            "activations": len(plan.activations), "clipped_weights": len(plan.clipped),
            "transforms": [t.key for t in plan.transforms], "rotations": sorted(plan.rotation_sizes)}


def optimizer(params, rates: dict[str, float], steps: int, schedule: str, max_grad_ratio: float):
    """Adam per kind of parameter (the top-level keys of `params`), the Cayley update for rotations."""
    labels = jax.tree_util.tree_map_with_path(lambda path, _: str(path[0].key), params)
    rate = (lambda lr: optax.cosine_decay_schedule(lr, max(steps, 1))) if schedule == "cosine" else (lambda lr: lr)
    # adam sees no outlier gradient: one (SmolLM2 w8a8 after decompose-norms: norm 3.1 against a typical
    # 0.02 at step 2) would fill its second moment and shrink the steps after it for the rest of the run
    optimizers = {kind: optax.chain(clip_to_running_norm(max_grad_ratio), optax.adam(rate(lr)))
                  for kind, lr in rates.items() if kind != "rotations"}
    optimizers["rotations"] = cayley(rate(rates.get("rotations", 0.0)))
    return optax.multi_transform(optimizers, labels)


def typed_inputs(func: Function, sample: tuple, name: str = "learn") -> tuple:
    if len(sample) != len(func.args):
        raise QirError(f"{name}: @{func.name} takes {len(func.args)} input(s), a calibration sample has {len(sample)}")
    arrays = tuple(np.asarray(x).astype(a.type.np_dtype, copy=False) for a, x in zip(func.args, sample))
    for arg, x in zip(func.args, arrays):
        if x.shape != arg.type.shape:
            raise QirError(f"{name}: input %{arg.name} of @{func.name} has shape {list(arg.type.shape)}, "
                           f"a calibration sample has {list(x.shape)}")
    return arrays


def float_references(module: Module, ctx: PassContext, target: Value, inputs: list[tuple]) -> list[jax.Array]:
    """The float module's target value on each input. Once a pass has rounded the float weights
    (gptq), the float model is the one before it: its values, which that pass kept in ctx."""
    rounded_by = module.attrs.get(WEIGHTS_ROUNDED_ATTR)
    if rounded_by:
        kept = ctx.data.get(FLOAT_REFERENCES_KEY, {}).get(target.name, [])
        if len(kept) < len(inputs):
            raise QirError(f"the weights were rounded by {rounded_by}, so they no longer give the float model's "
                           f"outputs to learn against; learn needs {rounded_by} to run in the same pipeline, on at "
                           f"least as many calibration inputs ({len(inputs)}; {rounded_by} kept {len(kept)})")
        return kept[:len(inputs)]
    return observed_values(module, target.name, inputs)


def observed_values(module: Module, name: str, inputs: list[tuple]) -> list[jax.Array]:
    """The float module's value `name` on each input."""
    interpreter = Interpreter(module)
    pick = lambda n, x: x if n == name else jnp.zeros((0,), x.dtype)  # noqa: E731
    return [jnp.asarray(interpreter.run_observed(*x, key=f"learn-target-{name}", observe=pick)[1][name],
                        jnp.float32) for x in inputs]
