"""tp.Layers: depth-dependent models (parameters piecewise constant in time).

The acceptance of issue 12 point 1: a two-layer model (different beta and V per layer) gives
the same particles, the same Gaussian moments and the same grid densities as two
consecutive runs, the second started from the end state of the first. Every integrator
lands on the layer boundary and starts the next layer afresh there, so the runs repeat the
same floating-point operations: the agreement is to round-off (1e-12, measured 0).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_sphere

import transformer_pde as tp

T1, T2 = 0.7, 1.5  # the layer boundary and the end; 0.7 is no multiple of the steps below


def _two_layers(rng, d):
    V1 = np.eye(d) + 0.3 * rng.normal(size=(d, d))
    V2 = -0.5 * np.eye(d) + 0.3 * rng.normal(size=(d, d))
    return tp.SoftmaxAttention(1.0, V=V1), tp.SoftmaxAttention(3.0, V=V2)


def _times():
    """Saved times of layer 1 on [0, T1], of layer 2 on [T1, T2], and of the whole run."""
    te1, te2 = np.linspace(0.0, T1, 8), np.linspace(T1, T2, 9)
    return te1, te2, np.concatenate([te1, te2[1:]])


@pytest.mark.parametrize("geometry", ["sphere", "euclidean"])
@pytest.mark.parametrize("method", ["rk4", "euler"])
def test_particles_equal_two_consecutive_runs(rng, geometry, method):
    a1, a2 = _two_layers(rng, 3)
    x0 = random_sphere(rng, 12, 3)
    te1, te2, te = _times()
    dyn = tp.TokenDynamics(tp.Layers([a1, a2], [0.0, T1, T2]), geometry=geometry)
    full = tp.simulate(dyn, x0, (0.0, T2), t_eval=te, method=method, dt=0.03)
    run1 = tp.simulate(tp.TokenDynamics(a1, geometry=geometry), x0, (0.0, T1), t_eval=te1,
                       method=method, dt=0.03)
    run2 = tp.simulate(tp.TokenDynamics(a2, geometry=geometry), run1.x[-1], (T1, T2), t_eval=te2,
                       method=method, dt=0.03)
    both = np.concatenate([run1.x, run2.x[1:]])
    # the same steps in the same arithmetic (the sphere's second run re-normalises its start,
    # a change of ~1 ulp); 1e-12 leaves room for that round-off only
    assert np.max(np.abs(full.x - both)) <= 1e-12
    assert full.info.n_steps == run1.info.n_steps + run2.info.n_steps


def test_particles_boundary_between_saved_times_and_batch(rng):
    """The boundary need not be a saved time (the steps still land on it); a batch of
    states runs the same layers per system."""
    a1, a2 = _two_layers(rng, 3)
    x0 = np.stack([random_sphere(rng, 10, 3) for _ in range(3)])
    dyn = tp.TokenDynamics(tp.Layers([a1, a2], [0.0, T1, T2]))
    full = tp.simulate(dyn, x0, (0.0, T2), t_eval=[0.0, 0.5, T2], dt=0.03)
    run1 = tp.simulate(tp.TokenDynamics(a1), x0, (0.0, T1), t_eval=[0.0, 0.5, T1], dt=0.03)
    run2 = tp.simulate(tp.TokenDynamics(a2), run1.x[-1], (T1, T2), t_eval=[T1, T2], dt=0.03)
    assert np.max(np.abs(full.x[-1] - run2.x[-1])) <= 1e-12  # round-off only, as above
    assert np.max(np.abs(full.x[1] - run1.x[1])) <= 1e-12
    one = tp.simulate(dyn, x0[1], (0.0, T2), t_eval=[0.0, 0.5, T2], dt=0.03)
    assert np.max(np.abs(full.x[:, 1] - one.x)) <= 1e-12  # batch = systems alone (round-off)


def test_dopri5_lands_on_the_boundary(rng):
    """The adaptive method lands on the boundary too; its steps differ from two fresh runs
    (the step size carries over), so the agreement is that of the tolerances: both runs have
    errors ~ rtol |x| = 1e-10, and 1e-8 is 100x that."""
    a1, a2 = _two_layers(rng, 3)
    x0 = random_sphere(rng, 12, 3)
    dyn = tp.TokenDynamics(tp.Layers([a1, a2], [0.0, T1, T2]))
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)
    full = tp.simulate(dyn, x0, (0.0, T2), t_eval=[0.0, T2], **kw)
    run1 = tp.simulate(tp.TokenDynamics(a1), x0, (0.0, T1), t_eval=[0.0, T1], **kw)
    run2 = tp.simulate(tp.TokenDynamics(a2), run1.x[-1], (T1, T2), t_eval=[T1, T2], **kw)
    assert np.max(np.abs(full.x[-1] - run2.x[-1])) <= 1e-8


def test_gaussian_moments_equal_two_consecutive_runs(rng):
    d = 3
    a1, a2 = _two_layers(rng, d)
    dyn = tp.TokenDynamics(tp.Layers([a1, a2], [0.0, T1, T2]), geometry="euclidean")
    mean0 = rng.normal(size=d)
    B = rng.normal(size=(d, d))
    cov0 = 0.02 * (B @ B.T) + 0.02 * np.eye(d)  # small: no finite-time blow-up before T2
    te1, te2, te = _times()
    full = tp.gaussian_moments(dyn, mean0, cov0, te)
    g1 = tp.gaussian_moments(tp.TokenDynamics(a1, geometry="euclidean"), mean0, cov0, te1)
    g2 = tp.gaussian_moments(tp.TokenDynamics(a2, geometry="euclidean"), g1.mean[-1], g1.cov[-1], te2)
    # one DOP853 run per layer, each started as the consecutive run is: round-off only
    assert np.max(np.abs(full.mean - np.concatenate([g1.mean, g2.mean[1:]]))) <= 1e-12
    assert np.max(np.abs(full.cov - np.concatenate([g1.cov, g2.cov[1:]]))) <= 1e-12
    # a boundary that is not a saved time: the run still stops and restarts there
    part = tp.gaussian_moments(dyn, mean0, cov0, [0.0, 0.3, 1.2, T2])
    assert np.max(np.abs(part.mean[-1] - g2.mean[-1])) <= 1e-12
    assert np.max(np.abs(part.cov[-1] - g2.cov[-1])) <= 1e-12


def test_grid_pde_equals_two_consecutive_runs():
    grid = tp.CircleGrid(96)
    a1, a2 = tp.SoftmaxAttention(1.0), tp.SoftmaxAttention(4.0, V=-0.5 * np.eye(2))
    dyn = tp.TokenDynamics(tp.Layers([a1, a2], [0.0, 1.0, 2.0]))
    rho0 = tp.Density.from_function(grid, lambda th: 1 + 0.5 * np.cos(th) + 0.2 * np.sin(3 * th))
    full = tp.solve_meanfield(dyn, rho0, (0.0, 2.0), t_eval=[0.0, 0.5, 1.0, 1.5, 2.0])
    s1 = tp.solve_meanfield(tp.TokenDynamics(a1), rho0, (0.0, 1.0), t_eval=[0.0, 0.5, 1.0])
    s2 = tp.solve_meanfield(tp.TokenDynamics(a2), s1.at(-1), (1.0, 2.0), t_eval=[1.0, 1.5, 2.0])
    # the CFL controller restarts at the boundary as a fresh run does: the same steps
    assert np.max(np.abs(full.density - np.concatenate([s1.density, s2.density[1:]]))) <= 1e-13
    assert full.info.n_steps == s1.info.n_steps + s2.info.n_steps
    assert full.info.mass_drift < 1e-13


def test_velocity_picks_the_layer_and_breakpoints(rng):
    a1, a2 = _two_layers(rng, 3)
    layers = tp.Layers([a1, a2], [0.0, T1, T2])
    dyn = tp.TokenDynamics(layers, norm="mix", tau=0.25)
    x = random_sphere(rng, 6, 3)
    assert dyn.breakpoints == (0.25, T1) and not dyn.autonomous and dyn.layers is layers
    assert layers.index(0.0) == 0 and layers.index(T1) == 1 and layers.index(T2) == 1
    for t, att in ((0.5, a1), (T1, a2), (T2, a2)):
        want = tp.TokenDynamics(att, norm="mix", tau=0.25).velocity(x, t)
        assert np.array_equal(dyn.velocity(x, t), want)
        assert np.allclose(dyn.velocity_reference(x, t), want, rtol=0, atol=1e-12)  # dense vs kernel
    assert np.array_equal(layers.velocity(x, 1.0), a2.velocity(x))
    assert np.array_equal(layers.matrix(x, 0.1), a1.matrix(x))


def test_errors_name_what_is_wrong(rng):
    a = tp.SoftmaxAttention(1.0)
    with pytest.raises(TypeError, match="attentions must be a list"):
        tp.Layers(a, [0, 1])
    with pytest.raises(ValueError, match="at least one layer"):
        tp.Layers([], [0.0])
    with pytest.raises(TypeError, match=r"attentions\[1\] must be an attention object"):
        tp.Layers([a, "softmax"], [0, 1, 2])
    with pytest.raises(TypeError, match=r"attentions\[0\] is itself a Layers"):
        tp.Layers([tp.Layers([a], [0, 1])], [0, 1])
    with pytest.raises(ValueError, match=r"times must have shape \(3,\)"):
        tp.Layers([a, a], [0, 1])
    with pytest.raises(ValueError, match="strictly increasing, but times\\[1\\]=1 >= times\\[2\\]=1"):
        tp.Layers([a, a], [0, 1, 1])
    with pytest.raises(ValueError, match="finite"):
        tp.Layers([a, a], [0, 1, np.inf])
    with pytest.raises(ValueError, match="same dimension d"):
        tp.Layers([tp.SoftmaxAttention(1.0, V=np.eye(2)), tp.SoftmaxAttention(1.0, V=np.eye(3))],
                  [0, 1, 2])
    with pytest.raises(ValueError, match="same number of systems B"):
        tp.Layers([tp.SoftmaxAttention([1.0, 2.0]), tp.SoftmaxAttention([1.0, 2.0, 3.0])], [0, 1, 2])
    dyn = tp.TokenDynamics(tp.Layers([a, a], [0.0, 1.0, 2.0]))
    x0 = random_sphere(rng, 4, 2)
    with pytest.raises(ValueError, match=r"t_span=\[0, 3\] reaches outside the layers"):
        tp.simulate(dyn, x0, (0.0, 3.0))
    with pytest.raises(ValueError, match=r"t=-1 reaches outside"):
        dyn.velocity(x0, -1.0)
    with pytest.raises(ValueError, match="t_eval"):
        tp.gaussian_moments(tp.TokenDynamics(tp.Layers([a, a], [0.0, 1.0, 2.0]), geometry="euclidean"),
                            np.zeros(2), np.eye(2), [0.0, 2.5])
    with pytest.raises(ValueError, match="layer 1 of Layers"):
        tp.solve_meanfield(tp.TokenDynamics(tp.Layers([a, tp.SoftmaxAttention(1.0, causal=True)],
                                                      [0.0, 1.0, 2.0])),
                           tp.Density.uniform(tp.CircleGrid(16)), (0.0, 2.0))
    with pytest.raises(ValueError, match="depth-dependent"):
        tp.blow_up_time(tp.TokenDynamics(tp.Layers([a, a], [0.0, 1.0, 2.0]), geometry="euclidean"),
                        np.eye(2))


def test_equality_and_storage_round_trip(tmp_path, rng):
    a1, a2 = _two_layers(rng, 3)
    layers = tp.Layers([a1, tp.MultiHeadAttention([a2, tp.L2Attention(2.0)])], [0.0, T1, T2])
    same = tp.Layers([a1, tp.MultiHeadAttention([a2, tp.L2Attention(2.0)])], np.array([0.0, T1, T2]))
    assert layers == same and layers != tp.Layers([a1, a1], [0.0, T1, T2])
    assert layers != tp.Layers([a1, tp.MultiHeadAttention([a2, tp.L2Attention(2.0)])], [0.0, 1.0, T2])
    dyn = tp.TokenDynamics(layers)
    assert tp.storage.from_spec(tp.storage.to_spec(dyn)) == dyn
    traj = tp.simulate(dyn, random_sphere(rng, 5, 3), (0.0, T2), t_eval=[0.0, T1, T2], dt=0.1)
    traj.save(tmp_path / "run.h5")
    back = tp.load(tmp_path / "run.h5")
    assert back == traj and back.dynamics.layers == layers


class _Interrupt:
    """Raise KeyboardInterrupt at the k-th saved time (an in-process stand-in for a kill)."""

    def __init__(self, k):
        self.k, self.seen = k, 0

    def __call__(self, t, state):
        self.seen += 1
        if self.seen == self.k:
            raise KeyboardInterrupt


@pytest.mark.parametrize("kind", ["particles", "grid"])
def test_resume_across_a_boundary_bit_identical(tmp_path, rng, kind):
    """A run saved to a file, killed in the second layer and resumed, equals the whole run."""
    if kind == "particles":
        a1, a2 = _two_layers(rng, 3)
        dyn = tp.TokenDynamics(tp.Layers([a1, a2], [0.0, T1, T2]))
        x0 = random_sphere(rng, 8, 3)

        def run(**kw):
            return tp.simulate(dyn, x0, (0.0, T2), t_eval=np.linspace(0.0, T2, 7), dt=0.03, **kw)
    else:
        grid = tp.CircleGrid(64)
        dyn = tp.TokenDynamics(tp.Layers([tp.SoftmaxAttention(1.0), tp.SoftmaxAttention(5.0)],
                                         [0.0, 0.9, 2.0]))
        rho0 = tp.Density.from_function(grid, lambda th: 1 + 0.5 * np.cos(th) + 0.3 * np.sin(3 * th))

        def run(**kw):
            return tp.solve_meanfield(dyn, rho0, (0.0, 2.0), t_eval=np.linspace(0.0, 2.0, 7), **kw)

    ref = run()
    path = tmp_path / "run.h5"
    with pytest.raises(KeyboardInterrupt):
        run(trackers=[tp.trackers.Save(path), _Interrupt(5)])  # the 5th save lies in layer 2
    assert tp.load(path).info.status == "partial"
    assert tp.resume(path) == ref


def test_readme_layers_example_runs():
    """The README's Layers block runs, and its run is the two runs of its layers."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "tp.Layers(" in b]
    space: dict = {}
    exec(compile(block, "README.md", "exec"), space)
    traj, (a1, a2) = space["traj"], space["att"].attentions
    run1 = tp.simulate(tp.TokenDynamics(a1), space["x0"], (0.0, 2.0), t_eval=[0.0, 2.0], dt=0.05)
    run2 = tp.simulate(tp.TokenDynamics(a2), run1.x[-1], (2.0, 5.0), t_eval=[2.0, 5.0], dt=0.05)
    assert traj.x.shape == (3, 32, 3)
    assert np.max(np.abs(traj.x[-1] - run2.x[-1])) <= 1e-12  # round-off (re-normalised start)
