"""Hadamard constructions and rotation kinds: orthogonal for every size covered, refused otherwise."""
import numpy as np
import pytest

from qir import QirError
from qir.hadamard import hadamard, hadamard_factors, is_covered, paley1, paley2, sylvester
from qir.rotations import KINDS, rotation

# every covered order up to 512, plus the model sizes named in qir/hadamard.py and a few more
COVERED = [n for n in range(1, 513) if is_covered(n)]
MODEL_SIZES = [576, 384, 1536, 960, 2560, 2048, 896, 1152]


def assert_hadamard(h: np.ndarray) -> None:
    n = h.shape[0]
    assert h.shape == (n, n) and set(np.unique(h)) <= {-1, 1}
    gram = h.astype(np.float32) @ h.T.astype(np.float32)  # float BLAS: exact for sums of ±1 below 2^24
    np.testing.assert_array_equal(gram, n * np.eye(n))


def test_coverage_is_what_the_docstring_says():
    assert [n for n in COVERED if n <= 64] == [1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 56, 60, 64]
    assert len(COVERED) == 102  # of the 130 sizes 1, 2, 4, 8, ..., 512 a Hadamard matrix may have
    assert hadamard_factors(576) == (("paley2", 5), ("paley2", 5), ("sylvester", 4))  # 12 · 12 · 4
    assert hadamard_factors(384) == (("paley2", 5), ("sylvester", 32))
    assert hadamard_factors(1536) == (("paley2", 5), ("sylvester", 128))
    assert not is_covered(52) and not is_covered(172) and not is_covered(6)


def test_every_covered_size_is_hadamard():
    for n in COVERED:
        assert_hadamard(hadamard(n))


@pytest.mark.parametrize("n", MODEL_SIZES)
def test_model_sizes(n):
    assert_hadamard(hadamard(n))


@pytest.mark.parametrize("q", [3, 7, 11, 19, 23, 31, 43])
def test_paley1(q):
    assert_hadamard(paley1(q))


@pytest.mark.parametrize("q", [5, 13, 17, 29, 37])
def test_paley2(q):
    assert_hadamard(paley2(q))


def test_constructions_refuse_wrong_parameters():
    with pytest.raises(QirError, match="power of two"):
        sylvester(12)
    with pytest.raises(QirError, match="3 \\(mod 4\\)"):
        paley1(5)
    with pytest.raises(QirError, match="1 \\(mod 4\\)"):
        paley2(7)
    with pytest.raises(QirError, match="no Hadamard construction covers size 52.*kind=random"):
        hadamard(52)


@pytest.mark.parametrize("kind, n", [(kind, n) for kind in KINDS for n in (64, 576)] +
                         [("hadamard", 1536), ("randomized-hadamard", 1536)])
def test_rotation_kinds_are_orthogonal(kind, n):
    r = rotation(kind, n, seed=3)
    np.testing.assert_allclose(r @ r.T, np.eye(n), atol=1e-12)


def test_seeds_and_kinds_differ():
    h = rotation("hadamard", 12, seed=0)
    np.testing.assert_array_equal(h, rotation("hadamard", 12, seed=5))  # deterministic: no seed
    np.testing.assert_array_equal(np.abs(rotation("randomized-hadamard", 12, 0)), np.abs(h))  # only signs
    assert not np.array_equal(rotation("randomized-hadamard", 12, 0), rotation("randomized-hadamard", 12, 1))
    np.testing.assert_array_equal(rotation("random", 52, 4), rotation("random", 52, 4))
    assert not np.allclose(rotation("random", 52, 4), rotation("random", 52, 5))
    with pytest.raises(QirError, match="unknown rotation kind 'givens'"):
        rotation("givens", 4)
