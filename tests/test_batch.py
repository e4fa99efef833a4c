"""Batches of systems in one simulate call (x0 of shape (B, n, d)) and random weight ensembles.

The claim checked throughout: a batch is B independent systems advanced together, so with
fixed steps ``simulate(dyn, x0)[:, b]`` equals ``simulate(model b, x0[b])``. Both sides run
the same row kernel on the same per-system projections, so the difference is round-off
(measured 0.0, bit for bit, on every case here); 1e-12 leaves room for a BLAS that blocks a
stacked product differently from a single one (ulp-level differences, amplified at most
e^{L t} ~ e^2 over these short runs).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_sphere

import transformer_pde as tp
from transformer_pde import _threads

T_EVAL = [0.0, 0.25, 0.5]
#: equality of a batch member and its separate run: round-off (module docstring)
SAME = 1e-12


def _batch_sphere(rng, b, n, d):
    return np.stack([random_sphere(rng, n, d) for _ in range(b)])


def _separate(dyn, x0, **kwargs):
    """(nt, B, n, d): the systems of the batch run one by one."""
    return np.stack([tp.simulate(dyn._system(b), x0[b], (0.0, 0.5), t_eval=T_EVAL, **kwargs).x
                     for b in range(len(x0))], axis=1)


def _models(rng, b, d):
    """Per-system parameters for each variant with a batched kernel, and shared-parameter ones."""
    beta = rng.uniform(0.5, 4.0, b)
    Q = rng.normal(size=(b, d, d)) / np.sqrt(d)
    K = rng.normal(size=(b, d, d)) / np.sqrt(d)
    V = rng.normal(size=(b, d, d)) / np.sqrt(d)
    return {
        "softmax": tp.SoftmaxAttention(beta, Q, K, V),
        "causal": tp.SoftmaxAttention(beta, Q, K, causal=True),
        "l2": tp.L2Attention(beta, Q, K),
        "usa": tp.UnnormalizedAttention(0.3 * beta, V=0.5 * V),  # tame growth in R^d
        "sigmoid": tp.SigmoidAttention(beta, Q, K, V, bias=-0.5),
        "sinkhorn (shared)": tp.SinkhornAttention(2.0, n_iter=500, tol=1e-6),
        "multihead": tp.MultiHeadAttention([tp.SoftmaxAttention(beta, Q[:, :2], K[:, :2]),
                                            tp.SoftmaxAttention(1.0, V=0.5 * np.eye(d))]),
    }


@pytest.mark.parametrize("geometry", ["sphere", "euclidean"])
def test_batch_equals_separate_calls_every_variant(geometry, rng):
    b, n, d = 3, 7, 3
    x0 = _batch_sphere(rng, b, n, d)
    for name, att in _models(rng, b, d).items():
        dyn = tp.TokenDynamics(att, geometry=geometry)
        traj = tp.simulate(dyn, x0, (0.0, 0.5), t_eval=T_EVAL, method="rk4", dt=0.05)
        assert traj.x.shape == (len(T_EVAL), b, n, d) and traj.batch == b, name
        assert traj.n_tokens == n and traj.dim == d
        err = np.abs(traj.x - _separate(dyn, x0, method="rk4", dt=0.05)).max()
        assert err <= SAME, (name, err)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("norm", ["post", "pre", "ngpt", "mix"])
def test_batch_equals_separate_calls_every_method_and_norm(method, norm, rng):
    b, n, d = 4, 6, 3
    x0 = _batch_sphere(rng, b, n, d)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(rng.uniform(0.5, 3.0, b)), norm=norm, tau=0.2)
    traj = tp.simulate(dyn, x0, (0.0, 0.5), t_eval=T_EVAL, method=method, dt=0.05)
    assert np.abs(traj.x - _separate(dyn, x0, method=method, dt=0.05)).max() <= SAME
    if dyn.state_space.name == "sphere":  # unit norms to round-off at every saved time, every system
        assert np.abs(np.linalg.norm(traj.x, axis=-1) - 1.0).max() <= 1e-14


# slow: it compiles the parallel batch kernels (not cached on disk, ~6 s in every cold run);
# the serial batch kernels are checked against separate calls in the default suite
@pytest.mark.slow
@pytest.mark.parallel
def test_parallel_batch_kernel_equals_serial_and_separate_calls(rng):
    """Above the serial threshold (B n^2 > 32^2 pairs) the parallel kernel is timed and used."""
    b, n, d = 16, 24, 2
    x0 = _batch_sphere(rng, b, n, d)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(rng.uniform(1.0, 8.0, b)))
    v_ref = dyn.velocity_reference(x0)
    _threads._reset()
    with tp.num_threads(None):
        outs = [dyn.velocity(x0) for _ in range(8)]  # 3 + 3 timed calls of each version, then the faster
    with tp.num_threads(1):
        outs.append(dyn.velocity(x0))
    for out in outs:
        assert np.abs(out - v_ref).max() <= SAME  # kernel vs dense reference: round-off of O(1) sums
        assert np.array_equal(out, outs[-1])  # the same row kernel on each system: bit for bit
    traj = tp.simulate(dyn, x0, (0.0, 0.5), t_eval=T_EVAL, dt=0.1)
    assert np.abs(traj.x - _separate(dyn, x0, dt=0.1)).max() <= SAME


@pytest.mark.parametrize("name", ["softmax", "causal", "l2", "usa", "sigmoid", "multihead"])
def test_batched_velocity_matches_reference(name, rng):
    """Kernel vs the dense NumPy reference, system by system; also the BLAS-tile path (k + d > 48)."""
    for d, n in ((3, 9), (26, 5)):
        b = 3
        x0 = _batch_sphere(rng, b, n, d)
        att = _models(rng, b, d)[name]
        dyn = tp.TokenDynamics(att, geometry="euclidean")
        v, ref = dyn.velocity(x0), dyn.velocity_reference(x0)
        scale = max(1.0, np.abs(ref).max())  # USA values reach e^{beta |Q||K|}: relative round-off
        assert np.abs(v - ref).max() <= 1e-12 * scale, (name, d)
        for s in range(b):
            assert np.abs(v[s] - dyn._system(s).velocity(x0[s])).max() <= 1e-12 * scale


@pytest.mark.parametrize("cls", [tp.SoftmaxAttention, tp.UnnormalizedAttention])
def test_symmetric_pairs_batch_hands_a_system_over_to_the_generic_rows(cls, rng):
    """Q = K = I: each system by the symmetric pairs, except system 1, whose tokens of very
    different norms (0.5 and 14.8) at beta = 3 leave the small tokens' rows 656 below the
    shared shift (more than 600): the generic rows in the same call. Every system equals
    the dense reference."""
    x = rng.normal(size=(3, 12, 2))
    x[1] = 0.5 * random_sphere(rng, 12, 2)
    x[1, 6:] *= 29.6  # |x|^2 = 219: with beta = 3 the shift is 657 (e^657 finite, for USA)
    att = cls(np.array([1.0, 3.0, 0.2]))
    dyn = tp.TokenDynamics(att, geometry="euclidean")
    v, ref = dyn.velocity(x), dyn.velocity_reference(x)
    for s in range(3):  # USA at beta = 50 reaches e^{50 |x|^2}: relative round-off
        assert np.abs(v[s] - ref[s]).max() <= 1e-12 * max(1.0, np.abs(ref[s]).max())


def test_shared_model_on_a_batch(rng):
    """A model without batched parameters moves every system of a batch (one beta for all)."""
    x0 = _batch_sphere(rng, 5, 6, 2)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(3.0))
    traj = tp.simulate(dyn, x0, (0.0, 0.5), t_eval=T_EVAL, dt=0.05)
    assert np.abs(traj.x - _separate(dyn, x0, dt=0.05)).max() <= SAME
    assert dyn.batch is None and traj.batch == 5


def test_default_dt_is_the_smallest_of_the_systems(rng):
    """dt=None: the batch takes the smallest of the systems' default steps."""
    x0 = _batch_sphere(rng, 3, 6, 3)
    beta = np.array([0.5, 1.0, 2.0])
    V = np.stack([s * np.eye(3) for s in (1.0, 30.0, 2.0)])  # system 1 moves fastest: smallest dt
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta, V=V), geometry="euclidean")
    t_eval = [0.0, 0.05]
    traj = tp.simulate(dyn, x0, (0.0, 0.05), t_eval=t_eval)
    steps = [tp.simulate(dyn._system(b), x0[b], (0.0, 0.05), t_eval=t_eval).info.n_steps for b in range(3)]
    assert traj.info.n_steps == max(steps) == steps[1] > steps[0]
    one = tp.simulate(dyn._system(1), x0[1], (0.0, 0.05), t_eval=t_eval)
    assert np.abs(traj.x[:, 1] - one.x).max() <= SAME


