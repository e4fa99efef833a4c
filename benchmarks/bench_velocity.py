r"""Benchmark: our Numba attention kernel vs the dense NumPy reference, in the same run.

For every (variant, n, d) cell, tokens are drawn uniformly on the unit sphere of R^d
(seeded) and the two views of the same attention output are timed *interleaved*
(kernel, reference, kernel, reference, ...) after one untimed warm-up call of each,
so that JIT compilation is excluded and machine noise hits both sides alike. The
table reports the median wall time of each, the pair interactions per second
(n^2 / time) and the ratio reference/ours.

A separate probe shows that the kernel does not allocate an n x n array at large n:
in a fresh Python process it warms the kernel up on a few tokens, resets the peak
resident set size (``/proc/self/clear_refs``), calls the kernel on n tokens and reads
the peak back (``VmHWM`` in ``/proc/self/status``; ``ru_maxrss`` is reported as well).
Numba allocations are invisible to ``tracemalloc``, so RSS is the honest measure. A
positive control (the dense reference, same probe, smaller n) shows that the probe
does see an n x n allocation when there is one.

Usage::

    python benchmarks/bench_velocity.py                       # the full default grid
    python benchmarks/bench_velocity.py --n 4096 --d 3 --check
    python benchmarks/bench_velocity.py --variants softmax usa l2 --json results.json

Exit status: 0; 1 with ``--check`` when the kernel is less than 3x faster than the
reference for softmax at d=3, n=4096 (the acceptance threshold of issue 2) or when the
memory check fails; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import transformer_pde as tp
except ImportError:  # run from a checkout without installing: the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import transformer_pde as tp

import numba

VARIANTS = ("softmax", "usa", "l2", "sigmoid", "sinkhorn", "causal")
DEFAULT_N = (1024, 4096, 16384)
DEFAULT_D = (2, 3, 16, 64)

#: acceptance cell and threshold of issue 2 (softmax, d=3, n=4096, ours >= 3x faster)
CHECK_CELL = {"variant": "softmax", "n": 4096, "d": 3}
CHECK_MIN_RATIO = 3.0
#: the memory check passes when the kernel's peak RSS increase is below this fraction
#: of the n x n float64 array it must not allocate (5% of 2 GiB = 102.4 MiB at n=16384)
MEMORY_FRACTION = 0.05
MIB = 2.0**20
GIB = 2.0**30


# ----------------------------------------------------------------------------- setup
def make_attention(variant: str, beta: float):
    """The attention object benchmarked under the name ``variant``."""
    if variant == "softmax":
        return tp.SoftmaxAttention(beta=beta, summation="exact")
    if variant == "causal":
        return tp.SoftmaxAttention(beta=beta, causal=True, summation="exact")
    if variant == "usa":
        return tp.UnnormalizedAttention(beta=beta, summation="exact")
    if variant == "l2":
        return tp.L2Attention(beta=beta)
    if variant == "sigmoid":
        return tp.SigmoidAttention(beta=beta, summation="exact")
    if variant == "sinkhorn":
        return tp.SinkhornAttention(beta=beta)
    raise ValueError(f"unknown variant {variant!r}, expected one of {VARIANTS}")


def sphere_tokens(n: int, d: int, seed: int) -> np.ndarray:
    """n tokens uniform on the unit sphere of R^d, shape (n, d), reproducible."""
    rng = np.random.default_rng([seed, n, d])
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dense_bytes(variant: str, n: int, d: int) -> float:
    """Rough peak memory of the dense reference: n x n float64 arrays times a factor.

    About four live n x n temporaries for the softmax-type references (logits, shifted
    logits, log-softmax, weights); the L2 reference also builds an (n, n, d) difference
    tensor; Sinkhorn and the causal mask add one or two more.
    """
    factor = {"l2": d + 4, "sinkhorn": 5, "causal": 5}.get(variant, 4)
    return float(n) * n * 8 * factor


# ------------------------------------------------------------------------- machine
def machine_info() -> dict:
    """Platform, CPU, memory and thread settings of this run."""
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "transformer_pde": getattr(tp, "__version__", "unknown"),
        "numba_num_threads": numba.get_num_threads(),
        "numba_max_threads": numba.config.NUMBA_NUM_THREADS,
    }
    try:
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        info["loadavg_at_start"] = None
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        info["cpu_affinity"] = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    info["mem_total_gib"] = round(int(line.split()[1]) * 1024 / GIB, 1)
                    break
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: p.get(k) for k in ("internal_api", "num_threads", "version")}
            for p in threadpool_info()
        ]
    except Exception:  # optional dependency; informative only
        info["blas"] = "unknown (threadpoolctl not installed)"
    return info


# -------------------------------------------------------------------------- timing
def _timed(fn, x):
    t0 = time.perf_counter()
    out = fn(x)
    return time.perf_counter() - t0, out


def bench_cell(variant: str, n: int, d: int, *, repeats: int, beta: float, seed: int,
               max_dense_bytes: float) -> dict:
    """Median wall times of kernel and reference on one (variant, n, d) cell, interleaved."""
    att = make_attention(variant, beta)
    x = sphere_tokens(n, d, seed)
    need = dense_bytes(variant, n, d)
    run_ref = need <= max_dense_bytes

    # untimed warm-up: JIT compile (or cache load) and first-touch effects excluded
    v_ours = att.velocity(x)
    v_ref = att.velocity_reference(x) if run_ref else None

    t_ours, t_ref = [], []
    for _ in range(repeats):
        t, v_ours = _timed(att.velocity, x)
        t_ours.append(t)
        if run_ref:
            t, v_ref = _timed(att.velocity_reference, x)
            t_ref.append(t)

    pairs = float(n) * n
    row = {
        "variant": variant,
        "n": n,
        "d": d,
        "repeats": repeats,
        "ours_s": statistics.median(t_ours),
        "ours_all_s": t_ours,
        "ours_pairs_per_s": pairs / statistics.median(t_ours),
        "ref_s": None,
        "ref_all_s": None,
        "ref_pairs_per_s": None,
        "ratio": None,
        "max_abs_diff": None,
        "ref_skipped": None,
        "ref_estimated_gib": need / GIB,
    }
    if run_ref:
        row["ref_s"] = statistics.median(t_ref)
        row["ref_all_s"] = t_ref
        row["ref_pairs_per_s"] = pairs / row["ref_s"]
        row["ratio"] = row["ref_s"] / row["ours_s"]
        row["max_abs_diff"] = float(np.max(np.abs(v_ours - v_ref)))
    else:
        row["ref_skipped"] = f"skipped: would allocate ~{need / GIB:.1f} GiB"
    return row


# -------------------------------------------------------------------------- memory
# Runs in a fresh interpreter: sys.argv = [-c, n, d, beta, seed, threads, n_control].
# Prints one JSON line. Numba's own allocations are invisible to tracemalloc, so the
# probe reads the kernel's effect on the resident set size instead.
_PROBE = r"""
import gc, json, resource, sys
import numpy as np
import numba
import transformer_pde as tp

