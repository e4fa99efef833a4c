r"""The Transformer PDE on the 2-sphere (issue 3): the reduced latitude-longitude grid, its
reconstruction, the spherical-harmonic fast path, the 1-D axisymmetric reference, and
the acceptance checks (conservation, positivity, linear growth rates, order of
convergence, agreement with the axisymmetric reduction, fast path vs quadrature).

Closed forms used (docs/math.md §2.2 and 8): for rho0 (1 + eps Y_l) on S^2 the degree-l
component grows at l(l+1) i_l(beta) / (beta i_0(beta)) (SA) and l(l+1) i_l(beta) / beta
(USA), i_l the modified spherical Bessel functions; the divergence of the tangent field
P_x e is -2 <x, e>; cells of a latitude-longitude grid have area dphi (cos t0 - cos t1).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import eval_legendre, spherical_in

import transformer_pde as tp
from transformer_pde.meanfield import Density, face_velocity
from transformer_pde.meanfield.axisymmetric import AxisymmetricGrid, solve_axisymmetric
from transformer_pde.meanfield.field import rotation_invariant
from transformer_pde.meanfield.sht import funk_hecke_coefficients
from transformer_pde.meanfield.sphere import SphereGrid

EPS = np.finfo(float).eps
I3 = np.eye(3)
#: a tilted axis, so that axisymmetric data are genuinely 2-D on the grid
AXIS = np.array([np.sin(0.7) * np.cos(0.3), np.sin(0.7) * np.sin(0.3), np.cos(0.7)])
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_meanfield_sphere.py"


def _dyn(att):
    return tp.TokenDynamics(att, geometry="sphere", norm="post")


def _smooth(grid, seed=0):
    """A smooth, positive, non-uniform, non-axisymmetric density (normalised)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(4, 3))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = grid.centers
    values = 1.0 + np.sum(rng.random(4) * np.exp(2.0 * (x @ c.T - 1.0)), axis=1) + 0.3 * x[:, 0] * x[:, 1]
    return values / np.sum(values * grid.volumes)


def _rate_of_change(dyn, grid, rho, field="fast"):
    """d rho / dt of the finite-volume scheme (upwind flux of the reconstructed values)."""
    f = grid.faces
    u = face_velocity(dyn, grid, rho, field)
    lo, hi = grid.reconstruct(rho)
    flux = f.areas * (np.maximum(u, 0.0) * lo + np.minimum(u, 0.0) * hi)
    change = np.bincount(f.right, weights=flux, minlength=grid.size)
    change -= np.bincount(f.left, weights=flux, minlength=grid.size)
    return change / grid.volumes


# -- geometry ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_lat", [4, 7, 16, 33])
def test_cells_areas_and_centres(n_lat):
    grid = SphereGrid(n_lat)
    n = grid.size
    assert grid.shape == (n,) and grid.volumes.shape == (n,) and grid.centers.shape == (n, 3)
    assert grid.geometry == "sphere" and grid.dim == 3
    # a sum of <= 1400 positive terms of size ~4 pi / n: a few ulps of 4 pi
    assert abs(grid.volumes.sum() - 4.0 * np.pi) < 1e-13
    # exact areas dphi (cos t0 - cos t1), recomputed independently
    t0, t1 = grid.theta_edges[grid.ring], grid.theta_edges[grid.ring + 1]
    assert np.allclose(grid.volumes, 2 * np.pi / grid.n_lon[grid.ring] * (np.cos(t0) - np.cos(t1)),
                       rtol=1e-13, atol=0)
    # quasi-uniform: three polar wedges, every cell's area within a factor ~2 of h^2
    h = np.pi / n_lat
    assert grid.n_lon[0] == grid.n_lon[-1] == 3
    assert np.array_equal(grid.n_lon, grid.n_lon[::-1])  # symmetric about the equator
    assert 0.4 < grid.volumes.min() / h**2 and grid.volumes.max() / h**2 < 1.4
    assert np.allclose(np.linalg.norm(grid.centers, axis=1), 1.0, rtol=0, atol=4 * EPS)
    # the centre of each cell lies in it, and is its centroid direction
    assert np.array_equal(grid.cell_of(grid.centers), np.arange(n))
    rng = np.random.default_rng(1)
    cells = np.repeat(np.arange(n), 400)
    pts = grid.sample_cells(cells, rng)
    mean = np.add.reduceat(pts, np.arange(0, len(pts), 400))
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    # Monte-Carlo centroid of 400 uniform points, spread ~h/sqrt(12): error ~ h/70
    assert np.max(np.linalg.norm(mean - grid.centers, axis=1)) < h / 10


