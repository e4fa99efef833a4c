"""Wasserstein distances (issue 4, item 2): every function against an independent computation.

Independent means another algorithm or a closed form derived here: ``ot.emd2`` with the
geodesic cost (network simplex) for ``circle``; POT's own circle solver
(``ot.wasserstein_circle``, binary search in turns) and its semi-discrete uniform formula;
``scipy.stats.wasserstein_distance`` and ``ot.wasserstein_1d`` on R^1;
``scipy.linalg.sqrtm`` and ``ot.gaussian.bures_wasserstein_distance`` for Gaussians;
``scipy.optimize.linear_sum_assignment`` for equal-weight point sets; and closed forms
(two Diracs, a Dirac against the uniform measure, equally spaced points against the uniform
measure, translations, products). Each tolerance says why it is what it is.
"""

from __future__ import annotations

import numpy as np
import ot
import pytest
import scipy.linalg
import scipy.optimize
import scipy.stats
from conftest import random_sphere

import transformer_pde.wasserstein as tw
from transformer_pde.meanfield import CartesianGrid, CausalCircleGrid, CircleGrid, Density, SphereGrid

TWO_PI = 2.0 * np.pi


def _pts(theta):
    return np.stack([np.cos(theta), np.sin(theta)], axis=1)


def _geodesic_circle(a, b):
    d = np.mod(np.abs(a - b), TWO_PI)
    return np.minimum(d, TWO_PI - d)


def _random_rotation(rng, d=3):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _pot_circle(ta, tb, p, wa=None, wb=None):
    """POT's circle solver: positions in turns [0, 1), returns W_p^p in turns^p."""
    cost = ot.wasserstein_circle(np.mod(ta / TWO_PI, 1.0), np.mod(tb / TWO_PI, 1.0), wa, wb, p=p)
    return TWO_PI * float(np.asarray(cost).ravel()[0]) ** (1.0 / p)


# -- circle: closed forms ------------------------------------------------------------------
@pytest.mark.parametrize("p", [1, 2, 3.5])
def test_circle_two_diracs_is_the_geodesic_distance(p):
    for a, b in [(0.1, 0.4), (0.2, 6.1), (1.0, 1.0 + np.pi - 1e-9), (-3.0, 7.0), (0.0, np.pi)]:
        # W_p(delta_a, delta_b) = d(a, b) for every p; a few ulps of 2 pi from the mod 2 pi
        assert tw.circle([a], [b], p) == pytest.approx(_geodesic_circle(a, b), abs=1e-12)


def test_circle_is_w_p_not_w_p_to_the_p_and_scales_linearly():
    """A measure inside an arc of length 1 < pi - s, rotated by s: W_p = s exactly for all p
    (on such an arc the circle's metric is the line's, where a translation by s costs s)."""
    rng = np.random.default_rng(7)
    theta = rng.uniform(0.0, 1.0, 40)
    w = rng.random(40)
    for p in (1, 2, 3):
        for s in (0.01, 0.1, 0.7):
            # the optimal rotation is an exact kink; round-off of theta + s (measured 1e-15)
            assert tw.circle(theta, theta + s, p, w, w) == pytest.approx(s, rel=1e-12)


@pytest.mark.parametrize("p", [1, 2])
def test_circle_agrees_with_emd_geodesic_on_random_weighted_samples(p):
    rng = np.random.default_rng(11)
    for trial in range(30):
        n, m = rng.integers(1, 30, size=2)
        ta = rng.vonmises(0.0, 2.0, n) if trial % 2 else rng.uniform(-10.0, 10.0, n)
        tb = rng.uniform(0.0, TWO_PI, m)
        wa, wb = rng.random(n), rng.random(m)
        ours = tw.circle(ta, tb, p, wa, wb)
        emd = tw.particles(_pts(ta), _pts(tb), p, wa, wb, metric="geodesic")
        # both exact: network simplex vs quantiles; round-off of ~100-term sums
        assert ours == pytest.approx(emd, rel=1e-9, abs=1e-12)


def test_circle_p_between_1_and_2_and_large_agrees_with_emd(rng):
    ta, tb = rng.uniform(0, TWO_PI, 17), rng.vonmises(2.0, 1.0, 23)
    for p in (1.5, 4.0):
        # exact both ways; the |t|^p closed form per piece is exact up to round-off
        assert tw.circle(ta, tb, p) == pytest.approx(
            tw.particles(_pts(ta), _pts(tb), p, metric="geodesic"), rel=1e-9)


