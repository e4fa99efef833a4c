"""Figures and movies: each function is checked on what it draws, not only that it runs.

The checks read the drawn artists back (line and collection data, image arrays, patch
geometry, labels, colorbars) and compare them with the package's own quantities; equal
means equal to round-off (the drawn arrays are copies of float64 inputs, atol 1e-12).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import random_sphere  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import transformer_pde as tp  # noqa: E402
from transformer_pde import clustering, plotting  # noqa: E402
from transformer_pde.convergence import ConvergenceStudy  # noqa: E402


def _colorbars(ax) -> int:
    """Colorbars attached to mappables drawn in ``ax``."""
    mappables = list(ax.images) + list(ax.collections)
    return sum(getattr(m, "colorbar", None) is not None for m in mappables)


@pytest.fixture(scope="module")
def circle_run():
    rng = np.random.default_rng(3)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=4.0), geometry="sphere")
    return tp.simulate(dyn, random_sphere(rng, 8, 2), (0.0, 4.0), t_eval=np.linspace(0.0, 4.0, 9),
                       method="rk4", dt=0.1)


@pytest.fixture(scope="module")
def sphere_run():
    rng = np.random.default_rng(4)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0), geometry="sphere")
    return tp.simulate(dyn, random_sphere(rng, 5, 3), (0.0, 1.0), t_eval=np.linspace(0.0, 1.0, 4),
                       method="rk4", dt=0.1)


@pytest.fixture(scope="module")
def circle_sol():
    grid = tp.CircleGrid(32)
    rho0 = tp.Density.from_function(grid, lambda th: np.exp(2.0 * np.cos(th)) + 0.05)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=2.0), geometry="sphere")
    return tp.solve_meanfield(dyn, rho0, (0.0, 1.0), t_eval=np.linspace(0.0, 1.0, 5))


# -- tokens ---------------------------------------------------------------------------------
def test_circle_tokens_draw_the_angles(circle_run):
    ax = circle_run.plot()
    assert ax.get_xlabel() == "$t$" and r"\theta" in ax.get_ylabel()
    (lines,) = ax.collections
    theta = np.mod(np.arctan2(circle_run.x[..., 1], circle_run.x[..., 0]), 2 * np.pi)  # (nt, n)
    keep = np.abs(np.diff(theta, axis=0)) < np.pi  # segments crossing the seam are cut
    segments = np.asarray(lines.get_segments())
    assert len(segments) == keep.sum()
    starts = np.broadcast_to(circle_run.t[:-1, None], theta[:-1].shape)[keep]
    np.testing.assert_allclose(segments[:, 0, 0], starts, atol=1e-12)
    np.testing.assert_allclose(segments[:, 0, 1], theta[:-1][keep], atol=1e-12)
    np.testing.assert_allclose(segments[:, 1, 1], theta[1:][keep], atol=1e-12)
    assert ax.get_ylim() == (0.0, 2 * np.pi)


def test_sphere_tokens_are_labelled_3d_paths(sphere_run):
    ax = sphere_run.plot()
    assert ax.name == "3d"
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_zlabel()) == ("$x_1$", "$x_2$", "$x_3$")
    paths = [line for line in ax.lines]
    assert len(paths) == sphere_run.n_tokens
    for i, line in enumerate(paths):
        xs, ys, zs = line.get_data_3d()
        np.testing.assert_allclose(np.stack([xs, ys, zs], -1), sphere_run.x[:, i], atol=1e-12)
    final = ax.collections[-1]
    np.testing.assert_allclose(np.stack(final._offsets3d, -1), sphere_run.x[-1], atol=1e-12)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["$t = 0$", "final"]
    with pytest.raises(ValueError, match="3-D axes"):
        plotting.plot_sphere_tokens(sphere_run, ax=Figure().add_subplot(1, 1, 1))


def test_euclidean_paths_and_batches(rng):
    t = np.linspace(0.0, 1.0, 3)
    x = rng.normal(size=(3, 4, 2))
    ax = plotting.plot_token_paths(t, x)
    assert len(ax.lines) == 4
    np.testing.assert_array_equal(ax.lines[2].get_xydata(), x[:, 2])
    x1 = rng.normal(size=(3, 2, 1))
    ax = plotting.plot_token_paths(t, x1)
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), x1[:, 1, 0])
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0), geometry="sphere")
    batch = tp.Trajectory(t, random_sphere(rng, 18, 2).reshape(3, 2, 3, 2), dyn, None)  # (nt, B, n, d)
    seg = np.asarray(batch.plot(system=1).collections[0].get_segments())
    np.testing.assert_allclose(seg[:3, 0, 1], plotting.circle_angles(batch.x[0, 1]), atol=1e-12)
    with pytest.raises(ValueError, match="system must be in"):
        batch.plot(system=2)


# -- densities ------------------------------------------------------------------------------
def test_circle_kymograph_has_colorbar_and_the_log_density(circle_sol):
    ax = circle_sol.plot()
    (image,) = ax.images
    rho = circle_sol.density
    np.testing.assert_allclose(image.get_array(), np.log10(np.maximum(rho, 1e-4 * rho.max())).T, atol=1e-12)
    assert image.colorbar is not None and image.colorbar.ax.get_ylabel() == r"$\log_{10}\,\rho$"
    assert image.get_extent() == [0.0, 1.0, 0.0, 2 * np.pi]
    linear = plotting.plot_circle_density(circle_sol, log=False).images[0]
    np.testing.assert_array_equal(linear.get_array(), rho.T)


def test_causal_density_marginal_fibre_and_map():
    grid = tp.CausalCircleGrid(3, 8)
    values = np.arange(24, dtype=float).reshape(3, 8) + 1.0
    rho = tp.Density(grid, values)
    sol = tp.DensityTrajectory(np.array([0.0, 1.0]), np.stack([rho.values, 2 * rho.values]), grid,
                               None, None)
    ax = plotting.plot_circle_density(sol, log=False)
    # the marginal over positions: sum of fibres times ds
    np.testing.assert_allclose(ax.images[0].get_array(), (sol.density.sum(axis=1) * grid.ds).T, atol=1e-12)
    fibre = plotting.plot_circle_density(sol, log=False, position=1).images[0].get_array()
    np.testing.assert_array_equal(fibre, sol.density[:, 1].T)
    ax = plotting.plot_causal_density(sol, k=0)
    np.testing.assert_array_equal(ax.images[0].get_array(), sol.density[0])
    assert _colorbars(ax) == 1 and ax.get_ylabel() == "position $s$"


def test_sphere_density_map_cells_and_values(rng):
    grid = tp.SphereGrid(6)
    rho = tp.Density.from_samples(grid, random_sphere(rng, 400, 3))
    ax = plotting.plot_sphere_density(rho)
    (cells,) = ax.collections
    np.testing.assert_array_equal(cells.get_array(), rho.values)
    assert cells.colorbar is not None
    # each cell is its rectangle in (longitude, colatitude); the areas sum to 4 pi in
    # the measure sin(theta) dtheta dphi, i.e. the rectangles tile [0, 2 pi] x [0, pi]
    boxes = np.array([p.vertices[:4] for p in cells.get_paths()])
    widths = boxes[:, 1, 0] - boxes[:, 0, 0]
    heights = boxes[:, 2, 1] - boxes[:, 1, 1]
    assert np.sum(widths * heights) == pytest.approx(2 * np.pi * np.pi, rel=1e-12)
    i = 7
    np.testing.assert_allclose(boxes[i, 0], [grid.k[i] * grid.dphi[i], grid.theta_edges[grid.ring[i]]],
                               atol=1e-12)
    assert ax.get_ylim() == (np.pi, 0.0)  # north pole on top


def test_cartesian_densities():
    grid = tp.CartesianGrid([(-1.0, 1.0)], [8])
    d1 = tp.DensityTrajectory(np.array([0.0, 0.5, 1.0]), np.ones((3, 8)) / 2.0, grid, None, None)
    ax = d1.plot()
    assert _colorbars(ax) == 1 and ax.get_ylabel() == "$x$"
    np.testing.assert_array_equal(ax.collections[0].get_array(), d1.density.T)
    grid2 = tp.CartesianGrid([(-1.0, 1.0), (0.0, 1.0)], [4, 5])
    values = np.arange(20.0).reshape(4, 5) + 1.0
    d2 = tp.DensityTrajectory(np.array([0.0, 1.0]), np.stack([values, 2 * values]), grid2, None, None)
    ax = d2.plot(k=0)
    np.testing.assert_array_equal(ax.collections[0].get_array(), values.T)
    assert _colorbars(ax) == 1 and ax.get_title() == "$t = 0$"


# -- scalar diagnostics ---------------------------------------------------------------------
def test_cluster_count_and_energy_are_the_package_quantities(circle_run, circle_sol):
    ax = plotting.plot_cluster_count(circle_run)
    plotting.plot_cluster_count(circle_sol, ax=ax)
    particles, peaks = ax.lines
    np.testing.assert_array_equal(particles.get_ydata(), clustering.cluster_count(circle_run))
    np.testing.assert_array_equal(peaks.get_ydata(), clustering.density_peaks(circle_sol))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        r"particles ($\langle x_i, x_j\rangle > 0.9999$)", "density peaks"]
    # base-2 log axis, ticks at the powers of 2 up to the largest count
    assert ax.get_yscale() == ("symlog" if clustering.density_peaks(circle_sol).min() == 0 else "log")
    assert ax.get_yticks()[-1] == 2 ** np.ceil(np.log2(circle_run.n_tokens))
    # a count of 0 is drawn as 0, not clamped: the axis turns symmetric-log
    ax0 = plotting.plot_cluster_count([0.0, 1.0, 2.0], [0, 0, 2])
    np.testing.assert_array_equal(ax0.lines[0].get_ydata(), [0, 0, 2])
    assert ax0.get_yscale() == "symlog" and list(ax0.get_yticks()) == [0, 1, 2]
    ax = plotting.plot_energy(circle_run)
    np.testing.assert_allclose(ax.lines[0].get_ydata(),
                               clustering.interaction_energy(circle_run, 4.0, normalized=True), atol=1e-12)
    assert ax.get_ylabel().startswith(r"$\mathsf{E}_\beta")
    assert ax.get_legend().get_texts()[0].get_text() == r"$\beta = 4$"


def test_convergence_plot_draws_medians_and_the_fit(rng):
    n = np.array([100, 200, 400, 800])
    d = 0.3 * n[:, None, None] ** -0.5 * np.exp(0.1 * rng.normal(size=(4, 3, 1)))
    study = ConvergenceStudy(n, np.array([1.0]), d, np.arange(3), 1.0, -0.5)
    ax = study.plot()
    medians, fit, theory = ax.lines
    np.testing.assert_allclose(medians.get_ydata(), np.median(d[:, :, 0], axis=1), atol=1e-15)
    f = study.fit(0)
    np.testing.assert_allclose(fit.get_ydata(), np.exp(f.intercept) * n**f.slope, rtol=1e-12)
    slope = np.diff(np.log(theory.get_ydata())) / np.diff(np.log(n))
    np.testing.assert_allclose(slope, -0.5, atol=1e-12)
    assert ax.get_ylabel().startswith("$W_{1}$")
    assert f"{f.slope:+.2f}" in ax.get_legend().get_texts()[1].get_text()


def test_covariance_ellipses_have_the_eigen_axes():
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0, V=-np.eye(2)), geometry="euclidean")
    cov0 = np.array([[1.0, 0.3], [0.3, 0.5]])
    g = tp.gaussian_moments(dyn, np.array([0.5, -0.2]), cov0, np.linspace(0.0, 1.0, 5))
    ax = g.plot(n_ellipses=3, n_std=2.0)
    assert len(ax.patches) == 3 and _colorbars(ax) == 0 and len(ax.figure.axes) == 2  # colorbar axes
    for e, k in zip(ax.patches, [0, 2, 4], strict=True):
        w, v = np.linalg.eigh(g.cov[k])
        assert e.width == pytest.approx(4.0 * np.sqrt(w[1]), rel=1e-12)
        assert e.height == pytest.approx(4.0 * np.sqrt(w[0]), rel=1e-12)
        np.testing.assert_allclose(e.center, g.mean[k], atol=1e-12)
        major = np.array([np.cos(np.radians(e.angle)), np.sin(np.radians(e.angle))])
        assert abs(major @ v[:, 1]) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(ax.lines[0].get_xydata(), g.mean)
    dyn1 = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0, V=-np.eye(1)), geometry="euclidean")
    g1 = tp.gaussian_moments(dyn1, np.zeros(1), np.eye(1), [0.0, 1.0])
    ax1 = g1.plot()
    np.testing.assert_array_equal(ax1.lines[0].get_ydata(), g1.mean[:, 0])


def test_phase_diagram_attention_matrix_and_table(circle_run):
    x, y = np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0])
    values = np.arange(6.0).reshape(2, 3)
    ax = plotting.plot_phase_diagram(x, y, values, label="fraction")
    mesh = ax.collections[0]
    np.testing.assert_array_equal(mesh.get_array(), values)
    np.testing.assert_allclose(mesh.get_coordinates()[0, :, 0], [-0.5, 0.5, 1.5, 2.5], atol=1e-15)
    assert mesh.colorbar.ax.get_ylabel() == "fraction" and ax.get_ylabel() == r"$\beta$"
    with pytest.raises(ValueError, match="values must have shape"):
        plotting.plot_phase_diagram(x, y, values.T)

    ax = plotting.plot_attention_matrix(circle_run, k=2)
    P = clustering.attention_matrix(circle_run.dynamics, circle_run.x[2])
    np.testing.assert_allclose(ax.images[0].get_array(), P, atol=1e-15)
    assert ax.images[0].colorbar is not None and ax.get_title() == "attention matrix at $t = 1$"
    ax = plotting.plot_attention_matrix(circle_run, k=-1, sort=True)
    x = circle_run.x[-1]
    order = np.lexsort((plotting.circle_angles(x), clustering.cluster_labels(x)))
    P = clustering.attention_matrix(circle_run.dynamics, x)
    np.testing.assert_allclose(ax.images[0].get_array(), P[np.ix_(order, order)], atol=1e-15)

    ax = plotting.plot_table([("beta", 4.0), ("n", 32)])
    table = ax.tables[0]
    assert [table[r, c].get_text().get_text() for r in (1, 2) for c in (0, 1)] == ["beta", "4", "n", "32"]


# -- movies ---------------------------------------------------------------------------------
def test_gif_has_one_frame_per_saved_time(tmp_path, circle_run, sphere_run, circle_sol):
    from PIL import Image

    for result, frames, expect in [(circle_sol, None, len(circle_sol.t)), (sphere_run, 2, 2),
                                   (circle_run, [0, 2, -1], 3)]:
        path = tp.movie(result, tmp_path / "run.gif", frames=frames, dpi=20, figsize=(3, 3))
        with Image.open(path) as im:
            assert im.n_frames == expect
    assert [p.name for p in tmp_path.iterdir()] == ["run.gif"]  # no temporary file left


def test_movie_refuses_what_it_cannot_write(tmp_path, circle_run, monkeypatch):
    from matplotlib import animation

    monkeypatch.setattr(animation.FFMpegWriter, "isAvailable", classmethod(lambda cls: False))
    with pytest.raises(RuntimeError, match="needs ffmpeg on PATH"):
        tp.movie(circle_run, tmp_path / "run.mp4")
    with pytest.raises(ValueError, match="must end in .gif"):
        tp.movie(circle_run, tmp_path / "run.avi")
    with pytest.raises(TypeError, match="Trajectory or a DensityTrajectory"):
        tp.movie(np.zeros((3, 2, 2)), tmp_path / "run.gif")
    assert list(tmp_path.iterdir()) == []


# -- the demo -------------------------------------------------------------------------------
def test_demo_figure_heat_map_colorbar_and_unclamped_peaks():
    t = np.linspace(0.0, 1.0, 3)
    run = {"t": t, "clusters": [4, 2, 1], "energy": [0.5, 0.6, 0.7], "beta": 1.0, "title": "run"}
    circle = {**run, "x": np.tile(np.array([[1.0, 0.0], [0.0, 1.0]]), (3, 1, 1))}
    sphere = {**run, "x": np.tile(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), (3, 1, 1))}
    pde = {"t": t, "angles": np.linspace(0.1, 6.2, 8), "density": np.ones((3, 8)) / (2 * np.pi),
           "peaks": np.array([0, 0, 2]), "title": "pde"}
    fig = plotting.demo_figure(circle, sphere, pde)
    heat = [ax for ax in fig.axes if ax.images][0]
    assert heat.images[0].colorbar is not None
    counts = [ax for ax in fig.axes if ax.get_title() == "number of clusters"][0]
    peaks = [line for line in counts.lines if "density peaks" in line.get_label()][0]
    np.testing.assert_array_equal(peaks.get_ydata(), [0, 0, 2])
    sphere_ax = [ax for ax in fig.axes if ax.name == "3d"][0]
    assert sphere_ax.get_zlabel() == "$x_3$"


# -- figures of the published studies ------------------------------------------------------
def test_convex_hulls_are_those_of_the_rescaled_tokens(rng):
    # Paper A with V = I, Q = K = I in R^2: z = e^{-t} x has a non-increasing hull (p:noninc)
    from scipy.spatial import ConvexHull

    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0), geometry="euclidean")
    x0 = rng.uniform(-2.0, 2.0, size=(12, 2))
    run = tp.simulate(dyn, x0, (0.0, 2.0), t_eval=np.linspace(0.0, 2.0, 5), method="rk4", dt=0.02)
    ax = plotting.plot_convex_hulls(run)
    assert len(ax.lines) == 5 and ax.get_xlabel() == "$z_{1}$"
    areas = []
    for line, t, x in zip(ax.lines, run.t, run.x, strict=True):
        z = np.exp(-t) * x
        hull = ConvexHull(z)
        ring = line.get_xydata()
        np.testing.assert_allclose(ring[:-1], z[hull.vertices], atol=1e-12)
        np.testing.assert_allclose(ring[-1], ring[0], atol=0)
        areas.append(hull.volume)
    # the hull shrinks: each later hull is inside the earlier ones (areas, to RK4 error)
    assert np.all(np.diff(areas) < 1e-9)
    np.testing.assert_allclose(np.asarray(ax.collections[-1].get_offsets()), np.exp(-2.0) * run.x[-1],
                               atol=1e-12)
    plain = plotting.plot_convex_hulls(run.t, run.x, frames=[0], rescale=False)
    np.testing.assert_allclose(plain.lines[0].get_xydata()[:-1], x0[ConvexHull(x0).vertices], atol=1e-12)
    with pytest.raises(TypeError, match="rescale"):
        plotting.plot_convex_hulls(run.t, run.x)
    two = tp.TokenDynamics(tp.MultiHeadAttention([tp.SoftmaxAttention(1.0)] * 2), geometry="euclidean")
    with pytest.raises(TypeError, match="one value matrix"):
        plotting.plot_convex_hulls(tp.simulate(two, x0, (0.0, 0.1), dt=0.05))
    line = np.stack([np.linspace(0, 1, 4), np.zeros(4)], 1)[None]
    with pytest.raises(ValueError, match="collinear"):
        plotting.plot_convex_hulls([0.0], line, rescale=False)


def test_attention_links_carry_the_weights(circle_run):
    ax = plotting.plot_attention_links(circle_run, k=0, min_weight=0.0)
    P = clustering.attention_matrix(circle_run.dynamics, circle_run.x[0])
    links = ax.collections[0]
    segments = np.asarray(links.get_segments())
    n = circle_run.n_tokens
    assert len(segments) == n * (n - 1)  # every i != j at min_weight 0 (P > 0)
    rows, cols = np.nonzero(~np.eye(n, dtype=bool))
    np.testing.assert_allclose(segments[:, 0], circle_run.x[0][rows], atol=1e-12)
    np.testing.assert_allclose(segments[:, 1], circle_run.x[0][cols], atol=1e-12)
    np.testing.assert_allclose(links.get_colors()[:, 3], P[rows, cols], atol=1e-12)
    # a threshold leaves out the faint links
    faint = plotting.plot_attention_links(circle_run, k=0, min_weight=0.1)
    assert len(faint.collections[0].get_segments()) == np.sum((P > 0.1) & ~np.eye(n, dtype=bool))
    with pytest.raises(ValueError, match="min_weight"):
        plotting.plot_attention_links(circle_run, min_weight=1.0)


def test_attention_rank_panels(circle_run):
    axes = plotting.plot_attention_ranks(circle_run, frames=[0, 4, -1])
    assert len(axes) == 3
    for ax, k in zip(axes, [0, 4, 8], strict=True):
        P = clustering.attention_matrix(circle_run.dynamics, circle_run.x[k])
        np.testing.assert_allclose(ax.images[0].get_array(), P, atol=1e-12)
        rank = clustering.numerical_rank(P)
        assert ax.get_title() == f"$t = {circle_run.t[k]:g}$, rank {rank}"
    assert _colorbars(axes[-1]) + _colorbars(axes[0]) >= 1


def test_covariance_cone_draws_the_psd_boundary_and_the_path():
    # softmax, Q = K = I, V = -I: Sigma' = -2 Sigma^2, the shape tends to isotropic
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0, V=-np.eye(3)), geometry="euclidean")
    cov0 = np.array([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.2]])
    g = tp.gaussian_moments(dyn, np.zeros(3), cov0, np.linspace(0.0, 2.0, 6))
    ax = plotting.plot_covariance_cone(g, n_rays=8)
    assert ax.name == "3d" and len(ax.lines) == 10
    for line in ax.lines[:9]:  # rays and circle: rank-1 matrices, a c = b^2, a, c >= 0
        a, b, c = line.get_data_3d()
        np.testing.assert_allclose(a * c, b * b, atol=1e-12)
        assert np.all(a >= 0) and np.all(c >= 0)
    a, b, c = ax.lines[9].get_data_3d()
    block = g.cov[:, :2, :2]
    trace = block[:, 0, 0] + block[:, 1, 1]
    np.testing.assert_allclose(a, block[:, 0, 0] / trace, atol=1e-12)
    np.testing.assert_allclose(b, block[:, 0, 1] / trace, atol=1e-12)
    np.testing.assert_allclose(c, block[:, 1, 1] / trace, atol=1e-12)
    assert np.all(a * c - b * b > 0)  # inside the cone: positive definite
    raw = plotting.plot_covariance_cone(g, dims=(1, 2), normalized=False, n_rays=2)
    np.testing.assert_allclose(raw.lines[-1].get_data_3d()[2], g.cov[:, 2, 2], atol=1e-12)
    with pytest.raises(ValueError, match="dims"):
        plotting.plot_covariance_cone(g, dims=(1, 1))


def test_staircase_shades_the_plateaus(rng):
    from transformer_pde import metastability

    theta = np.repeat(2 * np.pi * np.arange(3) / 3, 4) + rng.normal(0.0, 1e-2, 12)
    run = metastability.normalized_ascent(np.stack([np.cos(theta), np.sin(theta)], 1), 6.0, ds=0.02)
    ax = plotting.plot_staircase(run, min_length=0.05)
    e_max = np.exp(6.0) / 12.0
    np.testing.assert_allclose(ax.lines[0].get_xdata(), run.s, atol=0)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), run.energy / e_max, rtol=1e-15)
    stairs = run.staircase(min_length=0.05)
    assert len(ax.patches) == len(stairs.levels) >= 1
    for patch, start, length in zip(ax.patches, stairs.starts, stairs.lengths, strict=True):
        # axvspan draws a Rectangle in data x (axes y)
        assert (patch.get_x(), patch.get_width()) == pytest.approx((start, length), abs=1e-12)
    assert [t.get_text() for t in ax.texts] == [str(c) for c in stairs.n_points]
