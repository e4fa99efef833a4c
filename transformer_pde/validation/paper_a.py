r"""Paper A in R^d: nested hulls (V = I), three hyperplanes (good triple), Boolean P (d = 1).

Theory (docs/math.md §1.1-1.3, 6 item 10; Geshkovski-Letrouit-Polyanskiy-Rigollet, arXiv
2305.05465). Tokens in R^d follow dx_i/dt = sum_j P_ij(t) V x_j with
P = softmax_j(<Q x_i, K x_j>) (tp.SoftmaxAttention(beta=1, Q, K, V), geometry
"euclidean"). They grow like e^{tV}; the rescaled tokens z_i = e^{-tV} x_i solve
dz_i/dt = sum_j P_ij V (z_j - z_i) with P from the logits <Q e^{tV} z_i, K e^{tV} z_j>
(docs/math.md §1.1, e:Rres). Here x comes from tp.simulate (dopri5, rtol 1e-12) and
z = e^{-tV} x (eigendecomposition of V, checked against scipy.linalg.expm). The
integration error of a run is estimated by a second run at rtol 1e-10: its difference
from the first bounds the first's error (error ~ rtol, so the rtol 1e-12 run is ~100x
better), and it is the tolerance of the invariants below that hold exactly for the ODE.

(a) V = Q = K = I, d = 2, n = 20, x_i(0) ~ U[-5, 5]^2 (docs/math.md §1.3), T = 10:
  * the rescaled system (e:Rres) integrated directly with RK4 (tp.simulate(method=
    "rescaled")) agrees with e^{-tV} x(t) on [0, 1.5] within 10x its Richardson error
    estimate plus the simulate error;
  * conv{z_i(t)} is non-increasing for inclusion (p:noninc): every z_i(t_{k+1}) lies in
    conv{z(t_k)} (signed distance to the hull's facets, scipy ConvexHull) within the
    integration error, for consecutive saved times (hence for all pairs, by transitivity);
  * the limit (t:Idcase11): every z_i converges to a point of S, S subset of
    boundary(K) + {0}, vert(K) subset of S = {x in K: |x|^2 = max_j <x, v_j>} (A = I).
    Rows of a Boolean P pull z_i to its leader at rate 1, so the distance left to the
    limit at T is ~ drift / (e - 1), drift = max_i |z_i(T) - z_i(T - 1)|; the final tokens
    are grouped (clustering.cluster_labels, Euclidean distance delta =
    10 drift / (e - 1) + integration error), the group means estimate S and their hull K.
    Checks: each z_i(T) is within delta of the boundary of K (distance to the nearest edge)
    or of 0; each vertex v of K has max_j <v, v_j> - |v|^2 <= 2 max|v| delta (>= 0 holds
    trivially, j = v; the strict margin |v|^2 - max_{j != v} <v, v_j> is reported).
(b) good triple (d:good): V = [[0.64709742, 0.81911926], [0.61210449, 0.63263484]]
  (eigenvalues 1.348, -0.068: top one real, positive, simple), Q = K = I, n = 20, T = 10.
  The dual eigenfunctional phi_1^* (left eigenvector, phi_1^* phi_1 = 1) satisfies
  d(phi_1^* z_i)/dt = lambda_1 sum_j P_ij (phi_1^* z_j - phi_1^* z_i), so its values
  relax at rate lambda_1 and the distance left at T is ~ drift / (e^lambda_1 - 1); the
  values phi_1^*(z_i(T)) are grouped with the gap delta = 10 drift/(e^lambda_1 - 1) +
  integration error, and the number of groups (hyperplanes, l:3hyperplanes11) must be
  <= 3.
(c) d = 1 (t:boolean): V = Q = K = 1, n = 20 distinct tokens x_i(0) ~ U[-1, 1], T = 10.
  P(t) = clustering.attention_matrix must converge to a Boolean matrix except for at most
  one row: rows with 1 - max_j P_ij > 1e-6 are counted (<= 1). For a token z_i != 0 the
  off-leader weights are ~ exp(-e^{2t} |z_i| gap) with gaps shrinking only like e^{-t}, so
  a Boolean row is far below 1e-6 by T = 10 (measured: exactly 0 in float64); only a token
  within ~e^{-T} of 0 (measure zero) could stay above. Also: P(T) converged
  (max |P(T) - P(T - 1)| <= 1e-6), numerical rank (rtol 1e-6) <= 2 (+1 with the
  exceptional row), and the leaders (columns attracting a row) are among the extreme
  tokens {argmin x(0), argmax x(0)} (the order of tokens is preserved in d = 1). Both are
  leaders only if both signs of z survive: while P is still nearly uniform every z_i moves
  towards the mean, and a token near 0 can change sign; with seed 4 all tokens end positive
  and argmax x(0) is the only leader (rank 1), which the theorem allows (every row e_a or
  e_b). The mechanism is checked row by row: row i's leader is argmax x(0) if z_i(T) > 0,
  argmin x(0) if z_i(T) < 0.
(For V = I and generic data all limit points came out as vertices of K; the "boundary or
0" alternative is checked but was not exercised.)

Run: python -m transformer_pde.validation.paper_a [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
import time

import numpy as np
from scipy.linalg import eig, expm
from scipy.spatial import ConvexHull

import transformer_pde as tp
from transformer_pde import clustering as cl
from transformer_pde.checks import Validation, check_range, run

__all__ = ["VALIDATION", "measure", "checks", "figure"]

NAME = "paper_a"
THEORY = ("Paper A (docs/math.md §1.1-1.3): with z = e^{-tV} x, conv{z_i(t)} is non-increasing and z_i "
          "converge to S (vertices satisfy |v|^2 = max_j <v, v_j>) for V = I; for a good triple the "
          "values phi_1^*(z_i) gather on <= 3 hyperplanes; in d = 1, P(t) becomes Boolean "
          "(<= 1 exceptional row), rank <= 2, leaders = extreme tokens.")

GOOD_V = np.array([[0.64709742, 0.81911926], [0.61210449, 0.63263484]])
T_END = 10.0
RTOL, RTOL_CHECK = 1e-12, 1e-10
BOOL_TOL = 1e-6


def _dynamics(V, d):
    eye = np.eye(d)
    att = tp.SoftmaxAttention(1.0, Q=eye, K=eye, V=V)
    return att, tp.TokenDynamics(att, geometry="euclidean")


def _exp_tV(V):
    """t -> e^{tV} through the eigendecomposition of V (real, diagonalizable here; checked
    against scipy.linalg.expm), cheaper than calling expm at every time."""
    w, R = np.linalg.eig(V)
    if np.any(np.abs(w.imag) > 0):
        return lambda t: expm(t * V)
    w, R = w.real, R.real
    Rinv = np.linalg.inv(R)

    def exp_tV(t):
        return (R * np.exp(t * w)) @ Rinv

    assert np.allclose(exp_tV(-3.0), expm(-3.0 * V), rtol=1e-12, atol=1e-14)
    return exp_tV


def _rescaled_run(V, x0, t):
    """z(t) = e^{-tV} x(t) from tp.simulate, and the error estimate of that run."""
    att, dyn = _dynamics(V, x0.shape[1])
    exp_tV = _exp_tV(V)
    back = [exp_tV(-tk).T for tk in t]
    zs = []
    for rtol in (RTOL, RTOL_CHECK):
        traj = tp.simulate(dyn, x0, (t[0], t[-1]), t_eval=t, method="dopri5", rtol=rtol, atol=1e-12)
        zs.append(np.stack([xk @ b for b, xk in zip(back, traj.x, strict=True)]))
    return zs[0], float(np.max(np.abs(zs[0] - zs[1]))), att


def _rk4_rescaled(att, V, z0, t_end, h):
    """z(t_end) of the rescaled ODE dz_i/dt = sum_j P_ij V (z_j - z_i) (P from the logits of
    x = e^{tV} z) by the package's tp.simulate(method="rescaled") (fixed-step RK4 on z),
    mapped back from its tokens: z = e^{-tV} x."""
    dyn = tp.TokenDynamics(att, geometry="euclidean")
    x = tp.simulate(dyn, z0, (0.0, t_end), t_eval=[0.0, t_end], method="rescaled", dt=h).x[-1]
    return x @ _exp_tV(V)(-t_end).T


def _dist_to_polygon(points, verts):
    """Distance of each point (m, 2) to the boundary of the polygon with vertices ``verts``
    (in order): the nearest edge segment."""
    a, b = verts, np.roll(verts, -1, axis=0)
    ab = b - a
    s = np.einsum("mek,ek->me", points[:, None, :] - a[None], ab) / np.einsum("ek,ek->e", ab, ab)
    foot = a[None] + np.clip(s, 0.0, 1.0)[..., None] * ab[None]
    return np.min(np.linalg.norm(points[:, None, :] - foot, axis=2), axis=1)


def _outside(points, hull_points):
    """Largest signed distance of ``points`` outside conv(hull_points) (<= 0 when inside)."""
    hull = ConvexHull(hull_points)
    return float(np.max(points @ hull.equations[:, :-1].T + hull.equations[:, -1]))


# ---------------------------------------------------------------------------------------
# (a) V = I: nested hulls and the limit set S
# ---------------------------------------------------------------------------------------
def _identity_case(seed, t, cross_check):
    checks, info = [], {}
    d = 2
    V = np.eye(d)
    x0 = np.random.default_rng(seed).uniform(-5.0, 5.0, (20, d))
    z, err, att = _rescaled_run(V, x0, t)
    scale = float(np.max(np.abs(x0)))
    tol_hull = err + 1e-13 * scale  # integration error + round-off of the hull facets
    outside = np.array([_outside(z[k + 1], z[k]) for k in range(len(t) - 1)])
    tag = f"(a) V=I seed {seed}"
    checks.append(check_range(
        f"{tag}: max over saved t_k of the distance of z(t_k+1) outside conv z(t_k)",
        float(outside.max()), high=tol_hull,
        note=f"hulls nested (p:noninc); tolerance = integration error {err:.2g} + round-off"))
    if cross_check:
        t_c, h = 1.5, 2.5e-3
        k = int(np.argmin(np.abs(t - t_c)))
        z_h = _rk4_rescaled(att, V, x0, t_c, h)
        z_h2 = _rk4_rescaled(att, V, x0, t_c, h / 2)
        rich = float(np.max(np.abs(z_h - z_h2))) / 15.0
        diff = float(np.max(np.abs(z_h2 - z[k])))
        checks.append(check_range(
            f"{tag}: max |z(RK4 on the rescaled ODE) - e^(-tV) x(simulate)| at t={t[k]:g}",
            diff, high=10.0 * rich + err + 1e-12 * scale,
            note=f"docs/math.md §1.1 e:Rres, §9.17; simulate(method='rescaled') h={h / 2:g}, "
                 f"Richardson error {rich:.2g}"))
        info["rescaled_cross_check"] = {"diff": diff, "richardson": rich, "t": float(t[k])}
    # the limit set
    j1 = int(np.argmin(np.abs(t - (t[-1] - 1.0))))
    drift = float(np.max(np.linalg.norm(z[-1] - z[j1], axis=1)))
    delta = 10.0 * drift / (np.e ** (t[-1] - t[j1]) - 1.0) + err
    labels = cl.cluster_labels(z[-1], distance=delta)
    S = np.array([z[-1][labels == c].mean(axis=0) for c in range(labels.max() + 1)])
    spread = max(float(np.max(np.linalg.norm(z[-1][labels == c] - S[c], axis=1)))
                 for c in range(len(S)))
    hull = ConvexHull(S)
    verts = S[hull.vertices]  # counter-clockwise in 2-D
    where = np.minimum(_dist_to_polygon(z[-1], verts), np.linalg.norm(z[-1], axis=1))
    interior = int(np.sum(_dist_to_polygon(S, verts) > delta))
    checks.append(check_range(
        f"{tag}: max over tokens of min(dist(z_i(T), boundary of K), |z_i(T)|)", float(where.max()),
        high=delta, note=f"t:Idcase11: z_i -> boundary(K) or 0; {len(S)} limit points, "
                         f"{len(hull.vertices)} vertices of K, {interior} off the boundary; delta = "
                         f"{delta:.2g} (10 x distance left to the limit at rate 1 + integration error)"))
    gram = verts @ verts.T
    s_gap = float(np.max(gram.max(axis=1) - np.diag(gram)))
    others = np.where(np.eye(len(verts), dtype=bool), -np.inf, gram)
    margin = float(np.min(np.diag(gram) - others.max(axis=1)))
    radius = float(np.max(np.linalg.norm(verts, axis=1)))
    checks.append(check_range(
        f"{tag}: max over vertices v of K of max_j <v, v_j> - |v|^2", s_gap, high=2 * radius * delta,
        note="vert(K) subset of S = {|Av|^2 = max_j <Av, Av_j>}, A = I; tolerance 2 max|v| delta; "
             f"strict margin min_v (|v|^2 - max_(j != v) <v, v_j>) = {margin:.3g}"))
    areas = np.array([ConvexHull(zk).volume for zk in z])
    info.update({"seed": seed, "integration_error": err, "max_outside": float(outside.max()),
                 "drift_last_unit": drift, "delta": delta, "n_limit_points": len(S),
                 "max_group_spread": spread, "limit_points": S.tolist(),
                 "vertices": verts.tolist(), "max_dist_boundary_or_zero": float(where.max()),
                 "S_condition_gap": s_gap, "S_condition_strict_margin": margin,
                 "area_T": float(areas[-1]), "area_0": float(areas[0])})
    return checks, {"t": t, "z": z, "S": S, "K": verts, "areas": areas}, info


# ---------------------------------------------------------------------------------------
# (b) good triple: at most three hyperplanes
# ---------------------------------------------------------------------------------------
def _good_triple_case(seed, t):
    w, left, right = eig(GOOD_V, left=True)
    i = int(np.argmax(w.real))
    lam, phi, psi = float(w[i].real), right[:, i].real, left[:, i].real
    psi = psi / (psi @ phi)  # phi_1^*(phi_1) = 1
    x0 = np.random.default_rng(seed).uniform(-5.0, 5.0, (20, 2))
    z, err, _ = _rescaled_run(GOOD_V, x0, t)
    values = z @ psi
    j1 = int(np.argmin(np.abs(t - (t[-1] - 1.0))))
    drift = float(np.max(np.abs(values[-1] - values[j1])))
    delta = 10.0 * drift / (np.exp(lam * (t[-1] - t[j1])) - 1.0) + err * float(np.abs(psi).sum())
    labels = cl.cluster_labels(values[-1][:, None], distance=delta)
    levels = np.array([values[-1][labels == c].mean() for c in range(labels.max() + 1)])
    tag = f"(b) good triple seed {seed}"
    check = check_range(
        f"{tag}: number of values of phi_1^*(z_i(T)) (hyperplanes)", len(levels), 1, 3,
        note=f"l:3hyperplanes11; levels {np.round(np.sort(levels), 5).tolist()}, gap delta={delta:.2g} "
             f"(10 x distance left at rate lambda_1={lam:.4g} + integration error)")
    info = {"seed": seed, "lambda": list(np.sort(w.real)), "phi1": phi.tolist(), "phi1_star": psi.tolist(),
            "levels": np.sort(levels).tolist(), "delta": delta, "drift_last_unit": drift,
            "integration_error": err,
            "max_group_spread": float(max(np.ptp(values[-1][labels == c]) for c in range(len(levels))))}
    return check, {"t": t, "z": z, "values": values, "levels": levels, "psi": psi}, info


# ---------------------------------------------------------------------------------------
# (c) d = 1: Boolean attention matrix
# ---------------------------------------------------------------------------------------
def _boolean_case(seed, t):
    one = np.ones((1, 1))
    att, dyn = _dynamics(one, 1)
    x0 = np.random.default_rng(seed).uniform(-1.0, 1.0, (20, 1))
    traj = tp.simulate(dyn, x0, (t[0], t[-1]), t_eval=t, method="dopri5", rtol=RTOL, atol=1e-12)
    P = np.stack([cl.attention_matrix(att, xk) for xk in traj.x])
    dist = np.array([cl.boolean_distance(Pk) for Pk in P])
    rank = np.array([cl.numerical_rank(Pk) for Pk in P])
    row_off = 1.0 - P[-1].max(axis=1)
    exceptional = int(np.sum(row_off > BOOL_TOL))
    j1 = int(np.argmin(np.abs(t - (t[-1] - 1.0))))
    change = float(np.max(np.abs(P[-1] - P[j1])))
    lead = cl.leaders(P[-1])
    i_min, i_max = int(np.argmin(x0)), int(np.argmax(x0))
    extremes = np.array(sorted({i_min, i_max}))
    # mechanism (docs/math.md §1.2): row i concentrates on argmax_j z_j if z_i > 0, on argmin if z_i < 0
    z_T = traj.x[-1, :, 0] * np.exp(-t[-1])
    predicted = np.where(z_T > 0, i_max, i_min)
    wrong_rows = int(np.sum(np.argmax(P[-1], axis=1) != predicted))
    tag = f"(c) d=1 seed {seed}"
    checks = [
        check_range(f"{tag}: rows of P(T) with 1 - max_j P_ij > {BOOL_TOL:g}", exceptional, 0, 1,
                    note=f"t:boolean: Boolean limit, <= 1 exceptional row; boolean_distance(P(T)) = "
                         f"{dist[-1]:.3g}"),
        check_range(f"{tag}: max |P(T) - P(T-1)|", change, high=BOOL_TOL, note="P(t) converges"),
        check_range(f"{tag}: numerical rank of P(T) (rtol 1e-6)", int(rank[-1]), 1, 2 + exceptional,
                    note="rank <= 2 (<= 3 with an exceptional row)"),
        check_range(f"{tag}: leaders(P(T)) subset of {{argmin x(0), argmax x(0)}} (1 = yes)",
                    float(len(lead) >= 1 and set(lead.tolist()) <= set(extremes.tolist())), 1, 1,
                    note=f"leaders {lead.tolist()}, extreme tokens {extremes.tolist()}; "
                         f"{int(np.sum(z_T > 0))} of {len(z_T)} tokens end with z > 0"),
        check_range(f"{tag}: rows whose leader is not argmax x(0) (z_i(T) > 0) / argmin x(0) (z_i(T) < 0)",
                    wrong_rows, 0, 0, note="mechanism: P_ij ~ exp(e^(2t) z_i z_j)"),
    ]
    info = {"seed": seed, "boolean_distance_T": float(dist[-1]), "exceptional_rows": exceptional,
            "rank_T": int(rank[-1]), "leaders": lead.tolist(), "extremes": extremes.tolist(),
            "n_positive_T": int(np.sum(z_T > 0)),
            "P_change_last_unit": change,
            "first_t_boolean_distance_below_1e-6": float(t[np.argmax(dist <= BOOL_TOL)])
            if np.any(dist <= BOOL_TOL) else None}
    order = np.argsort(x0[:, 0])
    return checks, {"t": t, "dist": dist, "rank": rank, "P": P[-1][np.ix_(order, order)],
                    "x0": x0[order, 0]}, info


QUICK = {"seeds_a": [0], "seeds_b": [0], "seeds_c": [0, 1]}
FULL = {"seeds_a": list(range(4)), "seeds_b": list(range(4)), "seeds_c": list(range(8))}


def measure(params: dict) -> dict:
    """The three cases of Paper A per seed, each with its checks."""
    started = time.perf_counter()
    seeds_a, seeds_b, seeds_c = (tuple(params[k]) for k in ("seeds_a", "seeds_b", "seeds_c"))
    t = np.linspace(0.0, T_END, 201)
    checks, runs, extra = [], {}, {"T": T_END, "rtol": RTOL, "rtol_error_estimate": RTOL_CHECK}
    for s in seeds_a:
        c, runs["a", s], extra[f"a_seed{s}"] = _identity_case(s, t, cross_check=s == seeds_a[0])
        checks += c
    print(f"(a) done ({time.perf_counter() - started:.1f} s)", flush=True)
    for s in seeds_b:
        c, runs["b", s], extra[f"b_seed{s}"] = _good_triple_case(s, t)
        checks.append(c)
    print(f"(b) done ({time.perf_counter() - started:.1f} s)", flush=True)
    t_c = np.linspace(0.0, T_END, 101)
    for s in seeds_c:
        c, runs["c", s], extra[f"c_seed{s}"] = _boolean_case(s, t_c)
        checks += c
    print(f"(c) done ({time.perf_counter() - started:.1f} s)", flush=True)
    return {"checks": checks, "runs": runs, "extra": extra, "first": (seeds_a[0], seeds_b[0], seeds_c[0])}


def checks(results: dict) -> list:
    """The checks of each case, built by ``_identity_case``, ``_good_triple_case``, ``_boolean_case``."""
    return results["checks"]


def _extra(results: dict) -> dict:
    return results["extra"]


def figure(results: dict):
    """Hulls of the rescaled tokens, the good triple's hyperplanes, the d = 1 attention matrix."""
    return _figure(results["runs"], *results["first"])


