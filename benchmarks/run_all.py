"""One benchmark command: every ratio benchmark of the package in one run, one table, one JSON.

Each ``benchmarks/bench_*.py`` script that defines ``measure(quick=False) -> list[dict]``
is a section of this run. Every row is one comparison measured in the same process, with
interleaved repeats and medians (each script says how): ``ours_s`` against ``other_s``
(the NumPy reference, a plain scheme, separate calls, exact summation, float64, ...),
``ratio = other_s / ours_s`` (a speed-up, > 1 means ours is faster), the target the issue
set (``target``) and whether it holds (``holds``; ``None`` where a row has no target).

Usage::

    python benchmarks/run_all.py                       # full run (several minutes on 2 cores)
    python benchmarks/run_all.py --quick               # each section under a minute
    python benchmarks/run_all.py --only kernels batch  # sections by name (bench_<name>.py)
    python benchmarks/run_all.py --busy                # beside one busy process (a spinning core)
    python benchmarks/run_all.py --json results.json   # also write every row as JSON (atomic)

Exit status: 0, or 1 when ``--check`` is given and a row with a target does not hold.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: a process that keeps one core busy (the "beside a busy process" condition)
_SPIN = "while True: pass"


def sections() -> dict[str, Path]:
    """The benchmark scripts that take part, by section name (``bench_<name>.py``)."""
    found = {}
    for path in sorted(HERE.glob("bench_*.py")):
        if "def measure(" in path.read_text():
            found[path.stem.removeprefix("bench_")] = path
    return found


def load(path: Path):
    """Import a benchmark script as a module (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def busy(on: bool):
    """Keep one core busy with a spinning Python process while the block runs."""
    proc = subprocess.Popen([sys.executable, "-c", _SPIN]) if on else None
    try:
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def machine() -> dict:
    """Where the numbers were measured."""
    import numba
    import numpy as np

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "numpy": np.__version__, "numba": numba.__version__,
            "numba_num_threads": numba.get_num_threads(),
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")}
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}"
    return str(v)


def print_table(rows: list[dict]) -> None:
    """One line per row: section, case, ours, other, ratio, target, holds."""
    head = ("section", "case", "ours [s]", "other", "other [s]", "ratio", "target", "holds")
    cells = [head] + [
        (r["section"], r["case"], _fmt(r["ours_s"]), r["other"], _fmt(r["other_s"]),
         _fmt(r["ratio"]) + "x", r.get("target") or "-", _fmt(r.get("holds")))
        for r in rows
    ]
    widths = [max(len(str(c[k])) for c in cells) for k in range(len(head))]
    for k, line in enumerate(cells):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, default=float)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    known = sections()
    p = argparse.ArgumentParser(prog="run_all", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, each section < 1 min")
    p.add_argument("--only", nargs="+", choices=sorted(known), metavar="SECTION",
                   help=f"run only these sections (of {', '.join(sorted(known))})")
    p.add_argument("--busy", action="store_true", help="run beside one busy process")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 if a target does not hold")
    args = p.parse_args(argv)

    info = machine() | {"quick": args.quick, "busy": args.busy}
    print(" ".join(f"{k}={v}" for k, v in info.items() if k != "platform"))
    rows, timings = [], {}
    with busy(args.busy):
        for name in args.only or sorted(known):
            start = time.perf_counter()
            print(f"[{name}] ...", flush=True)
            rows.extend(load(known[name]).measure(quick=args.quick))
            timings[name] = time.perf_counter() - start
    print()
    print_table(rows)
    failed = [r for r in rows if r.get("holds") is False]
    print(f"\n{len(rows)} rows, {sum(r.get('holds') is True for r in rows)} targets hold, "
          f"{len(failed)} do not")
    if args.json:
        write_json_atomic(args.json, {"machine": info, "section_seconds": timings, "rows": rows})
        print(f"wrote {args.json}")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
