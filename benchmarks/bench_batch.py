r"""Benchmark: a batch of systems in one ``simulate`` call vs separate calls vs a plain NumPy batch.

The case of issue 10 (point 3): B = 1024 systems of n = 32 tokens on the circle (d = 2,
sphere geometry), softmax attention beta = 4, rk4 with dt = 0.05 to T = 30 (600 steps),
states saved every 1.0. Three ways of doing the same work:

- **ours**: ``tp.simulate(dyn, x0, ...)`` with ``x0`` of shape (B, n, d);
- **separate**: ``tp.simulate`` once per system; a subset of ``--separate`` systems (64
  by default) is timed and the time scaled by B / subset (the calls are identical in
  cost, so the scaling is linear);
- **numpy**: a plain NumPy batched RK4 with retraction, written below: dense softmax over
  (B, n, n) logits by ``einsum``, tangent projection and renormalisation of every stage
  (what a user would write without the package).

Each repeat runs the three one after the other (interleaved, after an untimed warm-up
of each that compiles the kernels), and the table gives medians. Ratios are
``other / ours`` (speed-ups). The agreement of the batch with the separate calls on the
timed subset is measured in the same run (max |x| difference over all saved times).

Acceptance: ours at least 10x faster than the separate calls and 3x faster than the
NumPy batch; batch = separate calls to 1e-12.

Usage::

    python benchmarks/bench_batch.py                 # the acceptance case, 3 repeats
    python benchmarks/bench_batch.py --quick         # B = 256, T = 5: under a minute
    python benchmarks/bench_batch.py --json batch.json
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

CASE = {"B": 1024, "n": 32, "beta": 4.0, "dt": 0.05, "T": 30.0, "separate": 64, "repeats": 3}
QUICK = {"B": 256, "n": 32, "beta": 4.0, "dt": 0.05, "T": 5.0, "separate": 16, "repeats": 3}
#: the acceptance ratios of issue 10 (point 3) and the equality tolerance
MIN_VS_SEPARATE, MIN_VS_NUMPY, MAX_DIFF = 10.0, 3.0, 1e-12


def initial(B: int, n: int, seed: int = 0) -> np.ndarray:
    """B systems of n tokens i.i.d. uniform on the circle, shape (B, n, 2)."""
    angles = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi, (B, n))
    return np.stack([np.cos(angles), np.sin(angles)], axis=-1)


# ------------------------------------------------------------------ the plain NumPy batch
def numpy_velocity(x: np.ndarray, beta: float) -> np.ndarray:
    """P^perp_x softmax(beta <x_i, x_j>) x for a batch (B, n, d): dense (B, n, n) weights."""
    logits = beta * np.einsum("bid,bjd->bij", x, x)
    logits -= logits.max(axis=2, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(axis=2, keepdims=True)
    a = np.einsum("bij,bjd->bid", w, x)
    return a - np.einsum("bid,bid->bi", x, a)[..., None] * x


def numpy_rk4(x0: np.ndarray, beta: float, dt: float, t_eval: np.ndarray) -> np.ndarray:
    """RK4 with renormalisation of every stage and step, landing on t_eval; (nt, B, n, d)."""

    def retract(y):
        return y / np.linalg.norm(y, axis=-1, keepdims=True)

    x, t = x0, float(t_eval[0])
    out = np.empty((len(t_eval),) + x0.shape)
    out[0] = x0
    for k, target in enumerate(t_eval[1:], start=1):
        n_sub = max(1, int(np.ceil((target - t) / dt * (1.0 - 1e-12))))
        h = (target - t) / n_sub
        for _ in range(n_sub):
            k1 = numpy_velocity(x, beta)
            k2 = numpy_velocity(retract(x + 0.5 * h * k1), beta)
            k3 = numpy_velocity(retract(x + 0.5 * h * k2), beta)
            k4 = numpy_velocity(retract(x + h * k3), beta)
            x = retract(x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4))
        t = float(target)
        out[k] = x
    return out


# --------------------------------------------------------------------------- measuring
def _ours(dyn, x0, t_eval, dt):
    return tp.simulate(dyn, x0, (0.0, float(t_eval[-1])), t_eval=t_eval, method="rk4", dt=dt).x


def _separate(dyn, x0, t_eval, dt):
    return np.stack([_ours(dyn, x, t_eval, dt) for x in x0], axis=1)


def measure(quick: bool = False, params: dict | None = None) -> list[dict]:
    """Rows of the benchmark contract: batch vs separate calls, batch vs the NumPy batch."""
    p = dict(QUICK if quick else CASE, **(params or {}))
    B, n, beta, dt, T, m = p["B"], p["n"], p["beta"], p["dt"], p["T"], p["separate"]
    x0 = initial(B, n)
    t_eval = np.linspace(0.0, T, max(2, int(round(T)) + 1))
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta))
    short = t_eval[:2]
    _ours(dyn, x0, short, dt), _separate(dyn, x0[:2], short, dt), numpy_rk4(x0, beta, dt, short)  # warm-up
    times = {"ours": [], "separate": [], "numpy": []}
    for _ in range(p["repeats"]):
        t0 = time.perf_counter()
        x_ours = _ours(dyn, x0, t_eval, dt)
        t1 = time.perf_counter()
        x_sep = _separate(dyn, x0[:m], t_eval, dt)
        t2 = time.perf_counter()
        x_np = numpy_rk4(x0, beta, dt, t_eval)
        t3 = time.perf_counter()
        times["ours"].append(t1 - t0)
        times["separate"].append((t2 - t1) * B / m)
        times["numpy"].append(t3 - t2)
    med = {k: statistics.median(v) for k, v in times.items()}
    diff_sep = float(np.abs(x_ours[:, :m] - x_sep).max())
    diff_np = float(np.abs(x_ours - x_np).max())
    case = f"B={B}, n={n}, d=2, SA beta={beta:g}, rk4 dt={dt:g}, T={T:g}"
    common = {"section": "batch", "case": case, "ours_s": med["ours"], "repeats": p["repeats"],
              "times": times, "threads": tp.get_num_threads()}
    return [
        dict(common, other=f"{B} separate simulate calls ({m} timed, scaled by {B}/{m})",
             other_s=med["separate"], ratio=med["separate"] / med["ours"],
             target=f">= {MIN_VS_SEPARATE:g}x; max|diff| <= {MAX_DIFF:g}",
             holds=bool(med["separate"] / med["ours"] >= MIN_VS_SEPARATE and diff_sep <= MAX_DIFF),
             max_diff=diff_sep),
        dict(common, other="plain NumPy batched RK4 (dense einsum softmax)", other_s=med["numpy"],
             ratio=med["numpy"] / med["ours"], target=f">= {MIN_VS_NUMPY:g}x",
             holds=bool(med["numpy"] / med["ours"] >= MIN_VS_NUMPY), max_diff=diff_np),
    ]


def _table(rows: list[dict]) -> str:
    lines = [f"{'case':<48} {'ours':>9} {'other':>9} {'ratio':>7} {'max|diff|':>10}  holds  vs"]
    for r in rows:
        lines.append(f"{r['case']:<48} {r['ours_s']:>8.3f}s {r['other_s']:>8.3f}s {r['ratio']:>6.1f}x "
                     f"{r['max_diff']:>10.2g}  {str(r['holds']):<5}  {r['other']} (target {r['target']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Print the table; ``--json PATH`` also writes the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 256, T = 5 (under a minute)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--separate", type=int, default=None, help="systems timed as separate calls")
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    extra = {k: v for k, v in (("repeats", args.repeats), ("separate", args.separate)) if v is not None}
    print(f"threads: {tp.get_num_threads()}, load average: {os.getloadavg()}", flush=True)
    rows = measure(args.quick, extra)
    print(_table(rows))
    if args.json:
        write_json_atomic(Path(args.json), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
