"""Per-value statistics gathered by calibration, and the clipping ranges observers derive from them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qir.errors import QirError

OBSERVERS = ("minmax", "percentile", "mse")


@dataclass
class ValueStats:
    """Range and root mean square of one value over the calibration set, the root mean square of
    its median token (row along the last axis), plus a histogram over [min, max] if gathered."""

    min: float
    max: float
    hist: np.ndarray | None = None
    rms: float | None = None
    token_rms: float | None = None

    def to_json(self) -> dict:
        return {"min": self.min, "max": self.max, **({"rms": self.rms} if self.rms is not None else {}),
                **({"token_rms": self.token_rms} if self.token_rms is not None else {}),
                **({"hist": self.hist.astype(int).tolist()} if self.hist is not None else {})}


def _centers(stats: ValueStats) -> np.ndarray:
    edges = np.linspace(stats.min, stats.max, len(stats.hist) + 1)
    return (edges[:-1] + edges[1:]) / 2


def percentile_range(stats: ValueStats, percentile: float) -> tuple[float, float]:
    """Clip the lowest and highest (100 - percentile) % of the observed values."""
    cdf = np.cumsum(stats.hist) / max(stats.hist.sum(), 1)
    centers = _centers(stats)
    tail = (100.0 - percentile) / 100.0
    lo = centers[min(np.searchsorted(cdf, tail), len(centers) - 1)]
    hi = centers[min(np.searchsorted(cdf, 1 - tail), len(centers) - 1)]
    return float(lo), float(max(hi, lo + 1e-12))


def quantization_error(stats: ValueStats, lo: np.ndarray, hi: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
    """Expected squared error of quantizing the histogram with each candidate range (vectorised)."""
    from qir.quant_params import affine_params
    centers, weights = _centers(stats), stats.hist.astype(np.float64)
    errors = []
    for a, b in zip(lo, hi):
        scale, zero, qmin, qmax = affine_params(a, b, bits, symmetric)
        q = np.clip(np.round(centers / scale) + zero, qmin, qmax)
        errors.append(float((weights * (centers - (q - zero) * scale) ** 2).sum()))
    return np.asarray(errors)


def mse_range(stats: ValueStats, bits: int, symmetric: bool, steps: int = 100) -> tuple[float, float]:
    """The shrink of [min, max] (towards zero, both ends together) that minimises the error."""
    factors = np.linspace(1.0 / steps, 1.0, steps)
    lo, hi = min(stats.min, 0.0) * factors, max(stats.max, 0.0) * factors
    best = int(np.argmin(quantization_error(stats, lo, hi, bits, symmetric)))
    return float(lo[best]), float(hi[best])


def observed_range(stats: ValueStats, observer: str, bits: int, symmetric: bool,
                   percentile: float = 99.99) -> tuple[float, float]:
    if observer == "minmax":
        return stats.min, stats.max
    if stats.hist is None:
        raise QirError(f"observer '{observer}' needs histograms: run calibrate with histogram=true")
    if observer == "percentile":
        return percentile_range(stats, percentile)
    if observer == "mse":
        return mse_range(stats, bits, symmetric)
    raise QirError(f"unknown observer '{observer}'; observers: {', '.join(OBSERVERS)}")
