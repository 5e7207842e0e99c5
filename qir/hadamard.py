"""Hadamard matrices of the sizes transformers use, built from two classical constructions.

A Hadamard matrix H of order n has entries ±1 and H·Hᵀ = n·I; H/√n is orthogonal and spreads every
input coordinate evenly over all outputs, which is what makes a rotated tensor easy to quantize.

- Sylvester: order 2^k (H_1 = [1], H_2k = [[H, H], [H, −H]]).
- Paley I: order q + 1 for a prime q ≡ 3 (mod 4) (4, 8, 12, 20, 24, 32, 44, 48, 60, 68, 72, 80, 84, ...).
- Paley II: order 2(q + 1) for a prime q ≡ 1 (mod 4) (12, 28, 36, 60, 76, 84, 108, 124, 140, ...).
- Kronecker products of the above: H_a ⊗ H_b has order a·b.

So every n = 2^k · m1 · m2 · … with each mi a Paley order is covered — among model sizes, e.g.
576 = 12·12·4, 384 = 12·32, 1536 = 12·128, 960 = 12·80, 2560 = 20·128, 5632 = 44·128, and every
power of two. Orders that need other constructions (e.g. 172 = 4·43, so 11008 = 64·172) are refused
with a QirError that names the size. Only prime q is used (prime powers would need finite-field
arithmetic); `hadamard_factors` says what a size decomposes into."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from qir.errors import QirError


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q ** 0.5) + 1))


def sylvester(n: int) -> np.ndarray:
    """The Sylvester Hadamard matrix of order n = 2^k."""
    if n < 1 or n & (n - 1):
        raise QirError(f"Sylvester's construction needs a power of two, not {n}")
    h = np.ones((1, 1), np.int64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _jacobsthal(q: int) -> np.ndarray:
    """Q[i, j] = χ(j − i), χ the quadratic character mod the prime q (0 on the diagonal)."""
    chi = np.full(q, -1, np.int64)
    chi[0] = 0
    chi[[(x * x) % q for x in range(1, q)]] = 1
    return chi[(np.arange(q)[None, :] - np.arange(q)[:, None]) % q]


def paley1(q: int) -> np.ndarray:
    """Order q + 1, q prime ≡ 3 (mod 4): H = I + S with the skew conference matrix S."""
    if not (_is_prime(q) and q % 4 == 3):
        raise QirError(f"Paley I needs a prime q ≡ 3 (mod 4), not {q}")
    s = np.zeros((q + 1, q + 1), np.int64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, _jacobsthal(q)
    return np.eye(q + 1, dtype=np.int64) + s


def paley2(q: int) -> np.ndarray:
    """Order 2(q + 1), q prime ≡ 1 (mod 4): the symmetric conference matrix C with 0 replaced by
    [[1, −1], [−1, −1]] and ±1 by ±[[1, 1], [1, −1]]."""
    if not (_is_prime(q) and q % 4 == 1):
        raise QirError(f"Paley II needs a prime q ≡ 1 (mod 4), not {q}")
    c = np.zeros((q + 1, q + 1), np.int64)
    c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, _jacobsthal(q)
    zero, one = np.array([[1, -1], [-1, -1]]), np.array([[1, 1], [1, -1]])
    return np.kron(c, one) + np.kron((c == 0).astype(np.int64), zero)


@lru_cache(maxsize=None)
def _paley_orders(limit: int) -> tuple[tuple[int, str, int], ...]:
    """(order, construction, q) for every Paley order ≤ limit that is not a power of two, smallest first."""
    found = {}
    for q in range(3, limit):
        if not _is_prime(q):
            continue
        for order, kind in ((q + 1, "paley1"), (2 * (q + 1), "paley2")):
            if order <= limit and (q % 4 == 3) == (kind == "paley1") and order & (order - 1):
                found.setdefault(order, (order, kind, q))
    return tuple(sorted(found.values()))


@lru_cache(maxsize=None)
def hadamard_factors(n: int) -> tuple[tuple[str, int], ...] | None:
    """How order n decomposes: (construction, parameter) factors whose Kronecker product has order
    n — ("paley1", q), ("paley2", q), and one ("sylvester", 2^k) — or None if not covered."""
    if n >= 1 and not n & (n - 1):
        return (("sylvester", n),)
    for order, kind, q in _paley_orders(n):
        if n % order == 0:
            rest = hadamard_factors(n // order)
            if rest is not None:
                return ((kind, q),) + (rest if n > order else ())
    return None


def is_covered(n: int) -> bool:
    return hadamard_factors(n) is not None


def hadamard(n: int) -> np.ndarray:
    """A Hadamard matrix of order n (entries ±1, int64); QirError when no construction covers n."""
    factors = hadamard_factors(n) if isinstance(n, int) and n >= 1 else None
    if factors is None:
        raise QirError(f"no Hadamard construction covers size {n}: covered are 2^k · m1 · m2 · … with each "
                       f"mi = q + 1 (q prime ≡ 3 mod 4) or 2(q + 1) (q prime ≡ 1 mod 4), e.g. 576 = 12·12·4, "
                       f"1536 = 12·128; use kind=random for this size")
    build = {"sylvester": sylvester, "paley1": paley1, "paley2": paley2}
    h = np.ones((1, 1), np.int64)
    for kind, parameter in factors:
        h = np.kron(h, build[kind](parameter))
    return h
