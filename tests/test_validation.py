"""The validation harness (checks, Validation, run, discovery, ``transformer-pde validate``).

The default suite runs the harness and ONE cheap validation from a folder outside the
repository; ``pytest -m slow`` runs all thirteen in quick mode (a few minutes, more on a
loaded machine: no test here bounds a wall-clock time).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import transformer_pde
from transformer_pde import cli
from transformer_pde.checks import (
    Check,
    Validation,
    check_close,
    check_range,
    finish,
    run,
    run_validations,
    validation_names,
)

PACKAGE_DIR = Path(transformer_pde.__file__).resolve().parent
NAMES = [
    "anisotropy", "circle_convergence", "equiangular", "gaussian_particles", "grid_vs_gaussian",
    "long_context", "lost_in_the_middle", "metastability", "million_tokens", "noise", "paper_a",
    "phase_diagram", "sphere_clustering", "sphere_convergence", "zonal_high_d",
]
#: the fastest quick validation (measured: about 2.5 s of work, 5 s with the interpreter's start)
CHEAP = "paper_a"
PNG = b"\x89PNG\r\n\x1a\n"


def _assert_wrote(out: Path, name: str) -> dict:
    result = json.loads((out / name / f"{name}.json").read_text())
    assert result["passed"] and result["quick"]
    assert result["checks"], "a validation without checks proves nothing"
    assert result["theory"]
    assert (out / name / f"{name}.png").read_bytes()[:8] == PNG
    return result


# -- the full quick run (slow) ------------------------------------------------------------------
@pytest.mark.slow
def test_validate_quick_all(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from outside the repository, like an installed package
    out = tmp_path / "out"
    status = cli.main(["validate", "--quick", "--out", str(out)])
    report = (out / "report.md").read_text()
    assert status == 0, report
    assert "FAIL" not in report
    for name in NAMES:
        _assert_wrote(out, name)
        assert f"## {name}: PASS" in report


# -- Check, check_close, check_range, finish ----------------------------------------------------
def test_check_close_and_range():
    assert check_close("x", 1.0 + 1e-9, 1.0, 1e-6).passed
    assert check_close("x", 1.1, 1.0, 0.1 + 1e-12).passed  # the bound is inclusive
    assert not check_close("x", 1.2, 1.0, 0.1).passed
    assert not check_close("x", math.nan, 1.0, math.inf).passed  # a NaN never passes
    assert check_range("y", 0.0, 0.0, 1.0).passed and check_range("y", 1.0, 0.0, 1.0).passed
    assert not check_range("y", 1.5, 0.0, 1.0).passed
    assert not check_range("y", math.inf).passed  # neither does an infinity
    c = check_close("z", 2.0, 1.0, 0.5, note="n")
    assert isinstance(c, Check) and c.measured == 2.0 and c.expected == "1 +- 0.5" and c.note == "n"
    assert check_range("w", 3.0, high=4.0).expected == "in [-inf, 4]"


def test_finish_writes_json_and_png(tmp_path, capsys):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    ok = check_close("x", 1.0, 1.0, 1e-6)
    bad = check_range("y", float("nan"), 0.0, 1.0)
    status = finish("demo_check", [ok, bad], fig, tmp_path / "new", quick=True,
                    started=time.perf_counter(), theory="t", extra={"a": [1, 2]}, params={"n": 3})
    assert status == 1
    result = json.loads((tmp_path / "new" / "demo_check.json").read_text())
    assert result["passed"] is False and result["quick"] is True and result["theory"] == "t"
    assert [c["passed"] for c in result["checks"]] == [True, False]
    assert result["checks"][1]["measured"] is None  # NaN is recorded as null
    assert result["extra"] == {"a": [1, 2]} and result["params"] == {"n": 3}
    assert result["figure"] == "demo_check.png"
    assert (tmp_path / "new" / "demo_check.png").read_bytes()[:8] == PNG
    # the atomic writes leave no temporary files behind
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["demo_check.json", "demo_check.png"]
    out = capsys.readouterr().out
    assert "[PASS] x" in out and "[FAIL] y" in out and "demo_check: FAILED" in out
    assert finish("only_ok", [ok], None, tmp_path, quick=False, started=time.perf_counter(),
                  theory="t") == 0
    assert not (tmp_path / "only_ok.png").exists()


# -- Validation and run -------------------------------------------------------------------------
def _toy(**changes) -> Validation:
    def measure(params):
        return {"x": params["x"] * 2.0}

    fields = dict(name="toy", theory="x doubles.", measure=measure,
                  checks=lambda r: [check_close("2x", r["x"], 2.0, 1e-12)], figure=None,
                  quick={"x": 1.0}, full={"x": 3.0}, extra=lambda r: {"x": r["x"]})
    fields.update(changes)
    return Validation(**fields)


def test_run_toy_validation(tmp_path):
    assert run(_toy(), ["--quick", "--out", str(tmp_path / "q")]) == 0
    result = json.loads((tmp_path / "q" / "toy.json").read_text())
    assert result["passed"] and result["quick"] and result["params"] == {"x": 1.0}
    assert result["extra"] == {"x": 2.0} and result["theory"] == "x doubles."
    # the full mode uses the full parameters: 6 != 2 fails, and the exit status says so
    assert run(_toy(), ["--out", str(tmp_path / "f")]) == 1
    result = json.loads((tmp_path / "f" / "toy.json").read_text())
    assert not result["passed"] and not result["quick"] and result["params"] == {"x": 3.0}


def test_validation_parameters_are_copies():
    v = _toy(quick={"x": [1]}, full={"x": [2]})
    v.parameters(True)["x"] = "changed"
    assert v.parameters(True) == {"x": [1]} and v.parameters(False) == {"x": [2]}


@pytest.mark.parametrize("changes, error, match", [
    ({"name": "not a name"}, ValueError, "name must be a Python identifier"),
    ({"theory": " "}, ValueError, "theory must be a non-empty sentence"),
    ({"measure": None}, TypeError, "measure must be callable"),
    ({"figure": "fig"}, TypeError, "figure must be callable or None"),
    ({"quick": [1]}, TypeError, "quick must be a mapping"),
    ({"full": {"x": object()}}, TypeError, "full must hold JSON-compatible parameters"),
    ({"full": {"y": 1}}, ValueError, "quick and full must have the same keys"),
])
def test_validation_rejects_bad_declarations(changes, error, match):
    with pytest.raises(error, match=match):
        _toy(**changes)


def test_run_rejects_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="validation must be a Validation"):
        run("toy", [])
    with pytest.raises(TypeError, match="measure must return a dict"):
        run(_toy(measure=lambda p: [1]), ["--out", str(tmp_path)])


# -- discovery and the runner -------------------------------------------------------------------
def test_discovery_lists_the_thirteen():
    assert validation_names() == NAMES
    for name in NAMES:
        module = importlib.import_module(f"transformer_pde.validation.{name}")
        v = module.VALIDATION
        assert isinstance(v, Validation) and v.name == name and v.theory and v.figure is not None
        assert module.__doc__ and module.__doc__.splitlines()[0] == v.description
        assert f"python -m transformer_pde.validation.{name}" in module.__doc__
        assert "VALIDATION" in module.__all__


def test_unknown_name_fails_cleanly(tmp_path, capsys):
    status = cli.main(["validate", "--quick", "--out", str(tmp_path / "o"), "--only", "no_such_check"])
    assert status == 1
    err = capsys.readouterr().err
    assert "unknown validation(s) ['no_such_check']" in err and "paper_a" in err
    assert not (tmp_path / "o").exists()  # nothing ran, nothing was written
    with pytest.raises(ValueError, match="only: unknown"):
        run_validations(tmp_path, only=["paper_a", "nope"])


def test_validate_help_names_the_default_folder(capsys):
    args = cli.build_parser().parse_args(["validate"])
    assert args.out == cli.DEFAULT_VALIDATION_OUT == "transformer_pde_validation" and args.dir is None
    with pytest.raises(SystemExit):
        cli.main(["validate", "--help"])
    assert "./transformer_pde_validation" in " ".join(capsys.readouterr().out.split())


# slow (CI's slow set runs it): a whole quick validation in a fresh interpreter, ~6 s cold
# beside a busy process; the runner's paths are checked by the two tests below in the
# default suite
@pytest.mark.slow
def test_one_cheap_validation_from_outside_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    status = cli.main(["validate", "--quick", "--only", CHEAP, "--out", str(out)])
    assert status == 0, (out / "report.md").read_text()
    _assert_wrote(out, CHEAP)
    report = (out / "report.md").read_text()
    assert f"## {CHEAP}: PASS" in report and f"![{CHEAP}]({CHEAP}/{CHEAP}.png)" in report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing else in the cwd


def test_dir_runs_a_folder_of_user_scripts(tmp_path, monkeypatch):
    scripts = tmp_path / "mine"
    scripts.mkdir()
    (scripts / "_helper.py").write_text("raise SystemExit('not a validation')\n")
    (scripts / "double.py").write_text(textwrap.dedent('''
        import sys
        from transformer_pde.checks import Validation, check_close, run

        VALIDATION = Validation(name="double", theory="2 x 1 = 2.", measure=lambda p: {"y": 2 * p["x"]},
                                checks=lambda r: [check_close("y", r["y"], 2.0, 0.0)], figure=None,
                                quick={"x": 1}, full={"x": 1})
        sys.exit(run(VALIDATION))
    '''))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate", "--quick", "--dir", str(scripts), "--out", "o"]) == 0
    assert json.loads((tmp_path / "o" / "double" / "double.json").read_text())["passed"]
    assert "## double: PASS" in (tmp_path / "o" / "report.md").read_text()
    assert cli.main(["validate", "--dir", str(tmp_path / "empty"), "--out", "o2"]) == 1


def test_no_module_refers_to_validations_outside_the_package():
    """Validations are found in the installed subpackage, never beside the source tree."""
    for name in NAMES:
        origin = Path(importlib.util.find_spec(f"transformer_pde.validation.{name}").origin).resolve()
        assert origin.parent == PACKAGE_DIR / "validation"
    outside = re.compile(r"""(?<![\w.])(?<!transformer_pde/)validation/|/\s*["']validation["']|"""
                         r"""parents\[\d\]\s*/\s*["']validation""")
    offenders = [f"{path.relative_to(PACKAGE_DIR)}:{i}: {line.strip()}"
                 for path in sorted(PACKAGE_DIR.rglob("*.py"))
                 for i, line in enumerate(path.read_text().splitlines(), 1) if outside.search(line)]
    assert not offenders, offenders


def test_python_m_runs_one_module_alone(tmp_path):
    """``python -m transformer_pde.validation.<name> --help`` works from any folder."""
    proc = subprocess.run([sys.executable, "-m", f"transformer_pde.validation.{CHEAP}", "--help"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout and "--out" in proc.stdout
