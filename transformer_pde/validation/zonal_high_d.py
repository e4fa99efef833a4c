"""The mean field on S^{d-1} in high d: growth rates of the uniform state, the concentration of attention.

Theory (docs/math.md §9.19): for zonal densities on S^{d-1} (axisymmetric about e = e_d) the
Transformer PDE is a 1-D conservation law in the polar angle (tp.ZonalGrid, any d >= 3). Linearised
about the uniform measure, a perturbation eps C_l^{(d-2)/2}(cos theta) grows at
lambda_l = l (l + d - 2) I_{l+mu}(beta) / (beta I_mu(beta)), mu = (d - 2)/2 (SA, Q = K = V = I,
post-LN; theory.sphere_growth_rate(l, beta, d=d)). For beta << d, I_{mu+1}/I_mu ~ beta/d: lambda_1
-> (d - 1)/d and the higher modes are O((beta/d)^{l-1}), so a near-uniform state in high d grows
along l = 1 only. The attention of a query on the uniform measure weighs t = <x, y> by e^{beta t};
its mean cosine is E_att[t] = I_{mu+1}(beta)/I_mu(beta): about beta/d for beta << d and
1 - (d - 1)/(2 beta) for beta >> d: attention concentrates on a query's neighbourhood only once
beta grows like d.

Measured:
1. The PDE run from uniform (1 + 1e-4 C_l) on ZonalGrid(n, dim=d), to T = 2 with 41 saved times:
   the rate of the projection on C_l, log(c(T)/c(0))/T, against theory within 1% (tests measured
   l = 1 within 1e-4 at n = 128 and l = 2 within 2e-3 once h sqrt(d) <= 0.1), d = 4 .. 1024,
   l = 1 (beta = 1) and l = 2 (beta = 4, the rates fall from 0.68 at d = 4 to 0.008 at d = 1024).
2. The mean attention cosine E_att[t] against I_{mu+1}/I_mu two ways: (a) the grid's log-weights
   log(h p_sigma) with the query at the pole (a midpoint sum over 4096 cells: O(h^2), within
   1e-4 relative; in log form because at beta >> d the tilted law sits where sin^{d-2}
   underflows); (b) n uniform tokens (tp.initial.uniform_tokens) and the query e_d,
   the weighted mean of t with its delta-method standard error, within 5 of them, wherever the
   effective sample size (sum w)^2 / sum w^2 is at least 500 (at beta ~ d it collapses: the
   tilted law lives on a cap of measure ~e^{-d}, out of reach of any sample; the grid still
   resolves it).

Run: python -m transformer_pde.validation.zonal_high_d [--quick] [--out DIR]
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.special import eval_gegenbauer

import transformer_pde as tp
from transformer_pde import theory
from transformer_pde.checks import Validation, check_close, check_range, run

__all__ = ["VALIDATION", "measure", "checks", "figure"]

NAME = "zonal_high_d"
THEORY = ("Zonal mean field on S^{d-1} (docs/math.md §9.19): the 1-D PDE on tp.ZonalGrid grows the "
          "uniform state's degree-l mode at l(l+d-2) I_{l+mu}(beta)/(beta I_mu(beta)) within 1% for "
          "d = 4 .. 1024, "
          "and the mean attention cosine on the uniform measure is I_{mu+1}(beta)/I_mu(beta) (grid and "
          "particles): attention concentrates only once beta grows like d.")

QUICK = {"dims": [4, 16, 64, 256, 1024], "cells_l1": 128, "cells_l2": 512, "tokens": 20000,
         "att_dims": [16, 64, 256, 1024], "att_cells": 4096}
FULL = {"dims": [4, 16, 64, 256, 1024], "cells_l1": 256, "cells_l2": 1024, "tokens": 200000,
        "att_dims": [16, 64, 256, 1024], "att_cells": 8192}
T_END, EPS, RATE_TOL = 2.0, 1e-4, 0.01
CASES = ((1, 1.0), (2, 4.0))  # (l, beta)


def _mode(grid, l):
    nu = 0.5 * (grid.dim - 2)
    return eval_gegenbauer(l, nu, np.cos(grid.theta)) / eval_gegenbauer(l, nu, 1.0)


def _rate(d, l, beta, n):
    grid = tp.ZonalGrid(n, dim=d)
    mode = _mode(grid, l)
    uni = grid.uniform_values()
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta))
    sol = tp.solve_meanfield(dyn, tp.Density(grid, uni * (1.0 + EPS * mode)), (0.0, T_END),
                             t_eval=np.linspace(0.0, T_END, 41))
    c = (sol.density - uni) @ mode  # the projection on the mode at the 41 saved times
    return float(np.log(c[-1] / c[0]) / T_END), sol.t, c / c[0]


def _attention_grid(d, beta, n):
    r"""Mean attention cosine of the query e_d on the uniform measure, from the grid's log-weights.

    Midpoint masses in log form, :math:`\log(h\,p_\sigma(\bar\vartheta_j))`: at beta >> d the
    tilted law sits where :math:`\sin^{d-2}` underflows (e.g. 1e-335 at d = 1024, beta = 4d).
    """
    grid = tp.ZonalGrid(n, dim=d)
    c = np.cos(grid.theta)
    logw = beta * (c - 1.0) + grid.log_weight(grid.theta)
    w = np.exp(logw - logw.max())
    return float(np.sum(w * c) / w.sum())


def _attention_tokens(t, beta):
    """The same from the cosines t of uniform tokens to the query: (mean, standard error, effective size)."""
    w = np.exp(beta * (t - t.max()))
    mean = float(np.sum(w * t) / w.sum())
    se = float(np.sqrt(np.sum(w**2 * (t - mean) ** 2)) / w.sum())
    return mean, se, float(w.sum() ** 2 / np.sum(w**2))


def measure(params: dict) -> dict:
    """Growth rates per (d, l) and attention cosines per (d, beta)."""
    rates = []
    for d in params["dims"]:
        for l, beta in CASES:
            n = params["cells_l1"] if l == 1 else params["cells_l2"]
            rate, t, amp = _rate(d, l, beta, n)
            rates.append({"d": d, "l": l, "beta": beta, "n": n, "rate": rate,
                          "theory": float(theory.sphere_growth_rate(l, beta, d=d)),
                          "t": t.tolist(), "amplitude": amp.tolist()})
    rng = np.random.default_rng(12)
    att = []
    for d in params["att_dims"]:
        t = tp.initial.uniform_tokens(params["tokens"], d, rng)[:, -1]  # cosines to the query e_d
        for ratio in (1 / 64, 1 / 16, 1 / 4, 1.0, 4.0, 16.0):
            beta = ratio * d
            mu = 0.5 * (d - 2)
            exact = float(theory._bessel_ratio(mu, beta)[0])
            mean, se, ess = _attention_tokens(t, beta)
            att.append({"d": d, "beta": beta, "theory": exact,
                        "grid": _attention_grid(d, beta, params["att_cells"]),
                        "tokens": mean, "se": se, "ess": ess})
    return {"rates": rates, "attention": att}


def checks(results: dict) -> list:
    out = []
    for r in results["rates"]:
        out.append(check_close(f"growth rate d={r['d']}, l={r['l']}, beta={r['beta']:g}, ZonalGrid({r['n']})",
                               r["rate"], r["theory"], RATE_TOL * abs(r["theory"]),
                               "relative 1%"))
    for a in results["attention"]:
        out.append(check_close(f"mean attention cosine d={a['d']}, beta={a['beta']:g}: grid (log-weights)",
                               a["grid"], a["theory"], 1e-4 * abs(a["theory"]),
                               "midpoint rule, O(h^2): 1e-4 relative"))
        if a["ess"] >= 500:
            out.append(check_range(
                f"mean attention cosine d={a['d']}, beta={a['beta']:g}: tokens, |z| (ESS {a['ess']:.0f})",
                abs(a["tokens"] - a["theory"]) / a["se"], high=5.0, note="5 standard errors"))
    return out


def _extra(results: dict) -> dict:
    return {"rates": [{k: v for k, v in r.items() if k not in ("t", "amplitude")} for r in results["rates"]],
            "attention": results["attention"]}


def figure(results: dict):
    """Rates vs d, attention cosine vs beta/d, the d = 1024 PDE run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(18, 5.5), layout="constrained")
    ax = fig.subplots(1, 3)
    a = ax[0]
    dims = np.array(sorted({r["d"] for r in results["rates"]}))
    dd = np.unique(np.geomspace(4, dims.max(), 60).astype(int))
    for j, (l, beta) in enumerate(CASES):
        a.loglog(dd, [theory.sphere_growth_rate(l, beta, d=int(d)) for d in dd], "-", color=f"C{j}",
                 label=f"theory $l={l}$, $\\beta={beta:g}$")
        pts = [r for r in results["rates"] if r["l"] == l]
        a.loglog([r["d"] for r in pts], [r["rate"] for r in pts], "o", mfc="none", color=f"C{j}",
                 label=f"ZonalGrid PDE, $l={l}$")
    a.set(xlabel="$d$", ylabel=r"growth rate $\lambda_l$",
          title="uniform state on $S^{d-1}$: linear growth rates")
    a.legend(fontsize="small")
    b = ax[1]
    for j, d in enumerate(sorted({x["d"] for x in results["attention"]})):
        pts = [x for x in results["attention"] if x["d"] == d]
        ratio = np.geomspace(1 / 100, 30, 120)
        b.semilogx(ratio, [theory._bessel_ratio(0.5 * (d - 2), r * d)[0] for r in ratio], "-", color=f"C{j}",
                   label=f"$I_{{\\mu+1}}/I_\\mu$, $d={d}$")
        b.semilogx([x["beta"] / d for x in pts], [x["grid"] for x in pts], "s", mfc="none", color=f"C{j}")
        ok = [x for x in pts if x["ess"] >= 500]
        b.errorbar([x["beta"] / d for x in ok], [x["tokens"] for x in ok], [5 * x["se"] for x in ok], fmt="x",
                   color=f"C{j}")
    b.set(xlabel=r"$\beta / d$", ylabel=r"$\mathbb{E}_{\rm att}\langle x, y\rangle$",
          title="attention concentrates once $\\beta \\sim d$ (squares: grid, crosses: tokens)")
    b.legend(fontsize="small")
    c = ax[2]
    for j, r in enumerate(results["rates"]):
        t = np.array(r["t"])
        c.semilogy(t, r["amplitude"], "o" if r["l"] == 1 else "s", ms=3, mfc="none", color=f"C{j % 10}",
                   label=f"$d={r['d']}$, $l={r['l']}$")
        c.semilogy(t, np.exp(r["theory"] * t), "-", lw=0.8, color=f"C{j % 10}")
    c.set(xlabel="$t$", ylabel="mode amplitude $c(t)/c(0)$",
          title="PDE (markers) against $e^{\\lambda_l t}$ (lines)")
    c.legend(fontsize="x-small", ncol=2)
    return fig


VALIDATION = Validation(name=NAME, theory=THEORY, measure=measure, checks=checks, figure=figure,
                        quick=QUICK, full=FULL, extra=_extra, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(run(VALIDATION))
