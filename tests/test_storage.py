"""Storage: every result round-trips through HDF5 to an equal object; a run written while
it goes on survives SIGKILL at any moment and resumes to the uninterrupted result.

Equality here is exact (``==``, bit for bit): saving copies float64 bytes, and a resumed
run repeats the same floating-point operations in the same order, so no tolerance is
needed anywhere except where ``allclose`` itself is tested.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import random_sphere

import transformer_pde as tp
from transformer_pde import storage
from transformer_pde.convergence import ConvergenceStudy

REPO = Path(__file__).resolve().parents[1]


def _datasets(path) -> dict:
    """Every dataset of a file: name -> (dtype, shape, bytes)."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                a = obj[()]
                out[name] = (str(obj.dtype), obj.shape, np.asarray(a).tobytes())
        f.visititems(visit)
    return out


# ---------------------------------------------------------------------------------------
# round trips and equality
# ---------------------------------------------------------------------------------------
def _models(rng):
    Q = rng.normal(size=(3, 3))
    return [
        tp.TokenDynamics(tp.SoftmaxAttention(2.0, Q=Q, K=rng.normal(size=(3, 3)), V=rng.normal(size=(3, 3)),
                                             summation="exact", tol=1e-8)),
        tp.TokenDynamics(tp.SoftmaxAttention(1.5, causal=True), norm="pre"),
        tp.TokenDynamics(tp.UnnormalizedAttention(0.5)),
        tp.TokenDynamics(tp.SigmoidAttention(1.0, bias=-0.5), norm="ngpt", alpha=0.5),
        tp.TokenDynamics(tp.SinkhornAttention(1.0, n_iter=50, tol=1e-9)),
        tp.TokenDynamics(tp.L2Attention(1.0), norm="mix", tau=0.25),
        tp.TokenDynamics(tp.MultiHeadAttention([tp.SoftmaxAttention(1.0),
                                                tp.L2Attention(2.0, V=-np.eye(3))])),
        tp.TokenDynamics(tp.SoftmaxAttention(1.0), geometry="euclidean", kappa=20.0),
    ]


def _made(dyn, x, rng):
    """A trajectory of the model's kind with given data (no run: no kernels to compile)."""
    info = tp.RunInfo(method="rk4", n_steps=7, n_evals=29, dt_min=0.05, dt_max=0.05, wall_time=0.25,
                      params={"t_span": [0.0, 1.0], "method": "rk4", "dt": 0.05, "seed": 7})
    return tp.Trajectory(t=np.linspace(0.0, 1.0, len(x)), x=x, dynamics=dyn, info=info)


def test_trajectories_round_trip(tmp_path, rng):
    """Every attention variant, norm and geometry: save, load, equal model and data."""
    for i, dyn in enumerate(_models(rng)):
        traj = _made(dyn, rng.normal(size=(3, 5, 3)), rng)
        path = tmp_path / f"traj{i}.h5"
        traj.save(path)
        back = tp.load(path)
        assert type(back) is tp.Trajectory
        assert back == traj and back.dynamics == dyn, dyn
        assert back.info.params == traj.info.params
        assert back.info.wall_time == traj.info.wall_time  # timings are kept, only not compared


def test_batched_trajectory_round_trip(tmp_path, rng):
    """A batch (nt, B, n, d) with per-system beta and Q arrays: the arrays become datasets."""
    x0 = np.stack([random_sphere(rng, 4, 2) for _ in range(3)])
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=[0.5, 1.0, 4.0], Q=rng.normal(size=(3, 2, 2))))
    traj = _made(dyn, np.stack([x0, x0[::-1]]), rng)
    traj.save(tmp_path / "batch.h5")
    back = tp.load(tmp_path / "batch.h5")
    assert back.x.shape == (2, 3, 4, 2) and back == traj
    assert np.array_equal(back.dynamics.attention.beta, [0.5, 1.0, 4.0])
    with h5py.File(tmp_path / "batch.h5", "r") as f:
        assert "model/attention/beta" in f and "model/attention/Q" in f
        assert f.attrs["format_version"] == storage.FORMAT_VERSION
        assert f.attrs["package_version"] == tp.__version__
        assert json.loads(f.attrs["params"])["dt"] == 0.05
        assert json.loads(f.attrs["info"])["status"] == "success"


