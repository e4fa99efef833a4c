"""The user-facing shell: the demo, the ``transformer-pde`` command, README and example."""

from __future__ import annotations

import json
import math
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from scipy.special import iv

import transformer_pde as tp
from transformer_pde import cli, demo
from transformer_pde._io import atomic_write

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One quick demo run shared by the tests that only read its output."""
    out = tmp_path_factory.mktemp("demo")
    return out, demo.run_demo(out, quick=True, seed=3)


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# -- run_demo --------------------------------------------------------------------------
def test_demo_writes_figure_and_summary(quick_demo):
    out, summary = quick_demo
    # exactly the two outputs: the atomic writes left no temporary files behind
    assert _files(out) == {"tokens.png", "summary.json"}
    assert (out / "tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["out_dir"] == str(out.resolve())
    assert summary["quick"] is True and summary["seed"] == 3
    assert set(summary["runs"]) == {"circle", "sphere", "circle_pde"}
    assert summary["runs"]["circle"]["d"] == 2 and summary["runs"]["sphere"]["d"] == 3


def test_demo_mean_field_next_to_particles(quick_demo):
    """The circle PDE runs beside the particles: conservative and positive, and it ends
    with about as many clusters (density peaks) as the particles."""
    pde = quick_demo[1]["runs"]["circle_pde"]
    # finite volumes: each face flux leaves one cell and enters the next; the relative
    # drift is round-off accumulated over the steps (~1e-16 per step)
    assert pde["mass_drift"] < 1e-12
    # MC-limited upwind fluxes with SSP-RK3 at cfl 1/2 keep the density nonnegative
    assert pde["min_density"] >= 0.0
    # the kernel estimate and the finite n differ from the particles at O(1/sqrt(n)): the
    # cluster counts agree within one
    assert abs(pde["peaks_end"] - pde["particle_clusters_end"]) <= 1
    # at t=0 the PDE is the particles' histogram (bins h = 2 pi / M) smoothed by a Gaussian
    # of std sigma: moving each token by N(0, sigma^2) plus a uniform shift within its bin
    # couples the two, so W_2 <= sqrt(sigma^2 + h^2 / 12) (plus the 0..h binning offset)
    h = 2 * math.pi / pde["n_cells"]
    assert 0 < pde["w2_particles_pde_start"] <= math.sqrt(pde["bandwidth"] ** 2 + h**2 / 12) + h
    assert math.isfinite(pde["w2_particles_pde_end"]) and pde["w2_particles_pde_end"] > 0


@pytest.mark.parametrize("name", ["circle", "sphere"])
def test_demo_mathematics(quick_demo, name):
    run = quick_demo[1]["runs"][name]
    beta, n = run["beta"], run["n"]
    # every RK4 stage and step is retracted to the sphere: |x_i| = 1 up to a few ulps
    assert run["max_norm_deviation"] <= 1e-12
    # SA increases E_beta (docs/math.md §2.3, dissipation >= 0). Between saved times the exact
    # increase is >= 0; RK4 error and the rounding of n^2 exponentials are ~1e-15 relative
    assert run["energy_min_relative_increment"] >= -1e-12
    assert run["energy_end"] >= run["energy_start"]
    # <x_i, x_j> <= 1 gives E_beta <= e^beta / (2 beta), equality for one cluster;
    # 1e-12 relative allows rounding of the sum
    assert run["energy_max"] == pytest.approx(math.exp(beta) / (2 * beta), rel=1e-15)
    assert run["energy_end"] <= run["energy_max"] * (1 + 1e-12)
    # <x_i, x_j> >= -1 gives E_beta >= e^-beta / (2 beta) (a loose lower bound)
    assert run["energy_start"] >= math.exp(-beta) / (2 * beta)
    assert 1 <= run["clusters_end"] <= run["clusters_start"] <= n
    assert run["steps"] >= run["T"] / run["dt"] * (1 - 1e-12)


def test_demo_sphere_single_cluster(quick_demo):
    """beta = 1 on S^2: the tokens collapse to one point, where E_beta = e^beta / (2 beta)."""
    s = quick_demo[1]["runs"]["sphere"]
    assert s["clusters_end"] == 1
    # one cluster means every <x_i, x_j> > 0.9999, hence E >= e^{-beta 1e-4} E_max:
    # a relative gap below beta * 1e-4 is guaranteed (in practice it is ~1e-10)
    assert s["energy_end"] == pytest.approx(s["energy_max"], rel=s["beta"] * 1e-4)


def test_demo_circle_fastest_mode(quick_demo):
    """The summary's k* is theory.fastest_circle_mode (docs/math.md §6 item 7: beta=9 -> k*=4;
    the whole list is tested in test_theory.py)."""
    assert quick_demo[1]["runs"]["circle"]["k_star"] == 4


@pytest.mark.slow  # three demo runs (~8 s); the run files it uses are checked bit for bit in test_runfile
def test_demo_is_reproducible(tmp_path):
    a = demo.run_demo(tmp_path / "a", n=8, T=2.0, seed=5)
    b = demo.run_demo(tmp_path / "b", n=8, T=2.0, seed=5)
    c = demo.run_demo(tmp_path / "c", n=8, T=2.0, seed=6)
    for name in ("circle", "sphere"):
        for key in ("clusters_start", "clusters_end", "energy_start", "energy_end"):
            # same seed, same arithmetic: identical numbers
            assert a["runs"][name][key] == b["runs"][name][key], (name, key)
        assert a["runs"][name]["energy_start"] != c["runs"][name]["energy_start"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 1}, ValueError, "n must be >= 2"),
        ({"n": 2.5}, TypeError, "n must be an integer"),
        ({"T": -1.0}, ValueError, "T must be > 0"),
        ({"beta_circle": 0.0}, ValueError, "beta_circle must be > 0"),
        ({"beta_sphere": float("nan")}, ValueError, "beta_sphere must be finite"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"seed": "a"}, TypeError, "seed must be an integer"),
        ({"quick": "yes"}, TypeError, "quick must be a bool"),
    ],
)
def test_demo_rejects_bad_input(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        demo.run_demo(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()  # validated before anything is written


# -- atomic writes -----------------------------------------------------------------------
def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def crash(f):
        f.write(b"half a fi")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_text() == "old"
    assert _files(tmp_path) == {"summary.json"}  # the temporary file was removed

    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_text() == "new"
    assert _files(tmp_path) == {"summary.json"}


# -- the command ---------------------------------------------------------------------------
def test_main_demo(tmp_path, capsys):
    out = tmp_path / "nested" / "demo"
    assert cli.main(["demo", "--quick", "--n", "8", "--T", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    assert "circle" in printed and "sphere" in printed
    assert _files(out) == {"tokens.png", "summary.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"]["circle"]["n"] == 8 and summary["runs"]["sphere"]["T"] == 2.0


def test_main_demo_default_out_is_relative_to_cwd(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--quick", "--n", "4", "--T", "1"]) == 0
    expected = tmp_path / cli.DEFAULT_OUT
    assert str(expected.resolve()) in capsys.readouterr().out
    assert _files(expected) == {"tokens.png", "summary.json"}


def test_main_demo_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["demo", "--quick", "--n", "4", "--T", "1", "--out", str(blocker)]) == 1
    assert "error" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"transformer-pde {tp.__version__}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required"),
        (["demo", "--seed", "-3"], "--seed"),
        (["demo", "--seed", "x"], "--seed"),
        (["demo", "--n", "1"], "--n"),
        (["demo", "--T", "0"], "--T"),
        (["demo", "--T", "inf"], "--T"),
        (["demo", "--beta-circle", "nan"], "--beta-circle"),
        (["demo", "--bogus"], "unrecognized arguments"),
        (["fly"], "invalid choice"),
    ],
)
def test_bad_arguments_give_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err


def test_python_dash_m(tmp_path):
    result = subprocess.run([sys.executable, "-m", "transformer_pde", "--version"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"transformer-pde {tp.__version__}"


# -- README and example --------------------------------------------------------------------------
def test_quickstart_runs(capsys):
    runpy.run_path(str(QUICKSTART), run_name="__main__")
    out = capsys.readouterr().out
    final = float(re.search(r"([-+]?\d\.\d+) at t=15", out).group(1))
    # beta = 1 on S^2 from 32 uniform tokens: one cluster by t = 15, so every
    # inner product is 1 to the 8 printed digits (convergence is exponential)
    assert final == pytest.approx(1.0, abs=1e-8)


def test_readme_example_is_the_quickstart():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks[0] in QUICKSTART.read_text()
    assert len(blocks[0].strip().splitlines()) <= 12  # "a 10-line library example"


def test_readme_mean_field_example_prints_the_growth_rate(capsys):
    """The README's mean-field block runs and prints the rate it promises (docs/math.md §2.4)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "solve_meanfield" in b]
    exec(compile(block, "README.md", "exec"), {})
    rate = float(capsys.readouterr().out.split()[-1])
    # k^2 I_k(beta) / (beta I_0(beta)) at k=3, beta=4 is 0.66439; the grid (M=512) and the
    # fit over t in [0, 1] reproduce it to ~1e-4 relative
    assert rate == pytest.approx(9 * iv(3, 4.0) / (4.0 * iv(0, 4.0)), rel=1e-3)


