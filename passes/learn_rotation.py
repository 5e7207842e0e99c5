"""learn-rotation: Quant.npu-style learned rotations, then learned quant params per group.

Runs after `rotate` (whose record says which constants carry R1 and R2, and on which side) and
`quantize`. Three stages, all on the relative squared error of the final hidden state against the
float module, as `learn` does:

    0. initialisation   rotated activations of 8 bits or fewer take the MSE-optimal range of their
                        calibration histogram (a rotated tensor is near-Gaussian: clipping its tails
                        pays); unrotated and 16-bit ones keep min/max. Weights keep the clipping
                        `quantize` chose (the quantnpu recipe uses the mse weight observer).
    1. rotations        Q1 (d×d, on top of R1) and Q2 (D×D, on top of R2, per head) start at the
                        identity and move on the orthogonal manifold (Cayley transform with momentum,
                        qir/learning.py `cayley`); every quant param is frozen: activation specs as
                        initialised, weight scales recomputed from the rotated weights with their
                        starting clip ratio.
    2. quant params     per group, one after the other: first the rotated group (ranges of every
                        activation read by a rotated linear, and every rotated weight's clipping),
                        then the rest (the other activations' ranges).

Everything is folded into the weights and static specs: the emitted graph has exactly the ops the
module had before. See docs/accuracy-passes.md."""
from __future__ import annotations

from dataclasses import dataclass, replace

from qir import Function, Module, Pass, PassContext, PassResult, QirError
from qir.evaluate import WEIGHTS_ROUNDED_ATTR
from qir.learning import start_factors
from qir.stats import observed_range
from qir.quant_params import affine_params

from passes.calibrate import STATS_KEY, Calibrate
from passes.quantize import VIEWS, activation_spec, bias_scales
from passes.learn import loss_target, make_plan, train, training_inputs

RESULT_KEY = "learn-rotation"


def learned_rotations(record: dict) -> tuple[dict[str, tuple[tuple, tuple]], dict[str, int]]:
    """From rotate's record: constant -> (left, right) in terms of the learned Q1/Q2, and their sizes.
    rotate's R1ᵀ rows become Q1ᵀ rows (written ("R1",) on the left), R1 columns Q1 columns, and so on;
    the online Hadamard (H) is not learned."""
    rotated, sizes = {}, {}
    for name, sides in record["constants"].items():
        left, right = sides["left"], sides["right"]
        new_left = ("R1",) if left[:1] == ["R1T"] else ("R2",) if left[:1] == ["R2T"] else ()
        new_right = ("R1",) if right[:1] == ["R1"] else ("R2",) if right[:1] == ["R2"] else ()
        for side, key in ((left, new_left), (right, new_right)):
            if key == ("R1",):
                sizes["R1"] = record["residual_width"]
            elif key == ("R2",):
                sizes["R2"] = int(side[1])
        if new_left or new_right:
            rotated[name] = (new_left, new_right)
    return rotated, sizes


def rotated_inputs(func: Function, rotated: dict[str, tuple[tuple, tuple]]) -> set[str]:
    """Activations read by a linear whose weight is rotated on its columns, and the values they are
    reshaped or transposed from (which share their quant params)."""
    names = set()
    for op in func.ops:
        if op.name == "q.linear" and op.operands[1].name in rotated and rotated[op.operands[1].name][1]:
            x = op.operands[0]
            while True:
                names.add(x.name)
                if x.producer is None or x.producer.name not in VIEWS:
                    break
                x = x.producer.operands[0]
    return names


def mse_initialise(func: Function, names: set[str], stats: dict) -> int:
    """Rotated activations of ≤ 8 bits take the MSE-optimal range of their histogram."""
    count = 0
    for value in func.args + [r for op in func.ops for r in op.results]:
        spec, stat = value.quant, stats.get(value.name)
        if value.name not in names or spec is None or spec.bits > 8 or stat is None or stat.hist is None:
            continue
        lo, hi = observed_range(stat, "mse", spec.bits, False)
        scale, zero, _, _ = affine_params(lo, hi, spec.bits, False)
        value.quant = replace(spec, scale=(scale,), zero_point=(zero,))
        count += 1
    return count