@pytest.mark.parametrize("p", [1, 2])
def test_circle_agrees_with_pot_circle_solver(rng, p):
    ta, tb = rng.vonmises(0.5, 1.0, 300), rng.vonmises(-1.0, 3.0, 200)
    wa = rng.random(300)
    # POT's binary search stops at 1e-6 (in turns) on the rotation, then interpolates
    assert tw.circle(ta, tb, p, wa) == pytest.approx(_pot_circle(ta, tb, p, wa / wa.sum()), rel=1e-6)


def test_circle_accepts_unit_vectors(rng):
    ta, tb = rng.uniform(0, TWO_PI, 9), rng.uniform(0, TWO_PI, 5)
    # the same angles through arctan2: a few ulps
    assert tw.circle(_pts(ta), _pts(tb)) == pytest.approx(tw.circle(ta, tb), rel=1e-12)


def test_circle_rotation_invariance_and_symmetry(rng):
    ta, tb = rng.uniform(0, TWO_PI, 31), rng.vonmises(1.0, 2.0, 19)
    wa, wb = rng.random(31), rng.random(19)
    for p in (1, 2):
        base = tw.circle(ta, tb, p, wa, wb)
        for phi in (0.3, 2.9, -5.0):
            # rotating both sets: only round-off of the angles mod 2 pi
            assert tw.circle(ta + phi, tb + phi, p, wa, wb) == pytest.approx(base, rel=1e-10)
        # symmetry: the same quantiles with the roles swapped
        assert tw.circle(tb, ta, p, wb, wa) == pytest.approx(base, rel=1e-10)
        # reflection theta -> -theta is an isometry too
        assert tw.circle(-ta, -tb, p, wa, wb) == pytest.approx(base, rel=1e-10)


def test_circle_triangle_inequality(rng):
    for _ in range(20):
        a, b, c = (rng.vonmises(rng.uniform(0, TWO_PI), rng.uniform(0.1, 5), rng.integers(1, 25))
                   for _ in range(3))
        for p in (1, 2):
            ab, bc, ac = tw.circle(a, b, p), tw.circle(b, c, p), tw.circle(a, c, p)
            # exact distances: the inequality holds up to round-off
            assert ac <= ab + bc + 1e-12


def test_circle_identical_is_zero(rng):
    t = rng.uniform(0, TWO_PI, 50)
    # the kink s = 0 (an exact difference of equal cumulative weights) is tried: exactly 0
    assert tw.circle(t, np.flip(t)) == 0.0


# -- particles --------------------------------------------------------------------------------
def test_particles_equal_weights_is_an_assignment(rng):
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)) + 0.5
    for p in (1, 2, 3):
        cost = np.linalg.norm(x[:, None] - y[None], axis=-1) ** p
        i, j = scipy.optimize.linear_sum_assignment(cost)
        # uniform weights, n = m: OT is an assignment (Birkhoff); both exact
        assert tw.particles(x, y, p) == pytest.approx(cost[i, j].mean() ** (1 / p), rel=1e-12)


def test_particles_1d_against_scipy(rng):
    x, y = rng.normal(size=40), rng.exponential(size=25)
    wx, wy = rng.random(40), rng.random(25)
    # scipy's quantile formula vs network simplex, both exact
    assert tw.particles(x, y, 1, wx, wy) == pytest.approx(
        scipy.stats.wasserstein_distance(x, y, wx, wy), rel=1e-12)


def test_particles_translation_and_scaling_are_linear(rng):
    x, y = rng.normal(size=(20, 2)), rng.normal(size=(15, 2))
    v = np.array([0.3, -0.4])
    for p in (1, 2):
        # a translation by v costs |v| = 0.5 exactly (W_p, not W_p^p = 0.5^p)
        assert tw.particles(x, x + v, p) == pytest.approx(0.5, rel=1e-12)
        base = tw.particles(x, y, p)
        # homogeneity of degree 1 (W_p^p would scale by 3^p)
        assert tw.particles(3.0 * x, 3.0 * y, p) == pytest.approx(3.0 * base, rel=1e-12)
        # symmetry
        assert tw.particles(y, x, p) == pytest.approx(base, rel=1e-12)


