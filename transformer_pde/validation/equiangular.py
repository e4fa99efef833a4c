"""Equiangular tokens: particles follow the rho-ODE, its reference values and its rates.

Theory (docs/math.md §4.4, 4.5, 6 items 1-5; GLPR arXiv 2312.10794 Thm `orthogonal`,
Karagodin-Ge-Polyanskiy-Rigollet arXiv 2510.22026): n = d tokens started at x_i(0) = e_i
stay equiangular, <theta_i, theta_j> = rho(t) for all i != j, where rho solves a scalar ODE
(theory.equiangular_rho for SA/USA with post-LN; theory.equiangular_normalized for the
normalization schemes, with a common radius r(t) for pre/peri/mix-LN). Measured here:

1. SA and USA (Q = K = V = I, post-LN on the sphere) for the (n, beta) of docs/math.md §6
   items 1-2 (and USA at n = 8, 32 over t <= 0.05): tp.simulate with dopri5 (rtol 1e-12,
   atol 1e-14) matches the ODE to 1e-8 at every saved time, the n(n-1)/2 inner products
   stay equal (spread <= 1e-9), and the printed reference values are reproduced to half a
   unit of their last digit. At beta = 0 the particles match rho = (e^2t - 1)/(e^2t + n - 1)
   (tanh t for n = 2); for beta > 0 the exact Ei formulas of theory.equiangular_time map the
   particles' rho(t) back to t within 1e-8 (docs/math.md §6 item 3).
2. Each normalization scheme (post, pre, peri, mix with tau = 1, nGPT with alpha = 1,
   CoD) with n = d = 4, beta = 1.5: particles match (rho, r) of the reduced ODE
   (rho to 1e-8, r to 1e-8 relative: r grows like t).
3. Rates near consensus, from the particle runs: a least-squares slope of log(1 - rho)
   against t (SA, USA, post, nGPT), log t (pre, peri, mix) or sqrt t (CoD). Over a window,
   the least-squares slope of a smooth curve is a positively weighted average of its local
   slope, so it must lie in [min, max] of the exact local slope over the window (computed
   from the ODE's right-hand side at the theory's rho(t)), up to the particles' round-off;
   and its distance to the asymptotic value (SA 2, USA 2 e^beta, post/nGPT -2 in t,
   pre/peri/mix -2 in log t, CoD -4 in sqrt t) is at most the largest distance of the exact
   local slope to it over the window: that is the tolerance of each asymptotic check.
   1 - rho is measured as |theta_i - theta_j|^2 / 2 (no cancellation), and the windows keep
   1 - rho >= 1e-8, far above round-off. For pre/peri/mix the radius obeys
   1 - (1 - rho) <= dr/dt <= 1 after the switch (pre: dr/dt = <theta, A> = 1 - (n-1)b(1-rho);
   peri: <theta, A>/|A| with |A| <= 1), so |r(T)/T - 1| <= (|r0 - t_s| + int (1-rho) dt)/T
   with t_s the switch time (0; mix: tau): this bounds r(T)/T -> 1.

Run: python -m transformer_pde.validation.equiangular [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
import time

import numpy as np

import transformer_pde as tp
from transformer_pde import theory
from transformer_pde.checks import Validation, check_close, check_range, run

__all__ = ["VALIDATION", "measure", "checks", "figure"]

NAME = "equiangular"
THEORY = ("Equiangular tokens x_i(0) = e_i (docs/math.md §4.4-4.5, 6 items 1-5): SA/USA particles follow "
          "the rho-ODE to 1e-8 and reproduce its reference values; each normalization scheme "
          "follows its (rho, r) ODE; 1 - rho decays like e^{-2t} (SA, post, nGPT), e^{-2 e^beta t} "
          "(USA), t^-2 with r(t)/t -> 1 (pre, peri, mix), e^{-4 sqrt t} (CoD).")

RTOL, ATOL = 1e-12, 1e-14
# particles vs ODE: dopri5 at rtol 1e-12 gives ~1e-13 (measured); 1e-8 is the acceptance
RHO_TOL = 1e-8
SPREAD_TOL = 1e-9
# the fit windows keep 1 - rho in [LOW, HIGH]: LOW far above round-off (~1e-15)
LOW, HIGH = 1e-8, 1e-4
# absolute error of the particles' 1 - rho (integration error ~1e-13, measured); it moves
# a least-squares slope over a window of length L by at most 3 * ABS_ERR / LOW / L
ABS_ERR = 1e-12

# (model, n, beta, T, nt): docs/math.md §6 items 1-2; T long enough for the rate fits where used
CASES = [
    ("SA", 5, 1.0, 12.0, 241),
    ("USA", 5, 1.0, 5.0, 201),
    ("SA", 8, 4.0, 3.0, 61),
    ("SA", 3, 0.0, 11.0, 221),
    ("SA", 2, 0.0, 3.0, 61),
    ("SA", 2, 0.5, 2.0, 41),
    ("USA", 2, 0.5, 6.0, 241),
    ("SA", 32, 9.0, 2.0, 41),
    ("USA", 8, 4.0, 0.05, 21),
    ("USA", 32, 9.0, 0.05, 21),
]
# docs/math.md §6 item 2 (rho0 = 0): (model, n, beta) -> [(t, printed value)]
REFERENCE = {
    ("SA", 5, 1.0): [(2.0, "0.860669"), (3.0, "0.978586")],
    ("USA", 5, 1.0): [(2.0, "0.998378"), (3.0, "0.999993")],
    ("SA", 8, 4.0): [(2.0, "0.093652"), (3.0, "0.179891")],
    ("SA", 32, 9.0): [(2.0, "0.000497")],
    ("SA", 3, 0.0): [(3.0, "0.992600")],
    ("SA", 2, 0.5): [(2.0, "0.947437")],
    ("USA", 2, 0.5): [(2.0, "0.993937")],
    ("USA", 8, 4.0): [(0.05, "0.0133336")],
    ("USA", 32, 9.0): [(0.05, "0.00332666")],
}
RATE_CASES = [("SA", 5, 1.0), ("USA", 5, 1.0), ("SA", 3, 0.0), ("USA", 2, 0.5)]

NORM_N, NORM_BETA = 4, 1.5
SCHEMES = ("post", "pre", "peri", "mix", "ngpt", "cod")
TAU, ALPHA = 1.0, 1.0
SWITCH = {"pre": (1.0, 0.0), "peri": (1.0, 0.0), "mix": (1.0 - TAU, TAU)}  # (r0 - t_s, t_s)


def _half_unit(text: str) -> float:
    """Half a unit of the last printed digit of a decimal string."""
    return 0.5 * 10.0 ** -len(text.split(".")[1])


def _attention(model, beta):
    return tp.SoftmaxAttention(beta) if model == "SA" else tp.UnnormalizedAttention(beta)


def _pair_stats(x):
    """Directions' pairwise inner products and 1 - rho = |theta_i - theta_j|^2/2, (nt, pairs)."""
    theta = x / np.linalg.norm(x, axis=2, keepdims=True)
    i, j = np.triu_indices(x.shape[1], 1)
    inner = np.einsum("tpd,tpd->tp", theta[:, i], theta[:, j])
    gap = 0.5 * np.sum((theta[:, i] - theta[:, j]) ** 2, axis=2)
    return inner, gap