@pytest.mark.parametrize("n_lat", [4, 9, 24])
def test_faces_unit_tangent_and_shared(n_lat):
    grid = SphereGrid(n_lat)
    f = grid.faces
    nf = len(f.areas)
    assert f.points.shape == f.normals.shape == (nf, 3)
    # built from cos/sin products: round-off only
    assert np.allclose(np.linalg.norm(f.points, axis=1), 1.0, rtol=0, atol=4 * EPS)
    assert np.allclose(np.linalg.norm(f.normals, axis=1), 1.0, rtol=0, atol=4 * EPS)
    assert np.max(np.abs(np.einsum("fd,fd->f", f.normals, f.points))) < 4 * EPS
    assert np.all(f.areas > 0) and np.all(f.left != f.right)
    assert np.all((f.left >= 0) & (f.right >= 0) & (f.left < grid.size) & (f.right < grid.size))
    # a step off the midpoint along -n / +n lands in the left / right cell: the face
    # really lies between them and the normal points from left to right
    delta = 1e-7
    for sign, cells in ((-1.0, f.left), (1.0, f.right)):
        moved = f.points + sign * delta * f.normals
        assert np.array_equal(grid.cell_of(moved), cells)
    # the faces of each cell tile its boundary: lengths add up to the exact perimeter
    perim = np.bincount(f.left, f.areas, grid.size) + np.bincount(f.right, f.areas, grid.size)
    t0, t1 = grid.theta_edges[grid.ring], grid.theta_edges[grid.ring + 1]
    exact = 2 * (t1 - t0) + grid.dphi * (np.sin(t0) + np.sin(t1))
    assert np.allclose(perim, exact, rtol=1e-13, atol=0)
    # parallels are cut at both rings' breakpoints and into arcs of at most pi / n_lat
    on_parallel = np.abs(f.normals[:, 2]) > 1e-12
    width = f.areas[on_parallel] / np.linalg.norm(f.points[on_parallel, :2], axis=1)
    assert width.max() <= np.pi / n_lat * (1 + 1e-12)


def test_discrete_divergence_is_consistent():
    r"""Sum over a cell's faces of |f| <X(x_f), n_f> / |c| approximates div X: for X = P_x e,
    div X = -2 <x, e>. The error is first order in the max norm (the polar cells, whose
    parallel faces are arcs seen from the pole) and second order on average."""
    e = np.array([0.6, -0.3, 0.74])
    e /= np.linalg.norm(e)
    errs = []
    for n_lat in (16, 32, 64):
        grid = SphereGrid(n_lat)
        f = grid.faces
        flux = f.areas * (f.normals @ e)
        div = (np.bincount(f.left, flux, grid.size) - np.bincount(f.right, flux, grid.size)) / grid.volumes
        err = np.abs(div + 2.0 * grid.centers @ e)
        errs.append((err.max(), np.sum(err * grid.volumes) / (4 * np.pi)))
        # sum |f| n_f outward, tangent part at the centre: ~0 (closed cell) to O(h^2)
        vec = np.zeros((grid.size, 3))
        np.add.at(vec, f.left, f.areas[:, None] * f.normals)
        np.add.at(vec, f.right, -f.areas[:, None] * f.normals)
        x = grid.centers
        tang = vec - np.einsum("ij,ij->i", vec, x)[:, None] * x
        assert np.max(np.linalg.norm(tang, axis=1) / grid.volumes) < 0.3 * (np.pi / n_lat)
    (m1, a1), (m2, a2), (m3, a3) = errs
    assert m1 / m2 > 1.7 and m2 / m3 > 1.7  # measured 2.6, 2.1: first order in max norm
    assert a1 / a2 > 3.4 and a2 / a3 > 3.4  # measured 4.0, 3.8: second order on average


