"""Run files: the schema refuses what it does not know, and builds what the API builds."""

from __future__ import annotations

import numpy as np
import pytest

import transformer_pde as tp
from transformer_pde import initial, runfile

BASE = """
[model]
attention = "softmax"
beta = 4
dim = 2
[initial]
kind = "uniform"
n = 16
seed = 3
[particles]
T = 1.0
dt = 0.1
"""


def test_defaults_are_filled_in():
    spec = runfile.parse(BASE)
    assert spec.tasks == ("particles",)
    assert spec["model"]["beta"] == 4.0 and isinstance(spec["model"]["beta"], float)
    assert spec["model"]["geometry"] == "sphere"
    assert spec["particles"]["n_saved"] == 101
    assert spec["particles"]["method"] is None  # simulate's own default


@pytest.mark.parametrize(("text", "match"), [
    (BASE + "[plots]\nx = 1\n", r"unknown section \[plots\]; allowed: \[model\]"),
    (BASE.replace("beta = 4", "beta = 4\nbetta = 2"),
     r"unknown key model\.betta in section \[model\]; allowed: attention, beta"),
    (BASE.replace("beta = 4", 'beta = "4"'), r"model\.beta must be a number, got '4' \(str\)"),
    (BASE.replace("beta = 4", "beta = true"), r"model\.beta must be a number, got True \(bool\)"),
    (BASE.replace("n = 16", "n = 16.0"), r"initial\.n must be an integer, got 16\.0 \(float\)"),
    (BASE.replace('"softmax"', '"soft"'), r"model\.attention must be one of 'softmax', 'unnormalized'"),
    (BASE.replace("dim = 2\n", ""), r"missing key model\.dim \(required in \[model\]\)"),
    (BASE.replace("seed = 3", "seed = 3\nrho = 0.5"),
     r"initial\.rho is used only with kind = 'equiangular', not 'uniform'"),
    (BASE.replace("beta = 4", "beta = 4\nbias = 1.0"),
     r"model\.bias is used only with attention = 'sigmoid'"),
    (BASE.split("[particles]")[0], r"no task: add at least one of \[particles\]"),
    (BASE.replace("[initial]", "[initial\n"), "not valid TOML"),
    (BASE.replace("beta = 4", "V = [[1.0, 0.0], [0.0]]"), r"model\.V must be a matrix"),
    (BASE.replace("beta = 4", 'V = {ensemble = "wishart"}'),
     r"model\.V\.ensemble must be one of 'gaussian-product'"),
    (BASE.replace("beta = 4", 'weights = {ensemble = "kq"}\nV = [[1.0, 0.0], [0.0, 1.0]]'),
     "draws Q, K and V together"),
])
def test_bad_run_files_name_the_key(text, match):
    with pytest.raises(runfile.RunFileError, match=match):
        runfile.parse(text)


def test_run_files_are_data_not_code(tmp_path):
    # a value that looks like code is only ever a string; it fails the schema, never runs
    marker = tmp_path / "ran"
    text = BASE.replace('"softmax"', f'"__import__(\'pathlib\').Path(\'{marker}\').touch()"')
    with pytest.raises(runfile.RunFileError, match="model.attention must be one of"):
        runfile.parse(text)
    assert not marker.exists()


def test_model_is_the_api_model():
    spec = runfile.parse(BASE.replace("beta = 4", 'beta = 4\nV = {ensemble = "goe", seed = 5}'))
    dyn = runfile.build_dynamics(spec)
    ref = tp.TokenDynamics(tp.SoftmaxAttention(4.0, V=tp.random_weights("goe", 2, 5)["V"]), "sphere")
    x = initial.uniform_tokens(16, 2, 3)
    np.testing.assert_array_equal(dyn.velocity(x), ref.velocity(x))
    np.testing.assert_array_equal(runfile.build_tokens(spec), x)


def test_weights_ensemble_draws_q_k_v_together():
    spec = runfile.parse(BASE.replace("beta = 4", 'weights = {ensemble = "-kq", seed = 2}'))
    att = runfile.build_dynamics(spec).attention
    w = tp.random_weights("-kq", 2, 2)
    np.testing.assert_array_equal(att.V, w["V"])
    np.testing.assert_array_equal(att.Q, w["Q"])


def test_shape_errors_of_the_model_name_the_run_file():
    spec = runfile.parse(BASE.replace("beta = 4", "V = [[1.0, 0.0, 0.0]]"), source="study.toml")
    with pytest.raises(runfile.RunFileError, match=r"study\.toml: model\.V must have 2 columns"):
        runfile.build_dynamics(spec)


@pytest.mark.parametrize(("lines", "check"), [
    ('kind = "equiangular"\nrho = 0.25', lambda x: np.allclose(x @ x.T, 0.75 * np.eye(4) + 0.25)),
    ('kind = "von-mises-fisher"\nmean_direction = [0.0, 0.0, 0.0, 1.0]\nconcentration = 1e4',
     lambda x: np.all(x[:, 3] > 0.99)),
    ('kind = "clusters"\ncenters = [[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]\nspread = 0.0',
     lambda x: list(x[:, 0]) == [1, 1, -1, -1]),
])
def test_initial_kinds(lines, check):
    text = f"[model]\ndim = 4\n[initial]\nn = 4\n{lines}\n[particles]\nT = 1.0\n"
    assert check(runfile.build_tokens(runfile.parse(text)))


