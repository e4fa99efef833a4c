r"""Matplotlib figures and movies of the package's results.

This is the only module of the package that imports matplotlib, and the package imports
it lazily: ``import transformer_pde`` never loads matplotlib; ``tp.plot_density`` (any
name of this module's ``__all__``) or a result's ``.plot()`` loads it on first use.
Figures are built with :class:`matplotlib.figure.Figure` directly, without ``pyplot``:
no display, no global state, no backend to choose, and ``ax.figure.savefig(path)``
writes a PNG anywhere (servers, CI).

Every ``plot_*`` function takes a result (:class:`~transformer_pde.Trajectory`,
:class:`~transformer_pde.DensityTrajectory`, :class:`~transformer_pde.GaussianTrajectory`,
:class:`~transformer_pde.convergence.ConvergenceStudy`) or plain arrays, draws into
``ax`` (a new figure when ``ax`` is None) and returns the Axes. Heat maps carry a
colorbar, labels use mathtext, legends go where they cover the least data.

Conventions: angles in radians on :math:`[0, 2\pi)`; arrays of tokens have shape
(nt, n, d) with time first, as :attr:`transformer_pde.Trajectory.x`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from . import clustering
from .clustering import CLUSTER_THRESHOLD, attention_matrix, cluster_count, density_peaks, interaction_energy
from .convergence import ConvergenceStudy
from .gaussian import GaussianTrajectory
from .geometry import Sphere
from .integrate import Trajectory
from .meanfield import CartesianGrid, CausalCircleGrid, CircleGrid, Density, DensityTrajectory, SphereGrid
from .meanfield.axisymmetric import AxisymmetricGrid
from .meanfield.zonal import ZonalGrid

__all__ = [
    "circle_angles",
    "plot_trajectory",
    "plot_circle_tokens",
    "plot_sphere_tokens",
    "plot_token_paths",
    "plot_density",
    "plot_circle_density",
    "plot_causal_density",
    "plot_sphere_density",
    "plot_cluster_count",
    "plot_energy",
    "plot_series",
    "plot_convergence",
    "plot_covariance",
    "plot_phase_diagram",
    "plot_attention_matrix",
    "plot_attention_links",
    "plot_attention_ranks",
    "plot_convex_hulls",
    "plot_covariance_cone",
    "plot_staircase",
    "plot_table",
    "plot_sweep",
    "plot_final_comparison",
    "legend_outside",
    "movie",
    "demo_figure",
]

_PI_TICKS = (np.linspace(0.0, 2.0 * np.pi, 5), ["0", r"$\pi/2$", r"$\pi$", r"$3\pi/2$", r"$2\pi$"])


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
def _axes(ax, *, projection: str | None = None, figsize=(6.0, 4.5)):
    """``ax`` itself, or the axes of a new figure."""
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig.add_subplot(1, 1, 1, projection=projection)
    if projection == "3d" and getattr(ax, "name", "") != "3d":
        raise ValueError("ax must be a 3-D axes (fig.add_subplot(projection='3d')) for tokens on the "
                         f"sphere, got {type(ax).__name__}")
    return ax


def _path(result, x, d: int | None, who: str, system: int = 0):
    """``(t (nt,), x (nt, n, d))`` of a Trajectory (one system of a batch) or of arrays."""
    if isinstance(result, Trajectory):
        t, x = result.t, result.x
        if x.ndim == 4:
            if not 0 <= system < x.shape[1]:
                raise ValueError(f"{who}: system must be in [0, {x.shape[1]}) for a batch of "
                                 f"{x.shape[1]} systems, got {system}")
            x = x[:, system]
    else:
        if x is None:
            raise TypeError(f"{who}: give a Trajectory, or times t (nt,) and tokens x (nt, n, d); "
                            f"got {type(result).__name__} and no x")
        t = result
    t = np.asarray(t, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if t.ndim != 1 or x.ndim != 3 or x.shape[0] != t.shape[0]:
        raise ValueError(f"{who}: t must have shape (nt,) and x shape (nt, n, d), got t {t.shape} "
                         f"and x {x.shape}")
    if d is not None and x.shape[2] != d:
        raise ValueError(f"{who}: x must have shape (nt, n, {d}), got {x.shape}")
    return t, x


def _density_run(result, who: str, grids):
    """``(t (nt,), density (nt, *shape), grid)`` of a DensityTrajectory or Density."""
    if isinstance(result, Density):
        t, density, grid = np.array([0.0]), result.values[None], result.grid
    elif isinstance(result, DensityTrajectory):
        t, density, grid = result.t, result.density, result.grid
    else:
        raise TypeError(f"{who}: result must be a DensityTrajectory or a Density, got "
                        f"{type(result).__name__}")
    if not isinstance(grid, grids):
        names = ", ".join(g.__name__ for g in grids)
        raise ValueError(f"{who}: the density must live on a {names}, got {grid!r}")
    return np.asarray(t, dtype=np.float64), np.asarray(density, dtype=np.float64), grid


def _frame(k: int, nt: int, who: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not -nt <= k < nt:
        raise ValueError(f"{who}: k must be an index into the {nt} saved times, got {k!r}")
    return int(k) % nt


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around increasing centres (midpoints; the ends mirrored)."""
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def _angle_axis(axis) -> None:
    axis.set_ticks(_PI_TICKS[0])
    axis.set_ticklabels(_PI_TICKS[1])


def legend_outside(ax, *, side: str = "right", **kwargs):
    r"""A legend beside the axes (``side="right"``) or below them, never over the data.

    With a constrained-layout figure the axes shrink to make room.

    .. math::

        \text{legend} \cap \text{data area} = \emptyset .

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes with labelled artists.
    side : {"right", "below"}
        Where the legend goes.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.legend` (e.g. ``fontsize``, ``ncol``).

    Returns
    -------
    matplotlib.legend.Legend

    Examples
    --------
    >>> from transformer_pde.plotting import legend_outside
    >>> ax = Figure(layout="constrained").add_subplot(1, 1, 1)
    >>> _ = ax.plot([0, 1], [0, 1], label="a")
    >>> legend_outside(ax).get_bbox_to_anchor() is not None
    True
    """
    kwargs.setdefault("fontsize", "small")
    if side == "right":
        return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)
    if side == "below":
        kwargs.setdefault("ncol", 2)
        return ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), borderaxespad=0.0, **kwargs)
    raise ValueError(f"side must be 'right' or 'below', got {side!r}")


