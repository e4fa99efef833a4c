r"""Mean-field convergence: how fast n tokens approach the Transformer PDE.

The empirical measure :math:`\mu^n_t = \frac1n\sum_i\delta_{x_i(t)}` of tokens drawn
i.i.d. from :math:`\mu_0` solves the PDE exactly, so its distance to the PDE solution
:math:`\mu_t` is the initial sampling error propagated by a stable flow (docs/math.md §5.3):

.. math::

    W_p(\mu^n_t, \mu_t) \le e^{Lt}\,W_p(\mu^n_0, \mu_0), \qquad
    \mathbb E\,W_1(\mu^n_0, \mu_0) \asymp n^{-1/2}\ \text{on the circle (1-D support)}.

:func:`meanfield_convergence` samples tokens from a grid density for several n and
seeds, runs the particles and the grid PDE from the same model, measures
:math:`W_p(\mu^n_t, \mu_t)` with :func:`transformer_pde.wasserstein.to_density`, and fits
the rate: the slope of :math:`\log W` against :math:`\log n`, with a confidence interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from . import _progress
from . import _validation as _v
from ._spec import Result
from .dynamics import TokenDynamics
from .integrate import simulate
from .meanfield import Density, solve_meanfield

__all__ = ["ConvergenceStudy", "RateFit", "meanfield_convergence"]


@dataclass(frozen=True)
class RateFit:
    """Least-squares fit of log W = c + slope * log n over all seeds.

    ``low`` and ``high`` bound the slope at the confidence level ``level`` (Student t
    with the residual spread of the fit).
    """

    slope: float
    low: float
    high: float
    intercept: float
    level: float

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the confidence interval."""
        return self.low <= value <= self.high


@dataclass(eq=False)
class ConvergenceStudy(Result):
    r"""Distances between particle runs and a reference solution.

    Attributes
    ----------
    n : ndarray of int, shape (k,)
        Token counts.
    t : ndarray, shape (m,)
        Times.
    distance : ndarray, shape (k, s, m)
        :math:`W_p(\mu^n_t, \mu_t)` for each n, seed and time.
    seeds : ndarray of int, shape (s,)
        The seeds.
    p : float
        The order of the Wasserstein distance.
    expected_slope : float
        The slope theory predicts: -1/2 (supports of dimension 1; dimension 2, the
        sphere and R^2, adds a log n factor, so fitted slopes there need a wider band).
    info : dict
        What the reference and the particle runs were (grid, method, steps, wall times).
    """

    n: np.ndarray
    t: np.ndarray
    distance: np.ndarray
    seeds: np.ndarray
    p: float
    expected_slope: float
    info: dict = field(default_factory=dict, repr=False)

    def fit(self, k: int, level: float = 0.95) -> RateFit:
        """The rate at time ``t[k]``: slope of log W vs log n over all (n, seed) pairs.

        ``k`` is an index of ``t`` (negative from the end); ``level`` lies in (0, 1). With
        only two (n, seed) pairs the fit has no residual degree of freedom and the
        interval is ``(-inf, inf)`` (the slope is exact, its uncertainty unknown). Needs
        two different n and every distance positive (log W).
        """
        nt = len(self.t)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an integer index of the study's times t (0..{nt - 1}), "
                            f"got {k!r} of type {type(k).__name__}")
        if not -nt <= k < nt:
            raise ValueError(f"k must be an index of the {nt} times t (-{nt}..{nt - 1}), got {k}")
        level = _v.as_real(level, "level")
        if not 0.0 < level < 1.0:
            raise ValueError(f"level (a confidence level) must lie in (0, 1), got {level}")
        if len(np.unique(self.n)) < 2:
            raise ValueError(f"a rate needs at least two token counts n, got n = {list(self.n)}")
        dist = self.distance[:, :, k]
        if not np.all(dist > 0.0) or not np.all(np.isfinite(dist)):
            i, s = np.argwhere(~(dist > 0.0) | ~np.isfinite(dist))[0]
            raise ValueError(f"the distance at n={self.n[i]}, seed index {s}, t={self.t[k]:g} is "
                             f"{dist[i, s]}: log W needs positive finite distances")
        logn = np.repeat(np.log(self.n), self.distance.shape[1])
        logw = np.log(dist).ravel()
        res = stats.linregress(logn, logw)
        if len(logn) <= 2:
            return RateFit(res.slope, -np.inf, np.inf, res.intercept, level)
        half = stats.t.ppf(0.5 + level / 2.0, len(logn) - 2) * res.stderr
        return RateFit(res.slope, res.slope - half, res.slope + half, res.intercept, level)

    def plot(self, ax=None, **kwargs):
        """Draw the study (:func:`transformer_pde.plotting.plot_convergence`); returns the Axes."""
        from . import plotting  # lazily: matplotlib only when a figure is made

        return plotting.plot_convergence(self, ax=ax, **kwargs)

    def table(self) -> str:
        """A plain-text table: median W over seeds for each n and t, then the fitted slopes."""
        head = "n".rjust(8) + "".join(f"  W_{self.p:g}(t={t:g})".rjust(16) for t in self.t)
        rows = [head]
        for i, n in enumerate(self.n):
            rows.append(f"{n:8d}" + "".join(f"{np.median(self.distance[i, :, k]):16.4e}"
                                               for k in range(len(self.t))))
        for k, t in enumerate(self.t):
            f = self.fit(k)
            rows.append(f"t={t:g}: slope {f.slope:+.3f} [{f.low:+.3f}, {f.high:+.3f}] "
                        f"({f.level:.0%} CI), theory {self.expected_slope:+.2f}")
        return "\n".join(rows)


