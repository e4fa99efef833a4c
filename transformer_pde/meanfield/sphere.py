r"""The 2-sphere: a reduced latitude-longitude grid, its SHT fast path, and a 1-D reference.

Three pieces (MATH.md 2.2 and 8):

- :class:`SphereGrid`, a finite-volume grid of quasi-uniform cells on
  :math:`\mathbb S^2 \subset \mathbb R^3` with a limited second-order reconstruction;
- :meth:`SphereGrid.fast_face_velocity`, the field of rotation-invariant models by
  spherical harmonics (Funk-Hecke), O(L^2 log L + N + F) per evaluation;
- :func:`solve_axisymmetric`, the high-resolution solution of the axisymmetric reduction
  (a density that depends on the polar angle only stays so), on an
  :class:`AxisymmetricGrid` of latitude bands, against which the 2-D grid is checked.

**Fast path.** For weights :math:`w(\langle x, y\rangle)` (softmax :math:`e^{bc}`, USA
:math:`e^{bc}`, sigmoid :math:`\sigma(bc + \text{bias})`) and point masses :math:`a_j` at
the cell centres :math:`y_j`, write :math:`w(t) = \sum_l w_l \frac{2l+1}{4\pi} P_l(t)` with
the Funk-Hecke coefficients :math:`w_l = 2\pi\int_{-1}^1 w(t)P_l(t)\,dt`
(:math:`4\pi i_l(b)` for :math:`e^{bt}`). By the addition theorem

.. math::

    Z(x) = \sum_j a_j\,w(\langle x, y_j\rangle) = \sum_{l,m} w_l\,A_{lm}\,Y_{lm}(x),
    \qquad A_{lm} = \sum_j a_j\,\overline{Y_{lm}(y_j)},

and, with g an antiderivative of w (:math:`g_l = (w_{l-1} - w_{l+1})/(2l+1)` for
:math:`l \ge 1`; :math:`g_l = w_l/b` for the exponential),

.. math::

    P^\perp_x \sum_j a_j\,w(\langle x, y_j\rangle)\,y_j = \nabla_{\mathbb S} G(x), \qquad
    G(x) = \sum_{l,m} g_l\,A_{lm}\,Y_{lm}(x).

So one adjoint synthesis at the N centres gives :math:`A_{lm}`, and syntheses of
:math:`Z` and of :math:`\nabla_{\mathbb S}G` (spin 1) at the F face midpoints give the
face velocity :math:`u_f = v\,\langle\nabla G, n_f\rangle / Z` (softmax) or
:math:`v\,\langle\nabla G, n_f\rangle` (USA, sigmoid), the same sums as the quadrature
path up to the truncation of the series (the degree L is the smallest with a negligible
tail, about :math:`6 + 9\sqrt{b}` for the exponential) and the accuracy of ducc0's
non-uniform transforms (about 1e-14 relative to the largest value). Softmax divides by
Z: at large beta, far from all mass, Z can fall below that accuracy (where the density
is negligible too); there the velocity is kept within its exact bound |v|. Series longer
than ``MAX_DEGREE`` (sigmoid at beta of several hundred) fall back to the exact sums.
The cost, O(L^2 log L + N + F), is linear in the grid size at fixed beta (measured
~N^1 from 20k to 80k cells, vs N^2 for the quadrature: 200x faster at 20k cells;
``benchmarks/bench_meanfield_sphere.py``).
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from scipy import sparse
from scipy.special import ive, roots_legendre

from .. import _validation as _v
from .field import RotationInvariant, kernel_weights, rotation_invariant
from .grids import Faces, Grid, mc_slopes

__all__ = ["SphereGrid", "AxisymmetricGrid", "solve_axisymmetric", "funk_hecke_coefficients"]

#: accuracy asked of ducc0's non-uniform spherical harmonic transforms (its floor is ~2e-13)
SHT_EPSILON = 3e-13
#: the series is cut where its tail is below this fraction of the kernel's largest value
TAIL_TOL = 1e-16
#: above this degree the fast path computes the exact sums instead (memory ~ L^2)
MAX_DEGREE = 1500


def _unit(theta, phi):
    theta, phi = np.broadcast_arrays(np.asarray(theta, dtype=np.float64), np.asarray(phi, dtype=np.float64))
    st = np.sin(theta)
    return np.stack([st * np.cos(phi), st * np.sin(phi), np.cos(theta)], axis=-1)


def _e_theta(theta, phi):
    theta, phi = np.broadcast_arrays(np.asarray(theta, dtype=np.float64), np.asarray(phi, dtype=np.float64))
    ct = np.cos(theta)
    return np.stack([ct * np.cos(phi), ct * np.sin(phi), -np.sin(theta)], axis=-1)


def _e_phi(theta, phi):
    theta, phi = np.broadcast_arrays(np.asarray(theta, dtype=np.float64), np.asarray(phi, dtype=np.float64))
    return np.stack([-np.sin(phi), np.cos(phi), np.zeros(phi.shape)], axis=-1)


def _colat_lon(x):
    """(theta in [0, pi], phi in [0, 2 pi)) of unit vectors x (..., 3)."""
    theta = np.arccos(np.clip(x[..., 2], -1.0, 1.0))
    phi = np.mod(np.arctan2(x[..., 1], x[..., 0]), 2.0 * np.pi)
    return theta, phi


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _log_map(base, x):
    """Tangent vectors at ``base`` (n, 3) pointing to x (n, 3), of length the geodesic distance."""
    c = np.clip(np.einsum("ij,ij->i", base, x), -1.0, 1.0)
    t = x - c[:, None] * base
    s = np.linalg.norm(t, axis=1)
    ang = np.arctan2(s, c)
    return t * (ang / np.where(s > 0.0, s, 1.0))[:, None]


# ---------------------------------------------------------------------------------------
# Funk-Hecke coefficients
# ---------------------------------------------------------------------------------------
def _legendre_table(lmax, t):
    """P_0..P_lmax at the points t, shape (lmax + 1, len(t)) (three-term recurrence)."""
    p = np.empty((lmax + 1, len(t)))
    p[0] = 1.0
    if lmax >= 1:
        p[1] = t
    for l in range(1, lmax):
        p[l + 1] = ((2 * l + 1) * t * p[l] - l * p[l - 1]) / (l + 1)
    return p


def _exp_coefficients(b, lmax):
    """Funk-Hecke coefficients of exp(b t - |b|), l = 0..lmax."""
    w = np.zeros(lmax + 1)
    if b == 0.0:
        w[0] = 4.0 * np.pi
        return w
    l = np.arange(lmax + 1)
    ab = abs(b)
    # e^{-|b|} i_l(|b|) = sqrt(pi / (2|b|)) ive(l + 1/2, |b|); i_l(-b) = (-1)^l i_l(b)
    w[:] = 4.0 * np.pi * np.sqrt(np.pi / (2.0 * ab)) * ive(l + 0.5, ab)
    if b < 0.0:
        w[1::2] *= -1.0
    return w


def _gauss_legendre(n):
    """Gauss-Legendre nodes and weights, accurate to round-off: scipy's nodes polished by
    Newton steps and weights recomputed from P_n' (scipy's weights carry errors ~ n eps)."""
    t, _ = roots_legendre(n)

    def p_and_dp(t):
        p0, p1 = np.ones_like(t), t.copy()
        for l in range(1, n):
            p0, p1 = p1, ((2 * l + 1) * t * p1 - l * p0) / (l + 1)
        return p1, n * (t * p1 - p0) / (t * t - 1.0)

    for _ in range(2):
        p, dp = p_and_dp(t)
        t = t - p / dp
    _, dp = p_and_dp(t)
    return t, 2.0 / ((1.0 - t * t) * dp * dp)


def _sigmoid_coefficients(b, bias, lmax):
    """Funk-Hecke coefficients of sigmoid(b t + bias), l = 0..lmax (Gauss-Legendre), with
    the ones below the rounding level of the quadrature sums set to zero."""
    nq = lmax + 64  # exact for w P_l when w's Legendre series is negligible past degree lmax + 127
    t, wq = _gauss_legendre(nq)
    vals, _ = kernel_weights(RotationInvariant("sigmoid", b, 1.0, bias), t)
    w = 2.0 * np.pi * (_legendre_table(lmax, t) @ (wq * vals))
    noise = 4.0 * np.sqrt(nq) * np.finfo(float).eps * 2.0 * np.pi * np.sum(wq * np.abs(vals))
    w[np.abs(w) < noise] = 0.0
    return w


def _tail_degree(w, g, scale):
    """Smallest L such that the series of w (values) and of grad g (derivatives) beyond
    degree L are below TAIL_TOL * scale, or None if lmax is not enough."""
    l = np.arange(len(w))
    tz = (2 * l + 1) / (4.0 * np.pi) * np.abs(w)
    tg = (2 * l + 1) / (4.0 * np.pi) * np.abs(g) * 0.5 * l * (l + 1)
    # tails beyond l: sum over l' > l
    tail_z = np.cumsum(tz[::-1])[::-1]
    tail_g = np.cumsum(tg[::-1])[::-1]
    tail = np.maximum(np.append(tail_z[1:], 0.0), np.append(tail_g[1:], 0.0))
    ok = np.nonzero(tail <= TAIL_TOL * scale)[0]
    # the last few coefficients must themselves be tiny, else lmax is too small
    if len(ok) == 0 or ok[0] > len(w) - 8:
        return None
    return max(int(ok[0]), 1)


@lru_cache(maxsize=64)
def _coefficients(kind, b, bias):
    lmax = 32
    while True:
        if kind == "sigmoid":
            w = _sigmoid_coefficients(b, bias, lmax + 1)
            g = np.zeros(lmax + 1)
            l = np.arange(1, lmax + 1)
            g[1:] = (w[l - 1] - w[l + 1]) / (2 * l + 1)
            w = w[: lmax + 1]
            ends, _ = kernel_weights(RotationInvariant("sigmoid", b, 1.0, bias), np.array([-1.0, 1.0]))
            scale = float(ends.max())
        else:
            w = _exp_coefficients(b, lmax)
            g = w / b if b != 0.0 else np.zeros(lmax + 1)
            if b == 0.0:
                g[1] = w[0] / 3.0  # g(t) = t
            scale = 1.0
        L = _tail_degree(w, g, scale)
        if L is not None:
            return w[: L + 1].copy(), g[: L + 1].copy()
        if lmax > MAX_DEGREE:
            return None
        lmax *= 2


def funk_hecke_coefficients(ri: RotationInvariant):
    r"""Funk-Hecke coefficients of a rotation-invariant head's weights, truncated.

    Returns ``(w, g)``, each of shape (L + 1,): :math:`w_l = 2\pi\int_{-1}^1 w(t)P_l(t)dt`
    of the weights as :func:`~transformer_pde.meanfield.field.kernel_weights` gives them
    (the exponential shifted by :math:`e^{-|b|}`), and :math:`g_l` of an antiderivative
    g of w. L is the smallest degree whose tails (of w, and of the derivatives of g) are
    below ``TAIL_TOL`` times the largest weight. None if L would exceed ``MAX_DEGREE``.
    """
    kind = "sigmoid" if ri.kind == "sigmoid" else "exp"
    return _coefficients(kind, float(ri.b), float(ri.bias) if kind == "sigmoid" else 0.0)


@lru_cache(maxsize=16)
def _degree_index(lmax):
    """The degree l of each entry of ducc0's a_lm array (m-major, l = m..lmax)."""
    return np.concatenate([np.arange(m, lmax + 1) for m in range(lmax + 1)])