def test_initial_from_a_npy_file(tmp_path):
    x = initial.uniform_tokens(16, 2, 9)
    np.save(tmp_path / "x0.npy", x)
    text = BASE.replace('kind = "uniform"', 'kind = "file"\npath = "x0.npy"')
    spec = runfile.parse(text, base=tmp_path)
    np.testing.assert_array_equal(runfile.build_tokens(spec), x)
    spec = runfile.parse(text.replace("n = 16", "n = 8"), base=tmp_path)
    with pytest.raises(runfile.RunFileError, match=r"tokens of shape \(16, 2\), expected"):
        runfile.build_tokens(spec)


def test_particles_task_is_simulate():
    spec = runfile.parse(BASE)
    traj = runfile.run_task(spec, "particles")
    ref = tp.simulate(runfile.build_dynamics(spec), initial.uniform_tokens(16, 2, 3), (0.0, 1.0),
                      t_eval=np.linspace(0.0, 1.0, 101), dt=0.1)
    np.testing.assert_array_equal(traj.x, ref.x)


def test_meanfield_density_matches_the_initial_law():
    text = BASE.replace('kind = "uniform"', 'kind = "von-mises-fisher"\nmean_direction = [0.0, 1.0]\n'
                        'concentration = 2.0') + "[meanfield]\nn_cells = 64\nT = 0.5\n"
    spec = runfile.parse(text)
    rho = runfile.build_density(spec, runfile.build_grid(spec))
    th = rho.grid.coordinates
    # exp(2 sin(theta)) / (2 pi I_0(2)), sampled at the centres then renormalised (midpoint rule)
    ref = np.exp(2 * np.sin(th))
    np.testing.assert_allclose(rho.values, ref / (ref.sum() * 2 * np.pi / 64), rtol=1e-12)


# -- running a run file into files -------------------------------------------------------
TWO_TASKS = """
[model]
beta = 4
dim = 2
[initial]
kind = "von-mises-fisher"
n = 24
seed = 1
mean_direction = [1.0, 0.0]
concentration = 1.0
[particles]
T = 2.0
dt = 0.05
n_saved = 21
[meanfield]
n_cells = 64
T = 0.5
n_saved = 6
"""


def _datasets(path) -> dict:
    import h5py

    out = {}

    def take(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]

    with h5py.File(path, "r") as f:
        f.visititems(take)
    return out


def test_a_run_file_twice_gives_bit_identical_datasets(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(TWO_TASKS)
    a = runfile.run(study, tmp_path / "a", progress=False)
    runfile.run(study, tmp_path / "b", progress=False)
    for task in ("particles", "meanfield"):
        da, db = _datasets(tmp_path / "a" / f"{task}.h5"), _datasets(tmp_path / "b" / f"{task}.h5")
        assert da.keys() == db.keys() and da
        for name in da:
            assert da[name].tobytes() == db[name].tobytes(), (task, name)
        assert tp.load(tmp_path / "a" / f"{task}.h5") == a[task]
    record = __import__("json").loads((tmp_path / "a" / "run.json").read_text())
    assert record["tasks"] == ["particles", "meanfield"] and record["run_file"]["model"]["beta"] == 4.0


def test_resume_keeps_complete_results(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(TWO_TASKS)
    first = runfile.run(study, tmp_path / "out", progress=False)
    stamp = (tmp_path / "out" / "particles.h5").stat().st_mtime_ns
    again = runfile.run(study, tmp_path / "out", resume=True, progress=False)
    assert again == first
    assert (tmp_path / "out" / "particles.h5").stat().st_mtime_ns == stamp  # not rewritten


@pytest.mark.slow
def test_cli_run_killed_then_resumed_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL a ``transformer-pde run`` mid-way; ``--resume`` finishes it to the same result."""
    import signal
    import subprocess
    import sys
    import time

    study = tmp_path / "study.toml"
    study.write_text(TWO_TASKS.replace("T = 2.0", "T = 40.0").replace("n_saved = 21", "n_saved = 401")
                     .replace("n = 24", "n = 400"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "transformer_pde", "run", str(study), "--output", str(out),
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path = out / "particles.h5"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once some saved times are on disk
        if path.exists():
            try:
                part = tp.load(path)
            except Exception:
                part = None
            if part is not None and part.info.status == "partial" and len(part.t) >= 20:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    part = tp.load(path)
    assert part.info.status == "partial" and 20 <= len(part.t) < 401
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ref = runfile.run(study, tmp_path / "ref", progress=False)
    assert tp.load(path) == ref["particles"]
    assert tp.load(out / "meanfield.h5") == ref["meanfield"]


def test_cli_run_reports_a_bad_key(tmp_path, capsys):
    from transformer_pde.cli import main

    study = tmp_path / "study.toml"
    study.write_text(BASE.replace("beta = 4", "beta = 4\ntemperature = 2"))
    assert main(["run", str(study), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "unknown key model.temperature" in err and "allowed: attention, beta" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["circle_clusters.toml", "beta_sweep.toml", "gaussian_moments.toml"])
def test_example_run_files_are_valid(name):
    from pathlib import Path

    spec = runfile.read(Path(__file__).resolve().parents[1] / "examples" / name)
    runfile.build_dynamics(spec)
    assert runfile.build_tokens(spec).shape == (spec["initial"]["n"], spec["model"]["dim"])
