"""The (beta, t) phase diagram of SA on the circle: one cluster for beta <= 1, k* clusters at large beta.

Theory (docs/math.md §2.4-2.6; GLPR arXiv 2312.10794, phase-diagrams.py defaults): SA, d = 2,
n = 32 tokens i.i.d. uniform on the circle, T = 30; the statistic is the fraction of pairs
with <x_i, x_j> > 0.999 (clustering.clustered_pair_fraction): 1 for one cluster, about
1/k for k clusters. Full mode: beta in linspace(0.1, 9, 25), 256 independent systems per
beta; quick: linspace(0.1, 9, 13), 24 systems per beta. RK4, dt = 0.1 (the package's
default method; the authors use Euler + normalisation with the same dt), saved every 0.5.

Integrator: all systems of the diagram (every beta, every seed) are one batch of
tp.simulate (x0 of shape (S, n, d), SoftmaxAttention with beta of shape (S,), rk4, dt =
0.1). The batch is checked against separate calls here: its field equals
tp.TokenDynamics(tp.SoftmaxAttention(beta)).velocity to <= 1e-12 on initial, intermediate
and clustered states, and whole trajectories of one system per beta (quick) or two (full)
equal separate tp.simulate(..., method="rk4", dt=0.1) runs to <= 1e-10 (the same kernel on
the same numbers: measured 0; the bound allows round-off, ~1e-16, amplified by the linear
instability, e^{0.7 t_f} ~ 70) with identical pair fractions.

Checks against theory:
- beta <= 1 (Criscitiello-Boumal, docs/math.md §2.5 `thm: beta.tiny`, d = 2): almost every
  system ends in one cluster, so 1 - mean fraction at T must be at most what systems still
  merging at T can account for: the tail of the merge times t_1 (first time with fraction
  1), fitted by an exponential above their 75th percentile (censored at T, maximum
  likelihood), gives P(t_1 > T); tolerance P + 3 sqrt(P / S) for S systems (a system
  with two clusters or a straggler contributes a deficit <= 1). Measured: every system
  is one cluster by t ~ 15-18.
- large beta (k* = argmax k^2 I_k(beta) >= 3, beta >= 3.17; theory.fastest_circle_mode):
  at the formation time t_f(beta) = ln(sqrt(n)) / lambda_k* + ln(1000) / 2 (the fastest
  mode grows from the sampling amplitude n^-1/2 at lambda_k* = k^2 I_k / (beta I_0), then
  1 - <x_i, x_j> contracts at rate 2 (docs/math.md §4.4) from O(1) to the threshold 1e-3) the
  mean fraction lies between (n/(k*+1) - 1)/(n - 1) (k*+1 equal clusters) and 1/(k*-1)
  (k*-1 clusters of random, multinomial sizes, whose mean fraction is exactly 1/k), up to
  3 standard errors. The +-1: with n = 32 the initial Fourier amplitudes of the empirical
  measure are random (|c_k|^2 ~ exponential, mean 1/n) and at beta = 9 lambda_3, lambda_4,
  lambda_5 = 0.59, 0.70, 0.66 differ by e^{0.3} at most over the growth phase, so the mode
  that wins in one system is k* +- 1. At beta = 9 the fraction at T must also stay below
  that of two equal clusters, 15/31 (metastable multi-cluster states: a merge of clusters
  with inner product rho takes ~e^{beta(1 - rho)}, docs/math.md §4.3).
- clusters do not split: the seed-averaged increment of the fraction between consecutive
  saved times must be >= -4 standard errors (of the paired increments) at every (beta, t)
  (4: a false alarm among the ~700-1500 cells has probability ~5% at most).
  (Single systems do dip by one or two pairs, 1/496 each, when a cluster is stretched by
  a neighbour it merges with; measured ~1e-3 of all increments.)
- full mode: halving dt to 0.05 on a subset changes the mean fraction by less than its
  sampling error (the diagram is converged in dt).

Overlays in the figure: the beta where k* changes (1.05, 3.17, 6.21; beta <= 1 has k* =
1, consistent with the theorem), t_f(beta), and for reference the d -> infinity
equiangular prediction gamma_beta(t) = 0.999 (docs/math.md §2.5 `eq: gamma.infty`), which does
not apply at d = 2 (at large beta the circle clusters far sooner than orthogonal tokens).

Run: python -m transformer_pde.validation.phase_diagram [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
import time

import numpy as np

import transformer_pde as tp
from transformer_pde import theory
from transformer_pde.checks import Validation, check_range, run
from transformer_pde.clustering import PAIR_THRESHOLD, clustered_pair_fraction

__all__ = ["VALIDATION", "measure", "checks", "figure"]

NAME = "phase_diagram"
THEORY = ("Phase diagram of SA on the circle (n = 32, docs/math.md §2.5-2.6): one cluster for beta <= 1 "
          "(Criscitiello-Boumal), about k* = argmax k^2 I_k(beta) metastable clusters at large beta "
          "(pair fraction between the k*+1 and k*-1 cluster values at the formation time), and a "
          "pair fraction non-decreasing in t on average.")

N, D, T, DT = 32, 2, 30.0, 0.1
T_EVAL = np.linspace(0.0, T, 61)
BETA_SMALL = 1.0


# ---------------------------------------------------------------------------------------
# the batch: every system of the diagram in one tp.simulate call
# ---------------------------------------------------------------------------------------
def _integrate(x0, beta, dt, keep=False):
    """RK4 of the systems x0 (S, n, d) with beta scalar or (S,), in one batched tp.simulate.

    Returns the pair fractions (nt, S) and, with keep, the states (nt, S, n, d).
    """
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta))
    states = tp.simulate(dyn, x0, (0.0, T), t_eval=T_EVAL, method="rk4", dt=dt).x
    S = len(x0)
    frac = np.asarray(clustered_pair_fraction(states.reshape(-1, N, D))).reshape(len(T_EVAL), S)
    return frac, (states if keep else None)


def _initial(seed, systems):
    angles = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi, (systems, N))
    return np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def _validate_batch(betas, x0s, frac, states, per_beta):
    """The batch against separate tp.simulate calls of single systems."""
    v_err, x_err, f_mismatch = 0.0, 0.0, 0
    for i, beta in enumerate(betas):
        dyn = tp.TokenDynamics(tp.SoftmaxAttention(float(beta)))
        for j in range(per_beta):
            traj = tp.simulate(dyn, x0s[i][j], (0.0, T), t_eval=T_EVAL, method="rk4", dt=DT)
            x_err = max(x_err, float(np.abs(traj.x - states[i][:, j]).max()))
            f_mismatch += int(np.sum(clustered_pair_fraction(traj) != frac[i][:, j]))
            for state in (traj.x[0], traj.x[len(T_EVAL) // 6], traj.x[-1]):
                batch = tp.TokenDynamics(tp.SoftmaxAttention(np.array([beta, beta])))
                v = batch.velocity(np.stack([state, state]))
                v_err = max(v_err, float(np.abs(v - dyn.velocity(state)).max()))
    checks = [
        check_range("batched SA field vs TokenDynamics.velocity: max abs difference", v_err, 0.0, 1e-12,
                    note=f"{len(betas)} beta x {per_beta} systems x 3 states (t = 0, 5, 30)"),
        check_range("batched tp.simulate vs separate tp.simulate(method='rk4', dt=0.1): max |x| "
                    "difference over t <= 30", x_err, 0.0, 1e-10,
                    note="round-off amplified by the linear instability"),
        check_range("pair fractions differing between batched and separate tp.simulate trajectories",
                    f_mismatch, 0, 0, note=f"{len(betas) * per_beta * len(T_EVAL)} (system, t) values"),
    ]
    return checks, {"velocity_err": v_err, "trajectory_err": x_err}


# ---------------------------------------------------------------------------------------
# theory
# ---------------------------------------------------------------------------------------
def _k_star(beta):
    return theory.fastest_circle_mode(float(beta))


def _formation_time(beta):
    """ln(sqrt(n)) / lambda_k* + ln(1/(1 - 0.999)) / 2."""
    lam = float(theory.circle_growth_rate(_k_star(beta), float(beta), "SA"))
    return np.log(np.sqrt(N)) / lam + np.log(1.0 / (1.0 - PAIR_THRESHOLD)) / 2.0


def _band(k):
    """(fraction of k+1 equal clusters, mean fraction of k-1 multinomial-size clusters)."""
    low = (N / (k + 1) - 1.0) / (N - 1.0)
    high = 1.0 / (k - 1) if k > 1 else 1.0
    return low, high


def _k_changes(betas_fine):
    ks = np.array([_k_star(b) for b in betas_fine])
    idx = np.nonzero(np.diff(ks))[0]
    return [(0.5 * (betas_fine[i] + betas_fine[i + 1]), int(ks[i]), int(ks[i + 1])) for i in idx]


def _merge_tail(frac_small):
    """Merge times t_1 (first saved time with fraction 1) pooled over systems; the
    exponential-tail estimate of P(t_1 > T) (right-censored at T)."""
    done = frac_small >= 1.0  # (nt, S)
    finished = done.any(axis=0)
    t1 = np.where(finished, T_EVAL[np.argmax(done, axis=0)], np.inf)
    u = float(np.percentile(np.minimum(t1, T), 75))
    above = t1 > u
    events = int(np.sum(above & finished))
    exposure = float(np.sum(np.minimum(t1[above], T) - u))
    if exposure <= 0.0:
        return t1, 0.0, u
    rate = events / exposure if events > 0 else 1.0 / exposure
    p_tail = float(np.mean(above)) * np.exp(-rate * (T - u))
    return t1, p_tail, u


QUICK = {"n_betas": 13, "seeds": 24, "per_beta_check": 1, "dt_check": False}
FULL = {"n_betas": 25, "seeds": 256, "per_beta_check": 2, "dt_check": True}


def measure(params: dict) -> dict:
    """The diagram (pair fraction per beta, t and system) and its checks, built as it is analysed.

    ``params``: ``n_betas`` values of beta in [0.1, 9], ``seeds`` systems per beta,
    ``per_beta_check`` systems per beta re-run as separate tp.simulate calls, ``dt_check``
    (re-run a subset with dt / 2).
    """
    started = time.perf_counter()
    betas = np.linspace(0.1, 9.0, params["n_betas"])
    seeds, per_beta_check = params["seeds"], params["per_beta_check"]
    x0s = [_initial(1000 + i, seeds) for i in range(len(betas))]
    # one batch of len(betas) * seeds systems, beta per system
    all_frac, all_states = _integrate(np.concatenate(x0s), np.repeat(betas, seeds), DT, keep=True)
    frac = [all_frac[:, i * seeds:(i + 1) * seeds] for i in range(len(betas))]  # each (nt, seeds)
    states = [all_states[:, i * seeds:(i + 1) * seeds] for i in range(len(betas))]
    print(f"diagram done ({time.perf_counter() - started:.1f} s)", flush=True)
    checks, info = _validate_batch(betas, x0s, frac, states, per_beta_check)
    del states, all_states
    print(f"batch validated ({time.perf_counter() - started:.1f} s)", flush=True)
    F = np.stack(frac, axis=1)  # (nt, nbeta, seeds)
    mean = F.mean(axis=2)
    se = F.std(axis=2, ddof=1) / np.sqrt(seeds)

    # beta <= 1: one cluster
    small = betas <= BETA_SMALL
    pooled = F[:, small, :].reshape(len(T_EVAL), -1)
    t1, p_tail, u = _merge_tail(pooled)
    S = pooled.shape[1]
    deficit = 1.0 - float(pooled[-1].mean())
    tol = p_tail + 3.0 * np.sqrt(p_tail / S)
    checks.append(check_range(
        f"beta <= 1 (beta = {', '.join(f'{b:.2f}' for b in betas[small])}): 1 - mean pair fraction at T=30",
        deficit, 0.0, tol,
        note=f"single cluster a.e.; {S} systems, {int(np.sum(pooled[-1] < 1))} not one cluster at T; "
             f"merge times t_1: median {np.median(t1):.1f}, max {np.max(t1):.1f}; exponential tail above "
             f"{u:.1f} gives P(t_1 > T) = {p_tail:.2g}"))

    # large beta: k* +- 1 clusters at the formation time
    t_form = np.array([_formation_time(b) for b in betas])
    i_form = np.array([int(np.argmin(np.abs(T_EVAL - tf))) for tf in t_form])
    at_form = mean[i_form, np.arange(len(betas))]
    se_form = se[i_form, np.arange(len(betas))]
    ks = np.array([_k_star(b) for b in betas])
    bands = np.array([_band(k) for k in ks])
    large = ks >= 3
    outside = [(b, f) for b, f, s, (lo, hi), big in zip(betas, at_form, se_form, bands, large, strict=True)
               if big and not (lo - 3 * s <= f <= hi + 3 * s)]
    ib = len(betas) - 1
    lo, hi = bands[ib]
    checks.append(check_range(
        f"beta={betas[ib]:g} (k*={ks[ib]}): mean pair fraction at t_f={T_EVAL[i_form[ib]]:g}",
        at_form[ib], lo - 3 * se_form[ib], hi + 3 * se_form[ib],
        note=f"between k*+1 equal clusters ({lo:.3f}) and k*-1 random-size clusters ({hi:.3f}) +- 3 s.e. "
             f"({se_form[ib]:.2g}); 1/k* = {1 / ks[ib]:.3f}"))
    checks.append(check_range(
        f"beta >= 3.17 (k* >= 3, {int(large.sum())} values): number with the fraction at t_f outside "
        "the k*+-1 band", len(outside), 0, 0,
        note="; ".join(f"beta={b:.2f}: {f:.3f}" for b, f in outside) or "all inside"))
    two = (N / 2 - 1.0) / (N - 1.0)
    checks.append(check_range(
        f"beta={betas[ib]:g}: mean pair fraction at T=30 (metastable, several clusters)",
        mean[-1, ib], 0.0, two - 3 * se[-1, ib],
        note=f"below two equal clusters ({two:.3f}) - 3 s.e.; merges take ~e^(beta(1-rho))"))

    # monotone in t on average
    inc = np.diff(F, axis=0)  # (nt-1, nbeta, seeds)
    inc_mean = inc.mean(axis=2)
    inc_se = inc.std(axis=2, ddof=1) / np.sqrt(seeds)
    # z-score of the seed-averaged increment; a cell where every system moved by the same
    # amount has s.e. 0 and counts as -inf if that amount is negative
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(inc_se > 0, inc_mean / inc_se, np.where(inc_mean < 0, -np.inf, np.inf))
    w = np.unravel_index(np.argmin(z), z.shape)
    checks.append(check_range(
        "min over (beta, t) of (mean increment of the pair fraction) / s.e.", float(z[w]), -4.0,
        note=f"clusters do not split; at beta={betas[w[1]]:.2f}, t={T_EVAL[w[0]]:g}: increment "
             f"{inc_mean[w]:.2g}; most negative mean increment {inc_mean.min():.2g}; single-system "
             f"decreases: {int(np.sum(inc < 0))} of {inc.size}, largest {inc.min():.3g}"))

    if params["dt_check"]:
        sub = [0, len(betas) // 2, len(betas) - 1]
        diffs = []
        for i in sub:
            x0 = x0s[i][:64]
            fine = _integrate(x0, betas[i], DT / 2)[0].mean(axis=1)
            coarse = frac[i][:, :64].mean(axis=1)
            diffs.append(float(np.max(np.abs(fine - coarse))))
        se_sub = float(np.max(se[:, sub]) * np.sqrt(seeds / 64))
        checks.append(check_range(
            f"dt = 0.05 vs 0.1: max |change of the mean fraction| (beta = "
            f"{', '.join(f'{betas[i]:.2f}' for i in sub)}, 64 systems)", max(diffs), 0.0, se_sub,
            note="below the sampling error (largest s.e. of a 64-system mean) of the diagram"))
        info["dt_change"] = diffs

    return {"checks": checks, "betas": betas, "seeds": seeds, "mean": mean, "se": se, "t_form": t_form,
            "at_form": at_form, "se_form": se_form, "ks": ks, "p_tail": p_tail, "info": info}


def checks(results: dict) -> list:
    """The checks of the diagram, built by ``measure`` as it analyses the runs."""
    return results["checks"]


def _extra(results: dict) -> dict:
    r = results
    return {"betas": r["betas"].tolist(), "seeds": r["seeds"], "t": T_EVAL.tolist(),
            "mean_fraction": r["mean"].tolist(), "formation_time": r["t_form"].tolist(),
            "fraction_at_formation": r["at_form"].tolist(), "k_star": r["ks"].tolist(),
            "fraction_at_T": r["mean"][-1].tolist(), "merge_time_tail_p": r["p_tail"], **r["info"]}


def figure(results: dict):
    """The (beta, t) diagram, the fraction at formation against the k* bands."""
    r = results
    return _figure(r["betas"], r["mean"], r["se"], r["t_form"], r["at_form"], r["se_form"], r["ks"])


def _figure(betas, mean, se, t_form, at_form, se_form, ks):
    from matplotlib.figure import Figure

    from ..plotting import legend_outside, plot_phase_diagram

    fig = Figure(figsize=(17, 5.2), layout="constrained")
    ax_map, ax_beta, ax_t = fig.subplots(1, 3)
    plot_phase_diagram(T_EVAL, betas, mean.T, ax=ax_map, vmin=0.0, vmax=1.0,
                       label=r"mean fraction of pairs with $\langle x_i, x_j\rangle > 0.999$")
    fine = np.linspace(betas[0], betas[-1], 400)
    for b, k0, k1 in _k_changes(fine):
        ax_map.axhline(b, color="w", ls="--", lw=1)
        ax_map.text(T * 0.98, b + 0.08, f"$k^*$ {k0} $\\to$ {k1}", color="w", ha="right", va="bottom",
                    fontsize=8)
    ax_map.plot([_formation_time(b) for b in fine], fine, "--", color="orange", lw=1.5,
                label=r"$t_f$: growth of mode $k^*$ + contraction")
    eq = np.array([float(theory.equiangular_time(PAIR_THRESHOLD, N, b, "SA")) for b in fine])
    keep = eq <= T
    ax_map.plot(eq[keep], fine[keep], ":", color="r", lw=1.5,
                label=r"$d \to \infty$ equiangular $\rho = 0.999$")
    ax_map.set_xlim(0, T)
    ax_map.set_title(f"SA on the circle, $n={N}$: pair fraction")
    legend_outside(ax_map, side="below", fontsize="x-small")

    lows = np.array([_band(k)[0] for k in ks])
    highs = np.array([_band(k)[1] for k in ks])
    ax_beta.fill_between(betas, lows, highs, step="mid", color="C0", alpha=0.15, label=r"$k^* \pm 1$ band")
    ax_beta.step(betas, 1.0 / ks, "--", where="mid", color="C0", label=r"$1/k^*(\beta)$")
    ax_beta.errorbar(betas, at_form, yerr=3 * se_form, fmt="o", color="C1", ms=4, capsize=3,
                     label=r"measured at $t_f(\beta)$ (3 s.e.)")
    ax_beta.errorbar(betas, mean[-1], yerr=3 * se[-1], fmt="s", color="C2", ms=4, capsize=3,
                     label=f"measured at $T={T:g}$")
    ax_beta.axvline(BETA_SMALL, color="0.5", lw=0.8)
    ax_beta.set_xlabel(r"$\beta$")
    ax_beta.set_ylabel("mean pair fraction")
    ax_beta.set_title(r"pair fraction vs $\beta$ (theory dashed)")
    ax_beta.legend(fontsize="x-small", loc="best")

    picks = sorted({0, int(np.argmin(np.abs(betas - 2.0))), int(np.argmin(np.abs(betas - 5.0))),
                    len(betas) - 1})
    for c, i in enumerate(picks):
        ax_t.plot(T_EVAL, mean[:, i], "-", color=f"C{c}", label=f"$\\beta={betas[i]:.2f}$ ($k^*={ks[i]}$)")
        ax_t.fill_between(T_EVAL, mean[:, i] - 3 * se[:, i], mean[:, i] + 3 * se[:, i], color=f"C{c}",
                          alpha=0.2)
        ax_t.axhline(1.0 / ks[i], color=f"C{c}", ls="--", lw=1)
        ax_t.axvline(t_form[i], color=f"C{c}", ls=":", lw=1)
    ax_t.set_xlabel("$t$")
    ax_t.set_ylabel("mean pair fraction")
    ax_t.set_title(r"fraction vs $t$ (dashed: $1/k^*$, dotted: $t_f$)")
    ax_t.legend(fontsize="x-small", loc="best")
    return fig


VALIDATION = Validation(name=NAME, theory=THEORY, measure=measure, checks=checks, figure=figure,
                        quick=QUICK, full=FULL, extra=_extra, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(run(VALIDATION))
