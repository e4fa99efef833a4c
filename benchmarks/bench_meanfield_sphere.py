r"""Benchmark: the sphere grid's spherical-harmonic fast path vs the quadrature kernel.

One evaluation of the mean-field face velocity on a :class:`~transformer_pde.SphereGrid`
(``face_velocity(dyn, grid, rho, field)``) is timed for growing grids, both ways in the
same run and interleaved (fast, quadrature, fast, ...) after one untimed warm-up call of
each (JIT compilation, coefficient tables):

- **fast**: an adjoint SHT of the N cell masses, then syntheses of Z and of the gradient
  at the F face midpoints (ducc0), with the series cut at the degree L where the kernel's
  Funk-Hecke coefficients are negligible (L depends on beta only, ~6 + 9 sqrt(beta)):
  O(L^2 log L + N + F) per evaluation;
- **quadrature**: the attention kernel with the faces as targets and the centres as
  sources, O(F N).

The table gives medians, the largest difference between the two, and least-squares
exponents of time vs the number of cells N and vs n_lat (N ~ 1.27 n_lat^2). A second
table times the fast path at a fixed grid for growing beta, i.e. growing degree L, with
the exponent of time vs L. Density: a smooth positive non-uniform one (seeded).

Usage::

    python benchmarks/bench_meanfield_sphere.py                      # defaults
    python benchmarks/bench_meanfield_sphere.py --n-lat 16 32 64 --repeats 3
    python benchmarks/bench_meanfield_sphere.py --check               # exit 1 on failure
    python benchmarks/bench_meanfield_sphere.py --json out.json

Exit status: 0; with ``--check``, 1 when the fast path's time grows faster than
n_lat^3 (fitted on the three largest grids), or when fast and quadrature differ by more
than 1e-10 relative to the largest velocity; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import transformer_pde as tp
except ImportError:  # run from a checkout without installing: the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import transformer_pde as tp

from transformer_pde.meanfield.field import face_velocity, rotation_invariant
from transformer_pde.meanfield.sht import funk_hecke_coefficients
from transformer_pde.meanfield.sphere import SphereGrid

VARIANTS = ("softmax", "usa", "sigmoid")
DEFAULT_N_LAT = (16, 32, 64, 128, 256)
DEFAULT_BETAS = (1.0, 4.0, 16.0, 64.0, 256.0)
#: --check: the fast path may grow at most like n_lat^3 (the L^3 of the issue, L ~ n_lat)
CHECK_MAX_EXPONENT = 3.0
CHECK_MAX_DIFF = 1e-10


def make_dynamics(variant: str, beta: float):
    att = {"softmax": tp.SoftmaxAttention, "usa": tp.UnnormalizedAttention,
           "sigmoid": tp.SigmoidAttention}[variant](beta=beta)
    return tp.TokenDynamics(att, geometry="sphere", norm="post")


def smooth_density(grid: SphereGrid, seed: int) -> np.ndarray:
    """A smooth positive density: 1 + a few random von Mises-Fisher bumps, normalised."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(6, 3))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    values = 1.0 + np.sum(rng.random(6) * np.exp(2.0 * (grid.centers @ c.T - 1.0)), axis=1)
    return values / np.sum(values * grid.volumes)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def fit_exponent(x, y) -> float:
    """Least-squares slope of log y vs log x."""
    if len(x) < 2:
        return float("nan")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def bench_grid(variant, beta, n_lat, repeats, max_quad_cells, seed) -> dict:
    grid = SphereGrid(n_lat)
    dyn = make_dynamics(variant, beta)
    rho = smooth_density(grid, seed)
    run_quad = grid.size <= max_quad_cells
    fast = lambda: face_velocity(dyn, grid, rho, "fast")  # noqa: E731
    quad = lambda: face_velocity(dyn, grid, rho, "quadrature")  # noqa: E731
    u_fast = fast()
    u_quad = quad() if run_quad else None
    t_fast, t_quad = [], []
    for _ in range(repeats):
        t, u_fast = _timed(fast)
        t_fast.append(t)
        if run_quad:
            t, u_quad = _timed(quad)
            t_quad.append(t)
    row = {"n_lat": n_lat, "cells": grid.size, "faces": len(grid.faces.areas),
           "fast_s": statistics.median(t_fast), "fast_all_s": t_fast,
           "quad_s": statistics.median(t_quad) if run_quad else None,
           "quad_all_s": t_quad if run_quad else None, "max_abs_diff": None, "rel_diff": None}
    if run_quad:
        diff = float(np.max(np.abs(u_fast - u_quad)))
        row["max_abs_diff"] = diff
        row["rel_diff"] = diff / max(float(np.max(np.abs(u_quad))), 1e-300)
    return row


def bench_degree(variant, betas, n_lat, repeats, seed) -> list[dict]:
    grid = SphereGrid(n_lat)
    rho = smooth_density(grid, seed)
    rows = []
    for beta in betas:
        dyn = make_dynamics(variant, beta)
        ri = rotation_invariant(dyn.attention, 3)
        coef = funk_hecke_coefficients(ri)
        degree = len(coef[0]) - 1 if coef is not None else None
        fn = lambda dyn=dyn: face_velocity(dyn, grid, rho, "fast")  # noqa: E731
        fn()
        times = [_timed(fn)[0] for _ in range(repeats)]
        rows.append({"beta": beta, "degree": degree, "fast_s": statistics.median(times),
                     "fast_all_s": times})
    return rows


def _fmt(t):
    if t is None:
        return "-"
    return f"{t * 1e3:9.2f} ms" if t < 1.0 else f"{t:9.3f} s "


