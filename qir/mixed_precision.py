"""Mixed precision by signal-to-noise: an activation whose 8-bit grid would bury its typical token
in rounding noise takes 16 bits instead.

A static grid must span a tensor's largest value, so a tensor with a few huge values (SmolLM2's
FFN-down input reaches 600x its root mean square in two blocks) is left a step wider than its
typical element. The rounding noise of a grid with step s is s^2/12 per element; against the
calibrated mean square of the tensor's median token (row along the last axis) that gives the
grid's SQNR, which is what `quantize{min_sqnr=...}` tests. The median token, not the whole tensor:
a few massive tokens (SmolLM2's FFN outputs write the residual stream's massive activations)
dominate the tensor's mean square and would hide that every other token sits below the grid's
step. See docs/quantization.md#mixed-precision-by-sqnr.
"""
from __future__ import annotations

import math

from qir.errors import QirError
from qir.stats import ValueStats


def grid_sqnr_db(stats: ValueStats, scale: float) -> float:
    """SQNR (dB) of rounding the calibrated value's median token to a grid of step `scale`
    (clipping not counted)."""
    if stats.token_rms is None:
        raise QirError("this value's calibration statistics have no per-token root mean square; "
                       "run calibrate again")
    noise = scale * scale / 12.0
    return math.inf if stats.token_rms == 0.0 else 10.0 * math.log10(stats.token_rms ** 2 / noise)
