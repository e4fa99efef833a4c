"""Progress on long work: when bars show, what they count, and the one-line compile notice."""

from __future__ import annotations

import importlib.util
import io
import sys

import numpy as np
import pytest

import transformer_pde as tp
from transformer_pde import _progress
from transformer_pde.convergence import meanfield_convergence


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_delay_follows_the_terminal_and_the_caller(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert _progress.bar_delay(None) is None  # not a terminal: no bar
    assert _progress.bar_delay(True) == 0.0 and _progress.bar_delay(False) is None
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert _progress.bar_delay(None) == _progress.AUTO_DELAY  # a terminal: after 2 s of work
    with _progress.quiet():
        assert _progress.bar_delay(None) is None  # inside work that shows its own bar
        assert _progress.bar_delay(True) == 0.0  # asked for explicitly
    assert _progress.bar_delay(np.bool_(False)) is None
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        _progress.bar_delay("yes")


def test_convergence_study_counts_its_runs(capsys):
    grid = tp.CircleGrid(32)
    rho0 = tp.Density.from_function(grid, lambda th: 1.5 + np.cos(th))
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    study = meanfield_convergence(dyn, rho0, [8, 16], [0.2], seeds=[0], dt=0.1, progress=True)
    err = capsys.readouterr().err
    # one step for the PDE and one per (n, seed); the runs inside draw no bars of their own
    assert "meanfield_convergence" in err and "3/3" in err
    assert "simulate[" not in err and "solve_meanfield" not in err
    quiet = meanfield_convergence(dyn, rho0, [8, 16], [0.2], seeds=[0], dt=0.1, progress=False)
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(quiet.distance, study.distance)  # a bar changes no number


_PROBE = '''
import numba


@numba.njit(cache=True)
def double(x):
    return 2.0 * x
'''


def _load_probe(path):
    spec = importlib.util.spec_from_file_location("transformer_pde._kernels._probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compile_notice_only_when_a_kernel_really_compiles(tmp_path, monkeypatch, capsys):
    """A cold cache compiles (notice once); a warm one loads (no compile event, no notice)."""
    import transformer_pde._kernels  # noqa: F401  (installs the listener)

    path = tmp_path / "probe.py"
    path.write_text(_PROBE)
    monkeypatch.setitem(_progress._notice, "printed", False)
    assert _load_probe(path).double(1.5) == 3.0  # cold: compiles and writes the cache
    assert capsys.readouterr().err.count(_progress.COMPILE_NOTICE) == 1
    monkeypatch.setitem(_progress._notice, "printed", False)
    assert _load_probe(path).double(2.5) == 5.0  # a fresh dispatcher, warm cache: a load
    assert _progress.COMPILE_NOTICE not in capsys.readouterr().err
