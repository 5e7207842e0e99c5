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


WEIGHT_CLIPS = np.linspace(0.5, 1.0, 51)  # fractions of max|w| the mse weight observer tries


def clip_factors(rows: np.ndarray, bits: int) -> np.ndarray:
    """For each row (a channel or a block of weights): the fraction c of its max|w| whose symmetric
    grid, scale c·max|w|/qmax, rounds and clips the row with the least squared error. c = 1 is
    plain min/max; rotated weights are near-Gaussian, and at 4 bits clipping the tails pays."""
    qmax = (1 << (bits - 1)) - 1
    amax = np.abs(rows).max(axis=1, keepdims=True)
    amax = np.where(amax > 0, amax, 1.0)
    best, best_error = np.ones(len(rows), np.float32), np.full(len(rows), np.inf)
    for c in WEIGHT_CLIPS[::-1]:  # from 1 down: a tie keeps the wider grid
        scale = c * amax / qmax
        error = ((np.clip(np.round(rows / scale), -qmax - 1, qmax) * scale - rows) ** 2).sum(axis=1)
        better = error < best_error
        best[better], best_error[better] = c, error[better]
    return best


def symmetric_scales(weights: np.ndarray, axis: int, bits: int, observer: str = "minmax") -> np.ndarray:
    """Per-channel symmetric scales: max |w| of each slice along `axis` over qmax (times the
    clip factor of each slice for the mse observer)."""
    w = np.moveaxis(weights.astype(np.float32), axis, 0).reshape(weights.shape[axis], -1)
    amax = np.abs(w).max(axis=1)
    if observer == "mse":
        amax = amax * clip_factors(w, bits)
    qmax = (1 << (bits - 1)) - 1
    return np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)


def block_scales(weights: np.ndarray, axis: int, block: int, bits: int, observer: str = "minmax") -> np.ndarray:
    """Symmetric scales per block of `block` elements along `axis` (shape: axis divided by block)."""
    w = np.moveaxis(weights.astype(np.float32), axis, -1)
    w = w.reshape(w.shape[:-1] + (w.shape[-1] // block, block))
    amax = np.abs(w).max(axis=-1)
    if observer == "mse":
        amax = amax * clip_factors(w.reshape(-1, block), bits).reshape(amax.shape)
    qmax = (1 << (bits - 1)) - 1
    scales = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    return np.moveaxis(scales, -1, axis)


LPBQ_LEVELS = 16  # the integer block scales run 1..16 (4 bits, as HTP reads them; measured: 17 and up are misread)


def lpbq_scales(weights: np.ndarray, block: int, bits: int, observer: str = "minmax") -> tuple[np.ndarray, np.ndarray]:
    """LPBQ's two levels for a weight [out, ..., in] blocked along its last axis: a float scale per
    output channel and an integer k in 1..16 per block, the block's scale being s_c · k.

    From each block's symmetric scale s_b (max|w| / qmax, clipped by the mse observer):
    s_c = max_b s_b / 16, and k = ceil(s_b / s_c), so every block's scale is at least s_b and no
    block clips more than its own per-block scale would; the block with the largest scale gets
    k = 16 exactly. An all-zero block gets k = 1; an all-zero channel the scale 1 / 16."""
    w = weights.astype(np.float32)
    w = w.reshape(w.shape[:-1] + (w.shape[-1] // block, block))
    amax = np.abs(w).max(axis=-1)
    if observer == "mse":
        amax = amax * clip_factors(w.reshape(-1, block), bits).reshape(amax.shape)
    qmax = (1 << (bits - 1)) - 1
    per_block = (amax / qmax).astype(np.float32)
    top = per_block.reshape(per_block.shape[0], -1).max(axis=1)
    channel = np.where(top > 0, top / LPBQ_LEVELS, 1.0 / LPBQ_LEVELS).astype(np.float32)
    ratio = per_block / channel.reshape((-1,) + (1,) * (per_block.ndim - 1))
    k = np.clip(np.ceil(ratio * (1 - 1e-6)), 1, LPBQ_LEVELS).astype(np.uint8)  # 16.000001 from rounding is 16
    return channel, k