# -- reconstruction -------------------------------------------------------------------
def test_reconstruction_bounds_and_positivity(rng):
    """Face values lie in the range of the cell and its face neighbours and in [0, 2 rho_c]
    (the positivity bound of a forward-Euler stage at cfl <= 1/2)."""
    grid = SphereGrid(12)
    rho = rng.random(grid.size) ** 3
    rho[::5] = 0.0
    lo, hi = grid.reconstruct(rho)
    f = grid.faces
    for side, cells in ((lo, f.left), (hi, f.right)):
        nb = [np.concatenate([[c], f.right[f.left == c], f.left[f.right == c]]) for c in range(grid.size)]
        low = np.array([rho[i].min() for i in nb])[cells]
        high = np.array([rho[i].max() for i in nb])[cells]
        assert np.all(side >= low) and np.all(side <= high)
        assert np.all(side >= 0.0) and np.all(side <= 2.0 * rho[cells])
    # constant data: exact face values (no round-off at all)
    lo, hi = grid.reconstruct(np.full(grid.size, 0.3))
    assert np.all(lo == 0.3) and np.all(hi == 0.3)


def test_reconstruction_second_order():
    """Smooth data: the face values converge at second order in the max norm (the limiter
    acts at extrema only and by O(h^2) there)."""
    a = np.array([0.3, -0.5, 0.8])
    errs = []
    for n_lat in (16, 32, 64):
        grid = SphereGrid(n_lat)
        lo, hi = grid.reconstruct(np.exp(grid.centers @ a))
        exact = np.exp(grid.faces.points @ a)
        errs.append(max(np.abs(lo - exact).max(), np.abs(hi - exact).max()))
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    # measured 1.76, 1.88: the least-squares gradient is first-order accurate on the
    # irregular stencils (ring-to-ring neighbours), which leaves O(h^2) face errors
    assert np.all(orders > 1.6), orders


# -- densities on the sphere ------------------------------------------------------------
def test_density_constructors_and_sampling(rng):
    grid = SphereGrid(16)
    uni = Density.uniform(grid)
    assert np.allclose(uni.values, 1 / (4 * np.pi), rtol=1e-13, atol=0)
    mean, _ = uni.moments()
    assert np.abs(mean).max() < 1e-14  # the grid is symmetric under x -> -x up to a rotation
    rho = Density.from_function(grid, lambda x: np.exp(3.0 * x @ AXIS))
    assert rho.mass() == pytest.approx(1.0, abs=1e-14)
    x = rho.sample(20_000, rng)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-14)
    # von Mises-Fisher kappa = 3: E<x, axis> = coth(3) - 1/3; 20k samples: sd ~ 0.003,
    # plus the O(h^2) midpoint error of the grid density
    assert np.mean(x @ AXIS) == pytest.approx(1 / np.tanh(3.0) - 1 / 3, abs=0.015)
    hist = Density.from_samples(grid, x)
    assert hist.mass() == pytest.approx(1.0, abs=1e-14)
    # a histogram of its own samples: mean absolute deviation of ~200 points per cell ~ 6%
    assert np.sum(np.abs(hist.values - rho.values) * grid.volumes) < 0.1