def clip_ratios(func: Function, stats: dict) -> dict[str, float]:
    """Per-tensor activations (not masked fills, whose range is made, not observed) -> their range's
    width over the calibrated min/max width: 1 for min/max ranges, below 1 where MSE clipped."""
    ratios = {}
    for value in func.args + [r for op in func.ops for r in op.results]:
        spec, stat = value.quant, stats.get(value.name)
        if spec is None or spec.axis is not None or isinstance(spec.scale, str) or stat is None \
                or (value.producer is not None and value.producer.name == "q.masked_fill"):
            continue
        if spec.bits == 16:
            width, observed = spec.scale[0] * spec.qmax, max(-min(stat.min, 0.0), max(stat.max, 0.0))
        else:
            width, observed = spec.scale[0] * (spec.qmax - spec.qmin), max(stat.max, 0.0) - min(stat.min, 0.0)
        ratios[value.name] = min(1.0, width / observed) if observed > 0 else 1.0
    return ratios


def recalibrate(module: Module, ctx: PassContext, names: dict[str, float], group: set[str], mse: bool) -> None:
    """Observe the rotated module again and give `names` fresh static ranges as quantize and stage 0
    chose them (MSE for rotated ≤ 8-bit activations when `mse`, min/max otherwise); bias scales follow."""
    Calibrate(histogram=mse).run(module, ctx)
    stats = ctx.data[STATS_KEY]
    func = module.main
    for value in func.args + [r for op in func.ops for r in op.results]:
        if value.name in names and value.name in stats:
            spec = value.quant
            observer = "mse" if mse and value.name in group and spec.bits <= 8 else "minmax"
            value.quant = activation_spec(stats, value.name, {"bits": spec.bits, "observer": observer})
    share_specs(func)
    for op in func.ops:
        if op.name == "q.linear" and len(op.operands) > 2 and op.operands[2].is_constant:
            x, w, b = op.operands[:3]
            spec = module.constants[b.name].quant
            if spec is not None and isinstance(spec.scale, str) and x.quant is not None and w.quant is not None:
                module.weights.set(spec.scale, bias_scales(module, x, w, b).reshape(
                    module.constants[spec.scale].type.shape))


def share_specs(func: Function) -> None:
    """Re-tie values that pass their input's quant params through (reshape/transpose) after the
    initialisation changed some of them."""
    for op in func.ops:
        if op.name in VIEWS and not op.operands[0].is_constant and op.operands[0].quant is not None \
                and op.result.quant is not None and op.result.quant.bits == op.operands[0].quant.bits:
            op.result.quant = op.operands[0].quant