n, d = int(sys.argv[1]), int(sys.argv[2])
beta, seed, threads, n_control = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
if threads > 0:
    numba.set_num_threads(threads)
KIB = 1024.0
RU_SCALE = 1.0 if sys.platform == "darwin" else KIB  # ru_maxrss: bytes on macOS, KiB on Linux

def status():
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(line.split()[1]) * KIB
    except OSError:
        pass
    return out

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False

def probe(fn, x):
    gc.collect()
    reset = reset_peak()
    before = status()
    ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RU_SCALE
    fn(x)
    after = status()
    ru_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RU_SCALE
    res = {"hwm_reset": reset, "ru_maxrss_before": ru_before, "ru_maxrss_after": ru_after}
    if reset and "VmRSS" in before and "VmHWM" in after:
        # peak during the call minus the resident size just before it
        res["method"] = "VmHWM after reset (/proc/self/clear_refs) - VmRSS before"
        res["rss_before"] = before["VmRSS"]
        res["peak_increase"] = after["VmHWM"] - before["VmRSS"]
    else:
        # fallback: increase of the high-water mark; a lower bound of the true increase
        # when the process had peaked above its current size before the call
        res["method"] = "ru_maxrss after - before (lower bound)"
        res["rss_before"] = before.get("VmRSS")
        res["peak_increase"] = ru_after - ru_before
    return res

