"""Initial tokens: laws checked by their moments, exact constructions by their Gram matrix."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from transformer_pde import initial


def _a_d(kappa: float, d: int) -> float:
    """Mean resultant length A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa) of the vMF law."""
    return special.ive(d / 2, kappa) / special.ive(d / 2 - 1, kappa)


@pytest.mark.parametrize("d", [2, 3, 8])
def test_uniform_tokens_are_unit_with_isotropic_second_moment(d):
    n = 20000
    x = initial.uniform_tokens(n, d, rng=1)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=0, atol=1e-15)
    # E x = 0 and E x x^T = I/d; each entry's sample error is <= ~1/sqrt(n) = 7e-3: 5 sigma
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=5 / np.sqrt(n))
    np.testing.assert_allclose(x.T @ x / n, np.eye(d) / d, atol=5 / np.sqrt(n))


@pytest.mark.parametrize(("d", "kappa"), [(2, 3.0), (3, 0.5), (3, 50.0), (16, 10.0), (64, 200.0)])
def test_von_mises_fisher_mean_resultant_length(d, kappa):
    n = 20000
    mu = np.zeros(d)
    mu[d // 2] = -2.0  # not a unit vector and not e_1: exercises the reflection
    x = initial.von_mises_fisher_tokens(n, mu, kappa, rng=np.random.default_rng([2, d]))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=0, atol=1e-14)
    w = -x[:, d // 2]
    # E<mu, x> = A_d(kappa); std of w is <= 1, so the mean is within 5/sqrt(n) = 0.035
    # (5 sigma); the spread is much smaller at large kappa, so use the sample's own std
    tol = 5 * w.std() / np.sqrt(n)
    assert abs(w.mean() - _a_d(kappa, d)) <= tol
    # the tangent part is isotropic in mu^perp: its mean vanishes (same 5 sigma bound)
    tangent = np.delete(x, d // 2, axis=1)
    assert np.abs(tangent.mean(axis=0)).max() <= 5 * tangent.std() / np.sqrt(n)


def test_von_mises_fisher_at_zero_concentration_is_uniform():
    x = initial.von_mises_fisher_tokens(20000, [0.0, 0.0, 1.0], 0.0, rng=3)
    np.testing.assert_allclose(x.T @ x / len(x), np.eye(3) / 3, atol=5 / np.sqrt(len(x)))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 12), rho=st.floats(0.0, 1.0), extra=st.integers(0, 3))
def test_equiangular_tokens_have_the_stated_gram_matrix(n, rho, extra):
    x = initial.equiangular_tokens(n, rho, n + extra)
    gram = (1 - rho) * np.eye(n) + rho
    np.testing.assert_allclose(x @ x.T, gram, rtol=0, atol=4e-15)  # a few ulps of 1


def test_equiangular_tokens_at_the_simplex():
    n = 5
    x = initial.equiangular_tokens(n, -1 / (n - 1))
    np.testing.assert_allclose(x @ x.T, (1 + 1 / (n - 1)) * np.eye(n) - 1 / (n - 1), atol=4e-15)
    np.testing.assert_allclose(x.sum(axis=0), 0.0, atol=1e-14)  # the simplex is centred


def test_gaussian_tokens_moments():
    mean = np.array([1.0, -2.0])
    cov = np.array([[2.0, 0.6], [0.6, 0.5]])
    n = 40000
    x = initial.gaussian_tokens(n, mean, cov, rng=4)
    # sample mean within 5 standard errors sqrt(cov_ii / n); covariance within 5 / sqrt(n) * 2
    assert np.all(np.abs(x.mean(axis=0) - mean) <= 5 * np.sqrt(np.diag(cov) / n))
    np.testing.assert_allclose(np.cov(x.T), cov, atol=10 / np.sqrt(n))


def test_cluster_tokens_split_evenly_around_their_centres():
    centers = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    x = initial.cluster_tokens(10, centers, 0.01, rng=5)
    nearest = np.argmax(x @ centers.T, axis=1)
    assert list(np.bincount(nearest)) == [4, 3, 3]
    assert np.max(np.arccos(np.clip(np.sum(x * centers[nearest], axis=1), -1, 1))) < 0.06  # 6 sigma
    e = initial.cluster_tokens(4, [[0.0, 0.0], [10.0, 0.0]], 0.0, rng=0, geometry="euclidean")
    np.testing.assert_array_equal(e[:, 0], [0.0, 0.0, 10.0, 10.0])


@pytest.mark.parametrize(("call", "match"), [
    (lambda: initial.uniform_tokens(3, 1, 0), "d must be >= 2"),
    (lambda: initial.uniform_tokens(0, 3, 0), "n must be >= 1"),
    (lambda: initial.von_mises_fisher_tokens(3, [0.0, 0.0], 1.0, 0), "mean_direction must be a nonzero"),
    (lambda: initial.von_mises_fisher_tokens(3, [1.0, 0.0], -1.0, 0), "concentration must be >= 0"),
    (lambda: initial.equiangular_tokens(3, -0.6), r"rho must be in \[-1/\(n-1\), 1\]"),
    (lambda: initial.equiangular_tokens(3, 0.5, d=2), "d must be >= n = 3"),
    (lambda: initial.gaussian_tokens(3, [0.0, 0.0], [[1.0, 0.0], [0.0, -1.0]], 0), "positive semi-definite"),
    (lambda: initial.cluster_tokens(3, [[1.0, 0.0]], -0.1, 0), "spread must be >= 0"),
])
def test_bad_input_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_same_seed_same_tokens():
    a = initial.von_mises_fisher_tokens(50, [1.0, 2.0, 3.0], 4.0, rng=7)
    b = initial.von_mises_fisher_tokens(50, [1.0, 2.0, 3.0], 4.0, rng=7)
    np.testing.assert_array_equal(a, b)
