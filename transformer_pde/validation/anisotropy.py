"""The shape of Gaussian tokens: collapse to 0, collapse onto a line, blow-up to rank one.

Theory (docs/math.md §3.2-3.5; Castin, Ablin, Carrillo, Peyre, arXiv 2501.18322, Gaussian data):
a Gaussian N(m, Sigma) stays Gaussian under softmax, L2, multi-head and Sinkhorn attention,
and the normalized covariance Sigma / tr(Sigma) (the shape) has three regimes, reproduced
here in d = 2 with the package convention A = beta K^T Q, beta = 1, mean 0:

(a) collapse to 0: Q random full rank, K = -Q, V = G G^T. tr Sigma -> 0 at the algebraic
    rate 1/t (Sigma = C/t solves the moment ODE at leading order), for all four variants.
(b) collapse onto a subspace: Q = q^T a single row, K = -Q, V = I. For softmax (and
    multi-head softmax with V_h = c_h I), Sigma^-1(t) = Sigma0^-1 - t S with S rank one along
    q, so Sigma(t) -> Sigma0 - Sigma0 q (q^T Sigma0 q)^-1 q^T Sigma0 (rank d - 1); all four
    variants end on rank d - 1 with tr Sigma bounded away from 0.
(c) blow-up: A + A^T positive definite, V = I. Softmax and multi-head (V_h = c_h I) blow up
    at t* = 1/lambda_max(Sigma0^1/2 S Sigma0^1/2) (S = sum_h c_h (A_h + A_h^T)), found by
    gaussian_moments (GaussianBlowUpError.t) and by blow_up_time to 1e-6, with a rank-one
    limit shape. L2 and Sinkhorn have bounded M and grow only exponentially: L2 still tends
    to rank one (distinct rates), while for Sinkhorn M_S is similar to U f(D) W^T with
    f -> 1, an orthogonal factor, so all directions grow at the same rate and the shape
    freezes at a full-rank limit (measured and reported; tr Sigma <= tr Sigma0 e^{2t}).

Particles (n = 2000 tokens drawn from N(0, Sigma0), symmetrized x -> -x so that their
mean stays 0, tp.simulate in R^2, softmax) are overlaid on the closed form in each regime;
their normalized covariance must agree with it within 4 standard errors at a moderate time
(the standard error of one run is the spread over 4 (quick) or 12 (full) independent runs).
Near t* the particles lag behind the closed form (visible at 0.8 t* in the figure): n tokens
have a bounded field (|Gamma| <= |V| max|x_j|), so they grow at most exponentially and
cannot follow a finite-time blow-up, which the Gaussian owes to its unbounded tails; so
the blow-up regime is checked at t*/4.

Run: python -m transformer_pde.validation.anisotropy [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
import time

import numpy as np

import transformer_pde as tp
from transformer_pde.checks import Validation, check_range, run
from transformer_pde.gaussian import GaussianBlowUpError

__all__ = ["VALIDATION", "measure", "checks", "figure"]

NAME = "anisotropy"
THEORY = ("Gaussian closure (docs/math.md §3.4-3.5, Castin et al.): Sigma/tr Sigma collapses to 0, "
          "onto the subspace Sigma0 - Sigma0 q (q^T Sigma0 q)^-1 q^T Sigma0, or blows up at "
          "t* = 1/lambda_max(Sigma0^1/2 (A+A^T) Sigma0^1/2) to rank one, for softmax, L2, "
          "multi-head and Sinkhorn; particles agree with the closed form within 4 standard errors.")

D = 2
SIGMA0 = np.array([[1.0, 0.3], [0.3, 0.5]])
MEAN0 = np.zeros(D)  # the mean does not enter the covariance ODE; 0 keeps it at 0
VARIANTS = ("softmax", "L2", "multi-head", "Sinkhorn")
REGIMES = ("a", "b", "c")
TITLES = {"a": "(a) collapse to 0", "b": "(b) collapse onto a line", "c": "(c) blow-up"}


def _euclid(att):
    return tp.TokenDynamics(att, geometry="euclidean")


def _models():
    """{regime: {variant: TokenDynamics}} and the matrices used."""
    rng = np.random.default_rng(35)
    Q = rng.uniform(0.0, 1.0, (D, D))
    G1, G2 = (np.random.default_rng(s).standard_normal((D, D)) for s in (11, 12))
    V = G1 @ G1.T  # well-conditioned: eigenvalues 1.15, 2.46
    V2 = G2 @ G2.T
    a = {
        "softmax": tp.SoftmaxAttention(1.0, Q=Q, K=-Q, V=V),
        "L2": tp.L2Attention(1.0, Q=Q, K=-Q, V=V),
        # two row-block heads (k = 1) with their own V: A = sum_h A_h = -Q^T Q
        "multi-head": tp.MultiHeadAttention([tp.SoftmaxAttention(1.0, Q=Q[:1], K=-Q[:1], V=V),
                                             tp.SoftmaxAttention(1.0, Q=Q[1:], K=-Q[1:], V=V2)]),
        "Sinkhorn": tp.SinkhornAttention(1.0, Q=Q, K=-Q, V=V),
    }
    q = rng.standard_normal(D)
    q /= np.linalg.norm(q)
    row = q[None, :]
    eye = np.eye(D)
    b = {
        "softmax": tp.SoftmaxAttention(1.0, Q=row, K=-row),
        "L2": tp.L2Attention(1.0, Q=row, K=-row),
        # S = 0.5 (-2 q q^T) + 0.5 (-4 q q^T): the same limit as softmax
        "multi-head": tp.MultiHeadAttention([tp.SoftmaxAttention(1.0, Q=row, K=-row, V=0.5 * eye),
                                             tp.SoftmaxAttention(1.0, Q=row, K=-2.0 * row, V=0.5 * eye)]),
        "Sinkhorn": tp.SinkhornAttention(1.0, Q=row, K=-row),
    }
    r = np.random.default_rng(1)
    Qc = r.standard_normal((D, D))
    Kc = Qc + 0.5 * r.standard_normal((D, D))
    A = Kc.T @ Qc
    assert np.linalg.eigvalsh(A + A.T).min() > 0.0 and np.abs(A - A.T).max() > 0.1
    c = {
        "softmax": tp.SoftmaxAttention(1.0, Q=Qc, K=Kc),
        "L2": tp.L2Attention(1.0, Q=Qc, K=Kc),
        "multi-head": tp.MultiHeadAttention([tp.SoftmaxAttention(1.0, Q=Qc[:1], K=Kc[:1], V=1.4 * eye),
                                             tp.SoftmaxAttention(1.0, Q=Qc[1:], K=Kc[1:], V=0.6 * eye)]),
        "Sinkhorn": tp.SinkhornAttention(1.0, Q=Qc, K=Kc),
    }
    models = {k: {v: _euclid(att) for v, att in m.items()} for k, m in zip(REGIMES, (a, b, c), strict=True)}
    return models, {"Q_a": Q, "V_a": V, "V2_a": V2, "q_b": q, "Q_c": Qc, "K_c": Kc, "A_c": A}


def _shape_eigs(cov):
    """Eigenvalues (ascending) of Sigma / tr Sigma, shape (..., d)."""
    cov = np.asarray(cov)
    return np.linalg.eigvalsh(cov / np.trace(cov, axis1=-2, axis2=-1)[..., None, None])


def _trace(cov):
    return np.trace(cov, axis1=-2, axis2=-1)


def _curves(models, mats):
    """Moment trajectories per regime and variant, plus the checks on them."""
    checks, curves, info = [], {}, {}
    # (a) collapse to 0 at the rate 1/t (reached late: A = -Q^T Q has a small eigenvalue)
    t_a = np.concatenate([[0.0], np.geomspace(1e-2, 1e5, 141)])
    i4 = int(np.argmin(np.abs(t_a - 1e4)))
    for v, dyn in models["a"].items():
        tr = tp.gaussian_moments(dyn, MEAN0, SIGMA0, t_a)
        trace = _trace(tr.cov)
        curves["a", v] = (t_a, trace, _shape_eigs(tr.cov))
        checks.append(check_range(f"(a) {v}: tr Sigma(1e5) / tr Sigma0", trace[-1] / trace[0],
                                  high=1e-2, note="collapse to 0"))
        rate = np.log(trace[-1] / trace[i4]) / np.log(t_a[-1] / t_a[i4])
        checks.append(check_range(f"(a) {v}: d log tr Sigma / d log t over [1e4, 1e5]", rate,
                                  -1.1, -0.9, note="algebraic rate tr Sigma ~ C/t"))
        info[f"a_{v}_trace_T"] = float(trace[-1])
    # (b) collapse onto the line q-perp
    q = mats["q_b"]
    limit = SIGMA0 - np.outer(SIGMA0 @ q, SIGMA0 @ q) / (q @ SIGMA0 @ q)
    t_b = np.concatenate([[0.0], np.geomspace(1e-2, 1e4, 121)])
    for v, dyn in models["b"].items():
        tr = tp.gaussian_moments(dyn, MEAN0, SIGMA0, t_b)
        eigs = _shape_eigs(tr.cov)
        curves["b", v] = (t_b, _trace(tr.cov), eigs)
        err = np.linalg.norm(tr.cov[-1] - limit) / np.linalg.norm(limit)
        info[f"b_{v}_relerr_to_limit"] = float(err)
        if v in ("softmax", "multi-head"):
            # exact: Sigma(t) - limit = Sigma0 q q^T Sigma0 (1/(q^T S0 q) - 1/(q^T S0 q + 1/(s t)))
            checks.append(check_range(
                f"(b) {v}: |Sigma(1e4) - limit| / |limit|", err, high=1e-3,
                note="limit Sigma0 - Sigma0 q (q^T Sigma0 q)^-1 q^T Sigma0; O(1/t) approach"))
        checks.append(check_range(f"(b) {v}: smallest eigenvalue of Sigma/tr Sigma at t=1e4",
                                  eigs[-1, 0], high=1e-3, note="rank d-1 = 1"))
        checks.append(check_range(f"(b) {v}: tr Sigma(1e4) / tr(limit)", _trace(tr.cov[-1]) / np.trace(limit),
                                  0.9, 1.1, note="no collapse to 0"))
    # (c) blow-up
    for v, dyn in models["c"].items():
        try:
            tp.gaussian_moments(dyn, MEAN0, SIGMA0, [0.0, 50.0])
            raise AssertionError(f"(c) {v}: no growth past max_trace by t = 50")
        except GaussianBlowUpError as err:
            t_event, finite = err.t, err.finite_time
        info[f"c_{v}_event_t"] = t_event
        info[f"c_{v}_finite_time"] = finite
        if v in ("softmax", "multi-head"):
            t_star = tp.blow_up_time(dyn, SIGMA0)
            info[f"c_{v}_blow_up_time"] = t_star
            checks.append(check_range(f"(c) {v}: |t*(gaussian_moments) - t*(blow_up_time)|",
                                      abs(t_event - t_star) if finite else np.inf, high=1e-6,
                                      note=f"t* = {t_star:.10g}, finite-time blow-up"))
            t_end = t_star * (1.0 - 1e-6)
            tt = t_star * (1.0 - np.geomspace(1.0, 1e-6, 121))
        else:
            checks.append(check_range(f"(c) {v}: finite-time blow-up detected (1 = yes)",
                                      float(finite), 0.0, 0.0,
                                      note="M bounded: exponential growth, tr Sigma hit 1e8 "
                                           f"at t={t_event:.4g}"))
            t_end = t_event * (1.0 - 1e-3)
            tt = np.linspace(0.0, t_end, 121)
        tr = tp.gaussian_moments(dyn, MEAN0, SIGMA0, tt)
        eigs = _shape_eigs(tr.cov)
        trace = _trace(tr.cov)
        curves["c", v] = (tt, trace, eigs)
        info[f"c_{v}_final_shape_eig"] = float(eigs[-1, 0])
        if v == "Sinkhorn":
            mid = int(np.argmin(np.abs(tt - 0.5 * t_end)))
            checks.append(check_range(
                "(c) Sinkhorn: growth rate log(tr Sigma/tr Sigma0)/t at the end",
                np.log(trace[-1] / trace[0]) / tt[-1],
                high=2.0, note="|f| < 1 bounds it by 2 (V = I)"))
            checks.append(check_range(
                "(c) Sinkhorn: change of the smallest shape eigenvalue over [t/2, t]",
                abs(eigs[-1, 0] - eigs[mid, 0]), high=1e-3,
                note=f"shape freezes at a full-rank limit (eigenvalue {eigs[-1, 0]:.4g}), not rank one"))
        else:
            checks.append(check_range(f"(c) {v}: smallest eigenvalue of Sigma/tr Sigma near the end",
                                      eigs[-1, 0], high=1e-4, note="rank-one limit shape"))
    return checks, curves, info


def _particles(models, n, reps):
    """Softmax particles from N(0, Sigma0) in each regime, vs the closed form.

    Each run starts from n/2 Gaussian draws and their negatives: a symmetric measure stays
    symmetric, so the particles' mean is 0 at all times (the mean is unstable,
    m' = V(I + Sigma A)m, and is irrelevant to the covariance). The standard error of one
    run's normalized covariance is the spread over ``reps`` independent runs (it is larger
    than the propagated Wishart error of the initial covariance alone: the higher moments
    of the empirical measure also drive the covariance of the particles).
    """
    checks, runs = [], {}
    t_star = tp.blow_up_time(models["c"]["softmax"], SIGMA0)
    plans = {"a": np.array([0.0, 0.5, 1.0, 1.5]), "b": np.array([0.0, 0.5, 1.0, 2.0]),
             "c": t_star * np.array([0.0, 0.25, 0.5, 0.8])}
    # the moderate time of the check (index into the plan): (c) at t*/4, before the
    # particles' systematic lag behind the blow-up (about 6 s.e. of the mean of 12 runs at
    # t*/2) becomes comparable with the spread of one run
    check_at = {"a": 2, "b": 2, "c": 1}
    for k in REGIMES:
        j = check_at[k]
        dyn = models[k]["softmax"]
        t = plans[k]
        ref = tp.gaussian_moments(dyn, MEAN0, SIGMA0, t).cov
        ref_n = ref[j] / np.trace(ref[j])
        stats, first = [], None
        for r in range(reps):
            half = np.random.default_rng(r).multivariate_normal(MEAN0, SIGMA0, size=n // 2)
            x0 = np.concatenate([half, -half])
            traj = tp.simulate(dyn, x0, (t[0], t[-1]), t_eval=t, dt=0.05)
            emp = np.einsum("tni,tnj->tij", traj.x, traj.x) / len(x0)  # mean is exactly 0
            stats.append((emp[j] / np.trace(emp[j]))[[0, 0], [0, 1]])
            if first is None:
                first = (emp, traj.x[-1])
        stats = np.array(stats)
        se = stats.std(axis=0, ddof=1)
        z = np.abs(stats - ref_n[[0, 0], [0, 1]]) / se
        z_mean = np.abs(stats.mean(axis=0) - ref_n[[0, 0], [0, 1]]) / (se / np.sqrt(reps))
        checks.append(check_range(
            f"({k}) softmax particles (n={n}): max over runs |normalized cov - closed form| / s.e. "
            f"at t={t[j]:.3g}", float(z.max()), high=4.0,
            note=f"entries (1,1), (1,2); s.e. of one run {se[0]:.2g}, {se[1]:.2g} from {reps} runs; "
                 f"mean over runs at {z_mean.max():.2f} s.e. of the mean"))
        runs[k] = {"t": t, "emp": first[0], "ref": ref, "x": first[1], "z": z.tolist(),
                   "z_mean": z_mean.tolist(), "se": se.tolist()}
    return checks, runs


QUICK = {"n": 2000, "reps": 4}
FULL = {"n": 2000, "reps": 12}


def measure(params: dict) -> dict:
    """Moment trajectories in the three regimes and the particle runs, with their checks."""
    started = time.perf_counter()
    n, reps = params["n"], params["reps"]
    models, mats = _models()
    checks, curves, info = _curves(models, mats)
    print(f"moments done ({time.perf_counter() - started:.1f} s)", flush=True)
    pchecks, runs = _particles(models, n, reps)
    checks += pchecks
    print(f"particles done ({time.perf_counter() - started:.1f} s)", flush=True)
    return {"checks": checks, "curves": curves, "runs": runs, "info": info, "mats": mats, "n": n,
            "reps": reps}


def checks(results: dict) -> list:
    """The checks of the regimes (built by ``_curves``) and of the particles (``_particles``)."""
    return results["checks"]


def _extra(results: dict) -> dict:
    runs, mats = results["runs"], results["mats"]
    return {"info": results["info"], "n_particles": results["n"], "particle_runs": results["reps"],
            "particle_z_scores": {k: r["z"] for k, r in runs.items()},
            "particle_z_scores_of_mean": {k: r["z_mean"] for k, r in runs.items()},
            "particle_se": {k: r["se"] for k, r in runs.items()},
            "matrices": {k: np.asarray(m).tolist() for k, m in mats.items()},
            "Sigma0": SIGMA0.tolist()}


def figure(results: dict):
    """Trace, smallest shape eigenvalue and 2-sigma ellipses in each regime."""
    return _figure(results["curves"], results["runs"])


def _ellipse(cov, scale=2.0):
    w, U = np.linalg.eigh(cov)
    s = np.linspace(0.0, 2.0 * np.pi, 200)
    return (U * (scale * np.sqrt(np.maximum(w, 0.0)))) @ np.stack([np.cos(s), np.sin(s)])


def _figure(curves, runs):
    from matplotlib.figure import Figure

    from ..plotting import legend_outside

    fig = Figure(figsize=(15, 12), layout="constrained")
    axes = fig.subplots(3, 3)
    colors = dict(zip(VARIANTS, ("C0", "C1", "C2", "C3"), strict=True))
    for col, k in enumerate(REGIMES):
        ax_tr, ax_eig, ax_el = axes[:, col]
        for v in VARIANTS:
            t, trace, eigs = curves[k, v]
            style = "--" if v == "multi-head" else "-"
            if k == "c" and v in ("softmax", "multi-head"):
                x = t[-1] / (1.0 - 1e-6) - t  # time to blow-up
                ax_tr.loglog(x[1:], trace[1:] / trace[0], style, color=colors[v], label=v)
                ax_eig.loglog(x[1:], eigs[1:, 0], style, color=colors[v], label=v)
            else:
                ax_tr.loglog(t[1:], trace[1:] / trace[0], style, color=colors[v], label=v)
                ax_eig.loglog(t[1:], np.maximum(eigs[1:, 0], 1e-16), style, color=colors[v], label=v)
        if k == "c":
            ax_tr.set_xlabel(r"$t^* - t$ (softmax, multi-head: finite $t^*$);  $t$ (L2, Sinkhorn)")
            ax_eig.set_xlabel(r"$t^* - t$ (softmax, multi-head);  $t$ (L2, Sinkhorn)")
        else:
            ax_tr.set_xlabel("$t$")
            ax_eig.set_xlabel("$t$")
        ax_tr.set_ylabel(r"$\mathrm{tr}\,\Sigma(t)\,/\,\mathrm{tr}\,\Sigma_0$")
        ax_eig.set_ylabel(r"$\lambda_{\min}(\Sigma)\,/\,\mathrm{tr}\,\Sigma$")
        ax_tr.set_title(TITLES[k])
        run = runs[k]
        ax_el.plot(run["x"][:, 0], run["x"][:, 1], ".", ms=1.5, color="0.75",
                   label=f"particles at $t={run['t'][-1]:.3g}$")
        for i, t in enumerate(run["t"]):
            e_ref = _ellipse(run["ref"][i])
            e_emp = _ellipse(run["emp"][i])
            ax_el.plot(e_ref[0], e_ref[1], "-", color=f"C{i}", label=f"closed form $t={t:.3g}$")
            ax_el.plot(e_emp[0], e_emp[1], ":", color="k", lw=1.2,
                       label="particles' covariance" if i == 0 else None)
        ax_el.set_aspect("equal", adjustable="datalim")
        ax_el.set_title(f"{TITLES[k]}: softmax, $2\\sigma$ ellipses")
        ax_el.set_xlabel("$x_1$")
        ax_el.set_ylabel("$x_2$")
        legend_outside(ax_el, side="below", fontsize="x-small")
    # one legend for the six panels of the moments (the same variants, colours and styles)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=len(VARIANTS), fontsize="small")
    return fig


VALIDATION = Validation(name=NAME, theory=THEORY, measure=measure, checks=checks, figure=figure,
                        quick=QUICK, full=FULL, extra=_extra, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(run(VALIDATION))
