r"""Tokens on S^2 cluster to one point; hemisphere data collapse at the linearized rate.

Theory (docs/math.md §2.3, 2.5, 4.2, 6 item 11):

(1) ``thm:clustering_finite``: for d >= 3, n >= 2, any beta >= 0 and a.e. initial data,
SA and USA (Q = K = V = I) converge to a single point, and the energy
E_beta = (1/(2 beta n^2)) sum_ij e^{beta <x_i, x_j>} is non-decreasing along both
(dissipation identities of docs/math.md §2.3), so it ends at its maximum e^beta/(2 beta)
(normalized energy E_beta / (e^beta/(2 beta)) = 1). Measured: n tokens uniform on S^2
(d = 3), beta in {1, 4}, several seeds, dopri5 (rtol 1e-9): USA speeds scale like e^beta
and beta = 4 has long metastable phases (a few clusters, merging on the time scale
e^{beta(1 - rho)}), so the run is continued in chunks (doubling the end time) until the
cluster count (clustering.cluster_count, <x_i, x_j> > 0.9999) is 1, then for 10 more
contraction times 10/r (r = 1 for SA, e^beta for USA, see (2)). Checks: final cluster
count 1; E_norm(t_{k+1}) - E_norm(t_k) >= -2(2n + 3 beta + 4) eps at every saved time
(the round-off of evaluating E_norm <= 1: inner products and exponentials to
(3 beta + 2) eps relative, two length-n sums to n eps each, two evaluations); and
|1 - E_norm(T)| <= 10 beta 1e-4 e^{-20}: at the clustering time 1 - rho <= 1e-4, it then
decays like e^{-2 r t} for 10/r, and 1 - E_norm <= beta (1 - min rho).

(2) Cone collapse (``lem: hemisphere.clustering`` / ``thm:cone-collapse``). Tokens in a
cap of half-angle theta_0 = 60 deg around w = e_3 collapse exponentially.
Late-time rate, derived here: near consensus at c write x_i = c + u_i + O(|u|^2) with
u_i orthogonal to c. The weights are a_ij = abar + O(beta |u|^2), abar = 1/n (SA) or
e^beta/n (USA), so sum_j a_ij x_j = n abar (c + ubar) + O(|u|^2), and since
<x_i, c + ubar> = 1 + O(|u|^2), P^perp_{x_i}(c + ubar) = ubar - u_i + O(|u|^2). Hence
du_i/dt = r (ubar - u_i), r = n abar: ubar is constant to first order and every
difference u_i - u_j decays like e^{-r t}; so the diameter D = max |x_i - x_j| decays
like e^{-r t} with r = 1 (SA; 1 - rho ~ e^{-2t}) and r = e^beta (USA), independent of n
and (for SA) of beta, with relative corrections O((1 + beta) D^2). Measured: D(t) from
RK4 with h r = 0.05 (the RK4 rate error (h r)^4/120 = 5e-8); the exponential rate is the
least-squares slope of log D over the window 1e-9 <= D <= 1e-3, where the nonlinear
corrections are <= (1 + beta) 1e-6 = 5e-6: the fitted rate must equal r within 1e-5 r
and the fit residual of log D must be <= 1e-5 (a straight line).
The theorem's rate 2 m r_0: the statement (docs/math.md §2.5) writes, in the chart y = x / <x, w>,
the consensus system dy_i/dt = sum_j b_ij (y_j - y_i) with b_ij >= m r_0 and width <~ e^{-2 m r_0 t},
but does not define m and r_0. The chart computation gives b_ij = a_ij <x_j, w>/<x_i, w>
(a_ij the attention weight of the model: softmax for SA, e^{beta <x_i, x_j>}/n for USA);
the cap {<x, w> >= r_0}, r_0 = min_i <x_i(0), w>, is a ball in the chart, so it is
invariant (consensus shrinks the hull of the y_i), hence b_ij >= m r_0 with
m = a lower bound on the weights in the cap (pairwise inner products >= 2 r_0^2 - 1):
m = e^{-beta (2 - 2 r_0^2)}/n (SA), e^{beta (2 r_0^2 - 1)}/n (USA). The max and min of
<y_i, e> over i then move towards each other at speed >= b times the width, so every
width, hence the chart diameter, obeys D_y(t) <= D_y(0) e^{-2 m r_0 t}. Keeping all n
terms instead of one (d max/dt <= b sum_j (<y_j, e> - max), likewise for the min) gives
the sharper D_y(t) <= D_y(0) e^{-n m r_0 t} (derived here). With these definitions we
check both envelopes at every saved time t > 0 (while D_y >= 1e-10, above the round-off
of the distances) and that the fitted late rate is >= 2 m r_0 (it is far above: the
weight bound m is attained only at the initial spread).

Run: python -m transformer_pde.validation.sphere_clustering [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
import time

import numpy as np
from scipy.spatial.distance import pdist

import transformer_pde as tp
from transformer_pde import clustering as cl
from transformer_pde.checks import Validation, check_close, check_range, run

__all__ = ["VALIDATION", "measure", "checks", "figure"]

NAME = "sphere_clustering"
THEORY = ("Clustering on S^2 (docs/math.md §2.3, 2.5, 4.2): uniform tokens reach one cluster for SA and "
          "USA with non-decreasing energy ending at e^beta/(2 beta); hemisphere data collapse "
          "exponentially at the linearized rate 1 (SA) or e^beta (USA), above the cone-collapse "
          "bound 2 m r_0.")

MODELS = ("SA", "USA")
BETAS = (1.0, 4.0)
EPS = np.finfo(float).eps
THETA0 = np.pi / 3  # cap half-angle of the hemisphere data
W_AXIS = np.array([0.0, 0.0, 1.0])
MARGIN = 10.0  # contraction times simulated after the cluster forms
WINDOW = (1e-9, 1e-3)  # diameter window of the late-rate fit


def _attention(model, beta):
    return (tp.SoftmaxAttention if model == "SA" else tp.UnnormalizedAttention)(beta)


def _rate(model, beta):
    """Linearized contraction rate at a single cluster: 1 (SA), e^beta (USA)."""
    return 1.0 if model == "SA" else float(np.exp(beta))


def _uniform(n, seed):
    x = np.random.default_rng(seed).standard_normal((n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cap(n, seed):
    """n points uniform on the cap <x, e_3> >= cos THETA0."""
    rng = np.random.default_rng(1000 + seed)
    h = rng.uniform(np.cos(THETA0), 1.0, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    s = np.sqrt(1.0 - h * h)
    return np.stack([s * np.cos(phi), s * np.sin(phi), h], axis=1)


# ---------------------------------------------------------------------------------------
# (1) uniform initial data
# ---------------------------------------------------------------------------------------
def _run_until_clustered(dyn, x0, rate, saves=40, t_max_units=3e5):
    """Simulate in chunks until one cluster has lasted MARGIN / rate; returns (t, x, t_one).

    t_one is the first saved time from which the cluster count stays 1 (None if never)."""
    unit = 1.0 / rate
    ts, xs = [np.zeros(1)], [x0[None]]
    t_now, x, t_end, t_one = 0.0, x0, 20.0 * unit, None
    while True:
        start = 1e-2 * unit if t_now == 0.0 else t_now
        t_eval = np.geomspace(start, t_end, saves + 1)
        t_eval = t_eval if t_now == 0.0 else t_eval[1:]
        traj = tp.simulate(dyn, x, (t_now, t_end), t_eval=t_eval, method="dopri5",
                           rtol=1e-9, atol=1e-12)
        ts.append(traj.t)
        xs.append(traj.x)
        t_now, x = t_end, traj.x[-1]
        counts = cl.cluster_count(np.concatenate(xs))
        t_all = np.concatenate(ts)
        if counts[-1] == 1:
            t_one = float(t_all[np.flatnonzero(counts != 1)[-1] + 1])
            if t_now >= t_one + MARGIN * unit * (1.0 - 1e-12):
                break
            t_end = t_one + MARGIN * unit
        else:
            t_one = None
            t_end = 2.0 * t_now
        if t_now >= t_max_units * unit:
            break
    return np.concatenate(ts), np.concatenate(xs), t_one


def _uniform_part(n, seeds):
    checks, runs, info = [], {}, {}
    for model in MODELS:
        for beta in BETAS:
            dyn = tp.TokenDynamics(_attention(model, beta))
            r = _rate(model, beta)
            finals, min_steps, gaps, t_ones = [], [], [], []
            for seed in seeds:
                t, x, t_one = _run_until_clustered(dyn, _uniform(n, seed), r)
                energy = cl.interaction_energy(x, beta, normalized=True)
                counts = cl.cluster_count(x)
                runs[model, beta, seed] = (t, energy, counts, x)
                finals.append(int(counts[-1]))
                min_steps.append(float(np.min(np.diff(energy))))
                gaps.append(float(abs(1.0 - energy[-1])))
                t_ones.append(t_one)
            tag = f"{model} beta={beta:g} n={n}"
            checks.append(check_range(
                f"{tag}: final cluster count (max over {len(seeds)} seeds)", max(finals), 1, 1,
                note="clustering.cluster_count, <x_i,x_j> > 0.9999; clustering times "
                     + ", ".join("none" if s is None else f"{s:.3g}" for s in t_ones)))
            tol_step = 2.0 * (2 * n + 3.0 * beta + 4.0) * EPS
            checks.append(check_range(
                f"{tag}: min over seeds and saved steps of E_norm(t_k+1) - E_norm(t_k)",
                min(min_steps), low=-tol_step,
                note="energy non-decreasing; tolerance = round-off of E_norm <= 1"))
            tol_end = 10.0 * beta * 1e-4 * np.exp(-2.0 * MARGIN)
            checks.append(check_range(
                f"{tag}: max over seeds |1 - E(T) / (e^beta/(2 beta))|", max(gaps), high=tol_end,
                note=f"maximum of E_beta reached; run {MARGIN:g} contraction times past clustering"))
            info[f"{model}_beta{beta:g}"] = {"t_cluster": t_ones, "final_count": finals,
                                             "min_energy_step": min_steps, "final_1_minus_E": gaps,
                                             "T": [float(runs[model, beta, s][0][-1]) for s in seeds]}
    return checks, runs, info


# ---------------------------------------------------------------------------------------
# (2) hemisphere initial data
# ---------------------------------------------------------------------------------------
def _weight_bound(model, beta, n, r0):
    """Lower bound m of the attention weights in the cap <x, w> >= r0."""
    rho_min = 2.0 * r0 * r0 - 1.0
    if model == "SA":
        return float(np.exp(-beta * (1.0 - rho_min)) / n)
    return float(np.exp(beta * rho_min) / n)


def _fit(t, diam):
    sel = (diam >= WINDOW[0]) & (diam <= WINDOW[1])
    slope, icept = np.polyfit(t[sel], np.log(diam[sel]), 1)
    resid = np.log(diam[sel]) - (slope * t[sel] + icept)
    return -slope, icept, float(np.max(np.abs(resid))), int(sel.sum())


def _hemisphere_part(n, seeds):
    checks, runs, info = [], {}, {}
    for model in MODELS:
        for beta in BETAS:
            r = _rate(model, beta)
            dyn = tp.TokenDynamics(_attention(model, beta))
            h = 0.05 / r
            T = 35.0 / r
            t = np.linspace(0.0, T, 701)
            rates, resids, env, env_n, bounds = [], [], [], [], []
            for seed in seeds:
                x0 = _cap(n, seed)
                traj = tp.simulate(dyn, x0, (0.0, T), t_eval=t, method="rk4", dt=h)
                diam = np.array([pdist(xk).max() for xk in traj.x])
                y = traj.x / np.einsum("tnd,d->tn", traj.x, W_AXIS)[..., None]
                diam_y = np.array([pdist(yk).max() for yk in y])
                rate, icept, resid, npts = _fit(t, diam)
                r0 = float(np.min(x0 @ W_AXIS))
                m = _weight_bound(model, beta, n, r0)
                bound_rate = 2.0 * m * r0
                ok = (diam_y >= 1e-10) & (t > 0)
                log_ratio = np.log(diam_y[ok] / diam_y[0])
                excess = log_ratio + bound_rate * t[ok]
                excess_n = log_ratio + n * m * r0 * t[ok]
                rates.append(rate)
                resids.append(resid)
                env.append(float(excess.max()))
                env_n.append(float(excess_n.max()))
                bounds.append(bound_rate)
                runs[model, beta, seed] = {"t": t, "diam": diam, "rate": rate, "icept": icept,
                                           "bound_rate": bound_rate, "sharp_rate": n * m * r0,
                                           "diam_y": diam_y,
                                           "x": traj.x[[0, 140, -1]] if seed == seeds[0] else None}
                # RK4's exact amplification on the linear mode e^{-r t}, for the record
                z = -h * r
                rk4_rate = -np.log(1 + z + z * z / 2 + z ** 3 / 6 + z ** 4 / 24) / h
                info[f"{model}_beta{beta:g}_seed{seed}"] = {
                    "fitted_rate": rate, "predicted_rate": r, "rk4_discrete_rate": float(rk4_rate),
                    "max_fit_residual": resid, "fit_points": npts, "r0": r0, "m": m,
                    "theorem_rate_2m_r0": bound_rate, "sharper_rate_n_m_r0": n * m * r0,
                    "max_envelope_excess": float(excess.max()),
                    "max_sharper_envelope_excess": float(excess_n.max())}
            tag = f"{model} beta={beta:g} n={n}, cap 60 deg"
            worst = int(np.argmax(np.abs(np.array(rates) - r)))
            checks.append(check_close(
                f"{tag}: fitted late rate of the diameter (worst of {len(seeds)} seeds)",
                rates[worst], r, 1e-5 * r,
                note="linearization at the cluster: r = 1 (SA), e^beta (USA); window 1e-9 <= D <= 1e-3, "
                     "nonlinear corrections <= (1+beta) 1e-6"))
            checks.append(check_range(
                f"{tag}: max |log D - linear fit| in the late window", max(resids), high=1e-5,
                note="exponential decay: log D linear in t"))
            checks.append(check_range(
                f"{tag}: max_t [log(D_y(t)/D_y(0)) + 2 m r_0 t] (chart diameter vs theorem)",
                max(env), high=1e-9,
                note=f"D_y <= D_y(0) e^(-2 m r_0 t) with 2 m r_0 >= {min(bounds):.3g} (definitions in "
                     "the docstring); tolerance: round-off of D_y >= 1e-10"))
            checks.append(check_range(
                f"{tag}: max_t [log(D_y(t)/D_y(0)) + n m r_0 t] (chart diameter vs sharper bound)",
                max(env_n), high=1e-9,
                note=f"D_y <= D_y(0) e^(-n m r_0 t), n m r_0 >= {n * min(bounds) / 2:.3g} (derived in the "
                     "docstring)"))
            checks.append(check_range(
                f"{tag}: fitted rate / theorem rate 2 m r_0 (min over seeds)",
                min(a / b for a, b in zip(rates, bounds, strict=True)), low=1.0,
                note="cone-collapse lower bound on the rate"))
    return checks, runs, info


QUICK = {"n": 32, "seeds": [0, 1], "hemi_seeds": [0]}
FULL = {"n": 64, "seeds": list(range(10)), "hemi_seeds": list(range(4))}


def measure(params: dict) -> dict:
    """Uniform and hemisphere runs, with their checks."""
    started = time.perf_counter()
    n, seeds, hemi_seeds = params["n"], tuple(params["seeds"]), tuple(params["hemi_seeds"])
    checks, uniform_runs, info_u = _uniform_part(n, seeds)
    print(f"uniform runs done ({time.perf_counter() - started:.1f} s)", flush=True)
    hchecks, hemi_runs, info_h = _hemisphere_part(n, hemi_seeds)
    checks += hchecks
    print(f"hemisphere runs done ({time.perf_counter() - started:.1f} s)", flush=True)
    return {"checks": checks, "uniform_runs": uniform_runs, "hemi_runs": hemi_runs, "info_u": info_u,
            "info_h": info_h, "n": n, "seeds": seeds, "hemi_seeds": hemi_seeds}


def checks(results: dict) -> list:
    """The checks of the uniform runs (``_uniform_part``) and the hemisphere runs (``_hemisphere_part``)."""
    return results["checks"]


def _extra(results: dict) -> dict:
    r = results
    return {"n": r["n"], "seeds": list(r["seeds"]), "hemisphere_seeds": list(r["hemi_seeds"]),
            "uniform": r["info_u"], "hemisphere": r["info_h"]}


def figure(results: dict):
    """Diameters and energies of the uniform runs, the hemisphere collapse and its rate."""
    r = results
    return _figure(r["uniform_runs"], r["hemi_runs"], r["seeds"], r["hemi_seeds"])


E_BETA = r"$e^\beta$"  # the USA rate, in legends


def _figure(uniform_runs, hemi_runs, seeds, hemi_seeds):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 10), layout="constrained")
    ax = [fig.add_subplot(2, 3, k + 1) for k in range(5)]
    ax3 = fig.add_subplot(2, 3, 6, projection="3d")
    colors = {1.0: "C0", 4.0: "C3"}
    for col, model in enumerate(MODELS):
        a = ax[col]
        for beta in BETAS:
            for s in seeds:
                t, energy, counts, _ = uniform_runs[model, beta, s]
                a.semilogx(t[1:], energy[1:], "-", color=colors[beta], lw=1,
                           label=f"$\\beta={beta:g}$" if s == seeds[0] else None)
                ax[2].semilogx(t[1:] * _rate(model, beta), counts[1:], "-" if model == "SA" else "--",
                               color=colors[beta], lw=1,
                               label=f"{model} $\\beta={beta:g}$" if s == seeds[0] else None)
        a.axhline(1.0, ls="--", color="k", label=r"max $e^\beta/(2\beta)$ (theory)")
        a.set_xlabel("$t$")
        a.set_ylabel(r"$\mathsf{E}_\beta\,/\,(e^\beta/2\beta)$")
        a.set_title(f"{model}, uniform on $\\mathbb{{S}}^2$: normalized energy (seeds as lines)")
        a.legend(fontsize="small", loc="best")
    ax[2].axhline(1.0, ls=":", color="k", label="theory: 1 cluster")
    ax[2].set_yscale("log")
    ax[2].set_xlabel(r"$r t$  ($r = 1$ SA, $e^\beta$ USA)")
    ax[2].set_ylabel(r"cluster count ($\langle x_i,x_j\rangle > 0.9999$)")
    ax[2].set_title("cluster count vs time")
    ax[2].legend(fontsize="small", loc="best")
    for col, model in enumerate(MODELS):
        a = ax[3 + col]
        for beta in BETAS:
            for s in hemi_seeds:
                run = hemi_runs[model, beta, s]
                t, r = run["t"], _rate(model, beta)
                first = s == hemi_seeds[0]
                a.semilogy(r * t, run["diam"], "-", color=colors[beta], lw=1.5,
                           label=f"$\\beta={beta:g}$: measured $D$" if first else None)
                if first:
                    sel = (run["diam"] >= WINDOW[0]) & (run["diam"] <= WINDOW[1])
                    a.semilogy(r * t[sel], np.exp(run["icept"] - run["rate"] * t[sel]), "o", ms=2,
                               color="k", label=f"fit window: fitted rate {run['rate']:.7g}")
                    anchor = run["diam"][np.argmax(run["diam"] <= WINDOW[1])]
                    t_a = t[np.argmax(run["diam"] <= WINDOW[1])]
                    a.semilogy(r * t, anchor * np.exp(-r * (t - t_a)), "--", color=colors[beta],
                               label=f"theory rate {'1' if model == 'SA' else E_BETA} = {r:.7g}")
                    a.semilogy(r * t, run["diam_y"][0] * np.exp(-run["bound_rate"] * t), ":",
                               color=colors[beta], label=f"bound $2 m r_0$ = {run['bound_rate']:.2g}")
                    a.semilogy(r * t, run["diam_y"][0] * np.exp(-run["sharp_rate"] * t), "-.",
                               color=colors[beta], lw=0.8, label=f"bound $n m r_0$ = {run['sharp_rate']:.2g}")
        a.set_ylim(1e-16, 10)
        a.set_xlabel(r"$r t$  ($r = 1$ SA, $e^\beta$ USA)")
        a.set_ylabel(r"diameter $D = \max_{ij} \|x_i - x_j\|$")
        a.set_title(f"{model}: cap of half-angle 60°, log diameter")
        a.legend(fontsize="x-small", loc="best")
    run = hemi_runs["SA", 4.0, hemi_seeds[0]]
    t, _, _, xu = uniform_runs["SA", 4.0, seeds[0]]
    u = np.linspace(0, 2 * np.pi, 40)
    v = np.linspace(0, np.pi, 20)
    ax3.plot_wireframe(np.outer(np.cos(u), np.sin(v)), np.outer(np.sin(u), np.sin(v)),
                       np.outer(np.ones_like(u), np.cos(v)), color="0.85", lw=0.5)
    counts = uniform_runs["SA", 4.0, seeds[0]][2]
    mid = int(np.argmax(counts <= 4))  # a metastable few-cluster state
    for xk, c, size, lab in ((xu[0], "0.5", 8, "uniform $t=0$"),
                             (xu[mid], "C1", 25, f"$t={t[mid]:.3g}$: {counts[mid]} clusters"),
                             (xu[-1], "C3", 60, f"$t={t[-1]:.3g}$: 1 cluster"),
                             (run["x"][0], "C2", 8, "cap data $t=0$")):
        ax3.scatter(xk[:, 0], xk[:, 1], xk[:, 2], color=c, s=size, label=lab, depthshade=False)
    ax3.set_xlabel("$x_1$")
    ax3.set_ylabel("$x_2$")
    ax3.set_zlabel("$x_3$")
    ax3.set_title(f"SA $\\beta=4$, uniform seed {seeds[0]}: tokens on $\\mathbb{{S}}^2$")
    ax3.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(0.0, 1.0), frameon=False)
    return fig


VALIDATION = Validation(name=NAME, theory=THEORY, measure=measure, checks=checks, figure=figure,
                        quick=QUICK, full=FULL, extra=_extra, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(run(VALIDATION))
