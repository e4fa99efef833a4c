r"""Validation against theory: checks, the declarative harness, and the ``validate`` runner.

A validation compares a measurement with what a theorem or closed form predicts. Each
one is a module of the subpackage :mod:`transformer_pde.validation` that defines a
:class:`Validation`: its name, the theory it checks (one sentence), the parameters of its
quick and full modes, and three functions, ``measure(params) -> results``,
``checks(results) -> list of Check`` and ``figure(results) -> Figure``. :func:`run`
parses ``--quick`` and ``--out DIR`` (:func:`script_arguments`), times the run, calls the
three functions and writes ``<name>.json`` and ``<name>.png`` atomically through
:func:`finish`, which returns the exit status (1 if a check failed). A module ends with
``if __name__ == "__main__": sys.exit(run(VALIDATION))``, so that
``python -m transformer_pde.validation.<name> [--quick] [--out DIR]`` runs it alone.

:func:`run_validations` runs every validation of the installed subpackage (or every script
of a user's folder) in a fresh interpreter and writes a Markdown report with each figure and
a table of predicted against measured values; it is what ``transformer-pde validate`` calls.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import pkgutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import _progress
from ._io import atomic_write, write_json

__all__ = [
    "Check",
    "check_close",
    "check_range",
    "script_arguments",
    "finish",
    "Validation",
    "run",
    "validation_names",
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
    """Parse the arguments every validation takes: ``--quick`` and ``--out DIR``.

    ``--out`` defaults to ``./validation_out`` (relative to the working directory).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="the small, fast mode the tests run")
    parser.add_argument("--out", metavar="DIR", default="validation_out",
                        help="folder for the JSON and PNG, created if missing (default: ./validation_out)")
    return parser.parse_args(argv)


def finish(name: str, checks: Sequence[Check], figure, out_dir: str | Path, *, quick: bool,
           started: float, theory: str, extra: dict | None = None, params: dict | None = None) -> int:
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
    params : dict, optional
        The JSON-compatible parameters of the run (recorded as ``"params"``).
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
    if params is not None:
        result["params"] = params
    if figure is not None:
        atomic_write(out / f"{name}.png", lambda f: figure.savefig(f, format="png", dpi=100))
        result["figure"] = f"{name}.png"
    write_json(out / f"{name}.json", result)
    for c in checks:
        print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name}: measured {c.measured:.6g}, "
              f"expected {c.expected}{' (' + c.note + ')' if c.note else ''}")
    print(f"{name}: {'PASSED' if passed else 'FAILED'} in {result['runtime_s']} s; wrote {out}")
    return 0 if passed else 1


