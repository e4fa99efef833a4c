r"""Benchmark: the attention kernels' threading on a shared machine.

A fixed number of rk4 steps of SA post-LN on S^2 (``tp.simulate``, dt = 0.05, beta = 1,
tokens uniform on the sphere, seeded) is timed for several n under four conditions:

- ``idle``: nothing else started by the benchmark;
- ``busy1``, ``busy2``: beside one or two busy processes (``while True: pass`` in a
  subprocess each, started before and killed after the timings of that condition);
- ``concurrent``: two copies of the timing run in subprocesses, released together.

Three modes are timed *interleaved* under the same load (ours, single, today, ours,
single, today, ...), after one untimed warm-up run of each:

- ``ours``: the default threading (per-call choice of serial or parallel kernels); its
  timings are forgotten at the start of each condition (and in each fresh subprocess),
  so the warm-up run pays the first exploration and the timed runs adapt to the load
  as in a session: re-probing within the 1 % budget;
- ``single``: ``tp.num_threads(1)``, every kernel on the calling thread;
- ``today``: the behaviour before the adaptive choice, kept as a baseline: Numba's
  parallel kernels on all threads above 64 x 64 pairs.

Ratios printed (medians): ours/single under load (acceptance <= 1.3 beside one and two
busy processes, every n), ours concurrent/ours idle (each of the two runs <= 2.5), and
ours/today idle (acceptance: <= 1.05, i.e. no slower than before within the noise of
the medians, at n = 200 and n = 4096).

Usage::

    python benchmarks/bench_contention.py                  # n = 64 200 1000 4096 (~5 min)
    python benchmarks/bench_contention.py --check --json contention.json
    python benchmarks/bench_contention.py --quick          # smoke test (~15 s)

Exit status: 0; 1 with ``--check`` when an acceptance ratio fails; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
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

from transformer_pde import _threads
from transformer_pde._io import write_json

DEFAULT_N = (64, 200, 1000, 4096)
#: rk4 steps per run (dt = 0.05) so that one idle run takes ~0.1-0.5 s on 2 cores
STEPS = {64: 400, 200: 400, 1000: 50, 4096: 8}
MODES = ("ours", "single", "today")
CONDITIONS = ("idle", "busy1", "busy2", "concurrent")
DT = 0.05
#: acceptance: ours/single beside busy processes, concurrent/idle, ours/today idle
MAX_LOAD_RATIO = 1.3
MAX_CONCURRENT_RATIO = 2.5
MAX_IDLE_RATIO = 1.05
IDLE_CHECK_N = (200, 4096)
BUSY_CODE = "while True:\n    pass\n"


# ------------------------------------------------------------------------- timings
def steps_for(n: int, scale: float) -> int:
    """rk4 steps of one run for n tokens (interpolated in log n between the STEPS table)."""
    known = sorted(STEPS)
    if n in STEPS:
        base = STEPS[n]
    else:
        pairs = [(k, STEPS[k] * k * k) for k in known]
        work = np.interp(np.log(n), [np.log(k) for k, _ in pairs], [w for _, w in pairs])
        base = work / (n * n)
    return max(1, int(round(base * scale)))


def _simulate(dyn, x0, steps: int) -> float:
    """Wall time of ``steps`` rk4 steps (only the end time saved: no extra stops)."""
    t1 = steps * DT
    t0 = time.perf_counter()
    tp.simulate(dyn, x0, (0.0, t1), t_eval=[0.0, t1], method="rk4", dt=DT)
    return time.perf_counter() - t0


def _run(mode: str, dyn, x0, steps: int) -> float:
    """Wall time of one run in ``mode`` (see the module docstring)."""
    if mode == "ours":
        return _simulate(dyn, x0, steps)
    if mode == "single":
        with tp.num_threads(1):
            return _simulate(dyn, x0, steps)
    old, _threads._policy = _threads._policy, "parallel"
    try:
        return _simulate(dyn, x0, steps)
    finally:
        _threads._policy = old


def time_modes(n: int, steps: int, repeats: int, modes=MODES, seed: int = 0,
               ready=None) -> dict[str, list[float]]:
    """Wall times of ``repeats`` interleaved runs of each mode, after one warm-up each.

    ``ready`` (optional) is called between the warm-up and the timings (the concurrent
    condition's start barrier).
    """
    rng = np.random.default_rng([seed, n])
    x0 = rng.normal(size=(n, 3))
    x0 /= np.linalg.norm(x0, axis=1, keepdims=True)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0, summation="exact"), geometry="sphere", norm="post")
    _threads._reset()  # the warm-up run pays the first exploration of this condition
    for mode in modes:
        _run(mode, dyn, x0, 2)
    if ready is not None:
        ready()
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(repeats):
        for mode in modes:
            times[mode].append(_run(mode, dyn, x0, steps))
    return times


# ---------------------------------------------------------------------- conditions
def _busy(k: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_CODE]) for _ in range(k)]
    time.sleep(0.3)  # let them reach their loops
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _worker_main(n: int, steps: int, repeats: int, modes: list[str], seed: int) -> int:
    """Subprocess side of the concurrent condition: warm up, wait for "go", time."""
    def ready():
        print("ready", flush=True)
        sys.stdin.readline()

    times = time_modes(n, steps, repeats, modes, seed, ready=ready)
    print(json.dumps(times), flush=True)
    return 0


def _concurrent(n: int, steps: int, repeats: int, modes, seed: int) -> list[dict]:
    """Two worker processes timing the same runs, released together."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(n), str(steps),
           str(repeats), str(seed), *modes]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"concurrent worker did not start (got {line!r})")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=3600)
            results.append(json.loads(out.strip().splitlines()[-1]))
            if p.returncode:
                raise RuntimeError(f"concurrent worker exited with status {p.returncode}")
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def bench_n(n: int, steps: int, repeats: int, conditions, seed: int) -> dict:
    """All conditions for one n: median times per mode and the ratios."""
    row = {"n": n, "steps": steps, "times": {}, "median": {}}
    for cond in conditions:
        if cond == "concurrent":
            runs = _concurrent(n, steps, repeats, ["ours", "single"], seed)
            row["times"][cond] = runs
            row["median"][cond] = [{m: statistics.median(t) for m, t in r.items()} for r in runs]
            continue
        procs = _busy({"idle": 0, "busy1": 1, "busy2": 2}[cond])
        try:
            modes = MODES if cond == "idle" else ("ours", "single")
            times = time_modes(n, steps, repeats, modes, seed)
        finally:
            _stop(procs)
        row["times"][cond] = times
        row["median"][cond] = {m: statistics.median(t) for m, t in times.items()}
    med = row["median"]
    ratios = {}
    if "idle" in med:
        ratios["idle_ours_over_today"] = med["idle"]["ours"] / med["idle"]["today"]
        ratios["idle_ours_over_single"] = med["idle"]["ours"] / med["idle"]["single"]
    for cond in ("busy1", "busy2"):
        if cond in med:
            ratios[f"{cond}_ours_over_single"] = med[cond]["ours"] / med[cond]["single"]
    if "concurrent" in med and "idle" in med:
        ratios["concurrent_over_idle"] = [r["ours"] / med["idle"]["ours"] for r in med["concurrent"]]
    row["ratios"] = ratios
    return row


