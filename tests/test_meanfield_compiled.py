r"""The compiled mean-field paths (issue 10, point 5) against their readable references.

- The finite-volume right-hand side: ``_FiniteVolume.evaluate`` (the fused circle pass of
  ``transformer_pde/_kernels/finite_volume.py``, or the face-list pass from the grid's
  reconstruction) equals ``evaluate_reference`` (NumPy: reconstruction, upwind fluxes,
  bincounts) on every grid. Both compute the same sums of O(1) terms in another order
  (and divide by the volume before or after adding the diffusion term), so they agree to
  a few eps of the largest |d rho/dt|: 1e-12 has a margin of ~1000.
- The tensor-grid quadrature of a 2-D Cartesian grid (``meanfield/separable.py``) equals the
  attention kernels with the faces as targets and the cells as weighted sources: the same
  sums of N = 10^3..10^4 nonnegative weights times coordinates of size <= 4, so round-off of
  ~N eps relative in the worst case and ~sqrt(N) eps typically (measured 2e-15); 1e-12.
  Where the shifted partition function underflows (large beta, mass at two far corners),
  those faces are handed over to the kernels and the result is still theirs.
- The band-limited circle FFT (decimated transforms, modes above K dropped where the
  Bessel tail is below eps) equals the full FFT and the quadrature: the dropped part is at
  most eps sum_j a_j max w and the transforms' round-off ~1 eps of the same scale, on
  velocities of size ~0.1-1, so 1e-13 relative to max |u| (measured <= 9e-15).
- A whole run with the compiled right-hand side equals one with the reference right-hand
  side: the steps are the same functions of the state up to round-off, so the densities
  agree to round-off amplified by the few hundred steps (measured ~1e-15 relative); 1e-11.
"""

from __future__ import annotations

import numpy as np
import pytest

import transformer_pde as tp
from transformer_pde._kernels import finite_volume as fv
from transformer_pde.meanfield import (
    AxisymmetricGrid,
    CartesianGrid,
    CausalCircleGrid,
    CircleGrid,
    Density,
    SphereGrid,
    face_velocity,
)
from transformer_pde.meanfield.field import (
    _circle_fft,
    _CircleFFT,
    _quadrature,
    make_face_velocity,
    rotation_invariant,
)
from transformer_pde.meanfield.separable import TensorQuadrature
from transformer_pde.meanfield.solver import MeanFieldInfo, _FiniteVolume

#: compiled vs reference right-hand side, relative to max |d rho / dt| (module docstring)
RHS_RTOL = 1e-12


def _rough_values(grid, rng):
    """A positive density with structure at every scale: smooth bumps plus 20 % noise."""
    x = np.asarray(grid.centers).reshape(-1, grid.dim)
    smooth = 1.0 + np.exp(2.0 * np.sin(3.0 * x[:, 0]) + np.cos(2.0 * x[:, -1]))
    values = smooth * (1.0 + 0.2 * rng.random(len(x)))
    return (values / np.sum(values * np.ravel(grid.volumes))).reshape(grid.shape)


