"""gptq: round each quantized linear weight a column at a time, moving the rounding error of each
column onto the columns not yet rounded so the layer's output on calibration inputs changes least
(GPTQ, Frantar et al. 2022). The grids stay as `quantize` (and any learning pass) left them; only
which grid point each weight takes changes, so the emitted graph is the same op for op.

For a weight W (out × in) and its input's second moment H = Σ xᵀx over the calibration tokens,
with U the upper Cholesky factor of (H + λI)⁻¹ (λ = damp · mean diag H): column j rounds to q_j,
and every later column k moves by −(w_j − q_j) · U[j, k] / U[j, j]. Columns go in order of
decreasing H[j, j] (the inputs with the most energy first) when the grid does not depend on the
column (per-tensor and per-channel scales), in their own order for per-block grids.

H is taken from the float module on the calibration inputs, one forward pass for all layers (the
original method re-runs each layer on its quantized predecessors' outputs; one pass keeps the cost
at one calibration sweep), without padding tokens: they are most rows of an encoder's padded
sentences and would otherwise decide the rounding. A weight read by anything but one linear (a tied embedding table) is
left as it is: its other readers would see the moved values.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from qir import Interpreter, Module, Op, Pass, PassContext, PassResult, QirError
from qir.evaluate import WEIGHTS_ROUNDED_ATTR, progress_bar
from qir.fake_quant import lpbq_scales

from passes.learn import FLOAT_REFERENCES_KEY, loss_target, training_inputs

RESULT_KEY = "gptq"
MASK_ARGUMENT = "attention_mask"  # what the encoder frontends name the padding mask


@dataclass(frozen=True)
class Gptq(Pass):
    name = "gptq"
    needs_calibration_inputs = True
    summary = ("GPTQ: round each quantized linear weight column by column, moving each column's rounding "
               "error onto the columns not yet rounded (needs quantize; grids unchanged)")
    damp: float = 0.01   # λ as a fraction of the mean diagonal of H: keeps (H + λI) well conditioned
    block: int = 128     # columns updated together (speed only: the result is the same)
    samples: int = 0     # calibration inputs to measure H on; 0: all given

    def requires(self, module: Module) -> None:
        if not module.is_quantized():
            raise QirError("gptq: the module is not quantized; put 'calibrate' and 'quantize' before 'gptq'")
        if self.damp <= 0 or self.block < 1 or self.samples < 0:
            raise QirError(f"gptq: needs damp > 0, block >= 1 and samples >= 0; got damp={self.damp}, "
                           f"block={self.block}, samples={self.samples}")

    def run(self, module: Module, ctx: PassContext) -> PassResult:
        inputs = training_inputs(module, ctx, self.name, self.samples)
        linears, skipped = rounded_linears(module)
        target = loss_target(module.main).name
        hessians, tokens, references = input_moments(module, sorted({op.operands[0].name for op in linears}), inputs,
                                                     keep=target)
        # a learning pass after this one trains against the float model, which the rounded weights no longer give
        ctx.data.setdefault(FLOAT_REFERENCES_KEY, {})[target] = references
        before = after = 0.0
        factors: dict[tuple[str, bool], tuple[np.ndarray, np.ndarray]] = {}
        with progress_bar() as bar:
            task = bar.add_task("gptq", total=len(linears), status="")
            for op in linears:
                w, h = op.operands[1].name, hessians[op.operands[0].name]
                data = np.asarray(module.weights.get(w), np.float32)
                spec = module.constants[w].quant
                scales = element_scales(module, spec, data.shape)
                by_energy = spec.block_size is None  # a per-block grid follows the natural column order
                key = (op.operands[0].name, by_energy)
                if key not in factors:
                    factors[key] = inverse_factor(h, self.damp, by_energy)
                rounded = gptq_round(data, factors[key], scales, spec.qmin, spec.qmax, self.block)
                before += output_error(data, grid_round(data, scales, spec.qmin, spec.qmax), h)
                after += output_error(data, rounded, h)
                module.weights.set(w, rounded.astype(module.constants[w].type.np_dtype))
                bar.update(task, advance=1, status=w)
        if linears:
            module.attrs[WEIGHTS_ROUNDED_ATTR] = self.name  # the float weights are the rounded ones from now on
        # fewer tokens than input channels: H is singular and the rounding fits the calibration text
        widest = max((len(h) for h in hessians.values()), default=0)
        ctx.data[RESULT_KEY] = {"weights": len(linears), "skipped": skipped, "samples": len(inputs),
                                "tokens": tokens, "widest_input": widest,
                                "output_error_nearest": before, "output_error_gptq": after}
        return PassResult(modified=bool(linears))


def rounded_linears(module: Module) -> tuple[list[Op], list[str]]:
    """The q.linear ops of main whose weight is a quantized constant read by that op alone, and the
    names of quantized linear weights left alone because something else reads them too."""
    func = module.main
    linears, skipped = [], []
    for op in func.ops:
        if op.name != "q.linear" or not op.operands[1].is_constant:
            continue
        w = op.operands[1].name
        if module.constants[w].quant is None or len(op.operands[1].type.shape) != 2:
            continue
        readers = [user for f in module.functions.values() if w in f.used_constants() for user, _ in f.constant(w).uses]
        if len(readers) == 1:
            linears.append(op)
        else:
            skipped.append(w)
    return linears, sorted(set(skipped))


def input_moments(module: Module, names: list[str], inputs: list[tuple], keep: str | None = None
                  ) -> tuple[dict[str, np.ndarray], int, list[jnp.ndarray]]:
    """H = Σ xᵀx over the tokens of every input, for each named value (x: its rows along the last
    axis), from one float forward pass per input, the number of tokens counted, and the value
    `keep` on each input. Padding is left out: where main has an `attention_mask` argument, a value
    with one row per token counts only the rows it marks."""
    wanted = set(names)
    args = [a.name for a in module.main.args]
    mask_at = args.index(MASK_ARGUMENT) if MASK_ARGUMENT in args else None

    def observe(name, x):
        if name == keep:
            return x.astype(jnp.float32)
        return x.astype(jnp.float32).reshape(-1, x.shape[-1]) if name in wanted else jnp.zeros((0,))

    interpreter = Interpreter(module)
    moments: dict[str, np.ndarray] = {}
    tokens, kept = 0, []
    with progress_bar() as bar:
        task = bar.add_task("gptq: input moments", total=len(inputs), status="")
        for sample in inputs:
            _, observed = interpreter.run_observed(*sample, key=f"gptq-rows-{keep}-" + ",".join(names),
                                                   observe=observe)
            if keep is not None:
                kept.append(jnp.asarray(observed[keep]))
            mask = None if mask_at is None else np.asarray(sample[mask_at], np.float32).reshape(-1)
            tokens += int(mask.sum()) if mask is not None else int(np.prod(np.shape(sample[0])))
            for name in names:
                rows = np.asarray(observed[name]).reshape(-1, observed[name].shape[-1])
                weighted = rows * mask[:, None] if mask is not None and len(mask) == len(rows) else rows
                moments[name] = moments.get(name, 0.0) + (weighted.T @ rows).astype(np.float64)
            bar.update(task, advance=1)
    return moments, tokens, kept


def element_scales(module: Module, spec, shape: tuple[int, int]) -> np.ndarray:
    """The grid step of every element of a 2-D weight (per-tensor, per-channel, per-block, LPBQ)."""
    scale = module.weights.get(spec.scale) if isinstance(spec.scale, str) else np.asarray(spec.scale)
    scale = np.asarray(scale, np.float32)
    if spec.block_scale is not None:
        scale = np.asarray(lpbq_scales(spec, scale, module.weights.get(spec.block_scale), shape))
    if spec.axis is None:
        return np.full(shape, scale.reshape(()), np.float32)
    if spec.block_size is None:
        return np.broadcast_to(scale.reshape(shape[0], 1), shape).astype(np.float32)
    blocks = scale.reshape(shape[0], shape[1] // spec.block_size)
    return np.repeat(blocks, spec.block_size, axis=1).astype(np.float32)


def grid_round(w: np.ndarray, scales: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """Round to nearest on the grid, as float32 values that lie exactly on it."""
    q = np.clip(np.round(w.astype(np.float32) / scales), qmin, qmax)
    return (q.astype(np.float32) * scales).astype(np.float32)


def output_error(w: np.ndarray, rounded: np.ndarray, h: np.ndarray) -> float:
    """Σ over calibration tokens of ‖x(W − Ŵ)ᵀ‖²: trace((W − Ŵ) H (W − Ŵ)ᵀ)."""
    d = w.astype(np.float64) - rounded.astype(np.float64)
    return float(np.sum((d @ h) * d))


def inverse_factor(h: np.ndarray, damp: float = 0.01, by_energy: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The column order and U, the upper Cholesky factor of (H + λI)⁻¹ in that order, for weights
    whose input has second moment H (in × in); linears reading one input share it."""
    n = len(h)
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0  # an input that is always 0: its column cannot matter
    h[dead, dead] = 1.0
    order = np.argsort(-np.diag(h), kind="stable") if by_energy else np.arange(n)
    h = h[order][:, order]
    h[np.diag_indices(n)] += damp * np.mean(np.diag(h))
    try:
        return order, np.linalg.cholesky(np.linalg.inv(h)).T
    except np.linalg.LinAlgError as e:
        raise QirError(f"gptq: the input moment matrix is not positive definite even with damp={damp}; "
                       f"raise damp") from e


