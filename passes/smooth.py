"""smooth: SmoothQuant-style per-channel scales folded between a producer and the linears it feeds.

For a pair (producer -> linears reading X), the activation becomes X / s and the linears' weights
W · diag(s): the float function is unchanged, but outlier channels of X move into the weights,
which are quantized per output channel and take them far better. Pairs:

    norm -> linears   the rms_norm / layer_norm weight (and bias) take 1/s    (q/k/v, gate/up)
    up -> down        the rows (and bias) of up take 1/s, through `mul(act(gate), up)`
    v -> o            the rows (and bias) of v take 1/s, through the head reshapes and `probs @ v`;
                      a v channel feeds every o input channel of its head's group (GQA)

A pair is left alone unless the scaled tensor feeds those linears only (a post-norm BERT's
LayerNorm output also feeds the residual add: nothing is inserted there, the pair is skipped) and
every constant it changes is used once in the module.

s_j = max|X_j|^α / max|W_j|^(1-α), with α searched per pair on calibration data: the candidate
(no smoothing, or α in 0, 1/steps, ..., 1) with the least squared error of the pair's
fake-quantized outputs, sum over its linears of ||Q_a(X/s) Q_w(W diag(s))^T - X W^T||^2, on every
row of the first `search_samples` calibration inputs. Q_a is static per tensor with the min/max
range of X/s over all calibration inputs, Q_w per output channel (or as the recipe says), both with
the bits that `quantize{recipe=...}` will give X and W. See docs/accuracy-passes.md."""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from qir import Function, Interpreter, Module, Op, Pass, PassContext, PassResult, QirError, Value
from qir.calibration_data import INPUTS_KEY
from qir.evaluate import progress_bar
from qir.quant_params import affine_params, lpbq_scales
from qir.quant_recipe import load_recipe

from passes.quantize import weight_settings

RESULT_KEY = "smooth"  # ctx.data entry: {pair name: {"alpha": float | None, "error": ..., "error_unsmoothed": ...}}
NORMS = ("q.rms_norm", "q.layer_norm")
FLOOR = 1e-5  # smallest max|X_j| or max|W_j| entering s (a dead channel keeps s = 1)


@dataclass
class SmoothPair:
    name: str                # "blk.0.attn_norm -> blk.0.attn_q, blk.0.attn_k, blk.0.attn_v"
    activation: Value        # X: the input of the linears, what activation quantization sees
    linears: list[Op]        # their weight columns take s
    divide: list[str]        # constants whose entries (rows) take 1/s: norm weight and bias, up / v rows and bias
    channels: np.ndarray     # channel c of X is scaled by s[channels[c]]


# -- finding the pairs ------------------------------------------------------------------------------

def find_pairs(module: Module, func: Function) -> list[SmoothPair]:
    uses = constant_use_counts(module)
    pairs = []
    for op in func.ops:
        pair = norm_pair(func, op) or up_down_pair(func, op) or v_o_pair(func, op)
        if pair is None:
            continue
        changed = pair.divide + [lin.operands[1].name for lin in pair.linears]
        if all(uses.get(name) == 1 and module.weights.has(name) for name in changed):
            pairs.append(pair)
    return pairs