CASES = {
    "circle": (lambda: CircleGrid(96), lambda: tp.TokenDynamics(tp.SoftmaxAttention(5.0))),
    "circle noisy": (lambda: CircleGrid(64), lambda: tp.TokenDynamics(tp.SoftmaxAttention(2.0), kappa=3.0)),
    "causal": (lambda: CausalCircleGrid(3, 48),
               lambda: tp.TokenDynamics(tp.SoftmaxAttention(3.0, causal=True), kappa=5.0)),
    "sphere": (lambda: SphereGrid(8), lambda: tp.TokenDynamics(tp.SoftmaxAttention(4.0), kappa=4.0)),
    "axisymmetric": (lambda: AxisymmetricGrid(40), lambda: tp.TokenDynamics(tp.SoftmaxAttention(3.0))),
    "cartesian 1d": (lambda: CartesianGrid([(-2.0, 2.5)], [40]),
                     lambda: tp.TokenDynamics(tp.SoftmaxAttention(1.0, K=[[-1.0]]), geometry="euclidean")),
    "cartesian 2d outflow": (
        lambda: CartesianGrid([(-1.0, 1.0), (-1.5, 1.0)], [12, 14]),
        lambda: tp.TokenDynamics(tp.SoftmaxAttention(2.0, Q=[[1.0, 0.3], [0.0, 1.0]]), geometry="euclidean",
                                 kappa=6.0)),
    "cartesian 2d zero-flux": (
        lambda: CartesianGrid([(-1.0, 1.0), (-1.0, 1.0)], [10, 9], boundary="zero-flux"),
        lambda: tp.TokenDynamics(tp.L2Attention(1.5), geometry="euclidean")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_rhs_matches_reference(name, rng):
    grid_fn, dyn_fn = CASES[name]
    grid, dyn = grid_fn(), dyn_fn()
    rho = _rough_values(grid, rng).ravel()
    problem = _FiniteVolume(dyn, grid, "auto", MeanFieldInfo(method="ssprk3"), 1.0)
    fast, ref = problem.evaluate(rho, 0.0), problem.evaluate_reference(rho, 0.0)
    scale = np.max(np.abs(ref.change))
    assert scale > 1e-3  # a real flow, not a stationary state (0.013 .. 60 here)
    assert np.max(np.abs(fast.change - ref.change)) <= RHS_RTOL * scale
    assert fast.rate == pytest.approx(ref.rate, rel=RHS_RTOL)
    assert np.max(np.abs(fast.u - ref.u)) <= RHS_RTOL * np.max(np.abs(ref.u))


@pytest.mark.parametrize("grid_fn", [lambda: CircleGrid(1024), lambda: CausalCircleGrid(3, 256)],
                         ids=["circle", "causal"])
def test_band_limited_lane_and_stage_match_reference(grid_fn, rng):
    """The circle lane on the band-limited transforms (the benchmark's path: packed Z + iN,
    quotient, finite-volume pass and Runge-Kutta stage in one compiled call) equals the NumPy
    reference, as a right-hand side and as a stage ``ca x + cb (rho + h L rho)``, and the
    minimum and mass it measures on the stage are those of the stage (the same sums as
    min_and_mass; RHS_RTOL as above, the stage values are O(1) sums of three terms)."""
    grid = grid_fn()
    causal = isinstance(grid, CausalCircleGrid)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(3.0, causal=causal))
    rho = _rough_values(grid, rng).ravel()
    problem = _FiniteVolume(dyn, grid, "auto", MeanFieldInfo(method="ssprk3"), 1.0)
    assert problem._lane is not None and problem._lane[1].decimated
    fast, ref = problem.evaluate(rho, 0.0), problem.evaluate_reference(rho, 0.0)
    scale = np.max(np.abs(ref.change))
    assert np.max(np.abs(fast.change - ref.change)) <= RHS_RTOL * scale
    assert fast.rate == pytest.approx(ref.rate, rel=RHS_RTOL)
    assert np.max(np.abs(fast.u - ref.u)) <= RHS_RTOL * np.max(np.abs(ref.u))
    x = rho * (1.0 + 0.1 * rng.random(rho.size))
    h = 0.3 / ref.rate
    combine = (0.75, x, 0.25, h)
    stage = problem.stage(rho, 0.0, combine)
    expected = problem.evaluate_reference(rho, 0.0, combine).combined
    assert np.max(np.abs(stage.combined - expected)) <= RHS_RTOL * np.max(expected)
    checked, lowest, mass, finite = problem._checked
    vol = np.ravel(grid.volumes)
    assert checked is stage.combined and finite
    assert lowest == np.min(stage.combined)
    assert mass == pytest.approx(np.sum(stage.combined * vol), rel=1e-13)  # the same sum, another order
    # the stage left the masses of its output for the next evaluation: the same products
    # rho * vol, so the evaluation there equals one from scratch bit for bit
    again = problem.evaluate(stage.combined, 0.0)
    fresh = problem.evaluate(stage.combined.copy(), 0.0)
    assert np.array_equal(again.change, fresh.change) and np.array_equal(again.u, fresh.u)


def test_bit_reductions_are_the_float_reductions(rng):
    """min_and_mass and max_abs_and_change compare the bits of the doubles as integers: the
    same minimum and maxima as NumPy's, exactly, across signs, -0.0, infinities and
    subnormals; a NaN is reported (not finite / NaN)."""
    vol = np.full(257, 0.5)
    for x in (rng.standard_normal(257), rng.random(257) + 1.0, -rng.random(257), np.zeros(257)):
        x = x.copy()
        x[7], x[100] = -0.0, 5e-320  # a negative zero and a subnormal
        lowest, mass, finite = fv.min_and_mass(x, vol)
        assert lowest == np.min(x) and finite
        assert mass == pytest.approx(0.5 * np.sum(x), rel=1e-13, abs=1e-300)
        prev = rng.standard_normal(257)
        size, change = fv.max_abs_and_change(x, prev)
        assert size == np.max(np.abs(prev)) and change == np.max(np.abs(x - prev))
    x = rng.standard_normal(257)
    x[3] = -np.inf
    assert fv.min_and_mass(x, vol)[0] == -np.inf
    for bad in (np.nan, np.inf):
        x[3] = bad
        assert not fv.min_and_mass(x, vol)[2]
        assert np.isnan(fv.max_abs_and_change(x, np.zeros(257))).all()


@pytest.mark.parametrize("grid", [CircleGrid(16), CartesianGrid([(-1.0, 1.0), (0.0, 1.0)], [6, 5])],
                         ids=["periodic", "faces"])
def test_compiled_rhs_reports_a_non_finite_velocity(grid):
    """One NaN or infinite face velocity makes the outflow rate NaN (the solver then stops)."""
    rho = np.ones(grid.size)
    for bad in (np.nan, np.inf, -np.inf):
        u = np.zeros(len(grid.faces.areas))
        u[3] = bad
        change = np.empty(grid.size)
        areas, vol = grid.faces.areas.astype(float), np.ravel(grid.volumes).astype(float)
        if isinstance(grid, CircleGrid):
            rate = fv.periodic_rhs(rho.reshape(1, -1), u, areas, vol, np.zeros(0), change,
                                   np.empty(grid.size), np.empty(grid.size))
        else:
            lo, hi = grid.reconstruct(rho.reshape(grid.shape))
            rate = fv.face_rhs(rho, u, lo, hi, areas, grid.faces.left, grid.faces.right, vol, np.zeros(0),
                               change)
        assert np.isnan(rate)


def test_run_with_compiled_rhs_matches_reference_run(monkeypatch):
    """SA beta = 6 on CircleGrid(128) to T = 3 (the density concentrates): the whole run with the
    compiled right-hand side equals the run with the NumPy reference."""
    grid = CircleGrid(128)
    rho0 = Density.from_function(grid, lambda th: 1.0 + 0.2 * np.cos(2.0 * th) + 0.1 * np.sin(5.0 * th))
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(6.0))
    t_eval = np.linspace(0.0, 3.0, 7)
    fast = tp.solve_meanfield(dyn, rho0, (0.0, 3.0), t_eval=t_eval)
    monkeypatch.setattr(_FiniteVolume, "evaluate", _FiniteVolume.evaluate_reference)
    ref = tp.solve_meanfield(dyn, rho0, (0.0, 3.0), t_eval=t_eval)
    assert fast.info.n_steps == ref.info.n_steps
    assert np.max(fast.density[-1]) > 1.5 * np.max(rho0.values)  # it did concentrate (1.9x)
    assert np.max(np.abs(fast.density - ref.density)) <= 1e-11 * np.max(ref.density)


