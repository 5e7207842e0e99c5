"""calibrate: run the float model over calibration inputs and record each value's range, its root
mean square and its median token's root mean square (and, for the percentile and MSE observers, a
histogram over that range)."""
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from qir import Interpreter, Module, Pass, PassContext, PassResult, QirError
from qir.calibration_data import INPUTS_KEY
from qir.evaluate import progress_bar
from qir.stats import ValueStats

STATS_KEY = "calibration"  # ctx.data entry written here: {value name: ValueStats}
HISTOGRAM_SAMPLE = 1 << 18  # elements per value and sample that enter its histogram


@dataclass(frozen=True)
class Calibrate(Pass):
    name = "calibrate"
    needs_calibration_inputs = True
    summary = "record per-value ranges (and histograms) of the float model on calibration data"
    samples: int = 0  # at most this many of the given inputs; 0: all of them
    histogram: bool = True
    bins: int = 2048

    def run(self, module: Module, ctx: PassContext) -> PassResult:
        inputs = ctx.data.get(INPUTS_KEY)
        if not inputs:
            raise QirError("calibrate needs calibration inputs: qir-compile provides them from the model's "
                           f"tokenizer; from Python, set ctx.data['{INPUTS_KEY}'] to a list of input tuples")
        inputs = inputs[:self.samples] if self.samples > 0 else inputs
        interpreter = Interpreter(module)
        ranges, mean_squares, token_squares = self._ranges(interpreter, inputs)
        stats = {name: ValueStats(lo, hi, rms=float(np.sqrt(mean_squares[name] / len(inputs))),
                                  token_rms=float(np.sqrt(token_squares[name] / len(inputs))))
                 for name, (lo, hi) in ranges.items()}
        if self.histogram:
            for name, hist in self._histograms(interpreter, inputs, ranges).items():
                stats[name].hist = hist
        ctx.data[STATS_KEY] = stats
        return PassResult(modified=False)

    def _ranges(self, interpreter, inputs) -> tuple[dict[str, tuple[float, float]], dict[str, float],
                                                    dict[str, float]]:
        """Each value's (min, max) over all inputs, and the sums over inputs of its mean square and
        of its median token's mean square (a token: a row along the last axis)."""
        ranges: dict[str, tuple[float, float]] = {}
        mean_squares: dict[str, float] = {}
        token_squares: dict[str, float] = {}

        def observe(name, x):
            x = x.astype(jnp.float32)
            squares = jnp.square(x).reshape(-1, x.shape[-1]) if x.ndim else jnp.square(x).reshape(1, 1)
            return jnp.stack([x.min(), x.max(), jnp.mean(squares), jnp.median(squares.mean(axis=1))])

        with progress_bar() as bar:
            task = bar.add_task("calibrate: ranges", total=len(inputs), status="")
            for sample in inputs:
                _, observed = interpreter.run_observed(*sample, key="minmax-rms", observe=observe)
                for name, observed_stats in observed.items():
                    lo, hi, mean_square, token_square = (float(v) for v in np.asarray(observed_stats))
                    old = ranges.get(name, (lo, hi))
                    ranges[name] = (min(old[0], lo), max(old[1], hi))
                    mean_squares[name] = mean_squares.get(name, 0.0) + mean_square
                    token_squares[name] = token_squares.get(name, 0.0) + token_square
                bar.update(task, advance=1)
        return ranges, mean_squares, token_squares

    def _histograms(self, interpreter, inputs, ranges) -> dict[str, np.ndarray]:
        bins = self.bins

        def observe(name, x):  # the bounds are fixed Python numbers for this interpreter
            lo, hi = ranges[name]
            width = max(hi - lo, 1e-12) / bins
            flat = x.astype(jnp.float32).reshape(-1)
            flat = flat[::max(1, flat.size // HISTOGRAM_SAMPLE)]  # an even subsample keeps big tensors cheap
            index = jnp.clip(jnp.floor((flat - lo) / width), 0, bins - 1)
            return jnp.bincount(index.astype(jnp.int32), length=bins)

        hists: dict[str, np.ndarray] = {}
        with progress_bar() as bar:
            task = bar.add_task("calibrate: histograms", total=len(inputs), status="")
            for sample in inputs:
                _, observed = interpreter.run_observed(*sample, key=f"histogram-{bins}", observe=observe)
                for name, hist in observed.items():
                    hists[name] = hists.get(name, 0) + np.asarray(hist, np.int64)
                bar.update(task, advance=1)
        return hists
