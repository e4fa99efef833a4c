"""The one time-stepping engine: trackers stop runs, throw=False returns partial results,
the noise belongs to the model, and every level reports the same run info."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import random_sphere

import transformer_pde as tp
from transformer_pde import _engine, trackers
from transformer_pde.meanfield import CircleGrid, Density


def _uniform_circle(n: int) -> np.ndarray:
    th = 2.0 * np.pi * (np.arange(n) + 0.5) / n + 0.1 * np.sin(np.arange(n))
    return np.stack([np.cos(th), np.sin(th)], axis=1)


# -- trackers -----------------------------------------------------------------------------
def test_cluster_tracker_stops_at_first_saved_time_with_k_clusters():
    """SA on the circle at beta = 9 from 24 spread tokens: clusters form and merge. The run
    must end at the first saved time whose count is <= 3, which an untracked run of the
    same model (same steps: fixed rk4 landing on the same saved times) confirms."""
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(9.0))
    x0, t_eval = _uniform_circle(24), np.linspace(0.0, 40.0, 81)
    full = tp.simulate(dyn, x0, (0.0, 40.0), t_eval=t_eval, dt=0.05)
    counts = tp.clustering.cluster_count(full)
    k = 4  # k*(9) = 4 clusters form first (test_clustering), from 24 tokens
    first = int(np.argmax(counts <= k))
    assert counts[first] <= k < counts[first - 1], counts  # the case is not trivial

    stop = trackers.StopAtClusters(k)
    traj = tp.simulate(dyn, x0, (0.0, 40.0), t_eval=t_eval, dt=0.05, trackers=[stop])
    assert traj.info.status == "stopped" and not traj.info.success
    assert traj.t[-1] == t_eval[first] and len(traj.t) == first + 1
    assert traj.x.shape == (first + 1, 24, 2)
    np.testing.assert_array_equal(traj.x, full.x[: first + 1])  # the same run, cut short
    assert stop.counts == list(counts[: first + 1])
    assert f"t={t_eval[first]:.9g}" in traj.info.message


def test_tracker_sees_every_saved_time_and_read_only_state(rng):
    seen = []

    def spy(t, x):
        seen.append((t, x.copy()))
        with pytest.raises(ValueError, match="read-only"):
            x[0, 0] = 0.0

    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    t_eval = [0.0, 0.3, 1.0]
    traj = tp.simulate(dyn, random_sphere(rng, 5, 3), (0.0, 1.0), t_eval=t_eval, trackers=[spy])
    assert [t for t, _ in seen] == t_eval and traj.info.status == "success"
    for (_, x), saved in zip(seen, traj.x, strict=True):
        np.testing.assert_array_equal(x, saved)


def test_tracker_stopping_at_the_initial_time(rng):
    traj = tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(1.0)), random_sphere(rng, 4, 3), (0.0, 1.0),
                       trackers=[lambda t, x: True])
    assert traj.info.status == "stopped" and traj.t.tolist() == [0.0] and traj.info.n_steps == 0


def test_record_tracker_matches_the_saved_states(rng):
    rec = trackers.Record(tp.clustering.order_parameter)
    traj = tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(2.0)), random_sphere(rng, 16, 3), (0.0, 2.0),
                       t_eval=np.linspace(0.0, 2.0, 9), trackers=[rec])
    assert rec.t == traj.t.tolist()
    # the same function of the same arrays: equal to round-off (none in fact)
    np.testing.assert_allclose(rec.values, tp.clustering.order_parameter(traj), rtol=0, atol=1e-15)


def test_density_trackers_on_the_grid():
    """A concentrating density passes a peak bound: the run stops at the first saved time
    above it; the peak counter of StopAtClusters sees densities too."""
    grid = CircleGrid(128)
    rho0 = Density.from_function(grid, lambda th: 1.0 + 0.5 * np.cos(th))
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(4.0))
    t_eval = np.linspace(0.0, 10.0, 21)
    full = tp.solve_meanfield(dyn, rho0, (0.0, 10.0), t_eval=t_eval)
    peaks = full.density.max(axis=1)
    n_peaks = tp.clustering.density_peaks(full, 3.0)
    first_cluster = int(np.argmax(n_peaks == 1))
    # the cases are not trivial: one bump above 3x the mean forms before the peak reaches 2
    assert n_peaks[0] == 0 and 1 < first_cluster < int(np.argmax(peaks > 2.0)) < len(t_eval) - 1
    for bound, k in ((2.0, 1), (2.0, 0), (0.5, 1)):  # k = 0: no cluster tracker
        stop = trackers.StopAtDensityPeak(bound)
        count = trackers.StopAtClusters(max(k, 1), factor=3.0 if k else 1e9)
        sol = tp.solve_meanfield(dyn, rho0, (0.0, 10.0), t_eval=t_eval, trackers=[stop, count])
        first = int(np.argmax(peaks > bound))
        if k:
            first = min(first, first_cluster)  # whichever tracker asks first stops the run
        assert sol.info.status == "stopped" and sol.t[-1] == t_eval[first]
        np.testing.assert_array_equal(sol.density, full.density[: first + 1])
        assert stop.peaks == list(peaks[: first + 1])  # every tracker saw every saved time
        assert count.counts == list(tp.clustering.density_peaks(full, count.factor)[: first + 1])
    with pytest.raises(TypeError, match="observes a density"):
        tp.simulate(dyn, _uniform_circle(4), (0.0, 1.0), trackers=[stop])


def test_trackers_are_validated(rng):
    dyn, x0 = tp.TokenDynamics(tp.SoftmaxAttention(1.0)), random_sphere(rng, 4, 3)
    with pytest.raises(TypeError, match=r"trackers\[1\] must be callable"):
        tp.simulate(dyn, x0, (0.0, 1.0), trackers=[lambda t, x: False, 3])
    with pytest.raises(TypeError, match="trackers must be a list of callables"):
        tp.simulate(dyn, x0, (0.0, 1.0), trackers=3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        trackers.StopAtClusters(0)
    with pytest.raises(ValueError, match="bound must be > 0"):
        trackers.StopAtDensityPeak(-1.0)
    with pytest.raises(TypeError, match="f must be a function"):
        trackers.Record(3)


# -- throw=False ------------------------------------------------------------------------------
def test_overflowing_run_returns_its_partial_result_when_asked():
    """Euclidean SA with V = 50 I blows up (|x| grows ~51x per Euler step of dt = 1): with
    throw=False the states saved before the failure come back, with the failure named."""
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0, V=50.0 * np.eye(2)), geometry="euclidean")
    x0 = np.random.default_rng(5).normal(size=(4, 2))
    t_eval = np.arange(0.0, 101.0)
    with pytest.raises(FloatingPointError, match=r"t=\d.*token") as err:
        tp.simulate(dyn, x0, (0.0, 100.0), t_eval=t_eval, method="euler", dt=1.0)
    traj = tp.simulate(dyn, x0, (0.0, 100.0), t_eval=t_eval, method="euler", dt=1.0, throw=False)
    assert traj.info.status == "nonfinite" and traj.info.message == str(err.value)
    assert 10 < len(traj.t) < len(t_eval)
    np.testing.assert_array_equal(traj.t, t_eval[: len(traj.t)])
    assert np.all(np.isfinite(traj.x))
    # what came back is the run itself: the same states as a run that stops before the failure
    head = tp.simulate(dyn, x0, (0.0, traj.t[-1]), t_eval=traj.t, method="euler", dt=1.0)
    np.testing.assert_array_equal(head.x, traj.x)


def test_max_steps_and_grid_failures_with_throw_false():
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    traj = tp.simulate(dyn, _uniform_circle(6), (0.0, 1.0), t_eval=[0.0, 0.5, 1.0], dt=0.1, max_steps=7,
                       throw=False)
    assert traj.info.status == "max_steps" and traj.t.tolist() == [0.0, 0.5]
    assert "max_steps=7" in traj.info.message
    grid = CircleGrid(32)
    rho0 = Density.from_function(grid, lambda th: 2 + np.cos(th))
    sol = tp.solve_meanfield(tp.TokenDynamics(tp.UnnormalizedAttention(800.0)), rho0, (0.0, 1.0),
                             throw=False)
    assert sol.info.status == "nonfinite" and sol.t.tolist() == [0.0]
    assert sol.density.shape == (1, 32) and "face velocity is not finite" in sol.info.message


# -- the model carries the noise ------------------------------------------------------------
def test_kappa_is_part_of_the_model_at_both_levels():
    """One noisy model for particles and the mean field; both results record kappa. The
    mean-field order parameter at beta = 0 decays at 1/kappa - 1/2 (kappa < 2)."""
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(0.0), kappa=1.0)
    assert dyn.kappa == 1.0 and "kappa=1" in repr(dyn)
    traj = tp.simulate(dyn, _uniform_circle(8), (0.0, 0.5), dt=0.01, rng=0)
    assert traj.dynamics.kappa == 1.0 and traj.info.method == "euler-maruyama"
    grid = CircleGrid(64)
    rho0 = Density.from_function(grid, lambda th: 1.0 + 1e-4 * np.cos(th))
    t = np.linspace(0.0, 2.0, 5)
    sol = tp.solve_meanfield(dyn, rho0, (0.0, 2.0), t_eval=t)
    assert sol.dynamics.kappa == 1.0
    r = np.abs(np.sum(sol.density * np.exp(1j * grid.angles) * grid.h, axis=1))
    # 0.2 % at M = 64 measured for the same case in test_meanfield_circle; 2 % is the bound there
    assert np.polyfit(t, np.log(r), 1)[0] == pytest.approx(0.5 - 1.0, rel=0.02)
    quiet = tp.solve_meanfield(tp.TokenDynamics(tp.SoftmaxAttention(0.0)), rho0, (0.0, 2.0), t_eval=t)
    r0 = np.abs(np.sum(quiet.density * np.exp(1j * grid.angles) * grid.h, axis=1))
    assert r0[-1] > r0[0]  # without the noise the mode grows


# -- one run-info base ----------------------------------------------------------------------
def test_every_level_reports_the_same_run_info(rng):
    traj = tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(1.0)), random_sphere(rng, 4, 3), (0.0, 1.0))
    sol = tp.solve_meanfield(tp.TokenDynamics(tp.SoftmaxAttention(1.0)),
                             Density.uniform(CircleGrid(16)), (0.0, 1.0))
    axi = tp.solve_axisymmetric(tp.TokenDynamics(tp.SoftmaxAttention(1.0)), lambda th: 1.0 + 0 * th, 16,
                                (0.0, 0.5))
    for info in (traj.info, sol.info, axi.info):
        assert isinstance(info, tp.RunInfo) and info.status == "success" and info.success
        assert info.n_steps > 0 and info.n_evals >= info.n_steps and info.n_rejected >= 0
        assert info.wall_time > 0.0 and info.message == ""
    assert (traj.info.method, sol.info.method, sol.info.field) == ("rk4", "ssprk3", "auto")
    assert axi.info.field == "fast"
    assert sol.info.n_evals == 3 * (sol.info.n_steps + sol.info.n_rejected)  # three SSP stages


def test_progress_bar_ends_exactly_at_the_final_time(rng, capsys):
    """Summed steps overshoot the total by round-off; the bar must not warn about it."""
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tp.simulate(dyn, random_sphere(rng, 4, 3), (0.0, 0.7), dt=0.1, progress=True)
        tp.solve_meanfield(dyn, Density.uniform(CircleGrid(16)), (0.0, 0.7), progress=True)
    err = capsys.readouterr().err
    assert "t=0.7/0.7" in err and "solve_meanfield" in err


def test_status_values_are_strings():
    assert {s.value for s in _engine.Status} == {"success", "stopped", "nonfinite", "negative_density",
                                                "max_steps", "step_underflow", "partial"}
    assert _engine.Status.STOPPED == "stopped"


def test_gaussian_moments_refuse_a_noisy_model():
    """The moment equations have no diffusion term: a noisy model is refused, not ignored."""
    noisy = tp.TokenDynamics(tp.SoftmaxAttention(1.0), geometry="euclidean", kappa=2.0)
    with pytest.raises(ValueError, match=r"gaussian_moments .* kappa=2 \(noise\)"):
        tp.gaussian_moments(noisy, np.zeros(2), np.eye(2), [0.0, 1.0])
    with pytest.raises(ValueError, match=r"gaussian_closed_form .* kappa=2"):
        tp.gaussian_closed_form(noisy, np.zeros(2), np.eye(2), [0.0, 1.0])
    with pytest.raises(ValueError, match=r"blow_up_time .* kappa=2"):
        tp.blow_up_time(noisy, np.eye(2))


def test_trackers_run_under_the_callers_floating_point_settings(rng):
    """The engine ignores overflow inside steps (to report it with time and token); a
    tracker's own overflow must still raise where the caller asked it to (here: the
    autouse fixture's np.errstate(all='raise'))."""
    def overflowing(t, x):
        return bool(np.exp(np.full(1, 1e3))[0] > 0)

    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    with pytest.raises(FloatingPointError, match="overflow"):
        tp.simulate(dyn, random_sphere(rng, 4, 3), (0.0, 1.0), t_eval=[0.5, 1.0], trackers=[overflowing])