# -- fast path vs quadrature -----------------------------------------------------------
FAST_MODELS = {
    **{f"softmax-{b}": (lambda b=b: tp.SoftmaxAttention(beta=b)) for b in (0.0, 1.0, 4.0, 10.0)},
    **{f"usa-{b}": (lambda b=b: tp.UnnormalizedAttention(beta=b)) for b in (0.0, 1.0, 4.0, 10.0)},
    **{f"sigmoid-{b}": (lambda b=b: tp.SigmoidAttention(beta=b, bias=0.3)) for b in (0.0, 1.0, 4.0, 10.0)},
    "l2": lambda: tp.L2Attention(beta=3.0),
    "softmax-negative-beta": lambda: tp.SoftmaxAttention(beta=-2.0),
    "scaled-qv": lambda: tp.SoftmaxAttention(beta=2.0, Q=2 * I3, V=-0.5 * I3),
    "multihead": lambda: tp.MultiHeadAttention([tp.SoftmaxAttention(beta=3.0),
                                                tp.UnnormalizedAttention(beta=1.0, V=0.5 * I3)]),
}


@pytest.mark.parametrize("name", FAST_MODELS)
def test_fast_path_matches_quadrature(name):
    """The SHT fast path and the quadrature kernel compute the same sums: they agree to
    1e-10 (measured <= 7e-12 with |u| up to 200 for USA at beta = 10, else <= 1e-13)."""
    dyn = _dyn(FAST_MODELS[name]())
    grid = SphereGrid(20)
    rho = _smooth(grid)
    u_fast = face_velocity(dyn, grid, rho, "fast")
    u_quad = face_velocity(dyn, grid, rho, "quadrature")
    assert np.max(np.abs(u_fast - u_quad)) < 1e-10
    assert np.max(np.abs(u_quad)) > 1e-3  # the comparison is not vacuous
    assert np.array_equal(face_velocity(dyn, grid, rho, "auto"), u_fast)


def test_series_degree_and_fallback(monkeypatch):
    """The series is cut where the Funk-Hecke coefficients are negligible (~6 + 9 sqrt(beta)
    for the exponential); past MAX_DEGREE the fast path falls back to the exact sums."""
    from transformer_pde.meanfield import sht

    w, g = funk_hecke_coefficients(rotation_invariant(tp.SoftmaxAttention(beta=9.0), 3))
    assert 20 <= len(w) - 1 <= 40
    # closed form: 4 pi e^{-b} i_l(b)
    l = np.arange(6)
    assert np.allclose(w[:6], 4 * np.pi * np.exp(-9.0) * spherical_in(l, 9.0), rtol=1e-13, atol=0)
    assert np.allclose(g, w / 9.0, rtol=1e-15, atol=0)
    monkeypatch.setattr(sht, "MAX_DEGREE", 40)
    sht._coefficients.cache_clear()
    try:
        dyn = _dyn(tp.SigmoidAttention(beta=20.0))
        assert funk_hecke_coefficients(rotation_invariant(dyn.attention, 3)) is None
        grid = SphereGrid(10)
        rho = _smooth(grid)
        assert np.max(np.abs(face_velocity(dyn, grid, rho, "fast")
                             - face_velocity(dyn, grid, rho, "quadrature"))) < 1e-14
    finally:
        sht._coefficients.cache_clear()


def test_general_matrices_use_quadrature(rng):
    att = tp.SoftmaxAttention(beta=2.0, Q=I3 + 0.3 * rng.normal(size=(3, 3)))
    dyn = _dyn(att)
    grid = SphereGrid(8)
    rho = _smooth(grid)
    assert np.array_equal(face_velocity(dyn, grid, rho, "auto"), face_velocity(dyn, grid, rho, "quadrature"))
    with pytest.raises(ValueError, match="field='fast' needs rotation-invariant heads"):
        face_velocity(dyn, grid, rho, "fast")


