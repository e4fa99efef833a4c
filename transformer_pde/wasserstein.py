r"""Wasserstein distances in the package's units and conventions (the only module importing POT).

Every function returns :math:`W_p` itself (never :math:`W_p^p`), measured in the geometry's
own metric: the geodesic (arc length) on the circle of circumference :math:`2\pi` and on the
unit sphere, the Euclidean norm in :math:`\mathbb R^d`. Angles are radians, arrays float64,
weights are normalised to probability vectors, and the one stochastic function
(:func:`sphere_sliced`) takes ``rng``.

- :func:`circle`: :math:`W_p` between weighted points on the circle; exact, O(n log n).
- :func:`particles`: :math:`W_p` between weighted point sets, Euclidean or geodesic cost;
  exact (network simplex, ``ot.emd2``), small n.
- :func:`sphere_sliced`: the spherical sliced distance :math:`SSW_p` (not :math:`W_p`);
  Monte Carlo over random great circles.
- :func:`gaussian`: :math:`W_2` between Gaussians (Bures-Wasserstein); closed form.
- :func:`to_density`: :math:`W_p` between points and a grid :class:`Density`; exact on the
  circle and on :math:`\mathbb R`, a stated estimator (bias at most one cell radius) on the
  sphere and in :math:`\mathbb R^2`.

POT's own conventions, converted here: ``ot.emd2`` returns the optimal cost
:math:`\sum_{ij}\pi_{ij}M_{ij} = W_p^p` for the cost :math:`M = d^p` (the p-th root is taken
here); ``ot.sliced_wasserstein_sphere`` measures each great circle in turns (positions in
:math:`[0, 1)`) and returns :math:`SSW_p` with the p-th root taken, so its result is
multiplied by :math:`2\pi`. (``ot.wasserstein_circle``, also in turns and returning
:math:`W_p^p`, is not used: :func:`circle` is computed here exactly, and the tests check it
against POT.)

References
----------
.. [1] J. Delon, J. Salomon, A. Sobolevski, "Fast transport optimization for Monge costs on
   the circle", SIAM J. Appl. Math. 70(7), 2010.
.. [2] J. Rabin, J. Delon, Y. Gousseau, "Transportation distances on the circle",
   J. Math. Imaging Vis. 41, 2011.
.. [3] C. Bonet, P. Berg, N. Courty, F. Septier, L. Drumetz, M.-T. Pham, "Spherical
   sliced-Wasserstein", ICLR 2023.
.. [4] D. C. Dowson, B. V. Landau, "The Frechet distance between multivariate normal
   distributions", J. Multivariate Anal. 12, 1982; R. Bhatia, T. Jain, Y. Lim, "On the
   Bures-Wasserstein distance between positive definite matrices", Expo. Math. 37, 2019.
.. [5] G. Peyre, M. Cuturi, "Computational Optimal Transport", Found. Trends Mach. Learn.
   11, 2019 (chapter 2: the 1-D quantile formula; chapter 3: network simplex).
"""

from __future__ import annotations

import numpy as np
import ot
from scipy.spatial.distance import cdist

from . import _validation as _v
from .meanfield.density import Density
from .meanfield.grids import CartesianGrid, CircleGrid
from .meanfield.sphere import SphereGrid
from .meanfield.zonal import ZonalGrid

__all__ = ["circle", "particles", "sphere_sliced", "gaussian", "to_density"]

TWO_PI = 2.0 * np.pi
#: points must have |x| = 1 to this tolerance where a unit vector is expected
UNIT_TOL = 1e-6
#: the optimal rotation on the circle is located to this width (in units of mass)
_SHIFT_TOL = 1e-13
#: largest cost matrix (entries) that ``ot.emd2`` is asked to solve (8 bytes each)
EMD_MAX_ENTRIES = 10**8
_METHODS = ("exact", "cells", "sliced")


# ---------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------
def _as_order(p) -> float:
    p = _v.as_real(p, "p")
    if p < 1.0:
        raise ValueError(f"p must be >= 1 (W_p is a distance only for p >= 1), got {p}")
    return p


def _as_points(x, name: str) -> np.ndarray:
    """(n, d) points; a 1-D array is n points of R^1."""
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[:, None]
    return _v.as_tokens(arr, name)


def _check_unit(x: np.ndarray, name: str) -> np.ndarray:
    """Unit vectors (to UNIT_TOL), renormalised to round-off."""
    norms = np.linalg.norm(x, axis=1)
    bad = np.abs(norms - 1.0) > UNIT_TOL
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(
            f"{name} must be unit vectors (|x| = 1 to {UNIT_TOL:g}), but row {i} has norm {norms[i]:.12g}"
        )
    return x / norms[:, None]


