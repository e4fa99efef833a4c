"""The velocity benchmark script: a fast smoke test, and the acceptance benchmarks.

The ``benchmark``-marked tests are deselected by default; run them with
``pytest -m benchmark`` (about a minute on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_velocity.py"


@pytest.fixture(scope="module")
def bench():
    """The benchmark script, imported as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_velocity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _table_rows(text: str) -> list[list[str]]:
    """Data rows of the printed table: lines that start with an integer n."""
    rows = []
    for line in text.splitlines():
        cells = line.split()
        if len(cells) >= 3 and cells[0].isdigit() and cells[1].isdigit():
            rows.append(cells)
    return rows


def test_smoke_tiny_grid(bench, capsys, tmp_path):
    out_json = tmp_path / "sub" / "bench.json"
    status = bench.main(["--n", "64", "--d", "2", "--repeats", "1", "--no-memory",
                         "--json", str(out_json)])
    assert status == 0
    text = capsys.readouterr().out
    assert "threads=" in text and "cpu_count=" in text
    rows = _table_rows(text)
    assert len(rows) == 1
    n, d, variant = rows[0][:3]
    assert (n, d, variant) == ("64", "2", "softmax")
    assert rows[0][-2].endswith("x")  # ratio reference/ours was measured

    data = json.loads(out_json.read_text())
    assert data["exit_status"] == 0
    assert data["machine"]["numba_num_threads"] >= 1
    (row,) = data["results"]
    assert (row["n"], row["d"], row["variant"]) == (64, 2, "softmax")
    assert row["ours_s"] > 0 and row["ref_s"] > 0
    assert row["ratio"] == pytest.approx(row["ref_s"] / row["ours_s"])
    assert row["max_abs_diff"] < 1e-12
    assert not list(out_json.parent.glob("*.tmp"))  # atomic write left no temp file


def test_smoke_dense_skip_is_reported(bench, capsys):
    status = bench.main(["--n", "64", "--d", "2", "--repeats", "1", "--no-memory",
                         "--max-dense-gb", "0"])
    assert status == 0
    (row,) = _table_rows(capsys.readouterr().out)
    assert "skipped: would allocate ~" in " ".join(row)


def test_check_needs_the_acceptance_cell(bench):
    with pytest.raises(SystemExit) as err:
        bench.main(["--n", "64", "--d", "2", "--check"])
    assert err.value.code == 2


@pytest.mark.benchmark
def test_acceptance_speed_and_memory(bench, capsys):
    """Issue 2: ours >= 3x faster than the dense reference at d=3, n=4096 (softmax),
    and n=16384 runs without allocating an n x n array (the memory check of --check)."""
    status = bench.main(["--n", "4096", "--d", "3", "--repeats", "3", "--check"])
    text = capsys.readouterr().out
    assert status == 0, text


@pytest.mark.benchmark
@pytest.mark.parametrize("d", [3, 64])
def test_memory_check_n16384(bench, d):
    """The probe sees the reference's n x n array (positive control) and no such
    allocation in the kernel at n=16384, on its small-d and large-d code paths."""
    mem = bench.memory_check(16384, d)
    assert "error" not in mem, mem.get("error")
    assert mem["threshold_mib"] == pytest.approx(0.05 * 2048)
    assert mem["control"]["sees_nxn_array"], mem["control"]
    assert mem["peak_increase_mib"] < mem["threshold_mib"], mem
    assert mem["passed"]


# ----------------------------------------------------------------------------- run_all
RUN_ALL = SCRIPT.parent / "run_all.py"


@pytest.fixture
def run_all(monkeypatch, tmp_path):
    """benchmarks/run_all.py, reading its sections from a temporary folder."""
    spec = importlib.util.spec_from_file_location("run_all", RUN_ALL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    return module


def test_run_all_gathers_sections_into_one_table_and_json(run_all, tmp_path, capsys):
    (tmp_path / "bench_toy.py").write_text(
        "def measure(quick=False):\n"
        "    return [{'section': 'toy', 'case': 'n=1', 'ours_s': 1.0, 'other': 'plain',\n"
        "             'other_s': 3.0, 'ratio': 3.0, 'target': '>= 2x', 'holds': quick}]\n")
    (tmp_path / "bench_helper.py").write_text("X = 1\n")  # no measure(): not a section
    assert sorted(run_all.sections()) == ["toy"]
    out = tmp_path / "out" / "all.json"
    assert run_all.main(["--quick", "--json", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert "toy" in text and "3x" in text and "1 targets hold, 0 do not" in text
    data = json.loads(out.read_text())
    assert data["rows"][0]["ratio"] == 3.0 and data["machine"]["quick"] is True
    assert run_all.main(["--check"]) == 1  # quick=False: the toy target does not hold

@pytest.mark.benchmark
def test_bench_kernels_quick_rows_follow_the_contract():
    spec = importlib.util.spec_from_file_location(
        "bench_kernels", SCRIPT.parent / "bench_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.measure(quick=True)
    keys = {"section", "case", "ours_s", "other", "other_s", "ratio", "target", "holds"}
    assert rows and all(keys <= set(r) for r in rows)
    assert all(r["ratio"] == r["other_s"] / r["ours_s"] for r in rows)
    # the float32 rows carry their measured error, within the stated bound (L = 1, k = 3 or 64)
    for r in rows:
        if r["section"] == "float32":
            assert r["error_eps32"] <= 512 + 5 + 69