def test_dopri5_batch_holds_every_system_to_the_tolerance(rng):
    """One step size for the batch, accepted on the largest per-system error norm.

    Each system then meets the tolerance it meets alone: its end state is within ~rtol
    of an accurate solution (rk4 at dt = 1e-3, error ~1e-12); 20 rtol covers the usual
    accumulation of local errors over the run (the separate runs: 2-5 rtol measured).
    """
    b, n, d = 4, 6, 3
    x0 = _batch_sphere(rng, b, n, d)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(np.array([0.5, 2.0, 5.0, 9.0])))
    rtol = 1e-6
    traj = tp.simulate(dyn, x0, (0.0, 0.5), t_eval=T_EVAL, method="dopri5", rtol=rtol, atol=1e-9)
    exact = _separate(dyn, x0, method="rk4", dt=1e-3)
    assert np.abs(traj.x - exact).max() <= 20 * rtol
    alone = [tp.simulate(dyn._system(s), x0[s], (0.0, 0.5), t_eval=T_EVAL, method="dopri5", rtol=rtol,
                         atol=1e-9).info.n_steps for s in range(b)]
    assert traj.info.n_steps >= max(alone) - 1  # held to the hardest system (first-step choice: +-1)


def test_trackers_see_the_batch(rng):
    x0 = _batch_sphere(rng, 3, 5, 2)
    seen = []

    def tracker(t, x):
        seen.append((t, x.shape, x.flags.writeable))
        return t >= 0.25

    traj = tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(1.0)), x0, (0.0, 0.5), t_eval=T_EVAL,
                       dt=0.05, trackers=[tracker])
    assert seen == [(0.0, (3, 5, 2), False), (0.25, (3, 5, 2), False)]
    assert traj.info.status == "stopped" and traj.x.shape == (2, 3, 5, 2)


