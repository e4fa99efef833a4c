r"""Benchmark: one mean-field face-velocity evaluation on the circle, FFT fast path vs
the O(M^2) quadrature kernel, as the number of cells M grows.

For every M a smooth non-uniform density (seeded random Fourier modes on top of the
uniform one) is put on ``CircleGrid(M)`` and
``tp.meanfield.face_velocity(dyn, grid, rho, field=...)`` is timed for
``field="fast"`` (circular convolutions by FFT, O(M log M)) and
``field="quadrature"`` (the attention kernel with the M faces as targets and the M cell
centres as sources, O(M^2)). The two are timed *interleaved* (fast, quadrature, fast,
...) after one untimed warm-up call of each (JIT compilation, FFT plans, first touch), so
that machine noise hits both alike; the table gives the median of ``--repeats`` calls,
the cost per cell, and the largest difference between the two (relative to max |u|),
which must be round-off. ``--fast-m`` adds larger grids timed on the fast path only
(the quadrature would take seconds there).

The fitted exponents p in ``time ~ M^p`` are least-squares slopes of log(time) vs log(M)
over the grids with ``M >= --fit-from`` (below it, call overheads of a few tens of
microseconds dominate): expect about 1 (M log M: a slope of 1.05-1.15 over a range of
M) for the FFT and about 2 for the quadrature.

Usage::

    python benchmarks/bench_meanfield_circle.py
    python benchmarks/bench_meanfield_circle.py --m 256 512 1024 2048 4096 --fast-m 65536 262144
    python benchmarks/bench_meanfield_circle.py --variant usa --beta 4 --json out.json --check

Exit status: 0; 1 with ``--check`` when the FFT exponent is above 1.4 or the quadrature
exponent below 1.6, or the two disagree by more than 1e-10 (relative); 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

import numba

from transformer_pde.meanfield import CircleGrid, Density, face_velocity

VARIANTS = ("softmax", "usa", "sigmoid", "l2")
DEFAULT_M = tuple(2**k for k in range(8, 15))  # 256 .. 16384, both methods
DEFAULT_FAST_M = tuple(2**k for k in range(15, 21))  # 32768 .. 1048576, FFT only
#: --check thresholds on the fitted exponents and on the agreement of the two methods
CHECK_MAX_FAST_EXPONENT = 1.4
CHECK_MIN_QUAD_EXPONENT = 1.6
CHECK_MAX_REL_DIFF = 1e-10


def make_dynamics(variant: str, beta: float) -> tp.TokenDynamics:
    """Post-LN attention on the circle with Q = K = V = I (rotation-invariant)."""
    att = {
        "softmax": tp.SoftmaxAttention,
        "usa": tp.UnnormalizedAttention,
        "sigmoid": tp.SigmoidAttention,
        "l2": tp.L2Attention,
    }[variant](beta)
    return tp.TokenDynamics(att)


def smooth_density(m: int, seed: int) -> np.ndarray:
    """Positive density values on CircleGrid(m): uniform + 6 seeded Fourier modes."""
    rng = np.random.default_rng(seed)
    theta = (np.arange(m) + 0.5) * 2.0 * np.pi / m
    k = np.arange(1, 7)
    amp = rng.uniform(-1.0, 1.0, size=(2, 6)) / k
    f = 3.0 + amp[0] @ np.cos(np.outer(k, theta)) + amp[1] @ np.sin(np.outer(k, theta))
    return Density.from_function(CircleGrid(m), lambda th: f).values


def time_one(m: int, dyn, repeats: int, seed: int, quadrature: bool) -> dict:
    """Median seconds per face-velocity evaluation at M = m (interleaved repeats)."""
    grid = CircleGrid(m)
    rho = smooth_density(m, seed)
    methods = ("fast", "quadrature") if quadrature else ("fast",)
    out = {name: face_velocity(dyn, grid, rho, field=name) for name in methods}  # warm-up
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name in methods:
            t0 = time.perf_counter()
            face_velocity(dyn, grid, rho, field=name)
            times[name].append(time.perf_counter() - t0)
    row = {"M": m, "fast_s": statistics.median(times["fast"])}
    if quadrature:
        row["quadrature_s"] = statistics.median(times["quadrature"])
        scale = float(np.max(np.abs(out["quadrature"])))
        row["rel_diff"] = float(np.max(np.abs(out["fast"] - out["quadrature"]))) / scale
    return row


def fit_exponent(ms, ts, fit_from: int) -> float | None:
    """Least-squares slope of log t vs log M over M >= fit_from (None if < 2 points)."""
    pts = [(m, t) for m, t in zip(ms, ts, strict=True) if m >= fit_from]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def _fmt_exp(p):
    return "n/a (fewer than 2 grids with M >= --fit-from)" if p is None else f"{p:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Time one mean-field face-velocity evaluation on the circle: FFT vs quadrature.")
    parser.add_argument("--m", type=int, nargs="+", default=list(DEFAULT_M),
                        help="grid sizes M timed with both methods (default 256 .. 16384)")
    parser.add_argument("--fast-m", type=int, nargs="*", default=list(DEFAULT_FAST_M),
                        help="extra grid sizes timed with the FFT only (default 32768 .. 1048576)")
    parser.add_argument("--variant", choices=VARIANTS, default="softmax")
    parser.add_argument("--beta", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-from", type=int, default=1024,
                        help="fit the exponents over M >= this (default 1024)")
    parser.add_argument("--threads", type=int, default=None, help="Numba threads (default all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless FFT exponent <= 1.4, quadrature >= 1.6, diff <= 1e-10")
    args = parser.parse_args(argv)
    if any(m < 4 for m in args.m + args.fast_m):
        parser.error("every M must be >= 4")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads is not None:
        if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
            parser.error(f"--threads must be in [1, {numba.config.NUMBA_NUM_THREADS}]")
        numba.set_num_threads(args.threads)

    dyn = make_dynamics(args.variant, args.beta)
    print(f"# face_velocity on CircleGrid(M): {dyn.attention!r}")
    print(f"# python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"threads={numba.get_num_threads()}, cpu_count={os.cpu_count()}, repeats={args.repeats}")
    header = (f"{'M':>9} {'fast [s]':>11} {'fast/cell [ns]':>15} {'quad [s]':>11} "
              f"{'quad/cell [ns]':>15} {'quad/fast':>10} {'max|diff|/max|u|':>17}")
    print(header)
    rows = []
    for m in sorted(set(args.m)):
        r = time_one(m, dyn, args.repeats, args.seed, quadrature=True)
        rows.append(r)
        print(f"{m:>9d} {r['fast_s']:>11.3e} {1e9 * r['fast_s'] / m:>15.1f} {r['quadrature_s']:>11.3e} "
              f"{1e9 * r['quadrature_s'] / m:>15.1f} {r['quadrature_s'] / r['fast_s']:>9.1f}x "
              f"{r['rel_diff']:>17.2e}", flush=True)
    for m in sorted(set(args.fast_m) - set(args.m)):
        r = time_one(m, dyn, args.repeats, args.seed, quadrature=False)
        rows.append(r)
        print(f"{m:>9d} {r['fast_s']:>11.3e} {1e9 * r['fast_s'] / m:>15.1f} {'-':>11} {'-':>15} "
              f"{'-':>10} {'-':>17}", flush=True)
    rows.sort(key=lambda r: r["M"])
    fast = [(r["M"], r["fast_s"]) for r in rows]
    quad = [(r["M"], r["quadrature_s"]) for r in rows if "quadrature_s" in r]
    p_fast = fit_exponent(*zip(*fast, strict=True), args.fit_from) if fast else None
    p_quad = fit_exponent(*zip(*quad, strict=True), args.fit_from) if quad else None
    max_diff = max((r["rel_diff"] for r in rows if "rel_diff" in r), default=0.0)
    print(f"fitted exponent (time ~ M^p, M >= {args.fit_from}): "
          f"fast p = {_fmt_exp(p_fast)} (M log M: ~1), quadrature p = {_fmt_exp(p_quad)} (~2)")
    print(f"largest fast-vs-quadrature difference: {max_diff:.2e} of max |u|")

    status = 0
    if args.check:
        failures = []
        if p_fast is None or p_fast > CHECK_MAX_FAST_EXPONENT:
            failures.append(f"FFT exponent {p_fast} > {CHECK_MAX_FAST_EXPONENT}")
        if p_quad is None or p_quad < CHECK_MIN_QUAD_EXPONENT:
            failures.append(f"quadrature exponent {p_quad} < {CHECK_MIN_QUAD_EXPONENT}")
        if max_diff > CHECK_MAX_REL_DIFF:
            failures.append(f"fast vs quadrature differ by {max_diff:.2e} > {CHECK_MAX_REL_DIFF}")
        status = 1 if failures else 0
        print("check: " + ("passed" if not failures else "FAILED: " + "; ".join(failures)))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps({
            "variant": args.variant, "beta": args.beta, "repeats": args.repeats,
            "threads": numba.get_num_threads(), "fit_from": args.fit_from,
            "fast_exponent": p_fast, "quadrature_exponent": p_quad,
            "max_rel_diff": max_diff, "results": rows, "exit_status": status,
        }, indent=2))
        os.replace(tmp, args.json)
    return status


if __name__ == "__main__":
    sys.exit(main())
