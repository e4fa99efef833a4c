r"""The Transformer PDE on the circle (issue 3): conservation, positivity, stationarity,
linear growth rates, order of convergence, fast path vs quadrature, symmetries, masked
attention on (s, theta), the noisy model, input checks, and a smoke test of the benchmark.

Closed forms used (docs/math.md §2.4, 4.7, 8): for the density rho0 (1 + eps cos k theta) the
mode k grows at k^2 I_k(beta) / (beta I_0(beta)) (SA) and k^2 I_k(beta) / beta (USA); with
noise kappa^-1 Laplacian at beta = 0 the first mode grows at 1/2 - 1/kappa (pitchfork at
kappa = 2).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import ive

import transformer_pde as tp
from transformer_pde.meanfield import CausalCircleGrid, CircleGrid, Density, face_velocity

I2 = np.eye(2)
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_meanfield_circle.py"


def _dyn(att, kappa=None):
    return tp.TokenDynamics(att, kappa=kappa)  # sphere, post-LN: the circle's mean-field model


def _normalised(grid, values):
    values = np.asarray(values, dtype=float)
    return Density(grid, values / np.sum(values * grid.volumes))


def _perturbed_uniform(m, eps, seed):
    """Uniform density times (1 + eps * seeded white noise), normalised."""
    rng = np.random.default_rng(seed)
    grid = CircleGrid(m)
    return _normalised(grid, 1.0 + eps * rng.standard_normal(m))


def _mode_amplitude(density, k):
    """|k-th Fourier coefficient| of each saved density (nt, M)."""
    return np.abs(np.fft.rfft(density, axis=-1)[..., k])


def _fitted_rate(t, amp):
    return np.polyfit(t, np.log(amp), 1)[0]


# -- conservation and positivity --------------------------------------------------------
# M = 64 for the quadrature: 64 x 64 pairs run on one thread (no wait for a busy core)
@pytest.mark.parametrize("m, field", [(256, "fast"), (64, "quadrature")])
def test_cluster_run_conserves_mass_and_stays_nonnegative(m, field):
    """SA, beta = 9, T = 30 from a perturbed uniform density: the mass piles into a few
    near-Diracs (the metastable clusters), yet the mass is conserved to 1e-12 and the
    density stays >= 0 at every step."""
    rho0 = _perturbed_uniform(m, 0.05, seed=1)
    grid = rho0.grid
    traj = tp.solve_meanfield(_dyn(tp.SoftmaxAttention(9.0)), rho0, (0.0, 30.0),
                              t_eval=np.linspace(0.0, 30.0, 61), field=field)
    mass0 = rho0.mass()
    masses = np.sum(traj.density * grid.volumes, axis=1)
    # conservative fluxes: each step moves mass between cells, only round-off is lost
    assert np.max(np.abs(masses - mass0)) / mass0 < 1e-12
    assert traj.info.mass_drift < 1e-12  # the same, over every step, not only saved ones
    assert np.all(traj.density >= 0.0)
    assert traj.info.min_density >= 0.0
    assert traj.info.min_density <= traj.density.min()  # min over all steps <= over saved ones
    # clusters formed: 99 % of the mass in at most 10 % of the cells, one cell holding
    # over 10 % of the mass (uniform: 1/M)
    final = np.sort(traj.density[-1] * grid.volumes)[::-1]
    assert final[: m // 10].sum() > 0.99
    assert final[0] > 0.1
    assert traj.info.n_steps > 60 and traj.info.dt_min < traj.info.dt_max
    assert np.array_equal(traj.t, np.linspace(0.0, 30.0, 61))
    assert np.array_equal(traj.density[0], rho0.values)
    assert isinstance(traj.at(-1), Density)


STATIONARY = {
    "softmax": lambda: tp.SoftmaxAttention(4.0),
    "usa": lambda: tp.UnnormalizedAttention(1.0),
    "sigmoid": lambda: tp.SigmoidAttention(3.0, bias=-1.0),
    "l2": lambda: tp.L2Attention(2.0),
    "sinkhorn": lambda: tp.SinkhornAttention(2.0),
    "multihead": lambda: tp.MultiHeadAttention(
        [tp.SoftmaxAttention(2.0), tp.UnnormalizedAttention(1.0, V=-I2), tp.SigmoidAttention(1.0)]),
}


@pytest.mark.parametrize("field", ["auto", "quadrature"])
@pytest.mark.parametrize("name", STATIONARY)
def test_uniform_density_is_stationary(name, field):
    """X[uniform] = 0 by symmetry. T = 5 keeps the round-off growth e^{lambda T} of these
    (unstable) states below ~30 (lambda <= 0.7 for these betas)."""
    u = Density.uniform(CircleGrid(64))
    traj = tp.solve_meanfield(_dyn(STATIONARY[name]()), u, (0.0, 5.0),
                              t_eval=np.linspace(0.0, 5.0, 51), field=field)
    # 1e-14 = ~60 ulps of 1/(2 pi): round-off of the field times dt, summed over 50 steps
    assert np.max(np.abs(traj.density - u.values)) < 1e-14


@pytest.mark.parametrize("field", ["auto", "quadrature"])
def test_uniform_density_is_stationary_causal(field):
    u = Density.uniform(CausalCircleGrid(3, 32))  # <= 32 x 96 pairs: one thread
    traj = tp.solve_meanfield(_dyn(tp.SoftmaxAttention(4.0, causal=True)), u, (0.0, 5.0),
                              t_eval=np.linspace(0.0, 5.0, 51), field=field)
    assert np.max(np.abs(traj.density - u.values)) < 1e-14  # as above: round-off only


# -- linear growth rates ------------------------------------------------------------------
@pytest.mark.parametrize("model", ["SA", "USA"])
@pytest.mark.parametrize("beta", [1.0, 4.0, 9.0])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_linear_growth_rate_of_mode_k(model, beta, k):
    """rho0 (1 + 1e-4 cos k theta): the fitted rate of mode k over one e-folding matches
    k^2 I_k / (beta I_0) (SA) and k^2 I_k / beta (USA). ive(k, b) = e^{-b} I_k(b)."""
    if model == "SA":
        att, lam = tp.SoftmaxAttention(beta), k * k * ive(k, beta) / (beta * ive(0, beta))
    else:
        att, lam = tp.UnnormalizedAttention(beta), k * k * ive(k, beta) * np.exp(beta) / beta
    grid = CircleGrid(256)
    rho0 = Density.from_function(grid, lambda th: 1.0 + 1e-4 * np.cos(k * th))
    t = np.linspace(0.0, 1.0 / lam, 21)  # 20 steps per e-folding: RK3 error ~ (lam dt)^3/24
    traj = tp.solve_meanfield(_dyn(att), rho0, (0.0, t[-1]), t_eval=t, field="fast")
    rate = _fitted_rate(t, _mode_amplitude(traj.density, k))
    # issue 3 acceptance: 1 %; measured ~3e-5 k^2 (the O((k h)^2) error of the scheme)
    assert rate == pytest.approx(lam, rel=0.01)
    # linear regime: the other modes are only the quadratic coupling a_k^2 / a_0 (harmonic
    # 2k and the mean); measured constant <= 4.3 (USA, beta = 9, k = 1)
    spectrum = np.abs(np.fft.rfft(traj.density[-1]))
    others = np.delete(spectrum[1:], k - 1)
    assert others.max() < 10 * spectrum[k] ** 2 / spectrum[0]


# -- order of convergence ---------------------------------------------------------------------
def _smooth_cell_averages(m):
    """Exact cell averages of (1 + 0.6 cos t + 0.3 sin 2t + 0.2 cos(3t + 1)) / 2 pi."""
    h = 2 * np.pi / m
    e = np.arange(m + 1) * h

    def prim(t):
        return t + 0.6 * np.sin(t) - 0.15 * np.cos(2 * t) + 0.2 * np.sin(3 * t + 1) / 3

    return (prim(e[1:]) - prim(e[:-1])) / h / (2 * np.pi)


def _convergence_slope(att, t_end, ms, m_ref):
    def run(m):
        rho0 = Density(CircleGrid(m), _smooth_cell_averages(m))
        return tp.solve_meanfield(_dyn(att), rho0, (0.0, t_end), t_eval=[0.0, t_end],
                                  field="fast").density[-1]

    ref = run(m_ref)
    errs = []
    for m in ms:
        restricted = ref.reshape(m, -1).mean(axis=1)  # cell averages of the fine solution
        errs.append(np.sum(np.abs(run(m) - restricted)) * 2 * np.pi / m)
    return -np.polyfit(np.log(ms), np.log(errs), 1)[0], errs


def test_order_of_convergence_on_a_smooth_solution():
    """SA, beta = 4, T = 1 from a smooth density (max/min grows to ~280: steep but smooth):
    L1 error vs the cell averages of an M = 8192 solution, for M = 256 .. 2048."""
    slope, errs = _convergence_slope(tp.SoftmaxAttention(4.0), 1.0, [256, 512, 1024, 2048], 8192)
    # issue 3 acceptance: >= 1.8 (measured 2.08; MC limiting at extrema costs a little)
    assert slope >= 1.8, (slope, errs)


@pytest.mark.slow
def test_order_of_convergence_usa_and_beta_9():
    for att, t_end in [(tp.UnnormalizedAttention(2.0), 0.5), (tp.SoftmaxAttention(9.0), 1.0)]:
        slope, errs = _convergence_slope(att, t_end, [256, 512, 1024, 2048], 16384)
        assert slope >= 1.8, (att, slope, errs)  # as above


# -- fast path vs quadrature ---------------------------------------------------------------
FAST_MODELS = {
    "softmax": lambda: tp.SoftmaxAttention(3.0, Q=1.5 * I2, K=0.7 * I2, V=-0.8 * I2),
    "softmax-beta9": lambda: tp.SoftmaxAttention(9.0),
    "softmax-negative-beta": lambda: tp.SoftmaxAttention(-3.0),
    "usa": lambda: tp.UnnormalizedAttention(2.0, Q=1.5 * I2, K=0.7 * I2, V=1.3 * I2),
    "usa-beta9": lambda: tp.UnnormalizedAttention(9.0),
    "sigmoid": lambda: tp.SigmoidAttention(2.0, Q=1.5 * I2, K=0.7 * I2, V=1.3 * I2, bias=-0.4),
    "l2": lambda: tp.L2Attention(2.0, Q=1.2 * I2, K=1.2 * I2, V=0.9 * I2),
    "multihead": lambda: tp.MultiHeadAttention([
        tp.SoftmaxAttention(3.0, V=0.5 * I2), tp.UnnormalizedAttention(1.0, Q=2 * I2),
        tp.SigmoidAttention(4.0, V=-I2, bias=0.5), tp.L2Attention(2.0, K=0.5 * I2)]),
}


@pytest.mark.parametrize("name", FAST_MODELS)
def test_fast_path_matches_quadrature(name):
    """The FFT convolutions reproduce the midpoint quadrature sum exactly (same discrete
    kernel), so the two agree to round-off on a smooth non-uniform density."""
    grid = CircleGrid(512)
    rho = Density.from_function(
        grid, lambda th: np.exp(2 * np.cos(th - 1)) + 0.5 * np.exp(3 * np.cos(2 * th + 0.3))).values
    dyn = _dyn(FAST_MODELS[name]())
    fast = face_velocity(dyn, grid, rho, field="fast")
    quad = face_velocity(dyn, grid, rho, field="quadrature")
    assert fast.shape == quad.shape == (512,)
    scale = np.max(np.abs(quad))
    assert scale > 0.1  # a real, non-trivial field
    # issue 3 acceptance 1e-10 (relative to max |u|); measured ~3e-15
    assert np.max(np.abs(fast - quad)) < 1e-10 * scale
    assert np.array_equal(face_velocity(dyn, grid, rho, field="auto"), fast)


def test_causal_fast_path_matches_quadrature():
    grid = CausalCircleGrid(5, 256)
    rho = Density.from_function(grid, lambda s, th: np.exp(3 * np.cos(th - 4 * s)) + s).values
    dyn = _dyn(tp.SoftmaxAttention(3.0, Q=0.8 * I2, K=1.5 * I2, V=1.2 * I2, causal=True))
    fast = face_velocity(dyn, grid, rho, field="fast")
    quad = face_velocity(dyn, grid, rho, field="quadrature")
    scale = np.max(np.abs(quad))
    assert scale > 0.1
    assert np.max(np.abs(fast - quad)) < 1e-10 * scale  # issue 3 acceptance; measured ~4e-15


def test_general_matrices_use_quadrature(rng):
    """Random Q, K: no fast path; "auto" falls back to the quadrature kernel."""
    att = tp.SoftmaxAttention(2.0, Q=rng.normal(size=(2, 2)), K=rng.normal(size=(2, 2)))
    grid = CircleGrid(64)
    rho = Density.from_function(grid, lambda th: 2 + np.cos(th)).values
    auto = face_velocity(_dyn(att), grid, rho, field="auto")
    assert np.array_equal(auto, face_velocity(_dyn(att), grid, rho, field="quadrature"))
    with pytest.raises(ValueError, match="field='fast' needs rotation-invariant heads"):
        face_velocity(_dyn(att), grid, rho, field="fast")


# -- symmetries ----------------------------------------------------------------------------
def _rough(th):
    return np.exp(2 * np.cos(th - 0.7)) + 0.8 * np.exp(3 * np.cos(3 * th + 0.2)) + 0.3 * np.sin(5 * th) + 0.5


SYMMETRY_CASES = [  # M = 64 for the quadrature: one thread, as above
    (tp.SoftmaxAttention(4.0), "fast", 128),
    (tp.SoftmaxAttention(4.0), "quadrature", 64),
    (tp.UnnormalizedAttention(2.0), "fast", 128),
]


@pytest.mark.parametrize("att, field, m", SYMMETRY_CASES)
def test_rotation_by_whole_cells_rotates_the_solution(att, field, m):
    grid = CircleGrid(m)
    rho0 = Density.from_function(grid, _rough)
    t = np.linspace(0.0, 3.0, 7)
    base = tp.solve_meanfield(_dyn(att), rho0, (0.0, 3.0), t_eval=t, field=field)
    for shift in (1, 17, m // 2):
        rotated = tp.solve_meanfield(_dyn(att), Density(grid, np.roll(rho0.values, shift)),
                                     (0.0, 3.0), t_eval=t, field=field)
        diff = np.max(np.abs(np.roll(base.density, shift, axis=1) - rotated.density))
        # round-off (FFT/quadrature sums in another order) amplified over ~200 unstable
        # steps: measured <= 3e-14 relative
        assert diff < 1e-12 * base.density.max()


@pytest.mark.parametrize("att, field, m", SYMMETRY_CASES)
def test_even_initial_density_stays_even(att, field, m):
    """theta -> -theta maps cell c to cell M-1-c; an even density stays even and its
    sine moment stays 0."""
    grid = CircleGrid(m)
    rho0 = Density.from_function(grid, lambda th: _rough(th) + _rough(-th))
    assert np.allclose(rho0.values, rho0.values[::-1], rtol=1e-14, atol=0)  # even to round-off
    traj = tp.solve_meanfield(_dyn(att), rho0, (0.0, 3.0), t_eval=np.linspace(0.0, 3.0, 7),
                              field=field)
    peak = traj.density.max()
    assert peak > 3 * rho0.values.max()  # the dynamics did something
    # round-off amplified by the unstable dynamics: measured <= 2e-13 relative
    assert np.max(np.abs(traj.density - traj.density[:, ::-1])) < 1e-11 * peak
    sine = np.sum(traj.density * np.sin(grid.angles) * grid.h, axis=1)
    assert np.max(np.abs(sine)) < 1e-11  # same round-off bound, for a mass-1 average


# -- masked (causal) attention on (s, theta) ----------------------------------------------
CAUSAL_THETA0 = np.array([0.3, 1.4, 2.2, -1.0])


def _causal_bumps(grid, centres, kappa):
    """Fibre k: a von Mises bump e^{kappa (cos(theta - centre_k) - 1)}, each fibre of mass 1/S."""
    th = grid.circle.angles
    vals = np.exp(kappa * (np.cos(th[None, :] - centres[:, None]) - 1.0))
    vals /= vals.sum(axis=1, keepdims=True) * grid.circle.h * grid.ds * grid.n_positions
    return Density(grid, vals)


def _fibre_mean_angles(grid, density):
    return np.angle(np.sum(density * np.exp(1j * grid.circle.angles), axis=-1))


def test_causal_fibres_track_causal_particles():
    """S = n = 4 fibres with narrow bumps at the angles of 4 causal tokens (positions i/n):
    the fibre mean angles follow the tokens; the error is the bump width effect O(1/kappa)
    plus O(h^2), so it falls ~4x each time kappa grows 4x."""
    beta, t_end = 2.0, 2.0
    dyn = _dyn(tp.SoftmaxAttention(beta, causal=True))
    t = np.linspace(0.0, t_end, 5)
    x0 = np.stack([np.cos(CAUSAL_THETA0), np.sin(CAUSAL_THETA0)], axis=1)
    particles = tp.simulate(dyn, x0, (0.0, t_end), t_eval=t, method="rk4", dt=1e-3)
    theta_p = np.arctan2(particles.x[..., 1], particles.x[..., 0])
    assert np.max(np.abs(theta_p[-1] - theta_p[0])) > 0.5  # the tokens do move
    grid = CausalCircleGrid(4, 1024)
    kappas = np.array([25.0, 100.0, 400.0])
    errs = []
    for kappa in kappas:
        traj = tp.solve_meanfield(dyn, _causal_bumps(grid, CAUSAL_THETA0, kappa), (0.0, t_end),
                                  t_eval=t, field="fast")
        diff = np.angle(np.exp(1j * (_fibre_mean_angles(grid, traj.density) - theta_p)))
        errs.append(np.max(np.abs(diff)))
    errs = np.array(errs)
    assert np.all(np.diff(errs) < 0), errs
    slope = np.polyfit(np.log(kappas), np.log(errs), 1)[0]
    # bump width sigma^2 = 1/kappa: slope -1 in the limit; measured -1.08
    assert slope < -0.8, (slope, errs)
    assert errs[-1] < 3e-3, errs  # measured 1.4e-3 rad at kappa = 400, M = 1024


def test_causal_first_fibre_does_not_move():
    """Fibre 1 attends only to itself: a bump symmetric about a cell centre contracts in
    place (its mean angle is constant), like token 1 that never moves."""
    grid = CausalCircleGrid(3, 256)
    centres = np.array([grid.circle.angles[40], 2.0, 4.0])  # fibre 1 centred on cell 40
    rho0 = _causal_bumps(grid, centres, 30.0)
    traj = tp.solve_meanfield(_dyn(tp.SoftmaxAttention(3.0, causal=True)), rho0, (0.0, 4.0),
                              t_eval=np.linspace(0.0, 4.0, 9), field="auto")
    means = _fibre_mean_angles(grid, traj.density)
    # the reflection about cell 40 maps the fibre to itself: round-off only
    assert np.max(np.abs(means[:, 0] - centres[0])) < 1e-12
    assert np.max(np.abs(means[-1, 1:] - means[0, 1:])) > 0.1  # later fibres move towards it
    # fibre 1 sharpens (it contracts) and fibre masses never change (no transport in s)
    assert traj.density[-1, 0].max() > 1.5 * traj.density[0, 0].max()
    fibre_mass = np.sum(traj.density * grid.volumes, axis=-1)
    assert np.max(np.abs(fibre_mass - 1.0 / 3.0)) < 1e-14  # conservative per fibre: round-off


# -- the noisy model ------------------------------------------------------------------------
@pytest.mark.parametrize("att", [tp.UnnormalizedAttention(0.0), tp.SoftmaxAttention(0.0)],
                         ids=["usa", "sa"])
@pytest.mark.parametrize("kappa", [1.0, 1.5, 3.0, 4.0])
def test_noisy_beta0_pitchfork_at_kappa_2(att, kappa):
    """beta = 0: X[mu] = P_x(mean), so mode 1 grows at 1/2 and diffusion damps it at
    1/kappa: the order parameter |sum rho e^{i theta} h| decays below kappa = 2 and grows
    above, at the rate 1/2 - 1/kappa."""
    lam = 0.5 - 1.0 / kappa
    grid = CircleGrid(64)
    rho0 = Density.from_function(grid, lambda th: 1.0 + 1e-4 * np.cos(th - 0.4))
    t = np.linspace(0.0, 2.0 / abs(lam), 21)
    traj = tp.solve_meanfield(_dyn(att, kappa), rho0, (0.0, t[-1]), t_eval=t, field="fast")
    r = np.abs(np.sum(traj.density * np.exp(1j * grid.angles) * grid.h, axis=1))
    assert (r[-1] < r[0]) == (kappa < 2.0)
    # measured <= 0.2 % at M = 64 (O(h^2) of the 3-point Laplacian and the transport)
    assert _fitted_rate(t, r) == pytest.approx(lam, rel=0.02)
    assert traj.info.mass_drift < 1e-12  # diffusion fluxes are conservative too


@pytest.mark.slow
def test_noisy_beta0_supercritical_steady_state():
    """kappa = 4 > 2: the density settles on e^{kappa r cos(theta - phi)} with
    r = I_1(kappa r) / I_0(kappa r) (docs/math.md §4.7)."""
    kappa = 4.0
    r_star = brentq(lambda r: ive(1, kappa * r) / ive(0, kappa * r) - r, 1e-3, 1.0)
    grid = CircleGrid(64)
    rho0 = Density.from_function(grid, lambda th: 1.0 + 0.2 * np.cos(th - 0.4))
    traj = tp.solve_meanfield(_dyn(tp.UnnormalizedAttention(0.0), kappa), rho0, (0.0, 60.0),
                              t_eval=[0.0, 50.0, 60.0], field="fast")
    z = np.sum(traj.density * np.exp(1j * grid.angles) * grid.h, axis=1)
    assert abs(abs(z[-1]) - abs(z[-2])) < 1e-8  # stationary (rate -1/kappa-ish decay of the rest)
    assert abs(z[-1]) == pytest.approx(r_star, rel=5e-3)  # O(h^2) at M = 64
    phi = np.angle(z[-1])
    vm = Density.from_function(grid, lambda th: np.exp(kappa * r_star * np.cos(th - phi)))
    assert np.max(np.abs(traj.density[-1] - vm.values)) < 5e-3 * vm.values.max()  # O(h^2)


# -- the time step ----------------------------------------------------------------------------
def test_result_does_not_depend_on_the_saved_times():
    rho0 = _perturbed_uniform(128, 1e-3, seed=1)
    dyn = _dyn(tp.SoftmaxAttention(9.0))
    coarse = tp.solve_meanfield(dyn, rho0, (0.0, 30.0), t_eval=[0.0, 30.0], field="fast")
    fine = tp.solve_meanfield(dyn, rho0, (0.0, 30.0), t_eval=np.linspace(0, 30, 601), field="fast")
    # saving at 61 instead of 601 times changes the result by 3e-3 in L1 (time error)
    assert np.sum(np.abs(coarse.density[-1] - fine.density[-1])) * rho0.grid.h < 1e-2


def test_overflow_stops_with_time_and_place():
    """USA at beta = 800: e^beta overflows float64, the run stops at once and says where."""
    grid = CircleGrid(32)
    rho0 = Density.from_function(grid, lambda th: 2 + np.cos(th))
    where = r"the face velocity is not finite at t=0, first at cell .*CircleGrid\(32\)"
    with pytest.raises(FloatingPointError, match="solve_meanfield stopped: " + where):
        tp.solve_meanfield(_dyn(tp.UnnormalizedAttention(800.0)), rho0, (0.0, 1.0))


# -- bad input ------------------------------------------------------------------------------
def test_solve_meanfield_bad_input(rng):
    grid = CircleGrid(16)
    rho0 = Density.uniform(grid)
    dyn = _dyn(tp.SoftmaxAttention(1.0))
    with pytest.raises(TypeError, match="rho0 must be a Density"):
        tp.solve_meanfield(dyn, rho0.values, (0, 1))
    with pytest.raises(TypeError, match="dyn must be a TokenDynamics"):
        tp.solve_meanfield(tp.SoftmaxAttention(1.0), rho0, (0, 1))
    with pytest.raises(ValueError, match=r"cfl must be in \(0, 0.5\]"):
        tp.solve_meanfield(dyn, rho0, (0, 1), cfl=0.6)
    with pytest.raises(ValueError, match="cfl must be > 0"):
        tp.solve_meanfield(dyn, rho0, (0, 1), cfl=0.0)
    with pytest.raises(ValueError, match="cfl must be > 0"):
        tp.solve_meanfield(dyn, rho0, (0, 1), cfl=-0.1)
    with pytest.raises(ValueError, match="method .the time stepper. must be one of"):
        tp.solve_meanfield(dyn, rho0, (0, 1), method="spectral")
    with pytest.raises(ValueError, match="field must be one of"):
        tp.solve_meanfield(dyn, rho0, (0, 1), field="spectral")
    random_q = _dyn(tp.SoftmaxAttention(1.0, Q=rng.normal(size=(2, 2))))
    with pytest.raises(ValueError, match="field='fast' needs rotation-invariant heads"):
        tp.solve_meanfield(random_q, rho0, (0, 1), field="fast")
    with pytest.raises(ValueError, match="field='fast' needs rotation-invariant heads"):
        tp.solve_meanfield(_dyn(tp.SinkhornAttention(1.0)), rho0, (0, 1), field="fast")
    with pytest.raises(ValueError, match="kappa must be > 0"):
        _dyn(tp.SoftmaxAttention(1.0), kappa=0.0)
    with pytest.raises(ValueError, match="kappa must be > 0"):
        _dyn(tp.SoftmaxAttention(1.0), kappa=-2.0)
    with pytest.raises(ValueError, match="a CircleGrid needs TokenDynamics.*geometry='sphere'"):
        tp.solve_meanfield(tp.TokenDynamics(tp.SoftmaxAttention(1.0), geometry="euclidean"),
                           rho0, (0, 1))
    with pytest.raises(ValueError, match="a CircleGrid needs TokenDynamics.*norm='post'"):
        tp.solve_meanfield(tp.TokenDynamics(tp.SoftmaxAttention(1.0), norm="pre"), rho0, (0, 1))
    with pytest.raises(ValueError, match="acts on d=3"):
        tp.solve_meanfield(_dyn(tp.SoftmaxAttention(1.0, Q=np.eye(3))), rho0, (0, 1))
    with pytest.raises(ValueError, match="masked .*causal.* attention .*CausalCircleGrid"):
        tp.solve_meanfield(_dyn(tp.SoftmaxAttention(1.0, causal=True)), rho0, (0, 1))
    with pytest.raises(ValueError, match="a CausalCircleGrid needs masked attention"):
        tp.solve_meanfield(dyn, Density.uniform(CausalCircleGrid(2, 16)), (0, 1))
    with pytest.raises(ValueError, match="t_span must satisfy t0 < t1"):
        tp.solve_meanfield(dyn, rho0, (1.0, 0.0))
    with pytest.raises(ValueError, match="t_eval must lie inside t_span"):
        tp.solve_meanfield(dyn, rho0, (0.0, 1.0), t_eval=[0.5, 2.0])
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        tp.solve_meanfield(dyn, rho0, (0.0, 1.0), max_steps=0)
    fine = CircleGrid(256)  # dt = cfl h / max|u| ~ 0.05: about 20 steps to t = 1
    with pytest.raises(RuntimeError, match="more than max_steps=3 steps"):
        tp.solve_meanfield(dyn, Density.from_function(fine, lambda th: 2 + np.cos(th)),
                           (0.0, 1.0), t_eval=[0.0, 1.0], max_steps=3)


# -- the benchmark script ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench():
    """benchmarks/bench_meanfield_circle.py imported as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("bench_meanfield_circle", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_benchmark_smoke(bench, capsys, tmp_path):
    out = tmp_path / "bench.json"
    status = bench.main(["--m", "16", "32", "64", "--fast-m", "128", "--repeats", "1",
                         "--fit-from", "16", "--json", str(out)])
    assert status == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [16, 32, 64, 128]
    assert rows[-1][3] == "-"  # 128: FFT only
    assert "fitted exponent" in text and "quadrature p =" in text
    data = json.loads(out.read_text())
    assert data["exit_status"] == 0 and len(data["results"]) == 4
    assert data["fast_exponent"] is not None and data["quadrature_exponent"] is not None
    assert data["max_rel_diff"] < 1e-10  # the fast path is exact up to round-off
    with pytest.raises(SystemExit) as err:
        bench.main(["--m", "2"])
    assert err.value.code == 2