# -- the tensor-grid quadrature of a 2-D Cartesian grid ---------------------------------------
TENSOR_HEADS = {
    "not diagonal": lambda: tp.SoftmaxAttention(1.0, K=np.array([[-1.0, 0.4], [-0.2, -0.6]])),
    "diagonal": lambda: tp.SoftmaxAttention(1.5, Q=np.diag([1.0, -0.5])),
    "general V": lambda: tp.SoftmaxAttention(2.0, Q=[[1.0, 0.3], [0.2, 0.8]], V=[[0.5, 0.4], [-0.3, 1.0]]),
    "l2": lambda: tp.L2Attention(1.2, K=[[1.0, 0.2], [0.0, 0.7]]),
    "l2 diagonal": lambda: tp.L2Attention(0.8),
}


@pytest.mark.parametrize("boundary", ["outflow", "zero-flux"])
@pytest.mark.parametrize("name", list(TENSOR_HEADS))
def test_tensor_quadrature_matches_kernels(name, boundary, rng):
    head = TENSOR_HEADS[name]()
    grid = CartesianGrid([(-2.0, 2.0), (-1.5, 2.5)], [30, 34], boundary=boundary)
    a = (_rough_values(grid, rng) * grid.volumes).ravel()
    tensor = TensorQuadrature.build(head, grid)
    assert tensor is not None and tensor.diagonal == (name in ("diagonal", "l2 diagonal"))
    ours, ref = tensor(a), _quadrature(head, grid, a)
    assert np.max(np.abs(ours - ref)) <= 1e-12 * np.max(np.abs(ref))