def _exact_head(ri: RotationInvariant, d: int):
    """An attention object computing the same field by quadrature (the fallback)."""
    from ..attention import SigmoidAttention, SoftmaxAttention, UnnormalizedAttention

    v = ri.v * np.eye(d)
    if ri.kind == "softmax":
        return SoftmaxAttention(beta=ri.b, V=v)
    if ri.kind == "exp":
        return UnnormalizedAttention(beta=ri.b, V=v)
    return SigmoidAttention(beta=ri.b, V=v, bias=ri.bias)


def sht_face_velocity(ri: RotationInvariant, a, centers_loc, faces_loc, n_theta, n_phi):
    """Normal face velocities by spherical harmonics (module docstring).

    ``centers_loc`` (N, 2) and ``faces_loc`` (F, 2) are (colatitude, longitude);
    ``n_theta``, ``n_phi`` (F,) the components of the face normals on
    :math:`e_\\theta, e_\\phi`. Returns None when the series would be too long.
    """
    coef = funk_hecke_coefficients(ri)
    if coef is None:
        return None
    w, g = coef
    lmax = len(w) - 1
    ls = _degree_index(lmax)
    nt = _threads()
    # one thread for the adjoint transform: its threaded spreading sums in a varying order
    # (results differing in the last bit from run to run); the syntheses are deterministic
    alm = sht_analysis(a, centers_loc, lmax, 1)
    grad = _synth(alm * g[ls], faces_loc, lmax, nt, spin=1)
    num = ri.v * (grad[0] * n_theta + grad[1] * n_phi)
    if ri.kind == "softmax":
        z = _synth(alm * w[ls], faces_loc, lmax, nt, spin=0)[0]
        bound = abs(ri.v)  # |N / Z| <= |v|: N / Z averages v y_j over unit vectors y_j
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            u = num / z
        # where Z is below the transform's accuracy (far from all mass at large beta,
        # where the density is negligible too) keep the velocity within its true bound
        return np.where(z > 0.0, np.clip(u, -bound, bound), 0.0)
    if ri.kind == "exp":
        with np.errstate(over="ignore"):
            return num * np.exp(abs(ri.b))
    return num


