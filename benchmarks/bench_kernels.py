r"""Benchmark: the exact attention kernels near the hardware limit, float64 and float32.

Rows (medians of interleaved repeats, one run; ratio = other / ours, a speed-up):

- ``pairs/s``: SA and USA at d = 3 (tokens uniform on S^2, beta = 1): one
  ``att.velocity(x)`` against the dense NumPy reference, with all threads and with one
  (``tp.num_threads(1)``); ``pairs_per_s`` = n^2 / time. The all-threads rows run the
  parallel kernels (the ``"parallel"`` policy of :mod:`transformer_pde._threads`): this
  benchmark measures the kernels, and the adaptive choice between the serial and the
  parallel version, measured by bench_contention, could settle a row on the serial
  one after an unlucky first sample. Targets: 1e9 pairs/s on the two
  cores, 5e8 on one. Two kernels: with Q = K = I the *symmetric pairs* (each pair's
  exponential once for both rows, docs/math.md §9.14), and the *generic rows* (every
  pair of every row), timed with Q a fixed rotation of S^2 (Q^T K not symmetric; the
  same cost as any other Q).
- ``d = 64``: the BLAS-tile path against the dense reference, with all threads (the
  tiles on as many Python threads) and with one; target 2x. The symmetric pairs
  (Q = K = I) and the generic tiles (Q the cyclic shift of the coordinates).
- ``float32``: ``velocity(x, dtype=np.float32)`` against the float64 kernel, with the
  measured error (relative to the sum of the absolute terms, in units of eps32).
- ``vs baseline`` (``--baseline TREE``, e.g. ``--baseline /path/to/main/checkout``):
  the serial and parallel kernels of another checkout's
  ``transformer_pde/_kernels/attention.py`` on the same projected arrays, interleaved
  with ours; compiled here without the on-disk cache.

The BLAS thread setting (``OPENBLAS_NUM_THREADS``, read by OpenBLAS when NumPy loads)
is reported in every row; run with ``OPENBLAS_NUM_THREADS=1`` for the figures of
benchmarks/README.md.

Usage::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_kernels.py [--quick] [--json PATH]
                                                            [--baseline TREE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import types
from functools import partial
from pathlib import Path

import numpy as np

try:
    import transformer_pde as tp
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import transformer_pde as tp
from transformer_pde import _threads  # noqa: E402 - the kernels' thread policy

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling run_all.py
import numba
from run_all import write_json_atomic  # noqa: E402 - one atomic JSON writer for every benchmark

EPS32 = float(np.finfo(np.float32).eps)


def _sphere(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, n, d])
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _interleaved(fns: list, repeats: int) -> list[float]:
    """Median wall time of each callable, called in turn ``repeats`` times after a warm-up.

    The warm-up calls a callable of < 0.5 s 8 times: the kernels' thread chooser
    (transformer_pde._threads) times the serial and the parallel version 3 times each before
    it settles, and those exploratory calls would otherwise be among the timed ones (the
    BLAS-tile path at d = 64 goes through the chooser too).
    """
    for f in fns:
        t0 = time.perf_counter()
        f()
        if time.perf_counter() - t0 < 0.5:
            for _ in range(7):
                f()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for f, t in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _blas() -> str:
    return os.environ.get("OPENBLAS_NUM_THREADS", "unset (OpenBLAS default: all cores)")


def _row(section, case, ours_s, other, other_s, target, holds, **extra) -> dict:
    row = {"section": section, "case": case, "ours_s": ours_s, "other": other,
           "other_s": other_s, "ratio": other_s / ours_s, "target": target, "holds": holds,
           "numba_threads": tp.get_num_threads(), "blas_threads": _blas()}
    row.update(extra)
    return row


#: a fixed rotation of R^3 (by 0.3 rad about the z axis): as Q it makes Q^T K = Q^T not
#: symmetric, so velocity() takes the generic rows
_ROTATION = np.array([[np.cos(0.3), -np.sin(0.3), 0.0], [np.sin(0.3), np.cos(0.3), 0.0], [0.0, 0.0, 1.0]])


#: the cyclic shift of the coordinates of R^64: as Q it makes Q^T K = Q^T not symmetric
_SHIFT64 = np.roll(np.eye(64), 1, axis=0)


def _attention(variant: str, Q=None):
    # summation="exact": on S^2 these models would otherwise use fast summation (bench_fastsum)
    cls = tp.SoftmaxAttention if variant == "SA" else tp.UnnormalizedAttention
    return cls(1.0, Q=Q, summation="exact")


def _float32_error(att, x, v32, v64) -> float:
    """max_i |v32_i - v64_i|_inf / sum_j |W_ij| |x_j|_inf, in units of eps32."""
    denom = np.abs(att.matrix(x)) @ np.abs(x).max(axis=1)
    return float((np.abs(v32 - v64).max(axis=1) / denom).max() / EPS32)


@contextlib.contextmanager
def _parallel_policy():
    """The kernels' parallel versions above the serial threshold (no adaptive choice)."""
    old, _threads._policy = _threads._policy, "parallel"
    try:
        yield
    finally:
        _threads._policy = old


def measure(quick: bool = False, baseline: str | None = None) -> list[dict]:
    """All rows of this benchmark (see the module docstring); quick: n = 2048, 3 repeats."""
    with _parallel_policy():
        return _measure(quick, baseline)


