r"""Zonal densities on :math:`\mathbb S^{d-1}` for any d >= 3: the 1-D mean field in the polar angle.

A density on :math:`\mathbb S^{d-1}` that depends only on the polar angle
:math:`\vartheta \in [0, \pi]` of x against a fixed axis e (here the last coordinate axis,
:math:`e = e_d`) stays so under rotation-invariant models, and the Transformer PDE becomes a
conservative 1-D equation in :math:`\vartheta` (docs/math.md §9.19). :class:`ZonalGrid` is
its finite-volume grid, used with :func:`~transformer_pde.solve_meanfield` like the other
grids; the zonal kernel (the velocity at angle :math:`\vartheta` as a sum over the cells)
comes from the Funk-Hecke reduction to a 1-D integral, done by Gauss-Jacobi quadrature, so
d = 1024 costs what d = 4 does.
"""

from __future__ import annotations

import numpy as np
from scipy.special import betainc, betaln, roots_jacobi

from .. import _validation as _v
from .field import RotationInvariant, rotation_invariant
from .grids import Faces, Grid, mc_slopes

__all__ = ["ZonalGrid", "zonal_kernels", "zonal_kernels_bessel"]

#: a face whose shifted partition function Z is below this is recomputed by log-sum-exp
#: (all terms are positive, so Z above it is accurate to round-off: only underflow loses terms)
_Z_TINY = 1e-250


def _points(theta: np.ndarray, d: int) -> np.ndarray:
    r"""The points :math:`\sin\vartheta\,e_1 + \cos\vartheta\,e_d` (..., d)."""
    theta = np.asarray(theta, dtype=np.float64)
    x = np.zeros(theta.shape + (d,))
    x[..., 0] = np.sin(theta)
    x[..., -1] = np.cos(theta)
    return x


def _e_theta(theta: np.ndarray, d: int) -> np.ndarray:
    r"""The unit tangents :math:`\cos\vartheta\,e_1 - \sin\vartheta\,e_d` (..., d)."""
    theta = np.asarray(theta, dtype=np.float64)
    x = np.zeros(theta.shape + (d,))
    x[..., 0] = np.cos(theta)
    x[..., -1] = -np.sin(theta)
    return x


def _nodes(d: int, b: float):
    r"""Gauss-Jacobi nodes and probability weights for :math:`s \sim (1 - s^2)^{(d-4)/2}` on [-1, 1].

    The number of nodes grows with :math:`|b|` (the largest :math:`|z|` in :math:`e^{zs}`):
    measured against the closed form :math:`\sinh z / z` (d = 4) the log of the integral is
    exact to 1e-13 for :math:`|z| \le 3(m - 32)`.
    """
    m = int(32 + np.ceil(abs(b) / 3.0))
    alpha = 0.5 * (d - 4)
    s, w = roots_jacobi(m, alpha, alpha)
    return s, w / w.sum()


