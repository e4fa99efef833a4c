r"""Matplotlib figures of token trajectories.

This is the only module of the package that imports matplotlib; the rest of the package
imports it lazily (inside functions), so ``import transformer_pde`` never loads
matplotlib. Figures are built with :class:`matplotlib.figure.Figure` directly, without
``pyplot``: no display, no global state, no backend to choose, and
``fig.savefig(path)`` writes a PNG anywhere (servers, CI).

Conventions: angles in radians on :math:`[0, 2\pi)`; arrays of tokens have shape
(nt, n, d) with time first, as :attr:`transformer_pde.Trajectory.x`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

__all__ = [
    "circle_angles",
    "plot_circle_angles",
    "plot_sphere_tokens",
    "plot_series",
    "plot_circle_density",
    "plot_final_comparison",
    "plot_convergence",
    "demo_figure",
]


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
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] != 2:
        raise ValueError(f"x must have last dimension 2 (points of the plane), got shape {x.shape}")
    return np.mod(np.arctan2(x[..., 1], x[..., 0]), 2.0 * np.pi)


def _check_path(t, x, d: int | None, name: str):
    t = np.asarray(t, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if t.ndim != 1 or x.ndim != 3 or x.shape[0] != t.shape[0]:
        raise ValueError(
            f"{name}: t must have shape (nt,) and x shape (nt, n, d), got t {t.shape} and x {x.shape}"
        )
    if d is not None and x.shape[2] != d:
        raise ValueError(f"{name}: x must have shape (nt, n, {d}), got {x.shape}")
    return t, x


def plot_circle_angles(ax, t, x, *, cmap: str = "hsv", linewidth: float = 0.8):
    r"""Draw the angle of every token against time, one line per token.

    Lines are cut where a token crosses the seam :math:`0 \equiv 2\pi` (no vertical
    jumps) and coloured by the token's initial angle with a cyclic colour map, so that
    tokens merging into a cluster show up as lines of several colours joining.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    t : array_like, shape (nt,)
        Times.
    x : array_like, shape (nt, n, 2)
        Tokens on the circle.
    cmap : str
        A cyclic matplotlib colour map.
    linewidth : float
        Line width.

    Returns
    -------
    matplotlib.collections.LineCollection
        The lines.
    """
    t, x = _check_path(t, x, 2, "plot_circle_angles")
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
    ax.set_yticks(np.linspace(0.0, 2.0 * np.pi, 5))
    ax.set_yticklabels(["0", r"$\pi/2$", r"$\pi$", r"$3\pi/2$", r"$2\pi$"])
    ax.set_xlabel("t")
    ax.set_ylabel(r"angle $\theta_i(t)$ [rad]")
    return lines


def plot_sphere_tokens(ax, x, *, paths: bool = True, linewidth: float = 0.6):
    """Draw tokens on the 2-sphere: initial points, trajectories and final points.

    Parameters
    ----------
    ax : mpl_toolkits.mplot3d.axes3d.Axes3D
        A 3-D axes (``fig.add_subplot(projection="3d")``).
    x : array_like, shape (nt, n, 3)
        Tokens on the unit sphere at nt times.
    paths : bool
        Draw every token's trajectory.
    linewidth : float
        Width of the trajectories.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"x must have shape (nt, n, 3), got {x.shape}")
    u, v = np.meshgrid(np.linspace(0.0, 2.0 * np.pi, 25), np.linspace(0.0, np.pi, 13))
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v),
                      color="0.85", linewidth=0.4)
    if paths:
        for i in range(x.shape[1]):
            ax.plot(x[:, i, 0], x[:, i, 1], x[:, i, 2], color="tab:blue", alpha=0.5,
                    linewidth=linewidth)
    ax.scatter(*x[0].T, s=8, color="0.4", depthshade=False, label="t = 0")
    ax.scatter(*x[-1].T, s=40, color="tab:red", depthshade=False, label="final")
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_zlim(-1, 1)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xticks([-1, 0, 1])
    ax.set_yticks([-1, 0, 1])
    ax.set_zticks([-1, 0, 1])
    ax.legend(loc="upper left", fontsize="small")


