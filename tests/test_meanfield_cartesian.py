r"""The Transformer PDE on R^1 and R^2 (issue 3): softmax attention with V = +-I from a
Gaussian follows the Gaussian closure of docs/math.md §3.3-3.4,

    Sigma(t) = (Sigma0^-1 - t (A + A^T))^-1,   m' = (I + Sigma A) m,   A = beta K^T Q   (V = I),

to a discretisation error of order 2 under refinement; outflow walls warn when mass
leaves the box and zero-flux walls keep it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import transformer_pde as tp
from transformer_pde.meanfield import CartesianGrid, Density, MassLossWarning, face_velocity


def _gaussian(mean, cov):
    prec = np.linalg.inv(np.atleast_2d(cov))
    mean = np.atleast_1d(mean)

    def f(x):
        y = x - mean
        return np.exp(-0.5 * np.einsum("...i,ij,...j->...", y, prec, y))

    return f


def _closure(a_mat, v_sign, mean0, cov0, t):
    """Solve m' = V (I + Sigma A) m, Sigma' = V Sigma A Sigma + Sigma A^T Sigma V^T (V = +-I)
    (docs/math.md §3.3) with scipy; returns m (nt, d) and Sigma (nt, d, d)."""
    d = len(mean0)
    eye = np.eye(d)

    def rhs(_, y):
        m, s = y[:d], y[d:].reshape(d, d)
        dm = v_sign * (eye + s @ a_mat) @ m
        ds = v_sign * (s @ a_mat @ s + s @ a_mat.T @ s)
        return np.concatenate([dm, ds.ravel()])

    sol = solve_ivp(rhs, (t[0], t[-1]), np.concatenate([mean0, cov0.ravel()]), t_eval=t,
                    rtol=1e-12, atol=1e-14, method="DOP853")
    return sol.y[:d].T, sol.y[d:].T.reshape(-1, d, d)


def _moment_errors(dyn, grid, f, t, a_mat, v_sign=1.0):
    """Largest error of the grid density's mean and covariance vs the closure ODE started
    from the grid density's own initial moments, over the saved times."""
    rho0 = Density.from_function(grid, f)
    mean0, cov0 = rho0.moments()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MassLossWarning)  # the box holds the Gaussian
        traj = tp.solve_meanfield(dyn, rho0, (t[0], t[-1]), t_eval=t)
    m_ode, s_ode = _closure(a_mat, v_sign, mean0, cov0, t)
    err_m = err_s = 0.0
    for k in range(len(t)):
        m, s = traj.at(k).moments()
        err_m = max(err_m, np.max(np.abs(m - m_ode[k])))
        err_s = max(err_s, np.max(np.abs(s - s_ode[k])))
    return err_m, err_s, traj, (m_ode, s_ode)


def test_closure_ode_matches_the_closed_form():
    """The helper ODE reproduces Sigma(t) = (Sigma0^-1 - t (A + A^T))^-1 (docs/math.md §3.4)."""
    a_mat = np.array([[-0.9, -0.6], [0.0, -0.8]])
    cov0 = np.array([[0.4, 0.12], [0.12, 0.25]])
    t = np.linspace(0.0, 1.0, 5)
    _, s = _closure(a_mat, 1.0, np.array([0.3, -0.2]), cov0, t)
    closed = np.array([np.linalg.inv(np.linalg.inv(cov0) - tk * (a_mat + a_mat.T)) for tk in t])
    assert np.max(np.abs(s - closed)) < 1e-10  # DOP853 at rtol 1e-12