@dataclass(frozen=True)
class Validation:
    """One validation against theory, declared: what it measures, checks and draws.

    Parameters
    ----------
    name : str
        The module's name (a Python identifier): the JSON and PNG are ``<name>.json`` and
        ``<name>.png``, and ``--only NAME`` selects it.
    theory : str
        One sentence: what theory the validation checks (goes into the JSON and the report).
    measure : callable
        ``measure(params) -> dict``: runs the computation with the parameters of the chosen
        mode and returns its results (any Python objects; seeds are part of ``params`` or
        fixed in the module, so a run is reproducible).
    checks : callable
        ``checks(results) -> list of Check``: the comparisons with theory; the validation
        fails if any fails.
    figure : callable or None
        ``figure(results) -> matplotlib.figure.Figure``, saved as ``<name>.png``.
    quick, full : mapping
        The parameters of the quick mode (``--quick``, what the tests run) and of the full
        mode, passed to ``measure`` as a new dict; JSON-compatible (they are recorded in
        the JSON) and with the same keys.
    extra : callable, optional
        ``extra(results) -> dict``: more JSON-compatible results (tables, fitted values).
    description : str, optional
        The ``--help`` text (by default ``theory``).
    """

    name: str
    theory: str
    measure: Callable[[dict], dict]
    checks: Callable[[dict], Sequence[Check]]
    figure: Callable[[dict], Any] | None
    quick: Mapping[str, Any] = field(default_factory=dict)
    full: Mapping[str, Any] = field(default_factory=dict)
    extra: Callable[[dict], dict] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"name must be a Python identifier (the module's name), got {self.name!r}")
        if not isinstance(self.theory, str) or not self.theory.strip():
            raise ValueError(f"theory must be a non-empty sentence, got {self.theory!r}")
        for what in ("measure", "checks"):
            if not callable(getattr(self, what)):
                raise TypeError(f"{what} must be callable, got {getattr(self, what)!r}")
        for what in ("figure", "extra"):
            value = getattr(self, what)
            if value is not None and not callable(value):
                raise TypeError(f"{what} must be callable or None, got {value!r}")
        for what in ("quick", "full"):
            value = getattr(self, what)
            if not isinstance(value, Mapping):
                raise TypeError(f"{what} must be a mapping of parameters, got {type(value).__name__}")
            try:
                json.dumps(dict(value), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{what} must hold JSON-compatible parameters: {exc}") from None
        if set(self.quick) != set(self.full):
            raise ValueError(f"quick and full must have the same keys, got {sorted(self.quick)} and "
                             f"{sorted(self.full)}")

    def parameters(self, quick: bool) -> dict:
        """A new dict of the parameters of the quick (``True``) or full mode."""
        return dict(self.quick if quick else self.full)


def run(validation: Validation, argv: Sequence[str] | None = None) -> int:
    """Run a validation from the command line: measure, check, draw, write JSON + PNG.

    Parameters
    ----------
    validation : Validation
        What to run.
    argv : sequence of str, optional
        ``[--quick] [--out DIR]``; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        0 if every check passed, 1 otherwise (the exit status of the module).
    """
    if not isinstance(validation, Validation):
        raise TypeError(f"validation must be a Validation, got {type(validation).__name__}")
    args = script_arguments(validation.description or validation.theory, argv)
    started = time.perf_counter()
    params = validation.parameters(args.quick)
    results = validation.measure(params)
    if not isinstance(results, dict):
        raise TypeError(f"{validation.name}: measure must return a dict, got {type(results).__name__}")
    checks = list(validation.checks(results))
    figure = validation.figure(results) if validation.figure is not None else None
    extra = validation.extra(results) if validation.extra is not None else {}
    return finish(validation.name, checks, figure, args.out, quick=args.quick, started=started,
                  theory=validation.theory, extra=extra, params=validation.parameters(args.quick))


#: the subpackage whose modules are the validations
PACKAGE = "transformer_pde.validation"


def validation_names() -> list[str]:
    """The names of the validations shipped with the package, sorted.

    They are the modules of :mod:`transformer_pde.validation` whose names do not start
    with ``_``, found in the installed package (not in a source tree or the working
    directory).
    """
    package = importlib.import_module(PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                  if not m.ispkg and not m.name.startswith("_"))


def _user_scripts(directory: str | Path) -> dict[str, Path]:
    """``{name: path}`` of the ``*.py`` scripts (not starting with ``_``) of a user's folder."""
    folder = Path(directory).expanduser()
    scripts = {p.stem: p for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")}
    if not folder.is_dir() or not scripts:
        raise FileNotFoundError(f"directory: no validation scripts (*.py) found in {folder}")
    return scripts


def run_validations(out_dir: str | Path, *, quick: bool = False, only: Sequence[str] | None = None,
                    directory: str | Path | None = None,
                    timeout: float | None = None, progress: bool | None = None) -> tuple[Path, bool]:
    """Run the validations, each in a fresh interpreter, and write ``out_dir/report.md``.

    Parameters
    ----------
    out_dir : path
        Folder of the report; validation ``NAME`` writes into ``out_dir/NAME/`` (created).
    quick : bool
        Run the quick modes.
    only : sequence of str, optional
        Run only these validations (module or script names).
    directory : path, optional
        A folder of the user's own validation scripts (``*.py``, each taking ``--quick``
        and ``--out DIR`` and writing ``<name>.json`` like :func:`run`), run as
        ``python SCRIPT``; by default the package's validations (:func:`validation_names`),
        run as ``python -m transformer_pde.validation.NAME``.
    timeout : float, optional
        Seconds after which a validation is stopped and counted as failed.
    progress : bool or None
        A tqdm bar on stderr counting the validations: None (default) shows one when
        stderr is a terminal; True always, False never.

    Returns
    -------
    report : Path
        ``out_dir/report.md``.
    passed : bool
        Whether every validation passed. A validation that crashes, times out or writes no
        JSON has failed.
    """
    if directory is None:
        # -P: the working directory does not go first on sys.path, so the installed package
        # runs even from a folder holding another copy of transformer_pde
        commands = {name: [sys.executable, "-P", "-m", f"{PACKAGE}.{name}"] for name in validation_names()}
    else:
        commands = {name: [sys.executable, str(path)] for name, path in _user_scripts(directory).items()}
    if only:
        unknown = sorted(set(only) - set(commands))
        if unknown:
            raise ValueError(f"only: unknown validation(s) {unknown}; expected names from {sorted(commands)}")
        commands = {name: cmd for name, cmd in commands.items() if name in set(only)}
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    delay = _progress.bar_delay(progress)
    bar = _progress.counter(len(commands), "validate", None if delay is None else 0.0, unit="validation")
    try:
        for name, command in commands.items():
            target = out / name
            cmd = command + ["--out", str(target)] + (["--quick"] if quick else [])
            start = time.perf_counter()
            if bar is None:
                print(f"== {name}", flush=True)
            else:
                bar.set_postfix_str(name)
                bar.write(f"== {name}")  # above the bar, which the validation's output then follows
                bar.clear()
            try:
                proc = subprocess.run(cmd, timeout=timeout)
                status = proc.returncode
            except subprocess.TimeoutExpired:
                status = "timeout"
            results.append(_result(name, target, start, status))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    report = out / "report.md"
    text = _report(results, quick)
    atomic_write(report, lambda f: f.write(text.encode("utf-8")))
    return report, all(r["passed"] for r in results)


def _result(name: str, target: Path, start: float, status) -> dict:
    """The JSON a validation wrote, marked failed when it crashed or wrote none."""
    json_path = target / f"{name}.json"
    if json_path.exists():
        result = json.loads(json_path.read_text())
    else:
        result = {"name": name, "passed": False, "checks": [], "theory": "",
                  "runtime_s": round(time.perf_counter() - start, 2)}
    result["passed"] = bool(result.get("passed")) and status == 0
    result["exit_status"] = status
    return result


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
