r"""The Transformer PDE on a grid: conservative finite volumes, SSP Runge-Kutta in time.

.. math::

    \partial_t\rho + \operatorname{div}\big(\rho\,X[\rho]\big) = \kappa^{-1}\Delta\rho

(MATH.md 2.2, 3.1; the diffusion term is the noisy model of MATH.md 4.7, off by
default). In space: the upwind flux of MC-limited second-order face values
(:mod:`~transformer_pde.meanfield.grids`) times the face velocity
(:mod:`~transformer_pde.meanfield.field`), plus a two-point diffusion flux; each face
flux leaves one cell and enters the other, so the total mass is conserved to round-off
(Cartesian outflow walls excepted). In time: the three-stage SSP Runge-Kutta method of
Shu and Osher (a convex combination of forward-Euler steps), with

.. math::

    \Delta t = \text{cfl}\cdot\min_c \frac{|c|}{\sum_{f \ni c} |f|\,(u_f \cdot n_{f,c})^+
    + \kappa^{-1}\sum_{f\ni c}|f|/\delta_f}

recomputed each step, and further :math:`\Delta t \le \text{cfl}/\lambda` with
:math:`\lambda` the rate at which the face velocities change,
:math:`\max_f|u_f^{n} - u_f^{n-1}| / (\Delta t_{n-1}\max_f|u_f^{n-1}|)`, measured over the
previous step (the model's a-priori bound,
:func:`~transformer_pde.meanfield.field.rate_bound`, for the first step and as a cap;
the step grows at most 2x per step): near a uniform state the velocity is tiny and the
CFL bound alone would step over the growth of perturbations, whose rate this is.
Each forward-Euler stage of an upwind MC-limited scheme keeps the density nonnegative
while :math:`\Delta t` times its own outflow rate is at most 1/2 (the face values lie
between neighbouring cell values); the step is redone with a smaller :math:`\Delta t`
when a later stage's rate breaks that bound, so the SSP combination stays nonnegative.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import _validation as _v
from ..dynamics import TokenDynamics
from ..integrate import _check_times, time_bar
from .density import Density
from .field import METHODS, check_model, face_velocity, rate_bound
from .grids import CartesianGrid, Grid

__all__ = ["solve_meanfield", "DensityTrajectory", "MeanFieldInfo", "MassLossWarning"]


#: each forward-Euler stage keeps the density nonnegative while dt * rate <= 1/2
_CFL_MAX = 0.5


class MassLossWarning(UserWarning):
    """Mass has left a Cartesian box through its outflow walls."""


@dataclass
class MeanFieldInfo:
    """What a mean-field run did."""

    n_steps: int = 0
    n_rejected: int = 0
    dt_min: float = np.inf
    dt_max: float = 0.0
    mass_drift: float = 0.0
    min_density: float = np.inf
    wall_time: float = 0.0
    method: str = "auto"


@dataclass
class DensityTrajectory:
    """Densities at the saved times.

    Attributes
    ----------
    t : ndarray, shape (nt,)
    density : ndarray, shape (nt, *grid.shape)
    grid : Grid
    dynamics : TokenDynamics
    info : MeanFieldInfo
        Steps, step-size range, the largest relative mass drift, the smallest density
        value met, and the wall time.
    """

    t: np.ndarray
    density: np.ndarray
    grid: Grid
    dynamics: TokenDynamics
    info: MeanFieldInfo = field(repr=False)

    def at(self, k: int) -> Density:
        """The k-th saved density as a :class:`Density`."""
        return Density(self.grid, self.density[k])


class _Operator:
    """d rho / dt on a grid, with the CFL bound of its last evaluation."""

    def __init__(self, dyn, grid, method, kappa):
        self.dyn, self.grid, self.method = dyn, grid, method
        faces = grid.faces
        self.left, self.right = faces.left, faces.right
        self.interior = self.right >= 0
        self.areas = faces.areas
        vol = np.asarray(grid.volumes).ravel()
        self.vol = vol
        self.n = len(vol)
        self.diff = None
        if kappa is not None:
            li, ri = self.left[self.interior], self.right[self.interior]
            centers = np.asarray(grid.centers).reshape(-1, grid.dim)
            dist = _distance(grid, centers[li], centers[ri])
            self.diff = (li, ri, self.areas[self.interior] / (kappa * dist))

    def __call__(self, rho_flat):
        rho = rho_flat.reshape(self.grid.shape)
        u = face_velocity(self.dyn, self.grid, rho, self.method)
        self.u = u
        lo, hi = self.grid.reconstruct(rho)
        flux = self.areas * (np.maximum(u, 0.0) * lo + np.minimum(u, 0.0) * hi)
        outflow = np.bincount(self.left, weights=self.areas * np.maximum(u, 0.0), minlength=self.n)
        inner = self.interior
        outflow += np.bincount(self.right[inner], weights=self.areas[inner] * np.maximum(-u[inner], 0.0),
                               minlength=self.n)
        if self.diff is not None:
            li, ri, coef = self.diff
            flux_d = coef * (rho_flat[li] - rho_flat[ri])
            change = -np.bincount(li, weights=flux_d, minlength=self.n)
            change += np.bincount(ri, weights=flux_d, minlength=self.n)
            outflow += np.bincount(li, weights=coef, minlength=self.n)
            outflow += np.bincount(ri, weights=coef, minlength=self.n)
        else:
            change = np.zeros(self.n)
        change -= np.bincount(self.left, weights=flux, minlength=self.n)
        change += np.bincount(self.right[inner], weights=flux[inner], minlength=self.n)
        self.rate = np.max(outflow / self.vol)
        return change / self.vol


def _distance(grid, a, b):
    if grid.geometry == "euclidean":
        return np.linalg.norm(a - b, axis=1)
    # geodesic angle, accurate for close points (arccos of the dot product is not)
    return 2.0 * np.arcsin(np.minimum(1.0, 0.5 * np.linalg.norm(a - b, axis=1)))


def solve_meanfield(dyn: TokenDynamics, rho0: Density, t_span, *, t_eval=None, cfl: float = 0.45,
                    method: str = "auto", kappa: float | None = None, progress: bool = False,
                    max_steps: int = 10_000_000) -> DensityTrajectory:
    r"""Solve the Transformer PDE for the model ``dyn`` from the density ``rho0``.

    .. math::

        \partial_t\rho + \operatorname{div}(\rho\,X[\rho]) = \kappa^{-1}\Delta\rho,
        \qquad \rho(t_0) = \rho_0,

    with X the mean-field velocity of the same :class:`~transformer_pde.TokenDynamics`
    that :func:`~transformer_pde.simulate` takes (module docstring for the scheme).

    Parameters
    ----------
    dyn : TokenDynamics
        Post-LN attention on the sphere for circle and sphere grids, Euclidean attention
        for Cartesian grids, masked attention for a CausalCircleGrid.
    rho0 : Density
        Initial density (its grid is the grid of the run).
    t_span : (float, float)
        ``t0 < t1``.
    t_eval : array_like, shape (nt,), optional
        Increasing saved times in ``[t0, t1]`` (101 by default); steps land on them.
    cfl : float
        CFL number in (0, 1/2]: above 1/2 positivity is not guaranteed. The default 0.45
        leaves room for the outflow rate to grow between Runge-Kutta stages; at 1/2 every
        such growth redoes the step (measured at beta = 9, M = 256: 200 redone steps in 499,
        against 1 in 545 at 0.45, for less work in all).
    method : {"auto", "quadrature", "fast"}
        How the field is computed (:func:`~transformer_pde.meanfield.field.face_velocity`).
    kappa : float, optional
        Noise level: adds the diffusion :math:`\kappa^{-1}\Delta\rho` (None: no noise).
    progress : bool
        Show a tqdm progress bar.
    max_steps : int
        Stop with an error after this many steps.

    Returns
    -------
    DensityTrajectory
        ``t`` (nt,), ``density`` (nt, *grid.shape), ``grid`` and ``info``.

    Raises
    ------
    FloatingPointError
        If the density turns non-finite or negative; the message gives the time and cell.

    Notes
    -----
    Clusters that have collapsed to one or two cells move only when their drift exceeds
    their own contraction speed at the cell faces (about h/2 for a cell of width h). The
    slow merges of metastable clusters (drift :math:`\sim e^{-\beta(1-\cos\varphi)}`
    on the circle) are therefore delayed or frozen on a coarse grid: measured at
    :math:`\beta = 4`, a merge that particles complete at t = 54 happens at t = 85 with
    1024 cells and not by t = 100 with 256 (``transformer_pde.validation.metastability``). Compare
    merge times with particles, or refine until they agree.
    """
    if not isinstance(rho0, Density):
        raise TypeError(f"rho0 must be a Density, got {type(rho0).__name__}")
    grid = rho0.grid
    check_model(dyn, grid)
    cfl = _v.as_positive(cfl, "cfl")
    if cfl > 0.5:
        raise ValueError(f"cfl must be in (0, 0.5] (positivity of the MUSCL scheme), got {cfl}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if kappa is not None:
        kappa = _v.as_positive(kappa, "kappa")
    max_steps = _v.as_positive_int(max_steps, "max_steps")
    t0, t1, t_eval = _check_times(t_span, t_eval)

    op = _Operator(dyn, grid, method, kappa)
    rate_model = rate_bound(dyn, grid)
    lam = rate_model  # until a step has measured how fast the field changes
    u_prev = dt_prev = dt_free = None
    info = MeanFieldInfo(method=method)
    out = np.empty((len(t_eval),) + grid.shape)
    rho = rho0.values.ravel().copy()
    mass0 = float(rho @ op.vol)
    info.min_density = float(rho.min())
    k = int(np.searchsorted(t_eval, t0, side="right"))
    out[:k] = rho0.values
    t = t0
    bar = time_bar(t1 - t0, "solve_meanfield") if progress else None
    start = time.perf_counter()
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for target in t_eval[k:]:
                while t < target:
                    if info.n_steps >= max_steps:
                        raise RuntimeError(
                            f"solve_meanfield: more than max_steps={max_steps} steps at t={t:.9g}")
                    k1 = op(rho)
                    rates = [op.rate]
                    if not np.isfinite(op.rate):
                        _fail(rho + k1, t, None, grid, "the face velocity is not finite")
                    if u_prev is not None:
                        size = float(np.max(np.abs(u_prev)))
                        change = float(np.max(np.abs(op.u - u_prev))) / dt_prev
                        lam = min(change / size, rate_model) if size > 0.0 else 0.0
                    u_now = op.u
                    # grow at most 2x a step: lam lags one step behind the field
                    limit = np.inf if dt_free is None else 2.0 * dt_free
                    dt_free = min(cfl / max(op.rate, lam), limit)
                    dt = min(dt_free, target - t)
                    while True:  # every stage must satisfy the positivity bound, not only the first
                        rho1 = rho + dt * k1
                        k2 = op(rho1)
                        rates.append(op.rate)
                        rho2 = 0.75 * rho + 0.25 * (rho1 + dt * k2)
                        k3 = op(rho2)
                        rates.append(op.rate)
                        if dt * max(rates) <= _CFL_MAX or not np.all(np.isfinite(rates)):
                            break
                        dt = cfl / max(rates)
                        info.n_rejected += 1
                        del rates[1:]
                    new = rho / 3.0 + 2.0 / 3.0 * (rho2 + dt * k3)
                    _check(new, t, dt, grid)
                    rho, u_prev, dt_prev = new, u_now, dt
                    t = target if dt >= target - t else t + dt
                    info.n_steps += 1
                    info.dt_min, info.dt_max = min(info.dt_min, dt), max(info.dt_max, dt)
                    info.min_density = min(info.min_density, float(rho.min()))
                    info.mass_drift = max(info.mass_drift, abs(float(rho @ op.vol) - mass0) / mass0)
                    if bar is not None:
                        bar.update(dt)
                out[k] = rho.reshape(grid.shape)
                k += 1
    finally:
        if bar is not None:
            bar.close()
    info.wall_time = time.perf_counter() - start
    if isinstance(grid, CartesianGrid) and grid.boundary == "outflow" and info.mass_drift > 1e-10:
        warnings.warn(
            f"solve_meanfield: {info.mass_drift:.3g} of the mass left the box {list(grid.bounds)} "
            "through its outflow walls; enlarge the box", MassLossWarning, stacklevel=2)
    return DensityTrajectory(t=t_eval.copy(), density=out, grid=grid, dynamics=dyn, info=info)


def _check(new, t, dt, grid):
    if not np.all(np.isfinite(new)):
        _fail(new, t, dt, grid, "the density became non-finite")
    if new.min() < 0.0:
        _fail(new, t, dt, grid, f"the density became negative ({new.min():.3g})")


def _fail(new, t, dt, grid, what):
    bad = ~np.isfinite(new) | (new < 0.0)
    cell = int(np.argmax(bad)) if bad.any() else 0
    where = np.unravel_index(cell, grid.shape)
    when = f"at t={t:.9g}" if dt is None else f"in the step from t={t:.9g} to t={t + dt:.9g}"
    raise FloatingPointError(
        f"solve_meanfield stopped: {what} {when}, first at cell "
        f"{tuple(int(i) for i in where)} of {grid!r}"
    )
