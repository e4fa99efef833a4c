"""Causal tokens on the circle: the linear response and the pair correlations of the causal mean field.

Theory (docs/math.md §11, derived there): around iid uniform tokens, mode k of a
perturbation of the causal mean field evolves by e^{tau C}, tau = lambda_k t, C the causal
average (1/s) int_0^s; its kernel is H(s, sigma) = F(log(s/sigma))/s with
F(L) = sqrt(tau/L) I_1(2 sqrt(tau L)) (theory.causal_response). The pair correlation of two
tokens at positions s' < s is n E cos k(theta_i - theta_j) -> R(t; s, s') = H(s, s') +
int_0^{s'} H(s, sigma) H(s', sigma) dsigma (theory.causal_correlation, a Bessel-Kummer series),
whose profile in s' for the last token (theory.retrieval_profile) shows primacy.

Measured:
1. R by its series against adaptive quadrature, for t in {0.3, 1, 3} and s' from 1e-4 to
   0.99: agreement to 1e-10 relative (measured ~3e-16).
2. The finite-n linearisation (theory.causal_correlation_matrix: the n tokens' own Cesaro
   matrix with the self term of the softmax denominator) tends to R: |C_n(n, n/2) - R(1, 1/2)|
   decreases with n (quick n = 128, 512; full up to 2048) and is below 3 % at the largest n.
3. Particles: causal SA (beta = 1) from iid uniform tokens, B seeds (quick 300 x n = 64,
   full 2000 x n = 128), simulated to tau = lambda_1 t = 0.5 by RK4; the correlation of the
   last quarter of the tokens with each earlier quarter, n E Re(sum_I z_i conj sum_J z_j) /
   (|I| |J|) (z = e^{i theta}), against the same average of the finite-n linearisation.
   Tolerance: 4 standard errors of the seed mean (statistics) plus 10 % of the prediction
   (the neglected second-order terms, O(n^{-1/2}) relative; measured within 2 standard
   errors at n = 128).
4. The causal grid PDE (CausalCircleGrid(S, 64), solve_meanfield, causal SA and causal USA):
   a perturbation 1e-4 g0(s) cos(theta) with g0 the indicator of s <= 1/4, evolved to
   tau = 0.5; the mode-1 amplitude of each fibre s > 1/4 against int_0^{1/4} H(s, sigma) dsigma
   (quadrature of the closed-form kernel). The fibres sum their sources up to their right end
   (a first-order quadrature in s), so the error is O(1/S): it must fall by at least 1.6x per
   doubling of S (quick S = 16, 32; full 16, 32, 64) and be below 5 % (SA) at the finest S.

Run: python -m transformer_pde.validation.lost_in_the_middle [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
import time

import numpy as np
from scipy.integrate import quad

import transformer_pde as tp
from transformer_pde import theory
from transformer_pde.checks import Validation, check_range, run
from transformer_pde.meanfield import CausalCircleGrid, Density

__all__ = ["VALIDATION", "measure", "checks", "figure"]

NAME = "lost_in_the_middle"
THEORY = ("Causal tokens on the circle (docs/math.md §11): the Bessel kernel of the linearised causal "
          "mean field and the pair correlation R(t; s, s') of tokens from iid uniform starts; the "
          "series equals quadrature to 1e-10, the finite-n linearisation tends to it, particles "
          "(many seeds) and the causal grid PDE reproduce it within the stated tolerances.")

BETA = 1.0
TAU = 0.5  # lambda_1 t: the linear regime for the particle sizes used
EPS = 1e-4  # amplitude of the grid perturbation (nonlinear terms O(EPS) relative)
BAND = 0.25  # the grid perturbation occupies s <= BAND

QUICK = {"n_matrix": [128, 512], "seeds": 300, "n_tokens": 64, "fibres": [16, 32]}
FULL = {"n_matrix": [128, 512, 2048], "seeds": 2000, "n_tokens": 128, "fibres": [16, 32, 64]}


def _time() -> float:
    return TAU / float(theory.circle_growth_rate(1, BETA))


def _series_vs_quadrature():
    worst = 0.0
    rows = []
    for t in (0.3, 1.0, 3.0):
        for sp in (1e-4, 0.01, 0.3, 0.7, 0.99):
            c = theory.causal_correlation(1.0, sp, t, BETA)
            q = theory.causal_correlation(1.0, sp, t, BETA, method="quadrature")
            worst = max(worst, abs(c - q) / c)
            rows.append({"t": t, "s_prime": sp, "series": c, "quadrature": q})
    return [check_range("series = quadrature (relative)", worst, high=1e-10,
                        note="Bessel-Kummer series vs adaptive quadrature, t in {0.3,1,3}")], rows


def _matrix_convergence(sizes):
    t = _time()
    want = theory.causal_correlation(1.0, 0.5, t, BETA)
    errs = []
    for n in sizes:
        c = theory.causal_correlation_matrix(n, t, BETA)
        errs.append(abs(c[n - 1, n // 2 - 1] - want) / want)
    out = [check_range("finite-n linearisation -> R: errors decrease", float(np.max(np.diff(errs))),
                       high=0.0, note=f"n = {sizes}: relative errors {np.round(errs, 4).tolist()}"),
           check_range(f"finite-n linearisation at n={sizes[-1]} vs R(1, 1/2)", errs[-1], high=0.03)]
    return out, {"n": list(sizes), "error": errs}


def _quarters(n):
    return np.array_split(np.arange(n), 4)


def _particles(seeds, n):
    t = _time()
    rng = np.random.default_rng(12)
    x0 = tp.initial.uniform_tokens(seeds * n, 2, rng).reshape(seeds, n, 2)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(BETA, causal=True))
    res = tp.simulate(dyn, x0, (0.0, t), t_eval=[t], method="rk4", dt=t / 20)
    x = res.x[-1]
    z = x[..., 0] + 1j * x[..., 1]
    bins = _quarters(n)
    last = bins[-1]
    pred_matrix = theory.causal_correlation_matrix(n, t, BETA)
    out, table = [], []
    for q, b in enumerate(bins[:-1]):
        v = n * np.real(z[:, last].sum(1) * np.conj(z[:, b].sum(1))) / (len(last) * len(b))
        mean, se = float(v.mean()), float(v.std(ddof=1) / np.sqrt(seeds))
        pred = float(pred_matrix[np.ix_(last, b)].mean())
        tol = 4.0 * se + 0.1 * pred
        out.append(check_range(f"particles: last quarter x quarter {q + 1}", abs(mean - pred), high=tol,
                               note=f"{mean:.3f} +- {se:.3f} (seed mean, 1 s.e.) vs linearisation "
                                    f"{pred:.3f}; B={seeds}, n={n}"))
        sp = (b + 1.0) / n
        every = sp[:: max(1, len(sp) // 8)]
        cont = float(np.mean([theory.causal_correlation(1.0, s, t, BETA) for s in every]))
        table.append({"quarter": q + 1, "particles": mean, "se": se, "finite_n": pred, "continuum_s1": cont})
    return out, table


def _grid_amplitudes(att, fibres):
    grid = CausalCircleGrid(fibres, 64)
    s_mid = (np.arange(fibres) + 0.5) / fibres
    g0 = (s_mid <= BAND).astype(float)
    cos = np.cos(grid.circle.angles)
    rho0 = Density(grid, (1.0 + EPS * g0[:, None] * cos[None, :]) / (2.0 * np.pi))
    model = "USA" if isinstance(att, tp.UnnormalizedAttention) else "SA"
    t = TAU / float(theory.circle_growth_rate(1, BETA, model))
    traj = tp.solve_meanfield(tp.TokenDynamics(att), rho0, (0.0, t), t_eval=[t])
    amp = 2.0 * np.sum(traj.density[-1] * cos[None, :], axis=1) * grid.circle.h / EPS
    after = s_mid > BAND
    want = np.array([quad(lambda sig, s=s: float(theory.causal_response(s, sig, t, BETA, model=model)),
                          0.0, BAND, epsabs=0, epsrel=1e-12)[0] for s in s_mid[after]])
    return s_mid[after], amp[after], want


def _grid(fibres):
    out, curves = [], {}
    for name, att in (("SA", tp.SoftmaxAttention(BETA, causal=True)),
                      ("USA", tp.UnnormalizedAttention(BETA, causal=True, include_self=False))):
        errs = []
        for s in fibres:
            pos, amp, want = _grid_amplitudes(att, s)
            errs.append(float(np.max(np.abs(amp - want)) / np.max(want)))
            curves[f"{name} S={s}"] = {"s": pos.tolist(), "grid": amp.tolist(), "theory": want.tolist()}
        ratios = np.array(errs[:-1]) / np.array(errs[1:])
        out.append(check_range(f"grid PDE ({name}): error falls per doubling of S", float(np.min(ratios)),
                               low=1.6, note=f"S = {fibres}: relative errors {np.round(errs, 4).tolist()}"))
        if name == "SA":
            out.append(check_range(f"grid PDE (SA) at S={fibres[-1]} vs the kernel", errs[-1], high=0.05))
    return out, curves


def measure(params: dict) -> dict:
    """Series vs quadrature, finite n vs continuum, particles, the grid PDE."""
    started = time.perf_counter()
    checks, series = _series_vs_quadrature()
    c, conv = _matrix_convergence(params["n_matrix"])
    checks += c
    print(f"closed forms done ({time.perf_counter() - started:.1f} s)", flush=True)
    c, table = _particles(params["seeds"], params["n_tokens"])
    checks += c
    print(f"particles done ({time.perf_counter() - started:.1f} s)", flush=True)
    c, curves = _grid(params["fibres"])
    checks += c
    print(f"grid done ({time.perf_counter() - started:.1f} s)", flush=True)
    return {"checks": checks, "series": series, "convergence": conv, "particles": table, "grid": curves}


def checks(results: dict) -> list:
    """The checks built with each measurement."""
    return results["checks"]


def _extra(results: dict) -> dict:
    return {k: results[k] for k in ("series", "convergence", "particles", "grid")}


def figure(results: dict):
    """The profile R(t; 1, s'), particles by quarters, the grid against the kernel."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax = fig.subplots(1, 3)
    sp = np.linspace(0.01, 0.99, 80)
    for t in (0.5, 1.0, 2.0):
        ax[0].semilogy(sp, theory.retrieval_profile(sp, t, BETA), label=f"$t={t:g}$")
    ax[0].set(xlabel="source position $s'$", ylabel="$R(t; 1, s')$",
              title=r"last token's correlation with $s'$ ($\beta=1$): primacy")
    ax[0].legend(fontsize="small")
    rows = results["particles"]
    q = [r["quarter"] for r in rows]
    ax[1].errorbar(q, [r["particles"] for r in rows], yerr=[2 * r["se"] for r in rows], fmt="o",
                   label="particles (2 s.e.)")
    ax[1].plot(q, [r["finite_n"] for r in rows], "s", mfc="none", label="finite-n linearisation")
    ax[1].plot(q, [r["continuum_s1"] for r in rows], "k_", ms=14, label="continuum $R(t;1,s')$")
    ax[1].set(xlabel="quarter of the sequence", ylabel="n E cos(θ_i - θ_j), i in the last quarter",
              title=rf"particles, $\tau = {TAU:g}$")
    ax[1].legend(fontsize="small")
    for j, (name, c) in enumerate(results["grid"].items()):
        ax[2].plot(c["s"], c["grid"], "o", ms=3, color=f"C{j}", label=f"grid {name}")
        ax[2].plot(c["s"], c["theory"], "-", color=f"C{j}", lw=0.8)
    ax[2].set(xlabel="$s$", ylabel="mode-1 amplitude", title="causal grid PDE vs kernel (lines)")
    ax[2].legend(fontsize="x-small")
    return fig


VALIDATION = Validation(name=NAME, theory=THEORY, measure=measure, checks=checks, figure=figure,
                        quick=QUICK, full=FULL, extra=_extra, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(run(VALIDATION))