def test_tensor_quadrature_on_a_partial_support(rng):
    """Mass in a sub-box only (the products run over the rows and columns that hold mass)."""
    head = tp.SoftmaxAttention(3.0, K=np.array([[1.0, -0.5], [0.3, 1.0]]))
    grid = CartesianGrid([(-1.0, 1.0), (-1.0, 1.0)], [24, 20])
    values = np.zeros(grid.shape)
    values[5:11, 12:17] = rng.random((6, 5))
    a = (values * grid.volumes).ravel()
    ref = _quadrature(head, grid, a)
    assert np.max(np.abs(TensorQuadrature.build(head, grid)(a) - ref)) <= 1e-12 * np.max(np.abs(ref))


@pytest.mark.parametrize("diagonal", [False, True])
def test_tensor_quadrature_hands_over_where_z_underflows(diagonal, monkeypatch):
    """beta = 1000 with mass in two opposite corners of [-2, 2]^2: for most faces the shifted
    weights of the corner mass that is not the maximum underflow, so Z is far below the
    handover bound (or 0) there; those faces go to the kernels and the result is finite and
    equal to theirs (1e-12, as above)."""
    q = np.eye(2) if diagonal else np.array([[1.0, 0.3], [0.2, 1.0]])
    head = tp.SoftmaxAttention(1000.0, Q=q)
    grid = CartesianGrid([(-2.0, 2.0), (-2.0, 2.0)], [16, 16])
    values = np.zeros(grid.shape)
    values[0, 0], values[-1, -1] = 1.0, 0.5
    a = (values * grid.volumes).ravel()
    import transformer_pde.meanfield.field as field_module

    handed = []
    kernels = field_module._quadrature

    def spy(head, grid, a, faces=None):
        handed.append(0 if faces is None else int(np.count_nonzero(faces)))
        return kernels(head, grid, a, faces)

    monkeypatch.setattr(field_module, "_quadrature", spy)
    ours = TensorQuadrature.build(head, grid)(a)
    assert handed and handed[0] > 0
    ref = kernels(head, grid, a)
    assert np.all(np.isfinite(ours))
    assert np.max(np.abs(ours - ref)) <= 1e-12 * np.max(np.abs(ref))


