r"""Benchmark: the normalised energy ascent vs USA in time, to cross the metastable plateaus.

Issue 12, point 3b. Three equal clusters of 8 tokens each on the circle (centres equally
spaced up to 1e-2 rad, spread 1e-2 rad; seeded), USA (``UnnormalizedAttention``) at
inverse temperature beta. USA in time lingers on the plateaus (two clusters near the
antipodal pair take a time growing like e^beta); the arc-length normalised ascent
(:func:`transformer_pde.metastability.normalized_ascent`) runs through them at unit speed.

"Reaching one cluster" is measured the same way for both: USA (``simulate``, dopri5,
rtol 1e-6) first runs once, untimed, on a long span saved on a fine grid to find the first
saved time ``t_one`` at which ``cluster_count`` (threshold 1 - 5e-7) is 1; then each
repeat times ``simulate`` over (0, t_one) and the ascent to its single point (stopped =
"one point", ds = 0.01, snap 1e-3), interleaved, after an untimed warm-up of each. The
table gives medians and ``ratio = USA / ascent`` (> 1: the ascent is faster), with the
final energies of both (each is e^beta / 2 beta up to the clusters' spread: the relative
gap is reported) and the USA time t_one. Target: ratio > 1 from beta = 4 on (the
ascent's step count does not grow with beta, USA's grows like its plateaus, ~e^beta).

Usage::

    python benchmarks/bench_metastability.py [--repeats 3] [--json metastability.json]
    python benchmarks/bench_metastability.py --quick
"""

from __future__ import annotations

import argparse
import os
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

from transformer_pde import clustering, metastability  # noqa: E402

CASES = {"betas": (3.0, 4.0, 5.0), "t_max": {3.0: 200.0, 4.0: 1500.0, 5.0: 1000.0}, "repeats": 3}
QUICK = {"betas": (4.0,), "t_max": {4.0: 1500.0}, "repeats": 1}
#: the ascent must win from this beta on (below, USA's plateaus are short and it is informational)
TARGET_BETA = 4.0


def _tokens(k: int = 3, m: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = 2 * np.pi * np.arange(k) / k + rng.uniform(-1e-2, 1e-2, k)
    theta = np.repeat(centres, m) + rng.normal(0.0, 1e-2, k * m)
    return np.stack([np.cos(theta), np.sin(theta)], axis=1)


def measure(quick: bool = False, params: dict | None = None) -> list[dict]:
    """Rows of the benchmark contract: ascent vs USA in time, one row per beta."""
    p = dict(QUICK if quick else CASES, **(params or {}))
    x0 = _tokens()
    rows = []
    for beta in p["betas"]:
        dyn = tp.TokenDynamics(tp.UnnormalizedAttention(beta), geometry="sphere")
        t_max = p["t_max"][beta]
        probe = tp.simulate(dyn, x0, (0.0, t_max), t_eval=np.linspace(0.0, t_max, 2001), method="dopri5")
        one = np.flatnonzero(clustering.cluster_count(probe, threshold=1 - 5e-7) == 1)
        if len(one) == 0:
            rows.append({"section": "metastability", "case": f"beta={beta:g}", "ours_s": float("nan"),
                         "other": "USA in time (simulate, dopri5)", "other_s": float("nan"),
                         "ratio": float("nan"), "target": "> 1", "holds": None,
                         "note": f"USA had not reached one cluster by t = {t_max:g}"})
            continue
        t_one = float(probe.t[one[0]])

        def usa(t_one=t_one, dyn=dyn):
            return tp.simulate(dyn, x0, (0.0, t_one), t_eval=[0.0, t_one], method="dopri5")

        def ascent(beta=beta):
            return metastability.normalized_ascent(x0, beta, s_end=50.0, ds=0.01)

        usa()  # warm-up (compilation)
        ascent()
        times = {"ascent": [], "usa": []}
        for _ in range(p["repeats"]):
            t0 = time.perf_counter()
            a = ascent()
            t1 = time.perf_counter()
            u = usa()
            t2 = time.perf_counter()
            times["ascent"].append(t1 - t0)
            times["usa"].append(t2 - t1)
        med = {k: statistics.median(v) for k, v in times.items()}
        e_max = np.exp(beta) / (2 * beta)
        e_usa = float(clustering.interaction_energy(u.x[-1], beta))
        rows.append({
            "section": "metastability",
            "case": f"3 clusters x 8 tokens on S^1, USA beta={beta:g}, to one cluster",
            "ours_s": med["ascent"], "other": "USA in time (simulate, dopri5, rtol 1e-6)",
            "other_s": med["usa"], "ratio": med["usa"] / med["ascent"],
            "target": f"> 1 for beta >= {TARGET_BETA:g}",
            "holds": bool(med["usa"] > med["ascent"]) if beta >= TARGET_BETA else None, "usa_t_one": t_one,
            "usa_steps": int(u.info.n_steps), "ascent_steps": len(a.s) - 1, "ascent_s_end": float(a.s[-1]),
            "ascent_stopped": a.stopped, "ascent_energy_gap": float(1 - a.energy[-1] / e_max),
            "usa_energy_gap": float(1 - e_usa / e_max), "times": times, "repeats": p["repeats"],
        })
    return rows


def main(argv=None) -> int:
    """Print the table; ``--json PATH`` also writes the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    extra = {} if args.repeats is None else {"repeats": args.repeats}
    print(f"threads: {tp.get_num_threads()}, load average: {os.getloadavg()}", flush=True)
    rows = measure(args.quick, extra)
    for r in rows:
        if "note" in r:
            print(f"{r['case']}: {r['note']}")
            continue
        print(f"{r['case']}: ascent {r['ours_s'] * 1e3:.0f} ms ({r['ascent_steps']} steps, s = "
              f"{r['ascent_s_end']:.2f}), USA {r['other_s'] * 1e3:.0f} ms ({r['usa_steps']} steps to "
              f"t = {r['usa_t_one']:g}), USA/ascent {r['ratio']:.1f}x; 1 - E/E_max: ascent "
              f"{r['ascent_energy_gap']:.1e}, USA {r['usa_energy_gap']:.1e}")
    if args.json:
        write_json_atomic(Path(args.json), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