def plot_series(ax, t, series: Mapping[str, Sequence[float]], *, ylabel: str = "",
                step: bool = False, logy: bool = False) -> None:
    """Draw one or more scalar time series on common axes.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    t : array_like, shape (nt,) or mapping of such arrays
        Times shared by all series, or one array per label.
    series : mapping of str to array_like, shape (nt,)
        Label -> values.
    ylabel : str
        Label of the vertical axis.
    step : bool
        Draw piecewise-constant steps (for counts).
    logy : bool
        Logarithmic vertical axis.
    """
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
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("t")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def plot_circle_density(ax, t, angles, density, *, cmap: str = "magma"):
    r"""Draw a density on the circle against time as an image (angle vertical).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    t : array_like, shape (nt,)
        Times.
    angles : array_like, shape (M,)
        Cell-centre angles in radians on :math:`[0, 2\pi)`.
    density : array_like, shape (nt, M)
        Density values (w.r.t. angle); drawn on a log scale so near-empty regions show.
    """
    t = np.asarray(t, dtype=np.float64)
    density = np.asarray(density, dtype=np.float64)
    if density.shape != (len(t), len(angles)):
        raise ValueError(f"density must have shape (nt, M) = {(len(t), len(angles))}, got {density.shape}")
    floor = 1e-4 * density.max()
    image = ax.imshow(np.log10(np.maximum(density, floor)).T, origin="lower", aspect="auto",
                      extent=(t[0], t[-1], 0.0, 2.0 * np.pi), cmap=cmap, interpolation="nearest")
    ax.set_yticks(np.linspace(0.0, 2.0 * np.pi, 5))
    ax.set_yticklabels(["0", r"$\pi/2$", r"$\pi$", r"$3\pi/2$", r"$2\pi$"])
    ax.set_xlabel("t")
    ax.set_ylabel(r"angle $\theta$ [rad]")
    return image


def plot_final_comparison(ax, x_end, angles, density_end, density_start=None, t_end=None):
    """Histogram of the final particle angles against the final mean-field density.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    x_end : array_like, shape (n, 2)
        Final tokens on the circle.
    angles : array_like, shape (M,)
        Cell-centre angles of the density.
    density_end, density_start : array_like, shape (M,)
        Final (and optionally initial) mean-field density; log scale.
    t_end : float, optional
        The final time, for the legend.
    """
    theta = circle_angles(x_end)
    hist, _ = np.histogram(theta, bins=len(angles), range=(0.0, 2.0 * np.pi), density=True)
    when = "" if t_end is None else f" at t={t_end:g}"
    ax.stairs(hist, np.linspace(0.0, 2.0 * np.pi, len(angles) + 1), fill=True, color="tab:blue",
              alpha=0.6, label=f"particles{when} (histogram)")
    ax.plot(angles, density_end, color="k", linewidth=1.0, label=f"mean-field density{when}")
    if density_start is not None:
        ax.plot(angles, density_start, color="0.5", linewidth=0.8, linestyle="--",
                label="mean-field density at t=0")
    ax.set_yscale("log")
    ax.set_ylim(1e-3, 3.0 * max(hist.max(), float(np.max(density_end))))
    ax.set_xlim(0.0, 2.0 * np.pi)
    ax.set_xlabel(r"angle $\theta$ [rad]")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    ax.set_title("final state: particles and mean field")


def plot_convergence(ax, study, *, unit: str = "rad") -> None:
    r"""Log-log plot of a :class:`~transformer_pde.convergence.ConvergenceStudy`.

    For each time: the median distance over seeds against n (markers), the fitted power
    law (line, slope in the legend), and the theoretical slope (dashed, through the first
    median).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    study : ConvergenceStudy
        Distances of shape (k, s, m) for n (k,), seeds (s,) and times (m,).
    unit : str
        Unit of the distance, for the axis label.
    """
    n = np.asarray(study.n, dtype=np.float64)
    for k, t in enumerate(study.t):
        med = np.median(study.distance[:, :, k], axis=1)
        (dots,) = ax.loglog(n, med, "o", label=f"t={t:g}: median over {study.distance.shape[1]} seeds")
        fit = study.fit(k)
        ax.loglog(n, np.exp(fit.intercept) * n**fit.slope, "-", color=dots.get_color(),
                  label=f"t={t:g}: fit, slope {fit.slope:+.2f} [{fit.low:+.2f}, {fit.high:+.2f}]")
    first = np.median(study.distance[0, :, 0])
    ax.loglog(n, first * (n / n[0]) ** study.expected_slope, "k--",
              label=f"theory: slope {study.expected_slope:+.2f}")
    ax.set_xlabel("tokens n")
    ax.set_ylabel(f"$W_{{{study.p:g}}}$(particles, PDE) [{unit}]")
    ax.legend(fontsize="small")