def test_noisy_batch_is_seeded_and_stays_on_the_sphere(rng):
    x0 = _batch_sphere(rng, 3, 5, 3)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0), kappa=4.0)
    a = tp.simulate(dyn, x0, (0.0, 0.5), t_eval=T_EVAL, dt=0.05, rng=7)
    b = tp.simulate(dyn, x0, (0.0, 0.5), t_eval=T_EVAL, dt=0.05, rng=7)
    assert np.array_equal(a.x, b.x) and a.x.shape == (3, 3, 5, 3)
    assert np.abs(np.linalg.norm(a.x, axis=-1) - 1.0).max() <= 1e-14
    assert np.abs(a.x[-1, 0] - a.x[-1, 1]).max() > 0.0


def test_overflow_names_the_system_and_token(rng):
    x0 = _batch_sphere(rng, 3, 4, 3)
    dyn = tp.TokenDynamics(tp.UnnormalizedAttention(np.array([1.0, 800.0, 1.0])))
    with pytest.raises(FloatingPointError, match=r"token i=\d of system b=1"):
        tp.simulate(dyn, x0, (0.0, 0.5), t_eval=T_EVAL, dt=0.05)
    euclid = tp.TokenDynamics(dyn.attention, geometry="euclidean")
    with pytest.raises(FloatingPointError, match=r"token \d of system 1"):
        euclid.velocity(x0)