def test_gaussian_closure_in_r1():
    """beta = 1, Q = 1, K = -1: A = -1, Sigma(t) = (1/Sigma0 + 2t)^-1 halves by T = 1 while
    the mean drifts out (m' = (1 - Sigma) m); the box [-4, 6] holds 7 sd. M = 32 .. 256."""
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0, Q=[[1.0]], K=[[-1.0]]), geometry="euclidean")
    a_mat = np.array([[-1.0]])
    t = np.linspace(0.0, 1.0, 5)
    ms = np.array([32, 64, 128, 256])
    errs = []
    for m in ms:
        grid = CartesianGrid([(-4.0, 6.0)], [m])
        err_m, err_s, traj, (m_ode, s_ode) = _moment_errors(dyn, grid, _gaussian(0.5, 0.5), t, a_mat)
        errs.append(max(err_m, err_s))
        assert traj.info.mass_drift < 1e-10  # velocity points inwards at both walls
    # closed form at T = 1 from Sigma0 = 0.5: 1/(2 + 2) = 0.25; the grid's Sigma0 is 0.5 up to
    # the tail cut off by the box (6.4 sd: ~1e-9), the midpoint sums being spectrally accurate
    assert s_ode[-1, 0, 0] == pytest.approx(0.25, rel=1e-8)
    assert m_ode[-1, 0] > 0.9  # the mean did move (0.5 -> 0.96)
    slope = -np.polyfit(np.log(ms), np.log(errs), 1)[0]
    # second-order scheme and midpoint quadrature: measured 2.02 (errors 1.2e-2 .. 1.8e-4)
    assert slope > 1.8, (slope, errs)
    assert errs[-1] < 5e-4, errs  # measured 1.8e-4 at M = 256


def test_gaussian_closure_in_r1_with_v_minus_identity():
    """V = -I flips the sign: Sigma(t) = (Sigma0^-1 + t (A + A^T))^-1 grows (A = -1, no
    blow-up) and the mean contracts."""
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0, Q=[[1.0]], K=[[-1.0]], V=[[-1.0]]),
                           geometry="euclidean")
    t = np.linspace(0.0, 0.5, 3)
    errs = []
    for m in (64, 128):
        grid = CartesianGrid([(-6.0, 7.0)], [m])
        err_m, err_s, traj, (_, s_ode) = _moment_errors(dyn, grid, _gaussian(0.5, 0.3), t,
                                                        np.array([[-1.0]]), v_sign=-1.0)
        errs.append(max(err_m, err_s))
    assert s_ode[-1, 0, 0] > 0.3 * 1.2  # the Gaussian spread
    assert errs[1] < errs[0] / 3  # second order: ratio ~4 per halving of h
    assert errs[1] < 3e-3, errs  # O(h^2) at h = 0.1: measured 1.75e-3


def test_gaussian_closure_in_r2():
    """A = beta K^T Q non-symmetric with A + A^T negative definite (eigenvalues -2.3, -1.1):
    the Gaussian contracts and only A + A^T drives Sigma, while the mean uses A itself.
    Grids 24^2 .. 48^2 on a box holding 5 sd."""
    q = np.array([[1.0, 0.4], [0.0, 0.8]])
    k = -np.array([[0.9, 0.0], [0.3, 1.0]])
    a_mat = k.T @ q
    assert np.all(np.linalg.eigvalsh(a_mat + a_mat.T) < 0)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0, Q=q, K=k), geometry="euclidean")
    f = _gaussian([0.3, -0.2], [[0.4, 0.12], [0.12, 0.25]])
    t = np.linspace(0.0, 1.0, 5)
    ms = np.array([24, 32, 40, 48])
    errs = []
    for m in ms:
        grid = CartesianGrid([(-3.2, 3.8), (-3.4, 2.6)], [m, m])
        err_m, err_s, traj, (_, s_ode) = _moment_errors(dyn, grid, f, t, a_mat)
        errs.append(max(err_m, err_s))
        assert np.all(traj.density >= 0.0)
    assert np.linalg.det(s_ode[-1]) < 0.5 * np.linalg.det(s_ode[0])  # it contracted (0.40x)
    slope = -np.polyfit(np.log(ms), np.log(errs), 1)[0]
    # measured 2.6 here (pre-asymptotic; 2.1 between 64^2 and 96^2): order >= 1.8
    assert slope > 1.8, (slope, errs)
    assert errs[-1] < 3e-3, errs  # measured 1.7e-3 at 48^2


