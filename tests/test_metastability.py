"""The normalised energy ascent, the staircase and the saddle check against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from transformer_pde import clustering, initial
from transformer_pde import metastability as ms


def _circle(theta):
    theta = np.asarray(theta, dtype=float)
    return np.stack([np.cos(theta), np.sin(theta)], axis=1)


def _circulant_eigenvalues(k: int, beta: float, w: float) -> np.ndarray:
    """Hessian eigenvalues of k equally spaced points of weight w in the angles (closed form).

    E(theta) = (1/2 beta) sum_ij w^2 g(theta_i - theta_j), g = e^{beta cos}: the Hessian is
    circulant with eigenvalues (w^2/beta) sum_{j != 0} g''(phi_j) (1 - cos(m phi_j)).
    """
    phi = 2 * np.pi * np.arange(1, k) / k
    g2 = np.exp(beta * np.cos(phi)) * (beta**2 * np.sin(phi) ** 2 - beta * np.cos(phi))
    return np.sort([w * w / beta * np.sum(g2 * (1 - np.cos(m * phi))) for m in range(k)])


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_hessian_of_equally_spaced_points_is_the_circulant(k):
    beta = 9.0
    x = _circle(2 * np.pi * np.arange(k) / k)
    lam = np.linalg.eigvalsh(ms.energy_hessian(x, beta))
    exact = _circulant_eigenvalues(k, beta, 1.0 / k)
    # two evaluations of the same sums: round-off relative to the largest eigenvalue
    np.testing.assert_allclose(lam, exact, rtol=0, atol=1e-12 * np.abs(exact).max())
    check = ms.saddle_check(x, beta)
    assert check["gradient_norm"] < 1e-12 * np.exp(beta)  # critical by symmetry
    # a source of the ascent: every non-rotational direction ascends (k - 1), rotation flat
    assert (check["n_ascent"], check["n_flat"], check["n_descent"]) == (k - 1, 1, 0)


@pytest.mark.parametrize(("k", "m"), [(2, 3), (3, 2), (4, 2)])
def test_clusters_of_tokens_are_saddles(k, m):
    # k equally spaced clusters of m tokens each: the cluster motions ascend (k - 1, the
    # circulant of the clusters), splitting a cluster descends (k (m - 1) directions, each
    # with eigenvalue (w^2/beta)(m g''(0) + sum over other clusters g''), g''(0) = -beta e^beta)
    beta = 9.0
    x = np.repeat(_circle(2 * np.pi * np.arange(k) / k), m, axis=0)
    check = ms.saddle_check(x, beta)
    assert (check["n_ascent"], check["n_flat"], check["n_descent"]) == (k - 1, 1, k * (m - 1))
    assert check["saddle"]
    w = 1.0 / (k * m)
    phi = 2 * np.pi * np.arange(1, k) / k
    g2 = np.exp(beta * np.cos(phi)) * (beta**2 * np.sin(phi) ** 2 - beta * np.cos(phi))
    split = w * w / beta * (m * (-beta * np.exp(beta)) + m * np.sum(g2))
    np.testing.assert_allclose(check["eigenvalues"][: k * (m - 1)], split, rtol=1e-12)
    # a cluster moving as one: the clusters' circulant (weights 1/k) over the m tokens the
    # unit mode vector spreads over (u_c / sqrt(m) per token), so divided by m
    ascent = _circulant_eigenvalues(k, beta, 1.0 / k)[1:] / m
    # eigvalsh errs by round-off of the largest eigenvalue (the splitting ones, ~beta e^beta w^2)
    scale = np.abs(check["eigenvalues"]).max()
    np.testing.assert_allclose(check["eigenvalues"][-(k - 1):], ascent, rtol=0, atol=1e-13 * scale)


def _geodesic(x, xi, t):
    norm = np.linalg.norm(xi, axis=1, keepdims=True)
    return x * np.cos(t * norm) + xi / norm * np.sin(t * norm)


def test_gradient_and_hessian_are_derivatives_along_geodesics(rng):
    # (E o gamma)'(0) = <grad, xi> and (E o gamma)''(0) = xi^T Hess xi along the geodesic
    # gamma of the product of spheres, at a generic (non-critical) point of S^2; central
    # differences with t = 1e-3 err by ~t^2 |E''''| ~ 1e-6 relative, round-off E eps / t^2 ~ 1e-10
    beta, n, d = 3.0, 5, 3
    x = initial.uniform_tokens(n, d, rng=rng)
    w = rng.uniform(0.5, 1.5, n)
    w /= w.sum()
    xi = rng.normal(size=(n, d))
    xi -= np.sum(xi * x, axis=1, keepdims=True) * x
    energy = lambda y: clustering.interaction_energy(y, beta) if w is None else (  # noqa: E731
        float(w @ np.exp(beta * y @ y.T) @ w) / (2 * beta))
    t = 1e-3
    e_p, e_0, e_m = (energy(_geodesic(x, xi, s)) for s in (t, 0.0, -t))
    first = np.sum(ms.energy_gradient(x, beta, w) * xi)
    assert (e_p - e_m) / (2 * t) == pytest.approx(first, rel=1e-5)
    bases = ms._tangent_bases(x)
    coords = np.einsum("ndk,nd->nk", bases, xi).ravel()
    second = coords @ ms.energy_hessian(x, beta, w) @ coords
    assert (e_p - 2 * e_0 + e_m) / t**2 == pytest.approx(second, rel=1e-5)


def test_ascent_is_monotone_at_unit_speed_and_ends_in_one_cluster(rng):
    beta = 9.0
    x = initial.uniform_tokens(10, 2, rng=rng)
    run = ms.normalized_ascent(x, beta, s_end=10.0, ds=0.02)
    assert run.stopped == "one point"
    assert np.all(np.diff(run.n_points) <= 0)
    # E never decreases except by the snapping loss, at most E (e^{beta snap^2 / 2} - 1)
    snaps = np.diff(run.n_points) < 0
    de = np.diff(run.energy)
    assert np.all(de[~snaps] > -1e-12 * run.energy[1:][~snaps])
    assert np.all(de[snaps] > -run.energy[1:][snaps] * np.expm1(beta * 1e-6 / 2))
    # the final single point carries all the mass: E = e^beta / (2 beta) to the snapping loss
    assert run.weights[-1].tolist() == pytest.approx([1.0], abs=1e-14)
    assert run.energy[-1] == pytest.approx(np.exp(beta) / (2 * beta), rel=1e-3)


def test_staircase_from_equal_clusters_starts_at_their_energy(rng):
    # 4 equal clusters, equally spaced up to 1e-3 and spread 1e-2: the ascent first contracts
    # the clusters, then sits on the plateau of the 4-cluster saddle, then merges. The
    # plateau's level is E(4 clusters) up to O(spread^2 beta) + O(1e-3^2 beta^2) ~ 1e-3
    beta, k, m = 9.0, 4, 6
    centres = 2 * np.pi * np.arange(k) / k + rng.uniform(-1e-3, 1e-3, k)
    theta = np.repeat(centres, m) + rng.normal(0.0, 1e-2, k * m)
    run = ms.normalized_ascent(_circle(theta), beta, s_end=12.0, ds=0.01)
    stairs = run.staircase(min_length=0.05)
    assert stairs.n_points[0] == k
    assert stairs.levels[0] == pytest.approx(ms.equal_clusters_energy(k, beta), rel=2e-3)
    # levels rise as the number of clusters falls
    assert np.all(np.diff(stairs.levels) > 0) and np.all(np.diff(stairs.n_points) <= 0)
    assert 2 in stairs.n_points
    # every two-point plateau is the antipodal pair of its masses w1, w2:
    # E = ((w1^2 + w2^2) e^beta + 2 w1 w2 e^-beta) / (2 beta), up to O(delta^2) off antipodal
    for level, count, start, length in zip(stairs.levels, stairs.n_points, stairs.starts, stairs.lengths,
                                           strict=True):
        if count == 2:
            i = np.searchsorted(run.s, start + 0.5 * length)
            w1, w2 = run.weights[i]
            anti = ((w1**2 + w2**2) * np.exp(beta) + 2 * w1 * w2 * np.exp(-beta)) / (2 * beta)
            assert level == pytest.approx(anti, rel=1e-4)


def test_staircase_of_a_straight_line_has_no_step():
    s = np.linspace(0.0, 1.0, 11)
    assert len(ms.energy_staircase(s, 2.0 * s).levels) == 0
    with pytest.raises(ValueError, match="increasing"):
        ms.energy_staircase(s[::-1], s)
    with pytest.raises(ValueError, match="rtol"):
        ms.energy_staircase(s, s, rtol=2.0)


def test_bad_inputs_name_the_parameter():
    x = _circle([0.0, 1.0])
    with pytest.raises(ValueError, match="unit vectors"):
        ms.normalized_ascent(2 * x, 1.0)
    with pytest.raises(ValueError, match="beta"):
        ms.energy_hessian(x, -1.0)
    with pytest.raises(ValueError, match="snap"):
        ms.normalized_ascent(x, 1.0, snap=-1.0)


def test_gradient_over_weights_is_the_compiled_usa_velocity(rng):
    # the ascent's field is USA's: grad_i E / w_i = P^perp sum_j w_j e^{beta <x_i, x_j>} x_j,
    # the NumPy sums here against the package's compiled kernel (TokenDynamics.velocity):
    # the same sums in another order, round-off relative to the largest speed
    beta = 5.0
    x = initial.uniform_tokens(40, 3, rng=rng)
    w = rng.uniform(0.2, 1.0, 40)
    w /= w.sum()
    import transformer_pde as tp

    dyn = tp.TokenDynamics(tp.UnnormalizedAttention(beta, summation="exact"), geometry="sphere")
    compiled = dyn.velocity(x, weights=w)
    ours = ms.energy_gradient(x, beta, w) / w[:, None]
    np.testing.assert_allclose(ours, compiled, rtol=0, atol=1e-12 * np.abs(compiled).max())