def test_tensor_quadrature_is_what_quadrature_and_auto_use(rng):
    """On a 2-D Cartesian grid the solver's field is the tensor quadrature; other heads
    (sigmoid, USA, Sinkhorn) and 1-D grids keep the kernels."""
    grid = CartesianGrid([(-1.0, 1.0), (-1.0, 1.0)], [8, 8])
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0, K=[[1.0, 0.5], [0.0, 1.0]]), geometry="euclidean")
    velocity = make_face_velocity(dyn, grid, "quadrature")
    assert isinstance(velocity.single, TensorQuadrature)
    rho = _rough_values(grid, rng)
    assert np.array_equal(face_velocity(dyn, grid, rho, "auto"), velocity(rho))
    for head in (tp.SigmoidAttention(1.0), tp.UnnormalizedAttention(1.0)):
        assert TensorQuadrature.build(head, grid) is None
    assert TensorQuadrature.build(tp.SoftmaxAttention(1.0), CartesianGrid([(-1.0, 1.0)], [8])) is None


# -- the band-limited circle FFT ---------------------------------------------------------------
@pytest.mark.parametrize("att", [tp.SoftmaxAttention(4.0), tp.SoftmaxAttention(30.0, V=-0.7 * np.eye(2)),
                                 tp.UnnormalizedAttention(2.0, Q=0.5 * np.eye(2))],
                         ids=["sa4", "sa30", "usa"])
def test_band_limited_fft_matches_full_fft_and_quadrature(att):
    grid = CircleGrid(1024)
    rho = Density.from_function(
        grid, lambda th: np.exp(2 * np.cos(th - 1)) + 0.5 * np.exp(3 * np.cos(2 * th))).values
    a = rho * grid.h
    ri = rotation_invariant(att, 2)
    fast = _CircleFFT(ri, grid, 1)
    assert fast.decimated  # this is the band-limited path
    u = fast(a)[0]
    full = _circle_fft(ri, grid, a)[0]
    quad = _quadrature(att, grid, a)
    scale = np.max(np.abs(quad))
    assert np.max(np.abs(u - full)) <= 1e-13 * scale
    assert np.max(np.abs(u - quad)) <= 1e-13 * scale


def test_band_limit_is_not_used_where_the_series_is_long():
    """beta = 1000 needs more modes than a quarter of CircleGrid(128) offers; the sigmoid has
    no Bessel series: both keep the full transforms."""
    grid = CircleGrid(128)
    for att in (tp.SoftmaxAttention(1000.0), tp.SigmoidAttention(2.0)):
        assert not _CircleFFT(rotation_invariant(att, 2), grid, 1).decimated


# -- the benchmark's plain scheme is the same scheme --------------------------------------------
def _bench_pde():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pde.py"
    spec = importlib.util.spec_from_file_location("bench_pde", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_plain_benchmark_scheme_is_the_solver_scheme():
    """The plain NumPy scheme of benchmarks/bench_pde.py (MUSCL-MC, upwind, SSP-RK3, FFT, the
    solver's step rule) gives the solver's densities to round-off (amplified over ~100 steps
    of a concentrating flow: measured 5e-14 at M = 4096, T = 6), so the benchmark compares the
    same computation; and its rows have the fields of the benchmark contract."""
    bench = _bench_pde()
    grid, rho0, dyn = bench._circle_case(256)
    t_eval = np.linspace(0.0, 2.0, 5)
    ours = tp.solve_meanfield(dyn, rho0, (0.0, 2.0), t_eval=t_eval).density
    plain = bench.plain_circle_scheme(rho0.values, 4.0, t_eval)
    assert np.max(np.abs(ours - plain)) <= 1e-11 * np.max(plain)
    rows = bench.circle_rows(256, 0.5, repeats=1) + bench.cartesian_rows(8, 8, repeats=1)
    for row in rows:
        assert {"section", "case", "ours_s", "other", "other_s", "ratio", "target", "holds"} <= set(row)
        assert row["ratio"] == pytest.approx(row["other_s"] / row["ours_s"])
    # the tensor quadrature and the kernel quadrature: the same field, the same run
    assert all(r.get("max_rel_diff", 0.0) < 1e-12 for r in rows)
    assert rows[-1]["final_density_rel_diff"] < 1e-11