# --------------------------------------------------------------------------- report
def _ms(t: float) -> str:
    return f"{1e3 * t:.0f} ms" if t >= 0.1 else f"{1e3 * t:.1f} ms"


def format_table(rows: list[dict]) -> str:
    head = (f"{'n':>5} {'steps':>5}  {'condition':<10} {'ours':>9} {'single':>9} {'today':>9}  "
            f"{'ours/single':>11} {'ours/today':>10} {'vs idle':>12}")
    lines = [head, "-" * len(head)]
    for row in rows:
        med, rat = row["median"], row["ratios"]
        for cond in CONDITIONS:
            if cond not in med:
                continue
            if cond == "concurrent":
                for k, r in enumerate(med[cond]):
                    vs = rat.get("concurrent_over_idle")
                    lines.append(
                        f"{row['n']:>5} {row['steps']:>5}  {'conc #' + str(k + 1):<10} "
                        f"{_ms(r['ours']):>9} {_ms(r['single']):>9} {'':>9}  "
                        f"{r['ours'] / r['single']:>10.2f}x {'':>10} "
                        f"{'' if vs is None else f'{vs[k]:.2f}x':>12}")
                continue
            m = med[cond]
            today = f"{_ms(m['today']):>9}" if "today" in m else f"{'':>9}"
            ot = f"{m['ours'] / m['today']:>9.2f}x" if "today" in m else f"{'':>10}"
            lines.append(f"{row['n']:>5} {row['steps']:>5}  {cond:<10} {_ms(m['ours']):>9} "
                         f"{_ms(m['single']):>9} {today}  {m['ours'] / m['single']:>10.2f}x {ot} "
                         f"{'':>12}")
    return "\n".join(lines)