def test_face_velocity_of_a_gaussian_is_affine():
    """For mu = N(m, Sigma) the softmax field is m + Sigma A x (V = I, tilting). The grid
    measure is a midpoint-sampled Gaussian (spectrally accurate, box of +-10 sd), so the
    quadrature kernel gives the affine field at every face whose tilted mean m + Sigma A x
    stays 5 sd inside the box."""
    beta, q, k = 1.5, 0.8, -1.1
    a = beta * k * q
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta, Q=[[q]], K=[[k]]), geometry="euclidean")
    grid = CartesianGrid([(0.2 - 5.0, 0.2 + 5.0)], [200])
    rho = Density.from_function(grid, _gaussian(0.2, 0.25))
    mean, cov = rho.moments()
    u = face_velocity(dyn, grid, rho.values, field="auto")
    x = grid.faces.points[:, 0]
    tilted = mean[0] + cov[0, 0] * a * x
    exact = tilted * grid.faces.normals[:, 0]
    inside = np.abs(tilted - 0.2) < 2.5
    assert inside.sum() > 100
    # sums of 200 terms of size 1: round-off plus an e^{-12.5} truncation of the tilted tail
    assert np.max(np.abs(u - exact)[inside]) < 1e-9


def _spreading_run(boundary):
    """beta = 1, Q = K = 1: A = +1, Sigma(t) = (1/Sigma0 - 2t)^-1 grows (blow-up at t = 5);
    by T = 2 the sd is 0.41 in the box [-1, 1]; the mean stays 0 (m' = (1 + Sigma) m)."""
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0), geometry="euclidean")
    grid = CartesianGrid([(-1.0, 1.0)], [40], boundary=boundary)
    rho0 = Density.from_function(grid, _gaussian(0.0, 0.1))
    return tp.solve_meanfield(dyn, rho0, (0.0, 2.0), t_eval=np.linspace(0.0, 2.0, 11)), rho0


def test_outflow_warns_when_mass_leaves_a_small_box():
    with pytest.warns(MassLossWarning, match="of the mass left the box"):
        traj, rho0 = _spreading_run("outflow")
    masses = np.sum(traj.density * traj.grid.volumes, axis=1)
    assert np.all(np.diff(masses) <= 1e-15)  # outflow only: the mass never grows (round-off)
    lost = rho0.mass() - masses[-1]
    assert lost > 1e-3  # the Gaussian tail (~2 % of N(0, 0.17) beyond +-1) went out
    assert traj.info.mass_drift == pytest.approx(lost, rel=1e-12)  # the same number
    assert np.all(traj.density >= 0.0)


def test_zero_flux_keeps_the_mass():
    with warnings.catch_warnings():
        warnings.simplefilter("error", MassLossWarning)
        traj, rho0 = _spreading_run("zero-flux")
    masses = np.sum(traj.density * traj.grid.volumes, axis=1)
    assert np.max(np.abs(masses - rho0.mass())) < 1e-13  # conservative fluxes: round-off
    assert traj.info.mass_drift < 1e-13
    assert np.all(traj.density >= 0.0)
    # the mass piles up at both walls instead of leaving
    final = traj.density[-1]
    assert final[-1] > final[-3] and final[0] > final[2]


def test_zero_flux_keeps_the_mass_in_r2():
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0, Q=np.diag([1.0, 0.5])), geometry="euclidean")
    grid = CartesianGrid([(-1.0, 1.0), (-1.0, 1.5)], [16, 20], boundary="zero-flux")
    rho0 = Density.from_function(grid, _gaussian([0.2, 0.1], [[0.1, 0.03], [0.03, 0.15]]))
    traj = tp.solve_meanfield(dyn, rho0, (0.0, 1.5), t_eval=np.linspace(0.0, 1.5, 4))
    masses = np.sum(traj.density * grid.volumes, axis=(1, 2))
    assert np.max(np.abs(masses - 1.0)) < 1e-13  # round-off of sums of 320 terms
    assert np.all(traj.density >= 0.0)


def test_cartesian_bad_input():
    grid = CartesianGrid([(-1.0, 1.0)], [8])
    rho0 = Density.uniform(grid)
    with pytest.raises(ValueError, match="a CartesianGrid needs TokenDynamics.*geometry='euclidean'"):
        tp.solve_meanfield(tp.TokenDynamics(tp.SoftmaxAttention(1.0)), rho0, (0, 1))
    with pytest.raises(ValueError, match="acts on d=2"):
        tp.solve_meanfield(tp.TokenDynamics(tp.SoftmaxAttention(1.0, Q=np.eye(2)),
                                            geometry="euclidean"), rho0, (0, 1))
    with pytest.raises(ValueError, match="field='fast' needs rotation-invariant heads"):
        tp.solve_meanfield(tp.TokenDynamics(tp.SoftmaxAttention(1.0), geometry="euclidean"),
                           rho0, (0, 1), field="fast")