def test_densities_gaussian_round_trip(tmp_path, rng):
    """Density trajectories keep their grid (circle, causal, sphere, Cartesian); Gaussian moments their info.

    The density trajectories are made from data (the solver has its own tests; no kernels to compile).
    """
    from transformer_pde.meanfield.solver import MeanFieldInfo

    cases = [
        (tp.CircleGrid(32), tp.TokenDynamics(tp.SoftmaxAttention(2.0))),
        (tp.CausalCircleGrid(4, 16), tp.TokenDynamics(tp.SoftmaxAttention(2.0, causal=True))),
        (tp.SphereGrid(6), tp.TokenDynamics(tp.SoftmaxAttention(1.0), kappa=5.0)),
        (tp.SphereGrid(4, n_lon=[3, 5, 5, 3]), tp.TokenDynamics(tp.UnnormalizedAttention(1.0))),
        (tp.CartesianGrid([(-3.0, 3.0), (-2.0, 2.0)], [8, 6], boundary="zero-flux"),
         tp.TokenDynamics(tp.SoftmaxAttention(1.0), geometry="euclidean")),
    ]
    for i, (grid, dyn) in enumerate(cases):
        info = MeanFieldInfo(method="ssprk3", n_steps=3, mass_drift=2e-16, min_density=0.01, field="fast",
                             params={"t_span": [0.0, 1.0], "cfl": 0.45})
        density = rng.uniform(0.0, 1.0, (3,) + grid.shape)
        sol = tp.DensityTrajectory(t=np.array([0.0, 0.5, 1.0]), density=density, grid=grid, dynamics=dyn,
                                   info=info)
        sol.save(tmp_path / f"d{i}.h5")
        back = tp.load(tmp_path / f"d{i}.h5")
        assert type(back) is tp.DensityTrajectory and back == sol and back.grid == grid, grid
        assert repr(back.grid) == repr(grid) and back.info.params == info.params
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0), geometry="euclidean")
    g = tp.gaussian_moments(dyn, [0.0, 1.0], np.diag([1.0, 0.5]), [0.0, 0.1, 0.2])
    g.save(tmp_path / "g.h5")
    assert tp.load(tmp_path / "g.h5") == g


def test_convergence_study_and_table_round_trip(tmp_path, rng):
    dist = np.exp(-0.5 * np.log([100, 400, 1600]))[:, None, None] * rng.uniform(0.9, 1.1, (3, 2, 2))
    study = ConvergenceStudy(n=np.array([100, 400, 1600]), t=np.array([0.5, 1.0]), distance=dist,
                             seeds=np.array([0, 1]), p=2.0, expected_slope=-0.5,
                             info={"grid": "CircleGrid(M=64)", "pde_steps": 12})
    study.save(tmp_path / "s.h5")
    back = tp.load(tmp_path / "s.h5")
    assert back == study and back.fit(1) == study.fit(1)
    with h5py.File(tmp_path / "s.h5", "r") as f:  # the fitted rates are in the file for other readers
        assert f["fit/slope"][1] == study.fit(1).slope

    table = storage.Table({"beta": [1.0, np.nan], "n": [8, 16], "ok": [True, False], "name": ["a", "bc"]},
                          attrs={"seed": 3})
    for i in range(3):  # one group per point, as a sweep writes
        table.save(tmp_path / "t.h5", group=f"points/{i:04d}")
    back = storage.load_table(tmp_path / "t.h5", group="points/0002")
    assert back == table and back.attrs == {"seed": 3} and len(back) == 2  # NaN equals NaN
    with pytest.raises(ValueError, match="equal lengths"):
        storage.Table({"a": [1, 2], "b": [1]})


def test_equality_and_allclose(rng):
    """== is exact and elementwise (no 'truth value of an array is ambiguous'); allclose has tolerances."""
    x0 = random_sphere(rng, 4, 2)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    a = tp.simulate(dyn, x0, (0.0, 0.5), t_eval=[0.0, 0.5], dt=0.1)
    b = tp.simulate(dyn, x0, (0.0, 0.5), t_eval=[0.0, 0.5], dt=0.1)
    assert a == b and not (a != b)
    b.x[-1, 0, 0] += 1e-13
    assert a != b and a.allclose(b, rtol=0, atol=1e-12) and not a.allclose(b, rtol=0, atol=1e-14)
    c = tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(1.0 + 1e-13)), x0, (0.0, 0.5),
                    t_eval=[0.0, 0.5], dt=0.1)
    assert not a.allclose(c, atol=1.0)  # a different model is never close
    assert tp.SoftmaxAttention(1.0, Q=np.eye(2)) == tp.SoftmaxAttention(1.0, Q=np.eye(2))
    assert tp.SoftmaxAttention(1.0) != tp.L2Attention(1.0) and tp.CircleGrid(8) != tp.CircleGrid(16)
    assert tp.SphereGrid(6) == tp.SphereGrid(6)