def test_bad_batches(rng):
    x0 = _batch_sphere(rng, 3, 4, 2)
    batched = tp.TokenDynamics(tp.SoftmaxAttention(np.ones(3)))
    with pytest.raises(ValueError, match=r"batch of 3 models.*x0 must be a batch of states of shape \(3, n"):
        tp.simulate(batched, x0[0], (0.0, 1.0))
    with pytest.raises(ValueError, match=r"batch of 3 models, but x0 holds 2 systems"):
        tp.simulate(batched, x0[:2], (0.0, 1.0))
    with pytest.raises(ValueError, match=r"x must be a batch of states.*TokenDynamics"):
        batched.attention.velocity(x0[0])
    with pytest.raises(ValueError, match=r"agree on the number of systems B.*beta: B=3.*V: B=2"):
        tp.SoftmaxAttention(np.ones(3), V=np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"beta must be a real number or an array of shape \(B,\)"):
        tp.SoftmaxAttention(np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"Q must have shape \(k, d\), or \(B, k, d\)"):
        tp.SoftmaxAttention(1.0, Q=np.ones((1, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"beta has an empty batch axis"):
        tp.SoftmaxAttention(np.ones(0))
    with pytest.raises(ValueError, match=r"V must be finite, but entry \(1, 0, 0\)"):
        tp.SoftmaxAttention(1.0, V=np.stack([np.eye(2), np.full((2, 2), np.nan)]))
    with pytest.raises(ValueError, match="Q and K must have the same shape"):
        tp.SoftmaxAttention(1.0, Q=np.ones((3, 2, 2)), K=np.ones((3, 3, 2)))
    with pytest.raises(ValueError, match="SinkhornAttention does not take per-system parameters"):
        tp.SinkhornAttention(np.ones(3))
    with pytest.raises(ValueError, match=r"same number of systems B, got B in \[2, 3\]"):
        tp.MultiHeadAttention([tp.SoftmaxAttention(np.ones(3)), tp.SoftmaxAttention(np.ones(2))])
    with pytest.raises(ValueError, match=r"token 2 of system 1 has norm 2"):
        y = x0.copy()
        y[1, 2] *= 2.0
        tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(1.0)), y, (0.0, 1.0))
    with pytest.raises(ValueError, match=r"x0 must have shape \(n, d\) or \(B, n, d\)"):
        tp.simulate(batched, x0[None], (0.0, 1.0))
    assert "beta=array(3,)" in repr(batched.attention)


# ---------------------------------------------------------------------------------------
# random weight ensembles
# ---------------------------------------------------------------------------------------
def test_random_weights_structure(rng):
    d, b = 4, 5
    for kind in tp.WEIGHT_KINDS:
        one = tp.random_weights(kind, d, rng=3)
        again = tp.random_weights(kind, d, rng=3)
        batch = tp.random_weights(kind, d, rng=3, batch=b)
        assert one["V"].shape == (d, d) and batch["V"].shape == (b, d, d)
        assert np.array_equal(one["V"], again["V"])  # seeded
        att = tp.SoftmaxAttention(1.0, **batch)
        assert att.batch == b and att.dim == d
        V = batch["V"]
        if kind == "goe":
            assert np.array_equal(V, np.swapaxes(V, 1, 2))
        if kind == "psd":
            assert np.linalg.eigvalsh(V).min() >= -1e-12 * np.abs(V).max()  # PSD to round-off
        if kind in ("kq", "-kq"):
            sign = 1.0 if kind == "kq" else -1.0
            assert np.array_equal(V, sign * (np.swapaxes(batch["K"], 1, 2) @ batch["Q"]))
        else:
            assert batch["Q"] is None and batch["K"] is None


def test_random_weights_scalings(rng):
    """Second moments against their exact values, within 5 standard errors of the mean.

    d = 6, B = 2000 draws: gaussian-product E V_ij^2 = 1; GOE E tr(V^2)/d = (d + 1)/d;
    psd E V = sqrt(d) I (diagonal mean sqrt(d)); kq E tr(Q^T Q) = d (entries of variance 1/d).
    """
    d, b = 6, 2000

    def near(samples, value):
        samples = np.ravel(samples)
        se = samples.std(ddof=1) / np.sqrt(samples.size)
        assert abs(samples.mean() - value) <= 5 * se, (samples.mean(), value, se)

    near(tp.random_weights("gaussian-product", d, rng, batch=b)["V"] ** 2, 1.0)
    V = tp.random_weights("goe", d, rng, batch=b)["V"]
    near(np.einsum("bij,bji->b", V, V) / d, (d + 1) / d)
    near(np.einsum("bii->b", tp.random_weights("psd", d, rng, batch=b)["V"]) / d, np.sqrt(d))
    near(np.sum(tp.random_weights("kq", d, rng, batch=b)["Q"] ** 2, axis=(1, 2)), d)


def test_random_weights_bad_input():
    with pytest.raises(ValueError, match="kind must be one of"):
        tp.random_weights("wigner", 3, rng=0)
    with pytest.raises(ValueError, match="d must be >= 1"):
        tp.random_weights("goe", 0, rng=0)
    with pytest.raises(TypeError, match="batch must be an integer"):
        tp.random_weights("goe", 3, rng=0, batch=2.0)
    with pytest.raises(TypeError, match="rng must be"):
        tp.random_weights("goe", 3, rng="seed")


