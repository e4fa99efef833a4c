r"""Benchmark: ``simulate`` on a small system vs a plain NumPy loop of the same steps.

Issue 10, point 6: n = 64 tokens on S^2, softmax attention (beta = 1, Q = K = V = I),
post-LN, rk4 (and Euler) with 1000 fixed steps (dt = 0.01, only the end state saved). For so few
tokens the kernel is cheap and the per-step overhead of the engine decides. The plain
loop (written below) is what a user would write: per stage a dense (n, n) softmax, the
tangent projection and the renormalisation, and the classical RK4 combination.

Each repeat times ``tp.simulate`` and the loop one after the other (interleaved, after
an untimed warm-up of each); the table gives medians and ``ratio = loop / ours`` (> 1:
ours faster). Both runs take the same steps, so their end states agree to round-off
(the max difference is reported). Target: ratio >= 1. ``--busy`` adds one
``while True: pass`` process for the duration (the "under load" condition of the issue).

Usage::

    python benchmarks/bench_small.py [--repeats 7] [--busy] [--json small.json]
    python benchmarks/bench_small.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
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

CASE = {"n": 64, "d": 3, "beta": 1.0, "dt": 0.01, "steps": 1000, "repeats": 7}
QUICK = dict(CASE, steps=300, repeats=5)


def plain_loop(x: np.ndarray, beta: float, h: float, steps: int, method: str = "rk4") -> np.ndarray:
    """RK4 (or Euler) with renormalisation of every stage and step, dense NumPy softmax per stage."""

    def velocity(y):
        logits = beta * (y @ y.T)
        logits -= logits.max(axis=1, keepdims=True)
        w = np.exp(logits)
        w /= w.sum(axis=1, keepdims=True)
        a = w @ y
        return a - np.sum(y * a, axis=1, keepdims=True) * y

    def retract(y):
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    if method == "euler":
        for _ in range(steps):
            x = retract(x + h * velocity(x))
        return x
    for _ in range(steps):
        k1 = velocity(x)
        k2 = velocity(retract(x + 0.5 * h * k1))
        k3 = velocity(retract(x + 0.5 * h * k2))
        k4 = velocity(retract(x + h * k3))
        x = retract(x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4))
    return x


def measure(quick: bool = False, params: dict | None = None, busy: bool = False) -> list[dict]:
    """Rows of the benchmark contract: simulate vs the plain loop at n = 64, rk4 and Euler."""
    return [row for method in ("rk4", "euler") for row in _measure(quick, params, busy, method)]


def _measure(quick, params, busy, method) -> list[dict]:
    p = dict(QUICK if quick else CASE, **(params or {}))
    n, d, beta, dt, steps = p["n"], p["d"], p["beta"], p["dt"], p["steps"]
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(n, d))
    x0 /= np.linalg.norm(x0, axis=1, keepdims=True)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta))
    T = steps * dt

    def ours():
        return tp.simulate(dyn, x0, (0.0, T), t_eval=[0.0, T], method=method, dt=dt).x[-1]

    tp.simulate(dyn, x0, (0.0, 10 * dt), t_eval=[0.0, 10 * dt], dt=dt)  # warm-up
    plain_loop(x0, beta, dt, 10, method)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        times = {"ours": [], "loop": []}
        for _ in range(p["repeats"]):
            t0 = time.perf_counter()
            x_ours = ours()
            t1 = time.perf_counter()
            x_loop = plain_loop(x0, beta, dt, steps, method)
            t2 = time.perf_counter()
            times["ours"].append(t1 - t0)
            times["loop"].append(t2 - t1)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["loop"] / med["ours"]
    case = f"n={n}, S^{d - 1}, SA beta={beta:g}, {method}, {steps} steps"
    return [{"section": "small systems", "case": case + (", beside a busy process" if busy else ""),
             "ours_s": med["ours"], "other": "plain NumPy loop (dense softmax, projection, renormalisation)",
             "other_s": med["loop"], "ratio": ratio, "target": ">= 1 (no slower)",
             "holds": bool(ratio >= 1.0),
             "max_diff": float(np.abs(x_ours - x_loop).max()), "times": times, "repeats": p["repeats"]}]


def main(argv=None) -> int:
    """Print the table; ``--json PATH`` also writes the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--busy", action="store_true", help="beside one busy process")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    extra = {} if args.repeats is None else {"repeats": args.repeats}
    print(f"threads: {tp.get_num_threads()}, load average: {os.getloadavg()}", flush=True)
    rows = measure(args.quick, extra, busy=args.busy)
    for r in rows:
        print(f"{r['case']}: ours {r['ours_s'] * 1e3:.1f} ms, loop {r['other_s'] * 1e3:.1f} ms, "
              f"loop/ours {r['ratio']:.2f}x (target {r['target']}: {r['holds']}), "
              f"max|diff| {r['max_diff']:.2g}")
    if args.json:
        write_json_atomic(Path(args.json), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