def test_readme_states_the_two_commands():
    text = README.read_text()
    assert '```bash\npip install . && transformer-pde demo\n```' in text
    assert '```bash\npip install ".[test]" && pytest\n```' in text


def test_matplotlib_is_imported_lazily(tmp_path):
    """Only plotting.py imports matplotlib, and only when a figure is made (DESIGN.md); the
    figure functions in ``tp.__all__`` load it on first use."""
    code = ("import sys, transformer_pde, transformer_pde.cli, transformer_pde.demo; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'; "
            "tp = transformer_pde; names = [n for n in tp.__all__ if n.startswith('plot_')]; "
            "assert len(names) >= 15 and 'movie' in tp.__all__, names; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported by __all__'; "
            "assert all(getattr(tp, n) is getattr(tp.plotting, n) for n in names + ['movie']); "
            "assert 'matplotlib' in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr


def test_metastable_clusters_example(capsys):
    """The README's clustering block is the example, and the example shows the plateau."""
    example = ROOT / "examples" / "metastable_clusters.py"
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert [b for b in blocks if "clustering.cluster_count" in b][0] in example.read_text()
    runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    k_star = int(re.search(r"k\*\(beta=9\) = (\d+)", out).group(1))
    counts = [int(c) for c in re.findall(r":\s+(\d+) clusters", out)]
    energy = [float(e) for e in re.findall(r"E / E_max = ([\d.]+)", out)]
    # docs/math.md §2.4: k*(9) = 4; the tokens sit at k* clusters over a plateau (several saved
    # times) before merging, and the energy never decreases (printed to 4 decimals)
    assert k_star == 4 and counts.count(k_star) >= 3
    assert counts[-1] < k_star and all(b >= a for a, b in zip(energy, energy[1:], strict=False))


def test_readme_tracker_block_stops_at_k_star(capsys):
    """The README's tracker block, run after the clustering block it continues: the run stops
    at the first saved time with at most k*(9) = 4 clusters, and Record saw every saved time."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (setup,) = [b for b in blocks if "clustering.cluster_count" in b]
    (block,) = [b for b in blocks if "StopAtClusters" in b]
    namespace: dict = {}
    exec(compile(setup.split("counts =")[0], "README.md", "exec"), namespace)
    exec(compile(block, "README.md", "exec"), namespace)
    traj, stop, energy = namespace["traj"], namespace["stop"], namespace["energy"]
    assert traj.info.status == "stopped" and stop.counts[-1] <= 4 < stop.counts[-2]
    assert energy.t == traj.t.tolist() and len(traj.x) == len(traj.t) < 13
    assert capsys.readouterr().out.startswith("stopped")