def meanfield_convergence(dyn: TokenDynamics, rho0: Density, n_values, times, *, seeds=(0, 1, 2),
                          p: float | Sequence[float] = 2.0, method: str = "rk4",
                          dt: float | None = None, field: str = "auto", cfl: float = 0.45,
                          progress: bool | None = None
                          ) -> ConvergenceStudy | tuple[ConvergenceStudy, ...]:
    r"""Measure :math:`W_p(\mu^n_t, \mu_t)` between particles and the grid PDE, for several n.

    For each n and seed, n tokens are drawn from ``rho0`` (:meth:`Density.sample` with
    ``np.random.default_rng(seed)``), moved by :func:`~transformer_pde.simulate`, and
    compared at each time with the solution of
    :func:`~transformer_pde.solve_meanfield` from ``rho0`` (computed once):

    .. math::

        D_{n,s}(t) = W_p\big(\mu^{n,s}_t,\ \mu_t\big), \qquad
        \log D \approx c + \text{slope}\cdot\log n .

    Parameters
    ----------
    dyn : TokenDynamics
        The model of both runs.
    rho0 : Density
        Initial density (its grid is the reference grid); must be fine enough that the
        grid error stays below the smallest distance measured.
    n_values : sequence of int
        Token counts (at least two).
    times : sequence of float
        Increasing times > 0 at which to compare.
    seeds : sequence of int
        One particle run per seed and n.
    p : float or sequence of float
        Order of the Wasserstein distance (>= 1); with several orders the same runs are
        measured with each and one study per order is returned.
    method, dt
        Stepper and step of the particle runs (:func:`~transformer_pde.simulate`).
    field, cfl
        Field algorithm and CFL number of the grid run (:func:`~transformer_pde.solve_meanfield`).
    progress : bool or None
        A tqdm bar on stderr counting the particle runs (n, seed): None (default) shows
        one when stderr is a terminal and the study lasts more than 2 s; True always,
        False never. The runs inside show no bars of their own.

    Returns
    -------
    ConvergenceStudy or tuple of ConvergenceStudy
        Distances of shape (len(n_values), len(seeds), len(times)), with ``fit(k)``; a
        tuple (one per order) when ``p`` is a sequence.
    """
    from . import wasserstein  # only module importing POT

    if not isinstance(rho0, Density):
        raise TypeError(f"rho0 must be a Density, got {type(rho0).__name__}")
    n_values = np.array([_v.as_positive_int(n, "n_values[i]") for n in n_values])
    if len(n_values) < 2:
        raise ValueError(f"n_values needs at least two token counts to fit a rate, got {list(n_values)}")
    seeds = np.array([int(s) for s in seeds])
    if len(seeds) < 1:
        raise ValueError("seeds must contain at least one seed")
    times = _v.as_real_array(times, "times")
    if times.ndim != 1 or times.size == 0 or np.any(times <= 0) or np.any(np.diff(times) <= 0):
        raise ValueError(f"times must be increasing and > 0, got {times}")
    orders = [_v.as_positive(q, "p") for q in (p if isinstance(p, Sequence) else [p])]
    if not orders or min(orders) < 1.0:
        raise ValueError(f"p must be >= 1, got {p}")

    bar = _progress.counter(len(n_values) * len(seeds) + 1, "meanfield_convergence",
                            _progress.bar_delay(progress))
    t_eval = np.concatenate([[0.0], times])
    distance = np.empty((len(orders), len(n_values), len(seeds), len(times)))
    steps = 0
    try:
        with _progress.quiet():
            sol = solve_meanfield(dyn, rho0, (0.0, times[-1]), t_eval=t_eval, cfl=cfl, field=field)
            if bar is not None:
                bar.set_postfix_str("PDE done")
                bar.update(1)
            for i, n in enumerate(n_values):
                for j, seed in enumerate(seeds):
                    if bar is not None:
                        bar.set_postfix_str(f"n={n}, seed={seed}")
                    x0 = rho0.sample(int(n), np.random.default_rng(int(seed)))
                    traj = simulate(dyn, x0, (0.0, times[-1]), t_eval=t_eval, method=method, dt=dt)
                    steps += traj.info.n_steps
                    for k in range(len(times)):
                        for o, q in enumerate(orders):
                            distance[o, i, j, k] = wasserstein.to_density(traj.x[k + 1], sol.at(k + 1), p=q)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    info = {"grid": repr(rho0.grid), "pde_steps": sol.info.n_steps,
            "pde_mass_drift": sol.info.mass_drift, "particle_steps": steps, "method": method}
    # Fournier-Guillin: n^{-1/2} for supports of dimension 1, n^{-1/2} log n for dimension 2
    # (the sphere, R^2): every grid here has a support of dimension <= 2
    studies = tuple(ConvergenceStudy(n=n_values, t=times, distance=distance[o], seeds=seeds, p=q,
                                     expected_slope=-0.5, info=info) for o, q in enumerate(orders))
    return studies if isinstance(p, Sequence) else studies[0]
