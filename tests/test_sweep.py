"""Sweeps: every point computed once, failures recorded, files resumable, executors interchangeable."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import transformer_pde as tp
from transformer_pde import runfile

STUDY = """
[model]
beta = 1
dim = 2
[initial]
n = 12
seed = 0
[particles]
T = 1.0
dt = 0.1
n_saved = 6
[sweep]
"model.beta" = [1.0, 4.0]
"initial.seed" = [0, 1]
"""


def quotient(a, b):
    """A target with a failing point (b = 0)."""
    if b == 0:
        raise ZeroDivisionError(f"b = 0 at a = {a}")
    return {"q": a / b, "row": np.arange(3.0) * a}


def test_points_are_the_cartesian_product_in_order():
    from transformer_pde.sweep import points_of

    pts = points_of({"a": [1, 2], "b": ["x", "y", "z"]})
    assert pts == [{"a": a, "b": b} for a in (1, 2) for b in "xyz"]


def test_failed_points_are_recorded_and_the_others_finish(tmp_path):
    with ThreadPoolExecutor(2) as ex:
        res = tp.sweep(quotient, {"a": [1.0, 2.0, 3.0], "b": [2, 0]}, executor=ex,
                       output=tmp_path / "s.h5")
    assert res.status == ["done", "failed"] * 3
    assert [v["q"] for v in res.values[::2]] == [0.5, 1.0, 1.5]
    assert all("ZeroDivisionError: b = 0" in e for e in res.errors[1::2])
    assert res.failed == [{"a": a, "b": 0} for a in (1.0, 2.0, 3.0)]
    assert tp.load(tmp_path / "s.h5") == res


def test_resume_computes_only_what_the_file_lacks(tmp_path):
    from transformer_pde import storage

    calls = []

    def counted(a):
        calls.append(a)
        return float(a) ** 2

    path = tmp_path / "s.h5"
    points = [{"a": 1}, {"a": 2}, {"a": 3}]
    # the file of a sweep killed after two points: one done, one failed, one missing
    storage.write_sweep_point(path, ["a"], points, 0, "done", 1.0, None, 0.1)
    storage.write_sweep_point(path, ["a"], points, 1, "failed", None, "MemoryError", 0.1)
    assert tp.load(path).status == ["done", "failed", "missing"]
    with ThreadPoolExecutor(1) as ex:
        res = tp.sweep(counted, {"a": [1, 2, 3]}, executor=ex, output=path, resume=True)
    assert sorted(calls) == [2, 3]  # the failed point is tried again, the done one kept
    assert res.values == [1.0, 4.0, 9.0] and tp.load(path) == res
    with pytest.raises(ValueError, match="holds a different sweep"), ThreadPoolExecutor(1) as ex:
        tp.sweep(counted, {"a": [1, 5]}, executor=ex, output=path, resume=True)


def test_a_killed_writer_never_loses_written_points(tmp_path, monkeypatch):
    """Point files are updated copy-on-write: a failure while writing leaves the old file."""
    from transformer_pde import storage

    path = tmp_path / "s.h5"
    storage.write_sweep_point(path, ["a"], [{"a": 1}, {"a": 2}], 0, "done", 1.0, None, 0.1)

    def boom(g, name, value):
        raise KeyboardInterrupt  # the process dies in the middle of the write

    monkeypatch.setattr(storage, "_write_value", boom)
    with pytest.raises(KeyboardInterrupt):
        storage.write_sweep_point(path, ["a"], [{"a": 1}, {"a": 2}], 1, "done", 2.0, None, 0.1)
    kept = tp.load(path)
    assert kept.status == ["done", "missing"] and kept.values[0] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # no temporary file left


def test_a_value_that_cannot_be_stored_fails_its_point_only(tmp_path):
    with ThreadPoolExecutor(1) as ex:
        res = tp.sweep(lambda a: object() if a == 1 else a, {"a": [1, 2]}, executor=ex,
                       output=tmp_path / "s.h5")
    assert res.status == ["failed", "done"] and "cannot be stored" in res.errors[0]


def test_a_run_file_sweep_overrides_dotted_keys():
    spec = runfile.parse(STUDY)
    with ThreadPoolExecutor(2) as ex:
        res = tp.sweep(spec, spec["sweep"], executor=ex)
    assert res.status == ["done"] * 4
    for point, value in zip(res.points, res.values, strict=True):
        one = runfile.override(spec, point)
        assert value["particles"] == runfile.run_task(one, "particles")
    with pytest.raises(runfile.RunFileError, match="cannot override 'model.betta'"):
        tp.sweep(spec, {"model.betta": [1.0]})


@pytest.mark.parametrize(("grid", "error", "match"), [
    ({}, TypeError, "grid must be a nonempty mapping"),
    ({"a": []}, ValueError, r"grid\['a'\] must be a nonempty list"),
    ({"a": "abc"}, ValueError, r"grid\['a'\] must be a nonempty list"),
])
def test_bad_grids_are_refused(grid, error, match):
    with pytest.raises(error, match=match):
        tp.sweep(quotient, grid)


def test_bad_targets_and_executors_are_refused():
    with pytest.raises(TypeError, match="target must be a function or a run file"):
        tp.sweep(3, {"a": [1]})
    with pytest.raises(TypeError, match="executor must be a concurrent.futures.Executor"):
        tp.sweep(quotient, {"a": [1], "b": [1]}, executor="local")
    with pytest.raises(ValueError, match="resume=True needs output"):
        tp.sweep(quotient, {"a": [1], "b": [1]}, resume=True)


@pytest.mark.slow
def test_local_processes_and_a_dask_cluster_give_the_same_sweep(tmp_path):
    """8 points, one failing (n = 0 tokens), on local processes and on a Dask LocalCluster."""
    distributed = pytest.importorskip("distributed")
    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    grid = {"initial.n": [8, 9, 10, 0, 11, 12, 13, 14]}  # n = 0 fails in its worker
    local = tp.sweep(study, grid, max_workers=2, output=tmp_path / "local.h5")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = tp.sweep(study, grid, executor=client.get_executor(), output=tmp_path / "dask.h5")
    assert local.status == ["done"] * 3 + ["failed"] + ["done"] * 4
    assert "n must be >= 1, got 0" in local.errors[3]
    for a, b in zip(local.values, remote.values, strict=True):  # the same numbers on both
        assert a == b
    assert tp.load(tmp_path / "local.h5") == local and tp.load(tmp_path / "dask.h5") == remote


def test_sweep_plot_draws_one_line_per_other_setting():
    import matplotlib

    matplotlib.use("Agg")
    with ThreadPoolExecutor(2) as ex:
        res = tp.sweep(quotient, {"a": [1.0, 2.0, 4.0], "b": [1, 2, 0]}, executor=ex)
    ax = res.plot(lambda v: v["q"], x="a")
    lines = {line.get_label(): line.get_xydata().tolist() for line in ax.lines}
    # b = 0 fails at every a: no line for it, and the title says how many were left out
    assert lines == {"b=1": [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]], "b=2": [[1.0, 0.5], [2.0, 1.0], [4.0, 2.0]]}
    assert "3 of 9 points failed" in ax.get_title()
    assert ax.get_xlabel() == "a" and ax.get_legend() is not None
    table = res.plot()  # without a value: the points and their status
    assert table.tables[0][1, 0].get_text().get_text() == "a=1.0, b=1"
    assert table.tables[0][3, 1].get_text().get_text() == "failed"


def test_cli_plot_draws_saved_results(tmp_path):
    from transformer_pde.cli import main

    with ThreadPoolExecutor(1) as ex:
        tp.sweep(quotient, {"a": [1.0], "b": [1, 0]}, executor=ex, output=tmp_path / "s.h5")
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["plot", str(tmp_path / "missing.h5")]) == 1