def zonal_kernels(ri: RotationInvariant, d: int, theta, theta_src):
    r"""The zonal kernels: log partition kernel and mean tangent cosine, each (F, N).

    For a target :math:`x` at angle :math:`\vartheta` and the uniform probability
    :math:`\sigma_{\vartheta'}` on the parallel :math:`\vartheta'` of :math:`\mathbb S^{d-1}`,
    with :math:`c = \cos\vartheta\cos\vartheta' + \sin\vartheta\sin\vartheta'\,s` and
    :math:`s` the cosine to the meridian of x of the other directions
    (:math:`s \sim (1-s^2)^{(d-4)/2}`, docs/math.md §9.19):

    .. math::

        e^{L(\vartheta, \vartheta')} = \mathbb E_s\big[w(c)\big], \qquad
        T(\vartheta, \vartheta') = \frac{\mathbb E_s\big[w(c)\,\partial_\vartheta c\big]}
        {\mathbb E_s\big[w(c)\big]}, \qquad
        \partial_\vartheta c = \cos\vartheta\sin\vartheta'\,s - \sin\vartheta\cos\vartheta',

    for :math:`w = e^{bc}` (softmax, USA; :math:`L` is then
    :math:`b\cos\vartheta\cos\vartheta' + \log\mathbb E_s[e^{zs}]`,
    :math:`z = b\sin\vartheta\sin\vartheta'`) or :math:`w = \sigma(bc + \text{bias})`. The
    expectations are Gauss-Jacobi sums (:func:`_nodes`), in log form for the exponential
    weights (no overflow at any b, d).

    Parameters
    ----------
    ri : RotationInvariant
        The head.
    d : int
        Ambient dimension, >= 3.
    theta : ndarray, shape (F,)
        Target angles.
    theta_src : ndarray, shape (N,)
        Source parallels.

    Returns
    -------
    L, T : ndarray, shape (F, N)
        ``L`` the log of the kernel :math:`\mathbb E_s[w(c)]`, ``T`` (in [-1, 1]) the
        :math:`w`-weighted mean of :math:`\langle y, e_\vartheta\rangle`.

    Examples
    --------
    >>> import numpy as np
    >>> from transformer_pde.meanfield.field import RotationInvariant
    >>> ri = RotationInvariant("softmax", 2.0, 1.0)
    >>> L, T = zonal_kernels(ri, 64, np.array([1.0]), np.array([1.0, 2.0]))
    >>> L.shape, bool(np.all(np.abs(T) <= 1.0))
    ((1, 2), True)
    """
    t = np.asarray(theta, dtype=float)[:, None]
    src = np.asarray(theta_src, dtype=float)[None, :]
    ct, st, cs, ss = np.cos(t), np.sin(t), np.cos(src), np.sin(src)
    s, w = _nodes(d, ri.b if ri.kind != "sigmoid" else 4.0 * abs(ri.b))
    shape = np.broadcast(t, src).shape
    L, T = np.empty(shape), np.empty(shape)
    if ri.kind == "sigmoid":
        from .field import kernel_weights

        for rows in _chunks(shape, 1):
            c0, c1 = (ct * cs)[rows], (st * ss)[rows]
            a0, a1 = (ct * ss)[rows], (st * cs)[rows]
            kz = np.zeros(c0.shape)
            ks = np.zeros(c0.shape)
            for sk, wk in zip(s, w, strict=True):
                wc, _ = kernel_weights(ri, c0 + c1 * sk)
                kz += wk * wc
                ks += wk * wc * sk
            with np.errstate(divide="ignore"):
                L[rows] = np.log(kz)
            T[rows] = np.where(kz > 0.0, (a0 * ks - a1 * kz) / np.where(kz > 0.0, kz, 1.0), 0.0)
        return L, T
    b = ri.b
    for rows in _chunks(shape, len(s)):
        z = (b * st * ss)[rows]
        az = np.abs(z)[..., None]
        # log E_s e^{zs} = |z| + log E_s e^{|z|(s - 1)}: every term <= 1, the largest ~ 1
        e = np.exp(az * (s - 1.0))
        m0 = e @ w
        m1 = e @ (w * s)
        log_g = np.abs(z) + np.log(m0)
        ratio = np.sign(z) * m1 / m0  # E[s e^{zs}] / E[e^{zs}], odd in z
        L[rows] = (b * ct * cs)[rows] + log_g
        T[rows] = (ct * ss)[rows] * ratio - (st * cs)[rows]
    return L, T