# -- uniform density ----------------------------------------------------------------------
def test_uniform_density_is_stationary_at_beta_0():
    """At beta = 0 the field is P_x m with m the mean of the cell centres weighted by their
    areas: 0 to round-off (the grid is symmetric), so the uniform density stays put."""
    grid = SphereGrid(16)
    rho = Density.uniform(grid).values
    for att in (tp.SoftmaxAttention(beta=0.0), tp.UnnormalizedAttention(beta=0.0)):
        for field in ("fast", "quadrature"):
            assert np.max(np.abs(_rate_of_change(_dyn(att), grid, rho, field))) < 1e-13 * rho[0]
    sol = tp.solve_meanfield(_dyn(tp.SoftmaxAttention(beta=0.0)), Density.uniform(grid), (0.0, 2.0),
                             t_eval=[0.0, 2.0])
    assert np.max(np.abs(sol.density[-1] - rho)) < 1e-13 * rho[0]


@pytest.mark.parametrize("att", [tp.SoftmaxAttention(beta=9.0), tp.UnnormalizedAttention(beta=4.0),
                                 tp.SigmoidAttention(beta=3.0, bias=0.5)], ids=repr)
def test_uniform_density_is_stationary_for_beta_positive(att):
    """For beta > 0 the midpoint rule (point masses at the centres) is not exactly
    rotation-invariant on the sphere; the solver subtracts the discrete field of the
    uniform density (well-balanced correction), so the uniform state is stationary to
    round-off, as in the continuum and on the circle."""
    grid = SphereGrid(16)
    rho = Density.uniform(grid).values
    dyn = _dyn(att)
    for field in ("fast", "quadrature"):
        # the field is a difference of two O(1) sums: a few ulps
        assert np.max(np.abs(face_velocity(dyn, grid, rho, field))) < 1e-14 * np.exp(att.beta)
    sol = tp.solve_meanfield(dyn, Density.uniform(grid), (0.0, 2.0), t_eval=[0.0, 2.0])
    # velocity round-off scales with the weights (e^beta for USA), accumulated over steps
    scale = np.exp(att.beta) if isinstance(att, tp.UnnormalizedAttention) else 1.0
    assert np.max(np.abs(sol.density[-1] - rho)) < 1e-13 * scale * rho[0]


def test_subtracted_uniform_residual_is_the_quadrature_error():
    """What the correction removes is the midpoint-rule error of the uniform density's
    field: it vanishes under refinement faster than h^2 (measured ~h^3.5), so it does not
    change the order of the scheme."""
    from transformer_pde.meanfield.field import _uniform_residual

    for beta, bound in ((1.0, 2e-5), (9.0, 1e-3)):
        head = tp.SoftmaxAttention(beta=beta)
        size = [np.max(np.abs(_uniform_residual(head, SphereGrid(n), "quadrature")))
                for n in (16, 32)]
        assert size[1] < bound  # measured 2.0e-6 (beta 1) and 3.0e-5 (beta 9)
        assert size[0] / size[1] > 8.0  # measured 17: more than second order per halving of h


# -- conservation and positivity --------------------------------------------------------
@pytest.mark.parametrize("n_lat, field", [(24, "fast"), (10, "quadrature")])
def test_cluster_run_conserves_mass_and_stays_nonnegative(n_lat, field):
    """SA, beta = 9, T = 20 from a perturbed uniform density: the mass gathers into a few
    near-Diracs, yet the mass is conserved to 1e-12 and the density stays >= 0 at every
    step (the solver also stops at the first negative value)."""
    grid = SphereGrid(n_lat)
    rng = np.random.default_rng(3)
    c = rng.normal(size=(8, 3))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    rho0 = Density.from_function(grid, lambda x: 1.0 + 0.1 * np.sum(np.exp(3.0 * (x @ c.T - 1.0)), axis=1))
    sol = tp.solve_meanfield(_dyn(tp.SoftmaxAttention(beta=9.0)), rho0, (0.0, 20.0),
                             t_eval=np.linspace(0.0, 20.0, 5), field=field)
    masses = sol.density @ grid.volumes
    assert np.max(np.abs(masses - 1.0)) < 1e-12
    assert sol.info.mass_drift < 1e-12
    assert sol.info.min_density >= 0.0 and np.all(sol.density >= 0.0)
    # clusters: the final density peaks far above uniform and 8 cells hold most of the mass
    final = sol.density[-1]
    assert final.max() > 20.0 / (4 * np.pi)
    assert np.sort(final * grid.volumes)[::-1][:8].sum() > 0.8