def acceptance(rows: list[dict]) -> list[dict]:
    """Every acceptance ratio that was measured, with its bound and verdict."""
    out = []
    for row in rows:
        n, rat = row["n"], row["ratios"]
        for cond in ("busy1", "busy2"):
            key = f"{cond}_ours_over_single"
            if key in rat:
                out.append({"n": n, "ratio": key, "value": rat[key], "max": MAX_LOAD_RATIO})
        for k, v in enumerate(rat.get("concurrent_over_idle", [])):
            out.append({"n": n, "ratio": f"concurrent_over_idle[{k}]", "value": v,
                        "max": MAX_CONCURRENT_RATIO})
        if n in IDLE_CHECK_N and "idle_ours_over_today" in rat:
            out.append({"n": n, "ratio": "idle_ours_over_today", "value": rat["idle_ours_over_today"],
                        "max": MAX_IDLE_RATIO})
    for a in out:
        a["passed"] = bool(a["value"] <= a["max"])
    return out


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "numpy": np.__version__, "numba": numba.__version__,
            "numba_num_threads": numba.get_num_threads(),
            "numba_max_threads": numba.config.NUMBA_NUM_THREADS}
    if hasattr(os, "sched_getaffinity"):
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


# ----------------------------------------------------------------------------- main
def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not (v > 0 and np.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_contention",
        description="Attention kernels' threading beside busy processes and concurrent runs: "
                    "ours vs single-threaded vs the previous behaviour, interleaved medians.")
    p.add_argument("--n", type=_positive_int, nargs="+", default=list(DEFAULT_N),
                   help="token counts (default: %(default)s)")
    p.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS),
                   help="load conditions (default: all)")
    p.add_argument("--repeats", type=_positive_int, default=5,
                   help="timed runs per mode and condition (default: 5)")
    p.add_argument("--scale", type=_positive_float, default=1.0,
                   help="multiply the number of rk4 steps per run (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tokens (default: 0)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: n = 64 only, 20 steps, 1 repeat")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the results as JSON to PATH (atomic)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when an acceptance ratio fails")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        n, steps, repeats, seed = (int(a) for a in argv[1:5])
        return _worker_main(n, steps, repeats, argv[5:], seed)
    args = build_parser().parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.scale = [64], 1, 20 / STEPS[64]

    info = machine_info()
    print(f"machine: {info['platform']}, cpu_count={info['cpu_count']}, "
          f"affinity={info.get('cpu_affinity')}, load average {info.get('loadavg_at_start')}")
    print(f"numba {info['numba']} threads={info['numba_num_threads']} layer={_layer()}, "
          f"numpy {info['numpy']}, python {info['python']}")
    print(f"SA post-LN on S^2, rk4 dt={DT}, beta=1; medians of {args.repeats} interleaved "
          "repeats after one warm-up; ours/single < 1 means ours is faster")
    print()
    rows = []
    for n in args.n:
        steps = steps_for(n, args.scale)
        rows.append(bench_n(n, steps, args.repeats, args.conditions, args.seed))
        print(f"  n={n} done", file=sys.stderr, flush=True)
    print(format_table(rows))
    checks = acceptance(rows)
    print()
    for a in checks:
        print(f"  n={a['n']:>5} {a['ratio']:<26} {a['value']:.2f} (<= {a['max']:g}) "
              f"{'ok' if a['passed'] else 'FAIL'}")
    if hasattr(os, "getloadavg"):
        print(f"load average at the end: {[round(v, 2) for v in os.getloadavg()]}")
    failed = [a for a in checks if not a["passed"]]
    status = 1 if args.check and failed else 0
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                               "results": rows, "acceptance": checks, "exit_status": status})
    return status


def _layer() -> str:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return "unset"


if __name__ == "__main__":
    sys.exit(main())
