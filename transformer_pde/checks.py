r"""Validation against theory: checks, their results, and the ``validate`` runner.

A validation script (``validation/*.py`` in the repository) compares a measurement with
what a theorem or closed form predicts. It builds a list of :class:`Check` objects, a
figure, and calls :func:`finish`, which writes ``<name>.json`` and ``<name>.png``
atomically into its output folder and returns the exit status (1 if a check failed).
Every script takes ``--quick`` (the mode the test suite runs) and ``--out DIR``
(:func:`script_arguments`).

:func:`run_validations` runs every script of a folder in a fresh interpreter and writes a
Markdown report with each figure and a table of predicted against measured values; it is
what ``transformer-pde validate`` calls.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ._io import atomic_write, write_json

__all__ = [
    "Check",
    "check_close",
    "check_range",
    "script_arguments",
    "finish",
    "find_validation_dir",
    "run_validations",
]


@dataclass(frozen=True)
class Check:
    """One comparison of a measured value with what theory predicts."""

    name: str
    measured: float
    expected: str
    passed: bool
    note: str = ""


def check_close(name: str, measured: float, expected: float, tol: float, note: str = "") -> Check:
    """Passes when ``|measured - expected| <= tol``."""
    ok = math.isfinite(measured) and abs(measured - expected) <= tol
    return Check(name, float(measured), f"{expected:.6g} +- {tol:.3g}", bool(ok), note)


def check_range(name: str, measured: float, low: float = -math.inf, high: float = math.inf,
                note: str = "") -> Check:
    """Passes when ``low <= measured <= high``."""
    ok = math.isfinite(measured) and low <= measured <= high
    return Check(name, float(measured), f"in [{low:.6g}, {high:.6g}]", bool(ok), note)


def script_arguments(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the arguments every validation script takes: ``--quick`` and ``--out DIR``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="the small, fast mode the tests run")
    parser.add_argument("--out", default="validation_out", help="folder for the JSON and PNG")
    return parser.parse_args(argv)


def finish(name: str, checks: Sequence[Check], figure, out_dir: str | Path, *, quick: bool,
           started: float, theory: str, extra: dict | None = None) -> int:
    """Write ``<name>.json`` (and ``<name>.png`` if ``figure``), print a summary, return 0/1.

    Parameters
    ----------
    name : str
        The script's name (file stem).
    checks : sequence of Check
        The comparisons; the script fails if any fails.
    figure : matplotlib.figure.Figure or None
        Saved as PNG.
    out_dir : path
        Output folder (created).
    quick : bool
        Whether this was the quick mode.
    started : float
        ``time.perf_counter()`` at the start, for the runtime.
    theory : str
        One sentence: what theory the script checks (goes into the report).
    extra : dict, optional
        More JSON-compatible results (tables, fitted values).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    passed = all(c.passed for c in checks)
    result = {
        "name": name,
        "theory": theory,
        "passed": passed,
        "quick": bool(quick),
        "runtime_s": round(time.perf_counter() - started, 2),
        # a non-finite measurement is recorded as null (JSON has no NaN) and has failed
        "checks": [{**asdict(c), "measured": c.measured if math.isfinite(c.measured) else None}
                   for c in checks],
        "extra": extra or {},
    }
    if figure is not None:
        atomic_write(out / f"{name}.png", lambda f: figure.savefig(f, format="png", dpi=100))
        result["figure"] = f"{name}.png"
    write_json(out / f"{name}.json", result)
    for c in checks:
        print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name}: measured {c.measured:.6g}, "
              f"expected {c.expected}{' (' + c.note + ')' if c.note else ''}")
    print(f"{name}: {'PASSED' if passed else 'FAILED'} in {result['runtime_s']} s; wrote {out}")
    return 0 if passed else 1


def find_validation_dir(directory: str | Path | None = None) -> Path:
    """The folder of validation scripts: ``directory``, else ``validation/`` next to the
    package's source tree (a checkout or editable install), else ``./validation``."""
    candidates = [Path(directory)] if directory is not None else [
        Path(__file__).resolve().parents[1] / "validation", Path.cwd() / "validation"]
    for path in candidates:
        if path.is_dir() and any(path.glob("*.py")):
            return path
    raise FileNotFoundError(
        f"no validation scripts found in {', '.join(map(str, candidates))}; run from the "
        "repository root or pass --dir"
    )


def run_validations(directory: str | Path | None, out_dir: str | Path, *, quick: bool = False,
                    only: Sequence[str] | None = None, timeout: float | None = None) -> tuple[Path, bool]:
    """Run every ``validation/*.py`` (not starting with ``_``) and write ``report.md``.

    Each script runs in a fresh interpreter with ``--out out_dir/<name>`` (and
    ``--quick``); its JSON decides pass/fail (a script that crashes or writes no JSON
    fails). Returns the report's path and whether everything passed.
    """
    folder = find_validation_dir(directory)
    scripts = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    if only:
        unknown = set(only) - {p.stem for p in scripts}
        if unknown:
            raise ValueError(f"unknown validation(s) {sorted(unknown)}; have {[p.stem for p in scripts]}")
        scripts = [p for p in scripts if p.stem in set(only)]
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for script in scripts:
        target = out / script.stem
        cmd = [sys.executable, str(script), "--out", str(target)] + (["--quick"] if quick else [])
        start = time.perf_counter()
        print(f"== {script.stem}", flush=True)
        try:
            proc = subprocess.run(cmd, timeout=timeout)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
        json_path = target / f"{script.stem}.json"
        if json_path.exists():
            result = json.loads(json_path.read_text())
        else:
            result = {"name": script.stem, "passed": False, "checks": [], "theory": "",
                      "runtime_s": round(time.perf_counter() - start, 2)}
        result["passed"] = bool(result.get("passed")) and status == 0
        result["exit_status"] = status
        results.append(result)
    report = out / "report.md"
    text = _report(results, quick)
    atomic_write(report, lambda f: f.write(text.encode("utf-8")))
    return report, all(r["passed"] for r in results)


def _report(results: list[dict], quick: bool) -> str:
    lines = [f"# transformer_pde validation report ({'quick' if quick else 'full'} mode)", ""]
    lines += ["| validation | result | runtime [s] |", "|---|---|---:|"]
    for r in results:
        lines.append(f"| {r['name']} | {'PASS' if r['passed'] else 'FAIL'} | {r.get('runtime_s', '')} |")
    for r in results:
        lines += ["", f"## {r['name']}: {'PASS' if r['passed'] else 'FAIL'}", "", r.get("theory", ""), ""]
        if r.get("exit_status") not in (0, None):
            lines += [f"Exit status: {r['exit_status']}.", ""]
        if r.get("checks"):
            lines += ["| check | measured | predicted | result | note |", "|---|---:|---|---|---|"]
            for c in r["checks"]:
                measured = "non-finite" if c["measured"] is None else f"{c['measured']:.6g}"
                lines.append(f"| {c['name']} | {measured} | {c['expected']} | "
                             f"{'PASS' if c['passed'] else 'FAIL'} | {c.get('note', '')} |")
        if r.get("figure"):
            lines += ["", f"![{r['name']}]({r['name']}/{r['figure']})"]
    return "\n".join(lines) + "\n"
