r"""Benchmark: a local sweep in 4 processes against the same runs one after the other.

Issue 11: a 4-process local sweep of 16 runs on the 2-core machine must not be slower
than running them one after the other: the sweep's workers each use one kernel thread
and one BLAS thread (``tp.sweep``'s default pool), so 4 processes x 1 thread do not
oversubscribe the cores the way 4 processes x 2 threads would.

One run: softmax attention on S^2 (beta = 1, post-LN), n = 64 tokens from a seeded
uniform draw, rk4 with dt = 0.05 to T = 200 (4000 steps, about a second), a run-file
task: a point of a phase diagram or of a metastability study (small n, long times).
Starting a worker process (importing NumPy, SciPy, Numba and the package, loading the
kernels from the disk cache) costs about 2 s of CPU, so a sweep of runs much shorter
than that cannot beat running them in one process; for large n the kernels of one
process already use both cores, and a sweep gains only the per-step Python time. The 16 runs are
a grid of 4 beta values x 4 seeds. ``ours`` is ``tp.sweep(spec, grid, max_workers=4)``
(worker start-up included); ``other`` runs the same 16 tasks in this process, one after
the other, with the default threads. Each is timed ``repeats`` times, interleaved;
medians; ``ratio = other / ours`` (> 1: the sweep is faster). Target: ratio >= 1. The
results of both are checked equal (the same runs, bit for bit).

Usage::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_sweep.py [--quick] [--json sweep.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

try:
    import transformer_pde as tp
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import transformer_pde as tp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling run_all.py
from run_all import write_json_atomic  # noqa: E402 - one atomic JSON writer for every benchmark

from transformer_pde import runfile  # noqa: E402
from transformer_pde.sweep import points_of  # noqa: E402

STUDY = """
[model]
attention = "softmax"
beta = 1.0
dim = 3
summation = "exact"
[initial]
kind = "uniform"
n = {n}
seed = 0
[particles]
T = {T}
dt = 0.05
n_saved = 11
"""
CASE = {"n": 64, "T": 200.0, "repeats": 3}
QUICK = {"n": 64, "T": 200.0, "repeats": 1}
GRID = {"model.beta": [1.0, 2.0, 4.0, 8.0], "initial.seed": [0, 1, 2, 3]}


def _sequential(spec):
    return [runfile.run_task(runfile.override(spec, p), "particles", progress=False)
            for p in points_of(GRID)]


def measure(quick: bool = False) -> list[dict]:
    case = QUICK if quick else CASE
    spec = runfile.parse(STUDY.format(n=case["n"], T=case["T"]), source="bench_sweep")
    t_seq, t_sweep, t_over = [], [], []
    seq = res = over = None
    for _ in range(case["repeats"]):
        t0 = time.perf_counter()
        res = tp.sweep(spec, GRID, max_workers=4, progress=False)
        t_sweep.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        seq = _sequential(spec)
        t_seq.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        over = tp.sweep(spec, GRID, max_workers=4, threads_per_worker=2, progress=False)
        t_over.append(time.perf_counter() - t0)
    same = all(v["particles"] == s == o["particles"]
               for v, s, o in zip(res.values, seq, over.values, strict=True))
    ours, other, oversub = (statistics.median(t) for t in (t_sweep, t_seq, t_over))
    case_name = f"16 runs (n={case['n']}, T={case['T']:g}), 4 processes x 1 thread"
    return [
        {"section": "sweep", "case": case_name, "ours_s": ours, "other": "one after the other",
         "other_s": other, "ratio": other / ours, "target": ">= 1", "holds": other / ours >= 1.0,
         "same_results": same, "repeats": case["repeats"]},
        {"section": "sweep", "case": case_name, "ours_s": ours,
         "other": "4 processes x 2 threads (oversubscribed)", "other_s": oversub,
         "ratio": oversub / ours, "target": None, "holds": None, "repeats": case["repeats"]},
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    rows = measure(args.quick)
    for r in rows:
        verdict = "" if r["target"] is None else f" (target {r['target']}: " + (
            "holds)" if r["holds"] else "NOT MET)")
        print(f"{r['case']}: sweep {r['ours_s']:.2f} s, {r['other']} {r['other_s']:.2f} s, "
              f"ratio {r['ratio']:.2f}{verdict}")
    print(f"same results in all three: {rows[0]['same_results']}")
    if args.json:
        write_json_atomic(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