def _simulate(dyn, n, t):
    return tp.simulate(dyn, np.eye(n), (0.0, float(t[-1])), t_eval=t, method="dopri5",
                       rtol=RTOL, atol=ATOL)


def _slope_check(label, s, log_gap, gap_theory, local, asymptote, variable, win=None):
    """Least-squares slope of log(1 - rho) against s over a window (default: the saved times
    with 1 - rho in [LOW, HIGH]).

    ``local`` is the exact local slope d log(1 - rho)/ds at the saved times (from the ODE's
    right-hand side at the theory's rho). Returns the checks and a dict of the numbers.
    """
    if win is None:
        win = (gap_theory >= LOW) & (gap_theory <= HIGH)
    if win.sum() < 5:
        raise RuntimeError(f"{label}: fewer than 5 saved times in the fit window")
    sw, length = s[win], s[win].max() - s[win].min()
    fit = float(np.polyfit(sw, log_gap[win], 1)[0])
    lo, hi = float(local[win].min()), float(local[win].max())
    margin = 3.0 * ABS_ERR / float(gap_theory[win].min()) / length
    dev = float(np.abs(local[win] - asymptote).max())
    window = f"{variable} in [{sw.min():.4g}, {sw.max():.4g}], 1-rho >= {gap_theory[win].min():.2g}"
    checks = [
        check_range(f"{label}: fitted slope of log(1-rho) vs {variable} within the exact local slope "
                    "range over the window", fit, lo - margin, hi + margin,
                    note=f"{window}; round-off margin {margin:.1g}"),
        check_close(f"{label}: fitted slope of log(1-rho) vs {variable} -> asymptote", fit, asymptote,
                    dev + margin, note=f"{window}; tolerance = max |exact local slope - asymptote| "
                    "over the window"),
    ]
    return checks, {"fit": fit, "local_min": lo, "local_max": hi, "asymptote": asymptote,
                    "window": [float(sw.min()), float(sw.max())], "tolerance": dev + margin}


