"""Metastability on the circle: about k*(beta) clusters form first, persist, then merge.

Theory. SA (softmax attention, Q = K = V = I, post-LN) on the circle S^1 (d = 2).
(docs/math.md §2.4) The uniform density is unstable; Fourier mode k grows at
lambda_k = k^2 I_k(beta) / (beta I_0(beta)) (`theory.circle_growth_rate`), fastest at
k*(beta) = argmax_k k^2 I_k(beta) ~ sqrt(2 beta) (`theory.fastest_circle_mode`: 3, 4, 6
for beta = 4, 9, 16), so a near-uniform start breaks into about k* clusters after a time
t_f ~ ln(1/eps) / lambda_max (eps the initial amplitude). (docs/math.md §4.3, 5.1, 6 item 14)
The clustered state is metastable: two neighbouring clusters at angle phi merge on the
time scale e^{beta (1 - cos phi)} (`theory.merge_time_scale`), so the cluster count
falls as a staircase. (docs/math.md §2.3) The energy E_beta is non-decreasing along the flow.

Setup (same initial condition for the grid PDE and the particles): the density
rho0 = (1 + eps sum_{k=1}^{20} cos(k theta + phi_k)) / 2 pi, eps = 1e-3, phases phi_k
uniform from `np.random.default_rng(seed)`. Grid: `tp.solve_meanfield` on
`tp.CircleGrid(M)`. Particles: n tokens at the quantiles (j + 1/2)/n of rho0 (equally
spaced in the distribution function of rho0, so the particles carry the same modes as
the grid, with no 1/sqrt(n) sampling noise), `tp.simulate` with dopri5 (rtol 1e-8).
Quick: beta in {4, 9}, one seed, M = 128, n = 128. Full: beta in {4, 9, 16}, seeds 0-2,
M = 256, n = 256 (n < 2 pi / arccos(0.9999) = 444, so that the equally spaced start is n
separate "clusters" for `clustering.cluster_count`).

Definitions (the same for every beta, grid and particles):
- cluster count: particles `clustering.cluster_count` (links <x_i, x_j> > 0.9999), grid
  `clustering.density_peaks` (local maxima above 5x the mean density);
- formation time t_f: the first local maximum of dE/dt, also maximal over [t/1.5, 1.5 t]
  (the inflection of the first step of the energy staircase, where the clusters condense);
- metastable count: the count that lasts longest in log time over [t_f, 4 t_f]. The
  condensation transient (clusters tightening at the SA contraction rate 1 from a width
  ~pi/k* to the link angle 0.014, about 4-5 time units, with t_f >= 10) fills only the
  start of that window, while a metastable state lasts much longer than t_f by definition;
  a state that merges inside the window is not metastable and then the count that
  follows it, the longer-lived one, is taken;
- first merge: the first time after the plateau starts (first time the count equals
  the metastable count) that the count drops below it.

Checks. (1) Metastable count within +-1 of k*(beta), grid and particles, every beta and
seed (the acceptance point). (2) The growth rate of Fourier modes k* - 1, k*, k* + 1, fitted
over the linear phase (every mode amplitude <= 0.01), equals lambda_k within 1% (nonlinear
corrections O(amplitude); grid truncation (k h)^2/24). (3) t_f lambda_max / ln(1/eps) =
1 +- ln(10)/ln(1/eps): the linear phase ends when the mode reaches an O(1) amplitude a_c,
t_f = ln(a_c/eps)/lambda_max, and a_c lies within a decade of 1. (4) E_beta non-decreasing
at every saved step: relative decrements <= 1e-12 (the energy is a sum of n^2 or M^2
positive terms, round-off ~1e-15; the particle run's local errors vanish with the velocity
at equilibria; the finite-volume scheme is not a discrete gradient flow, so for the grid
this is a measurement: its largest decrement is round-off, <= 5e-15). (5) Particles: the
first merge follows the pair reduction of Bruno-Pasqualotto-Agazzi (docs/math.md §4.3): two
neighbouring clusters (masses m_i, m_j, angle phi0 when the plateau starts) taken as two
Diracs, the others neglected, come within the link angle after
    T_pair = int_{phi_link}^{phi0} dphi / (sin(phi) (w_ij + w_ji)),
    w_ij = m_j e^{beta cos phi} / (m_i e^beta + m_j e^{beta cos phi}),
~ e^{beta (1 - cos phi0)} / ((m_i/m_j + m_j/m_i) beta sin^2 phi0), i.e.
`theory.merge_time_scale(beta, cos phi0)` times a prefactor (0.04-0.2 here). The other
clusters pull the pair apart, the less the closer it gets; with s0 the closing speed of
all clusters over that of the pair alone at the plateau start, the pair merges in
[T_pair, T_pair / s0]. The measured first-merge duration must lie in
[min T_pair, min T_pair / s0] (min over neighbouring pairs), widened by 5% for the finite
cluster width and by one save interval (the merge is seen at the next saved time). The
bare scale e^{beta (1 - cos(2 pi / k*))} of equally spaced clusters is not a prediction
(an equal spacing is an equilibrium; the clusters that form are unequal): it is
403 / 8.1e3 / 3.0e3 for beta = 4 / 9 / 16 against first merges after 11-38 / 76-90 /
340-380 time units of plateau.

Measured (full mode, seeds 0-2): metastable counts grid 3,3,3 / 4,4,4 / 5,5,5 and
particles 3,3,3 / 4,4,4 / 5,5,5 for beta = 4 / 9 / 16 (k* = 3 / 4 / 6). At beta = 16 six
clusters do form (grid and particles, t ~ 14-25), but the pattern mixes modes 5-7
(lambda_5,6,7 = 0.70, 0.71, 0.65) and one close pair merges within ~2.5 t_f, so five is the
state that lasts. Growth rates within 0.5% of lambda_k; t_f lambda_max / ln(1/eps) =
1.05-1.16 (a_c ~ 1.4-3); energy: particles' largest relative decrement <= 2.2e-16, grid
<= 4.2e-15 (round-off); first merges at (1.05-1.33) min T_pair, inside every bracket.
Runtime ~2 s quick, ~35 s full.

Finding: the grid PDE does not merge on these time scales at M = 256: a cluster collapses
into one or two cells and the upwind finite-volume scheme pins it there as long as its
drift (~ e^{-beta (1 - cos phi)}) is below its self-contraction speed at the cell faces
(~ h/2) (beta = 4, seed 1: particles merge at t ~ 54, M = 1024 at t ~ 85, M = 256 not by
t = 100; a close pair, drifting fast, does merge on the grid). Merges are checked on
particles only.

Run: python -m transformer_pde.validation.metastability [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
import time

import numpy as np
from scipy.integrate import quad
from scipy.special import ive

import transformer_pde as tp
from transformer_pde import theory
from transformer_pde.checks import Validation, check_close, check_range, run
from transformer_pde.clustering import (
    CLUSTER_THRESHOLD,
    cluster_count,
    cluster_labels,
    density_peaks,
    interaction_energy,
)

__all__ = ["VALIDATION", "measure", "checks", "figure"]

NAME = "metastability"
THEORY = ("Circle metastability (docs/math.md §2.4, 4.3, 5.1): from a near-uniform start SA forms about "
          "k*(beta) = argmax k^2 I_k(beta) clusters (+-1), modes grow at lambda_k, the clusters "
          "merge on the scale e^{beta(1 - cos phi)}, and E_beta never decreases; grid PDE and particles.")

EPS = 1e-3            # initial amplitude of every Fourier mode
N_MODES = 20          # modes k = 1..N_MODES carry the perturbation
WINDOW = 4.0          # metastable count: longest-lived count over [t_f, WINDOW * t_f]
LINEAR_AMPLITUDE = 0.01  # linear phase: every mode amplitude below this (10 eps)
# growth rates: nonlinear corrections O(amplitude) <= 1e-2 at the end of the fit window (~3e-3
# on average over it); grid truncation (k h)^2 / 24 <= 3e-3 for k <= 7, M >= 128 at k <= 5
RATE_TOL = 0.01
ENERGY_RTOL = 1e-12   # allowed relative energy decrement per saved step (round-off)
MERGE_SLACK = 0.05    # merge bracket: clusters of width <= 0.014 rad taken as Diracs (effect ~1e-2)
LINK_ANGLE = float(np.arccos(CLUSTER_THRESHOLD))  # tokens closer than this are linked


# ---------------------------------------------------------------------------------------
# initial data
# ---------------------------------------------------------------------------------------
def _phases(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi, N_MODES)


def _rho0(theta, phases):
    k = np.arange(1, N_MODES + 1)
    return (1.0 + EPS * np.cos(np.multiply.outer(theta, k) + phases).sum(axis=-1)) / (2.0 * np.pi)


def _quantile_tokens(n: int, phases) -> np.ndarray:
    """Tokens (n, 2) at the quantiles (j + 1/2)/n of rho0 (Newton on the distribution function)."""
    k = np.arange(1, N_MODES + 1)
    target = 2.0 * np.pi * (np.arange(n) + 0.5) / n
    theta = target.copy()
    for _ in range(50):
        # 2 pi F(theta) - target; F' = rho0 >= (1 - N_MODES eps) / 2 pi > 0
        cdf = theta + EPS * ((np.sin(np.multiply.outer(theta, k) + phases) - np.sin(phases)) / k).sum(axis=-1)
        step = (cdf - target) / (2.0 * np.pi * _rho0(theta, phases))
        theta -= step
        if np.max(np.abs(step)) < 1e-15:
            break
    return np.stack([np.cos(theta), np.sin(theta)], axis=1)


def _times(T: float, per_decade: int = 60) -> np.ndarray:
    """Saved times: 0, then log-spaced from 0.1 to T."""
    return np.concatenate([[0.0], np.geomspace(0.1, T, int(per_decade * np.log10(T / 0.1)) + 1)])


# ---------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------
def _grid_run(beta: float, M: int, T: float, phases) -> dict:
    grid = tp.CircleGrid(M)
    rho0 = tp.Density.from_function(grid, lambda th: _rho0(th, phases))
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta))
    start = time.perf_counter()
    sol = tp.solve_meanfield(dyn, rho0, (0.0, T), t_eval=_times(T))
    wall = time.perf_counter() - start
    coeff = np.fft.fft(sol.density * grid.h, axis=1)  # mass 1: coeff[:, 0] = 1
    # cell averages damp mode k by sinc(k h / 2), a constant factor: rates are unaffected
    return {"t": sol.t, "count": density_peaks(sol), "energy": interaction_energy(sol, beta, normalized=True),
            "amplitude": 2.0 * np.abs(coeff[:, 1:N_MODES + 1]), "wall": wall, "steps": sol.info.n_steps,
            "mass_drift": sol.info.mass_drift}


def _particle_run(beta: float, n: int, T: float, phases) -> dict:
    x0 = _quantile_tokens(n, phases)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta))
    traj = tp.simulate(dyn, x0, (0.0, T), t_eval=_times(T), method="dopri5", dt=0.1, rtol=1e-8, atol=1e-10)
    theta = np.arctan2(traj.x[..., 1], traj.x[..., 0])
    k = np.arange(1, N_MODES + 1)
    coeff = np.exp(-1j * theta[:, :, None] * k).mean(axis=1)
    return {"t": traj.t, "x": traj.x, "count": cluster_count(traj),
            "energy": interaction_energy(traj, beta, normalized=True), "amplitude": 2.0 * np.abs(coeff),
            "wall": traj.info.wall_time, "steps": traj.info.n_steps}


# ---------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------
def _formation_time(t, energy) -> float:
    """First local maximum of dE/dt (centred differences on the saved times) that is also the
    maximum over [t/1.5, 1.5 t] (so that a round-off wiggle cannot pass for the inflection)."""
    rate = np.gradient(energy, t)
    for i in range(1, len(t) - 1):
        near = (t >= t[i] / 1.5) & (t <= 1.5 * t[i])
        if rate[i] > 0.0 and rate[i] >= rate[near].max():
            return float(t[i])
    return float("nan")


def _metastable_count(t, count, t_f) -> tuple[int, dict]:
    """The count that lasts longest in log time over [t_f, WINDOW t_f] (the saved times
    are log-spaced, so each saved time stands for an equal slice of log time)."""
    inside = (t >= t_f) & (t <= WINDOW * t_f)
    values, freq = np.unique(count[inside], return_counts=True)
    c = int(values[np.argmax(freq)])
    share = {int(v): round(float(f) / float(inside.sum()), 3) for v, f in zip(values, freq, strict=True)}
    return c, share


def _growth_rates(t, amplitude) -> tuple[np.ndarray, float]:
    """Least-squares growth rate of each mode over the linear phase (all amplitudes <= 0.01)."""
    linear = np.flatnonzero(np.max(amplitude, axis=1) > LINEAR_AMPLITUDE)
    end = linear[0] if len(linear) else len(t)
    sel = slice(0, end)
    rates = np.polyfit(t[sel], np.log(amplitude[sel]), 1)[0]
    return rates, float(t[end - 1])


def _pair_time(beta: float, phi0: float, m_i: float, m_j: float) -> float:
    """Time for two Diracs (masses m_i, m_j, angle phi0) to come within the link angle."""
    def speed(phi):
        c = np.cos(phi)
        w_ij = m_j / (m_i * np.exp(beta * (1.0 - c)) + m_j)  # = m_j e^{b c} / (m_i e^b + m_j e^{b c})
        w_ji = m_i / (m_j * np.exp(beta * (1.0 - c)) + m_i)
        return np.sin(phi) * (w_ij + w_ji)

    return float(quad(lambda p: 1.0 / speed(p), LINK_ANGLE, phi0, limit=200)[0])


def _clusters(x) -> tuple[np.ndarray, np.ndarray]:
    """Angles (sorted) and masses of the clusters of tokens x (n, 2)."""
    labels = cluster_labels(x)
    angles, masses = [], []
    for lab in np.unique(labels):
        member = labels == lab
        c = x[member].mean(axis=0)
        angles.append(np.mod(np.arctan2(c[1], c[0]), 2.0 * np.pi))
        masses.append(member.mean())
    order = np.argsort(angles)
    return np.asarray(angles)[order], np.asarray(masses)[order]


def _dirac_velocity(beta: float, angles, masses) -> np.ndarray:
    """Angular SA velocity of Dirac clusters (weights = masses), docs/math.md §4.3."""
    diff = angles[None, :] - angles[:, None]  # theta_p - theta_q
    w = masses[None, :] * np.exp(beta * (np.cos(diff) - 1.0))
    return (w * np.sin(diff)).sum(axis=1) / w.sum(axis=1)


def _closing_ratio(beta: float, angles, masses, i: int, j: int) -> float:
    """Closing speed of the pair (i, j = next) with all clusters / with the pair alone."""
    v = _dirac_velocity(beta, angles, masses)
    pair = _dirac_velocity(beta, angles[[i, j]], masses[[i, j]])
    return float((v[i] - v[j]) / (pair[0] - pair[1]))


def _merge(beta: float, run: dict, k_meta: int, t_f: float) -> dict:
    """First merge after the plateau starts, and the pair-reduction bracket from the plateau's clusters.

    For each pair of neighbouring clusters: T_pair (the pair alone) and s0, the closing
    speed with every cluster over that of the pair alone at the plateau start. The other
    clusters only pull the pair apart, and less and less as it closes, so within the
    frozen-cluster reduction the pair merges in [T_pair, T_pair / s0] (never if s0 <= 0),
    and the first merge lies in [min T_pair, min T_pair / s0].
    """
    t, count = run["t"], run["count"]
    after = np.flatnonzero((t >= t_f) & (count == k_meta))
    out = {"t_plateau": float("nan"), "t_merge": float("nan"), "low": float("nan"), "high": float("nan")}
    if not len(after):
        return out
    ip = after[0]
    angles, masses = _clusters(run["x"][ip])
    k = len(angles)
    gaps = np.diff(np.append(angles, angles[0] + 2.0 * np.pi))
    pair = np.array([_pair_time(beta, gaps[i], masses[i], masses[(i + 1) % k]) for i in range(k)])
    ratio = np.array([_closing_ratio(beta, angles, masses, i, (i + 1) % k) for i in range(k)])
    upper = np.where(ratio > 0.0, pair / np.maximum(ratio, 1e-300), np.inf)
    q = int(np.argmin(pair))
    drop = np.flatnonzero((t > t[ip]) & (count < k_meta))
    out.update(t_plateau=float(t[ip]), low=float(pair.min()), high=float(upper.min()),
               closest_pair_s0=float(ratio[q]), phi0=float(gaps[q]),
               masses=[float(masses[q]), float(masses[(q + 1) % k])], gaps=gaps.round(4).tolist(),
               bare_scale=float(theory.merge_time_scale(beta, np.cos(gaps[q]))),
               t_merge=float(t[drop[0]]) if len(drop) else float("nan"),
               save_gap=float(t[drop[0]] - t[drop[0] - 1]) if len(drop) else float("nan"))
    return out


def _analyse(beta: float, label: str, run: dict, particles: bool) -> list:
    """Measure one run (formation, metastable count, growth rates, energy, merge); its checks."""
    k_star = theory.fastest_circle_mode(beta)
    lam = theory.circle_growth_rate(np.arange(1, N_MODES + 1), beta)
    lam_max = float(lam.max())
    t, energy = run["t"], run["energy"]
    t_f = _formation_time(t, energy)
    k_meta, share = _metastable_count(t, run["count"], t_f)
    rates, t_lin = _growth_rates(t, run["amplitude"])
    dec = float(np.max(-np.diff(energy) / energy[:-1]))  # < 0: E increased at every step
    run.update(t_f=t_f, k_meta=k_meta, share=share, rates=rates, t_lin=t_lin, max_rel_decrement=dec)
    checks = [check_close(f"{label}: metastable cluster count vs k*(beta)", k_meta, k_star, 1,
                          note=f"share of log time in [t_f, {WINDOW:g} t_f] per count: {share}")]
    for k in (k_star - 1, k_star, k_star + 1):
        checks.append(check_close(
            f"{label}: growth rate of mode {k} / lambda_{k}", rates[k - 1] / lam[k - 1], 1.0, RATE_TOL,
            note=f"fit over t <= {t_lin:.3g} (amplitudes <= {LINEAR_AMPLITUDE:g}); "
                 f"lambda_{k} = {lam[k - 1]:.4f}"))
    log_eps = np.log(1.0 / EPS)
    checks.append(check_close(
        f"{label}: formation time t_f * lambda_max / ln(1/eps)", t_f * lam_max / log_eps, 1.0,
        np.log(10.0) / log_eps,
        note=f"t_f = {t_f:.3g}, ln(1/eps)/lambda_max = {log_eps / lam_max:.3g}; "
             "O(1) amplitude at the inflection within a decade"))
    checks.append(check_range(
        f"{label}: largest relative energy decrement per saved step", dec, high=ENERGY_RTOL,
        note=f"{len(t) - 1} steps, negative = increased at every step; "
             f"E/(e^b/2b) {energy[0]:.4f} -> {energy[-1]:.4f}"))
    if particles:
        merge = run["merge"] = _merge(beta, run, k_meta, t_f)
        duration = merge["t_merge"] - merge["t_plateau"]
        # t_merge is the first saved time after the merge: late by up to one save gap
        high = (1.0 + MERGE_SLACK) * merge["high"] + merge["save_gap"]
        checks.append(check_range(
            f"{label}: first merge: (t_merge - t_plateau) / min T_pair", duration / merge["low"],
            1.0 - MERGE_SLACK, high / merge["low"],
            note=f"t_plateau={merge['t_plateau']:.3g}, t_merge={merge['t_merge']:.4g}, "
                 f"pair reduction [{merge['low']:.3g}, {merge['high']:.3g}] "
                 f"(phi0={merge.get('phi0', np.nan):.3f}, "
                 f"e^(b(1-cos phi0))={merge.get('bare_scale', np.nan):.3g})"))
    print(f"{label}: t_f={t_f:.3g} k_meta={k_meta} (k*={k_star}) share={share} "
          f"wall={run['wall']:.2f}s steps={run['steps']} dec={dec:.2e} "
          f"rates/lam={np.round(rates[k_star - 2:k_star + 1] / lam[k_star - 2:k_star + 1], 4)}"
          + (f" merge={run['merge']}" if particles else ""), flush=True)
    return checks


# ---------------------------------------------------------------------------------------
QUICK = {"betas": [4.0, 9.0], "seeds": [0], "M": 128, "n": 128, "T_grid": 60.0, "T_part": 300.0}
FULL = {"betas": [4.0, 9.0, 16.0], "seeds": [0, 1, 2], "M": 256, "n": 256, "T_grid": 100.0, "T_part": 3000.0}


def measure(params: dict) -> dict:
    """Grid and particle runs per beta and seed, analysed (with their checks) by ``_analyse``."""
    p = params
    betas, seeds, M, n, T_grid, T_part = (tuple(p["betas"]), tuple(p["seeds"]), p["M"], p["n"], p["T_grid"],
                                          p["T_part"])
    checks, results = [], {}
    for beta in betas:
        for seed in seeds:
            phases = _phases(seed)
            runs = {"grid": _grid_run(beta, M, T_grid, phases),
                    "particles": _particle_run(beta, n, T_part, phases)}
            for kind, one in runs.items():
                checks += _analyse(beta, f"beta={beta:g} seed={seed} {kind}", one, kind == "particles")
            results[beta, seed] = runs
    return {"checks": checks, "results": results, "betas": betas, "seeds": seeds, "M": M, "n": n,
            "T_grid": T_grid, "T_part": T_part}


def checks(results: dict) -> list:
    """The checks of every run, built by ``_analyse`` as it measures."""
    return results["checks"]


def _extra(results: dict) -> dict:
    r = results
    extra = {}
    for (beta, seed), runs in r["results"].items():
        extra[f"beta={beta:g} seed={seed}"] = {
            kind: {key: (val.tolist() if isinstance(val, np.ndarray) else val) for key, val in run.items()
                   if key in ("t_f", "k_meta", "share", "rates", "t_lin", "max_rel_decrement", "wall",
                              "steps", "merge", "mass_drift")}
            for kind, run in runs.items()}
        extra[f"beta={beta:g} seed={seed}"]["k_star"] = theory.fastest_circle_mode(beta)
        extra[f"beta={beta:g} seed={seed}"]["equal_spacing_merge_scale"] = float(
            theory.merge_time_scale(beta, np.cos(2.0 * np.pi / theory.fastest_circle_mode(beta))))
    extra["setup"] = {"eps": EPS, "modes": N_MODES, "M": r["M"], "n": r["n"], "T_grid": r["T_grid"],
                      "T_particles": r["T_part"], "seeds": list(r["seeds"])}
    return extra


def figure(results: dict):
    """Densities, cluster counts, mode amplitudes and energies per beta."""
    return _figure(results["results"], results["betas"])


def _figure(results, betas):
    from matplotlib.figure import Figure

    from ..plotting import legend_outside

    fig = Figure(figsize=(5.2 * len(betas), 13), layout="constrained")
    axes = fig.subplots(3, len(betas), squeeze=False)
    for col, beta in enumerate(betas):
        k_star = theory.fastest_circle_mode(beta)
        lam = theory.circle_growth_rate(np.arange(1, N_MODES + 1), beta)
        t_pred = np.log(1.0 / EPS) / lam.max()
        ax_c, ax_e, ax_g = axes[:, col]
        seeds = sorted(s for b, s in results if b == beta)
        for s in seeds:
            runs = results[beta, s]
            alpha, lw = (1.0, 1.6) if s == seeds[0] else (0.45, 0.9)
            for kind, color in (("grid", "C0"), ("particles", "C3")):
                run = runs[kind]
                lab = kind
                t = run["t"][1:]
                ax_c.step(t, run["count"][1:], where="post", color=color, alpha=alpha, lw=lw,
                          label=lab if s == seeds[0] else None)
                ax_e.semilogx(t, run["energy"][1:], color=color, alpha=alpha, lw=lw,
                              label=lab if s == seeds[0] else None)
                if s == seeds[0]:
                    ax_g.plot(np.arange(1, N_MODES + 1), run["rates"], "o" if kind == "grid" else "x",
                              color=color, label=f"{kind}: fitted rate (linear phase)")
            merge = runs["particles"].get("merge", {})
            if np.isfinite(merge.get("low", np.nan)):
                ax_c.axvspan(merge["t_plateau"] + merge["low"], merge["t_plateau"] + min(merge["high"], 1e5),
                             color="C3", alpha=0.12 if s == seeds[0] else 0.06,
                             label="first merge, pair reduction" if s == seeds[0] else None)
        ax_c.axhline(k_star, color="k", ls="--", label=f"$k^*(\\beta) = {k_star}$")
        ax_c.axhspan(k_star - 1, k_star + 1, color="0.9", zorder=0, label=r"$k^* \pm 1$")
        ax_c.axvline(t_pred, color="C2", ls="--", label=r"$\ln(1/\varepsilon)/\lambda_{\max}$")
        ax_c.set_xscale("log")
        ax_c.set_ylim(0.0, 2 * k_star + 2)
        ax_c.set_xlabel("$t$")
        ax_c.set_ylabel("cluster count (particles) / density peaks (grid)")
        ax_c.set_title(f"$\\beta={beta:g}$: cluster count (particles start at $n$)")
        legend_outside(ax_c, fontsize="x-small")
        ax_e.axhline(ive(0, beta), color="0.5", ls="--", label=r"uniform: $e^{-\beta} I_0(\beta)$")
        ax_e.axhline(1.0 / k_star, color="k", ls="--", label=r"$k^*$ equal clusters: $1/k^*$")
        ax_e.axvline(t_pred, color="C2", ls="--")
        ax_e.set_xlabel("$t$")
        ax_e.set_ylabel(r"$\mathsf{E}_\beta\,/\,(e^\beta/2\beta)$")
        ax_e.set_title(f"$\\beta={beta:g}$: normalized energy (non-decreasing)")
        legend_outside(ax_e, fontsize="x-small")
        kk = np.arange(1, N_MODES + 1)
        ax_g.plot(kk, lam, "k--", label=r"$\lambda_k = k^2 I_k(\beta) / (\beta I_0(\beta))$")
        ax_g.axvline(k_star, color="0.5", ls=":", label=f"$k^* = {k_star}$")
        ax_g.set_xlabel("mode $k$")
        ax_g.set_ylabel(r"growth rate $\lambda_k$")
        ax_g.set_title(f"$\\beta={beta:g}$: linear growth of the uniform state")
        legend_outside(ax_g, fontsize="x-small")
    return fig


VALIDATION = Validation(name=NAME, theory=THEORY, measure=measure, checks=checks, figure=figure,
                        quick=QUICK, full=FULL, extra=_extra, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(run(VALIDATION))
