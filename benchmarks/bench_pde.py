r"""Benchmark: the grid PDE at full speed (issue 10, point 5).

Two comparisons, each timed in one run with interleaved repeats (ours, other, ours,
...) after one untimed warm-up of each (JIT compilation or cache load, FFT plans), and
reported as medians and their ratio other / ours (a speed-up):

- **circle PDE**: ``tp.solve_meanfield`` for SA post-LN, beta = 4, on ``CircleGrid(4096)``
  from :math:`\rho_0 \propto 1 + 0.1\cos 3\theta` to T = 6 (the mode 3 grows at
  :math:`9 I_3(4)/(4 I_0(4)) \approx 0.66` and the density gathers into three clusters:
  at T = 6 84 % of the mass lies in 10 % of the cells), against :func:`plain_circle_scheme`,
  a plain NumPy scheme of the same order written here: MC-limited MUSCL reconstruction,
  upwind fluxes, SSP-RK3, FFT convolutions with precomputed spectra for the face
  velocity, and the solver's step rule (CFL 0.45 on the outflow rate, the velocity's rate
  of change, growth at most 2x a step, the positivity redo, steps landing on the 101 saved
  times). Target: ours at least 5x faster. The largest difference of the final densities,
  relative to their maximum, is reported (the same scheme: round-off, amplified by the
  clustering dynamics).
- **R^2 quadrature**: the face velocity on a 2-D ``CartesianGrid`` (N cells, F faces), ours
  (the tensor-grid products of ``transformer_pde.meanfield.separable``) against the
  quadrature as of before them, :func:`baseline_quadrature` (the attention kernel with the
  F faces as targets and the N cells as weighted sources, the package's own code); one
  evaluation on 128 x 128 cells, for the Gaussian validation's model (``Q = I``,
  ``K = A^T`` with A not symmetric, so :math:`K^\top Q` is not diagonal: one matrix product per
  block of faces) and for a diagonal :math:`K^\top Q` (three small products in all), and
  whole runs to T = 1 with each (64 x 64 cells; 128 x 128 with ``--full-run``, where the
  old quadrature takes 5-20 minutes), with the largest difference of the final densities.
  Target: at least 10x.

Usage::

    python benchmarks/bench_pde.py                 # ~1-2 min
    python benchmarks/bench_pde.py --full-run      # + the whole R^2 runs at 128^2 (5-20 min)
    python benchmarks/bench_pde.py --quick         # < 60 s
    python benchmarks/bench_pde.py --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
    import transformer_pde as tp
except ImportError:  # run from a checkout without installing: the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import transformer_pde as tp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling run_all.py
from run_all import write_json_atomic  # noqa: E402 - one atomic JSON writer for every benchmark

from transformer_pde.meanfield import face_velocity, separable

CFL = 0.45


# -- the circle: a plain NumPy scheme of the same order ---------------------------------------
def plain_circle_scheme(rho0: np.ndarray, beta: float, t_eval: np.ndarray, cfl: float = CFL) -> np.ndarray:
    """SA post-LN on the circle (Q = K = V = I) by MUSCL + SSP-RK3 + FFT, in plain NumPy.

    ``rho0`` (M,) on the cells ``[c h, (c+1) h)``; returns the densities at ``t_eval`` (nt, M).
    """
    m = len(rho0)
    h = 2.0 * np.pi / m
    psi = (np.arange(m) - 0.5) * h  # face f to cell j: angle (f - j - 1/2) h
    w = np.exp(beta * (np.cos(psi) - 1.0))
    z_hat, n_hat = np.fft.rfft(w), np.fft.rfft(-w * np.sin(psi))

    def rhs(rho):
        fa = np.fft.rfft(rho * h)
        u = np.fft.irfft(fa * n_hat, n=m) / np.fft.irfft(fa * z_hat, n=m)  # face c: between c-1, c
        up, down = np.roll(rho, -1) - rho, rho - np.roll(rho, 1)
        mid = 0.5 * (up + down)
        mag = np.minimum(np.abs(mid), 2.0 * np.minimum(np.abs(up), np.abs(down)))
        slope = np.where(up * down > 0.0, np.sign(mid) * mag, 0.0)
        lo, hi = np.roll(rho + 0.5 * slope, 1), rho - 0.5 * slope
        flux = np.maximum(u, 0.0) * lo + np.minimum(u, 0.0) * hi
        rate = np.max(np.maximum(np.roll(u, -1), 0.0) + np.maximum(-u, 0.0)) / h
        return (flux - np.roll(flux, -1)) / h, rate, u

    rate_model = 1.0 + beta  # |V| (1 + beta): how fast the field can change
    rho, t = rho0.copy(), float(t_eval[0])
    out = [rho0.copy()]
    u_prev = dt_prev = dt_free = None
    for target in t_eval[1:]:
        while t < target:
            change, rate, u = rhs(rho)
            lam = rate_model
            if u_prev is not None:
                size = np.max(np.abs(u_prev))
                lam = min(np.max(np.abs(u - u_prev)) / dt_prev / size, rate_model) if size > 0 else 0.0
            dt_free = min(cfl / max(rate, lam), np.inf if dt_free is None else 2.0 * dt_free)
            dt = min(dt_free, target - t)
            while True:  # redo the step while a stage breaks the positivity bound
                rho1 = rho + dt * change
                change1, rate1, _ = rhs(rho1)
                rho2 = 0.75 * rho + 0.25 * (rho1 + dt * change1)
                change2, rate2, _ = rhs(rho2)
                fastest = max(rate, rate1, rate2)
                if dt * fastest <= 0.5:
                    break
                dt = min(cfl / fastest, target - t)
            rho = rho / 3.0 + 2.0 / 3.0 * (rho2 + dt * change2)
            u_prev, dt_prev = u, dt
            t = float(target) if dt >= target - t else t + dt
        out.append(rho)
    return np.array(out)


def _circle_case(m: int):
    grid = tp.CircleGrid(m)
    rho0 = tp.Density.from_function(grid, lambda th: 1.0 + 0.1 * np.cos(3.0 * th))
    return grid, rho0, tp.TokenDynamics(tp.SoftmaxAttention(4.0))


def _interleaved(fns: dict, repeats: int, warmup: bool = True) -> tuple[dict, dict, dict]:
    """Median seconds of each callable, timed in turn (after an untimed warm-up round)."""
    times = {k: [] for k in fns}
    results = {k: fn() for k, fn in fns.items()} if warmup else {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            results[k] = fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, results, times


def circle_rows(m: int = 4096, t_end: float = 6.0, repeats: int = 3) -> list[dict]:
    """The circle PDE, ours vs the plain NumPy scheme."""
    grid, rho0, dyn = _circle_case(m)
    t_eval = np.linspace(0.0, t_end, 101)
    med, res, raw = _interleaved({
        "ours": lambda: tp.solve_meanfield(dyn, rho0, (0.0, t_end), t_eval=t_eval),
        "plain": lambda: plain_circle_scheme(rho0.values, 4.0, t_eval),
    }, repeats)
    ours, plain = res["ours"].density[-1], res["plain"][-1]
    ratio = med["plain"] / med["ours"]
    return [{"section": "circle PDE", "case": f"SA beta=4, CircleGrid({m}), T={t_end:g}",
             "ours_s": med["ours"], "other": "plain NumPy MUSCL + SSP-RK3 + FFT", "other_s": med["plain"],
             "ratio": ratio, "target": ">= 5x", "holds": bool(ratio >= 5.0),
             "final_density_rel_diff": float(np.max(np.abs(ours - plain)) / np.max(plain)),
             "steps": res["ours"].info.n_steps, "raw_s": raw}]


# -- R^2: the quadrature as of before the tensor products ----------------------------------------
def baseline_quadrature(head, grid, a) -> np.ndarray:
    """Normal face velocities by the attention kernel: faces as targets, cells as weighted sources."""
    f = grid.faces
    sources = np.ascontiguousarray(np.asarray(grid.centers).reshape(-1, grid.dim))
    values = head._field(np.ascontiguousarray(f.points), sources, a)
    return np.einsum("fd,fd->f", values, f.normals)


class _Baseline:
    """Within the block, every CartesianGrid face velocity is the baseline quadrature."""

    def __enter__(self):
        self.build = separable.TensorQuadrature.build
        separable.TensorQuadrature.build = classmethod(lambda cls, head, grid: _BaselineHead(head, grid))

    def __exit__(self, *exc):
        separable.TensorQuadrature.build = self.build


class _BaselineHead:
    def __init__(self, head, grid):
        self.head, self.grid = head, grid

    def __call__(self, a):
        return baseline_quadrature(self.head, self.grid, a)


def _gaussian_case(n: int, diagonal: bool):
    """The R^2 case of transformer_pde.validation.grid_vs_gaussian (or a diagonal K^T Q)."""
    a_mat = -np.array([[1.0, 0.3], [0.3, 0.6]]) + np.array([[0.0, 0.4], [-0.4, 0.0]])
    if diagonal:
        a_mat = -np.diag([1.0, 0.6])
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0, Q=np.eye(2), K=a_mat.T.copy()), geometry="euclidean")
    grid = tp.CartesianGrid([(-3.5, 3.5)] * 2, [n, n], boundary="zero-flux")
    m0, prec = np.array([0.3, -0.2]), np.linalg.inv([[0.5, 0.1], [0.1, 0.35]])
    rho0 = tp.Density.from_function(
        grid, lambda x: np.exp(-0.5 * np.einsum("...i,ij,...j->...", x - m0, prec, x - m0)))
    return grid, rho0, dyn


def cartesian_rows(n_eval: int = 128, n_run: int = 128, repeats: int = 3) -> list[dict]:
    """R^2 face velocity (one evaluation, both models) and whole runs to T = 1."""
    rows = []
    for diagonal in (False, True):
        grid, rho0, dyn = _gaussian_case(n_eval, diagonal)
        a = (rho0.values * grid.volumes).ravel()
        med, res, raw = _interleaved({
            "ours": lambda dyn=dyn, grid=grid, rho0=rho0: face_velocity(dyn, grid, rho0.values, "auto"),
            "baseline": lambda dyn=dyn, grid=grid, a=a: baseline_quadrature(dyn.attention, grid, a),
        }, repeats)
        ratio = med["baseline"] / med["ours"]
        kind = "K^T Q diagonal" if diagonal else "K^T Q not diagonal (validation model)"
        target = n_eval >= 128  # the target is set at 128^2 cells
        rows.append({"section": "R^2 quadrature", "case": f"face velocity, {n_eval}^2 cells, {kind}",
                     "ours_s": med["ours"], "other": "kernel quadrature (before)", "other_s": med["baseline"],
                     "ratio": ratio, "target": ">= 10x" if target else None,
                     "holds": bool(ratio >= 10.0) if target else None,
                     "max_rel_diff": float(np.max(np.abs(res["ours"] - res["baseline"]))
                                           / np.max(np.abs(res["baseline"]))), "raw_s": raw})
    grid, rho0, dyn = _gaussian_case(n_run, False)

    def run():
        return tp.solve_meanfield(dyn, rho0, (0.0, 1.0), t_eval=[0.0, 1.0])

    def run_baseline():
        with _Baseline():
            return run()

    run_small = _gaussian_case(16, False)  # compile / load the kernels of both paths first
    tp.solve_meanfield(run_small[2], run_small[1], (0.0, 0.01))
    with _Baseline():
        tp.solve_meanfield(run_small[2], run_small[1], (0.0, 0.01))
    med, res, raw = _interleaved({"ours": run, "baseline": run_baseline}, 1, warmup=False)
    ours, base = res["ours"].density[-1], res["baseline"].density[-1]
    ratio = med["baseline"] / med["ours"]
    case = f"solve_meanfield to T=1, {n_run}^2 cells, validation model"
    rows.append({"section": "R^2 quadrature", "case": case,
                 "ours_s": med["ours"], "other": "kernel quadrature (before)", "other_s": med["baseline"],
                 "ratio": ratio, "target": ">= 10x" if n_run >= 128 else None,
                 "holds": bool(ratio >= 10.0) if n_run >= 128 else None,
                 "final_density_rel_diff": float(np.max(np.abs(ours - base)) / np.max(base)),
                 "steps": res["ours"].info.n_steps, "raw_s": raw})
    return rows


def measure(quick: bool = False, full_run: bool = False) -> list[dict]:
    """Rows of the benchmark contract (section, case, ours_s, other, other_s, ratio, target, holds).

    ``quick``: one repeat, the R^2 evaluations and runs at 64^2 (< 60 s). Otherwise the
    evaluations at 128^2 and the runs at 64^2 (~1 min); ``full_run`` runs them at 128^2
    (the old quadrature then takes 5-20 minutes).
    """
    if quick:
        return circle_rows(4096, 6.0, repeats=1) + cartesian_rows(64, 64, repeats=1)
    return circle_rows(4096, 6.0, repeats=3) + cartesian_rows(128, 128 if full_run else 64, repeats=3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The grid PDE at full speed: circle and R^2.")
    parser.add_argument("--quick", action="store_true", help="smaller R^2 grid, one repeat (< 60 s)")
    parser.add_argument("--full-run", action="store_true",
                        help="whole R^2 runs at 128^2 (the old quadrature takes 5-20 minutes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows = measure(args.quick, args.full_run)
    print(f"# {'section':<15} {'case':<62} {'ours [s]':>9} {'other [s]':>10} {'ratio':>8}  "
          "target  holds  diff")
    for r in rows:
        diff = r.get("final_density_rel_diff", r.get("max_rel_diff"))
        print(f"  {r['section']:<15} {r['case']:<62} {r['ours_s']:>9.3f} {r['other_s']:>10.3f} "
              f"{r['ratio']:>7.1f}x  {r['target']:<6}  {str(r['holds']):<5}  {diff:.1e}")
    if args.json is not None:
        write_json_atomic(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
