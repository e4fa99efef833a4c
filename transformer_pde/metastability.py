r"""The normalised-time energy ascent, the energy staircase and the saddle check.

The metastability picture (docs/math.md §5.1, §5.4): on the sphere, tokens under USA
perform the Wasserstein gradient ascent of the interaction energy

.. math::

    \mathsf E_\beta[\mu] = \frac{1}{2\beta}\iint e^{\beta\langle x, y\rangle}\,d\mu(x)\,d\mu(y),
    \qquad \mu = \textstyle\sum_i w_i\,\delta_{x_i},

and linger for times :math:`\asymp e^{c\beta}` near saddle points (configurations of a few
clusters) before clusters merge. Run at unit speed in the energy's own metric (arc length
``s`` instead of time), the ascent crosses those plateaus in a time of order one, and the
energy against ``s`` is a staircase: flat steps near the saddles, at the energies of the
cluster configurations, and jumps at the merges.

- :func:`normalized_ascent`: the arc-length normalised ascent with cluster snapping;
- :func:`energy_staircase`: the plateaus (levels and lengths) of an energy curve;
- :func:`energy_gradient`, :func:`energy_hessian`, :func:`saddle_check`: the Riemannian
  gradient and Hessian of :math:`\mathsf E_\beta` on the product of spheres and the count
  of ascent directions at a critical point.

All of it is NumPy on a handful of weighted points (after snapping the number of points is
the number of clusters); nothing here is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse.csgraph import connected_components

from . import _validation as _v

__all__ = [
    "AscentResult",
    "Staircase",
    "energy_gradient",
    "energy_hessian",
    "saddle_check",
    "normalized_ascent",
    "energy_staircase",
    "equal_clusters_energy",
]


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
def _points(x, weights, name: str = "x") -> tuple[np.ndarray, np.ndarray]:
    """Unit points (m, d) and weights (m,) summing to 1 (1/m when None)."""
    x = _v.as_tokens(x, name)
    norms = np.linalg.norm(x, axis=1)
    if np.any(np.abs(norms - 1.0) > 1e-8):
        raise ValueError(f"{name} must be unit vectors (points of the sphere); norms range over "
                         f"[{norms.min():.3g}, {norms.max():.3g}]")
    w = np.full(len(x), 1.0 / len(x)) if weights is None else _v.as_weights(weights, len(x))
    return x / norms[:, None], w / w.sum()


def _beta(beta) -> float:
    beta = _v.as_positive(beta, "beta")
    if beta > 700.0:
        raise ValueError(f"beta must be at most 700 (e^beta finite), got {beta:g}")
    return beta


def _energy(x: np.ndarray, w: np.ndarray, beta: float) -> float:
    return float(w @ np.exp(beta * (x @ x.T)) @ w) / (2.0 * beta)


# ---------------------------------------------------------------------------------------
# gradient and Hessian on the product of spheres
# ---------------------------------------------------------------------------------------
def energy_gradient(x, beta: float, weights=None) -> np.ndarray:
    r"""Riemannian gradient of :math:`\mathsf E_\beta` at weighted points of the sphere, (m, d).

    .. math::

        \operatorname{grad}_i \mathsf E_\beta = w_i\,P^\perp_{x_i}\sum_j w_j
        e^{\beta\langle x_i, x_j\rangle}x_j,\qquad P^\perp_x = I - xx^\top,

    the gradient for the Euclidean metric of the product of spheres. The Wasserstein
    (USA) velocity of the point i is :math:`\operatorname{grad}_i\mathsf E_\beta / w_i`.

    Parameters
    ----------
    x : array_like, shape (m, d)
        Unit vectors.
    beta : float
        Inverse temperature, in (0, 700].
    weights : array_like, shape (m,), optional
        Masses :math:`w_i` (normalized to sum 1; 1/m when None).

    Returns
    -------
    ndarray, shape (m, d)

    Examples
    --------
    >>> from transformer_pde import metastability as ms
    >>> x = np.array([[1.0, 0.0], [-1.0, 0.0]])          # antipodal pair: critical
    >>> float(np.abs(ms.energy_gradient(x, 2.0)).max())
    0.0
    """
    x, w = _points(x, weights)
    beta = _beta(beta)
    field_ = (w[None, :] * np.exp(beta * (x @ x.T))) @ x
    field_ -= np.sum(field_ * x, axis=1, keepdims=True) * x
    return w[:, None] * field_


def _tangent_bases(x: np.ndarray) -> np.ndarray:
    """Orthonormal bases (m, d, d - 1) of the tangent spaces at the points x (m, d)."""
    m, d = x.shape
    bases = np.empty((m, d, d - 1))
    for i in range(m):
        q, _ = np.linalg.qr(np.column_stack([x[i], np.eye(d)]))
        bases[i] = q[:, 1:d]
    return bases


def energy_hessian(x, beta: float, weights=None) -> np.ndarray:
    r"""Riemannian Hessian of :math:`\mathsf E_\beta` on the product of spheres, (m(d-1), m(d-1)).

    .. math::

        \operatorname{Hess}\mathsf E_\beta[\xi]_i = P^\perp_{x_i}\big(\nabla^2\mathsf E_\beta\,\xi\big)_i
        - \langle x_i, \nabla_i\mathsf E_\beta\rangle\,\xi_i,

    with the Euclidean (ambient) derivatives of
    :math:`\frac1\beta\sum_{i<j}w_iw_je^{\beta\langle x_i,x_j\rangle}` (the diagonal terms
    are constant on the sphere):

    .. math::

        \partial_{x_i}\partial_{x_k} = w_iw_ke^{\beta\langle x_i,x_k\rangle}(I + \beta x_kx_i^\top)
        \ (k \ne i),\qquad
        \partial^2_{x_i} = \beta\sum_{j\ne i}w_iw_je^{\beta\langle x_i,x_j\rangle}x_jx_j^\top,

    written in an orthonormal basis of each tangent space (token-major blocks of size d - 1).
    At a critical point it is the second derivative along geodesics, and its inertia (the
    numbers of positive, zero and negative eigenvalues) does not depend on the metric
    chosen on the product (Sylvester's law): the weighted Wasserstein metric gives the same
    counts.

    Parameters
    ----------
    x : array_like, shape (m, d)
        Unit vectors.
    beta : float
        Inverse temperature, in (0, 700].
    weights : array_like, shape (m,), optional
        Masses (1/m when None).

    Returns
    -------
    ndarray, shape (m (d - 1), m (d - 1)), symmetric

    Examples
    --------
    >>> from transformer_pde import metastability as ms
    >>> x = np.array([[1.0, 0.0], [-1.0, 0.0]])
    >>> h = ms.energy_hessian(x, 1.0)     # on the circle: d^2/dtheta^2 of the angle energy
    >>> np.round(np.linalg.eigvalsh(h), 6).tolist()
    [0.0, 0.18394]
    """
    x, w = _points(x, weights)
    beta = _beta(beta)
    m, d = x.shape
    if d < 2:
        raise ValueError(f"x must have d >= 2 (points of a sphere S^(d-1)), got d = {d}")
    e = np.exp(beta * (x @ x.T))
    np.fill_diagonal(e, 0.0)
    ww = w[:, None] * w[None, :] * e  # w_i w_j e_ij, zero diagonal
    grad = ww @ x  # ambient gradient (m, d)
    radial = np.sum(grad * x, axis=1)
    bases = _tangent_bases(x)
    hess = np.zeros((m, d - 1, m, d - 1))
    for i in range(m):
        Bi = bases[i]
        diag = beta * (x.T * ww[i]) @ x - radial[i] * np.eye(d)
        hess[i, :, i, :] = Bi.T @ diag @ Bi
        for k in range(m):
            if k != i:
                block = ww[i, k] * (np.eye(d) + beta * np.outer(x[k], x[i]))
                hess[i, :, k, :] = Bi.T @ block @ bases[k]
    hess = hess.reshape(m * (d - 1), m * (d - 1))
    return 0.5 * (hess + hess.T)


def saddle_check(x, beta: float, weights=None, *, rtol: float = 1e-8) -> dict:
    r"""Classify a critical point of :math:`\mathsf E_\beta`: its ascent and flat directions.

    .. math::

        n_+ = \#\{\lambda > \tau\},\quad n_0 = \#\{|\lambda| \le \tau\},\quad
        n_- = \#\{\lambda < -\tau\},\qquad \tau = \text{rtol}\,\max|\lambda|,

    over the eigenvalues :math:`\lambda` of :func:`energy_hessian`. The energy is ascended,
    so :math:`n_+` counts the unstable (ascent) directions: a local maximum has
    :math:`n_+ = 0`, a saddle :math:`n_+ \ge 1`. Rotations of the whole configuration are
    flat: :math:`n_0 \ge` the dimension of the rotations that move it (1 on the circle).

    Parameters
    ----------
    x, beta, weights :
        As in :func:`energy_hessian`.
    rtol : float
        Relative tolerance of a zero eigenvalue.

    Returns
    -------
    dict
        ``eigenvalues`` (ascending), ``n_ascent``, ``n_flat``, ``n_descent``, ``saddle``
        (n_ascent >= 1 and n_descent >= 1), ``gradient_norm`` (the Euclidean norm of
        :func:`energy_gradient`: the point is critical when it is small).

    Examples
    --------
    >>> from transformer_pde import metastability as ms
    >>> k = 3
    >>> x = np.stack([np.cos(2 * np.pi * np.arange(k) / k), np.sin(2 * np.pi * np.arange(k) / k)], 1)
    >>> ms.saddle_check(x, 9.0)["n_ascent"]
    2
    """
    rtol = _v.as_positive(rtol, "rtol")
    lam = np.linalg.eigvalsh(energy_hessian(x, beta, weights))
    tau = rtol * max(float(np.abs(lam).max()), np.finfo(float).tiny)
    n_pos, n_neg = int(np.sum(lam > tau)), int(np.sum(lam < -tau))
    return {"eigenvalues": lam, "n_ascent": n_pos, "n_flat": len(lam) - n_pos - n_neg,
            "n_descent": n_neg, "saddle": n_pos >= 1 and n_neg >= 1,
            "gradient_norm": float(np.linalg.norm(energy_gradient(x, beta, weights)))}


def equal_clusters_energy(k: int, beta: float) -> float:
    r"""Energy of k equal clusters equally spaced on the circle (the circle's saddles).

    .. math::

        \mathsf E_\beta^{(k)} = \frac{1}{2\beta k}\sum_{m=0}^{k-1}e^{\beta\cos(2\pi m/k)}.

    Examples
    --------
    >>> from transformer_pde import metastability as ms
    >>> bool(np.isclose(ms.equal_clusters_energy(1, 2.0), np.exp(2.0) / 4.0))
    True
    """
    k = _v.as_positive_int(k, "k")
    beta = _beta(beta)
    return float(np.sum(np.exp(beta * np.cos(2.0 * np.pi * np.arange(k) / k)))) / (2.0 * beta * k)


# ---------------------------------------------------------------------------------------
# the normalised ascent
# ---------------------------------------------------------------------------------------
@dataclass
class AscentResult:
    r"""The arc-length normalised energy ascent.

    Attributes
    ----------
    s : ndarray, shape (ns,)
        Arc length (normalised time) of each step, ``s[0] = 0``.
    energy : ndarray, shape (ns,)
        :math:`\mathsf E_\beta` of the weighted points at each ``s``.
    speed : ndarray, shape (ns,)
        :math:`\|v\|_w = (\sum_i w_i\|v_i\|^2)^{1/2}`, the USA speed in the Wasserstein metric
        (:math:`d\mathsf E/ds` between snaps; small on plateaus).
    n_points : ndarray of int, shape (ns,)
        Points left after snapping (the number of clusters once they have formed).
    x, weights : list of ndarray
        The points (m_k, d) and their masses (m_k,) at each ``s``.
    beta : float
        Inverse temperature.
    stopped : str
        Why the ascent stopped: "s_end", "one point", "critical" (speed below ``tol``) or
        "max_steps".
    """

    s: np.ndarray
    energy: np.ndarray
    speed: np.ndarray
    n_points: np.ndarray
    x: list = field(repr=False)
    weights: list = field(repr=False)
    beta: float = 1.0
    stopped: str = "s_end"

    def staircase(self, **kwargs) -> Staircase:
        """:func:`energy_staircase` of this run (``kwargs`` passed on)."""
        return energy_staircase(self.s, self.energy, n_points=self.n_points, **kwargs)


def _velocity(x: np.ndarray, w: np.ndarray, beta: float) -> tuple[np.ndarray, float]:
    """USA velocity (m, d) and its weighted norm; exponent shifted by beta (no overflow)."""
    v = (w[None, :] * np.exp(beta * (x @ x.T - 1.0))) @ x
    v -= np.sum(v * x, axis=1, keepdims=True) * x
    v *= np.exp(beta)
    return v, float(np.sqrt(w @ np.sum(v * v, axis=1)))


def _direction(x, w, beta, tol):
    v, speed = _velocity(x, w, beta)
    return (v / speed if speed > tol else np.zeros_like(v)), speed


def _snap(x: np.ndarray, w: np.ndarray, snap: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge points closer than ``snap`` (connected components) into their weighted mean."""
    if len(x) < 2:
        return x, w
    sq = np.maximum(2.0 - 2.0 * (x @ x.T), 0.0)
    count, labels = connected_components(sq < snap * snap, directed=False)
    if count == len(x):
        return x, w
    wk = np.bincount(labels, weights=w)
    xk = np.zeros((count, x.shape[1]))
    np.add.at(xk, labels, w[:, None] * x)
    norms = np.linalg.norm(xk, axis=1)
    return xk / norms[:, None], wk


def _crossing_scale(x: np.ndarray, k: np.ndarray) -> float:
    """The smallest |x_i - x_j| / |k_i - k_j| over pairs: the step at which some pair could meet."""
    gap = np.sqrt(np.maximum(2.0 - 2.0 * (x @ x.T), 0.0))
    rel = np.linalg.norm(k[:, None, :] - k[None, :, :], axis=2)
    moving = rel > 0
    return float(np.min(gap[moving] / rel[moving])) if np.any(moving) else np.inf


def normalized_ascent(x, beta: float, *, s_end: float = 10.0, ds: float = 0.01, weights=None,
                      snap: float = 1e-3, tol: float = 1e-10, max_steps: int = 100_000) -> AscentResult:
    r"""Arc-length normalised gradient ascent of the interaction energy, with cluster snapping.

    .. math::

        \frac{dx_i}{ds} = \frac{v_i}{\|v\|_w},\qquad
        v_i = P^\perp_{x_i}\sum_j w_je^{\beta\langle x_i,x_j\rangle}x_j
        = \frac{\operatorname{grad}_i\mathsf E_\beta}{w_i},\qquad
        \|v\|_w^2 = \sum_i w_i\|v_i\|^2,

    the USA flow :math:`\dot x_i = v_i` (the Wasserstein gradient ascent of
    :math:`\mathsf E_\beta`, docs/math.md §2.3) reparametrised by its arc length in the
    Wasserstein metric, so that :math:`d\mathsf E_\beta/ds = \|v\|_w`: the curve is the same
    as the USA trajectory, but the plateaus (where :math:`\|v\|_w` is tiny, near saddles)
    take a time of order one instead of :math:`e^{c\beta}`.

    Weights enter as masses: a point of weight :math:`w_i` stands for :math:`w_i n` tokens
    at one place, its velocity is the velocity those tokens would have
    (:math:`\sum_j w_j\ldots` counts every token) and it counts :math:`w_i` in the speed.
    **Snapping**: after each step, points closer than ``snap`` (chordal distance) are
    merged into one point at their normalised weighted mean with the sum of their weights.
    This removes the slow shrinking of formed clusters; the energy changes by at most
    :math:`\mathsf E_\beta\,(e^{\beta\,\text{snap}^2/2}-1)` at a snap (docs/math.md §5.4).

    Steps: classical RK4 in ``s`` with the directions renormalised at each stage, then
    retraction :math:`x_i \leftarrow x_i/\|x_i\|`; the step is ``ds``, shortened so that
    the distance of no pair changes by more than a quarter, :math:`h \le \frac14\min_{i\ne j}
    \|x_i - x_j\|/\|k_i - k_j\|` for the first stage's directions k (at unit speed two
    points about to merge would otherwise jump over each other), a few steps per merge.

    Parameters
    ----------
    x : array_like, shape (n, d)
        Initial unit vectors.
    beta : float
        Inverse temperature, in (0, 700].
    s_end : float
        Arc length at which to stop.
    ds : float
        Step in arc length (the points move by about ``ds`` per step in the weighted metric).
    weights : array_like, shape (n,), optional
        Initial masses (1/n when None).
    snap : float
        Chordal distance below which points are merged, >= 0 (0: never).
    tol : float
        Speed below which the ascent stops (a critical point: a single cluster, or exactly
        at a saddle).
    max_steps : int
        Largest number of steps (stops with ``stopped = "max_steps"``).

    Returns
    -------
    AscentResult

    Examples
    --------
    >>> from transformer_pde import metastability as ms
    >>> th = np.array([0.0, 0.3, 2.0])
    >>> run = ms.normalized_ascent(np.stack([np.cos(th), np.sin(th)], 1), 1.0, s_end=5.0, ds=0.05)
    >>> run.stopped, int(run.n_points[-1]), bool(np.all(np.diff(run.energy) > -1e-12))
    ('one point', 1, True)
    """
    x, w = _points(x, weights)
    beta = _beta(beta)
    s_end = _v.as_positive(s_end, "s_end")
    ds = _v.as_positive(ds, "ds")
    snap = _v.as_real(snap, "snap")
    if snap < 0:
        raise ValueError(f"snap must be >= 0, got {snap}")
    tol = _v.as_positive(tol, "tol")
    max_steps = _v.as_positive_int(max_steps, "max_steps")
    x, w = _snap(x, w, snap)
    s_list, e_list, v_list, xs, ws = [0.0], [_energy(x, w, beta)], [], [x], [w]
    s, stopped = 0.0, "s_end"
    for step in range(max_steps):
        k1, speed = _direction(x, w, beta, tol)
        if step == 0:
            v_list.append(speed)
        if len(x) == 1 or speed <= tol or s >= s_end * (1 - 1e-12):
            stopped = "one point" if len(x) == 1 else "critical" if speed <= tol else "s_end"
            break
        # no pair may cross in one step: each pair's distance changes by at most a quarter
        # (unit speed in the weighted norm lets light points move fast)
        h = min(ds, s_end - s, 0.25 * _crossing_scale(x, k1))

        def stage(y, w=w):
            y = y / np.linalg.norm(y, axis=1, keepdims=True)
            return _direction(y, w, beta, tol)[0]

        k2 = stage(x + 0.5 * h * k1)
        k3 = stage(x + 0.5 * h * k2)
        k4 = stage(x + h * k3)
        x = x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        x, w = _snap(x, w, snap)
        s += h
        s_list.append(s)
        e_list.append(_energy(x, w, beta))
        v_list.append(_velocity(x, w, beta)[1])
        xs.append(x)
        ws.append(w)
    else:
        stopped = "max_steps"
    return AscentResult(s=np.asarray(s_list), energy=np.asarray(e_list), speed=np.asarray(v_list),
                        n_points=np.array([len(p) for p in xs], dtype=int), x=xs, weights=ws,
                        beta=beta, stopped=stopped)


# ---------------------------------------------------------------------------------------
# the staircase
# ---------------------------------------------------------------------------------------
@dataclass
class Staircase:
    r"""Plateaus of an energy curve E(s), in order of s.

    Attributes
    ----------
    levels : ndarray, shape (p,)
        Median energy on each plateau.
    lengths : ndarray, shape (p,)
        Length in s of each plateau.
    starts : ndarray, shape (p,)
        First s of each plateau.
    n_points : ndarray of int, shape (p,), or None
        Points of the ascent (clusters) at the middle (in s) of each plateau, when known.
    """

    levels: np.ndarray
    lengths: np.ndarray
    starts: np.ndarray
    n_points: np.ndarray | None = None


def energy_staircase(s, energy, *, rtol: float = 0.05, min_length: float = 0.0,
                     n_points=None) -> Staircase:
    r"""The steps of an energy staircase: levels and plateau lengths.

    .. math::

        \text{flat on } [s_k, s_{k+1}] \iff
        \frac{E_{k+1} - E_k}{s_{k+1} - s_k} \le \text{rtol}\,\frac{E_{\rm last} - E_0}{s_{\rm last} - s_0},

    i.e. a slope below ``rtol`` times the mean slope of the curve; a plateau is a maximal
    run of flat intervals at least ``min_length`` long, its level the median energy on it.
    A curve without jumps (constant slope) has no plateau for rtol < 1.

    Parameters
    ----------
    s : array_like, shape (ns,)
        Increasing parameter (arc length of :func:`normalized_ascent`, or time).
    energy : array_like, shape (ns,)
        Energy at each s.
    rtol : float
        Slope threshold relative to the mean slope, in (0, 1).
    min_length : float
        Shortest plateau kept, >= 0.
    n_points : array_like of int, shape (ns,), optional
        Points of the ascent at each s (reported per plateau).

    Returns
    -------
    Staircase

    Examples
    --------
    >>> from transformer_pde import metastability as ms
    >>> s = np.linspace(0.0, 3.0, 301)
    >>> e = np.floor(s) + np.clip((s % 1.0 - 0.9) * 10.0, 0.0, 1.0)   # steps of length 0.9
    >>> st = ms.energy_staircase(s, e)
    >>> st.levels.tolist(), np.round(st.lengths, 6).tolist()
    ([0.0, 1.0, 2.0], [0.9, 0.9, 0.9])
    """
    s = _v.as_real_array(s, "s", nonempty=False, finite=False)
    energy = _v.as_real_array(energy, "energy", nonempty=False, finite=False)
    if s.ndim != 1 or energy.shape != s.shape or len(s) < 2:
        raise ValueError(f"s and energy must be 1-D arrays of one length >= 2, got shapes {s.shape} "
                         f"and {energy.shape}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(energy))):
        raise ValueError("s and energy must be finite")
    if np.any(np.diff(s) <= 0):
        raise ValueError("s must be strictly increasing")
    rtol = _v.as_real(rtol, "rtol")
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie in (0, 1), got {rtol}")
    min_length = _v.as_real(min_length, "min_length")
    if min_length < 0:
        raise ValueError(f"min_length must be >= 0, got {min_length}")
    mean_slope = (energy[-1] - energy[0]) / (s[-1] - s[0])
    slope = np.diff(energy) / np.diff(s)
    flat = slope <= rtol * mean_slope if mean_slope > 0 else np.ones(len(slope), dtype=bool)
    edges = np.diff(np.concatenate([[0], flat.astype(int), [0]]))
    begin, end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # intervals [begin, end)
    levels, lengths, starts, counts = [], [], [], []
    for b, e in zip(begin, end, strict=True):
        length = s[e] - s[b]
        if length < min_length or length <= 0:
            continue
        levels.append(float(np.median(energy[b:e + 1])))
        lengths.append(float(length))
        starts.append(float(s[b]))
        if n_points is not None:  # the count at the middle of the plateau in s
            middle = min(int(np.searchsorted(s, 0.5 * (s[b] + s[e]))), e)
            counts.append(int(np.asarray(n_points)[middle]))
    return Staircase(levels=np.asarray(levels), lengths=np.asarray(lengths), starts=np.asarray(starts),
                     n_points=None if n_points is None else np.asarray(counts, dtype=int))