def sht_analysis(a, loc, lmax, nthreads=1):
    r"""Coefficients :math:`A_{lm} = \sum_j a_j \overline{Y_{lm}(y_j)}` of point masses a (N,)
    at ``loc`` (N, 2) (colatitude, longitude), in ducc0's layout, shape (1, n_alm)."""
    import ducc0

    return ducc0.sht.adjoint_synthesis_general(
        map=np.ascontiguousarray(a, dtype=np.float64)[None, :], spin=0, lmax=lmax, loc=loc,
        epsilon=SHT_EPSILON, nthreads=nthreads)


def _synth(alm, loc, lmax, nthreads, spin):
    import ducc0

    if spin == 0:
        return ducc0.sht.synthesis_general(alm=alm, spin=0, lmax=lmax, loc=loc,
                                           epsilon=SHT_EPSILON, nthreads=nthreads)
    # DERIV1: the alm of G in, (d/dtheta G, (1/sin theta) d/dphi G) out
    return ducc0.sht.synthesis_general(alm=alm, spin=1, lmax=lmax, loc=loc, epsilon=SHT_EPSILON,
                                       nthreads=nthreads, mode="DERIV1")


# ---------------------------------------------------------------------------------------
# the 2-D grid
# ---------------------------------------------------------------------------------------
class SphereGrid(Grid):
    r"""A reduced latitude-longitude grid of the 2-sphere (quasi-uniform cells).

    The colatitude :math:`[0, \pi]` is cut into ``n_lat`` equal rings
    :math:`[\vartheta_i, \vartheta_{i+1}]`, :math:`\vartheta_i = i\pi/n_{lat}`; ring i is cut
    into :math:`n_i = \max(3, \operatorname{round}(2 n_{lat}\sin\bar\vartheta_i))` equal
    longitude sectors :math:`[2\pi k/n_i, 2\pi(k+1)/n_i)` (:math:`\bar\vartheta_i` the ring's
    mid colatitude). Every cell is then close to a square of side :math:`h = \pi/n_{lat}`,
    at the poles too: the polar rings are three wedges of area :math:`\approx 1.05h^2`
    meeting at the pole (instead of the :math:`2n_{lat}` slivers of width
    :math:`\sim h^2` of a plain latitude-longitude grid, which would crush the CFL step
    by a factor n_lat). About :math:`4n_{lat}^2/\pi` cells in all; the grid is symmetric
    under :math:`\vartheta \to \pi - \vartheta`.

    Why this grid rather than a cubed sphere: its cells are bounded by meridians and
    parallels, so areas, face lengths and normals are exact and elementary, sampling
    and point location are closed forms, the centres of a ring lie on one parallel with
    equal spacing (the layout spherical harmonic transforms like), and the polar problem
    of lat-lon grids is solved by reducing the number of cells per ring.

    Faces: the meridian segments between neighbouring cells of a ring (normal
    :math:`e_\phi`, length :math:`\vartheta_{i+1} - \vartheta_i`, midpoint at the ring's mid
    colatitude) and, on each parallel between two rings, the arcs between consecutive
    points of the union of both rings' longitude breakpoints (normal :math:`e_\vartheta`
    from the northern ring to the southern one, length :math:`\sin\vartheta_i\,\Delta\phi`), so
    every face separates exactly two cells and the fluxes are conservative. Arcs wider
    than :math:`h` in longitude (near the poles: the first parallel is cut into arcs of
    :math:`2\pi/9` by the breakpoints) are split into equal pieces, several faces then
    joining the same two cells: the flux through a face is taken at its midpoint, and
    along a parallel the normal :math:`e_\vartheta(\phi)` turns with the longitude, so the
    midpoint rule errs by :math:`\Delta\phi^2/24` of the flux, an error that would not
    shrink under refinement at the polar cells (their discrete divergence would be
    off by :math:`O(1/h)`; with the split it is off by O(h) there and O(h^2) on average).
    Volumes are the exact cell areas :math:`\Delta\phi(\cos\vartheta_i - \cos\vartheta_{i+1})`
    (they sum to :math:`4\pi`); centres are the directions of the cells' centroids (unit
    vectors), where the midpoint rule puts each cell's mass for the attention field.

    Reconstruction: a weighted least-squares gradient in the tangent plane at each centre
    (from the cells sharing a face, weights 1/distance^2), evaluated at the face midpoints
    through the log map (exact for data linear in the log-map coordinates of the cell,
    so second order), then limited per face with the bounds of Barth and Jespersen: the
    value is clipped to the range of the cell and its face neighbours, and below twice
    the cell's own value. The first keeps face values within neighbouring cell values
    (what the MC limiter of :func:`~transformer_pde.meanfield.grids.mc_slopes` does in
    1-D), the second is what a forward-Euler stage with cfl <= 1/2 needs to keep the
    density nonnegative (the outflow of a cell in one step is at most
    cfl * 2 rho_c |c|; see :mod:`~transformer_pde.meanfield.solver`). On smooth data the
    clip acts only near extrema, where it changes face values by O(h^2). (Clipping to the
    two cells of the face instead, as in 1-D, is first order on the parallels, whose
    midpoints are not between the two centres in longitude.)

    Densities are flat arrays of shape (N,), ordered ring by ring from the north pole
    (z = +1), west to east within a ring.

    Parameters
    ----------
    n_lat : int
        Number of latitude rings, >= 4.
    n_lon : sequence of int, optional
        Cells per ring (n_lat entries, each >= 3) instead of the quasi-uniform default;
        e.g. ``[2 * n_lat] * n_lat`` is the plain latitude-longitude grid.

    Attributes
    ----------
    theta_edges : ndarray (n_lat + 1,)
        Ring boundaries (colatitudes).
    n_lon : ndarray of int (n_lat,)
        Cells per ring; ``ring_start`` (n_lat + 1,) the flat index of each ring's first cell.
    ring, theta, phi, dphi : ndarray (N,)
        Ring index, centre colatitude, centre longitude and longitude width of each cell.
    max_face_angle : float
        The widest longitude interval of a face on a parallel, :math:`\pi/n_{lat}`.
    """

    geometry = "sphere"
    #: subtract the discrete field of the uniform density for rotation-invariant heads
    #: (see :func:`~transformer_pde.meanfield.field.face_velocity`): no grid of the
    #: sphere integrates the kernel exactly, and the uniform state should stay put
    balance_uniform = True
    dim = 3

    def __init__(self, n_lat: int, n_lon=None):
        n_lat = _v.as_positive_int(n_lat, "n_lat")
        if n_lat < 4:
            raise ValueError(f"n_lat must be >= 4 (latitude rings), got {n_lat}")
        self.n_lat = n_lat
        edges = np.linspace(0.0, np.pi, n_lat + 1)
        edges[-1] = np.pi
        self.theta_edges = edges
        mid = 0.5 * (edges[:-1] + edges[1:])
        if n_lon is None:
            counts = np.maximum(3, np.rint(2.0 * n_lat * np.sin(mid))).astype(np.int64)
            self._custom = False
        else:
            try:
                counts = [int(c) if float(c) == int(c) else None for c in n_lon]
            except (TypeError, ValueError):
                raise TypeError(f"n_lon must be a sequence of {n_lat} integers, got {n_lon!r}") from None
            if len(counts) != n_lat or any(c is None for c in counts):
                raise ValueError(f"n_lon must have one integer per ring ({n_lat}), got {list(n_lon)!r}")
            counts = np.asarray(counts, dtype=np.int64)
            if counts.min() < 3:
                raise ValueError(f"n_lon must be >= 3 in every ring, got {counts.min()} in ring "
                                 f"{int(np.argmin(counts))}")
            self._custom = True
        self.n_lon = counts
        self.max_face_angle = np.pi / n_lat
        self.ring_start = np.concatenate([[0], np.cumsum(counts)])
        n = int(self.ring_start[-1])
        self.shape = (n,)
        self.ring = np.repeat(np.arange(n_lat), counts)
        self.k = np.arange(n) - self.ring_start[self.ring]
        dphi = 2.0 * np.pi / counts[self.ring]
        self.dphi = dphi
        t0, t1 = edges[self.ring], edges[self.ring + 1]
        self.volumes = dphi * (np.cos(t0) - np.cos(t1))
        # centroid direction: int sin^2 (x, y) and int cos sin (z) over the cell
        s_int = 0.5 * (t1 - t0) - 0.25 * (np.sin(2 * t1) - np.sin(2 * t0))
        c_int = 0.5 * (np.sin(t1) ** 2 - np.sin(t0) ** 2)
        self.theta = np.arctan2(s_int * 2.0 * np.sin(0.5 * dphi), c_int * dphi)
        self.phi = (self.k + 0.5) * dphi
        self.centers = _unit(self.theta, self.phi)
        self.faces, self._face_loc = self._make_faces()
        self._center_loc = np.stack([self.theta, self.phi], axis=1)
        fl = self._face_loc
        self._n_theta = np.einsum("fd,fd->f", self.faces.normals, _e_theta(fl[:, 0], fl[:, 1]))
        self._n_phi = np.einsum("fd,fd->f", self.faces.normals, _e_phi(fl[:, 0], fl[:, 1]))
        self._make_reconstruction()

    def __repr__(self) -> str:
        if self._custom:
            return f"SphereGrid({self.n_lat}, n_lon={self.n_lon.tolist()})"
        return f"SphereGrid({self.n_lat})"

    # -- faces ---------------------------------------------------------------------------
    def _make_faces(self):
        edges, counts, start = self.theta_edges, self.n_lon, self.ring_start
        th, ph, nrm, area, left, right = [], [], [], [], [], []
        for i, m in enumerate(counts):  # meridional faces: face k between cells k-1 and k
            k = np.arange(m)
            tmid = 0.5 * (edges[i] + edges[i + 1])
            phi = 2.0 * np.pi * k / m
            th.append(np.full(m, tmid))
            ph.append(phi)
            nrm.append(_e_phi(tmid, phi))
            area.append(np.full(m, edges[i + 1] - edges[i]))
            left.append(start[i] + (k - 1) % m)
            right.append(start[i] + k)
        for j in range(1, self.n_lat):  # parallel between ring j-1 (north) and ring j
            na, nb = int(counts[j - 1]), int(counts[j])
            den = na * nb  # breakpoints in units of 2 pi / den
            cuts = np.unique(np.concatenate([np.arange(na) * nb, np.arange(nb) * na]))
            nxt = np.append(cuts[1:], den)
            # split arcs wider than max_angle into equal pieces (several faces, same two cells)
            width = 2.0 * np.pi * (nxt - cuts) / den
            pieces = np.ceil(width / self.max_face_angle * (1.0 - 1e-12)).astype(np.int64)
            seg = np.repeat(np.arange(len(cuts)), pieces)
            part = np.arange(len(seg)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
            dphi = width[seg] / pieces[seg]
            phi = 2.0 * np.pi * cuts[seg] / den + (part + 0.5) * dphi
            te = edges[j]
            th.append(np.full(len(seg), te))
            ph.append(phi)
            nrm.append(_e_theta(te, phi))
            area.append(np.sin(te) * dphi)
            left.append(start[j - 1] + cuts[seg] // nb)
            right.append(start[j] + cuts[seg] // na)
        th, ph = np.concatenate(th), np.concatenate(ph)
        faces = Faces(points=_unit(th, ph), normals=np.concatenate(nrm), areas=np.concatenate(area),
                      left=np.concatenate(left).astype(np.int64),
                      right=np.concatenate(right).astype(np.int64))
        return faces, np.stack([th, ph], axis=1)

    # -- reconstruction ------------------------------------------------------------------
    def _make_reconstruction(self):
        n = self.size
        f = self.faces
        nf = len(f.areas)
        # neighbour pairs (several faces may join the same two cells), both directions
        pairs = np.unique(np.stack([np.minimum(f.left, f.right), np.maximum(f.left, f.right)], 1), axis=0)
        p = np.concatenate([pairs[:, 0], pairs[:, 1]])
        q = np.concatenate([pairs[:, 1], pairs[:, 0]])
        x = self.centers
        e1 = _e_theta(self.theta, self.phi)
        e2 = _e_phi(self.theta, self.phi)

        def tangent(base_cells, points):  # log-map coordinates on (e_theta, e_phi) of the cells
            t = _log_map(x[base_cells], points)
            return np.stack([np.einsum("ij,ij->i", t, e1[base_cells]),
                             np.einsum("ij,ij->i", t, e2[base_cells])], axis=1)

        d2 = tangent(p, x[q])
        wgt = 1.0 / np.einsum("ij,ij->i", d2, d2)
        m = np.zeros((n, 2, 2))
        np.add.at(m, p, wgt[:, None, None] * d2[:, :, None] * d2[:, None, :])
        kq = wgt[:, None] * np.einsum("eij,ej->ei", np.linalg.inv(m)[p], d2)
        # gradient of cell p (2 components) = sum over its neighbours q of kq (rho_q - rho_p)
        rows = np.concatenate([2 * p, 2 * p + 1, 2 * p, 2 * p + 1])
        cols = np.concatenate([q, q, p, p])
        vals = np.concatenate([kq[:, 0], kq[:, 1], -kq[:, 0], -kq[:, 1]])
        grad = sparse.csr_matrix((vals, (rows, cols)), shape=(2 * n, n))
        # side s of face f (s < F: the left cell, else the right cell): offset of the face
        # midpoint from that cell's centre, dotted with that cell's gradient
        side_cell = np.concatenate([f.left, f.right])
        tf2 = tangent(side_cell, np.concatenate([f.points, f.points]))
        rows = np.repeat(np.arange(2 * nf), 2)
        cols = (2 * side_cell[:, None] + np.arange(2)).ravel()
        offsets = sparse.csr_matrix((tf2.ravel(), (rows, cols)), shape=(2 * nf, 2 * n))
        self._recon = (offsets @ grad).tocsr()
        # neighbour table for the limiter, padded with the cell itself
        order = np.argsort(p, kind="stable")
        counts = np.bincount(p, minlength=n)
        start = np.concatenate([[0], np.cumsum(counts)])
        nbr = np.repeat(np.arange(n)[:, None], int(counts.max()) + 1, axis=1)
        nbr[p[order], 1 + np.arange(len(p)) - start[p[order]]] = q[order]
        self._neighbours = nbr
        self._side_cell = side_cell
        self._n_faces = nf

    @property
    def coordinates(self) -> np.ndarray:
        """Cell centres (N, 3), unit vectors."""
        return self.centers

    def reconstruct(self, rho):
        rho = np.asarray(rho).ravel()
        delta = self._recon @ rho
        nb = rho[self._neighbours]  # (N, 1 + max neighbours): the cell and its face neighbours
        low = nb.min(axis=1)
        high = np.minimum(nb.max(axis=1), 2.0 * rho)
        c = self._side_cell
        vals = np.minimum(np.maximum(rho[c] + delta, low[c]), high[c])
        nf = self._n_faces
        return vals[:nf], vals[nf:]

    # -- points ----------------------------------------------------------------------
    def sample_cells(self, cells, rng):
        cells = np.asarray(cells, dtype=np.int64)
        ring = self.ring[cells]
        z0, z1 = np.cos(self.theta_edges[ring]), np.cos(self.theta_edges[ring + 1])
        z = z1 + (z0 - z1) * rng.random(len(cells))
        phi = (self.k[cells] + rng.random(len(cells))) * self.dphi[cells]
        s = np.sqrt(np.maximum(0.0, 1.0 - z * z))
        return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)

    def cell_of(self, x):
        x = np.asarray(x, dtype=np.float64)
        theta, phi = _colat_lon(x / np.linalg.norm(x, axis=-1, keepdims=True))
        ring = np.clip(np.searchsorted(self.theta_edges, theta, side="right") - 1, 0, self.n_lat - 1)
        m = self.n_lon[ring]
        k = np.minimum((phi * m / (2.0 * np.pi)).astype(np.int64), m - 1)
        return self.ring_start[ring] + k

    # -- fast path -------------------------------------------------------------------
    def fast_face_velocity(self, ri: RotationInvariant, a: np.ndarray) -> np.ndarray:
        """Normal face velocities (F,) of a rotation-invariant head from the cell masses a (N,)
        by spherical harmonics (module docstring); the exact sums when the series is too long."""
        u = sht_face_velocity(ri, a, self._center_loc, self._face_loc, self._n_theta, self._n_phi)
        if u is None:
            head = _exact_head(ri, 3)
            field = head._field(np.ascontiguousarray(self.faces.points), self.centers, a)
            u = np.einsum("fd,fd->f", field, self.faces.normals)
        return u

    def project(self, rho, f) -> float:
        r""":math:`\sum_c |c|\,\rho_c\,f(x_c)`: the integral of f against the density."""
        return float(np.sum(self.volumes * np.asarray(rho).ravel() * f(self.centers)))


# ---------------------------------------------------------------------------------------
# the axisymmetric reduction
# ---------------------------------------------------------------------------------------
class AxisymmetricGrid(Grid):
    r"""Latitude bands of the 2-sphere: the grid of the axisymmetric reduction (MATH.md 8).

    A density :math:`\rho(\vartheta)` (w.r.t. area) that depends on the colatitude only is
    stored as its values on ``n_theta`` equal bands :math:`[\vartheta_i, \vartheta_{i+1}]`.
    The PDE reduces to the conservative 1-D equation

    .. math::

        \partial_t\big(\sin\vartheta\,\rho\big) + \partial_\vartheta\big(\sin\vartheta\,\rho\,
        u_\vartheta\big) = 0, \qquad u_\vartheta = \langle X[\mu](x), e_\vartheta\rangle,

    with zero flux at the poles. As a :class:`Grid`: cell i is band i (volume
    :math:`2\pi(\cos\vartheta_i - \cos\vartheta_{i+1})`), its centre the point of colatitude
    :math:`\bar\vartheta_i` (the band's midpoint) on the meridian :math:`\phi = 0`; face i
    is the parallel :math:`\vartheta_i` (i = 1..n-1), of size :math:`2\pi\sin\vartheta_i` and
    normal :math:`e_\vartheta`. The measure of a density is :math:`\mu = \sum_j a_j\,\sigma_j`
    with :math:`\sigma_j` the uniform probability on the parallel :math:`\bar\vartheta_j`, so
    the field at face i is

    .. math::

        u_i = v\,\frac{\sum_j a_j\,K^{N}(\vartheta_i, \bar\vartheta_j)}
                      {\sum_j a_j\,K^{Z}(\vartheta_i, \bar\vartheta_j)}
        \ \text{(softmax)}, \qquad K^Z(\vartheta, \vartheta') = \frac1{2\pi}\int_0^{2\pi}
        w(c)\,d\phi, \quad K^N = \frac1{2\pi}\int_0^{2\pi} w(c)\,\partial_\vartheta c\,d\phi,

    :math:`c = \cos\vartheta\cos\vartheta' + \sin\vartheta\sin\vartheta'\cos\phi` (the numerator
    alone for USA and sigmoid). For :math:`w = e^{bc}` the longitude integrals are Bessel
    functions, :math:`K^Z = e^{b\cos\vartheta\cos\vartheta'}I_0(z)` and
    :math:`K^N = e^{b\cos\vartheta\cos\vartheta'}(\cos\vartheta\sin\vartheta' I_1(z) -
    \sin\vartheta\cos\vartheta' I_0(z))`, :math:`z = b\sin\vartheta\sin\vartheta'`; for the
    sigmoid they are computed by the trapezoidal rule in :math:`\phi` (spectrally accurate).
    Only rotation-invariant models (Q, K, V multiples of I) have this reduction, so the grid
    has no quadrature path: use ``method="fast"`` (:func:`solve_axisymmetric` does).

    Parameters
    ----------
    n_theta : int
        Number of bands, >= 8.
    """

    geometry = "sphere"
    #: subtract the discrete field of the uniform density for rotation-invariant heads
    #: (see :func:`~transformer_pde.meanfield.field.face_velocity`): no grid of the
    #: sphere integrates the kernel exactly, and the uniform state should stay put
    balance_uniform = True
    dim = 3

    def __init__(self, n_theta: int):
        n_theta = _v.as_positive_int(n_theta, "n_theta")
        if n_theta < 8:
            raise ValueError(f"n_theta must be >= 8 (latitude bands), got {n_theta}")
        self.n_theta = n_theta
        self.shape = (n_theta,)
        self.h = np.pi / n_theta
        self.theta_edges = np.arange(n_theta + 1) * self.h
        self.theta_edges[-1] = np.pi
        self.theta = (np.arange(n_theta) + 0.5) * self.h
        self.volumes = 2.0 * np.pi * (np.cos(self.theta_edges[:-1]) - np.cos(self.theta_edges[1:]))
        self.centers = _unit(self.theta, 0.0)
        te = self.theta_edges[1:-1]
        idx = np.arange(1, n_theta)
        self.faces = Faces(points=_unit(te, 0.0), normals=_e_theta(te, 0.0),
                           areas=2.0 * np.pi * np.sin(te), left=idx - 1, right=idx)
        self._kernels = {}

    def __repr__(self) -> str:
        return f"AxisymmetricGrid({self.n_theta})"

    @property
    def coordinates(self) -> np.ndarray:
        """Band-centre colatitudes (n_theta,), radians."""
        return self.theta

    def reconstruct(self, rho):
        rho = np.asarray(rho).ravel()
        # rho is even about each pole (smooth on the sphere): mirror ghost cells
        ext = np.concatenate([rho[:1], rho, rho[-1:]])
        d = np.diff(ext)
        slope = mc_slopes(d[:-1], d[1:])
        return (rho + 0.5 * slope)[:-1], (rho - 0.5 * slope)[1:]

    def sample_cells(self, cells, rng):
        cells = np.asarray(cells, dtype=np.int64)
        z0, z1 = np.cos(self.theta_edges[cells]), np.cos(self.theta_edges[cells + 1])
        z = z1 + (z0 - z1) * rng.random(len(cells))
        phi = 2.0 * np.pi * rng.random(len(cells))
        s = np.sqrt(np.maximum(0.0, 1.0 - z * z))
        return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)

    def cell_of(self, x):
        x = np.asarray(x, dtype=np.float64)
        theta, _ = _colat_lon(x / np.linalg.norm(x, axis=-1, keepdims=True))
        return np.minimum((theta / self.h).astype(np.int64), self.n_theta - 1)

    def ring_kernels(self, ri: RotationInvariant):
        """``(K^Z, K^N)``, each (n_theta - 1, n_theta): faces x bands (class docstring), for the
        weights as :func:`~transformer_pde.meanfield.field.kernel_weights` gives them."""
        key = (ri.kind == "sigmoid", ri.b, ri.bias if ri.kind == "sigmoid" else 0.0)
        if key not in self._kernels:
            self._kernels[key] = _ring_kernels(ri, self.theta_edges[1:-1], self.theta)
        return self._kernels[key]

    def fast_face_velocity(self, ri: RotationInvariant, a: np.ndarray) -> np.ndarray:
        """Face velocities (n_theta - 1,) from the band masses a (n_theta,) (class docstring)."""
        kz, kn = self.ring_kernels(ri)
        num = ri.v * (kn @ a)
        if ri.kind == "softmax":
            z = kz @ a
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                u = num / z
            # Z underflows far from all mass at large beta: keep |u| <= |v| there
            return np.where(z > 0.0, np.clip(u, -abs(ri.v), abs(ri.v)), 0.0)
        if ri.kind == "exp":
            with np.errstate(over="ignore"):
                return num * np.exp(abs(ri.b))
        return num


def _ring_kernels(ri, theta, theta_src):
    t, s = theta[:, None], theta_src[None, :]
    ct, st, cs, ss = np.cos(t), np.sin(t), np.cos(s), np.sin(s)
    dcdt_cos = ct * ss  # d c / d theta = ct ss cos(phi) - st cs
    if ri.kind != "sigmoid":
        b = ri.b
        z = b * st * ss
        # e^{b ct cs - |b|} I_nu(z) = e^{b ct cs + |z| - |b|} ive(nu, z), exponent <= 0
        scale = np.exp(b * ct * cs + np.abs(z) - abs(b))
        i0, i1 = ive(0, z), ive(1, z)
        return scale * i0, scale * (dcdt_cos * i1 - st * cs * i0)
    # sigmoid: trapezoidal rule in phi, even integrand: cosine nodes on [0, pi]
    m = int(64 + 40 * abs(ri.b))
    phi = np.pi * (np.arange(m) + 0.5) / m
    kz = np.zeros(np.broadcast(t, s).shape)
    kn = np.zeros_like(kz)
    for p in phi:
        c = ct * cs + st * ss * np.cos(p)
        w, _ = kernel_weights(ri, c)
        kz += w
        kn += w * (dcdt_cos * np.cos(p) - st * cs)
    return kz / m, kn / m


def solve_axisymmetric(dyn, f, n_theta: int, t_span, *, t_eval=None, cfl: float = 0.5,
                       progress: bool = False):
    r"""High-resolution solution of the axisymmetric reduction of the Transformer PDE on the 2-sphere.

    For rotation-invariant models (every head's Q, K, V multiples of I; not Sinkhorn) a
    density that depends only on the colatitude :math:`\vartheta` (the angle to the z axis)
    stays so, and the PDE becomes a conservative 1-D equation in :math:`\vartheta` with
    area weight :math:`\sin\vartheta` and zero flux at the poles (MATH.md 8). It is solved
    here with the same scheme as the grids (MC-limited upwind finite volumes, SSP-RK3,
    automatic CFL step) on ``n_theta`` bands, with the longitude integrals of the kernel
    done exactly (:class:`AxisymmetricGrid`). Its error is :math:`O(\pi/n_\theta)^2`, so a
    few hundred bands make it a reference for a 2-D :class:`SphereGrid` run.

    Parameters
    ----------
    dyn : TokenDynamics
        Post-LN attention on the sphere in d = 3 with rotation-invariant heads.
    f : callable
        ``f(theta)`` -> values (n_theta,) of the initial density at the band-centre
        colatitudes (radians); normalised to unit mass.
    n_theta : int
        Number of bands (>= 8).
    t_span, t_eval, cfl, progress
        As in :func:`~transformer_pde.solve_meanfield`.

    Returns
    -------
    DensityTrajectory
        ``t``, ``density`` (nt, n_theta) and ``grid`` (an :class:`AxisymmetricGrid`:
        ``grid.theta`` are the colatitudes, ``grid.theta_edges`` the band edges).
    """
    from ..dynamics import TokenDynamics
    from .density import Density
    from .field import _heads
    from .solver import solve_meanfield

    if not isinstance(dyn, TokenDynamics):
        raise TypeError(f"dyn must be a TokenDynamics, got {type(dyn).__name__}")
    if dyn.dim not in (None, 3):
        raise ValueError(f"the axisymmetric reduction is on the 2-sphere (d = 3), got d = {dyn.dim}")
    for head in _heads(dyn.attention):
        if getattr(head, "causal", False) or rotation_invariant(head, 3) is None:
            raise ValueError(
                "the axisymmetric reduction needs rotation-invariant heads (Q, K, V multiples of "
                f"the identity, no mask, not Sinkhorn), got {head!r}")
    if not callable(f):
        raise TypeError(f"f must be a function of the colatitude, got {type(f).__name__}")
    grid = AxisymmetricGrid(n_theta)
    rho0 = Density.from_function(grid, f)
    return solve_meanfield(dyn, rho0, t_span, t_eval=t_eval, cfl=cfl, method="fast", progress=progress)
