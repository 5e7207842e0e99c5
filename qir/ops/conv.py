"""Convolution ops for small image/video models, in NHWC layout (the layout NPUs run)."""
from __future__ import annotations

import jax

from qir.errors import QirError
from qir.ir import Op, REQUIRED
from qir.ops.base import require_float


class Conv2d(Op):
    """NHWC input, OHWI weight (as TFLite), optional bias [O]; padding "same" or "valid"."""

    name = "q.conv2d"
    num_operands = (2, 3)
    attributes = {"stride": (1, 1), "padding": "same"}

    def infer_types(self):
        x, w = self.operands[0].type, self.operands[1].type
        require_float(self, x)
        if x.rank != 4 or w.rank != 4 or w.shape[3] != x.shape[3]:
            raise QirError(f"{self.name}: input {x} (NHWC) and weight {w} (OHWI) do not match")
        if len(self.operands) == 3 and self.operands[2].type.shape != (w.shape[0],):
            raise QirError(f"{self.name}: bias {self.operands[2].type} must be [{w.shape[0]}]")
        padding = self.attrs["padding"]
        if padding not in ("same", "valid"):
            raise QirError(f'{self.name}: padding must be "same" or "valid", not {padding!r}')
        sh, sw = self.attrs["stride"]
        if padding == "same":
            h, wd = -(-x.shape[1] // sh), -(-x.shape[2] // sw)
        else:
            h, wd = (x.shape[1] - w.shape[1]) // sh + 1, (x.shape[2] - w.shape[2]) // sw + 1
        return [x.with_shape((x.shape[0], h, wd, w.shape[0]))]

    def jax(self, x, w, b=None):
        y = jax.lax.conv_general_dilated(
            x, w.astype(x.dtype), window_strides=tuple(self.attrs["stride"]),
            padding=self.attrs["padding"].upper(), dimension_numbers=("NHWC", "OHWI", "NHWC"),
            precision=jax.lax.Precision.HIGHEST)
        return y if b is None else y + b.astype(x.dtype)


class DepthToSpace(Op):
    """NHWC depth-to-space (pixel shuffle) with TFLite's DCR channel order."""

    name = "q.depth_to_space"
    attributes = {"block": REQUIRED}

    def infer_types(self):
        x, r = self.operands[0].type, self.attrs["block"]
        if x.rank != 4 or r < 1 or x.shape[3] % (r * r):
            raise QirError(f"{self.name}: channels of {x} must be divisible by block^2 = {r * r}")
        n, h, w, c = x.shape
        return [x.with_shape((n, h * r, w * r, c // (r * r)))]

    def jax(self, x):
        r = self.attrs["block"]
        n, h, w, c = x.shape
        y = x.reshape(n, h, w, r, r, c // (r * r)).transpose(0, 1, 3, 2, 4, 5)
        return y.reshape(n, h * r, w * r, c // (r * r))