def gptq_round(w: np.ndarray, factor: tuple[np.ndarray, np.ndarray], scales: np.ndarray, qmin: int, qmax: int,
               block: int = 128) -> np.ndarray:
    """W (out × in) rounded column by column onto `scales`' grid, each column's error moved onto the
    columns after it through `factor` (`inverse_factor` of its input's H). Returns float32 values on
    the grid."""
    order, u = factor
    n = w.shape[1]
    # rows of the transposes are the columns: contiguous, so each column's step touches memory in order
    wt = np.array(w.T[order], np.float64)
    st = np.ascontiguousarray(scales.T[order], np.float64)
    out = np.zeros_like(wt)
    for start in range(0, n, block):
        stop = min(start + block, n)
        part, errors = wt[start:stop].copy(), np.zeros((stop - start, w.shape[0]))
        for j in range(stop - start):
            s = st[start + j]
            out[start + j] = np.clip(np.round(part[j] / s), qmin, qmax) * s
            errors[j] = (part[j] - out[start + j]) / u[start + j, start + j]
            part[j:] -= np.outer(u[start + j, start + j:stop], errors[j])
        wt[stop:] -= u[start:stop, stop:].T @ errors
    back = np.empty_like(order)
    back[order] = np.arange(n)
    # snap onto the float32 grid the backends store: q · s in float32
    return grid_round(out[back].T.astype(np.float32), scales, qmin, qmax)