def demo_figure(circle: Mapping, sphere: Mapping, pde: Mapping | None = None) -> Figure:
    r"""The demo's figure.

    Top: angles of the circle tokens against time (:func:`plot_circle_angles`), the
    circle's mean-field density against time with the same tokens drawn over it
    (:func:`plot_circle_density`, when ``pde`` is given), and the sphere tokens in 3-D
    (:func:`plot_sphere_tokens`). Bottom: the number of clusters (and of density peaks)
    and the interaction energy divided by its maximum :math:`e^\beta/(2\beta)` (the
    value of a single cluster, docs/math.md §2.3), against time.

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
    """
    cols = 3 if pde is not None else 2
    fig = Figure(figsize=(6 * cols, 9.5), layout="constrained")
    ax_c = fig.add_subplot(2, cols, 1)
    plot_circle_angles(ax_c, circle["t"], circle["x"])
    ax_c.set_title(circle["title"])
    if pde is not None:
        ax_p = fig.add_subplot(2, cols, 2)
        plot_circle_density(ax_p, pde["t"], pde["angles"], pde["density"])
        theta = circle_angles(circle["x"])
        for i in range(theta.shape[1]):  # the particles over the density, wraps cut
            path = np.where(np.abs(np.diff(theta[:, i], prepend=theta[0, i])) > np.pi, np.nan,
                            theta[:, i])
            ax_p.plot(circle["t"], path, color="white", linewidth=0.3, alpha=0.6)
        ax_p.set_title(pde["title"])
    ax_s = fig.add_subplot(2, cols, cols, projection="3d")
    plot_sphere_tokens(ax_s, sphere["x"])
    ax_s.set_title(sphere["title"])
    label_c, label_s = rf"circle, $\beta$={circle['beta']:g}", rf"sphere, $\beta$={sphere['beta']:g}"
    times = {label_c: circle["t"], label_s: sphere["t"]}
    counts = {label_c: circle["clusters"], label_s: sphere["clusters"]}
    if pde is not None:
        label_p = "circle PDE: density peaks"
        times[label_p] = pde["t"]
        counts[label_p] = np.maximum(pde["peaks"], 1)
    if pde is not None:
        plot_final_comparison(fig.add_subplot(2, cols, cols + 1), circle["x"][-1], pde["angles"],
                              pde["density"][-1], pde["density"][0], circle["t"][-1])
    ax_k = fig.add_subplot(2, cols, cols + 2 if pde is not None else cols + 1)
    plot_series(ax_k, times, counts,
                ylabel=r"clusters (groups with $\langle x_i,x_j\rangle > 0.9999$)",
                step=True, logy=True)
    ax_k.set_title("number of clusters")
    ax_e = fig.add_subplot(2, cols, 2 * cols)
    plot_series(
        ax_e, times,
        {label_c: np.asarray(circle["energy"]) / _energy_max(circle["beta"]),
         label_s: np.asarray(sphere["energy"]) / _energy_max(sphere["beta"])},
        ylabel=r"$E_\beta(t)\,/\,(e^\beta/2\beta)$",
    )
    ax_e.set_title(r"interaction energy "
                   r"$E_\beta = \frac{1}{2\beta n^2}\sum_{ij} e^{\beta\langle x_i,x_j\rangle}$")
    return fig


def _energy_max(beta: float) -> float:
    return float(np.exp(beta) / (2.0 * beta))