def test_particles_triangle_inequality(rng):
    for metric in ("euclidean", "geodesic"):
        for _ in range(10):
            a, b, c = (random_sphere(rng, int(rng.integers(2, 20)), 3) for _ in range(3))
            for p in (1, 2):
                ab = tw.particles(a, b, p, metric=metric)
                bc = tw.particles(b, c, p, metric=metric)
                ac = tw.particles(a, c, p, metric=metric)
                # exact distances: round-off only
                assert ac <= ab + bc + 1e-12


def test_particles_geodesic_rotation_invariance_and_two_diracs(rng):
    x, y = random_sphere(rng, 15, 3), random_sphere(rng, 11, 3)
    rot = _random_rotation(rng)
    # rotation preserves the cost matrix up to round-off
    assert tw.particles(x @ rot.T, y @ rot.T, 2, metric="geodesic") == pytest.approx(
        tw.particles(x, y, 2, metric="geodesic"), rel=1e-12)
    u, w = x[:1], x[1:2]
    angle = np.arccos(np.clip(u[0] @ w[0], -1, 1))
    # two Diracs: the great-circle distance (arccos is accurate away from 0 and pi)
    assert tw.particles(u, w, 3, metric="geodesic") == pytest.approx(angle, rel=1e-12)
    # the same point: the atan2 form gives exactly 0 (arccos would give ~1e-8)
    assert tw.particles(x, x, 2, metric="geodesic") == 0.0


# -- sphere_sliced --------------------------------------------------------------------------------
def test_sphere_sliced_zero_positive_and_seeded(rng):
    x = random_sphere(rng, 60, 3)
    y = random_sphere(rng, 50, 3) + np.array([0.0, 0.0, 1.5])
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    assert tw.sphere_sliced(x, x, n_projections=32, rng=1) == 0.0
    d1 = tw.sphere_sliced(x, y, n_projections=32, rng=1)
    assert d1 > 0.1
    # same seed, same projections: bit-identical
    assert tw.sphere_sliced(x, y, n_projections=32, rng=1) == d1
    assert tw.sphere_sliced(x, y, n_projections=32, rng=np.random.default_rng(1)) == d1
    assert tw.sphere_sliced(x, y, n_projections=32, rng=2) != d1


def test_sphere_sliced_on_the_circle_is_w_p():
    rng = np.random.default_rng(3)
    ta, tb = rng.vonmises(0.0, 2.0, 40), rng.vonmises(2.0, 1.0, 30)
    wb = rng.random(30)
    for p in (1, 2):
        # d = 2: every projection is an isometry; POT's binary search stops at 1e-6 turns
        assert tw.sphere_sliced(_pts(ta), _pts(tb), p, n_projections=8, rng=0, b_weights=wb) == \
            pytest.approx(tw.circle(ta, tb, p, b_weights=wb), rel=1e-6)


def test_sphere_sliced_dirac_against_uniform_closed_form(rng):
    """Every great-circle projection of the uniform measure on S^2 is uniform on the circle
    and a Dirac stays a Dirac, so SSW_p(delta, unif) = W_p(delta, unif on S^1) = pi/(p+1)^(1/p)
    whatever the projections. The uniform measure is replaced by 4000 samples."""
    north = np.array([[0.0, 0.0, 1.0]])
    u = random_sphere(rng, 4000, 3)
    for p in (1, 2):
        # sampling error of the projected uniform measure ~ 1/sqrt(4000) relative: 3%
        assert tw.sphere_sliced(north, u, p, n_projections=24, rng=5) == pytest.approx(
            np.pi / (p + 1) ** (1 / p), rel=0.03)


def test_sphere_sliced_rotation_invariance_and_triangle(rng):
    x, y, z = (random_sphere(rng, 40, 3) for _ in range(3))
    y = (y + [1.0, 0.0, 0.0]) / np.linalg.norm(y + [1.0, 0.0, 0.0], axis=1, keepdims=True)
    rot = _random_rotation(rng)
    a = tw.sphere_sliced(x, y, n_projections=400, rng=10)
    b = tw.sphere_sliced(x @ rot.T, y @ rot.T, n_projections=400, rng=11)
    # equal in distribution; two independent 400-projection estimates differ by a few %
    assert b == pytest.approx(a, rel=0.05)
    # with common projections the estimate is an L^p mean of circle distances: a metric up
    # to POT's 1e-6 (turns) tolerance per circle
    xy = tw.sphere_sliced(x, y, n_projections=50, rng=4)
    yz = tw.sphere_sliced(y, z, n_projections=50, rng=4)
    xz = tw.sphere_sliced(x, z, n_projections=50, rng=4)
    assert xz <= xy + yz + 1e-5


