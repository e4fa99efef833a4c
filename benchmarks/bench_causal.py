"""Benchmark: the causal variants against the kernels they reuse, in the same run.

The new causal variants add no kernels of their own: ALiBi is causal softmax with the
per-source log-weight log a_j + m j, the mask j < i is the causal kernel on shifted rows,
and causal USA is the USA kernel with a causal flag. Each is timed *interleaved* with the
kernel it reuses (causal softmax with j <= i; full USA, whose rows visit twice the sources
of the causal ones), after one untimed warm-up call of each; medians of the repeats.
Tokens are uniform on the unit circle (d = 2, the fused row kernels) and on S^63 (d = 64,
the BLAS tiles), seeded. Ratio = other / ours (a speed-up; about 1 for the reuses, about
2 for causal USA against full USA).

Usage::

    python benchmarks/bench_causal.py [--quick] [--json PATH]
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


def _pairs(beta):
    """(case, ours, other, other's name, target) for one beta."""
    return [
        ("ALiBi (slope 0.01)", tp.ALiBiAttention(beta, 0.01),
         tp.SoftmaxAttention(beta, causal=True, summation="exact"), "causal softmax", "ratio ~1"),
        ("SA, mask j < i", tp.SoftmaxAttention(beta, causal=True, include_self=False, summation="exact"),
         tp.SoftmaxAttention(beta, causal=True, summation="exact"), "causal softmax j <= i", "ratio ~1"),
        ("causal USA", tp.UnnormalizedAttention(beta, causal=True, summation="exact"),
         tp.UnnormalizedAttention(beta, summation="exact"), "full USA", "ratio ~2 (half the pairs)"),
    ]


def measure(quick: bool = False) -> list[dict]:
    """Rows of the benchmark contract (benchmarks/run_all.py)."""
    rng = np.random.default_rng(0)
    sizes = [(2, 2048), (64, 1024)] if quick else [(2, 4096), (2, 16384), (64, 4096)]
    repeats = 5 if quick else 9
    rows = []
    for d, n in sizes:
        x = tp.initial.uniform_tokens(n, d, rng)
        for case, ours, other, other_name, target in _pairs(2.0):
            ours.velocity(x[:64]), other.velocity(x[:64])  # compile outside the timing
            ours.velocity(x), other.velocity(x)
            t_ours, t_other = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                ours.velocity(x)
                t1 = time.perf_counter()
                other.velocity(x)
                t2 = time.perf_counter()
                t_ours.append(t1 - t0)
                t_other.append(t2 - t1)
            a, b = statistics.median(t_ours), statistics.median(t_other)
            ref = ours.velocity_reference(x[:300])
            err = float(np.max(np.abs(ours.velocity(x[:300]) - ref)) / np.max(np.abs(ref)))
            rows.append({"section": "causal", "case": f"{case}, d={d}, n={n}", "ours_s": a,
                         "other": other_name, "other_s": b, "ratio": b / a, "target": target,
                         "holds": None, "error_vs_reference_n300": err})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = measure(args.quick)
    for r in rows:
        err = r["error_vs_reference_n300"]
        print(f"{r['case']:<34} ours {r['ours_s'] * 1e3:8.2f} ms  {r['other']:<22} "
              f"{r['other_s'] * 1e3:8.2f} ms  ratio {r['ratio']:5.2f}  err {err:.1e}")
    if args.json:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from run_all import write_json_atomic

        write_json_atomic(args.json, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