def _chunks(shape, nodes: int, budget: int = 1 << 22):
    """Row slices of an (F, N) array so that each (rows, N, nodes) temporary has about ``budget`` entries."""
    step = max(1, budget // max(1, shape[1] * nodes))
    return [slice(i, min(i + step, shape[0])) for i in range(0, shape[0], step)]


def zonal_kernels_bessel(b: float, d: int, theta, theta_src):
    r"""The kernels of :func:`zonal_kernels` for :math:`w = e^{bc}` by the Bessel closed form.

    .. math::

        \mathbb E_s[e^{zs}] = \Gamma(\nu + 1)\Big(\frac2z\Big)^{\nu} I_\nu(z), \qquad
        \frac{\mathbb E_s[s\,e^{zs}]}{\mathbb E_s[e^{zs}]} = \frac{I_{\nu+1}(z)}{I_\nu(z)},
        \qquad \nu = \frac{d-3}{2}

    (docs/math.md §9.19): the readable reference the quadrature is tested against, valid
    where the scaled Bessel functions do not underflow (moderate d: ``ive(nu, z)`` is about
    :math:`(z/2)^\nu/\Gamma(\nu+1)` for small z).

    Parameters
    ----------
    b : float
        The logit scale.
    d : int
        Ambient dimension, >= 3.
    theta, theta_src : ndarray, shapes (F,), (N,)
        Target angles and source parallels.

    Returns
    -------
    L, T : ndarray, shape (F, N)

    Examples
    --------
    >>> import numpy as np
    >>> from transformer_pde.meanfield.field import RotationInvariant
    >>> th = np.array([0.5, 1.5])
    >>> L, T = zonal_kernels_bessel(2.0, 16, th, th)
    >>> L2, T2 = zonal_kernels(RotationInvariant("softmax", 2.0, 1.0), 16, th, th)
    >>> bool(np.allclose(L, L2, rtol=0, atol=1e-12) and np.allclose(T, T2, rtol=0, atol=1e-12))
    True
    """
    from scipy.special import gammaln, ive

    t = np.asarray(theta, dtype=float)[:, None]
    src = np.asarray(theta_src, dtype=float)[None, :]
    ct, st, cs, ss = np.cos(t), np.sin(t), np.cos(src), np.sin(src)
    nu = 0.5 * (d - 3)
    z = b * st * ss
    az = np.abs(z)
    small = az < 1e-8
    zs = np.where(small, 1.0, az)
    i0, i1 = ive(nu, zs), ive(nu + 1, zs)
    log_g = np.where(small, az**2 / (4.0 * (nu + 1.0)),
                     gammaln(nu + 1.0) + nu * np.log(2.0 / zs) + np.log(i0) + zs)
    ratio = np.where(small, az / (2.0 * (nu + 1.0)), i1 / i0) * np.sign(z)
    return b * ct * cs + log_g, ct * ss * ratio - st * cs


class ZonalGrid(Grid):
    r"""Zonal densities on :math:`\mathbb S^{d-1}`: cells in the polar angle (docs/math.md §9.19).

    A zonal measure on :math:`\mathbb S^{d-1}` (axisymmetric about :math:`e = e_d`) is stored
    as the density :math:`p(\vartheta)` **of its polar angle** :math:`\vartheta` (w.r.t.
    :math:`d\vartheta`) on ``n_cells`` equal cells of :math:`[0, \pi]`; the uniform measure
    on the sphere is :math:`p_\sigma(\vartheta) = \sin^{d-2}\vartheta / B(\tfrac{d-1}2, \tfrac12)`
    (:meth:`log_weight`), so a density :math:`g` w.r.t. the uniform probability is
    :math:`p = g\,p_\sigma`. The PDE is the conservative 1-D equation

    .. math::

        \partial_t p + \partial_\vartheta\big(p\,u_\vartheta\big) = 0, \qquad
        u_\vartheta = \langle X[\mu](x), e_\vartheta\rangle,

    with zero flux at the poles; the measure is :math:`\mu = \sum_j a_j\sigma_j`,
    :math:`a_j = p_j h`, :math:`\sigma_j` the uniform probability on the parallel
    :math:`\bar\vartheta_j` (the cell's midpoint), and the field at face i is

    .. math::

        u_i = v\,\frac{\sum_j a_j\,e^{L_{ij}}\,T_{ij}}{\sum_j a_j\,e^{L_{ij}}}
        \ \text{(softmax)}, \qquad u_i = v\sum_j a_j\,e^{L_{ij}}T_{ij}\ \text{(USA, sigmoid)},

    with the zonal kernels of :func:`zonal_kernels` (Funk-Hecke: a 1-D integral against
    :math:`(1-s^2)^{(d-4)/2}ds`). The discrete field of the uniform measure (cell masses
    exact, :meth:`uniform_values`) is subtracted, as on the other sphere grids, so the
    uniform state is stationary to round-off (docs/math.md §9.6). Nothing underflows at
    d = 1024: p is a density in :math:`\vartheta`, cells near the poles where
    :math:`\sin^{d-2}` underflows simply hold no mass, and the kernels are in log form
    (faces whose shifted partition function underflows are redone by log-sum-exp).

    As a :class:`Grid`: volumes are the cell widths h, the centre of cell j is
    :math:`\sin\bar\vartheta_j e_1 + \cos\bar\vartheta_j e_d`, face i (i = 1..n-1) the
    parallel :math:`\vartheta_i` with normal :math:`e_\vartheta` and size 1;
    :meth:`Density.sample <transformer_pde.meanfield.density.Density.sample>` draws
    :math:`\vartheta` uniform in a cell picked by mass and a uniform direction of
    :math:`e^\perp`. Only rotation-invariant heads (Q, K, V multiples of I; softmax, L2,
    USA, sigmoid; no mask) and no noise have this reduction: there is no quadrature path.

    Parameters
    ----------
    n_cells : int
        Number of cells in :math:`\vartheta`, >= 8.
    dim : int
        Ambient dimension d >= 3 (the sphere :math:`\mathbb S^{d-1}`).

    Examples
    --------
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> grid = tp.ZonalGrid(64, dim=1024)
    >>> rho = tp.Density.uniform(grid)            # the uniform measure on S^1023
    >>> round(rho.mass(), 12), bool(rho.values[:8].max() == 0.0)   # no mass near the poles
    (1.0, True)
    >>> rho.sample(3, rng=0).shape
    (3, 1024)
    """

    geometry = "sphere"
    #: the uniform residual is subtracted in :meth:`fast_face_velocity` (with the sphere's cell masses)
    balance_uniform = False
    #: there is no quadrature path: the cell centres stand for whole parallels
    has_quadrature = False

    def __init__(self, n_cells: int, dim: int):
        n_cells = _v.as_positive_int(n_cells, "n_cells")
        if n_cells < 8:
            raise ValueError(f"n_cells must be >= 8 (cells in the polar angle), got {n_cells}")
        dim = _v.as_positive_int(dim, "dim")
        if dim < 3:
            raise ValueError(f"dim must be >= 3 (zonal densities on S^(d-1); d = 2 is tp.CircleGrid), "
                             f"got {dim}")
        self.n_cells, self.dim = n_cells, dim
        self.shape = (n_cells,)
        self.h = np.pi / n_cells
        self.theta_edges = np.arange(n_cells + 1) * self.h
        self.theta_edges[-1] = np.pi
        self.theta = (np.arange(n_cells) + 0.5) * self.h
        self.volumes = np.full(n_cells, self.h)
        self.centers = _points(self.theta, dim)
        te = self.theta_edges[1:-1]
        idx = np.arange(1, n_cells)
        self.faces = Faces(points=_points(te, dim), normals=_e_theta(te, dim), areas=np.ones(n_cells - 1),
                           left=idx - 1, right=idx)
        self._kernels = {}
        self._uniform_masses = self._sphere_masses()

    def __repr__(self) -> str:
        return f"ZonalGrid({self.n_cells}, dim={self.dim})"

    @property
    def coordinates(self) -> np.ndarray:
        """Cell-centre polar angles (n_cells,), radians: what ``Density.from_function`` passes to f."""
        return self.theta

    # -- the uniform measure ---------------------------------------------------------------
    def log_weight(self, theta) -> np.ndarray:
        r"""Log of the polar-angle density of the uniform measure on :math:`\mathbb S^{d-1}`.

        .. math::

            \log p_\sigma(\vartheta) = (d-2)\log\sin\vartheta - \log B\big(\tfrac{d-1}2, \tfrac12\big)

        (-inf at the poles). A density g w.r.t. the uniform probability has
        :math:`p = \exp(\log g + \log p_\sigma)`, computed so without overflow.

        Parameters
        ----------
        theta : array_like
            Polar angles in [0, pi].

        Returns
        -------
        ndarray, shape of theta
        """
        theta = np.asarray(theta, dtype=float)
        with np.errstate(divide="ignore"):
            return (self.dim - 2) * np.log(np.sin(theta)) - betaln(0.5 * (self.dim - 1), 0.5)

    def _sphere_masses(self) -> np.ndarray:
        """Exact uniform-measure mass of each cell (n_cells,), summing to 1 (mirror symmetric)."""
        e = self.theta_edges
        half = 0.5 * betainc(0.5 * (self.dim - 1), 0.5, np.sin(np.minimum(e, np.pi - e)) ** 2)
        cdf = np.where(e <= 0.5 * np.pi, half, 1.0 - half)  # P(angle <= e)
        m = np.diff(cdf)
        n = self.n_cells
        m = np.where(np.arange(n) < n // 2, m, m[::-1])  # pole cells from the tail, not from 1 - x
        return m / m.sum()

    def uniform_values(self) -> np.ndarray:
        """Cell averages (n_cells,) of the uniform measure's angle density: ``Density.uniform``."""
        return self._uniform_masses / self.h

    # -- geometry ---------------------------------------------------------------------------
    def reconstruct(self, rho):
        r"""Limited second-order values ``(left side, right side)`` of p at the faces.

        MC-limited slopes (:func:`~transformer_pde.meanfield.grids.mc_slopes`), first order in
        the two pole cells (p vanishes there like :math:`\vartheta^{d-2}`).

        Parameters
        ----------
        rho : array_like, shape (n_cells,)
            Cell values.

        Returns
        -------
        left, right : ndarray, shape (n_cells - 1,)
            Values on the side of cell i - 1 and of cell i of each face i = 1..n_cells-1.
        """
        rho = np.asarray(rho).ravel()
        d = np.diff(rho)
        slope = np.zeros_like(rho)
        slope[1:-1] = mc_slopes(d[:-1], d[1:])
        return (rho + 0.5 * slope)[:-1], (rho - 0.5 * slope)[1:]

    def sample_cells(self, cells, rng):
        r"""Points of :math:`\mathbb S^{d-1}`: angle uniform in each given cell, direction uniform in e-perp.

        Parameters
        ----------
        cells : array_like of int, shape (k,)
            Cell indices.
        rng : numpy.random.Generator
            Source of the draws.

        Returns
        -------
        ndarray, shape (k, d)
            One point per cell.
        """
        from ..initial import uniform_tokens

        cells = np.asarray(cells, dtype=np.int64)
        theta = self.theta_edges[cells] + self.h * rng.random(len(cells))
        x = np.empty((len(cells), self.dim))
        x[:, :-1] = np.sin(theta)[:, None] * uniform_tokens(len(cells), self.dim - 1, rng)
        x[:, -1] = np.cos(theta)
        return x

    def polar_angle(self, x) -> np.ndarray:
        """Polar angle (N,) in [0, pi] of each nonzero point x (N, d) against the axis e_d."""
        x = _v.as_tokens(x, "x", d=self.dim)
        return np.arctan2(np.linalg.norm(x[:, :-1], axis=1), x[:, -1])

    def cell_of(self, x):
        """Index of the cell containing each point's polar angle.

        Parameters
        ----------
        x : array_like, shape (N, d)
            Nonzero points (only their direction matters).

        Returns
        -------
        ndarray of int, shape (N,)
            Cell indices (never -1).
        """
        return np.minimum((self.polar_angle(x) / self.h).astype(np.int64), self.n_cells - 1)

    def moments_of(self, masses) -> tuple[np.ndarray, np.ndarray]:
        r"""Mean (d,) and covariance (d, d) of :math:`\mu = \sum_j a_j\sigma_j` (``Density.moments``).

        By symmetry the mean is :math:`\mathbb E[\cos\vartheta]\,e_d` and the second moment
        :math:`\mathbb E[\sin^2\vartheta]/(d-1)` on :math:`e^\perp`, :math:`\mathbb E[\cos^2\vartheta]` on e.
        """
        a = np.asarray(masses, dtype=float)
        c = np.cos(self.theta)
        mean = np.zeros(self.dim)
        mean[-1] = a @ c
        second = np.full(self.dim, (a @ (1.0 - c * c)) / (self.dim - 1))
        second[-1] = a @ (c * c)
        return mean, np.diag(second) - np.outer(mean, mean)

    # -- the model -----------------------------------------------------------------------------
    def check_model(self, dyn) -> None:
        """Raise ValueError unless every head of ``dyn`` is rotation-invariant, unmasked and noiseless."""
        from .field import _heads

        if dyn.kappa is not None:
            raise ValueError(f"{self!r} has no diffusion term: got a noisy model (kappa={dyn.kappa})")
        for head in _heads(dyn.attention):
            if getattr(head, "causal", False) or rotation_invariant(head, self.dim) is None:
                raise ValueError(
                    f"a ZonalGrid needs rotation-invariant heads (Q, K, V multiples of the identity, "
                    f"no mask, not Sinkhorn), got {head!r}")

    def zonal_kernels(self, ri: RotationInvariant):
        """The shifted kernels ``(K, K T, L, T)`` (faces x cells) of the head ``ri``, cached."""
        if ri not in self._kernels:
            L, T = zonal_kernels(ri, self.dim, self.theta_edges[1:-1], self.theta)
            shift = abs(ri.b) if ri.kind != "sigmoid" else 0.0  # b c <= |b|: K <= 1
            k = np.exp(L - shift)
            tables = (k, k * T, L, T, shift)
            self._kernels[ri] = tables + (self.parallel_velocity(ri, self._uniform_masses, tables),)
        return self._kernels[ri]

    def parallel_velocity(self, ri: RotationInvariant, a: np.ndarray, tables=None) -> np.ndarray:
        r"""The field of :math:`\mu = \sum_j a_j\sigma_j` at the faces (n_cells - 1,), no residual subtracted.

        The exact normal velocity :math:`\langle X[\mu](x_i), e_\vartheta\rangle` of the
        parallels' measure (class docstring), from the cell masses ``a`` (n_cells,).
        """
        if tables is None:
            tables = self.zonal_kernels(ri)
        k, kt, L, T, shift = tables[:5]
        num = ri.v * (kt @ a)
        if ri.kind != "softmax":
            with np.errstate(over="ignore"):
                return num * np.exp(shift)
        z = k @ a
        bad = ~(z >= _Z_TINY)
        with np.errstate(divide="ignore", invalid="ignore"):
            u = num / z
        if bad.any():  # log-sum-exp over the cells with mass: exact where Z underflows
            pos = a > 0.0
            la = L[bad][:, pos] + np.log(a[pos])
            wts = np.exp(la - la.max(axis=1, keepdims=True))
            u[bad] = ri.v * np.sum(wts * T[bad][:, pos], axis=1) / wts.sum(axis=1)
        return u

    def fast_face_velocity(self, ri: RotationInvariant, a: np.ndarray):
        """Face velocities (n_cells - 1,) from the cell masses a (class docstring); ``(u, None)``."""
        tables = self.zonal_kernels(ri)
        u = self.parallel_velocity(ri, a, tables)
        residual = tables[5]
        return u - residual * (1.0 if ri.kind == "softmax" else a.sum()), None