def test_errors_name_what_is_wrong(tmp_path, rng):
    class MyAttention(tp.SoftmaxAttention):
        pass

    x0 = random_sphere(rng, 3, 2)
    traj = tp.simulate(tp.TokenDynamics(MyAttention(1.0)), x0, (0.0, 0.1), t_eval=[0.0, 0.1], dt=0.05)
    with pytest.raises(TypeError, match="cannot store a MyAttention"):
        traj.save(tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()  # nothing half-written
    traj = tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(1.0), norm="ngpt", alpha=lambda t: 1.0),
                       x0, (0.0, 0.1), t_eval=[0.0, 0.1], dt=0.05)
    with pytest.raises(TypeError, match="alpha"):
        traj.save(tmp_path / "x.h5")
    with pytest.raises(TypeError, match="cannot save a dict"):
        storage.save({}, tmp_path / "x.h5")
    good = tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(1.0)), x0, (0.0, 0.1), t_eval=[0.0, 0.1], dt=0.05)
    good.save(tmp_path / "new.h5")
    with h5py.File(tmp_path / "new.h5", "a") as f:
        f.attrs["format_version"] = storage.FORMAT_VERSION + 1
    with pytest.raises(ValueError, match="format version 2.*upgrade"):
        tp.load(tmp_path / "new.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["a"] = 1
    with pytest.raises(ValueError, match="not a transformer_pde result"):
        tp.load(tmp_path / "other.h5")


def test_same_run_twice_bit_identical_datasets(tmp_path, rng):
    """Datasets are bit-identical for the same seeded (noisy) run; timings are attributes only."""
    x0 = random_sphere(rng, 6, 3)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(2.0), kappa=10.0)
    for name in ("a.h5", "b.h5"):
        tp.simulate(dyn, x0, (0.0, 0.5), t_eval=[0.0, 0.25, 0.5], dt=0.05, rng=11,
                    trackers=[tp.trackers.Save(tmp_path / name)])
    da, db = _datasets(tmp_path / "a.h5"), _datasets(tmp_path / "b.h5")
    assert da == db and set(da) >= {"t", "x"}
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert json.loads(f.attrs["params"])["seed"] == 11 and "_journal" not in f
    traj = tp.load(tmp_path / "a.h5")
    traj.save(tmp_path / "c.h5")  # save() of the result writes the same datasets as the tracker
    assert _datasets(tmp_path / "c.h5") == da


# ---------------------------------------------------------------------------------------
# incremental saving and resume
# ---------------------------------------------------------------------------------------
class _Interrupt:
    """Raise KeyboardInterrupt at the k-th saved time (an in-process stand-in for a kill)."""

    def __init__(self, k):
        self.k, self.seen = k, 0

    def __call__(self, t, state):
        self.seen += 1
        if self.seen == self.k:
            raise KeyboardInterrupt


def _interrupted(run, path, k):
    with pytest.raises(KeyboardInterrupt):
        run(trackers=[tp.trackers.Save(path), _Interrupt(k)])


@pytest.mark.parametrize("method, kappa", [("rk4", None), ("dopri5", None), ("euler-maruyama", 4.0)])
def test_resume_particles_bit_identical(tmp_path, rng, method, kappa):
    """Fixed steps, adaptive steps (proposed step, FSAL evaluation) and noise (rng state)."""
    x0 = random_sphere(rng, 12, 3)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(3.0), kappa=kappa)

    def run(**kw):
        return tp.simulate(dyn, x0, (0.0, 2.0), t_eval=np.linspace(0.0, 2.0, 9), method=method,
                           dt=0.05 if method != "dopri5" else None, rng=5, **kw)

    ref = run()
    path = tmp_path / "run.h5"
    _interrupted(run, path, 4)
    part = tp.load(path)
    assert part.info.status == "partial" and len(part.t) == 4
    assert np.array_equal(part.x, ref.x[:4]) and np.array_equal(part.t, ref.t[:4])
    assert part.info.n_steps < ref.info.n_steps
    done = tp.resume(path)
    assert done == ref and tp.load(path) == ref
    assert done.info.n_steps == ref.info.n_steps and done.info.n_evals == ref.info.n_evals
    assert done.info.params == ref.info.params  # the seed survives the resume
    with h5py.File(path, "r") as f:
        assert "_journal" not in f  # finished: the plain layout