def test_random_weight_sweep_in_one_call(rng):
    """A seed sweep over GOE value matrices, as one batched run."""
    b, n, d = 6, 5, 3
    w = tp.random_weights("goe", d, rng, batch=b)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0, **w), geometry="euclidean")
    x0 = rng.normal(size=(b, n, d))
    traj = tp.simulate(dyn, x0, (0.0, 0.5), t_eval=T_EVAL, dt=0.05)
    assert np.abs(traj.x - _separate(dyn, x0, dt=0.05)).max() <= SAME


# ---------------------------------------------------------------------------------------
# the compiled per-stage sphere operations of the steppers
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 3), (4, 5, 2), (3, 6, 12)])
def test_compiled_projection_and_retraction_match_numpy(shape, rng):
    """Sphere._project_fast / _retract_fresh vs the NumPy formulas of Sphere.project / retract.

    The same sums in the same order for d <= 8 (measured: bit for bit); NumPy sums longer
    rows pairwise, so 4 ulp of the O(1) values.
    """
    sphere = tp.Sphere()
    x = rng.normal(size=shape)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    v = rng.normal(size=shape)
    assert np.abs(sphere._project_fast(x, v) - sphere.project(x, v)).max() <= 4 * np.finfo(float).eps
    y = 2.0 * v
    expected = sphere.retract(y)
    assert np.abs(sphere._retract_fresh(y) - expected).max() <= 4 * np.finfo(float).eps
    assert np.abs(np.linalg.norm(y, axis=-1) - 1.0).max() <= 4 * np.finfo(float).eps  # in place
    strided = v[..., ::2]  # not contiguous: the NumPy formulas
    assert np.array_equal(sphere._project_fast(x[..., ::2], strided), sphere.project(x[..., ::2], strided))
    zero = np.zeros(shape)  # a row of norm 0 gives NaN, as 0 / 0 in the NumPy formula (the
    assert np.isnan(sphere._retract_fresh(zero)).all()  # steppers' finiteness check catches it)


# ---------------------------------------------------------------------------------------
# the benchmark scripts follow the contract (tiny cases; timings are not asserted)
# ---------------------------------------------------------------------------------------
def _bench(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, params", [
    ("bench_batch", {"B": 6, "T": 0.3, "separate": 2, "repeats": 1}),
    ("bench_small", {"steps": 5, "repeats": 1}),
])
def test_benchmark_rows_follow_the_contract(name, params):
    rows = _bench(name).measure(quick=True, params=params)
    keys = {"section", "case", "ours_s", "other", "other_s", "ratio", "target", "holds"}
    for row in rows:
        assert keys <= set(row) and row["ours_s"] > 0 and row["ratio"] == row["other_s"] / row["ours_s"]
        assert row["max_diff"] <= 1e-12  # the same steps on the same numbers: round-off


def test_single_model_solvers_refuse_a_batched_model():
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(np.ones(2)), geometry="euclidean")
    with pytest.raises(ValueError, match="dyn must be a single model, but it is a batch of 2 models"):
        tp.gaussian_moments(dyn, np.zeros(2), np.eye(2), [0.0, 1.0])


def test_readme_batch_example_runs(capsys):
    """The README's batch block runs: 64 systems, beta from 0.5 to 8 (cluster fractions 0..1)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (block,) = [b for b in blocks if "SoftmaxAttention(beta=np.linspace" in b]
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("(2, 64, 32, 2)")


def test_mean_field_solvers_refuse_a_batched_model():
    """A grid PDE has one model: a batch of models is refused by name, not broadcast."""
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=np.array([1.0, 2.0])))
    rho0 = tp.Density.uniform(tp.CircleGrid(16))
    with pytest.raises(ValueError, match="mean-field solvers: dyn must be a single model.*batch of 2"):
        tp.solve_meanfield(dyn, rho0, (0.0, 0.1))
    with pytest.raises(ValueError, match="axisymmetric solver: dyn must be a single model"):
        tp.solve_axisymmetric(dyn, lambda th: 1.0 + 0 * th, 32, (0.0, 0.1))