def constant_use_counts(module: Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for func in module.functions.values():
        for name, ref in func._constants.items():
            counts[name] = counts.get(name, 0) + len(ref.uses) + sum(v is ref for v in func.outputs)
    return counts


def linear_readers(func: Function, x: Value) -> list[Op] | None:
    """The q.linear ops reading x as their input, if that is all x feeds (and their weights are constants)."""
    if not x.uses or x in func.outputs:
        return None
    ops = [op for op, index in x.uses]
    if any(op.name != "q.linear" or index != 0 or not op.operands[1].is_constant for op, index in x.uses):
        return None
    return list(dict.fromkeys(ops))


def single_user(func: Function, x: Value) -> tuple[Op, int] | None:
    return x.uses[0] if len(x.uses) == 1 and x not in func.outputs else None


def scaled_rows(op: Op) -> list[str] | None:
    """A linear's weight and bias, whose rows take 1/s, if they are constants."""
    if op.name != "q.linear" or not all(v.is_constant for v in op.operands[1:]):
        return None
    return [v.name for v in op.operands[1:]]


def norm_pair(func: Function, op: Op) -> SmoothPair | None:
    if op.name not in NORMS or not all(v.is_constant for v in op.operands[1:]):
        return None
    readers = linear_readers(func, op.result)
    if readers is None:
        return None
    names = ", ".join(lin.operands[1].name for lin in readers)
    return SmoothPair(f"{op.operands[1].name} -> {names}", op.result, readers, [v.name for v in op.operands[1:]],
                      np.arange(op.result.type.shape[-1]))


def up_down_pair(func: Function, op: Op) -> SmoothPair | None:
    """up = linear(x); h = mul(g, up); down = linear(h): scaling up's rows scales h's channels."""
    rows = scaled_rows(op)
    user = single_user(func, op.result)
    if rows is None or user is None or user[0].name != "q.mul":
        return None
    mul = user[0]
    if mul.operands[0] is mul.operands[1] or mul.result.type.shape != op.result.type.shape:
        return None  # x * x is quadratic in x; a broadcast would spread a channel
    readers = linear_readers(func, mul.result)
    if readers is None:
        return None
    return SmoothPair(f"{op.operands[1].name} -> {readers[0].operands[1].name}", mul.result, readers, rows,
                      np.arange(op.result.type.shape[-1]))


def v_o_pair(func: Function, op: Op) -> SmoothPair | None:
    """v = linear(x), then only reshapes, transposes and `probs @ v` up to the linear o: each element
    of o's input is a sum of one channel of v, which `channel_map` finds."""
    rows = scaled_rows(op)
    if rows is None:
        return None
    x, channel = op.result, np.broadcast_to(np.arange(op.result.type.shape[-1]), op.result.type.shape)
    while True:
        user = single_user(func, x)
        if user is None:
            return None
        nxt, index = user
        if nxt.name == "q.linear" and index == 0 and nxt.operands[1].is_constant:
            break
        channel = follow_channels(nxt, index, channel)
        if channel is None:
            return None
        x = nxt.result
    flat = channel.reshape(-1, channel.shape[-1])
    if not (flat == flat[:1]).all():
        return None  # an input channel of o mixes channels of v
    return SmoothPair(f"{op.operands[1].name} -> {nxt.operands[1].name}", x, [nxt], rows, flat[0].copy())


def follow_channels(op: Op, index: int, channel: np.ndarray) -> np.ndarray | None:
    """The v channel of each element of op's result, or None where it is not one channel."""
    if op.name == "q.reshape":
        return channel.reshape(op.attrs["shape"])
    if op.name == "q.transpose":
        return channel.transpose(op.attrs["perm"])
    if op.name == "q.matmul" and index == 1 and not op.attrs["transpose_b"]:
        # out[..., m, n] = sum_k a[..., m, k] v[..., k, n]: one channel if v's is the same along k
        if not (channel == channel[..., :1, :]).all():
            return None
        return np.broadcast_to(channel[..., :1, :], op.result.type.shape)
    return None


# -- statistics and the α search ----------------------------------------------------------------

def group_max(values: np.ndarray, channels: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, np.float64)
    np.maximum.at(out, channels, values)
    return out


def smoothing_scales(amax_x: np.ndarray, amax_w: np.ndarray, alpha: float) -> np.ndarray:
    s = np.maximum(amax_x, FLOOR) ** alpha / np.maximum(amax_w, FLOOR) ** (1 - alpha)
    return np.where((amax_x > 0) & (amax_w > 0), s, 1.0)


def fake_quant_activation(x: np.ndarray, lo: float, hi: float, settings: dict | None) -> np.ndarray:
    """Static per-tensor quantization as `quantize` does it with the minmax observer."""
    if settings is None:
        return x
    scale, zero, qmin, qmax = affine_params(lo, hi, settings["bits"], symmetric=settings["bits"] == 16)
    return ((np.clip(np.round(x / scale) + zero, qmin, qmax) - zero) * scale).astype(np.float32)


def fake_quant_weight(w: np.ndarray, settings: dict | None) -> np.ndarray:
    """Symmetric weight quantization as `quantize` does it: per output channel, per block, or per tensor."""
    if settings is None:
        return w
    qmax = (1 << (settings["bits"] - 1)) - 1
    block = settings.get("block")
    if settings.get("scheme") == "lpbq":  # the block's scale is its channel's float times an integer 1..16
        channel, k = lpbq_scales(w, block, settings["bits"])
        groups = w.reshape(-1, block)
        scale = (k.astype(np.float32) * channel.reshape((-1,) + (1,) * (k.ndim - 1))).reshape(-1, 1)
        return (np.clip(np.round(groups / scale), -qmax - 1, qmax) * scale).reshape(w.shape).astype(np.float32)
    if settings.get("scheme") == "per-tensor":
        groups = w.reshape(1, -1)
    elif block:
        groups = w.reshape(-1, block)
    else:
        groups = w
    scale = np.abs(groups).max(axis=1, keepdims=True) / qmax
    scale = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.round(groups / scale), -qmax - 1, qmax) * scale).reshape(w.shape).astype(np.float32)