def circle_angles(x) -> np.ndarray:
    r"""Angles of tokens on the circle, in radians on :math:`[0, 2\pi)`.

    .. math::

        \theta_i = \operatorname{atan2}(x_{i,2}, x_{i,1}) \bmod 2\pi .

    Parameters
    ----------
    x : array_like, shape (..., 2)
        Points of the plane (unit vectors for tokens on the circle).

    Returns
    -------
    ndarray, shape (...)
        The angles.

    Examples
    --------
    >>> from transformer_pde.plotting import circle_angles
    >>> circle_angles([[0.0, 1.0], [-1.0, 0.0]]) / np.pi
    array([0.5, 1. ])
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] != 2:
        raise ValueError(f"x must have last dimension 2 (points of the plane), got shape {x.shape}")
    return np.mod(np.arctan2(x[..., 1], x[..., 0]), 2.0 * np.pi)


# ---------------------------------------------------------------------------------------
# tokens
# ---------------------------------------------------------------------------------------
def plot_trajectory(traj: Trajectory, *, ax=None, system: int = 0, **kwargs):
    r"""The natural figure of a particle run, chosen from its geometry.

    Tokens on :math:`\mathbb S^1` (sphere geometry, d = 2): angle against time
    (:func:`plot_circle_tokens`); on :math:`\mathbb S^2`: 3-D paths
    (:func:`plot_sphere_tokens`); in :math:`\mathbb R^d`: paths (:func:`plot_token_paths`).

    .. math::

        \theta_i(t) = \operatorname{atan2}(x_{i,2}(t), x_{i,1}(t)) \quad (\mathbb S^1).

    Parameters
    ----------
    traj : Trajectory
        Tokens x of shape (nt, n, d), or (nt, B, n, d) for a batch.
    ax : matplotlib.axes.Axes, optional
        Where to draw (3-D for the 2-sphere); a new figure when None.
    system : int
        The system of a batch to draw.
    **kwargs
        Passed to the function drawn.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import transformer_pde as tp
    >>> x0 = np.array([[1.0, 0.0], [0.0, 1.0], [-0.6, 0.8]])
    >>> dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0), geometry="sphere")
    >>> traj = tp.simulate(dyn, x0, (0.0, 1.0), t_eval=[0.0, 0.5, 1.0], method="rk4", dt=0.1)
    >>> traj.plot().get_ylabel()
    'angle $\\theta_i(t)$ [rad]'
    """
    if not isinstance(traj, Trajectory):
        raise TypeError(f"traj must be a Trajectory, got {type(traj).__name__}")
    if isinstance(traj.dynamics.geometry, Sphere) and traj.dim == 2:
        return plot_circle_tokens(traj, ax=ax, system=system, **kwargs)
    if isinstance(traj.dynamics.geometry, Sphere) and traj.dim == 3:
        return plot_sphere_tokens(traj, ax=ax, system=system, **kwargs)
    return plot_token_paths(traj, ax=ax, system=system, **kwargs)


def plot_circle_tokens(result, x=None, *, ax=None, system: int = 0, cmap: str = "hsv",
                       linewidth: float = 0.8):
    r"""Draw the angle of every token on the circle against time, one line per token.

    .. math::

        \theta_i(t) = \operatorname{atan2}(x_{i,2}(t), x_{i,1}(t)) \bmod 2\pi .

    Lines are cut where a token crosses the seam :math:`0 \equiv 2\pi` (no vertical
    jumps) and coloured by the token's initial angle with a cyclic colour map, so that
    tokens merging into a cluster show up as lines of several colours joining.

    Parameters
    ----------
    result : Trajectory or array_like, shape (nt,)
        A run on the circle, or its times (then ``x`` holds the tokens).
    x : array_like, shape (nt, n, 2), optional
        Tokens on the circle, when ``result`` is the times.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    system : int
        The system of a batch to draw.
    cmap : str
        A cyclic matplotlib colour map.
    linewidth : float
        Line width.

    Returns
    -------
    matplotlib.axes.Axes
        Its one :class:`~matplotlib.collections.LineCollection` holds the segments
        ``(t_k, theta_k) -> (t_{k+1}, theta_{k+1})``.

    Examples
    --------
    >>> from transformer_pde.plotting import plot_circle_tokens
    >>> x = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # one token, two times
    >>> ax = plot_circle_tokens([0.0, 1.0], x)
    >>> ax.collections[0].get_segments()[0][:, 1] / np.pi
    array([0. , 0.5])
    """
    t, x = _path(result, x, 2, "plot_circle_tokens", system)
    ax = _axes(ax)
    theta = circle_angles(x)  # (nt, n)
    nt, n = theta.shape
    # segment k of token i joins (t_k, theta_ki) and (t_k+1, theta_k+1,i)
    start = np.stack([np.broadcast_to(t[:-1, None], (nt - 1, n)), theta[:-1]], axis=-1)
    stop = np.stack([np.broadcast_to(t[1:, None], (nt - 1, n)), theta[1:]], axis=-1)
    keep = np.abs(theta[1:] - theta[:-1]) < np.pi  # a jump of more than pi is a wrap
    segments = np.stack([start, stop], axis=2)[keep]  # (m, 2, 2)
    colour = np.broadcast_to(theta[0][None, :], (nt - 1, n))[keep] / (2.0 * np.pi)
    lines = LineCollection(segments, cmap=cmap, linewidths=linewidth)
    lines.set_array(colour)
    lines.set_clim(0.0, 1.0)
    ax.add_collection(lines)
    ax.set_xlim(t[0], t[-1])
    ax.set_ylim(0.0, 2.0 * np.pi)
    _angle_axis(ax.yaxis)
    ax.set_xlabel("$t$")
    ax.set_ylabel(r"angle $\theta_i(t)$ [rad]")
    return ax


def _sphere_wireframe(ax) -> None:
    u, v = np.meshgrid(np.linspace(0.0, 2.0 * np.pi, 25), np.linspace(0.0, np.pi, 13))
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v),
                      color="0.85", linewidth=0.4)
    for set_lim in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        set_lim(-1, 1)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xticks([-1, 0, 1])
    ax.set_yticks([-1, 0, 1])
    ax.set_zticks([-1, 0, 1])
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_zlabel("$x_3$")


def plot_sphere_tokens(result, *, ax=None, system: int = 0, paths: bool = True,
                       linewidth: float = 0.6):
    r"""Draw tokens on the 2-sphere in 3-D: initial points, trajectories and final points.

    .. math::

        x_i(t) \in \mathbb S^2 = \{x \in \mathbb R^3 : \|x\| = 1\}.

    Parameters
    ----------
    result : Trajectory or array_like, shape (nt, n, 3)
        A run on the sphere, or its tokens at nt times.
    ax : mpl_toolkits.mplot3d.axes3d.Axes3D, optional
        A 3-D axes (``fig.add_subplot(projection="3d")``); a new figure when None.
    system : int
        The system of a batch to draw.
    paths : bool
        Draw every token's trajectory (one line per token).
    linewidth : float
        Width of the trajectories.

    Returns
    -------
    mpl_toolkits.mplot3d.axes3d.Axes3D
        Axes labelled :math:`x_1, x_2, x_3`; its last two collections are the initial
        and the final points.

    Examples
    --------
    >>> from transformer_pde.plotting import plot_sphere_tokens
    >>> x = np.array([[[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]]])
    >>> plot_sphere_tokens(x).get_zlabel()
    '$x_3$'
    """
    if isinstance(result, Trajectory):
        _, x = _path(result, None, 3, "plot_sphere_tokens", system)
    else:
        x = np.asarray(result, dtype=np.float64)
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"plot_sphere_tokens: x must have shape (nt, n, 3), got {x.shape}")
    ax = _axes(ax, projection="3d", figsize=(5.5, 5.5))
    _sphere_wireframe(ax)
    if paths:
        for i in range(x.shape[1]):
            ax.plot(x[:, i, 0], x[:, i, 1], x[:, i, 2], color="tab:blue", alpha=0.5,
                    linewidth=linewidth)
    ax.scatter(*x[0].T, s=8, color="0.4", depthshade=False, label="$t = 0$")
    ax.scatter(*x[-1].T, s=40, color="tab:red", depthshade=False, label="final")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, 1.02), fontsize="small", frameon=False)
    return ax


def plot_token_paths(result, x=None, *, ax=None, system: int = 0, linewidth: float = 0.8):
    r"""Draw tokens in :math:`\mathbb R^d`: positions against time (d = 1) or paths in a plane.

    .. math::

        t \mapsto x_i(t)\ (d = 1), \qquad t \mapsto (x_{i,1}(t), x_{i,2}(t))\ (d \ge 2).

    For d >= 2 the paths are projected on the first two coordinates; initial points are
    grey, final points red.

    Parameters
    ----------
    result : Trajectory or array_like, shape (nt,)
        A run, or its times (then ``x`` holds the tokens).
    x : array_like, shape (nt, n, d), optional
        Tokens, when ``result`` is the times.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    system : int
        The system of a batch to draw.
    linewidth : float
        Line width.

    Returns
    -------
    matplotlib.axes.Axes
        One line per token.

    Examples
    --------
    >>> from transformer_pde.plotting import plot_token_paths
    >>> x = np.array([[[0.0], [1.0]], [[0.2], [0.8]]])  # two tokens on the line
    >>> len(plot_token_paths([0.0, 1.0], x).lines)
    2
    """
    t, x = _path(result, x, None, "plot_token_paths", system)
    ax = _axes(ax)
    if x.shape[2] == 1:
        for i in range(x.shape[1]):
            ax.plot(t, x[:, i, 0], color="tab:blue", linewidth=linewidth, alpha=0.7)
        ax.set_xlabel("$t$")
        ax.set_ylabel("$x_i(t)$")
        return ax
    for i in range(x.shape[1]):
        ax.plot(x[:, i, 0], x[:, i, 1], color="tab:blue", linewidth=linewidth, alpha=0.5)
    ax.scatter(x[0, :, 0], x[0, :, 1], s=8, color="0.4", label="$t = 0$", zorder=3)
    ax.scatter(x[-1, :, 0], x[-1, :, 1], s=30, color="tab:red", label=f"$t = {t[-1]:g}$", zorder=3)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="best", fontsize="small")
    return ax


# ---------------------------------------------------------------------------------------
# densities
# ---------------------------------------------------------------------------------------
def plot_density(result, *, ax=None, k: int = -1, **kwargs):
    r"""The natural figure of a mean-field run, chosen from its grid.

    A kymograph (density against time, with a colorbar) on a
    :class:`~transformer_pde.CircleGrid`, a :class:`~transformer_pde.CausalCircleGrid`
    (the density of all positions, :math:`\int\rho\,ds`), a 1-D
    :class:`~transformer_pde.CartesianGrid` and an axisymmetric or zonal grid (the polar angle); a map at
    the saved time ``k`` on a :class:`~transformer_pde.SphereGrid` and a 2-D
    :class:`~transformer_pde.CartesianGrid`.

    .. math::

        (t, \theta) \mapsto \rho(t, \theta) \quad\text{(kymograph)}.

    Parameters
    ----------
    result : DensityTrajectory or Density
        The run.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    k : int
        Saved time of a map.
    **kwargs
        Passed to the function drawn.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import transformer_pde as tp
    >>> grid = tp.CircleGrid(16)
    >>> rho = tp.Density.from_function(grid, lambda th: 1.0 + 0.5 * np.cos(th))
    >>> dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0), geometry="sphere")
    >>> sol = tp.solve_meanfield(dyn, rho, (0.0, 0.2), t_eval=[0.0, 0.1, 0.2])
    >>> sol.plot().get_ylabel()
    'angle $\\theta$ [rad]'
    """
    t, density, grid = _density_run(result, "plot_density", (CircleGrid, CausalCircleGrid, SphereGrid,
                                                              CartesianGrid, AxisymmetricGrid, ZonalGrid))
    if isinstance(grid, (CircleGrid, CausalCircleGrid)):
        return plot_circle_density(result, ax=ax, **kwargs)
    if isinstance(grid, SphereGrid):
        return plot_sphere_density(result, ax=ax, k=k, **kwargs)
    ax = _axes(ax)
    if isinstance(grid, AxisymmetricGrid):
        image = ax.pcolormesh(_edges(t), grid.theta_edges, density.T, cmap=kwargs.get("cmap", "magma"),
                              shading="flat")
        ax.figure.colorbar(image, ax=ax, label=r"density $\rho(t, \vartheta)$")
        ax.set_ylim(np.pi, 0.0)
        ax.set_xlabel("$t$")
        ax.set_ylabel(r"colatitude $\vartheta$ [rad]")
        return ax
    if isinstance(grid, ZonalGrid):
        image = ax.pcolormesh(_edges(t), grid.theta_edges, density.T, cmap=kwargs.get("cmap", "magma"),
                              shading="flat")
        ax.figure.colorbar(image, ax=ax, label=r"polar-angle density $p(t, \vartheta)$")
        ax.set_ylim(np.pi, 0.0)
        ax.set_xlabel("$t$")
        ax.set_ylabel(f"polar angle $\\vartheta$ on $S^{{{grid.dim - 1}}}$ [rad]")
        return ax
    edges = [np.linspace(lo, hi, m + 1) for (lo, hi), m in zip(grid.bounds, grid.shape, strict=True)]
    cmap = kwargs.get("cmap", "magma")
    if grid.dim == 1:
        image = ax.pcolormesh(_edges(t), edges[0], density.T, cmap=cmap, shading="flat")
        ax.figure.colorbar(image, ax=ax, label=r"density $\rho(t, x)$")
        ax.set_xlabel("$t$")
        ax.set_ylabel("$x$")
        return ax
    k = _frame(k, len(t), "plot_density")
    image = ax.pcolormesh(edges[0], edges[1], density[k].T, cmap=cmap, shading="flat")
    ax.figure.colorbar(image, ax=ax, label=r"density $\rho(x)$")
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(f"$t = {t[k]:g}$")
    return ax


def plot_circle_density(result, angles=None, density=None, *, ax=None, log: bool = True,
                        position: int | None = None, cmap: str = "magma"):
    r"""Draw a density on the circle against time as an image (angle vertical), with a colorbar.

    On a :class:`~transformer_pde.CausalCircleGrid` the image is the density of all
    positions together, :math:`\bar\rho(t,\theta) = \int_0^1 \rho(t, s, \theta)\,ds`, or
    that of the fibre ``position``.

    .. math::

        (t, \theta) \mapsto \log_{10} \max\big(\rho(t, \theta),\ 10^{-4}\max\rho\big)
        \quad\text{(``log=True``)}.

    Parameters
    ----------
    result : DensityTrajectory or array_like, shape (nt,)
        A run on a CircleGrid or CausalCircleGrid, or its times.
    angles : array_like, shape (M,), optional
        Cell-centre angles (radians) when ``result`` is the times.
    density : array_like, shape (nt, M), optional
        Density values w.r.t. angle when ``result`` is the times.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    log : bool
        Colour by :math:`\log_{10}\rho` (floored at :math:`10^{-4}\max\rho`) so that
        near-empty regions show.
    position : int, optional
        Fibre of a causal grid to draw (None: all positions, the s-integral).
    cmap : str
        Colour map.

    Returns
    -------
    matplotlib.axes.Axes
        Its image holds the drawn values, shape (M, nt); ``ax.images[0].colorbar`` is
        the colorbar.

    Examples
    --------
    >>> from transformer_pde.plotting import plot_circle_density
    >>> ax = plot_circle_density([0.0, 1.0], [1.0, 3.0, 5.0], np.ones((2, 3)), log=False)
    >>> ax.images[0].colorbar is not None
    True
    """
    what = r"\rho"
    if isinstance(result, (DensityTrajectory, Density)):
        t, values, grid = _density_run(result, "plot_circle_density", (CircleGrid, CausalCircleGrid))
        if isinstance(grid, CausalCircleGrid):
            if position is None:
                values = values.sum(axis=1) * grid.ds
                what = r"\int\rho\,ds"
            else:
                if not -grid.n_positions <= position < grid.n_positions:
                    raise ValueError(f"position must be in [0, {grid.n_positions}), got {position}")
                values = values[:, position]
                what = rf"\rho(s={grid.positions[position]:g})"
            angles = grid.circle.angles
        else:
            angles = grid.angles
    else:
        if angles is None or density is None:
            raise TypeError("plot_circle_density: give a DensityTrajectory, or times, angles and density")
        t = np.asarray(result, dtype=np.float64)
        values = np.asarray(density, dtype=np.float64)
        angles = np.asarray(angles, dtype=np.float64)
        if t.ndim != 1 or values.shape != (len(t), len(angles)):
            raise ValueError(f"density must have shape (nt, M) = {(len(t), len(angles))}, got {values.shape}")
    ax = _axes(ax)
    if log:
        floor = 1e-4 * values.max()
        shown = np.log10(np.maximum(values, floor))
        label = rf"$\log_{{10}}\,{what}$"
    else:
        shown, label = values, f"${what}$"
    extent = (t[0], t[-1] if len(t) > 1 else t[0] + 1.0, 0.0, 2.0 * np.pi)
    image = ax.imshow(shown.T, origin="lower", aspect="auto", extent=extent, cmap=cmap,
                      interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, label=label)
    _angle_axis(ax.yaxis)
    ax.set_xlabel("$t$")
    ax.set_ylabel(r"angle $\theta$ [rad]")
    return ax


def plot_causal_density(result, *, k: int = -1, ax=None, cmap: str = "magma"):
    r"""Draw a density of masked attention on :math:`(s, \theta)` at one saved time.

    .. math::

        (\theta, s) \mapsto \rho(t_k, s, \theta), \qquad s \in (0, 1],\ \theta \in [0, 2\pi).

    Parameters
    ----------
    result : DensityTrajectory or Density
        On a :class:`~transformer_pde.CausalCircleGrid`.
    k : int
        The saved time.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    cmap : str
        Colour map.

    Returns
    -------
    matplotlib.axes.Axes
        With an image of shape (S, M) and its colorbar.

    Examples
    --------
    >>> import transformer_pde as tp
    >>> from transformer_pde.plotting import plot_causal_density
    >>> rho = tp.Density.uniform(tp.CausalCircleGrid(3, 8))
    >>> plot_causal_density(rho).get_ylabel()
    'position $s$'
    """
    t, density, grid = _density_run(result, "plot_causal_density", (CausalCircleGrid,))
    k = _frame(k, len(t), "plot_causal_density")
    ax = _axes(ax)
    image = ax.imshow(density[k], origin="lower", aspect="auto", extent=(0.0, 2.0 * np.pi, 0.0, 1.0),
                      cmap=cmap, interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, label=r"density $\rho(s, \theta)$")
    _angle_axis(ax.xaxis)
    ax.set_xlabel(r"angle $\theta$ [rad]")
    ax.set_ylabel("position $s$")
    ax.set_title(f"$t = {t[k]:g}$")
    return ax


def _sphere_cells(grid: SphereGrid) -> np.ndarray:
    """Rectangles (phi, colatitude) of the cells of a SphereGrid, shape (N, 4, 2)."""
    p0 = grid.k * grid.dphi
    p1 = p0 + grid.dphi
    t0, t1 = grid.theta_edges[grid.ring], grid.theta_edges[grid.ring + 1]
    return np.stack([np.stack([p0, t0], -1), np.stack([p1, t0], -1), np.stack([p1, t1], -1),
                     np.stack([p0, t1], -1)], axis=1)


def plot_sphere_density(result, *, k: int = -1, ax=None, cmap: str = "magma", log: bool = False):
    r"""Draw a density on the 2-sphere as a longitude-colatitude map, with a colorbar.

    Each cell of the :class:`~transformer_pde.SphereGrid` is drawn as its exact
    rectangle :math:`[\phi_k, \phi_k + \Delta\phi] \times [\vartheta_i, \vartheta_{i+1}]`.

    .. math::

        x = (\sin\vartheta\cos\phi,\ \sin\vartheta\sin\phi,\ \cos\vartheta).

    Parameters
    ----------
    result : DensityTrajectory or Density
        On a SphereGrid.
    k : int
        The saved time.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    cmap : str
        Colour map.
    log : bool
        Colour by :math:`\log_{10}\rho` (floored at :math:`10^{-4}\max\rho`).

    Returns
    -------
    matplotlib.axes.Axes
        Its one :class:`~matplotlib.collections.PolyCollection` holds one rectangle and
        one value per cell.

    Examples
    --------
    >>> import transformer_pde as tp
    >>> from transformer_pde.plotting import plot_sphere_density
    >>> rho = tp.Density.uniform(tp.SphereGrid(4))
    >>> len(plot_sphere_density(rho).collections[0].get_array()) == rho.grid.shape[0]
    True
    """
    t, density, grid = _density_run(result, "plot_sphere_density", (SphereGrid,))
    k = _frame(k, len(t), "plot_sphere_density")
    values = density[k]
    label = r"density $\rho(x)$"
    if log:
        values = np.log10(np.maximum(values, 1e-4 * values.max()))
        label = r"$\log_{10}\rho(x)$"
    ax = _axes(ax, figsize=(7.0, 3.8))
    cells = PolyCollection(_sphere_cells(grid), array=values, cmap=cmap, edgecolors="face")
    ax.add_collection(cells)
    ax.figure.colorbar(cells, ax=ax, label=label)
    ax.set_xlim(0.0, 2.0 * np.pi)
    ax.set_ylim(np.pi, 0.0)
    _angle_axis(ax.xaxis)
    ax.set_yticks([0.0, np.pi / 2, np.pi])
    ax.set_yticklabels(["0", r"$\pi/2$", r"$\pi$"])
    ax.set_xlabel(r"longitude $\phi$ [rad]")
    ax.set_ylabel(r"colatitude $\vartheta$ [rad]")
    ax.set_aspect("equal")
    if len(t) > 1 or isinstance(result, DensityTrajectory):
        ax.set_title(f"$t = {t[k]:g}$")
    return ax


# ---------------------------------------------------------------------------------------
# scalar diagnostics
# ---------------------------------------------------------------------------------------
def plot_series(t, series: Mapping[str, Sequence[float]], *, ax=None, ylabel: str = "",
                step: bool = False, logy: bool = False):
    r"""Draw one or more scalar time series on common axes.

    .. math::

        t \mapsto y_\ell(t) \quad \text{for each label } \ell.

    Parameters
    ----------
    t : array_like, shape (nt,) or mapping of such arrays
        Times shared by all series, or one array per label.
    series : mapping of str to array_like, shape (nt,)
        Label -> values.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    ylabel : str
        Label of the vertical axis.
    step : bool
        Draw piecewise-constant steps (for counts).
    logy : bool
        Logarithmic vertical axis (base 2, ticks at the powers of 2; symmetric-log,
        linear below 1, when a value is 0, so that 0 is drawn as 0).

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> from transformer_pde.plotting import plot_series
    >>> ax = plot_series([0.0, 1.0], {"a": [1.0, 2.0]}, ylabel="$y$")
    >>> ax.lines[0].get_ydata().tolist()
    [1.0, 2.0]
    """
    ax = _axes(ax)
    for label, values in series.items():
        times = np.asarray(t[label] if isinstance(t, Mapping) else t, dtype=np.float64)
        values = np.asarray(values, dtype=np.float64)
        if times.shape != values.shape:
            raise ValueError(
                f"series {label!r} has shape {values.shape}, but its times have shape {times.shape}"
            )
        if step:
            ax.step(times, values, where="post", label=label)
        else:
            ax.plot(times, values, label=label)
    if logy:
        _log2_axis(ax)
    ax.set_xlabel("$t$")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return ax


def _log2_axis(ax) -> None:
    """A base-2 log axis over every line of ``ax``, ticks at the powers of 2.

    Symmetric-log (linear below 1) when a line has a 0, so that 0 is drawn as 0.
    """
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.lines])
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() < 0:
        return
    top = max(1.0, float(values.max()))
    ticks = 2.0 ** np.arange(0, int(np.ceil(np.log2(top))) + 1)
    if values.min() < 1:
        ax.set_yscale("symlog", base=2, linthresh=1.0, linscale=0.5)
        ticks = np.concatenate([[0.0], ticks])
    else:
        ax.set_yscale("log", base=2)
    ax.set_yticks(ticks)
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(ticks[0] if ticks[0] > 0 else -0.2, top * 1.25)


def plot_cluster_count(result, counts=None, *, ax=None, threshold: float = CLUSTER_THRESHOLD,
                       label: str | None = None, logy: bool = True):
    r"""Draw the number of clusters against time (steps).

    Tokens: groups linked by :math:`\langle x_i, x_j\rangle > \text{threshold}`
    (:func:`~transformer_pde.clustering.cluster_count`); a density: its peaks
    (:func:`~transformer_pde.clustering.density_peaks`; a uniform density has 0, drawn
    as 0, not clamped). Call it again on the same ``ax`` to compare runs.

    .. math::

        K(t) = \#\{\text{clusters of } x_1(t), \dots, x_n(t)\}.

    Parameters
    ----------
    result : Trajectory, DensityTrajectory or array_like, shape (nt,)
        A run, or its times (then ``counts`` holds the counts).
    counts : array_like, shape (nt,), optional
        Counts, when ``result`` is the times.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    threshold : float
        Inner-product threshold of the token clusters.
    label : str, optional
        Legend entry (default: "particles (<x_i, x_j> > threshold)" or "density peaks").
    logy : bool
        Logarithmic count axis (base 2; symmetric-log when a count is 0, so that 0 shows).

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> from transformer_pde.plotting import plot_cluster_count
    >>> ax = plot_cluster_count([0.0, 1.0, 2.0], [8, 3, 1])
    >>> ax.lines[0].get_ydata().tolist()
    [8.0, 3.0, 1.0]
    """
    if isinstance(result, Trajectory):
        if result.x.ndim == 4:
            raise ValueError("plot_cluster_count: a batch has one count per system; draw "
                             "cluster_count(traj.x[:, b]) per system b")
        t, values = result.t, cluster_count(result, threshold)
        label = rf"particles ($\langle x_i, x_j\rangle > {threshold:g}$)" if label is None else label
    elif isinstance(result, DensityTrajectory):
        t, values = result.t, density_peaks(result)
        label = "density peaks" if label is None else label
    else:
        if counts is None:
            raise TypeError("plot_cluster_count: give a Trajectory, a DensityTrajectory, or times and counts")
        t, values = result, counts
        label = "clusters" if label is None else label
    ax = plot_series(t, {label: values}, ax=ax, step=True, logy=logy, ylabel="clusters")
    if not logy:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return ax


def _beta_of(result) -> float:
    beta = getattr(getattr(getattr(result, "dynamics", None), "attention", None), "beta", None)
    if beta is None or np.ndim(beta):
        raise ValueError("plot_energy: give beta (the result's model has no single beta)")
    return float(beta)


def plot_energy(result, energy=None, *, beta: float | None = None, ax=None, label: str | None = None):
    r"""Draw the normalized interaction energy against time.

    .. math::

        \frac{\mathsf E_\beta(t)}{e^\beta/2\beta}, \qquad
        \mathsf E_\beta = \frac{1}{2\beta n^2}\sum_{i,j} e^{\beta\langle x_i, x_j\rangle}

    (:func:`~transformer_pde.clustering.interaction_energy` with ``normalized=True``; 1
    for a single cluster, non-decreasing along SA and USA, docs/math.md §2.3).

    Parameters
    ----------
    result : Trajectory, DensityTrajectory or array_like, shape (nt,)
        A run, or its times (then ``energy`` holds the normalized energies).
    energy : array_like, shape (nt,), optional
        Normalized energies, when ``result`` is the times.
    beta : float, optional
        Inverse temperature (default: that of the result's attention).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    label : str, optional
        Legend entry.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> from transformer_pde.plotting import plot_energy
    >>> plot_energy([0.0, 1.0], [0.5, 0.9]).get_ylabel()
    '$\\mathsf{E}_\\beta(t)\\,/\\,(e^\\beta/2\\beta)$'
    """
    if isinstance(result, (Trajectory, DensityTrajectory)):
        beta = _beta_of(result) if beta is None else beta
        t, values = result.t, interaction_energy(result, beta, normalized=True)
        label = (rf"$\beta = {beta:g}$" if label is None else label)
    else:
        if energy is None:
            raise TypeError("plot_energy: give a Trajectory, a DensityTrajectory, or times and energies")
        t, values = result, energy
        label = "energy" if label is None else label
    return plot_series(t, {label: values}, ax=ax, ylabel=r"$\mathsf{E}_\beta(t)\,/\,(e^\beta/2\beta)$")


# ---------------------------------------------------------------------------------------
# studies and Gaussians
# ---------------------------------------------------------------------------------------
def plot_convergence(study: ConvergenceStudy, *, ax=None, unit: str = "rad"):
    r"""Log-log plot of a :class:`~transformer_pde.convergence.ConvergenceStudy`.

    For each time: the median distance over seeds against n (markers), the fitted power
    law (line, slope and confidence interval in the legend), and the theoretical slope
    (dashed, through the first median).

    .. math::

        \log W_p(\mu^n_t, \mu_t) \approx c + \text{slope}\cdot\log n .

    Parameters
    ----------
    study : ConvergenceStudy
        Distances of shape (k, s, m) for n (k,), seeds (s,) and times (m,).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    unit : str
        Unit of the distance, for the axis label.

    Returns
    -------
    matplotlib.axes.Axes
        Two lines per time (medians, fit) and the theory line.

    Examples
    --------
    >>> from transformer_pde.convergence import ConvergenceStudy
    >>> from transformer_pde.plotting import plot_convergence
    >>> d = np.array([[[0.1], [0.12]], [[0.05], [0.06]]])  # (k=2 n, s=2 seeds, m=1 time)
    >>> study = ConvergenceStudy(np.array([100, 400]), np.array([1.0]), d, np.array([0, 1]), 2.0, -0.5)
    >>> len(plot_convergence(study).lines)
    3
    """
    if not isinstance(study, ConvergenceStudy):
        raise TypeError(f"study must be a ConvergenceStudy, got {type(study).__name__}")
    ax = _axes(ax)
    n = np.asarray(study.n, dtype=np.float64)
    for k, t in enumerate(study.t):
        med = np.median(study.distance[:, :, k], axis=1)
        (dots,) = ax.loglog(n, med, "o", label=f"$t={t:g}$: median over {study.distance.shape[1]} seeds")
        fit = study.fit(k)
        ax.loglog(n, np.exp(fit.intercept) * n**fit.slope, "-", color=dots.get_color(),
                  label=f"$t={t:g}$: fit, slope ${fit.slope:+.2f}$ [${fit.low:+.2f}$, ${fit.high:+.2f}$]")
    first = np.median(study.distance[0, :, 0])
    ax.loglog(n, first * (n / n[0]) ** study.expected_slope, "k--",
              label=f"theory: slope ${study.expected_slope:+.2f}$")
    ax.set_xticks(n)
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("tokens $n$")
    ax.set_ylabel(f"$W_{{{study.p:g}}}$(particles, PDE) [{unit}]")
    ax.legend(loc="best", fontsize="small")
    return ax


def _ellipse(mean2, cov2, n_std: float, **kwargs) -> Ellipse:
    w, v = np.linalg.eigh(cov2)
    w = np.maximum(w, 0.0)
    angle = np.degrees(np.arctan2(v[1, 1], v[0, 1]))  # direction of the largest axis
    return Ellipse(mean2, 2 * n_std * np.sqrt(w[1]), 2 * n_std * np.sqrt(w[0]), angle=angle, **kwargs)


def plot_covariance(result, *, ax=None, n_ellipses: int = 6, n_std: float = 1.0, dims=(0, 1),
                    cmap: str = "viridis"):
    r"""Draw a Gaussian solution: covariance ellipses over time (d >= 2), or mean +- sd (d = 1).

    For d >= 2 the ellipses are the level sets
    :math:`\{y : (y - m)^\top\Sigma^{-1}(y - m) = \text{n\_std}^2\}` of the marginal on
    the coordinates ``dims`` at ``n_ellipses`` saved times, coloured by time (colorbar),
    over the path of the mean.

    .. math::

        \text{semi-axes} = \text{n\_std}\sqrt{\lambda_{1,2}(\Sigma_{\rm dims}(t))}.

    Parameters
    ----------
    result : GaussianTrajectory
        Means (nt, d) and covariances (nt, d, d).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    n_ellipses : int
        Number of saved times drawn, evenly spread (the first and the last included).
    n_std : float
        Ellipse radius in standard deviations.
    dims : (int, int)
        The coordinates of the plane (d >= 2).
    cmap : str
        Colour map of time.

    Returns
    -------
    matplotlib.axes.Axes
        Its patches are the ellipses, in time order.

    Examples
    --------
    >>> import transformer_pde as tp
    >>> dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0, V=-np.eye(2)), geometry="euclidean")
    >>> g = tp.gaussian_moments(dyn, np.zeros(2), np.diag([1.0, 0.25]), [0.0, 0.5])
    >>> round(float(g.plot(n_ellipses=2).patches[0].width), 6)
    2.0
    """
    if not isinstance(result, GaussianTrajectory):
        raise TypeError(f"result must be a GaussianTrajectory, got {type(result).__name__}")
    t, mean, cov = result.t, result.mean, result.cov
    ax = _axes(ax)
    if result.dim == 1:
        sd = np.sqrt(np.maximum(cov[:, 0, 0], 0.0))
        ax.plot(t, mean[:, 0], color="k", label="mean $m(t)$")
        ax.fill_between(t, mean[:, 0] - n_std * sd, mean[:, 0] + n_std * sd, color="tab:blue",
                        alpha=0.3, label=rf"$m \pm {n_std:g}\sqrt{{\Sigma}}$")
        ax.set_xlabel("$t$")
        ax.set_ylabel("$x$")
        ax.legend(loc="best", fontsize="small")
        return ax
    i, j = (int(dims[0]), int(dims[1]))
    if not (0 <= i < result.dim and 0 <= j < result.dim and i != j):
        raise ValueError(f"dims must be two different coordinates in [0, {result.dim}), got {dims}")
    picks = np.unique(np.rint(np.linspace(0, len(t) - 1, max(1, int(n_ellipses)))).astype(int))
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    norm = Normalize(t[0], t[-1] if t[-1] > t[0] else t[0] + 1.0)
    colours = colormaps[cmap]
    sub = np.ix_([i, j], [i, j])
    for k in picks:
        ax.add_patch(_ellipse(mean[k, [i, j]], cov[k][sub], n_std, fill=False,
                              edgecolor=colours(norm(t[k])), linewidth=1.2))
    ax.plot(mean[:, i], mean[:, j], color="k", linewidth=0.8, label="mean $m(t)$")
    ax.plot(*mean[0, [i, j]], "o", color="k", markersize=3)
    ax.figure.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=ax, label="$t$")
    ax.update_datalim(_ellipse_bounds(mean[picks][:, [i, j]], cov[picks][:, [i, j]][:, :, [i, j]], n_std))
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(f"$x_{{{i + 1}}}$")
    ax.set_ylabel(f"$x_{{{j + 1}}}$")
    ax.set_title(rf"{n_std:g}-$\sigma$ ellipses of $\mathcal{{N}}(m(t), \Sigma(t))$")
    ax.legend(loc="best", fontsize="small")
    return ax


def _ellipse_bounds(means, covs, n_std):
    """Corners of the bounding boxes of the ellipses (for the data limits)."""
    half = n_std * np.sqrt(np.maximum(np.diagonal(covs, axis1=1, axis2=2), 0.0))  # (k, 2)
    return np.concatenate([means - half, means + half])


def plot_phase_diagram(x, y, values, *, ax=None, xlabel: str = "$t$", ylabel: str = r"$\beta$",
                       label: str = "", cmap: str = "viridis", vmin=None, vmax=None):
    r"""Draw a quantity over a grid of two parameters as a heat map, with a colorbar.

    Cells are centred on the given values (edges halfway between them), as in the
    (:math:`t`, :math:`\beta`) diagram of the phase-diagram validation.

    .. math::

        (x_a, y_b) \mapsto v_{ba}.

    Parameters
    ----------
    x : array_like, shape (nx,)
        Increasing values of the horizontal parameter.
    y : array_like, shape (ny,)
        Increasing values of the vertical parameter.
    values : array_like, shape (ny, nx)
        The quantity at each (y, x).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    xlabel, ylabel, label : str
        Axis labels and colorbar label.
    cmap : str
        Colour map.
    vmin, vmax : float, optional
        Colour range.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> from transformer_pde.plotting import plot_phase_diagram
    >>> ax = plot_phase_diagram([0.0, 1.0, 2.0], [1.0, 2.0], np.zeros((2, 3)), label="fraction")
    >>> ax.collections[0].get_array().shape
    (2, 3)
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1 or values.shape != (len(y), len(x)):
        raise ValueError(f"values must have shape (len(y), len(x)) = {(len(y), len(x))}, got {values.shape}")
    ax = _axes(ax)
    mesh = ax.pcolormesh(_edges(x), _edges(y), values, cmap=cmap, vmin=vmin, vmax=vmax, shading="flat")
    ax.figure.colorbar(mesh, ax=ax, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


def _model_and_tokens(result, x, k, system: int, who: str):
    """``(model, tokens (n, d), title suffix)`` of a Trajectory at frame k, or of a model and x."""
    if isinstance(result, Trajectory):
        _, xs = _path(result, None, None, who, system)
        k = _frame(k, len(result.t), who)
        return result.dynamics, xs[k], f" at $t = {result.t[k]:g}$"
    if x is None:
        raise TypeError(f"{who}: give a Trajectory, or a model and tokens x (n, d)")
    return result, x, ""


def plot_attention_matrix(result, x=None, *, k: int = -1, head: int = 0, system: int = 0, ax=None,
                          sort: bool = False, cmap: str = "viridis"):
    r"""Draw the attention matrix :math:`P_{ij}` of a state, with a colorbar.

    .. math::

        P_{ij} = \frac{e^{\beta\langle Qx_i, Kx_j\rangle}}{\sum_k e^{\beta\langle Qx_i, Kx_k\rangle}}

    (:func:`~transformer_pde.clustering.attention_matrix`; one head of a multi-head model).

    Parameters
    ----------
    result : Trajectory, TokenDynamics or attention object
        A run (its model and its state at the saved time ``k``), or a model (then ``x``).
    x : array_like, shape (n, d), optional
        Tokens, when ``result`` is a model.
    k : int
        Saved time of a Trajectory.
    head : int
        Head of a multi-head model.
    system : int
        System of a batch.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    sort : bool
        Order the tokens by cluster (:func:`~transformer_pde.clustering.cluster_labels`),
        and within a cluster by angle (d = 2) or first coordinate, so that clusters show
        as blocks; the image is then :math:`P_{\sigma(i)\sigma(j)}`.
    cmap : str
        Colour map.

    Returns
    -------
    matplotlib.axes.Axes
        Its image holds P, shape (n, n) (rows and columns permuted when ``sort``).

    Examples
    --------
    >>> import transformer_pde as tp
    >>> from transformer_pde.plotting import plot_attention_matrix
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> ax = plot_attention_matrix(tp.SoftmaxAttention(beta=1.0), x)
    >>> ax.images[0].get_array().sum(axis=1).round(12).tolist()
    [1.0, 1.0]
    """
    model, x, when = _model_and_tokens(result, x, k, system, "plot_attention_matrix")
    P = np.asarray(attention_matrix(model, x))
    if P.ndim == 3:
        if not 0 <= head < P.shape[0]:
            raise ValueError(f"head must be in [0, {P.shape[0]}), got {head}")
        P, when = P[head], f" (head {head})" + when
    which = ""
    if sort:
        x = np.asarray(x, dtype=np.float64)
        within = circle_angles(x) if x.shape[1] == 2 else x[:, 0]
        labels = clustering.cluster_labels(x)
        order = np.lexsort((within, labels))
        P, which = P[np.ix_(order, order)], " (sorted by cluster)"
    ax = _axes(ax, figsize=(5.5, 4.5))
    image = ax.imshow(P, cmap=cmap, vmin=0.0, interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, label="$P_{ij}$")
    ax.set_xlabel("key token $j$" + which)
    ax.set_ylabel("query token $i$" + which)
    ax.set_title("attention matrix" + when)
    return ax


def plot_sweep(result, value=None, *, x: str | None = None, ax=None, ylabel: str | None = None):
    r"""Draw a sweep: ``value`` of each point against one parameter, a line per other setting.

    .. math::

        y_p = \text{value}(\text{result}_p), \qquad p = (x, q_2, \dots) \in P_x \times Q,

    one line over :math:`x \in P_x` for each setting q of the other parameters (in grid
    order); failed and missing points are left out of the lines and listed in the title.
    Without ``value`` the points and their status are drawn as a table.

    Parameters
    ----------
    result : SweepResult
    value : callable, optional
        ``value(point_value) -> float`` (e.g. a cluster count of the final state).
    x : str, optional
        The parameter on the horizontal axis (default: the first of the grid).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    ylabel : str, optional
        Label of the vertical axis (default "value").

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> from transformer_pde import SweepResult
    >>> res = SweepResult(["a", "b"], [{"a": 1, "b": 0}, {"a": 2, "b": 0}], ["done", "done"],
    ...                   [1.0, 4.0], [None, None])
    >>> ax = plot_sweep(res, lambda v: v)
    >>> ax.lines[0].get_xydata().tolist()
    [[1.0, 1.0], [2.0, 4.0]]
    """
    from .sweep import SweepResult

    if not isinstance(result, SweepResult):
        raise TypeError(f"result must be a SweepResult, got {type(result).__name__}")
    if value is None:
        rows = [(", ".join(f"{k}={v}" for k, v in p.items()), st)
                for p, st in zip(result.points, result.status, strict=True)]
        return plot_table(rows, ax=ax, columns=("point", "status"))
    x = result.names[0] if x is None else x
    if x not in result.names:
        raise ValueError(f"x must be one of the sweep's parameters {result.names}, got {x!r}")
    others = [n for n in result.names if n != x]
    lines: dict[tuple, list] = {}
    bad = 0
    for p, st, v in zip(result.points, result.status, result.values, strict=True):
        key = tuple(p[n] for n in others)
        lines.setdefault(key, [])
        if st == "done":
            lines[key].append((p[x], float(value(v))))
        else:
            bad += 1
    ax = _axes(ax)
    for key, pts in lines.items():
        if pts:
            xs, ys = zip(*pts, strict=True)
            label = ", ".join(f"{n}={k}" for n, k in zip(others, key, strict=True)) or None
            ax.plot(xs, ys, "o-", label=label)
    ax.set_xlabel(_param_label(x))
    ax.set_ylabel(ylabel or "value")
    if bad:
        ax.set_title(f"{bad} of {len(result.points)} points failed or missing (not drawn)")
    if others and len(lines) > 1:
        ax.legend(loc="best", fontsize="small")
    return ax


def _param_label(name: str) -> str:
    """A dotted run-file key as an axis label: model.beta -> beta in mathtext."""
    key = name.rpartition(".")[2]
    return {"beta": r"$\beta$", "kappa": r"$\kappa$", "n": "$n$", "seed": "seed"}.get(key, name)


def plot_table(rows, *, ax=None, columns=("parameter", "value"), title: str | None = None):
    r"""Draw a table of (parameter, value) rows (e.g. the points of a sweep).

    .. math::

        \text{row } r = (p_r, v_r).

    Parameters
    ----------
    rows : sequence of sequences, or mapping
        The rows (a mapping gives its (key, value) items); numbers are written with
        ``:g``.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    columns : sequence of str
        Column headers.
    title : str, optional
        Title above the table.

    Returns
    -------
    matplotlib.axes.Axes
        With its axis off and one :class:`matplotlib.table.Table`.

    Examples
    --------
    >>> from transformer_pde.plotting import plot_table
    >>> ax = plot_table({"beta": 4.0, "clusters": 3})
    >>> ax.tables[0][1, 0].get_text().get_text()
    'beta'
    """
    items = list(rows.items()) if isinstance(rows, Mapping) else [tuple(r) for r in rows]
    if not items:
        raise ValueError("rows must hold at least one row, got none")
    cells = [[f"{v:g}" if isinstance(v, (float, np.floating)) else str(v) for v in row] for row in items]
    if any(len(row) != len(columns) for row in cells):
        raise ValueError(f"every row must have {len(columns)} entries (columns {list(columns)})")
    ax = _axes(ax, figsize=(4.5, 0.4 * (len(cells) + 2)))
    ax.set_axis_off()
    ax.table(cellText=cells, colLabels=list(columns), loc="center", cellLoc="left")
    if title:
        ax.set_title(title)
    return ax


def plot_final_comparison(x_end, angles, density_end, density_start=None, t_end=None, *, ax=None):
    r"""Histogram of the final particle angles against the final mean-field density.

    .. math::

        \text{histogram of } \theta_i(T) \quad\text{vs}\quad \rho(T, \theta).

    Parameters
    ----------
    x_end : array_like, shape (n, 2)
        Final tokens on the circle.
    angles : array_like, shape (M,)
        Cell-centre angles of the density.
    density_end, density_start : array_like, shape (M,)
        Final (and optionally initial) mean-field density; log scale.
    t_end : float, optional
        The final time, for the legend.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> from transformer_pde.plotting import plot_final_comparison
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> ax = plot_final_comparison(x, [0.5, 2.0, 3.5, 5.0], np.full(4, 1 / (2 * np.pi)))
    >>> ax.get_yscale()
    'log'
    """
    ax = _axes(ax)
    theta = circle_angles(x_end)
    hist, _ = np.histogram(theta, bins=len(angles), range=(0.0, 2.0 * np.pi), density=True)
    when = "" if t_end is None else f" at $t={t_end:g}$"
    ax.stairs(hist, np.linspace(0.0, 2.0 * np.pi, len(angles) + 1), fill=True, color="tab:blue",
              alpha=0.6, label=f"particles{when} (histogram)")
    ax.plot(angles, density_end, color="k", linewidth=1.0, label=f"mean-field density{when}")
    if density_start is not None:
        ax.plot(angles, density_start, color="0.5", linewidth=0.8, linestyle="--",
                label="mean-field density at $t=0$")
    ax.set_yscale("log")
    ax.set_ylim(1e-3, 3.0 * max(hist.max(), float(np.max(density_end))))
    ax.set_xlim(0.0, 2.0 * np.pi)
    _angle_axis(ax.xaxis)
    ax.set_xlabel(r"angle $\theta$ [rad]")
    ax.set_ylabel(r"density $\rho(\theta)$")
    ax.legend(loc="best", fontsize="small")
    ax.set_title("final state: particles and mean field")
    return ax


# ---------------------------------------------------------------------------------------
# movies
# ---------------------------------------------------------------------------------------
def _frames(frames, nt: int) -> np.ndarray:
    if frames is None:
        return np.arange(nt)
    if isinstance(frames, (int, np.integer)) and not isinstance(frames, bool):
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        return np.unique(np.rint(np.linspace(0, nt - 1, min(int(frames), nt))).astype(int))
    idx = np.asarray(frames)
    if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu" or idx.min() < -nt or idx.max() >= nt:
        raise ValueError(f"frames must be None, a count, or indices into the {nt} saved times; "
                         f"got {frames!r}")
    return idx % nt


def _movie_tokens(traj: Trajectory, system: int, fig: Figure):
    t, x = _path(traj, None, None, "movie", system)
    sphere, d = isinstance(traj.dynamics.geometry, Sphere), x.shape[2]
    if sphere and d == 3:
        ax = fig.add_subplot(1, 1, 1, projection="3d")
        _sphere_wireframe(ax)
        dots = ax.scatter(*x[0].T, s=20, color="tab:red", depthshade=False)

        def update(k):
            dots._offsets3d = tuple(x[k].T)
            return t[k]
    else:
        ax = fig.add_subplot(1, 1, 1)
        pts = x if d >= 2 else np.concatenate([x, np.zeros_like(x)], axis=2)
        if sphere and d == 2:
            u = np.linspace(0.0, 2.0 * np.pi, 200)
            ax.plot(np.cos(u), np.sin(u), color="0.8", linewidth=0.8)
            lim = np.array([[-1.1, 1.1], [-1.1, 1.1]])
        else:
            lo, hi = pts[..., :2].min(axis=(0, 1)), pts[..., :2].max(axis=(0, 1))
            pad = 0.05 * np.maximum(hi - lo, 1e-12)
            lim = np.stack([lo - pad, hi + pad], axis=1)
        (dots,) = ax.plot(pts[0, :, 0], pts[0, :, 1], "o", color="tab:red", markersize=4)
        ax.set_xlim(*lim[0])
        ax.set_ylim(*lim[1])
        ax.set_aspect("equal")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$" if d >= 2 else "")

        def update(k):
            dots.set_data(pts[k, :, 0], pts[k, :, 1])
            return t[k]
    return ax, update, len(t)


def _movie_density(sol: DensityTrajectory, fig: Figure):
    t, density, grid = _density_run(sol, "movie", (CircleGrid, CausalCircleGrid, SphereGrid, CartesianGrid,
                                                   AxisymmetricGrid, ZonalGrid))
    ax = fig.add_subplot(1, 1, 1)
    if isinstance(grid, SphereGrid):
        plot_sphere_density(sol, k=0, ax=ax)
        cells = ax.collections[0]
        cells.set_clim(0.0, density.max())

        def update(k):
            cells.set_array(density[k])
            return t[k]
        return ax, update, len(t)
    if isinstance(grid, CausalCircleGrid):
        plot_causal_density(sol, k=0, ax=ax)
        image = ax.images[0]
        image.set_clim(0.0, density.max())

        def update(k):
            image.set_data(density[k])
            return t[k]
        return ax, update, len(t)
    if isinstance(grid, CartesianGrid) and grid.dim == 2:
        plot_density(sol, k=0, ax=ax)
        mesh = ax.collections[0]
        mesh.set_clim(0.0, density.max())

        def update(k):
            mesh.set_array(density[k].T)
            return t[k]
        return ax, update, len(t)
    coords = {CircleGrid: lambda g: g.angles, AxisymmetricGrid: lambda g: g.theta,
              ZonalGrid: lambda g: g.theta, CartesianGrid: lambda g: g.axes[0]}[type(grid)](grid)
    (line,) = ax.plot(coords, density[0], color="k")
    ax.set_ylim(0.0, 1.05 * density.max())
    ax.set_xlim(coords[0], coords[-1])
    ax.set_xlabel({CircleGrid: r"angle $\theta$ [rad]", AxisymmetricGrid: r"colatitude $\vartheta$ [rad]",
                   ZonalGrid: r"polar angle $\vartheta$ [rad]", CartesianGrid: "$x$"}[type(grid)])
    ax.set_ylabel(r"density $\rho$")

    def update(k):
        line.set_ydata(density[k])
        return t[k]
    return ax, update, len(t)


def _writer(path: Path, fps: float):
    from matplotlib import animation

    suffix = path.suffix.lower()
    if suffix == ".gif":
        return animation.PillowWriter(fps=fps)
    if suffix == ".mp4":
        if not animation.FFMpegWriter.isAvailable():
            raise RuntimeError(f"writing {path.name} needs ffmpeg on PATH (not found); install ffmpeg "
                               "or write a .gif (Pillow) instead")
        return animation.FFMpegWriter(fps=fps)
    raise ValueError(f"path must end in .gif (Pillow) or .mp4 (ffmpeg), got {str(path)!r}")


def movie(result, path: str | os.PathLike, *, fps: float = 10.0, frames=None, dpi: int = 100,
          figsize=(5.0, 5.0), system: int = 0, title: str | None = None) -> Path:
    r"""Write a movie of a run: one frame per saved time (or per chosen time).

    Tokens move as points (on the circle, on the sphere in 3-D, or in the plane of the
    first two coordinates); densities are redrawn on a fixed colour or value range.
    GIFs go through matplotlib's ``PillowWriter``; ``.mp4`` needs ffmpeg on PATH. The
    file is written to a temporary name and moved into place (a crash never leaves a
    half-written movie).

    .. math::

        \text{frame } k \;\leftrightarrow\; t_k, \qquad \text{duration} = \#\text{frames}/\text{fps}.

    Parameters
    ----------
    result : Trajectory or DensityTrajectory
        The run.
    path : str or path-like
        Output file, ending in ``.gif`` or ``.mp4``.
    fps : float
        Frames per second, > 0.
    frames : None, int or sequence of int
        All saved times (None), that many evenly spread, or these indices.
    dpi : int
        Resolution.
    figsize : (float, float)
        Figure size in inches.
    system : int
        System of a batch.
    title : str, optional
        Title prefix; the time of the frame follows it.

    Returns
    -------
    pathlib.Path
        The movie written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import transformer_pde as tp
    >>> x0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0), geometry="sphere")
    >>> traj = tp.simulate(dyn, x0, (0.0, 1.0), t_eval=[0.0, 0.5, 1.0], method="rk4", dt=0.1)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     tp.movie(traj, pathlib.Path(d) / "tokens.gif", dpi=30).name
    'tokens.gif'
    """
    from ._io import atomic_path

    path = Path(path)
    fps = float(fps)
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be > 0, got {fps}")
    writer = _writer(path, fps)
    fig = Figure(figsize=figsize, layout="constrained")
    if isinstance(result, Trajectory):
        ax, update, nt = _movie_tokens(result, system, fig)
    elif isinstance(result, DensityTrajectory):
        ax, update, nt = _movie_density(result, fig)
    else:
        raise TypeError("movie: result must be a Trajectory or a DensityTrajectory, got "
                        f"{type(result).__name__}")
    prefix = "" if title is None else f"{title}: "
    indices = _frames(frames, nt)
    ax.set_title(f"{prefix}$t = {update(int(indices[0])):.3f}$")
    fig.draw_without_rendering()  # the layout of the first frame, kept for all (no jitter,
    fig.set_layout_engine("none")  # and each frame is drawn once instead of twice)
    with atomic_path(path) as tmp:
        with writer.saving(fig, str(tmp), dpi):
            for k in indices:
                ax.set_title(f"{prefix}$t = {update(int(k)):.3f}$")
                writer.grab_frame()
    return path


# ---------------------------------------------------------------------------------------
# the demo
# ---------------------------------------------------------------------------------------
def demo_figure(circle: Mapping, sphere: Mapping, pde: Mapping | None = None) -> Figure:
    r"""The demo's figure.

    Top: angles of the circle tokens against time (:func:`plot_circle_tokens`), the
    circle's mean-field density against time with the same tokens drawn over it
    (:func:`plot_circle_density`, with its colorbar, when ``pde`` is given), and the
    sphere tokens in 3-D (:func:`plot_sphere_tokens`). Bottom: the final state of
    particles and PDE, the number of clusters (and of density peaks; 0 is drawn as 0 on
    the symmetric-log axis) and the interaction energy divided by its maximum
    :math:`e^\beta/(2\beta)` (the value of a single cluster, docs/math.md §2.3), against
    time.

    .. math::

        \mathsf E_\beta(t)\,/\,(e^\beta/2\beta) \in (0, 1].

    Parameters
    ----------
    circle, sphere : mapping
        One run each, with keys ``"t"`` (nt,), ``"x"`` (nt, n, d) with d = 2 resp. 3,
        ``"clusters"`` (nt,), ``"energy"`` (nt,), ``"beta"`` (float) and ``"title"``
        (str).
    pde : mapping, optional
        The circle's mean-field run: ``"t"`` (nt,), ``"angles"`` (M,), ``"density"``
        (nt, M), ``"peaks"`` (nt,) and ``"title"``.

    Returns
    -------
    matplotlib.figure.Figure
        Save it with ``fig.savefig(path)``.

    Examples
    --------
    >>> from transformer_pde.plotting import demo_figure
    >>> t = np.array([0.0, 1.0])
    >>> run = {"t": t, "clusters": [2, 1], "energy": [0.5, 0.6], "beta": 1.0, "title": "run"}
    >>> c = {**run, "x": np.array([[[1.0, 0.0], [0.0, 1.0]]] * 2)}
    >>> s = {**run, "x": np.array([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]] * 2)}
    >>> len(demo_figure(c, s).axes)
    4
    """
    cols = 3 if pde is not None else 2
    fig = Figure(figsize=(6 * cols, 9.5), layout="constrained")
    ax_c = fig.add_subplot(2, cols, 1)
    plot_circle_tokens(circle["t"], circle["x"], ax=ax_c)
    ax_c.set_title(circle["title"])
    if pde is not None:
        ax_p = fig.add_subplot(2, cols, 2)
        plot_circle_density(pde["t"], pde["angles"], pde["density"], ax=ax_p)
        theta = circle_angles(circle["x"])
        for i in range(theta.shape[1]):  # the particles over the density, wraps cut
            path = np.where(np.abs(np.diff(theta[:, i], prepend=theta[0, i])) > np.pi, np.nan,
                            theta[:, i])
            ax_p.plot(circle["t"], path, color="white", linewidth=0.3, alpha=0.6)
        ax_p.set_title(pde["title"])
    ax_s = fig.add_subplot(2, cols, cols, projection="3d")
    plot_sphere_tokens(sphere["x"], ax=ax_s)
    ax_s.set_title(sphere["title"])
    label_c, label_s = rf"circle, $\beta$={circle['beta']:g}", rf"sphere, $\beta$={sphere['beta']:g}"
    times = {label_c: circle["t"], label_s: sphere["t"]}
    counts = {label_c: circle["clusters"], label_s: sphere["clusters"]}
    if pde is not None:
        label_p = "circle PDE: density peaks (0 while none stands out)"
        times[label_p] = pde["t"]
        counts[label_p] = pde["peaks"]
        plot_final_comparison(circle["x"][-1], pde["angles"], pde["density"][-1], pde["density"][0],
                              circle["t"][-1], ax=fig.add_subplot(2, cols, cols + 1))
    ax_k = fig.add_subplot(2, cols, cols + 2 if pde is not None else cols + 1)
    plot_series(times, counts, ax=ax_k,
                ylabel=r"clusters (groups with $\langle x_i,x_j\rangle > 0.9999$)",
                step=True, logy=True)
    ax_k.set_title("number of clusters")
    ax_e = fig.add_subplot(2, cols, 2 * cols)
    plot_series(
        times,
        {label_c: np.asarray(circle["energy"]) / _energy_max(circle["beta"]),
         label_s: np.asarray(sphere["energy"]) / _energy_max(sphere["beta"])},
        ax=ax_e, ylabel=r"$\mathsf{E}_\beta(t)\,/\,(e^\beta/2\beta)$",
    )
    ax_e.set_title(r"interaction energy "
                   r"$\mathsf{E}_\beta = \frac{1}{2\beta n^2}\sum_{ij} e^{\beta\langle x_i,x_j\rangle}$")
    return fig


def _energy_max(beta: float) -> float:
    return float(np.exp(beta) / (2.0 * beta))


# ---------------------------------------------------------------------------------------
# figures of the published studies (docs/math.md §9.18)
# ---------------------------------------------------------------------------------------
def _value_matrix(dynamics, d: int) -> np.ndarray:
    """The value matrix V (d, d) of a single-head model (identity when it has none)."""
    attention = getattr(dynamics, "attention", None)
    if not hasattr(attention, "V"):
        raise TypeError(f"plot_convex_hulls: rescale=True needs a model with one value matrix V, got "
                        f"{type(attention).__name__} (pass rescale=False)")
    V = attention.V
    if V is None:
        return np.eye(d)
    V = np.asarray(V, dtype=np.float64)
    if V.shape != (d, d):
        raise ValueError(f"rescale needs one value matrix V ({d}, {d}), got shape {V.shape}")
    return V


def plot_convex_hulls(result, x=None, *, frames=None, rescale: bool = True, dims=(0, 1),
                      system: int = 0, ax=None, cmap: str = "viridis"):
    r"""Overlay the convex hulls of the (rescaled) tokens at several times (Paper A's limits).

    .. math::

        z_i(t) = e^{-tV}x_i(t),\qquad \mathcal K(t) = \operatorname{conv}\{z_i(t)\},

    the rescaled tokens of docs/math.md §1.1, whose hull is non-increasing in t for
    :math:`V = I_d` (``p:noninc``) and converges to the polytope :math:`\mathcal K` of
    the limits (§1.2). Each hull (:class:`scipy.spatial.ConvexHull` of the coordinates
    ``dims``) is drawn as a closed line coloured by time, the tokens of the last frame as dots.

    Parameters
    ----------
    result : Trajectory or times (nt,)
        A run in :math:`\mathbb R^d` (d >= 2), or the saved times (then ``x``).
    x : array_like, shape (nt, n, d), optional
        Tokens, when ``result`` is times (then ``rescale=False``: plain arrays carry no V).
    frames : sequence of int, optional
        Saved times drawn (default: 5 evenly spread, the first and last included).
    rescale : bool
        Draw :math:`z = e^{-tV}x` (the model's V, from a Trajectory) instead of x.
    dims : (int, int)
        The coordinates of the plane.
    system : int
        System of a batch.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    cmap : str
        Colour map of time.

    Returns
    -------
    matplotlib.axes.Axes
        Its lines are the hulls in the order of ``frames``, each closed (first vertex repeated),
        vertices counter-clockwise.

    Examples
    --------
    >>> from transformer_pde.plotting import plot_convex_hulls
    >>> x = np.array([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.2, 0.2]]])
    >>> ax = plot_convex_hulls(np.array([0.0]), x, rescale=False)
    >>> ax.lines[0].get_xydata().tolist()
    [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    """
    from matplotlib import colormaps
    from scipy.spatial import ConvexHull, QhullError

    t, xs = _path(result, x, None, "plot_convex_hulls", system)
    d = xs.shape[2]
    i, j = (int(dims[0]), int(dims[1]))
    if not (0 <= i < d and 0 <= j < d and i != j):
        raise ValueError(f"dims must be two different coordinates in [0, {d}), got {dims}")
    if frames is None:
        frames = np.unique(np.rint(np.linspace(0, len(t) - 1, min(5, len(t)))).astype(int))
    frames = [_frame(int(k), len(t), "plot_convex_hulls") for k in frames]
    if rescale:
        if not isinstance(result, Trajectory):
            raise TypeError("plot_convex_hulls: rescale=True needs a Trajectory (its model's V); "
                            "pass rescale=False for plain arrays")
        from scipy.linalg import expm

        V = _value_matrix(result.dynamics, d)
        pts = {k: xs[k] @ expm(-t[k] * V).T for k in frames}
    else:
        pts = {k: xs[k] for k in frames}
    ax = _axes(ax)
    colours = colormaps[cmap]
    span = (t[frames[-1]] - t[frames[0]]) or 1.0
    for k in frames:
        plane = pts[k][:, [i, j]]
        try:
            hull = ConvexHull(plane)
        except QhullError as err:
            raise ValueError(f"plot_convex_hulls: the tokens of saved time {k} span no area in the "
                             f"plane dims={dims} (fewer than 3 or collinear points)") from err
        ring = plane[np.append(hull.vertices, hull.vertices[0])]
        ax.plot(ring[:, 0], ring[:, 1], color=colours((t[k] - t[frames[0]]) / span), linewidth=1.2,
                label=f"$t = {t[k]:g}$")
    last = pts[frames[-1]][:, [i, j]]
    ax.scatter(last[:, 0], last[:, 1], s=12, color="k", zorder=3)
    name = "z" if rescale else "x"
    ax.set_xlabel(f"${name}_{{{i + 1}}}$")
    ax.set_ylabel(f"${name}_{{{j + 1}}}$")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(r"convex hulls of $z_i = e^{-tV}x_i$" if rescale else "convex hulls of the tokens")
    ax.legend(loc="best", fontsize="small")
    return ax


def plot_attention_links(result, x=None, *, k: int = -1, head: int = 0, system: int = 0, ax=None,
                         min_weight: float = 1e-3, color: str = "tab:blue"):
    r"""Draw the tokens and a line from each token to each token it attends, with alpha :math:`P_{ij}`.

    .. math::

        \text{alpha}(i \to j) = P_{ij},\qquad i \ne j,\ P_{ij} > \text{min\_weight},

    the attention matrix of :func:`~transformer_pde.clustering.attention_matrix` (one head
    of a multi-head model). Tokens in d = 2 are drawn in the plane, in d > 2 by their first
    two coordinates.

    Parameters
    ----------
    result : Trajectory, TokenDynamics or attention object
        A run (its model and its state at saved time ``k``), or a model (then ``x``).
    x : array_like, shape (n, d), optional
        Tokens, when ``result`` is a model.
    k, head, system :
        Saved time, head and system.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    min_weight : float
        Links with :math:`P_{ij}` at most this are left out, in [0, 1).
    color : str
        Colour of the links.

    Returns
    -------
    matplotlib.axes.Axes
        ``ax.collections[0]`` holds the links (segments from :math:`x_i` to :math:`x_j`, in
        row-major order of (i, j), RGBA colours with alpha :math:`P_{ij}`), ``collections[1]``
        the tokens.

    Examples
    --------
    >>> import transformer_pde as tp
    >>> from transformer_pde.plotting import plot_attention_links
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> ax = plot_attention_links(tp.SoftmaxAttention(beta=0.0), x)
    >>> ax.collections[0].get_colors()[:, 3].tolist()
    [0.5, 0.5]
    """
    from matplotlib.colors import to_rgba

    model, x, when = _model_and_tokens(result, x, k, system, "plot_attention_links")
    min_weight = float(min_weight)
    if not 0.0 <= min_weight < 1.0:
        raise ValueError(f"min_weight must lie in [0, 1), got {min_weight}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"plot_attention_links: x must have shape (n, d) with d >= 2, got {x.shape}")
    P = np.asarray(attention_matrix(model, x))
    if P.ndim == 3:
        if not 0 <= head < P.shape[0]:
            raise ValueError(f"head must be in [0, {P.shape[0]}), got {head}")
        P, when = P[head], f" (head {head})" + when
    xy = x[:, :2]
    rows, cols = np.nonzero((P > min_weight) & ~np.eye(len(P), dtype=bool))
    rgba = np.tile(to_rgba(color), (len(rows), 1))
    rgba[:, 3] = P[rows, cols]
    ax = _axes(ax, figsize=(5.0, 5.0))
    ax.add_collection(LineCollection(np.stack([xy[rows], xy[cols]], axis=1), colors=rgba, linewidths=1.5))
    ax.scatter(xy[:, 0], xy[:, 1], s=18, color="k", zorder=3)
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(r"attention links, opacity $P_{ij}$" + when)
    return ax


def plot_attention_ranks(result, *, frames=None, head: int = 0, system: int = 0, rtol: float = 1e-6,
                         cmap: str = "viridis"):
    r"""Panels of the attention matrix at several times, each titled with its numerical rank.

    .. math::

        \operatorname{rank}_{\rm rtol} P(t) = \#\{k : \sigma_k(P(t)) > \text{rtol}\,\sigma_1(P(t))\}

    (:func:`~transformer_pde.clustering.numerical_rank`); in Paper A's Boolean limit with
    d = 1 the rank falls to at most 3 (docs/math.md §1.2), on the sphere to the number of
    clusters.

    Parameters
    ----------
    result : Trajectory
        A run.
    frames : sequence of int, optional
        Saved times, one panel each (default: 4 evenly spread, the first and last included).
    head, system :
        Head of a multi-head model and system of a batch.
    rtol : float
        Relative singular-value threshold of the rank.
    cmap : str
        Colour map (shared scale [0, 1]).

    Returns
    -------
    ndarray of matplotlib.axes.Axes, shape (len(frames),)
        Panel k holds :math:`P(t_k)` as its image, titled ``"t = ..., rank r"``.

    Examples
    --------
    >>> import transformer_pde as tp
    >>> from transformer_pde.plotting import plot_attention_ranks
    >>> dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0), geometry="sphere")
    >>> run = tp.simulate(dyn, np.eye(3), (0.0, 1.0), t_eval=[0.0, 1.0], dt=0.1)
    >>> plot_attention_ranks(run)[0].get_title()
    '$t = 0$, rank 3'
    """
    if not isinstance(result, Trajectory):
        raise TypeError(f"plot_attention_ranks: result must be a Trajectory, got {type(result).__name__}")
    t, xs = _path(result, None, None, "plot_attention_ranks", system)
    if frames is None:
        frames = np.unique(np.rint(np.linspace(0, len(t) - 1, min(4, len(t)))).astype(int))
    frames = [_frame(int(k), len(t), "plot_attention_ranks") for k in frames]
    fig = Figure(figsize=(3.2 * len(frames) + 0.8, 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(frames), squeeze=False)[0])
    image = None
    for ax, k in zip(axes, frames, strict=True):
        P = np.asarray(attention_matrix(result.dynamics, xs[k]))
        if P.ndim == 3:
            if not 0 <= head < P.shape[0]:
                raise ValueError(f"head must be in [0, {P.shape[0]}), got {head}")
            P = P[head]
        rank = clustering.numerical_rank(P, rtol)
        image = ax.imshow(P, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"$t = {t[k]:g}$, rank {rank}")
        ax.set_xlabel("key $j$")
    axes[0].set_ylabel("query $i$")
    fig.colorbar(image, ax=list(axes), label="$P_{ij}$")
    return axes


def plot_covariance_cone(result, *, dims=(0, 1), normalized: bool = True, ax=None, n_rays: int = 24):
    r"""The cone of 2x2 covariance matrices in (a, b, c) coordinates, with a covariance path.

    .. math::

        \Sigma = \begin{pmatrix} a & b \\ b & c\end{pmatrix} \succeq 0 \iff
        a \ge 0,\ c \ge 0,\ ac \ge b^2,

    a circular cone around the axis a = c, b = 0 (isotropic matrices); its boundary
    :math:`ac = b^2` holds the rank-1 matrices :math:`r^2(\cos\psi, \sin\psi)^{\otimes2}`,
    drawn as ``n_rays`` rays and the circle of trace :math:`a + c = \tau`. The path is
    :math:`(a, b, c)(t)` of the block ``dims`` of a Gaussian solution's covariance, divided
    by its trace :math:`a + c` when ``normalized`` (then it lies in the plane a + c = 1 and
    reaches the boundary circle when the shape collapses to rank 1).

    Parameters
    ----------
    result : GaussianTrajectory
        Covariances (nt, d, d), d >= 2.
    dims : (int, int)
        The 2x2 block drawn.
    normalized : bool
        Divide each 2x2 block by its trace.
    ax : 3-D matplotlib axes, optional
        Where to draw; a new figure when None.
    n_rays : int
        Rank-1 rays drawn on the boundary.

    Returns
    -------
    matplotlib.axes.Axes (3-D)
        ``ax.lines[:n_rays]`` the rays, ``ax.lines[n_rays]`` the boundary circle at the
        largest trace :math:`\tau` of the path, ``ax.lines[n_rays + 1]`` the path.

    Examples
    --------
    >>> import transformer_pde as tp
    >>> from transformer_pde.plotting import plot_covariance_cone
    >>> dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0, V=-np.eye(2)), geometry="euclidean")
    >>> g = tp.gaussian_moments(dyn, np.zeros(2), np.diag([1.0, 0.25]), [0.0, 0.5])
    >>> a, b, c = plot_covariance_cone(g, n_rays=4).lines[-1].get_data_3d()
    >>> (a + c).round(12).tolist()
    [1.0, 1.0]
    """
    if not isinstance(result, GaussianTrajectory):
        raise TypeError(f"result must be a GaussianTrajectory, got {type(result).__name__}")
    if result.dim < 2:
        raise ValueError(f"plot_covariance_cone needs d >= 2, got d = {result.dim}")
    i, j = (int(dims[0]), int(dims[1]))
    if not (0 <= i < result.dim and 0 <= j < result.dim and i != j):
        raise ValueError(f"dims must be two different coordinates in [0, {result.dim}), got {dims}")
    n_rays = int(n_rays)
    if n_rays < 1:
        raise ValueError(f"n_rays must be a positive integer, got {n_rays}")
    cov = np.asarray(result.cov, dtype=np.float64)
    a, b, c = cov[:, i, i], cov[:, i, j], cov[:, j, j]
    if normalized:
        trace = a + c
        a, b, c = a / trace, b / trace, c / trace
    tau = float(np.max(a + c))
    ax = _axes(ax, projection="3d", figsize=(6.0, 5.5))
    # rank-1 boundary: tau (cos psi, sin psi)^2 = (tau cos^2, tau cos sin, tau sin^2), psi in [0, pi)
    r = np.linspace(0.0, 1.0, 2)
    for psi in np.pi * np.arange(n_rays) / n_rays:
        ca, sa = np.cos(psi), np.sin(psi)
        ax.plot(tau * r * ca * ca, tau * r * ca * sa, tau * r * sa * sa, color="0.6", linewidth=0.6)
    psi = np.linspace(0.0, np.pi, 181)
    ax.plot(tau * np.cos(psi) ** 2, tau * np.cos(psi) * np.sin(psi), tau * np.sin(psi) ** 2, color="0.4",
            linewidth=0.9)
    ax.plot(a, b, c, color="tab:red", linewidth=1.8, label=r"$\Sigma(t)/\mathrm{tr}$" if normalized
            else r"$\Sigma(t)$")
    ax.scatter([a[0]], [b[0]], [c[0]], color="tab:red", s=15)
    ax.set_xlabel(rf"$a = \Sigma_{{{i + 1}{i + 1}}}$")
    ax.set_ylabel(rf"$b = \Sigma_{{{i + 1}{j + 1}}}$")
    ax.set_zlabel(rf"$c = \Sigma_{{{j + 1}{j + 1}}}$")
    ax.set_title(r"cone $ac \geq b^2$ of $2\times2$ covariances")
    ax.legend(loc="upper left", fontsize="small")
    return ax


def plot_staircase(result, *, ax=None, rtol: float = 0.05, min_length: float = 0.0, normalized: bool = True):
    r"""Draw the energy staircase of a normalised ascent: E against arc length, plateaus shaded.

    .. math::

        s \mapsto \mathsf E_\beta(s)\ \big/\ \tfrac{e^\beta}{2\beta}\quad(\text{normalized}),

    with the plateaus of :func:`~transformer_pde.metastability.energy_staircase` (``rtol``,
    ``min_length``) shaded and labelled by the number of points (clusters) on them.

    Parameters
    ----------
    result : metastability.AscentResult
        A run of :func:`~transformer_pde.metastability.normalized_ascent`.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.
    rtol, min_length : float
        Passed to the staircase.
    normalized : bool
        Divide the energy by its maximum :math:`e^\beta/2\beta` (single cluster).

    Returns
    -------
    matplotlib.axes.Axes
        ``ax.lines[0]`` is the curve (s, E); one shaded patch per plateau, in order.

    Examples
    --------
    >>> from transformer_pde import metastability
    >>> from transformer_pde.plotting import plot_staircase
    >>> th = np.array([0.0, 0.3, 2.0])
    >>> run = metastability.normalized_ascent(np.stack([np.cos(th), np.sin(th)], 1), 1.0, ds=0.05)
    >>> float(plot_staircase(run).lines[0].get_ydata()[-1])
    1.0
    """
    from .metastability import AscentResult

    if not isinstance(result, AscentResult):
        raise TypeError(f"result must be a metastability.AscentResult, got {type(result).__name__}")
    scale = _energy_max(result.beta) if normalized else 1.0
    stairs = result.staircase(rtol=rtol, min_length=min_length)
    ax = _axes(ax)
    ax.plot(result.s, result.energy / scale, color="k", linewidth=1.2)
    for start, length, level, count in zip(stairs.starts, stairs.lengths, stairs.levels, stairs.n_points,
                                           strict=True):
        ax.axvspan(start, start + length, color="tab:blue", alpha=0.15, linewidth=0)
        ax.annotate(f"{count}", (start + 0.5 * length, level / scale), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize="small")
    ax.set_xlabel("arc length $s$")
    ax.set_ylabel(r"$\mathsf{E}_\beta\,/\,(e^\beta/2\beta)$" if normalized else r"$\mathsf{E}_\beta$")
    ax.set_title(rf"energy staircase, $\beta = {result.beta:g}$ (plateaus shaded, points on each)")
    return ax