rng = np.random.default_rng([seed, n, d])
x = rng.normal(size=(n, d))
x /= np.linalg.norm(x, axis=1, keepdims=True)
att = tp.SoftmaxAttention(beta=beta, summation="exact")
att.velocity(x[:256])  # JIT compile / cache load and thread pool start, on few tokens
result = {"n": n, "d": d, "threads": numba.get_num_threads(), "kernel": probe(att.velocity, x)}
if n_control > 0:
    xc = rng.normal(size=(n_control, d))  # own tokens: n_control may exceed n
    xc /= np.linalg.norm(xc, axis=1, keepdims=True)
    att.velocity_reference(xc[:64])
    result["control"] = probe(att.velocity_reference, xc)
    result["control"]["n"] = n_control
print(json.dumps(result))
"""


def memory_check(n: int = 16384, d: int = 3, *, beta: float = 1.0, seed: int = 0,
                 threads: int = 0, n_control: int = 4096, timeout: float = 900.0) -> dict:
    """Peak RSS increase of one kernel call on n tokens, measured in a fresh process.

    Returns a dict with ``peak_increase_mib``, the ``threshold_mib`` (MEMORY_FRACTION of
    the n x n float64 array), ``passed``, and the positive control (the dense reference
    on ``n_control`` tokens, which must show at least one n_control x n_control array;
    if the probe cannot see that, the check does not pass).
    """
    env = dict(os.environ)
    pkg_root = str(Path(tp.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-c", _PROBE, str(n), str(d), repr(float(beta)), str(seed),
           str(threads), str(n_control)]
    nn_bytes = float(n) * n * 8
    res = {
        "n": n,
        "d": d,
        "variant": "softmax",
        "nxn_float64_mib": nn_bytes / MIB,
        "threshold_fraction": MEMORY_FRACTION,
        "threshold_mib": MEMORY_FRACTION * nn_bytes / MIB,
        "passed": False,
    }
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        res["error"] = f"memory probe timed out after {timeout:g} s"
        return res
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        res["error"] = (f"memory probe failed (exit {proc.returncode}): "
                        f"{proc.stderr.strip()[-2000:]}")
        return res
    try:
        probe = json.loads(lines[-1])
    except json.JSONDecodeError:
        res["error"] = f"memory probe printed no result: {proc.stdout[-2000:]}"
        return res

    k = probe["kernel"]
    res["threads"] = probe["threads"]
    res["method"] = k["method"]
    res["rss_before_mib"] = None if k["rss_before"] is None else k["rss_before"] / MIB
    res["peak_increase_mib"] = k["peak_increase"] / MIB
    res["ru_maxrss_before_mib"] = k["ru_maxrss_before"] / MIB
    res["ru_maxrss_after_mib"] = k["ru_maxrss_after"] / MIB
    kernel_ok = k["peak_increase"] < MEMORY_FRACTION * nn_bytes

    control_ok = True
    if "control" in probe:
        c = probe["control"]
        nc = c["n"]
        c_bytes = float(nc) * nc * 8
        control_ok = c["peak_increase"] >= 0.9 * c_bytes
        res["control"] = {
            "what": f"dense NumPy reference at n={nc}, same probe",
            "n": nc,
            "nxn_float64_mib": c_bytes / MIB,
            "peak_increase_mib": c["peak_increase"] / MIB,
            "sees_nxn_array": control_ok,
        }
    res["passed"] = bool(kernel_ok and control_ok)
    if not control_ok:
        res["error"] = "positive control failed: the probe did not see the reference's n x n array"
    return res


# -------------------------------------------------------------------------- output
def _fmt_time(t):
    if t is None:
        return "-"
    return f"{t * 1e3:.2f} ms" if t < 1.0 else f"{t:.3f} s"


def _fmt_rate(r):
    return "-" if r is None else f"{r:.3g}"


def format_table(rows: list[dict]) -> str:
    head = ["n", "d", "variant", "ours (median)", "reference (median)", "ours pairs/s",
            "ref pairs/s", "ref/ours", "max|diff|"]
    body = []
    for r in rows:
        if r["ref_skipped"]:
            ref = [r["ref_skipped"], "-", "-", "-"]
        else:
            ref = [_fmt_time(r["ref_s"]), _fmt_rate(r["ref_pairs_per_s"]),
                   f"{r['ratio']:.2f}x", f"{r['max_abs_diff']:.1e}"]
        body.append([str(r["n"]), str(r["d"]), r["variant"], _fmt_time(r["ours_s"]),
                     ref[0], _fmt_rate(r["ours_pairs_per_s"]), ref[1], ref[2], ref[3]])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(head)]
    right = {0, 1, 3, 5, 6, 7, 8}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    out.extend(line(b) for b in body)
    return "\n".join(out)


def format_memory(mem: dict) -> str:
    if "peak_increase_mib" not in mem:
        return (f"memory check at n={mem['n']}, d={mem['d']}: FAIL "
                f"({mem.get('error', 'no result')})")
    verdict = "PASS" if mem["passed"] else "FAIL"
    lines = [
        f"memory check (softmax kernel, n={mem['n']}, d={mem['d']}, fresh process, "
        f"{mem['threads']} threads): peak RSS increase during the call "
        f"{mem['peak_increase_mib']:.1f} MiB; threshold {mem['threshold_mib']:.1f} MiB "
        f"= {100 * mem['threshold_fraction']:g}% of one n x n float64 array "
        f"({mem['nxn_float64_mib']:.0f} MiB) -> {verdict}",
        f"  method: {mem['method']}; RSS just before the call "
        + ("n/a" if mem.get("rss_before_mib") is None else f"{mem['rss_before_mib']:.1f} MiB")
        + f"; ru_maxrss before/after the call {mem['ru_maxrss_before_mib']:.1f} / "
        f"{mem['ru_maxrss_after_mib']:.1f} MiB",
    ]
    if "control" in mem:
        c = mem["control"]
        lines.append(
            f"  positive control ({c['what']}): peak increase {c['peak_increase_mib']:.1f} MiB "
            f"vs one n x n array {c['nxn_float64_mib']:.0f} MiB -> "
            f"{'probe sees it' if c['sees_nxn_array'] else 'PROBE BLIND'}")
    if mem.get("error"):
        lines.append(f"  error: {mem['error']}")
    return "\n".join(lines)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------- main
def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s}")
    return v


def _nonnegative_float(s: str) -> float:
    v = float(s)
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_velocity",
        description="Attention velocity: Numba kernel vs dense NumPy reference, "
                    "interleaved medians, plus a peak-memory check of the kernel.")
    p.add_argument("--n", type=_positive_int, nargs="+", default=list(DEFAULT_N),
                   help="token counts (default: %(default)s)")
    p.add_argument("--d", type=_positive_int, nargs="+", default=list(DEFAULT_D),
                   help="token dimensions (default: %(default)s)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["softmax"],
                   help="attention variants (default: softmax)")
    p.add_argument("--repeats", type=_positive_int, default=5,
                   help="timed repeats per side, after one warm-up call (default: 5)")
    p.add_argument("--beta", type=float, default=1.0, help="inverse temperature (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tokens (default: 0)")
    p.add_argument("--threads", type=int, default=0,
                   help="Numba threads (default 0: numba's default, all cores)")
    p.add_argument("--max-dense-gb", type=_nonnegative_float, default=4.0,
                   help="skip the dense reference when its estimated memory "
                        "(n*n*8 bytes * ~4) exceeds this many GiB (default: 4)")
    p.add_argument("--memory-n", type=_positive_int, default=16384,
                   help="token count of the memory check (default: 16384)")
    p.add_argument("--memory-d", type=_positive_int, nargs="+", default=[3, 64],
                   help="token dimensions of the memory check, one fresh process each "
                        "(default: 3 64, which cover the kernel's small-d and large-d paths)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory check")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the results as JSON to PATH (atomic)")
    p.add_argument("--check", action="store_true",
                   help=f"exit 1 unless ours is >= {CHECK_MIN_RATIO:g}x faster than the "
                        "reference at softmax d=3 n=4096 and the memory check passes")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check and not (CHECK_CELL["variant"] in args.variants
                           and CHECK_CELL["n"] in args.n and CHECK_CELL["d"] in args.d):
        parser.error("--check needs the softmax variant, n=4096 and d=3 in the grid")
    if args.check and args.no_memory:
        parser.error("--check includes the memory check; drop --no-memory")
    if args.threads > 0:
        if args.threads > numba.config.NUMBA_NUM_THREADS:
            parser.error(f"--threads {args.threads} exceeds NUMBA_NUM_THREADS="
                         f"{numba.config.NUMBA_NUM_THREADS}")
        numba.set_num_threads(args.threads)

    info = machine_info()
    print(f"machine: {info['platform']}, {info.get('cpu_model', info['processor'])}, "
          f"cpu_count={info['cpu_count']}, affinity={info['cpu_affinity']}, "
          f"mem={info.get('mem_total_gib', '?')} GiB, load average {info['loadavg_at_start']}")
    print(f"numba {info['numba']} threads={info['numba_num_threads']} "
          f"(max {info['numba_max_threads']}), numpy {info['numpy']}, python {info['python']}")
    print(f"tokens uniform on the sphere (seed {args.seed}), beta={args.beta:g}; medians of "
          f"{args.repeats} interleaved repeats after one warm-up; pairs/s = n^2 / time")
    print()

    rows = []
    max_dense_bytes = args.max_dense_gb * GIB
    for variant in args.variants:
        for n in args.n:
            for d in args.d:
                row = bench_cell(variant, n, d, repeats=args.repeats, beta=args.beta,
                                 seed=args.seed, max_dense_bytes=max_dense_bytes)
                rows.append(row)
                ref = row["ref_skipped"] or (f"reference {_fmt_time(row['ref_s'])}, "
                                             f"ratio {row['ratio']:.2f}x")
                print(f"  [{len(rows)}] {variant} n={n} d={d}: ours {_fmt_time(row['ours_s'])}, "
                      f"{ref}", file=sys.stderr, flush=True)
    print(format_table(rows))
    if hasattr(os, "getloadavg"):
        print(f"load average at the end of the timings: "
              f"{[round(v, 2) for v in os.getloadavg()]} (on {info['cpu_count']} cpus)")

    mem = None
    if not args.no_memory:
        mem = []
        for d in args.memory_d:
            print()
            mem.append(memory_check(args.memory_n, d, beta=args.beta, seed=args.seed,
                                    threads=numba.get_num_threads()))
            print(format_memory(mem[-1]))

    status = 0
    check = None
    if args.check:
        cell = next(r for r in rows if all(r[k] == v for k, v in CHECK_CELL.items()))
        ratio_ok = cell["ratio"] is not None and cell["ratio"] >= CHECK_MIN_RATIO
        mem_ok = bool(mem) and all(m["passed"] for m in mem)
        check = {"cell": CHECK_CELL, "min_ratio": CHECK_MIN_RATIO, "ratio": cell["ratio"],
                 "ratio_ok": ratio_ok, "memory_ok": mem_ok, "passed": ratio_ok and mem_ok}
        print()
        ratio_txt = "reference skipped" if cell["ratio"] is None else f"{cell['ratio']:.2f}x"
        print(f"check: softmax d=3 n=4096 ref/ours = {ratio_txt} "
              f"(need >= {CHECK_MIN_RATIO:g}x) -> {'PASS' if ratio_ok else 'FAIL'}; "
              f"memory -> {'PASS' if mem_ok else 'FAIL'}")
        status = 0 if check["passed"] else 1

    if args.json is not None:
        write_json_atomic(args.json, {
            "benchmark": "bench_velocity",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": info,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "loadavg_at_end": ([round(v, 2) for v in os.getloadavg()]
                               if hasattr(os, "getloadavg") else None),
            "results": rows,
            "memory": mem,
            "check": check,
            "exit_status": status,
        })
        print(f"\nwrote {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