# -- gaussian -------------------------------------------------------------------------------------
def _bures_reference(ma, sa, mb, sb):
    """The textbook trace formula with scipy's matrix square root."""
    ra = scipy.linalg.sqrtm(sa)
    cross = scipy.linalg.sqrtm(ra @ sb @ ra)
    return np.sqrt(np.sum((ma - mb) ** 2) + np.trace(sa + sb - 2.0 * cross).real)


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_gaussian_1d_closed_form():
    for m1, s1, m2, s2 in [(0.0, 1.0, 1.0, 2.0), (-3.0, 0.5, 0.5, 0.5), (1.0, 2.0, 1.0, 0.0)]:
        # W_2 = sqrt((m1 - m2)^2 + (s1 - s2)^2) for N(m, s^2); round-off only
        expected = np.hypot(m1 - m2, s1 - s2)
        assert tw.gaussian(m1, s1**2, m2, s2**2) == pytest.approx(expected, rel=1e-14, abs=1e-15)
        assert tw.gaussian([m1], [[s1**2]], [m2], [[s2**2]]) == pytest.approx(expected, rel=1e-14,
                                                                               abs=1e-15)


def test_gaussian_commuting_covariances(rng):
    rot = _random_rotation(rng, 4)
    a, b = rng.uniform(0.1, 3.0, 4), rng.uniform(0.1, 3.0, 4)
    ma, mb = rng.normal(size=4), rng.normal(size=4)
    sa, sb = rot @ np.diag(a) @ rot.T, rot @ np.diag(b) @ rot.T
    expected = np.sqrt(np.sum((ma - mb) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    # shared eigenbasis: sum of 1-D terms; round-off of two eigendecompositions
    assert tw.gaussian(ma, sa, mb, sb) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("d", [2, 3, 5])
def test_gaussian_non_commuting_against_sqrtm_and_pot(rng, d):
    ma, mb, sa, sb = rng.normal(size=d), rng.normal(size=d), _spd(rng, d), _spd(rng, d)
    ours = tw.gaussian(ma, sa, mb, sb)
    # scipy's Schur-based sqrtm: accurate to ~1e-12 relative on these well-conditioned matrices
    assert ours == pytest.approx(_bures_reference(ma, sa, mb, sb), rel=1e-10)
    pot = float(ot.gaussian.bures_wasserstein_distance(ma, mb, sa, sb))
    assert ours == pytest.approx(pot, rel=1e-10)
    # symmetry and the metric's triangle inequality (Bures-Wasserstein is a metric)
    assert tw.gaussian(mb, sb, ma, sa) == pytest.approx(ours, rel=1e-12)
    mc, sc = rng.normal(size=d), _spd(rng, d)
    assert tw.gaussian(ma, sa, mc, sc) <= ours + tw.gaussian(mb, sb, mc, sc) + 1e-12


def test_gaussian_stable_at_zero_singular_and_scaling(rng):
    sa = _spd(rng, 3)
    m = rng.normal(size=3)
    # the sum-of-squares form keeps full precision at zero (the trace formula gives ~1e-8)
    assert tw.gaussian(m, sa, m, sa) < 1e-13
    # a translation by v costs |v|
    v = np.array([0.3, 0.0, -0.4])
    assert tw.gaussian(m, sa, m + v, sa) == pytest.approx(0.5, rel=1e-10)
    # rank-deficient covariances: N(0, diag(1, 0)) vs N(0, diag(4, 0)) is the 1-D |1 - 2|
    assert tw.gaussian([0, 0], np.diag([1.0, 0.0]), [0, 0], np.diag([4.0, 0.0])) == \
        pytest.approx(1.0, rel=1e-14)
    # W_2(N(l m_a, l^2 S_a), N(l m_b, l^2 S_b)) = l W_2: linear, so W_2 and not W_2^2
    sb, mb = _spd(rng, 3), rng.normal(size=3)
    assert tw.gaussian(2 * m, 4 * sa, 2 * mb, 4 * sb) == pytest.approx(
        2 * tw.gaussian(m, sa, mb, sb), rel=1e-12)


# -- to_density: circle ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_cells", [16, 97])
def test_to_density_circle_dirac_against_uniform(n_cells):
    """W_p^p(delta, unif) = (1/2 pi) int_{-pi}^{pi} |t|^p dt = pi^p / (p + 1):
    W_1 = pi / 2, W_2 = pi / sqrt(3); exact for any cell count (the uniform density is
    piecewise constant) and any position of the Dirac."""
    u = Density.uniform(CircleGrid(n_cells))
    for where in (0.0, 1.0, 0.3 * np.pi):
        # exact method: round-off only
        assert tw.to_density([where], u, 1) == pytest.approx(np.pi / 2, rel=1e-12)
        assert tw.to_density([where], u, 2) == pytest.approx(np.pi / np.sqrt(3), rel=1e-12)


@pytest.mark.parametrize("n", [1, 3, 10])
def test_to_density_circle_equally_spaced_against_uniform(n):
    """n points at the centres of n equal arcs, against the uniform density: the mass of
    each arc goes to its centre, which is the nearest point for every unit of mass, so it is
    optimal and W_p^p = (n / 2 pi) int_{-pi/n}^{pi/n} |t|^p dt = (pi / n)^p / (p + 1):
    W_1 = pi / (2n), W_2 = pi / (sqrt(3) n)."""
    u = Density.uniform(CircleGrid(64))
    x = (np.arange(n) + 0.5) * TWO_PI / n + 0.123
    # exact method: round-off only
    assert tw.to_density(x, u, 1) == pytest.approx(np.pi / (2 * n), rel=1e-11)
    assert tw.to_density(x, u, 2) == pytest.approx(np.pi / (np.sqrt(3) * n), rel=1e-11)


def test_to_density_circle_against_pot_semidiscrete_uniform(rng):
    x = rng.vonmises(1.0, 1.0, 80)
    w = rng.random(80)
    u = np.mod(x / TWO_PI, 1.0)
    order = np.argsort(u)  # POT's formula sums the weights of the points before each one: sort
    turns2 = float(np.asarray(ot.semidiscrete_wasserstein2_unif_circle(
        u[order][:, None], (w[order] / w.sum())[:, None])).ravel()[0])
    # POT's closed form for W_2^2 against the uniform measure, in turns^2; round-off only
    assert tw.to_density(x, Density.uniform(CircleGrid(40)), 2, weights=w) == pytest.approx(
        TWO_PI * np.sqrt(turns2), rel=1e-10)


@pytest.mark.parametrize("p", [1, 2])
def test_to_density_circle_against_fine_subcell_points(rng, p):
    """The piecewise-constant density replaced by K points per cell at the sub-cell midpoints
    (mass rho_c h / K each) is within W_p <= h / (2K) of it (move each sub-cell's mass to its
    midpoint); W_p to that fine point set is then computed by POT's circle solver."""
    grid = CircleGrid(48)
    rho = Density.from_function(grid, lambda t: np.exp(1.5 * np.cos(t - 1.0)) + 0.2 * np.sin(3 * t) ** 2)
    x = rng.vonmises(0.0, 1.0, 60)
    k = 100
    fine = (np.arange(grid.n_cells * k) + 0.5) * grid.h / k
    fine_w = np.repeat(rho.values * grid.h / k, k)
    fine_w /= fine_w.sum()
    ours = tw.to_density(x, rho, p)
    ref = _pot_circle(x, fine, p, None, fine_w)
    # discretisation h/(2K) plus POT's 1e-6-turn stopping rule
    assert abs(ours - ref) <= grid.h / (2 * k) + 1e-5
    # also through our own discrete solver (quantiles of atoms instead of cells)
    assert abs(ours - tw.circle(x, fine, p, b_weights=fine_w)) <= grid.h / (2 * k)


def test_to_density_circle_cells_method_within_half_a_cell(rng):
    grid = CircleGrid(32)
    rho = Density.from_function(grid, lambda t: np.exp(np.cos(t)))
    x = rng.vonmises(0.5, 1.0, 50)
    for p in (1, 2):
        exact, cells = tw.to_density(x, rho, p), tw.to_density(x, rho, p, method="cells")
        # the stated bias bound r_h = h/2 (triangle inequality, each cell collapsed to its centre)
        assert abs(exact - cells) <= grid.h / 2
        # and the cells value is the discrete circle distance to the centre masses (exact)
        assert cells == pytest.approx(tw.circle(x, grid.angles, p, b_weights=rho.values), rel=1e-12)


def test_to_density_circle_rotation_and_points_form(rng):
    grid = CircleGrid(60)  # rotation by whole cells maps the grid onto itself
    rho = Density.from_function(grid, lambda t: 1.0 + 0.8 * np.cos(t) + 0.3 * np.sin(2 * t))
    x = rng.vonmises(2.0, 2.0, 70)
    base = tw.to_density(x, rho, 2)
    shifted = Density(grid, np.roll(rho.values, 7))
    # rotating points and density by 7 cells: round-off of the angles
    assert tw.to_density(x + 7 * grid.h, shifted, 2) == pytest.approx(base, rel=1e-10)
    # unit vectors instead of angles: arctan2 round-off
    assert tw.to_density(_pts(x), rho, 2) == pytest.approx(base, rel=1e-12)
    # an unnormalised density (mass 3) is normalised first
    assert tw.to_density(x, Density(grid, 3.0 * rho.values), 2) == pytest.approx(base, rel=1e-12)


# -- to_density: R^1 ------------------------------------------------------------------------------
def _line_density():
    grid = CartesianGrid([(-4.0, 4.0)], [64])
    return grid, Density.from_function(grid, lambda c: np.exp(-0.5 * (c[..., 0] - 0.2) ** 2))


def test_to_density_line_against_scipy_on_fine_subcells(rng):
    grid, rho = _line_density()
    x = rng.normal(0.3, 1.2, 100)
    k = 200
    fine = grid.lo[0] + (np.arange(64 * k) + 0.5) * grid.h[0] / k
    fine_w = np.repeat(rho.values, k)
    # sub-cell midpoints are within W_p <= h / (2K) of the piecewise-constant density
    bound = grid.h[0] / (2 * k)
    assert abs(tw.to_density(x, rho, 1) - scipy.stats.wasserstein_distance(x, fine, None, fine_w)) <= bound
    ref2 = float(ot.wasserstein_1d(x, fine, None, fine_w / fine_w.sum(), p=2)) ** 0.5
    assert abs(tw.to_density(x, rho, 2) - ref2) <= bound


def test_to_density_line_against_scipy_on_many_samples(rng):
    grid, rho = _line_density()
    x = rng.normal(0.0, 0.7, 30)
    samples = rho.sample(400_000, rng)[:, 0]
    # W_1 of 4e5 samples to their law: ~ 0.5 / sqrt(4e5) ~ 1e-3 for a unit Gaussian; 4e-3 margin
    assert tw.to_density(x, rho, 1) == pytest.approx(
        scipy.stats.wasserstein_distance(x, samples), abs=4e-3)


def test_to_density_line_dirac_and_translation():
    grid = CartesianGrid([(0.0, 1.0)], [10])
    u = Density.uniform(grid)
    # Dirac at 0 vs uniform on [0, 1]: W_p^p = int_0^1 t^p dt = 1 / (p + 1)
    assert tw.to_density([0.0], u, 1) == pytest.approx(0.5, rel=1e-14)
    assert tw.to_density([[0.0]], u, 2) == pytest.approx(1 / np.sqrt(3), rel=1e-14)
    # Dirac outside the box, at -2: every unit of mass moves 2 + t
    assert tw.to_density([-2.0], u, 1) == pytest.approx(2.5, rel=1e-14)
    # 5 points at the centres of fifths: (1/10)/(p+1)^(1/p) as on the circle
    x = (np.arange(5) + 0.5) / 5
    assert tw.to_density(x, u, 2) == pytest.approx(0.1 / np.sqrt(3), rel=1e-12)


# -- to_density: R^2 and the sphere (estimators) ---------------------------------------------------
def test_to_density_plane_product_structure(rng):
    """For product measures W_2^2 adds over the axes. Points on a product grid (with product
    weights) against a product density: the cells estimator in 2-D is exactly the root sum
    of squares of the 1-D cells estimators, and within the stated bias |h|/2 of the root sum
    of squares of the exact 1-D values."""
    gx, gy = CartesianGrid([(-3.0, 3.0)], [12]), CartesianGrid([(-2.0, 2.5)], [9])
    g2 = CartesianGrid([(-3.0, 3.0), (-2.0, 2.5)], [12, 9])
    fx = np.exp(-0.5 * gx.axes[0] ** 2)
    fy = 1.0 + 0.5 * np.sin(gy.axes[0])
    rx, ry = Density(gx, fx / (fx.sum() * gx.h[0])), Density(gy, fy / (fy.sum() * gy.h[0]))
    r2 = Density(g2, np.outer(rx.values, ry.values))
    px, py = rng.normal(size=5), rng.uniform(-2.0, 2.0, 4)
    wx, wy = rng.random(5), rng.random(4)
    pts = np.stack(np.meshgrid(px, py, indexing="ij"), axis=-1).reshape(-1, 2)
    w = np.outer(wx, wy).ravel()
    cells2 = tw.to_density(pts, r2, 2, weights=w)
    cells1 = np.hypot(tw.to_density(px, rx, 2, weights=wx, method="cells"),
                      tw.to_density(py, ry, 2, weights=wy, method="cells"))
    # network simplex in 2-D vs 1-D quantiles, both exact
    assert cells2 == pytest.approx(cells1, rel=1e-10)
    exact1 = np.hypot(tw.to_density(px, rx, 2, weights=wx), tw.to_density(py, ry, 2, weights=wy))
    assert abs(cells2 - exact1) <= 0.5 * np.hypot(*g2.h)


def _sphere_cell_radius(grid: SphereGrid) -> float:
    """Largest geodesic distance from a cell's boundary (64 points per edge) to its centre."""
    s = np.linspace(0.0, 1.0, 64)
    th0, th1 = grid.theta_edges[grid.ring], grid.theta_edges[grid.ring + 1]
    ph0 = grid.k * grid.dphi
    radius = 0.0
    meridian = th0[:, None] + s * (th1 - th0)[:, None]
    edges = [(th0[:, None] + 0 * s, s), (th1[:, None] + 0 * s, s), (meridian, 0 * s), (meridian, 1 + 0 * s)]
    for t, f in edges:
        phi = ph0[:, None] + f * grid.dphi[:, None]
        q = np.stack([np.sin(t) * np.cos(phi), np.sin(t) * np.sin(phi), np.cos(t)], axis=-1)
        c = grid.centers[:, None, :]
        d = 2 * np.arctan2(np.linalg.norm(q - c, axis=-1), np.linalg.norm(q + c, axis=-1))
        radius = max(radius, float(d.max()))
    return radius


def test_to_density_sphere_dirac_against_uniform():
    """W_p^p(delta_N, unif on S^2) = (1/2) int_0^pi t^p sin t dt: W_1 = pi/2,
    W_2 = sqrt((pi^2 - 4)/2). Against a Dirac the only coupling moves everything to it, so the
    cells estimator is a midpoint quadrature of that integral; its error is below the stated
    bias r_h and shrinks with the grid."""
    point = np.array([[0.3, -0.5, 0.8]]) / np.linalg.norm([0.3, -0.5, 0.8])
    exact = {1: np.pi / 2, 2: np.sqrt((np.pi**2 - 4) / 2)}
    errors = []
    for n_lat in (8, 24):
        grid = SphereGrid(n_lat)
        u = Density.uniform(grid)
        r_h = _sphere_cell_radius(grid)
        # the documented size of r_h, about 0.87 pi / n_lat
        assert r_h <= 0.9 * np.pi / n_lat
        for p in (1, 2):
            err = abs(tw.to_density(point, u, p) - exact[p])
            assert err <= r_h
            errors.append(err)
    assert errors[2] < errors[0] and errors[3] < errors[1]


def test_to_density_sphere_sliced_dirac_against_uniform():
    grid = SphereGrid(24)
    u = Density.uniform(grid)
    north = np.array([[0.0, 0.0, 1.0]])
    for p in (1, 2):
        # closed form pi/(p+1)^(1/p) (every projection of the uniform is uniform) within the
        # cell-centre bias r_h <= 0.9 pi / n_lat
        assert abs(tw.to_density(north, u, p, method="sliced", n_projections=32, rng=0)
                   - np.pi / (p + 1) ** (1 / p)) <= 0.9 * np.pi / 24


def test_to_density_sphere_cells_is_emd_to_centres_and_rotation_consistent(rng):
    grid = SphereGrid(8)
    rho = Density.from_function(grid, lambda c: np.exp(2.0 * c[..., 2]))
    x = rho.sample(40, rng)
    mass = rho.values * grid.volumes
    # by definition: exact OT to the centre masses
    assert tw.to_density(x, rho, 2) == pytest.approx(
        tw.particles(x, grid.centers, 2, b_weights=mass, metric="geodesic"), rel=1e-12)
    # the grid is symmetric under z -> -z (its rings differ in longitude cell counts, so a
    # rotation about z is not a symmetry): mirror the points and the density
    flip = np.diag([1.0, 1.0, -1.0])
    rev = Density.from_function(grid, lambda c: np.exp(-2.0 * c[..., 2]))
    # the mirrored problem: same value up to the round-off of the mirrored centres
    assert tw.to_density(x @ flip, rev, 2) == pytest.approx(tw.to_density(x, rho, 2), rel=1e-9)


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_input_errors():
    grid = CircleGrid(8)
    u = Density.uniform(grid)
    x3 = np.array([[0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="p must be >= 1"):
        tw.circle([0.0], [1.0], p=0.5)
    with pytest.raises(TypeError, match="p must be a real number"):
        tw.particles([[0.0]], [[1.0]], p=True)
    with pytest.raises(ValueError, match="theta_a must be angles"):
        tw.circle(np.zeros((3, 3)), [1.0])
    with pytest.raises(ValueError, match="theta_b must be unit vectors"):
        tw.circle([0.0], [[1.0, 1.0]])
    with pytest.raises(ValueError, match="theta_a must be finite"):
        tw.circle([np.nan], [1.0])
    with pytest.raises(ValueError, match="a_weights must have shape"):
        tw.circle([0.0, 1.0], [1.0], a_weights=[1.0])
    with pytest.raises(ValueError, match="b_weights must be nonnegative"):
        tw.circle([0.0], [1.0, 2.0], b_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="metric must be"):
        tw.particles([[0.0]], [[1.0]], metric="cosine")
    with pytest.raises(ValueError, match="same dimension"):
        tw.particles(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="y must be unit vectors"):
        tw.particles(x3, 2 * x3, metric="geodesic")
    with pytest.raises(ValueError, match="x must be unit vectors"):
        tw.sphere_sliced(2 * x3, x3)
    with pytest.raises(TypeError, match="rng must be"):
        tw.sphere_sliced(x3, x3, rng="seed")
    with pytest.raises(ValueError, match="n_projections must be >= 1"):
        tw.sphere_sliced(x3, x3, n_projections=0)
    with pytest.raises(ValueError, match="cov_a must be symmetric"):
        tw.gaussian([0, 0], [[1.0, 0.5], [0.0, 1.0]], [0, 0], np.eye(2))
    with pytest.raises(ValueError, match="cov_b must be positive semi-definite"):
        tw.gaussian([0, 0], np.eye(2), [0, 0], np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="mean_b must have shape"):
        tw.gaussian([0, 0], np.eye(2), [0, 0, 0], np.eye(2))
    with pytest.raises(ValueError, match="cov_a must have shape"):
        tw.gaussian([0, 0], np.eye(3), [0, 0], np.eye(2))
    with pytest.raises(TypeError, match="density must be a transformer_pde Density"):
        tw.to_density([0.0], u.values)
    with pytest.raises(TypeError, match="CircleGrid, CartesianGrid, SphereGrid or ZonalGrid"):
        tw.to_density([0.0], Density.uniform(CausalCircleGrid(2, 8)))
    with pytest.raises(ValueError, match="method must be one of"):
        tw.to_density([0.0], u, method="sinkhorn")
    with pytest.raises(ValueError, match="method='sliced' is available on a SphereGrid only"):
        tw.to_density([0.0], u, method="sliced")
    with pytest.raises(ValueError, match="method='exact' is available"):
        tw.to_density(x3, Density.uniform(SphereGrid(4)), method="exact")
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        tw.to_density(np.zeros((2, 2)), Density.uniform(SphereGrid(4)))
    with pytest.raises(ValueError, match="values must have a positive, finite total mass"):
        tw.to_density([0.0], Density(grid, np.zeros(8)))
    with pytest.raises(ValueError, match="EMD_MAX_ENTRIES"):
        tw.particles(np.zeros((20_000, 1)), np.zeros((20_000, 1)))