def _sa_usa(halve_times):
    checks, runs, info = [], {}, {}
    for model, n, beta, T, nt in CASES:
        refs = REFERENCE.get((model, n, beta), [])
        t = np.union1d(np.linspace(0.0, T, nt if not halve_times else (nt - 1) // 2 + 1),
                       [tr for tr, _ in refs])
        traj = _simulate(tp.TokenDynamics(_attention(model, beta)), n, t)
        inner, gap = _pair_stats(traj.x)
        rho = theory.equiangular_rho(t, n, beta, model)
        label = f"{model} n={n} beta={beta:g}"
        err = float(np.abs(inner - rho[:, None]).max())
        spread = float((inner.max(axis=1) - inner.min(axis=1)).max())
        checks.append(check_range(f"{label}: max |<x_i,x_j> - rho_ODE(t)| over pairs, t <= {T:g}", err,
                                  high=RHO_TOL, note=f"dopri5 rtol {RTOL:g}, {traj.info.n_steps} steps"))
        checks.append(check_range(f"{label}: max spread of <x_i,x_j> over pairs", spread, high=SPREAD_TOL,
                                  note="equiangular state is invariant"))
        for tr, text in refs:
            k = int(np.searchsorted(t, tr))
            checks.append(check_close(f"{label}: particle rho({tr:g}) vs docs/math.md §6 item 2",
                                      float(inner[k].mean()), float(text), _half_unit(text),
                                      note=f"printed {text}; ODE {rho[k]:.10f}"))
        if beta == 0.0:
            # docs/math.md §6 item 3: rho = (e^{2t}-1)/(e^{2t}+n-1), tanh t for n = 2
            exact = np.tanh(t) if n == 2 else np.expm1(2 * t) / (np.exp(2 * t) + n - 1)
            checks.append(check_range(f"{label}: max |<x_i,x_j> - closed form| "
                                      f"({'tanh t' if n == 2 else '(e^2t-1)/(e^2t+n-1)'})",
                                      float(np.abs(inner - exact[:, None]).max()), high=RHO_TOL))
        else:
            # docs/math.md §6 item 3: the Ei formulas invert rho(t); a particle error delta rho
            # moves t by delta rho / rho', so use the times where rho' stays >= 1e-4
            use = (t > 0) & (theory.equiangular_rate(rho, n, beta, model) >= 1e-4)
            t_ei = theory.equiangular_time(np.minimum(inner[use].mean(axis=1), 1 - 1e-16), n, beta, model)
            checks.append(check_range(f"{label}: max |t_Ei(rho_particles(t)) - t|",
                                      float(np.abs(t_ei - t[use]).max()), high=1e-8,
                                      note=f"Ei closed form, {use.sum()} times with rho' >= 1e-4"))
        runs[model, n, beta] = (t, inner.mean(axis=1), gap.mean(axis=1), rho)
        info[label] = {"max_err": err, "spread": spread, "steps": traj.info.n_steps}
    # rates near consensus: -d/dt log(1-rho) -> 2 (SA), 2 e^beta (USA)
    rates = {}
    for model, n, beta in RATE_CASES:
        t, _, gap, rho = runs[model, n, beta]
        local = -theory.equiangular_rate(rho, n, beta, model) / (1.0 - rho)
        asym = -2.0 if model == "SA" else -2.0 * np.exp(beta)
        c, r = _slope_check(f"{model} n={n} beta={beta:g}", t, np.log(gap), 1.0 - rho, local, asym, "t")
        checks += c
        rates[f"{model} n={n} beta={beta:g}"] = r
    return checks, runs, {"cases": info, "rates": rates}


def _normalized(t_long, m):
    checks, runs, rates = [], {}, {}
    grids = {
        "post": np.linspace(0.0, 12.0, m),
        "ngpt": np.linspace(0.0, 12.0, m),
        "cod": np.linspace(0.0, 6.0, m) ** 2,
        **{s: np.concatenate([[0.0], np.geomspace(1e-2, t_long, 2 * m)]) for s in ("pre", "peri", "mix")},
    }
    for scheme in SCHEMES:
        t = np.union1d(grids[scheme], [TAU]) if scheme == "mix" else grids[scheme]
        dyn = tp.TokenDynamics(tp.SoftmaxAttention(NORM_BETA), norm=scheme, alpha=ALPHA, tau=TAU)
        traj = _simulate(dyn, NORM_N, t)
        inner, gap = _pair_stats(traj.x)
        radius = np.linalg.norm(traj.x, axis=2)
        rho, r = theory.equiangular_normalized(t, NORM_N, NORM_BETA, scheme, alpha=ALPHA, tau=TAU)
        label = f"{scheme} n={NORM_N} beta={NORM_BETA:g}"
        checks.append(check_range(f"{label}: max |<theta_i,theta_j> - rho_ODE(t)|, t <= {t[-1]:g}",
                                  float(np.abs(inner - rho[:, None]).max()), high=RHO_TOL,
                                  note=f"{traj.info.n_steps} dopri5 steps"))
        checks.append(check_range(f"{label}: max spread of <theta_i,theta_j> over pairs",
                                  float((inner.max(axis=1) - inner.min(axis=1)).max()), high=SPREAD_TOL))
        checks.append(check_range(f"{label}: max |r_i / r_ODE - 1|",
                                  float(np.abs(radius / r[:, None] - 1).max()), high=RHO_TOL,
                                  note="relative: r grows like t" if scheme in SWITCH else "r = 1"))
        rate = np.array([theory.equiangular_normalized_rate(p, q, s, NORM_N, NORM_BETA, scheme,
                                                            alpha=ALPHA, tau=TAU)[0]
                         for p, q, s in zip(rho, r, t, strict=True)])
        lam = rate / (1.0 - rho)  # -d/dt log(1 - rho)
        log_gap = np.log(gap.mean(axis=1))
        if scheme in ("post", "ngpt"):
            c, res = _slope_check(label, t, log_gap, 1.0 - rho, -lam, -2.0, "t")
        elif scheme == "cod":
            c, res = _slope_check(label, np.sqrt(t), log_gap, 1.0 - rho, -2.0 * np.sqrt(t) * lam, -4.0,
                                  "sqrt(t)")
            # with the exact speed 1/sqrt(t+1) the only correction is O(1 - rho)
            c2, res2 = _slope_check(label, np.sqrt(t + 1.0), log_gap, 1.0 - rho,
                                    -2.0 * np.sqrt(t + 1.0) * lam, -4.0, "sqrt(t+1)")
            c += c2
            rates[f"{scheme} vs sqrt(t+1)"] = res2
        else:
            # the window is the last decade [T/10, T]; 1 - rho stays >= 3e-8 there
            late = t >= t[-1] / 10.0
            c, res = _slope_check(label, np.log(np.maximum(t, 1e-300)), log_gap, 1.0 - rho, -t * lam, -2.0,
                                  "log t", win=late)
            offset, t_s = SWITCH[scheme]
            after = t >= t_s
            integral = float(np.trapezoid(gap.mean(axis=1)[after], t[after]))
            bound = (abs(offset) + integral) / t[-1]
            c.append(check_close(f"{label}: r(T)/T at T={t[-1]:g} -> 1",
                                 float(radius[-1].mean() / t[-1]), 1.0, bound,
                                 note=f"|r(T) - T| <= |r0 - t_s| + int_(t_s)^T (1-rho) dt = "
                                 f"{abs(offset) + integral:.4g}"))
            lower, upper = offset - integral, offset
            c.append(check_range(f"{label}: r(T) - T within [r0 - t_s - int (1-rho), r0 - t_s]",
                                 float(radius[-1].mean() - t[-1]), lower - 1e-9 * t[-1], upper + 1e-9 * t[-1],
                                 note="1 - (1-rho) <= dr/dt <= 1 after the switch"))
        checks += c
        rates[scheme] = res
        runs[scheme] = (t, inner.mean(axis=1), gap.mean(axis=1), radius.mean(axis=1), rho, r, lam)
    # the reduced ODE alone to t = 1e4 for pre, peri, mix (the particles follow it, above)
    t_ode = np.geomspace(1e3, 1e4, 101)
    for scheme in ("pre", "peri", "mix"):
        tt = np.concatenate([[0.0], t_ode])
        rho, r = theory.equiangular_normalized(tt, NORM_N, NORM_BETA, scheme, alpha=ALPHA, tau=TAU)
        rho, r = rho[1:], r[1:]
        lam = np.array([theory.equiangular_normalized_rate(p, q, s, NORM_N, NORM_BETA, scheme, tau=TAU)[0]
                        for p, q, s in zip(rho, r, t_ode, strict=True)]) / (1.0 - rho)
        c, res = _slope_check(f"{scheme} ODE", np.log(t_ode), np.log1p(-rho), 1.0 - rho,
                              -t_ode * lam, -2.0, "log t", win=np.ones(len(t_ode), bool))
        checks += c
        rates[f"{scheme} ODE"] = res
    return checks, runs, rates


QUICK = {"halve_times": True, "t_long": 1e3, "m": 81}
FULL = {"halve_times": False, "t_long": 1e4, "m": 161}


def measure(params: dict) -> dict:
    """SA/USA and the normalization schemes from x_i(0) = e_i, with their checks.

    ``params``: ``halve_times`` (save about half the times of the SA/USA runs), ``t_long``
    (end time of the pre, peri and mix runs) and ``m`` (saved times of the schemes).
    """
    started = time.perf_counter()
    checks, runs, info = _sa_usa(params["halve_times"])
    print(f"SA/USA done ({time.perf_counter() - started:.1f} s)", flush=True)
    c, norm_runs, norm_rates = _normalized(params["t_long"], params["m"])
    checks += c
    print(f"normalization schemes done ({time.perf_counter() - started:.1f} s)", flush=True)
    return {"checks": checks, "runs": runs, "norm_runs": norm_runs, "info": info, "norm_rates": norm_rates}


def checks(results: dict) -> list:
    """The checks of the SA/USA runs (built by ``_sa_usa``) and of the schemes (``_normalized``)."""
    return results["checks"]


def _extra(results: dict) -> dict:
    return {**results["info"], "normalization_rates": results["norm_rates"]}


def figure(results: dict):
    """rho(t), 1 - rho and local rates for SA/USA and the normalization schemes."""
    return _figure(results["runs"], results["norm_runs"])


def _figure(runs, norm_runs):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(20, 9.5), layout="constrained")
    ax = fig.subplots(2, 4)
    # (a) rho(t) for SA / USA
    a = ax[0, 0]
    for k, ((model, n, beta), (t, inner, _, rho)) in enumerate(runs.items()):
        if t[-1] < 1.0:
            continue
        sel = t <= 4.0
        a.plot(t[sel], rho[sel], "--", color=f"C{k}")
        step = max(1, sel.sum() // 20)
        a.plot(t[sel][::step], inner[sel][::step], "o", ms=4, color=f"C{k}", mfc="none",
               label=f"{model} $n={n}$ $\\beta={beta:g}$")
    a.set(xlabel="$t$", ylabel=r"$\rho(t)$", title=r"SA/USA: particles (o) vs $\rho$-ODE (--)")
    a.legend(fontsize="x-small")
    # (b) 1 - rho on a log scale for the rate cases
    b = ax[0, 1]
    for k, key in enumerate(RATE_CASES):
        t, _, gap, rho = runs[key]
        model, n, beta = key
        b.semilogy(t[1:], 1.0 - rho[1:], "--", color=f"C{k}")
        b.semilogy(t[1::6], gap[1::6], "o", ms=4, mfc="none", color=f"C{k}",
                   label=f"{model} $n={n}$ $\\beta={beta:g}$")
        lam = 2.0 if model == "SA" else 2.0 * np.exp(beta)
        b.semilogy(t, 0.3 * gap[-1] * np.exp(-lam * (t - t[-1])), ":", color=f"C{k}", lw=1)
    b.axhspan(LOW, HIGH, color="0.9", zorder=0)
    b.set_ylim(1e-11, 2)
    b.set(xlabel="$t$", ylabel=r"$1 - \rho$",
          title=r"$1 - \rho$: particles (o), ODE (--), $e^{-\lambda t}$ (:); fit band")
    b.legend(fontsize="x-small")
    # (c) local rates
    c = ax[0, 2]
    for k, key in enumerate(RATE_CASES):
        t, _, gap, rho = runs[key]
        model, n, beta = key
        local = theory.equiangular_rate(rho, n, beta, model) / (1.0 - rho)
        lam = 2.0 if model == "SA" else 2.0 * np.exp(beta)
        fd = -np.diff(np.log(gap)) / np.diff(t)
        mid = 0.5 * (t[1:] + t[:-1])
        ok = 0.5 * (gap[1:] + gap[:-1]) > LOW
        c.plot(t, local / lam, "--", color=f"C{k}")
        c.plot(mid[ok][::4], fd[ok][::4] / lam, "o", ms=3, mfc="none", color=f"C{k}",
               label=f"{model} $n={n}$ $\\beta={beta:g}$: $\\lambda={lam:.4g}$")
    c.axhline(1.0, color="k", lw=0.8)
    c.set(xlabel="$t$", ylabel=r"$-\frac{d}{dt}\log(1-\rho)\,/\,\lambda$", ylim=(0, 1.2),
          title="local rate / asymptote: particles (o), ODE (--)")
    c.legend(fontsize="x-small")
    # (d) normalization schemes, log-log
    d = ax[0, 3]
    for k, s in enumerate(SCHEMES):
        t, _, gap, _, rho, _, _ = norm_runs[s]
        pos = t > 0
        d.loglog(t[pos], 1.0 - rho[pos], "--", color=f"C{k}")
        d.loglog(t[pos][::8], gap[pos][::8], "o", ms=3, mfc="none", color=f"C{k}", label=s)
    tr = np.geomspace(10.0, 1e4, 10)
    d.loglog(tr, 2.0 / tr**2, "k:", label="$t^{-2}$")
    d.set_ylim(1e-12, 2)
    d.set(xlabel="$t$", ylabel=r"$1 - \rho$", title=f"normalization, $n=d={NORM_N}$, $\\beta={NORM_BETA:g}$")
    d.legend(loc="lower left", fontsize="x-small", ncol=2)
    # (e) r(t)/t for pre, peri, mix
    e = ax[1, 0]
    for k, s in enumerate(("pre", "peri", "mix")):
        t, _, _, radius, _, r, _ = norm_runs[s]
        pos = t > 0.1
        e.semilogx(t[pos], r[pos] / t[pos], "--", color=f"C{k + 1}")
        e.semilogx(t[pos][::8], radius[pos][::8] / t[pos][::8], "o", ms=3, mfc="none", color=f"C{k + 1}",
                   label=s)
    e.axhline(1.0, color="k", lw=0.8)
    e.set(xlabel="$t$", ylabel="$r(t)/t$", ylim=(0, 3), title=r"radius: $r(t)/t \to 1$ (particles o, ODE --)")
    e.legend(fontsize="x-small")
    # (f) local slope d log(1-rho)/d log t for pre, peri, mix
    f = ax[1, 1]
    for k, s in enumerate(("pre", "peri", "mix")):
        t, _, gap, _, _, _, lam = norm_runs[s]
        pos = t > 0
        lt = np.log(t[pos])
        fd = np.diff(np.log(gap[pos])) / np.diff(lt)
        f.semilogx(t[pos], -t[pos] * lam[pos], "--", color=f"C{k + 1}")
        f.semilogx(np.exp(0.5 * (lt[1:] + lt[:-1]))[::8], fd[::8], "o", ms=3, mfc="none", color=f"C{k + 1}",
                   label=s)
    f.axhline(-2.0, color="k", lw=0.8)
    f.set(xlabel="$t$", ylabel=r"$d\log(1-\rho)\,/\,d\log t$", ylim=(-4, 0.5),
          title=r"pre/peri/mix local slope $\to -2$")
    f.legend(fontsize="x-small")
    # (g) post, nGPT: log(1-rho) vs t
    g = ax[1, 2]
    for k, s in ((0, "post"), (4, "ngpt")):
        t, _, gap, _, rho, _, _ = norm_runs[s]
        g.semilogy(t, 1.0 - rho, "--", color=f"C{k}")
        g.semilogy(t[::6], gap[::6], "o", ms=3, mfc="none", color=f"C{k}", label=s)
    tt = np.linspace(4.0, 12.0, 5)
    g.semilogy(tt, 3e-2 * np.exp(-2.0 * (tt - 4.0)), "k:", label="$e^{-2t}$")
    g.axhspan(LOW, HIGH, color="0.9", zorder=0)
    g.set(xlabel="$t$", ylabel=r"$1 - \rho$", title=r"post-LN, nGPT ($\alpha=1$): slope $-2$ in $t$")
    g.legend(fontsize="x-small")
    # (h) CoD: log(1-rho) vs sqrt(t)
    h = ax[1, 3]
    t, _, gap, _, rho, _, _ = norm_runs["cod"]
    h.semilogy(np.sqrt(t), 1.0 - rho, "--", color="C5")
    h.semilogy(np.sqrt(t)[::6], gap[::6], "o", ms=3, mfc="none", color="C5", label="cod")
    st = np.linspace(3.0, 6.0, 5)
    h.semilogy(st, 1e-2 * np.exp(-4.0 * (st - 3.0)), "k:", label=r"$e^{-4\sqrt{t}}$")
    h.axhspan(LOW, HIGH, color="0.9", zorder=0)
    h.set(xlabel=r"$\sqrt{t}$", ylabel=r"$1 - \rho$", title=r"CoD: slope $-4$ in $\sqrt{t}$")
    h.legend(fontsize="x-small")
    return fig


VALIDATION = Validation(name=NAME, theory=THEORY, measure=measure, checks=checks, figure=figure,
                        quick=QUICK, full=FULL, extra=_extra, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(run(VALIDATION))