# -- linear growth rates ----------------------------------------------------------------
@pytest.mark.parametrize("model", ["SA", "USA"])
@pytest.mark.parametrize("beta", [1.0, 4.0, 9.0])
def test_linear_growth_rates(model, beta):
    """rho0 = (1 + 1e-4 sum_l P_l(<x, a>)) / 4 pi, l = 1..4, a a tilted axis (P_l(<x, a>) is
    a degree-l harmonic). Each degree is an invariant subspace of the linearised
    dynamics, so one run gives all rates: the coefficients of the density's deviation
    from the uniform density (stationary to round-off on the grid) on the four modes
    (discrete least squares with the cell areas) grow exponentially at
    l(l+1) i_l(beta) / (beta i_0(beta)) (SA) and l(l+1) i_l(beta) / beta (USA). Within 3%
    (measured <= 1.2% at n_lat = 24, shrinking like h^2); over two e-folds of the fastest
    mode, so modes slower than 1/8 of it (beta = 1: l >= 3) do not grow enough to fit."""
    grid = SphereGrid(24)
    att = tp.SoftmaxAttention(beta=beta) if model == "SA" else tp.UnnormalizedAttention(beta=beta)
    dyn = _dyn(att)
    ls = np.arange(1, 5)
    norm = spherical_in(0, beta) if model == "SA" else 1.0
    rates = ls * (ls + 1) * spherical_in(ls, beta) / (beta * norm)
    modes = np.stack([eval_legendre(l, grid.centers @ AXIS) for l in ls])
    t_end = 2.0 / rates.max()
    t_eval = np.linspace(0.0, t_end, 11)
    sol = tp.solve_meanfield(dyn, Density(grid, (1.0 + 1e-4 * modes.sum(0)) / (4 * np.pi)),
                             (0.0, t_end), t_eval=t_eval)
    gram = (modes * grid.volumes) @ modes.T
    amp = np.linalg.solve(gram, (modes * grid.volumes) @ (sol.density - 1.0 / (4 * np.pi)).T)
    checked = 0
    for i, l in enumerate(ls):
        if rates[i] < rates.max() / 8:
            continue
        fitted = np.polyfit(t_eval, np.log(amp[i]), 1)[0]
        assert fitted == pytest.approx(rates[i], rel=0.03), (l, fitted, rates[i])
        checked += 1
    assert checked >= 3


# -- the axisymmetric reduction --------------------------------------------------------
@pytest.mark.parametrize("att", [tp.SoftmaxAttention(beta=4.0), tp.UnnormalizedAttention(beta=4.0),
                                 tp.SigmoidAttention(beta=4.0, bias=-0.2)], ids=["sa", "usa", "sigmoid"])
def test_ring_kernels_match_3d_quadrature(att):
    """The longitude-integrated kernels of the 1-D reduction (Bessel closed forms, or the
    trapezoidal rule for the sigmoid) equal the 3-D quadrature over rings of 256 equally
    spaced points (exact for these band-limited integrands to round-off)."""
    grid = AxisymmetricGrid(40)
    rho = np.exp(2.0 * np.cos(grid.theta)) * (1 + 0.5 * np.cos(3 * grid.theta) ** 2)
    a = rho * grid.volumes / np.sum(rho * grid.volumes)
    u, handover = grid.fast_face_velocity(rotation_invariant(att, 3), a)
    assert handover is None  # no quadrature path on this grid
    m = 256
    theta, phi = np.meshgrid(grid.theta, 2 * np.pi * np.arange(m) / m, indexing="ij")
    src = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], axis=-1)
    field = att._field(np.ascontiguousarray(grid.faces.points), np.ascontiguousarray(src.reshape(-1, 3)),
                       np.repeat(a / m, m))
    u_quad = np.einsum("fd,fd->f", field, grid.faces.normals)
    assert np.max(np.abs(u - u_quad)) < 1e-12 * max(1.0, np.abs(u_quad).max())