@dataclass(frozen=True)
class LearnRotation(Pass):
    name = "learn-rotation"
    needs_calibration_inputs = True
    summary = ("Quant.npu: learn the rotations (Cayley, quant params frozen), then the quant params per group "
               "(rotated tensors, then the rest); needs rotate and quantize")
    rotation_epochs: int = 1   # stage 1: passes over the training inputs
    param_epochs: int = 2      # stage 2: passes per group
    samples: int = 16          # the first calibration inputs to train on (a step each); 0: all
    rotation_lr: float = 0.02  # step of the Cayley update (about an angle in radians)
    lr: float = 2e-2           # activation ranges (as learn)
    clip_lr: float = 2e-1      # weight clipping (as learn)
    clip: bool = True          # stage 2 learns the rotated weights' clipping (false: their grids stay)
    init: bool = True          # stage 0: MSE ranges for rotated activations of ≤ 8 bits
    dynamic: bool = False      # stage 1: activations take their own ranges (times their clip ratio) on each input
    schedule: str = "cosine"
    max_grad_ratio: float = 4.0  # gradient norms of ranges and clips clipped (as learn)

    def requires(self, module: Module) -> None:
        if not module.is_quantized():
            raise QirError("learn-rotation: the module is not quantized; put 'calibrate' and 'quantize' before it")
        if self.schedule not in ("cosine", "constant"):
            raise QirError(f"learn-rotation: schedule must be 'cosine' or 'constant', got '{self.schedule}'")
        if self.rotation_epochs < 0 or self.param_epochs < 0 or self.samples < 0 or \
                min(self.rotation_lr, self.lr, self.clip_lr) < 0 or self.max_grad_ratio < 1:
            raise QirError("learn-rotation: needs epochs >= 0, samples >= 0, learning rates >= 0 and "
                           f"max_grad_ratio >= 1; got rotation_epochs={self.rotation_epochs}, "
                           f"param_epochs={self.param_epochs}, samples={self.samples}, "
                           f"rotation_lr={self.rotation_lr}, lr={self.lr}, clip_lr={self.clip_lr}, "
                           f"max_grad_ratio={self.max_grad_ratio}")

    def run(self, module: Module, ctx: PassContext) -> PassResult:
        rounded_by = module.attrs.get(WEIGHTS_ROUNDED_ATTR)
        if rounded_by:
            raise QirError(f"learn-rotation after {rounded_by}: rotations would move the rounded weights off their "
                           f"grid; put {rounded_by} after learn-rotation (and learn{{clip=false,let=false}} after "
                           f"both to learn the ranges)")
        record = ctx.data.get("rotate")
        if not record or "constants" not in record:
            raise QirError("learn-rotation learns on top of the rotations 'rotate' folded in: put 'fold-norms,rotate' "
                           "before 'calibrate' in the same pipeline")
        inputs = training_inputs(module, ctx, self.name, self.samples)
        func = module.main
        target = loss_target(func)
        rotated, sizes = learned_rotations(record)
        missing = sorted(n for n in rotated if n not in module.constants)
        if missing:
            raise QirError(f"learn-rotation: rotate's constants {', '.join('@' + n for n in missing[:5])} are no "
                           f"longer in the module")
        group = rotated_inputs(func, rotated)
        report = {"rotated_activations": len(group), "rotated_constants": len(rotated)}
        stats = ctx.data.get(STATS_KEY, {})
        if self.init:
            report["mse_initialised"] = mse_initialise(func, group, stats)
            share_specs(func)
        rates = {"ranges": self.lr, "clips": self.clip_lr, "scales": 0.0, "rotations": self.rotation_lr}
        if self.rotation_epochs:
            plan = make_plan(module, func, target, ranges=False, clip=False, let=False)
            plan = replace(plan, rotated=rotated, rotation_sizes=sizes,
                           constants=list(dict.fromkeys(plan.constants + [
                               n for n in rotated if module.constants[n].quant is not None and n not in plan.biases])))
            plan = replace(plan, factors=start_factors(module, plan.constants))
            dynamic = clip_ratios(func, stats) if self.dynamic else {}
            plan = replace(plan, dynamic=dynamic)
            report["rotations"] = train(module, ctx, plan, target, inputs, rates, self.rotation_epochs,
                                        self.schedule, f"{self.name}-rotations", self.max_grad_ratio)
            if dynamic:  # the static ranges of the rotated module, observed anew
                recalibrate(module, ctx, dynamic, group, self.init)
                report["recalibrated"] = len(dynamic)
        if self.param_epochs:
            for tag, keep_rotated in (("rotated", True), ("others", False)):
                plan = make_plan(module, func, target, ranges=True, clip=keep_rotated and self.clip, let=False)
                chosen = [n for n in plan.activations if (n in group) == keep_rotated]
                plan = replace(plan, activations=chosen,
                               tie={k: v for k, v in plan.tie.items() if v in chosen},
                               clipped={k: v for k, v in plan.clipped.items() if k in rotated})
                report[tag] = train(module, ctx, plan, target, inputs, rates, self.param_epochs, self.schedule,
                                    f"{self.name}-{tag}", self.max_grad_ratio)
        ctx.data[RESULT_KEY] = report
        return PassResult(modified=True)