@pytest.mark.slow
def test_resume_batch_bit_identical(tmp_path, rng):
    """A batch (B, n, d) with per-system beta: rows of (B, n, d), resumed bit for bit."""
    x0 = np.stack([random_sphere(rng, 6, 3) for _ in range(2)])
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=[1.0, 4.0]))

    def run(**kw):
        return tp.simulate(dyn, x0, (0.0, 1.0), t_eval=np.linspace(0.0, 1.0, 6), dt=0.05, **kw)

    ref = run()
    path = tmp_path / "batch.h5"
    _interrupted(run, path, 3)
    assert tp.load(path).x.shape == (3, 2, 6, 3)
    assert tp.resume(path) == ref


def test_resume_meanfield_bit_identical(tmp_path):
    """The CFL controller's memory (previous face velocities, steps) is in the record."""
    grid = tp.CircleGrid(128)
    rho0 = tp.Density.from_function(grid, lambda th: 1 + 0.5 * np.cos(th) + 0.3 * np.sin(3 * th))
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(6.0))

    def run(**kw):
        return tp.solve_meanfield(dyn, rho0, (0.0, 4.0), t_eval=np.linspace(0.0, 4.0, 9), **kw)

    ref = run()
    assert ref.info.n_steps > 40  # many CFL steps per save interval: the controller's state matters
    path = tmp_path / "pde.h5"
    _interrupted(run, path, 5)
    assert tp.load(path).info.status == "partial"
    assert tp.resume(path) == ref and tp.load(path) == ref


def test_stopped_run_leaves_its_saves(tmp_path, rng):
    """A run stopped by another tracker: the finished file holds the saves up to the stop."""
    x0 = random_sphere(rng, 4, 2)
    traj = tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(1.0)), x0, (0.0, 1.0),
                       t_eval=np.linspace(0.0, 1.0, 6), dt=0.05,
                       trackers=[tp.trackers.Save(tmp_path / "s.h5"), lambda t, x: t >= 0.4])
    back = tp.load(tmp_path / "s.h5")
    assert traj.info.status == back.info.status == "stopped" and len(back.t) == 3 and back == traj
    with pytest.raises(TypeError, match="file name"):
        tp.trackers.Save(3)


def test_torn_record_falls_back_to_previous(tmp_path, rng):
    """A damaged newest record (a torn write) leaves the previous one, one save fewer."""
    x0 = random_sphere(rng, 4, 2)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))

    def run(**kw):
        return tp.simulate(dyn, x0, (0.0, 1.0), t_eval=np.linspace(0.0, 1.0, 6), dt=0.05, **kw)

    ref = run()
    path = tmp_path / "torn.h5"
    _interrupted(run, path, 4)  # rows 0..3, newest record (count 4) in slot 1
    with h5py.File(path, "r") as f:
        offset = f["_journal/records"].id.get_offset() + f["_journal"].attrs["capacity"]
    with open(path, "r+b") as fh:
        fh.seek(offset + 40)
        fh.write(b"\xff" * 8)
    part = tp.load(path)
    assert len(part.t) == 3 and part.info.status == "partial"
    assert tp.resume(path) == ref
    path2 = tmp_path / "none.h5"
    with pytest.raises(KeyboardInterrupt):
        run(trackers=[_Interrupt(1), tp.trackers.Save(path2)])  # killed before the first save is written
    with pytest.raises(ValueError, match="no state to continue from"):
        tp.resume(path2)
    assert len(tp.load(path2).t) == 0


_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import transformer_pde as tp
    kind, path = sys.argv[1], sys.argv[2]

    def slow(t, state):
        time.sleep(0.01)

    with tp.num_threads(1):
        if kind == "particles":
            x0 = np.random.default_rng(1).normal(size=(24, 3))
            x0 /= np.linalg.norm(x0, axis=1, keepdims=True)
            dyn = tp.TokenDynamics(tp.SoftmaxAttention(4.0), kappa=8.0)
            tp.simulate(dyn, x0, (0.0, 3.0), t_eval=np.linspace(0.0, 3.0, 31), dt=0.01, rng=2,
                        trackers=[tp.trackers.Save(path), slow])
        else:
            grid = tp.CircleGrid(128)
            rho0 = tp.Density.from_function(grid, lambda th: 1 + 0.5 * np.cos(th) + 0.2 * np.sin(2 * th))
            tp.solve_meanfield(tp.TokenDynamics(tp.SoftmaxAttention(6.0)), rho0, (0.0, 4.0),
                               t_eval=np.linspace(0.0, 4.0, 31), trackers=[tp.trackers.Save(path), slow])
    print("done", flush=True)