def _finite(obj):
    """A copy of obj with NaN floats replaced by None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "numpy": np.__version__,
            "transformer_pde": getattr(tp, "__version__", "unknown")}
    try:
        import ducc0
        import numba

        info["ducc0"] = ducc0.__version__
        info["numba_num_threads"] = numba.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    return info


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-lat", type=int, nargs="+", default=list(DEFAULT_N_LAT),
                   help="latitude rings of the grids (default %(default)s)")
    p.add_argument("--variant", choices=VARIANTS, default="softmax")
    p.add_argument("--beta", type=float, default=4.0, help="beta of the grid sweep (default 4)")
    p.add_argument("--betas", type=float, nargs="*", default=list(DEFAULT_BETAS),
                   help="betas of the degree sweep (none: skip it)")
    p.add_argument("--degree-n-lat", type=int, default=64, help="grid of the degree sweep")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-quad-cells", type=int, default=25_000,
                   help="skip the quadrature on larger grids (its cost is O(F N))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write every number here")
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    if min(args.n_lat) < 4 or args.repeats < 1:
        p.error("--n-lat values must be >= 4 and --repeats >= 1")
    args.n_lat = sorted(set(args.n_lat))
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else 2
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"\nface velocity on SphereGrid(n_lat), {args.variant}, beta={args.beta}, "
          f"median of {args.repeats} (interleaved)")
    print(f"{'n_lat':>6} {'cells':>7} {'faces':>7} {'fast':>12} {'quadrature':>12} "
          f"{'quad/fast':>9} {'max|diff|':>10} {'rel diff':>9}")
    rows = []
    for n_lat in args.n_lat:
        row = bench_grid(args.variant, args.beta, n_lat, args.repeats, args.max_quad_cells, args.seed)
        rows.append(row)
        ratio = f"{row['quad_s'] / row['fast_s']:9.1f}" if row["quad_s"] else f"{'-':>9}"
        diff = f"{row['max_abs_diff']:10.2e}" if row["max_abs_diff"] is not None else f"{'-':>10}"
        rel = f"{row['rel_diff']:9.1e}" if row["rel_diff"] is not None else f"{'-':>9}"
        print(f"{row['n_lat']:6d} {row['cells']:7d} {row['faces']:7d} {_fmt(row['fast_s']):>12} "
              f"{_fmt(row['quad_s']):>12} {ratio} {diff} {rel}", flush=True)

    n_lat = np.array([r["n_lat"] for r in rows], dtype=float)
    cells = np.array([r["cells"] for r in rows], dtype=float)
    fast = np.array([r["fast_s"] for r in rows])
    quad_rows = [r for r in rows if r["quad_s"] is not None]
    fits = {
        "fast_vs_cells": fit_exponent(cells, fast),
        "fast_vs_n_lat": fit_exponent(n_lat, fast),
        "fast_vs_n_lat_largest3": fit_exponent(n_lat[-3:], fast[-3:]),
        "quad_vs_cells": fit_exponent([r["cells"] for r in quad_rows], [r["quad_s"] for r in quad_rows]),
        "quad_vs_n_lat": fit_exponent([r["n_lat"] for r in quad_rows], [r["quad_s"] for r in quad_rows]),
    }
    print("\nfitted exponents (time ~ size^p):")
    print(f"  fast:       p = {fits['fast_vs_cells']:.2f} vs cells N, {fits['fast_vs_n_lat']:.2f} vs n_lat "
          f"({fits['fast_vs_n_lat_largest3']:.2f} on the 3 largest grids; L^3 would be 3 vs n_lat)")
    print(f"  quadrature: p = {fits['quad_vs_cells']:.2f} vs cells N, {fits['quad_vs_n_lat']:.2f} vs n_lat "
          f"(O(F N): 2 vs N, 4 vs n_lat)")

    degree_rows = []
    if args.betas:
        print(f"\nfast path vs series degree L (beta sweep) on SphereGrid({args.degree_n_lat}), "
              f"{args.variant}")
        print(f"{'beta':>8} {'L':>5} {'fast':>12}")
        degree_rows = bench_degree(args.variant, args.betas, args.degree_n_lat, args.repeats, args.seed)
        for r in degree_rows:
            degree = r["degree"] if r["degree"] is not None else "-"
            print(f"{r['beta']:8.1f} {degree:>5} {_fmt(r['fast_s']):>12}")
        ok = [r for r in degree_rows if r["degree"]]
        fits["fast_vs_degree"] = fit_exponent([r["degree"] for r in ok], [r["fast_s"] for r in ok])
        print(f"  fitted exponent vs L: p = {fits['fast_vs_degree']:.2f} (L^2 log L transforms "
              "+ O(N + F) work that does not depend on L)")

    status = 0
    if args.check:
        worst = max((r["rel_diff"] for r in quad_rows), default=0.0)
        p = fits["fast_vs_n_lat_largest3"] if len(rows) >= 3 else fits["fast_vs_n_lat"]
        fails = []
        if not p <= CHECK_MAX_EXPONENT:
            fails.append(f"fast-path exponent {p:.2f} > {CHECK_MAX_EXPONENT}")
        if worst > CHECK_MAX_DIFF:
            fails.append(f"fast vs quadrature relative difference {worst:.2e} > {CHECK_MAX_DIFF}")
        print("\ncheck: " + ("PASS" if not fails else "FAIL: " + "; ".join(fails)))
        status = 1 if fails else 0

    if args.json is not None:
        try:
            info["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
        except (AttributeError, OSError):
            pass
        payload = {"machine": info, "variant": args.variant, "beta": args.beta, "rows": rows,
                   "degree_rows": degree_rows, "fits": fits, "args": {
                       k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=args.json.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(_finite(payload), fh, indent=1)
        os.replace(tmp, args.json)
    return status


if __name__ == "__main__":
    sys.exit(main())