def _as_angles(theta, name: str) -> np.ndarray:
    """Angles in [0, 2 pi) from angles (n,) or unit vectors (n, 2)."""
    arr = _v._as_float_array(theta, name)
    if arr.ndim == 1 and arr.shape[0] >= 1:
        _v._check_finite(arr, name)
        t = arr
    elif arr.ndim == 2 and arr.shape[1] == 2 and arr.shape[0] >= 1:
        _v._check_finite(arr, name)
        pts = _check_unit(arr, name)
        t = np.arctan2(pts[:, 1], pts[:, 0])
    else:
        raise ValueError(
            f"{name} must be angles in radians of shape (n,) or points on the unit circle of "
            f"shape (n, 2) with n >= 1, got shape {arr.shape}"
        )
    t = np.mod(t, TWO_PI)
    t[t >= TWO_PI] = 0.0  # np.mod(-1e-20, 2 pi) rounds to 2 pi
    return t


# ---------------------------------------------------------------------------------------
# 1-D quantile functions (circle and line)
# ---------------------------------------------------------------------------------------
class _Quantile:
    """A piecewise-linear quantile function Q on mass [0, 1].

    Piece k covers the mass interval ``[knots[k], knots[k+1])``, on which
    ``Q(q) = start[k] + slope[k] * (q - knots[k])``: slope 0 for an atom, (cell width) /
    (cell mass) for a cell of constant density. Pieces of zero mass are dropped.
    """

    __slots__ = ("knots", "start", "slope")

    def __init__(self, masses, start, width):
        keep = masses > 0.0
        masses, start, width = masses[keep], start[keep], width[keep]
        knots = np.concatenate([[0.0], np.cumsum(masses)])
        knots /= knots[-1]
        knots[-1] = 1.0
        self.knots = knots
        self.start = start
        # width / (mass as the knots see it): each piece ends exactly at start + width
        length = np.diff(knots)
        self.slope = np.divide(width, length, out=np.zeros_like(width), where=length > 0.0)

    @classmethod
    def atoms(cls, positions: np.ndarray, weights: np.ndarray) -> _Quantile:
        order = np.argsort(positions, kind="stable")
        pos = positions[order]
        return cls(weights[order], pos, np.zeros_like(pos))

    @classmethod
    def cells(cls, left: np.ndarray, width: np.ndarray, masses: np.ndarray) -> _Quantile:
        """Cells [left, left + width) in increasing order, constant density in each."""
        return cls(masses, left, width)

    def piece(self, locate: np.ndarray) -> np.ndarray:
        """Index of the piece containing each mass value in ``locate``."""
        return np.clip(np.searchsorted(self.knots, locate, side="right") - 1, 0, len(self.start) - 1)

    def evaluate(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Q at q on the pieces k (the linear formula of piece k, also at its end points)."""
        return self.start[k] + self.slope[k] * (q - self.knots[k])


def _mean_abs_pow(a: np.ndarray, b: np.ndarray, p: float) -> np.ndarray:
    r"""Mean of :math:`|t|^p` for t uniform between a and b (a == b allowed), elementwise.

    An overflow of :math:`|t|^p` (large p) gives inf or NaN entries, which :func:`_root`
    refuses with a message naming p.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return _mean_abs_pow_raw(a, b, p)


def _mean_abs_pow_raw(a: np.ndarray, b: np.ndarray, p: float) -> np.ndarray:
    if p == 2.0:
        return (a * a + a * b + b * b) / 3.0
    ua, ub = np.abs(a), np.abs(b)
    total = ua + ub
    safe_total = np.where(total > 0.0, total, 1.0)
    opposite = (a * b) < 0.0
    if p == 1.0:
        return np.where(opposite, (a * a + b * b) / (2.0 * safe_total), 0.5 * total)
    # opposite signs: the integral over [a, 0] and [0, b], no cancellation
    out_opp = (ua ** (p + 1.0) + ub ** (p + 1.0)) / ((p + 1.0) * safe_total)
    # same sign: [lo, hi] with 0 <= lo <= hi
    lo, hi = np.minimum(ua, ub), np.maximum(ua, ub)
    m, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    safe_m = np.where(m > 0.0, m, 1.0)
    eps = half / safe_m
    # sum_k C(p, 2k) eps^2k / (2k + 1), truncated where eps^6 < 1e-18
    series = m**p * (1.0 + p * (p - 1.0) / 6.0 * eps**2
                     + p * (p - 1.0) * (p - 2.0) * (p - 3.0) / 120.0 * eps**4)
    wide = eps > 1e-3
    safe_span = np.where(wide, hi - lo, 1.0)
    direct = (hi ** (p + 1.0) - lo ** (p + 1.0)) / ((p + 1.0) * safe_span)
    out_same = np.where(wide, direct, series)
    return np.where(opposite, out_opp, out_same)


def _lifted_cost(qa: _Quantile, qb: _Quantile, p: float, shift: float = 0.0,
                 period: float | None = None) -> float:
    r""":math:`\int_0^1 |Q_a(q) - Q_b(q + s)|^p\,dq` with :math:`Q_b(q + 1) = Q_b(q) + L`.

    Exact (up to round-off) for piecewise-linear quantile functions: on each interval
    between the merged knots both are linear, and :func:`_mean_abs_pow` integrates
    :math:`|{\rm linear}|^p` in closed form. ``period`` None means the line (shift 0).
    """
    k0 = np.floor(shift)
    tau = shift - k0
    moved = qb.knots[1:-1] - tau
    moved[moved < 0.0] += 1.0
    cuts = [qa.knots, moved] + ([np.array([1.0 - tau])] if tau > 0.0 else [])
    # zero-length intervals (repeated cuts) contribute nothing
    cuts = np.sort(np.clip(np.concatenate(cuts + [np.array([0.0, 1.0])]), 0.0, 1.0))
    lo, hi = cuts[:-1], cuts[1:]
    mid = 0.5 * (lo + hi)
    ka = qa.piece(mid)
    a_lo, a_hi = qa.evaluate(lo, ka), qa.evaluate(hi, ka)
    s = mid + tau
    wrap = s >= 1.0
    back = wrap.astype(np.float64)
    kb = qb.piece(s - back)
    b_lo = qb.evaluate(lo + tau - back, kb)
    b_hi = qb.evaluate(hi + tau - back, kb)
    if period is not None:
        offset = period * (k0 + back)
        b_lo = b_lo + offset
        b_hi = b_hi + offset
    with np.errstate(invalid="ignore"):  # 0 * inf of an overflow: NaN, refused by _root
        return float(np.sum((hi - lo) * _mean_abs_pow(a_lo - b_lo, a_hi - b_hi, p)))


def _golden_min(f, lo: float, hi: float, tol: float) -> tuple[float, float]:
    """Smallest value of a convex function f on [lo, hi] and where, by golden-section search."""
    r = 0.5 * (np.sqrt(5.0) - 1.0)
    c, d = hi - r * (hi - lo), lo + r * (hi - lo)
    fc, fd = f(c), f(d)
    best = min((fc, c), (fd, d))
    while hi - lo > tol:
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - r * (hi - lo)
            fc = f(c)
            best = min(best, (fc, c))
        else:
            lo, c, fc = c, d, fd
            d = lo + r * (hi - lo)
            fd = f(d)
            best = min(best, (fd, d))
    return best


def _nearby_breakpoints(qa: _Quantile, qb: _Quantile, s_hat: float, count: int) -> np.ndarray:
    r"""The ``count`` shifts s = knot_b - knot_a + k (k integer) nearest to s_hat.

    Where a knot of :math:`Q_b(\cdot + s)` meets a knot of :math:`Q_a` the cost as a function of
    s has a kink; between two atomic measures it is piecewise linear, so its minimum sits
    at such a shift, computed here as an exact difference of knots.
    """
    ka, kb = qa.knots[:-1], qb.knots[:-1]
    target = np.mod(ka + s_hat, 1.0)
    j = np.searchsorted(kb, target)
    cands = []
    for jj in (j - 1, j):
        jj = np.mod(jj, len(kb))
        base = kb[jj] - ka
        cands.append(base + np.round(s_hat - base))
    cands = np.concatenate(cands)
    cands = cands[np.argsort(np.abs(cands - s_hat), kind="stable")]
    _, first = np.unique(cands, return_index=True)
    return cands[np.sort(first)][:count]


def _circle_cost(qa: _Quantile, qb: _Quantile, p: float) -> float:
    r""":math:`W_p^p` on the circle: :math:`\min_s \int_0^1 |Q_a(q) - Q_b(q+s)|^p dq`.

    The function of the mass shift s is convex [1]_ and its minimiser lies in [-1, 1]
    (an optimal plan moves no mass farther than :math:`\pi`, so the lifted quantiles at
    q = 0 and q = 1 stay within half a turn); golden-section search on [-1.5, 1.5] locates
    it to 1e-13, then the kinks nearest to that point (exact differences of knots) are tried:
    between atoms the cost is piecewise linear in s and its minimum is one of them, so the
    result is exact even where the p-th root would amplify a 1e-13 error (W_p near 0). Every
    value tried is the cost of an admissible plan, so the smallest one is kept.
    """
    f = lambda s: _lifted_cost(qa, qb, p, s, TWO_PI)  # noqa: E731
    best, s_hat = _golden_min(f, -1.5, 1.5, _SHIFT_TOL)
    for s in _nearby_breakpoints(qa, qb, s_hat, 4):
        best = min(best, f(float(s)))
    return best


def _root(cost: float, p: float) -> float:
    """:math:`W_p` from :math:`W_p^p`; a cost that overflowed (huge p) is refused, never returned."""
    if not np.isfinite(cost):
        raise ValueError(
            f"p={p:g} is too large for these distances: |x - y|^p overflows float64 in the "
            "transport cost; use a smaller p (W_p increases towards W_inf as p grows)"
        )
    return float(max(cost, 0.0) ** (1.0 / p))


# ---------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------
def circle(theta_a, theta_b, p=2, a_weights=None, b_weights=None) -> float:
    r"""Exact Wasserstein distance :math:`W_p` between weighted points on the circle.

    The circle has circumference :math:`2\pi` and the geodesic (arc-length) metric
    :math:`d(\theta, \phi) = \min(|\theta - \phi| \bmod 2\pi,\ 2\pi - |\theta - \phi| \bmod 2\pi)`.
    With :math:`Q_a, Q_b` the quantile functions of the two measures on :math:`[0, 2\pi)`,
    lifted by :math:`Q(q + 1) = Q(q) + 2\pi`,

    .. math::

        W_p^p(\mu_a, \mu_b) = \min_{s \in \mathbb R} \int_0^1 |Q_a(q) - Q_b(q + s)|^p\,dq

    (Delon, Salomon and Sobolevski [1]_). For fixed s the integral is a finite sum over the
    merged mass knots, evaluated exactly; the function of s is convex and piecewise linear,
    its minimiser is located by golden-section search to a width of 1e-13 in mass and then
    taken at the nearest kink (an exact difference of cumulative weights), so the result is
    exact up to round-off, 0 for identical inputs included (:math:`O((n + m) \log(n + m))`
    per evaluation, about 70 evaluations: 12 ms for n = m = 1024, 0.35 s for 16384).
    Agrees with ``ot.emd2`` on the geodesic cost to 1e-14 relative.

    Parameters
    ----------
    theta_a : array_like, shape (n,) or (n, 2)
        Angles in radians (any real values, taken modulo :math:`2\pi`), or points on the
        unit circle (norm 1 to 1e-6).
    theta_b : array_like, shape (m,) or (m, 2)
        The second point set, in the same form.
    p : float, default 2
        Order, p >= 1.
    a_weights : array_like, shape (n,), optional
        Nonnegative weights (normalised to sum 1); uniform by default.
    b_weights : array_like, shape (m,), optional
        Same for ``theta_b``.

    Returns
    -------
    float
        :math:`W_p` in radians (not :math:`W_p^p`).

    See Also
    --------
    particles : the same value with ``metric="geodesic"`` on unit vectors (network simplex).
    """
    p = _as_order(p)
    ta = _as_angles(theta_a, "theta_a")
    tb = _as_angles(theta_b, "theta_b")
    wa = _v.as_weights(a_weights, len(ta), "a_weights")
    wb = _v.as_weights(b_weights, len(tb), "b_weights")
    qa, qb = _Quantile.atoms(ta, wa), _Quantile.atoms(tb, wb)
    return _root(_circle_cost(qa, qb, p), p)


def _euclidean_matrix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|x_i - y_j| (n, m), from the differences (no |x|^2 + |y|^2 - 2 x.y cancellation)."""
    return cdist(x, y, "euclidean")


def _geodesic_matrix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r"""Great-circle distances (n, m) of unit vectors: :math:`2\,{\rm atan2}(|x-y|, |x+y|)`.

    This is accurate to round-off at every angle (arccos of the dot product loses half the
    digits near 0 and :math:`\pi`).
    """
    return 2.0 * np.arctan2(cdist(x, y, "euclidean"), cdist(x, -y, "euclidean"))


def _emd_distance(a: np.ndarray, b: np.ndarray, dist: np.ndarray, p: float) -> float:
    r"""W_p of the discrete measures a, b with ground distance ``dist`` (ot.emd2).

    The costs are ``(dist / s)^p`` with s the largest distance, and
    :math:`W_p = s\,(\min \sum \pi (d/s)^p)^{1/p}` (the optimal plan does not depend on
    s): no overflow for large p or large distances.
    """
    scale = float(np.max(dist)) if dist.size else 0.0
    if scale == 0.0:
        return 0.0
    with np.errstate(under="ignore"):
        cost = dist / scale if p == 1.0 else (dist / scale) ** p
    value, log = ot.emd2(a, b, np.ascontiguousarray(cost), numItermax=10**9, log=True)
    if log.get("result_code", 1) != 1:
        raise RuntimeError(f"ot.emd2 did not reach an optimal plan: {log.get('warning')}")
    return scale * _root(float(value), p)


def _check_emd_size(n: int, m: int, hint: str) -> None:
    if n * m > EMD_MAX_ENTRIES:
        raise ValueError(
            f"an exact transport between {n} and {m} points needs a {n} x {m} cost matrix, "
            f"more than EMD_MAX_ENTRIES = {EMD_MAX_ENTRIES:g} entries; {hint}"
        )


def particles(x, y, p=2, a_weights=None, b_weights=None, metric: str = "euclidean") -> float:
    r"""Exact Wasserstein distance :math:`W_p` between two weighted point sets.

    .. math::

        W_p(\mu, \nu) = \Big(\min_{\pi \in \Pi(a, b)} \sum_{i,j} \pi_{ij}\, d(x_i, y_j)^p\Big)^{1/p},
        \qquad \mu = \sum_i a_i\delta_{x_i},\ \nu = \sum_j b_j \delta_{y_j},

    solved by POT's network simplex ``ot.emd2`` (which returns the optimal cost, i.e.
    :math:`W_p^p`; the p-th root is taken here). The cost matrix is dense: O(n m) memory
    and roughly :math:`O((n + m)\,n m)` time in the worst case, practical up to a few thousand
    points a side (a 2000 x 2000 problem takes about half a second).

    Parameters
    ----------
    x : array_like, shape (n, d) or (n,)
        Points (a 1-D array is n points of :math:`\mathbb R`).
    y : array_like, shape (m, d) or (m,)
        Points of the same dimension d.
    p : float, default 2
        Order, p >= 1.
    a_weights, b_weights : array_like, shape (n,) and (m,), optional
        Nonnegative weights (normalised to sum 1); uniform by default.
    metric : {"euclidean", "geodesic"}
        ``"euclidean"``: :math:`|x - y|`. ``"geodesic"``: the great-circle distance
        :math:`\arccos\langle x, y\rangle \in [0, \pi]` of unit vectors (d >= 2, norms 1 to
        1e-6, renormalised), computed as :math:`2\,{\rm atan2}(|x - y|, |x + y|)` for accuracy
        near 0 and :math:`\pi`. On the circle (d = 2) this is the arc length of :func:`circle`.

    Returns
    -------
    float
        :math:`W_p` (not :math:`W_p^p`).
    """
    p = _as_order(p)
    _v.as_choice(metric, "metric", ("euclidean", "geodesic"))
    x = _as_points(x, "x")
    y = _as_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got x {x.shape} and y {y.shape}")
    a = _v.as_weights(a_weights, len(x), "a_weights")
    b = _v.as_weights(b_weights, len(y), "b_weights")
    _check_emd_size(len(x), len(y), "subsample the points")
    if metric == "geodesic":
        if x.shape[1] < 2:
            raise ValueError(f"metric='geodesic' needs unit vectors of dimension >= 2, got d = {x.shape[1]}")
        dist = _geodesic_matrix(_check_unit(x, "x"), _check_unit(y, "y"))
    else:
        dist = _euclidean_matrix(x, y)
    return _emd_distance(a, b, dist, p)


def _stiefel(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """The n matrices (d, 2) with orthonormal columns, uniform (Haar) on the Stiefel manifold."""
    z = rng.standard_normal((n, d, 2))
    q, r = np.linalg.qr(z)
    signs = np.sign(np.diagonal(r, axis1=1, axis2=2))
    signs[signs == 0.0] = 1.0
    return q * signs[:, None, :]


def sphere_sliced(x, y, p=2, n_projections: int = 256, rng=None, a_weights=None,
                  b_weights=None) -> float:
    r"""Spherical sliced Wasserstein distance :math:`SSW_p` between points on the sphere.

    .. math::

        SSW_p(\mu, \nu) = \Big(\int_{\mathbb V_{d,2}} W_p^p(P^U_\#\mu, P^U_\#\nu)\,d\sigma(U)\Big)^{1/p},
        \qquad P^U(x) = \frac{U^\top x}{|U^\top x|},

    (Bonet et al. [3]_): each :math:`U` (d x 2, orthonormal columns) projects the sphere onto
    a great circle, where :math:`W_p` is the 1-D circular distance (radians). This is **not**
    :math:`W_p` on the sphere but a different rotation-invariant metric (the projections are
    not 1-Lipschitz, so it is not a lower bound of :math:`W_p` either: on spread-out samples
    it can exceed it); use it for rates and trends, and :func:`particles` with
    ``metric="geodesic"`` for :math:`W_p` itself (small n). On the circle (d = 2) every
    projection is an isometry and :math:`SSW_p = W_p`.

    Estimated by Monte Carlo with ``n_projections`` matrices U drawn uniformly from ``rng``
    (the mean of :math:`W_p^p` over projections has relative standard error of order
    :math:`1/\sqrt{n_{proj}}`); the circular distances are POT's
    ``ot.sliced_wasserstein_sphere`` (binary search, tolerance 1e-6 in turns), whose result
    in turns is converted to radians. Passing the same integer seed makes calls use the
    same projections (common random numbers), so differences between calls are smooth.

    Parameters
    ----------
    x : array_like, shape (n, d)
        Unit vectors (norm 1 to 1e-6; renormalised), d >= 2.
    y : array_like, shape (m, d)
        Unit vectors of the same dimension.
    p : float, default 2
        Order, p >= 1.
    n_projections : int, default 256
        Number of random great circles; ``n_projections * (n + m) * max(d, 2) * 8`` bytes
        must stay below ``DENSE_LIMIT_BYTES`` (2 GiB), else ``ValueError``.
    rng : numpy.random.Generator or int or None
        Source of the projections.
    a_weights, b_weights : array_like, shape (n,) and (m,), optional
        Nonnegative weights (normalised to sum 1); uniform by default.

    Returns
    -------
    float
        The estimate of :math:`SSW_p` in radians.
    """
    p = _as_order(p)
    n_projections = _v.as_positive_int(n_projections, "n_projections")
    rng = _v.as_rng(rng)
    x = _v.as_tokens(x, "x")
    y = _v.as_tokens(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got x {x.shape} and y {y.shape}")
    if x.shape[1] < 2:
        raise ValueError(f"x and y must be unit vectors of dimension d >= 2, got d = {x.shape[1]}")
    x, y = _check_unit(x, "x"), _check_unit(y, "y")
    a = _v.as_weights(a_weights, len(x), "a_weights")
    b = _v.as_weights(b_weights, len(y), "b_weights")
    # POT projects every point on every great circle: (n_projections, n + m, 2) floats
    _v.check_dense_size((n_projections, len(x) + len(y), max(2, x.shape[1])),
                        f"sphere_sliced with n_projections={n_projections} and n + m = "
                        f"{len(x) + len(y)} points",
                        "use fewer n_projections (the relative standard error is about "
                        "1/sqrt(n_projections): 256 give a few per cent)")
    proj = _stiefel(rng, n_projections, x.shape[1])
    # POT reshapes by its n_projections argument even when given the projections
    turns = ot.sliced_wasserstein_sphere(x, y, a, b, n_projections=n_projections, p=p,
                                         projections=proj)
    return float(TWO_PI * turns)


def _as_covariance(cov, name: str, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (d,) and eigenvectors (d, d) of a checked, symmetrised covariance."""
    if d == 1 and np.ndim(cov) == 0:
        cov = [[cov]]
    arr = _v.as_matrix(cov, name, (d, d))
    scale = max(float(np.max(np.abs(arr))), np.finfo(float).tiny)
    asym = float(np.max(np.abs(arr - arr.T)))
    if asym > 1e-10 * scale:
        raise ValueError(f"{name} must be symmetric, got max |S - S^T| = {asym:.3g}")
    arr = 0.5 * (arr + arr.T)
    lam, vec = np.linalg.eigh(arr)
    if lam[0] < -1e-10 * scale:
        raise ValueError(f"{name} must be positive semi-definite, got eigenvalue {lam[0]:.6g}")
    return lam, vec


def gaussian(mean_a, cov_a, mean_b, cov_b) -> float:
    r"""Wasserstein distance :math:`W_2` between two Gaussians (Bures-Wasserstein).

    .. math::

        W_2^2\big(\mathcal N(m_a, S_a), \mathcal N(m_b, S_b)\big)
        = |m_a - m_b|^2 + \operatorname{tr}\Big(S_a + S_b - 2\big(S_a^{1/2} S_b S_a^{1/2}\big)^{1/2}\Big)

    (Dowson and Landau [4]_). Computed without the cancellation of that trace formula
    (which loses half the digits when :math:`S_a \approx S_b`): with
    :math:`S_a^{1/2}S_b^{1/2} = W\Sigma V^\top` (SVD) and :math:`U = VW^\top`,
    the Bures term is :math:`\|S_a^{1/2} - S_b^{1/2}U\|_F^2` [4]_, a sum of squares. Square
    roots of the covariances come from their eigendecompositions, with round-off negative
    eigenvalues (above :math:`-10^{-10}\max|S|`) clipped to 0; singular covariances are fine.

    Parameters
    ----------
    mean_a : array_like, shape (d,)
        Mean of the first Gaussian (a scalar for d = 1).
    cov_a : array_like, shape (d, d)
        Its covariance, symmetric positive semi-definite (a scalar variance for d = 1).
    mean_b : array_like, shape (d,)
    cov_b : array_like, shape (d, d)
        The second Gaussian.

    Returns
    -------
    float
        :math:`W_2` (not :math:`W_2^2`).
    """
    ma = _v._as_float_array(mean_a, "mean_a")
    mb = _v._as_float_array(mean_b, "mean_b")
    ma, mb = np.atleast_1d(ma), np.atleast_1d(mb)
    if ma.ndim != 1:
        raise ValueError(f"mean_a must have shape (d,), got shape {ma.shape}")
    d = ma.shape[0]
    if mb.shape != (d,):
        raise ValueError(f"mean_b must have shape ({d},) like mean_a, got shape {mb.shape}")
    _v._check_finite(ma, "mean_a")
    _v._check_finite(mb, "mean_b")
    lam_a, vec_a = _as_covariance(cov_a, "cov_a", d)
    lam_b, vec_b = _as_covariance(cov_b, "cov_b", d)
    ra = (vec_a * np.sqrt(np.maximum(lam_a, 0.0))) @ vec_a.T
    rb = (vec_b * np.sqrt(np.maximum(lam_b, 0.0))) @ vec_b.T
    w, _, vt = np.linalg.svd(ra @ rb)
    bures = float(np.linalg.norm(ra - rb @ (vt.T @ w.T)))
    return float(np.hypot(np.linalg.norm(ma - mb), bures))


# ---------------------------------------------------------------------------------------
# particles against a grid density
# ---------------------------------------------------------------------------------------
#: cells of a ZonalGrid density with less mass than this are dropped by :func:`to_density`
POLAR_MASS_FLOOR = 1e-13


def _density_masses(density: Density) -> np.ndarray:
    mass = (density.values * density.grid.volumes).ravel()
    total = float(mass.sum())
    if not total > 0.0:
        raise ValueError("density must have positive mass")
    return mass / total


def to_density(x, density, p=2, *, weights=None, method: str | None = None,
               n_projections: int = 256, rng=None) -> float:
    r"""Wasserstein distance between weighted points and a density on a grid.

    The density is normalised to unit mass (an outflow grid may have lost some) and,
    depending on the grid and ``method``:

    - ``"exact"`` (:class:`CircleGrid` and 1-D :class:`CartesianGrid`; the default there):
      the density is taken as **piecewise constant** on the cells (the finite-volume
      cell averages), and :math:`W_p` between it and the points is computed exactly from
      the quantile functions: on the line :math:`W_p^p = \int_0^1 |Q_x - Q_\rho|^p\,dq`, on the
      circle the same with the optimal rotation of :func:`circle`,
      :math:`W_p^p = \min_s \int_0^1 |Q_x(q) - Q_\rho(q + s)|^p\,dq`; :math:`Q_\rho` is
      piecewise linear and :math:`|Q_x - Q_\rho|^p` is integrated in closed form on each
      piece. Exact up to round-off for every p >= 1.
    - ``"cells"`` (every grid; the default on :class:`SphereGrid` and 2-D
      :class:`CartesianGrid`): the density is replaced by the discrete measure
      :math:`\rho_h = \sum_c \rho_c|c|\,\delta_{x_c}` at the cell centres (the measure the
      mean-field solver uses for the attention field) and :math:`W_p(\mu_x, \rho_h)` is
      exact: ``ot.emd2`` with the geodesic (sphere) or Euclidean (R^2) cost, :func:`circle`
      on the circle, quantiles on the line. It estimates :math:`W_p(\mu_x, \rho)` with a
      bias bounded by the triangle inequality,
      :math:`|W_p(\mu_x, \rho_h) - W_p(\mu_x, \rho)| \le W_p(\rho, \rho_h) \le r_h`,
      where :math:`r_h` is the largest distance from a point of a cell to its centre: half
      the cell diagonal :math:`|h|/2` on a Cartesian grid, :math:`h/2` on the circle, about
      :math:`0.87\,\pi/n_{lat}` on a :class:`SphereGrid` (measured on its cell boundaries).
      First order in h; collapsing each cell onto its centre gives the sharper
      :math:`W_2(\rho, \rho_h) \le h/\sqrt{12}` per dimension on a Cartesian grid. O(n N)
      memory and network-simplex time for n points and N cells of positive mass (refused above
      ``EMD_MAX_ENTRIES``).
    - on a :class:`~transformer_pde.meanfield.zonal.ZonalGrid` (``"exact"``, the default, or
      ``"cells"``): :math:`W_p` between the points' polar angles and the density of the
      polar angle, on the line (a lower bound of :math:`W_p` on the sphere: the angle to
      the axis is 1-Lipschitz in the geodesic distance).
    - ``"sliced"`` (:class:`SphereGrid` only): :func:`sphere_sliced` between the points and
      :math:`\rho_h` (:math:`SSW_p`, not :math:`W_p`; Monte Carlo over ``n_projections``
      great circles from ``rng``; plus the same O(h) discretisation bias), in
      :math:`O(n_{proj}\,(n + N)\log(n + N))` time.

    Parameters
    ----------
    x : array_like
        The points: angles (n,) or unit vectors (n, 2) on a :class:`CircleGrid`; (n,) or
        (n, 1) on a 1-D :class:`CartesianGrid`; (n, 2) on a 2-D one; unit vectors (n, 3) on
        a :class:`SphereGrid`. Points outside a Cartesian box are allowed.
    density : Density
        The density (on a :class:`CircleGrid`, :class:`CartesianGrid` or
        :class:`SphereGrid`).
    p : float, default 2
        Order, p >= 1.
    weights : array_like, shape (n,), optional
        Nonnegative weights of the points (normalised to sum 1); uniform by default.
    method : {"exact", "cells", "sliced"}, optional
        See above; the default is ``"exact"`` where available, else ``"cells"``.
    n_projections : int, default 256
        Great circles for ``method="sliced"``.
    rng : numpy.random.Generator or int or None
        Source of the projections for ``method="sliced"`` (unused otherwise).

    Returns
    -------
    float
        :math:`W_p` (or :math:`SSW_p` for ``"sliced"``) in the grid's metric (radians on
        the circle and the sphere).
    """
    if not isinstance(density, Density):
        raise TypeError(f"density must be a transformer_pde Density, got {type(density).__name__}")
    p = _as_order(p)
    grid = density.grid
    if isinstance(grid, CircleGrid):
        kind = "circle"
    elif isinstance(grid, CartesianGrid):
        kind = "line" if grid.dim == 1 else "plane"
    elif isinstance(grid, SphereGrid):
        kind = "sphere"
    elif isinstance(grid, ZonalGrid):
        kind = "polar"
    else:
        raise TypeError(
            f"density must live on a CircleGrid, CartesianGrid, SphereGrid or ZonalGrid, got {grid!r}"
        )
    default = "exact" if kind in ("circle", "line", "polar") else "cells"
    method = default if method is None else _v.as_choice(method, "method", _METHODS)
    if method == "exact" and kind not in ("circle", "line", "polar"):
        raise ValueError(
            f"method='exact' is available on a CircleGrid, a 1-D CartesianGrid and a ZonalGrid, not on "
            f"{grid!r}; use 'cells' (or 'sliced' on the sphere)"
        )
    if method == "sliced" and kind != "sphere":
        raise ValueError(f"method='sliced' is available on a SphereGrid only, got {grid!r}")
    mass = _density_masses(density)

    if kind == "circle":
        t = _as_angles(x, "x")
        w = _v.as_weights(weights, len(t), "weights")
        qx = _Quantile.atoms(t, w)
        if method == "exact":
            edges = np.arange(grid.n_cells) * grid.h
            qr = _Quantile.cells(edges, np.full(grid.n_cells, grid.h), mass)
        else:
            qr = _Quantile.atoms(grid.angles.copy(), mass)
        return _root(_circle_cost(qx, qr, p), p)

    if kind == "line":
        arr = _as_points(x, "x")
        if arr.shape[1] != 1:
            raise ValueError(f"x must have shape (n,) or (n, 1) on a 1-D grid, got shape {arr.shape}")
        pts = arr[:, 0]
        w = _v.as_weights(weights, len(pts), "weights")
        qx = _Quantile.atoms(pts, w)
        if method == "exact":
            edges = grid.lo[0] + np.arange(grid.shape[0]) * grid.h[0]
            qr = _Quantile.cells(edges, np.full(grid.shape[0], grid.h[0]), mass)
        else:
            qr = _Quantile.atoms(grid.axes[0].copy(), mass)
        return _root(_lifted_cost(qx, qr, p), p)

    if kind == "polar":  # W_p of the polar angles: the density is one of the angle
        theta = grid.polar_angle(x)
        w = _v.as_weights(weights, len(theta), "weights")
        qx = _Quantile.atoms(theta, w)
        # high-d densities reach masses like 1e-197 in the pole cells: their quantile slopes
        # h / mass are ill-conditioned, so cells below POLAR_MASS_FLOOR are dropped (moving
        # W_p^p by at most pi^p * n_cells * POLAR_MASS_FLOOR)
        mass = np.where(mass >= POLAR_MASS_FLOOR, mass, 0.0)
        mass = mass / mass.sum()
        if method == "exact":
            qr = _Quantile.cells(grid.theta_edges[:-1].copy(), np.full(grid.n_cells, grid.h), mass)
        else:
            qr = _Quantile.atoms(grid.theta.copy(), mass)
        return _root(_lifted_cost(qx, qr, p), p)

    centers = np.asarray(grid.centers, dtype=np.float64).reshape(-1, grid.dim)
    keep = mass > 0.0
    centers, mass = centers[keep], mass[keep] / mass[keep].sum()
    pts = _v.as_tokens(x, "x")
    if pts.shape[1] != grid.dim:
        raise ValueError(f"x must have shape (n, {grid.dim}) on {grid!r}, got shape {pts.shape}")
    w = _v.as_weights(weights, len(pts), "weights")
    if method == "sliced":
        return sphere_sliced(pts, centers, p=p, n_projections=n_projections, rng=rng,
                             a_weights=w, b_weights=mass)
    _check_emd_size(len(pts), len(centers),
                    "use fewer points" + (" or method='sliced'" if kind == "sphere" else ""))
    if kind == "sphere":
        dist = _geodesic_matrix(_check_unit(pts, "x"), centers)
    else:
        dist = _euclidean_matrix(pts, centers)
    return _emd_distance(w, mass, dist, p)
