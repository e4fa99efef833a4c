r"""Benchmark: what writing a run to HDF5 as it goes costs.

Issue 11, point 1 (storage). Two comparisons, each timed with interleaved repeats after
an untimed warm-up, medians reported:

1. **The Save tracker on a run**: ``simulate`` of n tokens on S^2 (softmax, beta = 1,
   rk4, dt = 0.01, 101 saved times) with ``trackers=[tp.trackers.Save(path)]`` against the
   same run without it. ``ratio = without / with``: 1 means saving is free; target >= 0.9
   (saving adds at most ~10% to a run that saves every 2 steps).
2. **Journal vs rewriting the file**: writing nt saved rows (n, d) through the journal of
   :mod:`transformer_pde.storage` (one raw row and one record per save) against the simple
   crash-safe alternative, rewriting the whole file atomically after every save (O(nt^2)).
   ``ratio = rewrite / journal`` (> 1: the journal is faster); no target, it is the reason
   for the design.

Usage::

    python benchmarks/bench_storage.py [--quick] [--json storage.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
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

CASE = {"n": 512, "d": 3, "T": 2.0, "dt": 0.01, "saves": 101, "repeats": 5}
QUICK = dict(CASE, n=256, repeats=3)


def _tokens(n, d):
    x = np.random.default_rng(0).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _run_with_and_without(p, folder) -> dict:
    x0 = _tokens(p["n"], p["d"])
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0, summation="exact"))
    t_eval = np.linspace(0.0, p["T"], p["saves"])
    path = Path(folder) / "run.h5"

    def run(save):
        trackers = [tp.trackers.Save(path)] if save else None
        return tp.simulate(dyn, x0, (0.0, p["T"]), t_eval=t_eval, dt=p["dt"], trackers=trackers)

    run(True), run(False)  # warm-up (kernels compiled, h5py imported)
    times = {"with": [], "without": []}
    for _ in range(p["repeats"]):
        for save in (True, False):
            t0 = time.perf_counter()
            traj = run(save)
            times["with" if save else "without"].append(time.perf_counter() - t0)
    assert tp.load(path) == traj  # the file holds the run
    return times


class _FakeView:
    """What the engine hands the tracker, for writing rows without a run."""

    def __init__(self, problem, y0, t_eval):
        self.problem, self.y0, self.t_eval, self.done = problem, y0, t_eval, 0
        self.index, self.y, self.f = -1, None, None

    def snapshot(self):
        return {"info": {"n_steps": self.index}, "problem": {}, "stepper": {}, "controller": {"dt": 0.01},
                "f": None}


def _journal_vs_rewrite(p, folder) -> dict:
    from transformer_pde import storage
    from transformer_pde.integrate import _Particles

    x0 = _tokens(p["n"], p["d"])
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    nt = p["saves"]
    t_eval = np.linspace(0.0, p["T"], nt)
    rows = np.repeat(x0[None], nt, axis=0)
    info = tp.RunInfo(method="rk4", params={"t_span": [0.0, p["T"]]})
    problem = _Particles(dyn, info, x0)

    def journal():
        j = storage._Journal(Path(folder) / "journal.h5", fsync=False)
        view = _FakeView(problem, x0, t_eval)
        j.create(view)
        for k in range(nt):
            view.index = k
            j.write(k, rows[k], view.snapshot())
        j.close()

    def rewrite():
        for k in range(nt):
            tp.Trajectory(t=t_eval[:k + 1], x=rows[:k + 1], dynamics=dyn, info=info).save(
                Path(folder) / "rewrite.h5")

    journal(), rewrite()
    times = {"journal": [], "rewrite": []}
    for _ in range(p["repeats"]):
        for name, f in (("journal", journal), ("rewrite", rewrite)):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return times


def measure(quick: bool = False, params: dict | None = None) -> list[dict]:
    """Rows of the benchmark contract: the Save tracker's cost, journal vs rewrite."""
    p = dict(QUICK if quick else CASE, **(params or {}))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        t = _run_with_and_without(p, folder)
        med = {k: statistics.median(v) for k, v in t.items()}
        ratio = med["without"] / med["with"]
        rows.append({"section": "storage",
                     "case": f"simulate n={p['n']}, S^2, rk4, {p['saves']} saves, with trackers.Save",
                     "ours_s": med["with"], "other": "the same run without saving", "other_s": med["without"],
                     "ratio": ratio, "target": ">= 0.9 (saving adds <= ~10%)", "holds": bool(ratio >= 0.9),
                     "times": t, "repeats": p["repeats"]})
        t = _journal_vs_rewrite(p, folder)
        med = {k: statistics.median(v) for k, v in t.items()}
        rows.append({"section": "storage",
                     "case": f"write {p['saves']} rows ({p['n']}, {p['d']}) as they come",
                     "ours_s": med["journal"], "other": "atomic rewrite of the file after each row",
                     "other_s": med["rewrite"], "ratio": med["rewrite"] / med["journal"],
                     "target": "", "holds": None, "times": t, "repeats": p["repeats"]})
    return rows


def main(argv=None) -> int:
    """Print the table; ``--json PATH`` also writes the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    print(f"threads: {tp.get_num_threads()}, load average: {os.getloadavg()}", flush=True)
    rows = measure(args.quick)
    for r in rows:
        print(f"{r['case']}: ours {r['ours_s'] * 1e3:.1f} ms, {r['other']} {r['other_s'] * 1e3:.1f} ms, "
              f"ratio {r['ratio']:.2f} (target {r['target'] or '-'}: {r['holds']})")
    if args.json:
        write_json_atomic(Path(args.json), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
