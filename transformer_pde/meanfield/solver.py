r"""The Transformer PDE on a grid: conservative finite volumes, SSP Runge-Kutta in time.

.. math::

    \partial_t\rho + \operatorname{div}\big(\rho\,X[\rho]\big) = \kappa^{-1}\Delta\rho

(docs/math.md §2.2, 3.1; the diffusion term is the noisy model of docs/math.md §4.7, present when the
model has a noise level, ``TokenDynamics(..., kappa=...)``). In space: the upwind flux of MC-limited
second-order face values (:mod:`~transformer_pde.meanfield.grids`) times the face velocity
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

The right-hand side is one compiled pass per evaluation (fused on the circle grids;
docs/math.md §9.13), with the face velocity built once per run; for one softmax head on a
circle grid the Runge-Kutta stage combination and the check of its result join that pass
(:meth:`_FiniteVolume.stage`). Its readable NumPy version,
:meth:`_FiniteVolume.evaluate_reference`, is what the tests compare it with.

The run is one loop of the package's time-stepping engine: the finite-volume operator
(:class:`_FiniteVolume`, which returns the rate of change together with its outflow rate
and face velocities), the SSP-RK3 stepper (:class:`_SSPRK3`) and the CFL controller
(:class:`_CFLController`: the step bounds above and the positivity redo).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import _engine
from .. import _validation as _v
from .._engine import RunFailure, RunInfo, Status, Step
from .._kernels import finite_volume as _fv
from .._spec import Result
from ..dynamics import TokenDynamics
from .density import Density
from .field import (
    FIELDS,
    _CircleFFT,
    _quadrature,
    check_model,
    face_velocity,
    make_face_velocity,
    rate_bound,
)
from .grids import CartesianGrid, CausalCircleGrid, CircleGrid, Grid

__all__ = ["solve_meanfield", "DensityTrajectory", "MeanFieldInfo", "MassLossWarning", "METHODS"]


#: each forward-Euler stage keeps the density nonnegative while dt * rate <= 1/2
_CFL_MAX = 0.5

#: the time steppers of the grid PDE, by name
METHODS = ("ssprk3",)


class MassLossWarning(UserWarning):
    """Mass has left a Cartesian box through its outflow walls."""


@dataclass
class MeanFieldInfo(RunInfo):
    """What a mean-field run did.

    :class:`~transformer_pde.RunInfo` plus the largest relative mass drift, the smallest
    density value met and the field algorithm.
    """

    mass_drift: float = 0.0
    min_density: float = np.inf
    field: str = "auto"


@dataclass(eq=False)
class DensityTrajectory(Result):
    """Densities at the saved times.

    Attributes
    ----------
    t : ndarray, shape (nt,)
    density : ndarray, shape (nt, *grid.shape)
    grid : Grid
    dynamics : TokenDynamics
        The model (with its noise level ``dynamics.kappa``).
    info : MeanFieldInfo
        How the run ended (``status``, ``message``), steps, step-size range, the largest
        relative mass drift, the smallest density value met, and the wall time.
    """

    t: np.ndarray
    density: np.ndarray
    grid: Grid
    dynamics: TokenDynamics
    info: MeanFieldInfo = field(repr=False)

    def at(self, k: int) -> Density:
        """The k-th saved density as a :class:`Density` (k an index of ``t``; negative from the end)."""
        nt = len(self.t)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an integer index of the saved times t (0..{nt - 1}), got "
                            f"{k!r} of type {type(k).__name__}; for a time T use "
                            "at(int(np.argmin(abs(sol.t - T))))")
        if not -nt <= k < nt:
            raise ValueError(f"k must be an index of the {nt} saved times (-{nt}..{nt - 1}), got {k}")
        return Density(self.grid, self.density[k])

    def plot(self, ax=None, **kwargs):
        """Draw the run (:func:`transformer_pde.plotting.plot_density`); returns the Axes."""
        from .. import plotting  # lazily: matplotlib only when a figure is made

        return plotting.plot_density(self, ax=ax, **kwargs)


@dataclass(slots=True)
class _Rate:
    """d rho / dt, the largest outflow rate per cell volume, and the face velocities.

    ``combined``: the Runge-Kutta stage ``ca * x + cb * (rho + h * change)`` when the
    evaluation was asked for one (:meth:`_FiniteVolume.stage`), else None. The ``change`` and
    ``u`` of a stage evaluation may be scratch buffers, valid until the next stage.
    """

    change: np.ndarray
    rate: float
    u: np.ndarray
    combined: np.ndarray | None = None


class _FiniteVolume(_engine.Problem):
    """d rho / dt on a grid (flattened cell values), with its outflow rate.

    :meth:`evaluate` is the compiled right-hand side (the face velocity built once per run by
    :func:`~transformer_pde.meanfield.field.make_face_velocity`, then one pass of
    :mod:`transformer_pde._kernels.finite_volume`: on the circle grids reconstruction,
    fluxes and update fused, elsewhere from the grid's reconstruction);
    :meth:`evaluate_reference` is the same right-hand side in readable NumPy, which the
    tests compare it with.
    """

    who = "solve_meanfield"

    def __init__(self, dyn, grid, field, info: MeanFieldInfo, mass0: float):
        super().__init__(info)
        self.dyn, self.grid, self.field = dyn, grid, field
        #: the model of the current layer of a depth-dependent model (tp.Layers), selected by
        #: start_at; ``dyn`` itself otherwise
        self.layer, self.current = 0, dyn._layer(0)
        self._built: dict = {}
        faces = grid.faces
        self.left, self.right = faces.left, faces.right
        self.interior = self.right >= 0
        self.areas = faces.areas
        self.vol = np.asarray(grid.volumes, dtype=float).ravel()
        self._inv_vol = 1.0 / self.vol
        self.n = len(self.vol)
        self.mass0 = mass0
        self.diff = None
        coef = np.zeros(0)
        if dyn.kappa is not None:
            li, ri = self.left[self.interior], self.right[self.interior]
            centers = np.asarray(grid.centers).reshape(-1, grid.dim)
            dist = _distance(grid, centers[li], centers[ri])
            self.diff = (li, ri, self.areas[self.interior] / (dyn.kappa * dist))
            coef = np.zeros(len(self.areas))
            coef[self.interior] = self.diff[2]
        #: the largest rate at which diffusion empties a cell, sum_f |f| / (kappa delta_f |c|):
        #: every step obeys h * rate <= _CFL_MAX, so a run needs >= T * this / _CFL_MAX steps
        self.diffusion_rate = 0.0
        if self.diff is not None:
            with np.errstate(over="ignore"):
                out = np.bincount(self.diff[0], self.diff[2], self.n) + np.bincount(
                    self.diff[1], self.diff[2], self.n)
                self.diffusion_rate = float(np.max(out * self._inv_vol))
        self._coef = np.ascontiguousarray(coef, dtype=float)
        self._areas = np.ascontiguousarray(self.areas, dtype=float)
        self._left = np.ascontiguousarray(self.left, dtype=np.int64)
        self._right = np.ascontiguousarray(self.right, dtype=np.int64)
        self._rows = _periodic_rows(grid)
        if self._rows is not None:
            m = self._rows[1]
            self._scratch = (np.empty(m), np.empty(m))
        self._checked = None
        #: the state whose masses rho * vol the transform buffer holds (None: none known)
        self._masses_of = None
        self.velocity, self._lane, self.rate_model = self._build(0)

    def _build(self, layer: int):
        """The face velocity, the circle lane and the rate bound of one layer, built once."""
        if layer not in self._built:
            dyn = self.dyn._layer(layer)
            velocity = make_face_velocity(dyn, self.grid, self.field)
            # the circle lane: one softmax head on the FFT path, nothing subtracted; the quotient,
            # its handover test, the finite-volume pass and the Runge-Kutta stage are then one
            # compiled call, on buffers allocated here
            lane = None
            single = getattr(velocity, "single", None)
            fast = getattr(single, "fast", None)
            if self._rows is not None and isinstance(fast, _CircleFFT) and fast.ri.kind == "softmax":
                lane = (single, fast, np.empty(self.n, dtype=bool), fast.masses.reshape(-1),
                        np.empty(self.n), np.empty(self.n))  # head, transforms, bad, masses, u, change
            self._built[layer] = (velocity, lane, rate_bound(dyn, self.grid))
        return self._built[layer]

    def start_at(self, t: float) -> bool:
        """Select the layer of a depth-dependent model for steps starting at t."""
        if self.dyn.layers is None:
            return False
        layer = self.dyn.layers.index(t)
        if layer == self.layer:
            return False
        self.layer, self.current = layer, self.dyn._layer(layer)
        self.velocity, self._lane, self.rate_model = self._build(layer)
        self._masses_of = None  # the next layer's transform buffer holds nothing known
        return True

    def stage(self, rho_flat, t, combine) -> _Rate:
        """The evaluation at (rho, t) with the Runge-Kutta stage ``combine = (ca, x, cb, h)``.

        :attr:`_Rate.combined` is ``ca * x + cb * (rho + h * d rho/dt)``; counted in ``info.n_evals``.
        """
        self.info.n_evals += 1
        return self.evaluate(rho_flat, t, combine)

    def evaluate(self, rho_flat, t, combine=None) -> _Rate:
        if self._lane is not None:
            return self._evaluate_lane(rho_flat, t, combine)
        u = self.velocity(rho_flat)
        change = np.empty(self.n)
        if self._rows is not None:
            slope, flux = self._scratch
            rate = _fv.periodic_rhs(rho_flat.reshape(self._rows), u, self._areas, self.vol, self._coef,
                                    change, slope, flux)
        else:
            lo, hi = self.grid.reconstruct(rho_flat.reshape(self.grid.shape))
            rate = _fv.face_rhs(rho_flat, u, lo, hi, self._areas, self._left, self._right, self.vol,
                                self._coef, change)
        if not math.isfinite(rate):
            raise RunFailure(Status.NONFINITE, f"the face velocity is not finite at t={t:.9g}, "
                             + self._where(rho_flat + change))
        return _Rate(change, rate, u, self._combine(rho_flat, change, combine))

    def _combine(self, rho_flat, change, combine):
        """The stage ``ca * x + cb * (rho + h * change)`` (None without ``combine``).

        Its minimum and mass are kept for :meth:`check`.
        """
        if combine is None:
            return None
        ca, x, cb, h = combine
        out = np.empty(self.n)
        lowest, mass, finite = _fv.ssp_combine_checked(ca, x, cb, rho_flat, h, change, out, self.vol)
        self._checked = (out, lowest, mass, finite)
        return out

    def _evaluate_lane(self, rho_flat, t, combine) -> _Rate:
        """:meth:`evaluate` for one softmax head on a circle grid (the same numbers).

        A stage (``combine`` given) writes d rho/dt and u into scratch buffers; the first
        evaluation of a step gets arrays of its own (the stepper and the controller keep them).
        """
        head, fast, bad, masses, u, change = self._lane
        if combine is None:
            u, change = np.empty(self.n), np.empty(self.n)
            ca, x, cb, h, out = 0.0, rho_flat, 0.0, 0.0, change
        else:
            ca, x, cb, h = combine
            out = np.empty(self.n)
        if rho_flat is not self._masses_of:  # the previous stage left them there
            np.multiply(rho_flat, self.vol, out=masses)
        self._masses_of = rho_flat
        zn = fast.run()
        slope, flux = self._scratch
        rho2 = rho_flat.reshape(self._rows)
        n_bad, rate, lowest, mass, finite = _fv.periodic_softmax_stage(
            zn, fast.source, fast.factor, rho2, self._areas, self.vol, self._inv_vol, self._coef, change,
            slope, flux, u, bad, ca, x, cb, h, out, masses)
        if n_bad:
            u[bad] = _quadrature(head.head, self.grid, masses, bad)
            rate = _fv.periodic_rhs(rho2, u, self._areas, self.vol, self._coef, change, slope, flux)
            if not math.isfinite(rate):
                raise RunFailure(Status.NONFINITE, f"the face velocity is not finite at t={t:.9g}, "
                                 + self._where(rho_flat + change))
            return _Rate(change, rate, u, self._combine(rho_flat, change, combine))
        if not math.isfinite(rate):
            raise RunFailure(Status.NONFINITE, f"the face velocity is not finite at t={t:.9g}, "
                             + self._where(rho_flat + change))
        if combine is None:
            return _Rate(change, rate, u)
        self._checked = (out, lowest, mass, finite)
        self._masses_of = out  # the kernel wrote the masses of the stage
        return _Rate(change, rate, u, out)

    def evaluate_reference(self, rho_flat, t, combine=None) -> _Rate:
        """:meth:`evaluate` in NumPy: face velocity, reconstruction, fluxes, update, outflow rate.

        With ``combine = (ca, x, cb, h)`` also the Runge-Kutta stage, as :meth:`stage`.
        """
        rho = rho_flat.reshape(self.grid.shape)
        u = face_velocity(self.current, self.grid, rho, self.field)
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
        change /= self.vol
        rate = float(np.max(outflow / self.vol))
        if not np.isfinite(rate):
            raise RunFailure(Status.NONFINITE, f"the face velocity is not finite at t={t:.9g}, "
                             + self._where(rho_flat + change))
        if combine is None:
            return _Rate(change, rate, u)
        ca, x, cb, h = combine
        return _Rate(change, rate, u, ca * x + cb * (rho_flat + h * change))

    def check(self, new, t, h, rho) -> None:
        # the last stage's pass measured its output already (stage / _combine)
        if self._checked is not None and self._checked[0] is new:
            _, lowest, mass, finite = self._checked
        else:
            lowest, mass, finite = _fv.min_and_mass(new, self.vol)
            self._checked = (new, lowest, mass, finite)
        if not finite:
            raise RunFailure(Status.NONFINITE, f"the density became non-finite {self._when(t, h)}, "
                             + self._where(new))
        if lowest < 0.0:
            raise RunFailure(Status.NEGATIVE,
                             f"the density became negative ({lowest:.3g}) {self._when(t, h)}, "
                             + self._where(new))

    @staticmethod
    def _when(t, h) -> str:
        return f"in the step from t={t:.9g} to t={t + h:.9g}"

    def _where(self, values) -> str:
        bad = ~np.isfinite(values) | (values < 0.0)
        cell = np.unravel_index(int(np.argmax(bad)) if bad.any() else 0, self.grid.shape)
        return f"first at cell {tuple(int(i) for i in cell)} of {self.grid!r}"

    def accepted(self, rho) -> None:
        info = self.info
        if self._checked is not None and self._checked[0] is rho:
            _, lowest, mass, _ = self._checked
        else:
            lowest, mass, _ = _fv.min_and_mass(rho, self.vol)
        info.min_density = min(info.min_density, float(lowest))
        info.mass_drift = max(info.mass_drift, abs(float(mass) - self.mass0) / self.mass0)

    #: the result a run of this problem makes (what :mod:`transformer_pde.storage` writes)
    kind = "DensityTrajectory"

    def state(self, rho_flat) -> Density:
        self._masses_of = None  # observers see the state itself: nothing kept about it is trusted after
        return Density(self.grid, rho_flat.reshape(self.grid.shape))

    def snapshot(self) -> dict:
        return {"mass0": self.mass0}

    def restore(self, snap: dict) -> None:
        self.mass0 = float(snap["mass0"])

    def snapshot_floats(self, y0) -> int:
        return int(np.size(y0)) + len(self.areas)  # the face velocities of the controller


def _periodic_rows(grid):
    """``(S, M)`` when the faces are those of S periodic rows of M cells, else None.

    Face s M + c lies between cells c - 1 and c of row s (CircleGrid, CausalCircleGrid).
    """
    if not isinstance(grid, (CircleGrid, CausalCircleGrid)):
        return None
    rows, m = (1, grid.n_cells) if isinstance(grid, CircleGrid) else grid.shape
    idx = np.arange(rows * m)
    left = (idx // m) * m + (idx % m - 1) % m
    if not (np.array_equal(grid.faces.left, left) and np.array_equal(grid.faces.right, idx)):
        return None  # pragma: no cover - a grid whose faces are numbered otherwise
    return rows, m


class _SSPRK3(_engine.Stepper):
    r"""The three-stage SSP Runge-Kutta method of Shu and Osher, order 3.

    :math:`\rho^{(1)} = \rho + h L\rho`,
    :math:`\rho^{(2)} = \frac34\rho + \frac14(\rho^{(1)} + hL\rho^{(1)})`,
    :math:`\rho^{n+1} = \frac13\rho + \frac23(\rho^{(2)} + hL\rho^{(2)})`.
    """

    name, order = "ssprk3", 3

    def step(self, problem, t, rho, h, f0: _Rate) -> Step:
        # out = a * rho + b * (stage + h * change): one compiled pass, and on the circle part of
        # the stage's own evaluation (_FiniteVolume.stage)
        rho1 = np.empty_like(rho)
        _fv.ssp_combine(0.0, rho, 1.0, rho, h, f0.change, rho1)
        f1 = problem.stage(rho1, t + h, (0.75, rho, 0.25, h))
        f2 = problem.stage(f1.combined, t + 0.5 * h, (1.0 / 3.0, rho, 2.0 / 3.0, h))
        return Step(f2.combined, stages=(f0, f1, f2))


class _CFLController:
    """The CFL, rate-of-change and positivity step control of the module docstring."""

    def __init__(self, cfl: float, rate_model: float):
        self.cfl, self.rate_model = cfl, rate_model
        self.u_prev = self.dt_prev = self.dt_free = None

    def switched(self, problem) -> None:
        """A new layer: start afresh from its rate bound, as a run of that layer alone would."""
        self.rate_model = problem.rate_model
        self.u_prev = self.dt_prev = self.dt_free = None

    def begin(self, t, target) -> int:
        return 0

    def propose(self, t, rho, f0: _Rate, remaining: float) -> float:
        lam = self.rate_model  # until a step has measured how fast the field changes
        if self.u_prev is not None:
            size, change = _fv.max_abs_and_change(f0.u, self.u_prev)
            change /= self.dt_prev
            lam = min(change / size, self.rate_model) if size > 0.0 else 0.0
        # grow at most 2x a step: lam lags one step behind the field
        limit = np.inf if self.dt_free is None else 2.0 * self.dt_free
        rate = max(f0.rate, lam)  # 0 for a field that vanishes exactly: the density is stationary
        self.dt_free = min(self.cfl / rate, limit) if rate > 0.0 else limit
        return min(self.dt_free, remaining)

    def judge(self, t, rho, h, result: Step):
        # every stage must satisfy the positivity bound, not only the first
        rates = [stage.rate for stage in result.stages]
        fastest = max(rates)
        if h * fastest <= _CFL_MAX or not all(math.isfinite(r) for r in rates):
            return True, h
        return False, self.cfl / fastest

    def accepted(self, h: float, f0: _Rate) -> None:
        self.u_prev, self.dt_prev = f0.u, h

    def snapshot(self) -> dict:
        """The previous face velocities and steps: a resumed run takes the same steps."""
        return {"u_prev": self.u_prev, "dt_prev": self.dt_prev, "dt_free": self.dt_free}

    def restore(self, snap: dict) -> None:
        u = snap["u_prev"]
        self.u_prev = None if u is None else np.asarray(u, dtype=float)
        self.dt_prev = snap["dt_prev"]
        self.dt_free = snap["dt_free"]


def _distance(grid, a, b):
    if grid.geometry == "euclidean":
        return np.linalg.norm(a - b, axis=1)
    # geodesic angle, accurate for close points (arccos of the dot product is not)
    return 2.0 * np.arcsin(np.minimum(1.0, 0.5 * np.linalg.norm(a - b, axis=1)))


def solve_meanfield(dyn: TokenDynamics, rho0: Density, t_span, *, t_eval=None, cfl: float = 0.45,
                    field: str = "auto", method: str = "ssprk3", progress: bool | None = None,
                    max_steps: int = 10_000_000, trackers=None, throw: bool = True,
                    _resume=None) -> DensityTrajectory:
    r"""Solve the Transformer PDE for the model ``dyn`` from the density ``rho0``.

    .. math::

        \partial_t\rho + \operatorname{div}(\rho\,X[\rho]) = \kappa^{-1}\Delta\rho,
        \qquad \rho(t_0) = \rho_0,

    with X the mean-field velocity of the same :class:`~transformer_pde.TokenDynamics`
    that :func:`~transformer_pde.simulate` takes, and :math:`\kappa` its noise level
    (no diffusion term when ``dyn.kappa`` is None); module docstring for the scheme.

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
    field : {"auto", "quadrature", "fast"}
        How the mean-field velocity is computed
        (:func:`~transformer_pde.meanfield.field.face_velocity`): "fast" (FFT on the
        circle, spherical harmonics on the sphere) needs rotation-invariant heads; "auto"
        uses it where it exists and quadrature elsewhere.
    method : {"ssprk3"}
        The time stepper (the strong-stability-preserving Runge-Kutta method of order 3).
    progress : bool or None
        A tqdm progress bar on stderr: None (default) shows one when stderr is a terminal
        and the run lasts more than 2 s; True always, False never.
    max_steps : int
        Stop with an error after this many steps (accepted and redone).
    trackers : sequence of callable, optional
        Observers called as ``tracker(t, density)`` at every saved time, ``density`` a
        :class:`Density`; one returning True stops the run there, and the result then
        ends at that time with ``info.status == "stopped"`` (:mod:`transformer_pde.trackers`).
    throw : bool
        If False, a run that fails (non-finite or negative density, ``max_steps``) returns
        the densities saved up to the failure, with the failure in ``info.status`` and
        ``info.message``, instead of raising.

    Returns
    -------
    DensityTrajectory
        ``t`` (nt,), ``density`` (nt, *grid.shape), ``grid`` and ``info``.

    Raises
    ------
    FloatingPointError
        If the density turns non-finite or negative; the message gives the time and cell.
    RuntimeError
        If more than ``max_steps`` steps are needed.

    Notes
    -----
    Clusters that have collapsed to one or two cells move only when their drift exceeds
    their own contraction speed at the cell faces (about h/2 for a cell of width h). The
    slow merges of metastable clusters (drift :math:`\sim e^{-\beta(1-\cos\varphi)}`
    on the circle) are therefore delayed or frozen on a coarse grid: measured at
    :math:`\beta = 4`, a merge that particles complete at t = 54 happens at t = 85 with
    1024 cells and not by t = 100 with 256 (``transformer_pde.validation.metastability``).
    Compare merge times with particles, or refine until they agree.

    Examples
    --------
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> grid = tp.CircleGrid(64)
    >>> rho0 = tp.Density.from_function(grid, lambda th: 1 + 0.5 * np.cos(th))
    >>> dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0))
    >>> sol = tp.solve_meanfield(dyn, rho0, (0.0, 1.0), t_eval=[0.0, 1.0])
    >>> sol.density.shape, sol.info.status
    ((2, 64), 'success')
    >>> bool(sol.info.mass_drift < 1e-13 and sol.density.min() >= 0.0)   # mass, positivity
    True
    """
    if not isinstance(rho0, Density):
        raise TypeError(f"rho0 must be a Density, got {type(rho0).__name__}")
    grid = rho0.grid
    check_model(dyn, grid)
    cfl = _v.as_positive(cfl, "cfl")
    if cfl > 0.5:
        raise ValueError(f"cfl must be in (0, 0.5] (positivity of the MUSCL scheme), got {cfl}")
    _v.as_choice(field, "field", FIELDS)
    if isinstance(method, str) and method not in METHODS:
        raise ValueError(f"method (the time stepper) must be one of {METHODS}, got {method!r}; "
                         f"the field algorithm is field= {FIELDS}")
    _v.as_choice(method, "method", METHODS)
    max_steps = _v.as_positive_int(max_steps, "max_steps")
    t0, t1, t_eval = _engine.check_times(t_span, t_eval)
    dyn._check_span(t0, t1)
    trackers = _engine.check_trackers(trackers)

    info = MeanFieldInfo(method=method, field=field)
    info.params = {"t_span": [t0, t1], "method": method, "cfl": cfl, "field": field,
                   "max_steps": max_steps, "throw": bool(throw)}
    rho = rho0.values.ravel().copy()
    problem = _FiniteVolume(dyn, grid, field, info, float(rho @ np.asarray(grid.volumes).ravel()))
    info.min_density = float(rho.min())
    problem.start_at(t0)
    with np.errstate(over="ignore"):
        fewest = (float(t_eval[-1]) - t0) * problem.diffusion_rate / _CFL_MAX
    if fewest > max_steps:
        raise ValueError(
            f"kappa={dyn.kappa:g} gives a diffusion rate 1/kappa * |f|/(delta |c|) of "
            f"{problem.diffusion_rate:.3g} per unit time on {grid!r}: the explicit scheme needs "
            f"at least {fewest:.3g} steps for t_span=({t0:g}, {t1:g}), above max_steps={max_steps}; "
            "use a larger kappa, a coarser grid or a shorter t_span"
        )
    controller = _CFLController(cfl, problem.rate_model)
    stepper, done = _SSPRK3(), 0
    if _resume is not None:  # transformer_pde.resume: continue from saved time k
        done, _, snap = _resume
        _engine.restore(problem, stepper, controller, snap)
        t0, t_eval = float(t_eval[done]), t_eval[done:]
        problem.start_at(t0)
        controller.rate_model = problem.rate_model
    t, out = _engine.run(problem, stepper, controller, rho, t0, t_eval, max_steps=max_steps,
                         breakpoints=dyn.breakpoints, trackers=trackers, throw=throw,
                         progress=_engine.progress_spec("solve_meanfield", progress), done=done)
    if isinstance(grid, CartesianGrid) and grid.boundary == "outflow" and info.mass_drift > 1e-10:
        warnings.warn(
            f"solve_meanfield: {info.mass_drift:.3g} of the mass left the box {list(grid.bounds)} "
            "through its outflow walls; enlarge the box", MassLossWarning, stacklevel=2)
    return DensityTrajectory(t=t, density=out.reshape((len(t),) + grid.shape), grid=grid,
                             dynamics=dyn, info=info)
