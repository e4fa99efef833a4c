r"""Benchmark: ``simulate(method="rescaled")`` against Euler and RK4 on x at the same step.

Issue 12, point 3a. Paper A's growing-V examples (transformer_pde.validation.paper_a):
Q = K = I, beta = 1, V = I or the good triple GOOD_V, n = 20 tokens x_i(0) ~ U[-5, 5]^2,
T = 2, fixed step dt = 0.05 (Paper A's own codes use 0.1), plus one larger case (n = 2000,
d = 16, V = I + G/(4 sqrt d), G Gaussian: non-normal, growing) where the d x d exponential
per stage is measured against the attention it rides along with. The reference is dopri5
at rtol = atol = 1e-12; errors are max |x(T) - x_ref(T)| / max |x_ref(T)|.

Each repeat runs the three methods one after the other (interleaved, after an untimed
warm-up); the table gives medians, ``ratio = other / ours`` (the speed of the rescaled
scheme relative to the other at the same step: < 1 means it costs more per step) and the
error ratio ``other error / our error``. Target (the issue): the rescaled error is at least
10x below Euler's at the same step (``holds`` on the Euler rows); the RK4 rows are
reported for information (no target).

Usage::

    python benchmarks/bench_rescaled.py [--quick] [--json rescaled.json]
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
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import transformer_pde as tp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling run_all.py
from run_all import write_json_atomic  # noqa: E402 - one atomic JSON writer for every benchmark

from transformer_pde.validation.paper_a import GOOD_V  # noqa: E402


def _cases(quick: bool):
    x0 = np.random.default_rng(0).uniform(-5.0, 5.0, (20, 2))
    yield "Paper A V=I, n=20, d=2", np.eye(2), x0, 2.0, 0.05
    yield "Paper A good triple, n=20, d=2", GOOD_V, x0, 2.0, 0.05
    d, n = 16, (500 if quick else 2000)
    rng = np.random.default_rng(1)
    V = np.eye(d) + rng.normal(size=(d, d)) / (4.0 * np.sqrt(d))
    yield f"V = I + G/(4 sqrt d), n={n}, d={d}", V, rng.normal(size=(n, d)) / np.sqrt(d), 1.0, 0.05


def measure(quick: bool = False) -> list[dict]:
    """Rows of the benchmark contract: rescaled vs euler and rk4 on x, same step, per case."""
    repeats = 3 if quick else 7
    rows = []
    for case, V, x0, T, dt in _cases(quick):
        d = V.shape[0]
        dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0, Q=np.eye(d), K=np.eye(d), V=V), geometry="euclidean")
        ref = tp.simulate(dyn, x0, (0.0, T), t_eval=[0.0, T], method="dopri5", rtol=1e-12, atol=1e-12).x[-1]
        scale = float(np.max(np.abs(ref)))
        methods = ("rescaled", "euler", "rk4")
        for m in methods:  # warm-up (compilation, caches)
            tp.simulate(dyn, x0, (0.0, 2 * dt), t_eval=[0.0, 2 * dt], method=m, dt=dt)
        times = {m: [] for m in methods}
        errors = {}
        for _ in range(repeats):
            for m in methods:
                t0 = time.perf_counter()
                x = tp.simulate(dyn, x0, (0.0, T), t_eval=[0.0, T], method=m, dt=dt).x[-1]
                times[m].append(time.perf_counter() - t0)
                errors[m] = float(np.max(np.abs(x - ref)) / scale)
        med = {m: statistics.median(v) for m, v in times.items()}
        for other in ("euler", "rk4"):
            err_ratio = errors[other] / errors["rescaled"]
            rows.append({
                "section": "rescaled integrator (Paper A)", "case": f"{case}, T={T:g}, dt={dt:g}",
                "ours_s": med["rescaled"], "other": f"{other} on x, same dt", "other_s": med[other],
                "ratio": med[other] / med["rescaled"],
                "target": "error >= 10x below Euler's" if other == "euler" else "(none: reported)",
                "holds": bool(err_ratio >= 10.0) if other == "euler" else None,
                "error_ours": errors["rescaled"], "error_other": errors[other], "error_ratio": err_ratio,
                "times": times, "repeats": repeats,
            })
    return rows


def main(argv=None) -> int:
    """Print the table; ``--json PATH`` also writes the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = measure(args.quick)
    for r in rows:
        print(f"{r['case']} vs {r['other']}: time ours {r['ours_s'] * 1e3:.1f} ms, other "
              f"{r['other_s'] * 1e3:.1f} ms (other/ours {r['ratio']:.2f}x); error ours "
              f"{r['error_ours']:.2g}, other {r['error_other']:.2g} (other/ours {r['error_ratio']:.3g}x); "
              f"target {r['target']}: {r['holds']}")
    if args.json:
        write_json_atomic(Path(args.json), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
