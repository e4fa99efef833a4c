r"""The built-in demo behind ``transformer-pde demo``.

Tokens start uniformly at random on the circle :math:`\mathbb S^1` and on the sphere
:math:`\mathbb S^2` and move under softmax self-attention (SA) with post-LN and
``Q = K = V = I`` (docs/math.md §2.1, Geshkovski, Letrouit, Polyanskiy, Rigollet, arXiv
2312.10794):

.. math::

    \dot x_i = P^\perp_{x_i}\Big(\frac{1}{Z_{\beta,i}}\sum_j e^{\beta\langle x_i, x_j\rangle}
    x_j\Big), \qquad Z_{\beta,i} = \sum_k e^{\beta\langle x_i, x_k\rangle}.

On the circle with :math:`\beta = 9` the uniform state first breaks into a few
metastable clusters (about :math:`k^* \approx \sqrt{2\beta}`, docs/math.md §2.4); on the sphere
with :math:`\beta = 1` the tokens collapse to one cluster. Along the way the interaction
energy

.. math::

    \mathsf E_\beta(X) = \frac{1}{2\beta n^2}\sum_{i,j} e^{\beta\langle x_i, x_j\rangle}

never decreases (docs/math.md §2.3) and is at most :math:`e^\beta/(2\beta)`, its value for a
single cluster.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from . import _validation as _v
from . import runfile
from ._io import atomic_write, write_json
from .clustering import CLUSTER_THRESHOLD, cluster_count, density_peaks, interaction_energy
from .theory import fastest_circle_mode

__all__ = ["run_demo", "FIGURE_NAME", "SUMMARY_NAME", "CLUSTER_THRESHOLD"]

#: file names written into the demo folder
FIGURE_NAME = "tokens.png"
SUMMARY_NAME = "summary.json"


def run_demo(out_dir: str | os.PathLike, *, n: int | None = None, beta_circle: float = 9.0,
             beta_sphere: float = 1.0, T: float | None = None, seed: int = 0,
             quick: bool = False, progress: bool | None = None) -> dict[str, Any]:
    r"""Simulate SA tokens on the circle and the sphere; write a figure and a summary.

    The built-in run files ``demo_circle`` and ``demo_sphere``
    (:func:`transformer_pde.runfile.builtin`; ``transformer_pde/runfiles/``) with the
    given n, beta, T and seed: two runs of :func:`transformer_pde.simulate` (method
    ``"rk4"``, step ``dt = min(0.05, 0.5 / beta)``) of
    :class:`transformer_pde.SoftmaxAttention` with ``Q = K = V = I`` and post-LN, from n
    tokens drawn uniformly on :math:`\mathbb S^1` (d = 2) and on :math:`\mathbb S^2`
    (d = 3) (:func:`transformer_pde.initial.uniform_tokens` with ``seed``), and the
    circle's mean field (:func:`transformer_pde.solve_meanfield`, 256 cells) from a kernel
    estimate (bandwidth 0.1) of the circle tokens' initial sample.

    Writes into ``out_dir`` (created if missing; existing files of the same names are
    replaced atomically, so a crash never leaves a half-written file):

    - ``tokens.png``: angles of the circle tokens against time; the sphere tokens in 3-D
      (initial points, trajectories, final points); cluster counts and the normalised
      energy :math:`\mathsf E_\beta(t)\,/\,(e^\beta/2\beta)` against time.
    - ``summary.json``: the returned dictionary.

    Parameters
    ----------
    out_dir : str or path-like
        Folder to write into.
    n : int, optional
        Number of tokens in each run, n >= 2; 64 by default (32 with ``quick``).
    beta_circle, beta_sphere : float
        Inverse temperatures of the two runs, > 0.
    T : float, optional
        Final time, > 0; 30 by default (15 with ``quick``).
    seed : int
        Seed of the initial tokens (``initial.seed`` of both run files), >= 0.
    quick : bool
        Smaller defaults for ``n`` and ``T`` (for tests; a second or two).
    progress : bool or None
        tqdm progress bars on stderr: None (default) when stderr is a terminal and a run
        lasts more than 2 s; True always, False never.

    Returns
    -------
    dict
        JSON-compatible summary: ``version``, ``seed``, ``quick``, ``out_dir`` (absolute),
        ``files`` and ``runs``, a dict with keys ``"circle"`` and ``"sphere"`` each holding
        ``n``, ``d``, ``beta``, ``T``, ``method``, ``dt``, ``steps``, ``saved_times``,
        ``wall_time_s``, ``max_norm_deviation`` (:math:`\max_{t,i} |\,\|x_i(t)\| - 1|`
        over saved times), ``clusters_start``, ``clusters_end`` (groups of tokens with
        :math:`\langle x_i, x_j\rangle > 0.9999`, connected components),
        ``energy_start``, ``energy_end``, ``energy_max`` (:math:`e^\beta/2\beta`),
        ``energy_min_relative_increment`` (the smallest
        :math:`(\mathsf E(t_{k+1}) - \mathsf E(t_k)) / \mathsf E(t_k)` over saved times;
        >= 0 up to round-off), and for the circle ``k_star``, the fastest-growing mode
        :math:`\arg\max_k k^2 I_k(\beta)` of the linearised mean-field equation, about
        the number of metastable clusters (docs/math.md §2.4).

    Raises
    ------
    TypeError, ValueError
        For invalid parameters (the message names the parameter).
    OSError
        If ``out_dir`` cannot be created or written.
    """
    n = (32 if quick else 64) if n is None else _v.as_positive_int(n, "n")
    if n < 2:
        raise ValueError(f"n must be >= 2 (tokens interact in pairs), got {n}")
    T = (15.0 if quick else 30.0) if T is None else _v.as_positive(T, "T")
    beta_circle = _v.as_positive(beta_circle, "beta_circle")
    beta_sphere = _v.as_positive(beta_sphere, "beta_sphere")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r} of type {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not isinstance(quick, (bool, np.bool_)):
        raise TypeError(f"quick must be a bool, got {quick!r}")

    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    specs = {name: runfile.override(runfile.builtin(f"demo_{name}"), {
        "model.beta": beta, "initial.n": n, "initial.seed": int(seed), "particles.T": T,
        "particles.dt": min(0.05, 0.5 / beta),  # RK4 is accurate and stable for beta dt <= 0.5
    } | ({"meanfield.T": T} if name == "circle" else {}))
        for name, beta in (("circle", beta_circle), ("sphere", beta_sphere))}
    circle = _run(specs["circle"], progress)
    sphere = _run(specs["sphere"], progress)
    circle["summary"]["k_star"] = fastest_circle_mode(beta_circle)
    pde = _run_pde(specs["circle"], circle, progress)

    from . import __version__

    summary: dict[str, Any] = {
        "model": "SoftmaxAttention (SA), Q = K = V = I, post-LN, tokens uniform at t = 0",
        "version": __version__,
        "seed": int(seed),
        "quick": bool(quick),
        "out_dir": str(out),
        "files": [FIGURE_NAME, SUMMARY_NAME],
        "runs": {"circle": circle["summary"], "sphere": sphere["summary"],
                 "circle_pde": pde["summary"]},
    }

    from . import plotting  # lazily: matplotlib is loaded only when a figure is made

    fig = plotting.demo_figure(
        {**circle, "title": _title("circle", circle["summary"])},
        {**sphere, "title": _title("sphere", sphere["summary"])},
        {**pde, "title": (rf"mean field on $\mathbb{{S}}^1$: M={pde['summary']['n_cells']} cells, "
                          f"{pde['summary']['peaks_end']} density peaks at t={T:g}")},
    )
    atomic_write(out / FIGURE_NAME, lambda f: fig.savefig(f, format="png", dpi=110))
    write_json(out / SUMMARY_NAME, summary)
    return summary


def _run(spec: runfile.RunSpec, progress: bool | None) -> dict[str, Any]:
    """The particle task of a demo run file, with its time series and summary."""
    traj = runfile.run_task(spec, "particles", progress=progress)
    d, n, beta, T = traj.dim, traj.n_tokens, spec["model"]["beta"], spec["particles"]["T"]
    dt = spec["particles"]["dt"]
    clusters = cluster_count(traj)
    energy = interaction_energy(traj, beta)
    deviation = float(np.max(np.abs(np.linalg.norm(traj.x, axis=2) - 1.0)))
    summary = {
        "n": n,
        "d": d,
        "beta": beta,
        "T": T,
        "method": "rk4",
        "dt": dt,
        "steps": traj.info.n_steps,
        "saved_times": len(traj.t),
        "wall_time_s": round(traj.info.wall_time, 4),
        "max_norm_deviation": deviation,
        "clusters_start": int(clusters[0]),
        "clusters_end": int(clusters[-1]),
        "energy_start": float(energy[0]),
        "energy_end": float(energy[-1]),
        "energy_max": float(np.exp(beta) / (2.0 * beta)),
        "energy_min_relative_increment": float(np.min(np.diff(energy) / energy[:-1])),
    }
    return {"t": traj.t, "x": traj.x, "clusters": clusters, "energy": energy, "beta": beta,
            "summary": summary}


def _run_pde(spec: runfile.RunSpec, circle: dict[str, Any], progress: bool | None) -> dict[str, Any]:
    """The mean-field task of the circle run file, saved at the particles' times.

    The PDE starts from a kernel estimate of the particles' own initial sample.
    """
    sol = runfile.run_task(spec, "meanfield", progress=progress)
    grid = sol.grid
    peaks = density_peaks(sol)
    from . import wasserstein  # the only module importing POT

    w2 = [wasserstein.to_density(circle["x"][k], sol.at(k), p=2) for k in (0, len(sol.t) - 1)]
    summary = {
        "n_cells": grid.n_cells,
        "bandwidth": spec["meanfield"]["bandwidth"],
        "steps": sol.info.n_steps,
        "wall_time_s": round(sol.info.wall_time, 4),
        "mass_drift": sol.info.mass_drift,
        "min_density": sol.info.min_density,
        "peaks_end": int(peaks[-1]),
        "particle_clusters_end": circle["summary"]["clusters_end"],
        "w2_particles_pde_start": float(w2[0]),
        "w2_particles_pde_end": float(w2[1]),
    }
    return {"t": sol.t, "density": sol.density, "angles": grid.angles, "peaks": peaks,
            "summary": summary}


def _title(name: str, s: dict[str, Any]) -> str:
    return (rf"{name} $\mathbb{{S}}^{{{s['d'] - 1}}}$: n={s['n']}, $\beta$={s['beta']:g}, "
            f"clusters {s['clusters_start']} $\\to$ {s['clusters_end']} at t={s['T']:g}")
