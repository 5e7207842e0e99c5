"""Orthogonal matrices by kind, for rotations folded into weights (the rotate pass, and learned
rotations as a starting point).

- `hadamard`: H/√n from qir/hadamard.py (deterministic; sizes as listed there).
- `randomized-hadamard`: H·diag(s)/√n with seeded random signs s ∈ {±1}^n.
- `random`: Q of the QR decomposition of a seeded Gaussian matrix, column signs fixed so that the
  distribution is uniform (Haar) over orthogonal matrices; any size."""
from __future__ import annotations

import numpy as np

from qir.errors import QirError
from qir.hadamard import hadamard

KINDS = ("hadamard", "randomized-hadamard", "random")


def rotation(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """An orthogonal n×n matrix (float64) of `kind`."""
    if kind not in KINDS:
        raise QirError(f"unknown rotation kind '{kind}' (kinds: {', '.join(KINDS)})")
    rng = np.random.default_rng(seed)
    if kind == "random":
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        return q * np.sign(np.diag(r))[None, :]
    h = hadamard(n).astype(np.float64) / np.sqrt(n)
    if kind == "randomized-hadamard":
        h = h * rng.choice([-1.0, 1.0], size=n)[None, :]
    return h