def _closed(points):
    hull = ConvexHull(points)
    v = points[hull.vertices]
    return np.vstack([v, v[:1]])


def _figure(runs, sa, sb, sc):
    from matplotlib.figure import Figure

    from ..plotting import legend_outside

    fig = Figure(figsize=(17, 10), layout="constrained")
    ax = fig.subplots(2, 3)
    # (a) trajectories and nested hulls
    a, run = ax[0, 0], runs["a", sa]
    t, z = run["t"], run["z"]
    for i in range(z.shape[1]):
        a.plot(z[:, i, 0], z[:, i, 1], "-", color="0.7", lw=0.7)
    for j, tk in enumerate((0.0, 0.5, 1.0, 2.0, 4.0, t[-1])):
        k = int(np.argmin(np.abs(t - tk)))
        poly = _closed(z[k])
        a.plot(poly[:, 0], poly[:, 1], "-", color=f"C{j}", lw=1.2, label=f"conv $z(t={t[k]:g})$")
    a.plot(z[0, :, 0], z[0, :, 1], "o", ms=3, color="C0")
    K = _closed(run["S"])
    a.plot(K[:, 0], K[:, 1], "--", color="k", lw=1.5, label="limit polytope $K$ (theory: nested limit)")
    a.plot(run["S"][:, 0], run["S"][:, 1], "*", ms=10, color="k", label="limit points ($S$)")
    a.set_aspect("equal", adjustable="datalim")
    a.set_xlabel("$z_1$")
    a.set_ylabel("$z_2$")
    a.set_title(f"(a) $V = I$: $z = e^{{-t}} x$, nested hulls (seed {sa})")
    legend_outside(a, fontsize="x-small")
    # (a) hull area
    a = ax[1, 0]
    a.plot(t, run["areas"], "-", label="area of conv $z(t)$ (measured)")
    a.axhline(ConvexHull(run["S"]).volume, ls="--", color="k", label="area of the limit polytope $K$")
    a.set_xlabel("$t$")
    a.set_ylabel("area")
    a.set_title("(a) $V = I$: hull area, non-increasing (p:noninc)")
    a.legend(fontsize="small")
    # (b) good triple in the plane and the values of phi_1^*
    a, run = ax[0, 1], runs["b", sb]
    t, z, psi = run["t"], run["z"], run["psi"]
    for i in range(z.shape[1]):
        a.plot(z[:, i, 0], z[:, i, 1], "-", color="0.7", lw=0.7)
    a.plot(z[0, :, 0], z[0, :, 1], "o", ms=3, color="C0", label="$z(0)$")
    a.plot(z[-1, :, 0], z[-1, :, 1], "o", ms=4, color="C3", label=f"$z(T={t[-1]:g})$")
    lim = np.array([z[..., 0].min(), z[..., 0].max()])
    for c in run["levels"]:
        # the line psi . z = c, parametrized by z_1
        a.plot(lim, (c - psi[0] * lim) / psi[1], "--", color="k", lw=1)
    a.plot([], [], "--", color="k", label=r"hyperplanes $\varphi_1^* z$ = level")
    a.set_ylim(z[..., 1].min() - 1, z[..., 1].max() + 1)
    a.set_xlabel("$z_1$")
    a.set_ylabel("$z_2$")
    a.set_title(f"(b) good triple: $z = e^{{-tV}} x$ (seed {sb})")
    legend_outside(a, fontsize="x-small")
    a = ax[1, 1]
    for i in range(z.shape[1]):
        a.plot(t, run["values"][:, i], "-", lw=0.8)
    for c in run["levels"]:
        a.axhline(c, ls="--", color="k", lw=1)
    a.set_xlabel("$t$")
    a.set_ylabel(r"$\varphi_1^*(z_i(t))$")
    a.set_title(f"(b) $\\varphi_1^*$ values: {len(run['levels'])} hyperplanes at $T$ "
                r"(theory: $\leq 3$, dashed)")
    # (c) Boolean distance and rank
    a, run = ax[0, 2], runs["c", sc]
    a.semilogy(run["t"], np.maximum(run["dist"], 1e-17), "-o", ms=2, label="boolean_distance($P(t)$)")
    a.axhline(BOOL_TOL, ls=":", color="k", label="near-Boolean threshold")
    a.set_xlabel("$t$")
    a.set_ylabel(r"$\max_i\,(1 - \max_j P_{ij})$  (floored at $10^{-17}$)")
    a.set_title(f"(c) $d = 1$, $V = QK = 1$: $P(t) \\to$ Boolean (seed {sc})")
    a2 = a.twinx()
    a2.plot(run["t"], run["rank"], "-", color="C1", label="numerical rank of $P(t)$")
    a2.axhline(2, ls="--", color="C1", lw=1, label=r"theory: rank $\leq 2$")
    a2.set_ylabel("rank")
    lines = a.get_legend_handles_labels()
    lines2 = a2.get_legend_handles_labels()
    a.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize="small", loc="best")
    a = ax[1, 2]
    im = a.imshow(run["P"], cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=a, label="$P_{ij}(T)$")
    a.set_xlabel("$j$ (tokens ordered by $x_j(0)$)")
    a.set_ylabel("$i$ (tokens ordered by $x_i(0)$)")
    a.set_title("(c) final P: columns of the extreme tokens (leaders)")
    return fig


VALIDATION = Validation(name=NAME, theory=THEORY, measure=measure, checks=checks, figure=figure,
                        quick=QUICK, full=FULL, extra=_extra, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(run(VALIDATION))