def _measure(quick: bool, baseline: str | None) -> list[dict]:
    n = 2048 if quick else 4096
    repeats = 3 if quick else 15
    rows = []
    pairs = float(n) * n
    threads = tp.get_num_threads()
    for variant in ("SA", "USA"):
        for kernel, att in (("symmetric pairs", _attention(variant)),
                            ("generic rows", _attention(variant, Q=_ROTATION))):
            x = _sphere(n, 3)
            t_all, t_ref = _interleaved([partial(att.velocity, x),
                                         partial(att.velocity_reference, x)], repeats)
            rows.append(_row("pairs/s", f"{variant} d=3 n={n}, {kernel}, {threads} threads", t_all,
                             "dense NumPy reference", t_ref, "1e9 pairs/s (2 cores)",
                             pairs / t_all >= 1e9, pairs_per_s=pairs / t_all))
            with tp.num_threads(1):
                t_one, t_ref1 = _interleaved([partial(att.velocity, x),
                                              partial(att.velocity_reference, x)], repeats)
            rows.append(_row("pairs/s", f"{variant} d=3 n={n}, {kernel}, 1 thread", t_one,
                             "dense NumPy reference", t_ref1, "5e8 pairs/s (1 core)",
                             pairs / t_one >= 5e8, pairs_per_s=pairs / t_one))
    for variant in ("SA", "USA"):
        for kernel, att in (("symmetric pairs", _attention(variant)),
                            ("generic tiles", _attention(variant, Q=_SHIFT64))):
            x = _sphere(n, 64)
            t_ours, t_ref = _interleaved([partial(att.velocity, x),
                                          partial(att.velocity_reference, x)], repeats)
            rows.append(_row("d = 64", f"{variant} d=64 n={n}, {kernel}, {threads} threads", t_ours,
                             "dense NumPy reference", t_ref, ">= 2x reference", t_ref / t_ours >= 2.0,
                             pairs_per_s=pairs / t_ours))
            with tp.num_threads(1):  # the tiles on one thread (BLAS threads as set)
                t_one, t_ref1 = _interleaved([partial(att.velocity, x),
                                              partial(att.velocity_reference, x)], repeats)
            rows.append(_row("d = 64", f"{variant} d=64 n={n}, {kernel}, 1 thread", t_one,
                             "dense NumPy reference", t_ref1, "(tiles on one thread)", None,
                             pairs_per_s=pairs / t_one))
    for variant in ("SA", "USA"):
        for d in (3, 64):  # float64 on the generic rows too (the symmetric pairs are float64 only)
            att = _attention(variant, Q=_ROTATION if d == 3 else _SHIFT64)
            x = _sphere(n, d)
            t32, t64 = _interleaved([partial(att.velocity, x, dtype=np.float32),
                                     partial(att.velocity, x)], repeats)
            err = _float32_error(att, x, att.velocity(x, dtype=np.float32), att.velocity(x))
            rows.append(_row("float32", f"{variant} d={d} n={n}", t32, "float64 kernel", t64,
                             "~2x float64 (SIMD width)", t64 / t32 >= 1.8,
                             pairs_per_s=pairs / t32, error_eps32=err))
    if baseline is not None:
        rows.extend(_versus_baseline(baseline, n, repeats))
    return rows


def _load_kernels(tree: str):
    """The kernel module of another checkout, compiled here (no on-disk cache)."""
    path = Path(tree) / "transformer_pde" / "_kernels" / "attention.py"
    src = path.read_text().replace("cache=True", "cache=False")
    mod = types.ModuleType("_baseline_kernels")
    sys.modules[mod.__name__] = mod
    exec(compile(src, str(path), "exec"), mod.__dict__)  # noqa: S102 - a checkout the user names
    return mod


def _versus_baseline(tree: str, n: int, repeats: int) -> list[dict]:
    from transformer_pde._kernels import attention as ours

    base = _load_kernels(tree)
    x = _sphere(n, 3)
    xT = np.ascontiguousarray(x.T)
    colw = np.zeros(n)
    out = np.empty_like(x)
    rows = []
    calls = {
        "SA": lambda m, s: (m.softmax_field_serial if s else m.softmax_field)(
            x, xT, xT, colw, False, out),
        "USA": lambda m, s: (m.exp_field_serial if s else m.exp_field)(x, xT, xT, colw, False, out),
    }
    for variant, call in calls.items():
        for serial in (True, False):
            t_ours, t_base = _interleaved([partial(call, ours, serial),
                                           partial(call, base, serial)], repeats)
            label = "serial" if serial else f"parallel, {numba.get_num_threads()} threads"
            rows.append(_row("vs baseline", f"{variant} d=3 n={n} kernel, {label}", t_ours,
                             f"kernel of {tree}", t_base, "faster", t_ours < t_base,
                             pairs_per_s=float(n) * n / t_ours))
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'section':12s} {'case':44s} {'ours':>10s} {'pairs/s':>9s} {'other':>10s} " \
           f"{'ratio':>7s}  target / holds / extra"
    lines = [head, "-" * len(head)]
    for r in rows:
        extra = f", error {r['error_eps32']:.2f} eps32" if "error_eps32" in r else ""
        lines.append(f"{r['section']:12s} {r['case']:44s} {r['ours_s'] * 1e3:8.2f}ms "
                     f"{r.get('pairs_per_s', float('nan')):9.3g} {r['other_s'] * 1e3:8.2f}ms "
                     f"{r['ratio']:6.2f}x  {r['target']} / {r['holds']}{extra}  "
                     f"[vs {r['other']}]")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_kernels", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="n = 2048, 3 repeats (< 60 s)")
    p.add_argument("--baseline", default=None, metavar="TREE",
                   help="also time the kernels of another checkout (e.g. main)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the rows as JSON")
    args = p.parse_args(argv)
    print(f"numba threads {tp.get_num_threads()}, BLAS threads {_blas()}, "
          f"load average {os.getloadavg()}")
    rows = measure(args.quick, args.baseline)
    print(format_table(rows))
    print(f"load average at the end {os.getloadavg()}")
    if args.json is not None:
        write_json_atomic(args.json, {"benchmark": "bench_kernels", "rows": rows})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