@dataclass(frozen=True)
class Smooth(Pass):
    name = "smooth"
    needs_calibration_inputs = True
    summary = "fold per-channel SmoothQuant scales into norm/linear weights, alpha searched per pair"
    recipe: str = "w8a8"     # the bits the search models (those `quantize{recipe=...}` applies later)
    alpha: float = -1.0      # >= 0: this alpha for every pair, no search (classic SmoothQuant)
    steps: int = 10          # the grid is alpha = 0, 1/steps, ..., 1
    samples: int = 0         # calibration inputs for the per-channel ranges; 0: all given
    search_samples: int = 4  # calibration inputs whose rows the search evaluates

    def requires(self, module: Module) -> None:
        if module.is_quantized():
            raise QirError("smooth: the module is already quantized; smooth the float model, before calibrate")
        if self.alpha > 1 or self.steps < 1 or self.samples < 0 or self.search_samples < 1:
            raise QirError(f"smooth: needs alpha <= 1 (or < 0 to search), steps >= 1, samples >= 0 and "
                           f"search_samples >= 1; got alpha={self.alpha}, steps={self.steps}, "
                           f"samples={self.samples}, search_samples={self.search_samples}")

    def run(self, module: Module, ctx: PassContext) -> PassResult:
        recipe = load_recipe(self.recipe)
        inputs = ctx.data.get(INPUTS_KEY)
        if not inputs:
            raise QirError("smooth needs calibration inputs: qir-compile provides them from the model's tokenizer; "
                           f"from Python, set ctx.data['{INPUTS_KEY}'] to a list of input tuples")
        inputs = inputs[:self.samples] if self.samples > 0 else inputs
        func = module.main
        pairs = find_pairs(module, func)
        searching = self.alpha < 0
        ranges, rows = self._observe(module, pairs, inputs, self.search_samples if searching else 0)
        report = {}
        with progress_bar() as bar:
            task = bar.add_task("smooth: alpha search" if searching else "smooth", total=len(pairs), status="")
            for pair in pairs:
                report[pair.name] = self._smooth(module, recipe, pair, *ranges[pair.activation.name],
                                                 rows.get(pair.activation.name))
                bar.update(task, advance=1, status=pair.name)
        ctx.data[RESULT_KEY] = report
        return PassResult(modified=any(r["alpha"] is not None for r in report.values()))

    def _observe(self, module, pairs, inputs, search_samples):
        """Per-channel min and max of each pair's X over all inputs; X's rows on the first search_samples."""
        wanted = {p.activation.name for p in pairs}

        def channel_range(name, x):
            if name not in wanted:
                return jnp.zeros((0,), jnp.float32)
            flat = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
            return jnp.stack([flat.min(0), flat.max(0)])

        def with_rows(name, x):
            return (channel_range(name, x), x.reshape(-1, x.shape[-1]).astype(jnp.float32) if name in wanted
                    else jnp.zeros((0,), jnp.float32))

        interpreter = Interpreter(module)
        ranges, rows = {}, {}
        with progress_bar() as bar:
            task = bar.add_task("smooth: channel ranges", total=len(inputs), status="")
            for i, sample in enumerate(inputs):
                keep = i < search_samples
                _, observed = interpreter.run_observed(*sample, key="smooth-rows" if keep else "smooth-ranges",
                                                       observe=with_rows if keep else channel_range)
                for name in wanted:
                    pair = np.asarray(observed[name][0] if keep else observed[name], np.float64)
                    lo, hi = ranges.get(name, (pair[0], pair[1]))
                    ranges[name] = (np.minimum(lo, pair[0]), np.maximum(hi, pair[1]))
                    if keep:
                        rows.setdefault(name, []).append(np.asarray(observed[name][1]))
                bar.update(task, advance=1)
        return ranges, {name: np.concatenate(r) for name, r in rows.items()}

    def _smooth(self, module, recipe, pair: SmoothPair, lo: np.ndarray, hi: np.ndarray, x: np.ndarray | None) -> dict:
        size = int(pair.channels.max()) + 1
        weights = [module.weights.get(lin.operands[1].name).astype(np.float32) for lin in pair.linears]
        amax_x = group_max(np.maximum(np.abs(lo), np.abs(hi)), pair.channels, size)
        amax_w = group_max(np.max([np.abs(w).max(axis=0) for w in weights], axis=0), pair.channels, size)
        if self.alpha >= 0:
            alpha, errors = self.alpha, {}
        else:
            act = recipe.settings_for("activations", pair.activation.name, pair.activation.producer.name,
                                      tuple(op.name for op, _ in pair.activation.uses),
                                      tuple(r.name for op, _ in pair.activation.uses for r in op.results))
            wsets = [weight_settings(module, recipe, lin.operands[1].name) for lin in pair.linears]
            reference = [x @ w.T for w in weights]
            errors = {None: self._error(x, lo, hi, weights, reference, np.ones(size), pair.channels, act, wsets)}
            for a in np.linspace(0.0, 1.0, self.steps + 1):
                s = smoothing_scales(amax_x, amax_w, a)
                errors[round(float(a), 6)] = self._error(x, lo, hi, weights, reference, s, pair.channels, act, wsets)
            alpha = min(errors, key=errors.get)  # ties keep the earlier candidate: no smoothing first
        if alpha is not None:
            fold(module, pair, smoothing_scales(amax_x, amax_w, alpha))
        return {"alpha": alpha, "error": errors.get(alpha), "error_unsmoothed": errors.get(None),
                "errors": {str(k): v for k, v in errors.items()}}

    @staticmethod
    def _error(x, lo, hi, weights, reference, s, channels, act, wsets) -> float:
        """Relative squared error of the pair's outputs with X/s and W diag(s) fake-quantized."""
        s_x = s[channels].astype(np.float32)
        xq = fake_quant_activation(x / s_x, float((lo / s_x).min()), float((hi / s_x).max()), act)
        num = sum(float(np.square(xq @ fake_quant_weight(w * s_x, ws).T - ref).sum())
                  for w, ws, ref in zip(weights, wsets, reference))
        return num / max(sum(float(np.square(ref).sum()) for ref in reference), 1e-30)


def fold(module: Module, pair: SmoothPair, s: np.ndarray) -> None:
    """X -> X / s (the producer's rows or norm weight and bias) and W -> W diag(s) (the linears' columns)."""
    for name in pair.divide:
        data = module.weights.get(name)
        shape = (-1,) + (1,) * (data.ndim - 1)
        module.weights.set(name, (data.astype(np.float64) / s.reshape(shape)).astype(data.dtype))
    s_x = s[pair.channels]
    for lin in pair.linears:
        name = lin.operands[1].name
        data = module.weights.get(name)
        module.weights.set(name, (data.astype(np.float64) * s_x[None, :]).astype(data.dtype))