def _reference(dyn, f, t_end, n_theta=800):
    return solve_axisymmetric(dyn, f, n_theta, (0.0, t_end), t_eval=[0.0, t_end])


def _axisymmetric_error(sol, ref, axis):
    """L1 distance between a sphere-grid density and the 1-D one at the cell centres."""
    grid = sol.grid
    theta = np.arccos(np.clip(grid.centers @ axis, -1.0, 1.0))
    exact = np.interp(theta, ref.grid.theta, ref.density[-1])
    return np.sum(np.abs(sol.density[-1] - exact) * grid.volumes)


def _profile(theta):
    return np.exp(np.cos(theta)) * (1.0 + 0.4 * np.cos(2.0 * theta))


def test_axisymmetric_reference_converges():
    """The 1-D reference at n_theta = 200, 400, 800: second order (its error at 800 bands
    is ~3e-5, far below the 2-D grids' ~1e-2)."""
    dyn = _dyn(tp.SoftmaxAttention(beta=4.0))
    sols = [_reference(dyn, _profile, 2.0, n) for n in (200, 400, 800)]
    for s in sols:
        assert abs(s.density[-1] @ s.grid.volumes - 1.0) < 1e-13 and s.info.min_density >= 0.0
    d1 = np.sum(np.abs(sols[0].density[-1] - np.interp(sols[0].grid.theta, sols[2].grid.theta,
                                                        sols[2].density[-1])) * sols[0].grid.volumes)
    d2 = np.sum(np.abs(sols[1].density[-1] - np.interp(sols[1].grid.theta, sols[2].grid.theta,
                                                        sols[2].density[-1])) * sols[1].grid.volumes)
    assert d2 < 2e-4 and d1 / d2 > 3.0  # 2nd order against the finest: (1 - 1/4)/(1/4 - 1/16)... ~ 4-5


def test_sphere_run_agrees_with_axisymmetric_solution():
    """SA, beta = 4, T = 2 from rho0(theta) = e^{cos theta} (1 + 0.4 cos 2 theta) around the
    z axis, SphereGrid(32) with the quadrature kernel against the 1-D reduction on 800
    bands: the 2-D density at the cell centres matches the 1-D one to 2.5% in L1. The
    expected error is the 2-D discretisation error C h^2 with C ~ 1.8 measured on 8..64
    rings (0.0175 at n_lat = 32, h = pi/32); the 1-D error (~3e-5) and the interpolation
    (~1e-6) are negligible."""
    dyn = _dyn(tp.SoftmaxAttention(beta=4.0))
    ref = _reference(dyn, _profile, 2.0)
    z = np.array([0.0, 0.0, 1.0])
    grid = SphereGrid(32)
    rho0 = Density.from_function(grid, lambda x: _profile(np.arccos(np.clip(x @ z, -1, 1))))
    sol = tp.solve_meanfield(dyn, rho0, (0.0, 2.0), t_eval=[0.0, 2.0], field="quadrature")
    assert _axisymmetric_error(sol, ref, z) < 0.025
    # and the density has moved: the initial one is ~0.2 away from the final one
    assert np.sum(np.abs(sol.density[0] - sol.density[-1]) * grid.volumes) > 0.1


def test_order_of_convergence_on_a_smooth_solution():
    """The same axisymmetric solution about a tilted axis (so the grid sees a genuinely 2-D
    flow, across a pole too) on n_lat = 8, 16, 32, 64: the L1 error against the 1-D
    reduction falls like h^p with fitted p >= 1.5 (measured 1.99)."""
    dyn = _dyn(tp.SoftmaxAttention(beta=4.0))
    ref = _reference(dyn, _profile, 2.0)
    n_lats = np.array([8, 16, 32, 64])
    errs = []
    for n_lat in n_lats:
        grid = SphereGrid(int(n_lat))
        rho0 = Density.from_function(grid, lambda x: _profile(np.arccos(np.clip(x @ AXIS, -1, 1))))
        sol = tp.solve_meanfield(dyn, rho0, (0.0, 2.0), t_eval=[0.0, 2.0])
        assert sol.info.mass_drift < 1e-12
        errs.append(_axisymmetric_error(sol, ref, AXIS))
    order = np.polyfit(np.log(np.pi / n_lats), np.log(errs), 1)[0]
    assert order >= 1.5, (order, errs)


