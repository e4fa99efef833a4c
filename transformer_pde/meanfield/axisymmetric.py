r"""The axisymmetric reduction on the 2-sphere: the high-resolution 1-D reference (docs/math.md §8).

A density that depends on the polar angle only stays so under rotation-invariant models;
:func:`solve_axisymmetric` solves the reduced equation on an :class:`AxisymmetricGrid` of
latitude bands, against which :class:`~transformer_pde.meanfield.sphere.SphereGrid` is
checked.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ive

from .. import _validation as _v
from .field import RotationInvariant, kernel_weights, rotation_invariant
from .grids import Faces, Grid, mc_slopes
from .sphere import _colat_lon, _e_theta, _unit

__all__ = ["AxisymmetricGrid", "solve_axisymmetric"]


# ---------------------------------------------------------------------------------------
# the axisymmetric reduction
# ---------------------------------------------------------------------------------------
class AxisymmetricGrid(Grid):
    r"""Latitude bands of the 2-sphere: the grid of the axisymmetric reduction (docs/math.md §8).

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
        """Limited second-order values ``(left side, right side)`` of rho at the parallels.

        MC-limited slopes (:func:`~transformer_pde.meanfield.grids.mc_slopes`), with the ghost
        cells at the poles mirrored (rho is even about each pole).

        Parameters
        ----------
        rho : array_like, shape (n_theta,)
            Band values.

        Returns
        -------
        left, right : ndarray, shape (n_theta - 1,)
            Values on the side of band i - 1 and of band i of each face i = 1..n_theta-1.
        """
        rho = np.asarray(rho).ravel()
        # rho is even about each pole (smooth on the sphere): mirror ghost cells
        ext = np.concatenate([rho[:1], rho, rho[-1:]])
        d = np.diff(ext)
        slope = mc_slopes(d[:-1], d[1:])
        return (rho + 0.5 * slope)[:-1], (rho - 0.5 * slope)[1:]

    def sample_cells(self, cells, rng):
        """A point of the unit sphere uniform (w.r.t. area) in each given latitude band.

        Parameters
        ----------
        cells : array_like of int, shape (k,)
            Band indices.
        rng : numpy.random.Generator
            Source of the uniform draws.

        Returns
        -------
        ndarray, shape (k, 3)
            One point per band.
        """
        cells = np.asarray(cells, dtype=np.int64)
        z0, z1 = np.cos(self.theta_edges[cells]), np.cos(self.theta_edges[cells + 1])
        z = z1 + (z0 - z1) * rng.random(len(cells))
        phi = 2.0 * np.pi * rng.random(len(cells))
        s = np.sqrt(np.maximum(0.0, 1.0 - z * z))
        return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)

    def cell_of(self, x):
        """Index of the latitude band containing each point, by the point's colatitude.

        Parameters
        ----------
        x : array_like, shape (N, 3)
            Nonzero points (only their direction matters).

        Returns
        -------
        ndarray of int, shape (N,)
            Band indices (never -1).
        """
        x = np.asarray(x, dtype=np.float64)
        theta, _ = _colat_lon(x / np.linalg.norm(x, axis=-1, keepdims=True))
        return np.minimum((theta / self.h).astype(np.int64), self.n_theta - 1)

    def ring_kernels(self, ri: RotationInvariant):
        """The ring kernels ``(K^Z, K^N)``, each (n_theta - 1, n_theta): faces x bands.

        See the class docstring; they are for the weights as
        :func:`~transformer_pde.meanfield.field.kernel_weights` gives them.
        """
        key = (ri.kind == "sigmoid", ri.b, ri.bias if ri.kind == "sigmoid" else 0.0)
        if key not in self._kernels:
            self._kernels[key] = _ring_kernels(ri, self.theta_edges[1:-1], self.theta)
        return self._kernels[key]

    def fast_face_velocity(self, ri: RotationInvariant, a: np.ndarray):
        """Face velocities (n_theta - 1,) from the band masses a (n_theta,) (class docstring).

        Returns ``(u, None)``: this grid has no quadrature path to hand faces over to.
        """
        kz, kn = self.ring_kernels(ri)
        num = ri.v * (kn @ a)
        if ri.kind == "softmax":
            z = kz @ a
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                u = num / z
            # Z underflows far from all mass at large beta: keep |u| <= |v| there
            return np.where(z > 0.0, np.clip(u, -abs(ri.v), abs(ri.v)), 0.0), None
        if ri.kind == "exp":
            with np.errstate(over="ignore"):
                num = num * np.exp(abs(ri.b))
        return num, None


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


def solve_axisymmetric(dyn, f, n_theta: int, t_span, *, t_eval=None, cfl: float = 0.45,
                       method: str = "ssprk3", progress: bool | None = None, max_steps: int = 10_000_000,
                       trackers=None, throw: bool = True):
    r"""High-resolution solution of the axisymmetric reduction of the Transformer PDE on the 2-sphere.

    For rotation-invariant models (every head's Q, K, V multiples of I; not Sinkhorn) a
    density that depends only on the colatitude :math:`\vartheta` (the angle to the z axis)
    stays so, and the PDE becomes a conservative 1-D equation in :math:`\vartheta` with
    area weight :math:`\sin\vartheta` and zero flux at the poles (docs/math.md §8). It is solved
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
    t_span, t_eval, cfl, method, progress, max_steps, trackers, throw
        As in :func:`~transformer_pde.solve_meanfield` (trackers see a :class:`Density`
        on the :class:`AxisymmetricGrid`).

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
    dyn._check_single("the axisymmetric solver")
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
    return solve_meanfield(dyn, rho0, t_span, t_eval=t_eval, cfl=cfl, field="fast", method=method,
                           progress=progress, max_steps=max_steps, trackers=trackers, throw=throw)
