"""From a real range to scale and zero point, the way integer runtimes expect them."""
from __future__ import annotations

import numpy as np


def affine_params(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) covering [lo, hi] with zero exactly representable.

    Symmetric: signed, zero point 0, scale = max(|lo|, |hi|) / qmax (what int16 activations and
    weights need). Asymmetric: signed storage [-2^(b-1), 2^(b-1)-1] with a zero point."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        scale = max(abs(lo), abs(hi)) / qmax
        return (scale if scale > 0 else 1.0), 0, qmin, qmax
    scale = (hi - lo) / (qmax - qmin)
    if scale <= 0:
        return 1.0, 0, qmin, qmax
    zero = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return scale, zero, qmin, qmax


def symmetric_scales(weights: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """Per-channel symmetric scales: max |w| of each slice along `axis` over qmax."""
    reduce = tuple(i for i in range(weights.ndim) if i != axis)
    amax = np.abs(weights.astype(np.float32)).max(axis=reduce)
    qmax = (1 << (bits - 1)) - 1
    return np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)


def block_scales(weights: np.ndarray, axis: int, block: int, bits: int) -> np.ndarray:
    """Symmetric scales per block of `block` elements along `axis` (shape: axis divided by block)."""
    w = np.moveaxis(weights.astype(np.float32), axis, -1)
    w = w.reshape(w.shape[:-1] + (w.shape[-1] // block, block))
    amax = np.abs(w).max(axis=-1)
    qmax = (1 << (bits - 1)) - 1
    scales = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    return np.moveaxis(scales, -1, axis)
