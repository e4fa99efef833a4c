"""The validation scripts against theory, in quick mode, through ``transformer-pde validate``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from transformer_pde import cli
from transformer_pde.checks import Check, check_close, check_range, find_validation_dir, finish

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "validation").glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """Run ``transformer-pde validate --quick`` once (the acceptance asks < 5 minutes)."""
    out = tmp_path_factory.mktemp("validation")
    start = time.perf_counter()
    status = cli.main(["validate", "--quick", "--out", str(out), "--dir", str(ROOT / "validation")])
    return out, status, time.perf_counter() - start


def test_validate_quick_passes(quick_report):
    out, status, runtime = quick_report
    report = (out / "report.md").read_text()
    assert status == 0, report
    assert "FAIL" not in report
    assert runtime < 300.0  # the budget for --quick on 2 cores


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_wrote_json_and_figure(quick_report, name):
    out = quick_report[0] / name
    result = json.loads((out / f"{name}.json").read_text())
    assert result["passed"] and result["quick"]
    assert result["checks"], "a validation without checks proves nothing"
    assert result["theory"]
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checks_and_finish(tmp_path, capsys):
    ok = check_close("x", 1.0 + 1e-9, 1.0, 1e-6)
    bad = check_range("y", float("nan"), 0.0, 1.0)
    assert ok.passed and not bad.passed  # a NaN never passes
    status = finish("demo_check", [ok, bad], None, tmp_path, quick=True, started=time.perf_counter(),
                    theory="t")
    assert status == 1
    result = json.loads((tmp_path / "demo_check.json").read_text())
    assert result["passed"] is False and len(result["checks"]) == 2
    assert "[FAIL] y" in capsys.readouterr().out
    assert isinstance(Check("a", 1.0, "b", True), Check)


def test_missing_folder_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="no validation scripts found"):
        find_validation_dir(tmp_path)
    status = cli.main(["validate", "--quick", "--out", str(tmp_path / "o"), "--dir",
                       str(ROOT / "validation"), "--only", "no_such_check"])
    assert status == 1