""")


def _child_reference(kind):
    if kind == "particles":
        x0 = np.random.default_rng(1).normal(size=(24, 3))
        x0 /= np.linalg.norm(x0, axis=1, keepdims=True)
        dyn = tp.TokenDynamics(tp.SoftmaxAttention(4.0), kappa=8.0)
        return tp.simulate(dyn, x0, (0.0, 3.0), t_eval=np.linspace(0.0, 3.0, 31), dt=0.01, rng=2)
    grid = tp.CircleGrid(128)
    rho0 = tp.Density.from_function(grid, lambda th: 1 + 0.5 * np.cos(th) + 0.2 * np.sin(2 * th))
    return tp.solve_meanfield(tp.TokenDynamics(tp.SoftmaxAttention(6.0)), rho0, (0.0, 4.0),
                              t_eval=np.linspace(0.0, 4.0, 31))


def _start_child(tmp_path, kind, path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(script), kind, str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _saved_count(path) -> int:
    try:
        return len(tp.load(path).t)
    except (OSError, ValueError, KeyError):
        return -1  # not there yet


def _check_killed_file(path, ref):
    """What a killed run left: valid, every complete save equal to the reference, resumable."""
    if not path.exists():
        return "no file"
    part = tp.load(path)
    k = len(part.t)
    data = part.x if isinstance(part, tp.Trajectory) else part.density
    ref_data = ref.x if isinstance(ref, tp.Trajectory) else ref.density
    assert np.array_equal(data, ref_data[:k]) and np.array_equal(part.t, ref.t[:k])
    if part.info.status != "partial":
        assert part == ref  # the kill came after the run had finished
        return "finished"
    if k == 0:
        return "empty"
    with tp.num_threads(1):
        assert tp.resume(path) == ref
    return "resumed"


def test_sigkill_mid_run_then_resume(tmp_path):
    """A real SIGKILL of a noisy particle run mid-way; the file loads and resumes to the reference."""
    ref = _child_reference("particles")
    path = tmp_path / "killed.h5"
    child = _start_child(tmp_path, "particles", path)
    try:
        deadline = time.monotonic() + 60
        while _saved_count(path) < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    part = tp.load(path)
    assert part.info.status == "partial" and 8 <= len(part.t) < len(ref.t)
    assert _check_killed_file(path, ref) == "resumed"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["particles", "meanfield"])
def test_sigkill_at_random_moments(tmp_path, kind):
    """SIGKILL at 16 random moments of the process's life (start-up, creation of the file, the
    saves, the final rewrite): every file left loads, matches the reference, and resumes to it."""
    ref = _child_reference(kind)
    t0 = time.monotonic()
    full = tmp_path / "full.h5"
    child = _start_child(tmp_path, kind, full)
    while not full.exists() and child.poll() is None:
        time.sleep(0.005)
    made = time.monotonic()  # the Save tracker has made the file: the saves begin
    assert child.wait(timeout=120) == 0
    life, saving = time.monotonic() - t0, time.monotonic() - made
    # 6 kills anywhere in the process's life (start-up included), 10 timed from the moment
    # the file appears (start-up times vary with the machine's load), over the saves and
    # the final rewrite
    draw = np.random.default_rng(5)
    plan = [(False, d) for d in draw.uniform(0.0, 1.1 * life, 6)]
    plan += [(True, d) for d in draw.uniform(0.0, 1.1 * saving, 10)]
    outcomes = []
    for i, (after_file, delay) in enumerate(plan):
        path = tmp_path / f"k{i}.h5"
        child = _start_child(tmp_path, kind, path)
        while after_file and not path.exists() and child.poll() is None:
            time.sleep(0.002)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        outcomes.append(_check_killed_file(path, ref))
    print(kind, {o: outcomes.count(o) for o in set(outcomes)})
    assert outcomes.count("resumed") >= 5, outcomes  # most kills after the file appears hit the saves