# -- input checks -----------------------------------------------------------------------
def test_bad_input():
    with pytest.raises(ValueError, match="n_lat must be >= 4"):
        SphereGrid(3)
    with pytest.raises(TypeError, match="n_lat must be an integer"):
        SphereGrid(8.5)
    with pytest.raises(TypeError, match="n_lat must be an integer"):
        SphereGrid(True)
    with pytest.raises(ValueError, match="n_lon must have one integer per ring"):
        SphereGrid(4, n_lon=[3, 7, 3])
    with pytest.raises(ValueError, match="n_lon must be >= 3 in every ring"):
        SphereGrid(4, n_lon=[3, 2, 7, 3])
    with pytest.raises(TypeError, match="n_lon must be a sequence"):
        SphereGrid(4, n_lon=5)
    with pytest.raises(ValueError, match="n_theta must be >= 8"):
        AxisymmetricGrid(5)
    sa = _dyn(tp.SoftmaxAttention(beta=1.0))
    with pytest.raises(ValueError, match="rotation-invariant heads"):
        solve_axisymmetric(_dyn(tp.SoftmaxAttention(beta=1.0, Q=np.diag([1.0, 2.0, 3.0]))),
                           _profile, 32, (0.0, 1.0))
    with pytest.raises(ValueError, match="rotation-invariant heads"):
        solve_axisymmetric(_dyn(tp.SinkhornAttention(beta=1.0)), _profile, 32, (0.0, 1.0))
    with pytest.raises(ValueError, match="d = 3"):
        solve_axisymmetric(_dyn(tp.SoftmaxAttention(beta=1.0, Q=np.eye(2))), _profile, 32, (0.0, 1.0))
    with pytest.raises(TypeError, match="f must be a function"):
        solve_axisymmetric(sa, np.ones(32), 32, (0.0, 1.0))
    with pytest.raises(ValueError, match="n_theta must be >= 8"):
        solve_axisymmetric(sa, _profile, 4, (0.0, 1.0))
    with pytest.raises(ValueError, match="needs TokenDynamics"):
        tp.solve_meanfield(tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0), geometry="euclidean"),
                           Density.uniform(SphereGrid(4)), (0.0, 1.0))
    with pytest.raises(ValueError, match="d=2"):
        tp.solve_meanfield(_dyn(tp.SoftmaxAttention(beta=1.0, Q=np.eye(2))),
                           Density.uniform(SphereGrid(4)), (0.0, 1.0))
    with pytest.raises(ValueError, match="values must have the grid's shape"):
        Density(SphereGrid(4), np.ones((4, 5)))


# -- benchmark script ---------------------------------------------------------------------
def test_benchmark_smoke(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_meanfield_sphere", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    try:
        spec.loader.exec_module(bench)
        out = tmp_path / "b.json"
        status = bench.main(["--n-lat", "6", "8", "12", "--repeats", "1", "--betas", "1", "4",
                             "--degree-n-lat", "8", "--json", str(out)])
    finally:
        sys.modules.pop(spec.name, None)
    text = capsys.readouterr().out
    assert status == 0, text
    # no --check here: its exponent bound is a timing, and the default suite asserts no
    # timing (a busy core bent it once); the accuracy half of the check is asserted below
    assert "fitted exponents" in text
    import json

    data = json.loads(out.read_text())
    assert len(data["rows"]) == 3 and all(r["rel_diff"] < 1e-10 for r in data["rows"])
