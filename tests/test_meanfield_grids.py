"""Mean-field grids and densities: geometry, limited reconstruction, Density constructors,
moments, sampling and input checks (issue 3, items 1 and 2).

Every number is checked against geometry or a closed form computed here: cell volumes
against the measure of the domain, face normals against the tangent space, moments
against the Gaussian / von Mises values, sample histograms against the density.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ive

from transformer_pde.meanfield import CartesianGrid, CausalCircleGrid, CircleGrid, Density
from transformer_pde.meanfield.grids import mc_slopes

EPS = np.finfo(float).eps


def _cartesian(dim, boundary="outflow", shape=None):
    if dim == 1:
        return CartesianGrid([(-1.5, 2.5)], shape or [13], boundary=boundary)
    return CartesianGrid([(-1.0, 2.0), (0.5, 2.5)], shape or [9, 7], boundary=boundary)


GRIDS = {
    "circle": lambda: CircleGrid(37),
    "causal": lambda: CausalCircleGrid(5, 24),
    "cart1-outflow": lambda: _cartesian(1),
    "cart1-zeroflux": lambda: _cartesian(1, "zero-flux"),
    "cart2-outflow": lambda: _cartesian(2),
    "cart2-zeroflux": lambda: _cartesian(2, "zero-flux"),
}


def _domain_measure(name):
    """Length/area of the domain: 2 pi for the circle; |[0,1] x S^1| = 2 pi for the
    causal (s, theta) grid; the box volume for a Cartesian grid."""
    if name in ("circle", "causal"):
        return 2.0 * np.pi
    if name.startswith("cart1"):
        return 4.0
    return 3.0 * 2.0


# -- geometry ------------------------------------------------------------------------
@pytest.mark.parametrize("name", GRIDS)
def test_volumes_sum_to_the_domain_measure(name):
    grid = GRIDS[name]()
    assert grid.volumes.shape == grid.shape
    assert np.all(grid.volumes > 0)
    # a sum of ~100 equal positive terms: a few ulps of the total
    assert grid.volumes.sum() == pytest.approx(_domain_measure(name), rel=1e-14)
    assert grid.size == np.prod(grid.shape)
    assert np.asarray(grid.centers).shape == grid.shape + (grid.dim,)


@pytest.mark.parametrize("name", GRIDS)
def test_face_normals_unit_and_tangent(name):
    grid = GRIDS[name]()
    f = grid.faces
    n_faces = len(f.areas)
    assert f.points.shape == f.normals.shape == (n_faces, grid.dim)
    assert f.left.shape == f.right.shape == (n_faces,)
    # unit vectors built from cos/sin or 0/1 entries: round-off only
    assert np.allclose(np.linalg.norm(f.normals, axis=1), 1.0, rtol=0, atol=4 * EPS)
    assert np.all(f.areas > 0)
    if grid.geometry == "sphere":
        # face points on the unit circle, normals tangent there (<n, x> = 0)
        assert np.allclose(np.linalg.norm(f.points, axis=1), 1.0, rtol=0, atol=4 * EPS)
        assert np.max(np.abs(np.einsum("fd,fd->f", f.normals, f.points))) < 4 * EPS


@pytest.mark.parametrize("name", GRIDS)
def test_interior_faces_separate_neighbouring_cells(name):
    """left != right, both valid cells, the face is the midpoint of their centres (the
    normalised chord midpoint on the circle), the centres are one cell apart, and the
    normal points from left to right."""
    grid = GRIDS[name]()
    f = grid.faces
    c = np.asarray(grid.centers).reshape(-1, grid.dim)
    inner = f.right >= 0
    li, ri = f.left[inner], f.right[inner]
    assert np.all(li != ri)
    assert np.all((li >= 0) & (li < grid.size) & (ri < grid.size))
    # no two faces between the same pair of cells
    pairs = {tuple(sorted(p)) for p in zip(li.tolist(), ri.tolist(), strict=True)}
    assert len(pairs) == len(li)
    mid = 0.5 * (c[li] + c[ri])
    step = c[ri] - c[li]
    if grid.geometry == "sphere":
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        h = grid.circle.h if isinstance(grid, CausalCircleGrid) else grid.h
        # neighbours: centres one arc h apart, chord 2 sin(h/2)
        assert np.allclose(np.linalg.norm(step, axis=1), 2 * np.sin(h / 2), rtol=1e-14, atol=0)
        if isinstance(grid, CausalCircleGrid):
            # transport in theta only: a face never joins two fibres
            assert np.all(li // grid.n_cells == ri // grid.n_cells)
    else:
        dist = np.linalg.norm(step, axis=1)
        axis = np.argmax(np.abs(f.normals[inner]), axis=1)
        # neighbours along one axis: centres exactly h apart along the normal's axis
        assert np.allclose(dist, grid.h[axis], rtol=1e-14, atol=0)
    # coordinates of order 1: a few ulps
    assert np.allclose(f.points[inner], mid, rtol=0, atol=1e-14)
    assert np.all(np.einsum("fd,fd->f", step, f.normals[inner]) > 0)


def test_circle_faces_cells_and_angles():
    grid = CircleGrid(16)
    h = 2 * np.pi / 16
    assert grid.h == pytest.approx(h, rel=1e-15)  # one division
    assert np.allclose(grid.angles, (np.arange(16) + 0.5) * h, rtol=0, atol=1e-15)
    # every cell is the left side of one face and the right side of another
    assert np.array_equal(np.sort(grid.faces.left), np.arange(16))
    assert np.array_equal(np.sort(grid.faces.right), np.arange(16))
    face_angles = np.arctan2(grid.faces.points[:, 1], grid.faces.points[:, 0]) % (2 * np.pi)
    assert np.allclose(face_angles, np.arange(16) * h, rtol=0, atol=1e-14)  # round-off of arctan2
    assert grid.coordinates is grid.angles
    assert repr(grid) == "CircleGrid(16)"


@pytest.mark.parametrize("dim", [1, 2])
def test_cartesian_cells_are_closed(dim):
    """Outflow: each cell has 2 d faces and sum_f +-|f| n_f = 0 (a closed box), the
    boundary faces point outwards and their areas add up to the box's boundary measure."""
    grid = _cartesian(dim)
    f = grid.faces
    closure = np.zeros((grid.size, dim))
    count = np.zeros(grid.size, dtype=int)
    np.add.at(closure, f.left, f.areas[:, None] * f.normals)
    np.add.at(count, f.left, 1)
    inner = f.right >= 0
    np.add.at(closure, f.right[inner], -f.areas[inner, None] * f.normals[inner])
    np.add.at(count, f.right[inner], 1)
    assert np.all(count == 2 * dim)
    # sums of a few O(1) areas: round-off
    assert np.max(np.abs(closure)) < 1e-14
    wall = ~inner
    c = np.asarray(grid.centers).reshape(-1, dim)
    assert np.all(np.einsum("fd,fd->f", f.points[wall] - c[f.left[wall]], f.normals[wall]) > 0)
    boundary_measure = 2 if dim == 1 else 2 * (3.0 + 2.0)
    assert f.areas[wall].sum() == pytest.approx(boundary_measure, rel=1e-14)  # exact sums


@pytest.mark.parametrize("dim", [1, 2])
def test_cartesian_zero_flux_has_no_wall_faces(dim):
    grid = _cartesian(dim, "zero-flux")
    assert np.all(grid.faces.right >= 0)
    n_interior = sum((m - 1) * grid.size // m for m in grid.shape)
    assert len(grid.faces.areas) == n_interior


def test_causal_grid_layout():
    grid = CausalCircleGrid(4, 8)
    assert grid.shape == (4, 8)
    assert np.allclose(grid.positions, [0.25, 0.5, 0.75, 1.0], rtol=0, atol=1e-15)
    assert np.allclose(grid.faces.areas, 0.25, rtol=0, atol=0)  # exactly ds
    s, theta = grid.coordinates
    assert s.shape == theta.shape == (4, 8)
    assert np.allclose(s[:, 0], [0.125, 0.375, 0.625, 0.875], rtol=0, atol=1e-15)
    assert np.allclose(theta[2], grid.circle.angles, rtol=0, atol=0)


# -- reconstruction -------------------------------------------------------------------
@pytest.mark.parametrize("name", GRIDS)
def test_reconstruction_stays_between_neighbours(name, rng):
    """MC-limited face values lie between the two cell values at the face, so they are
    nonnegative when the cells are (the positivity argument of the scheme)."""
    grid = GRIDS[name]()
    rho = rng.random(grid.shape) ** 3  # rough, nonnegative, with near-zero cells
    rho.flat[::5] = 0.0
    lo, hi = grid.reconstruct(rho)
    f = grid.faces
    flat = rho.ravel()
    inner = f.right >= 0
    a, b = flat[f.left[inner]], flat[f.right[inner]]
    low, high = np.minimum(a, b), np.maximum(a, b)
    for side in (lo[inner], hi[inner]):
        # a + s/2 with |s| <= 2 min(|D-|, |D+|): one rounding of a value of size 1
        assert np.all(side >= low - 2 * EPS) and np.all(side <= high + 2 * EPS)
        assert np.all(side >= 0.0)
    if (~inner).any():  # outflow walls: first order inside (the wall cell's value), nothing enters
        assert np.array_equal(lo[~inner], flat[f.left[~inner]])
        assert np.all(hi[~inner] == 0.0)


def test_mc_limiter_closed_form():
    minus = np.array([1.0, 1.0, 1.0, -2.0, 0.0, 3.0])
    plus = np.array([1.0, 3.0, 0.2, -1.0, 1.0, -1.0])
    # central 1, min(2, 2 * 1) = 1 | central 2, 2 min = 2 | 0.6 vs 0.4 | -1.5 vs 2 | 0 | sign change
    expected = np.array([1.0, 2.0, 0.4, -1.5, 0.0, 0.0])
    assert np.allclose(mc_slopes(minus, plus), expected, rtol=0, atol=1e-15)


def test_circle_reconstruction_exact_for_linear_data():
    """Linear cell values c -> 1 + 0.5 c (a jump at the wrap): away from the wrap every
    face gets the value of the line at the face from both sides."""
    m = 20
    grid = CircleGrid(m)
    rho = 1.0 + 0.5 * np.arange(m)
    lo, hi = grid.reconstruct(rho)
    faces = np.arange(2, m - 1)  # face f sits between cells f-1 and f; stencils f-2 .. f+1
    exact = 1.0 + 0.5 * (faces - 0.5)
    assert np.allclose(lo[faces], exact, rtol=0, atol=1e-14)  # values of order 10: round-off
    assert np.allclose(hi[faces], exact, rtol=0, atol=1e-14)


@pytest.mark.parametrize("boundary", ["outflow", "zero-flux"])
def test_cartesian_reconstruction_exact_for_linear_data(boundary):
    """rho = 3 + x - 2 y: every interior face whose two cells are not wall cells along the
    face's axis gets the exact value of the plane at the face midpoint."""
    grid = _cartesian(2, boundary, shape=[8, 9])
    xy = grid.centers
    rho = 5.0 + xy[..., 0] - 2.0 * xy[..., 1]
    lo, hi = grid.reconstruct(rho)
    f = grid.faces
    exact = 5.0 + f.points[:, 0] - 2.0 * f.points[:, 1]
    axis = np.argmax(np.abs(f.normals), axis=1)
    idx = np.stack(np.unravel_index(f.left, grid.shape), axis=1)[np.arange(len(axis)), axis]
    m = np.array(grid.shape)[axis]
    ok = (f.right >= 0) & (idx >= 1) & (idx <= m - 3)  # left cell and right cell both not at a wall
    assert ok.sum() > 0
    assert np.allclose(lo[ok], exact[ok], rtol=0, atol=1e-13)  # values of order 5: round-off
    assert np.allclose(hi[ok], exact[ok], rtol=0, atol=1e-13)


def test_circle_reconstruction_second_order_away_from_extrema():
    """Cell averages of 2 + sin(theta): face values vs the exact point values on the faces
    where the data are monotone (|cos theta| > 0.2); the max error falls like h^2."""
    ms = np.array([64, 128, 256, 512, 1024])
    errs = []
    for m in ms:
        grid = CircleGrid(m)
        edges = np.arange(m + 1) * grid.h
        avg = 2.0 + (np.cos(edges[:-1]) - np.cos(edges[1:])) / grid.h
        lo, hi = grid.reconstruct(avg)
        theta_f = np.arange(m) * grid.h
        exact = 2.0 + np.sin(theta_f)
        away = np.abs(np.cos(theta_f)) > 0.2
        errs.append(max(np.abs(lo - exact)[away].max(), np.abs(hi - exact)[away].max()))
    slope = -np.polyfit(np.log(ms), np.log(errs), 1)[0]
    assert slope > 1.9, (slope, errs)  # second order: fitted slope 2 up to pre-asymptotics


# -- densities -----------------------------------------------------------------------
@pytest.mark.parametrize("name", GRIDS)
def test_uniform_density(name):
    grid = GRIDS[name]()
    rho = Density.uniform(grid)
    assert rho.values.shape == grid.shape
    assert np.allclose(rho.values, 1.0 / _domain_measure(name), rtol=1e-14, atol=0)  # one division
    assert rho.mass() == pytest.approx(1.0, rel=1e-14)  # a sum of equal terms
    assert "mass=1" in repr(rho)


def test_from_function_normalises_on_every_grid():
    circle = CircleGrid(40)
    rho = Density.from_function(circle, lambda th: 2.0 + np.cos(th))
    assert rho.mass() == pytest.approx(1.0, rel=1e-14)  # normalised by its own sum
    # proportional to f at the cell centres; midpoint sum of 2 + cos is exactly 4 pi
    assert np.allclose(rho.values, (2.0 + np.cos(circle.angles)) / (4 * np.pi), rtol=1e-13, atol=0)

    causal = CausalCircleGrid(3, 16)
    rho = Density.from_function(causal, lambda s, th: s * (1.5 + np.sin(th)))
    assert rho.values.shape == (3, 16)
    assert rho.mass() == pytest.approx(1.0, rel=1e-14)  # normalised by its own sum
    # fibre masses proportional to the fibre centres s = 1/6, 1/2, 5/6
    fibre = (rho.values * causal.volumes).sum(axis=1)
    assert np.allclose(fibre, np.array([1, 3, 5]) / 9, rtol=1e-13, atol=0)  # sums of 16 terms

    box = _cartesian(2)
    rho = Density.from_function(box, lambda x: 1.0 + x[..., 0] ** 2)
    assert rho.mass() == pytest.approx(1.0, rel=1e-14)  # normalised by its own sum
    ratio = rho.values / (1.0 + box.centers[..., 0] ** 2)
    assert np.ptp(ratio) < 1e-14 * ratio.max()  # one common factor


def test_from_samples_is_the_histogram(rng):
    grid = CircleGrid(24)
    theta = rng.vonmises(1.0, 2.0, size=5000)
    x = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    rho = Density.from_samples(grid, x)
    counts = np.bincount(np.floor(np.mod(theta, 2 * np.pi) / grid.h).astype(int), minlength=24)
    assert counts.sum() == 5000
    # counts / (n h): one division per cell
    assert np.allclose(rho.values, counts / (5000 * grid.h), rtol=1e-13, atol=0)
    assert rho.mass() == pytest.approx(1.0, rel=1e-14)  # a sum of 24 terms

    w = rng.random(5000)
    rho_w = Density.from_samples(grid, x, weights=w)
    mass_w = np.bincount(np.floor(np.mod(theta, 2 * np.pi) / grid.h).astype(int), weights=w,
                         minlength=24)
    assert np.allclose(rho_w.values, mass_w / (w.sum() * grid.h), rtol=1e-12, atol=0)  # sums of 5000 terms


def test_from_samples_drops_points_outside_a_box(rng):
    grid = CartesianGrid([(-1.0, 1.0), (-1.0, 1.0)], [4, 5])
    x = rng.uniform(-1.5, 1.5, size=(4000, 2))
    rho = Density.from_samples(grid, x)
    inside = np.all(np.abs(x) < 1.0, axis=1)
    ix = np.floor((x[inside, 0] + 1) / 0.5).astype(int)
    iy = np.floor((x[inside, 1] + 1) / 0.4).astype(int)
    counts = np.zeros((4, 5))
    np.add.at(counts, (ix, iy), 1.0)
    assert rho.mass() == pytest.approx(1.0, rel=1e-14)  # a sum of 20 terms
    # counts / (n_inside * cell area): one division per cell
    assert np.allclose(rho.values, counts / (inside.sum() * 0.5 * 0.4), rtol=1e-13, atol=0)


def test_moments_of_a_gaussian_on_a_fine_grid():
    """Midpoint sums of a Gaussian are spectrally accurate (error ~ exp(-2 pi^2 sigma^2/h^2))
    and the box holds 9 standard deviations: mean and covariance to round-off."""
    mean = np.array([0.3, -0.2])
    cov = np.array([[0.4, 0.12], [0.12, 0.25]])
    prec = np.linalg.inv(cov)
    grid = CartesianGrid([(0.3 - 5.7, 0.3 + 5.7), (-0.2 - 4.5, -0.2 + 4.5)], [120, 100])

    def gauss(x):
        y = x - mean
        return np.exp(-0.5 * np.einsum("...i,ij,...j->...", y, prec, y))

    m, c = Density.from_function(grid, gauss).moments()
    # sums of 12000 terms of size <= 1: round-off, far below any discretisation error
    assert np.allclose(m, mean, rtol=0, atol=1e-12)
    assert np.allclose(c, cov, rtol=0, atol=1e-12)


def test_moments_of_von_mises_on_the_circle():
    """E[x] for the von Mises density e^{k cos(theta - mu)} is (I_1(k)/I_0(k)) (cos mu, sin mu);
    the periodic midpoint rule is spectrally accurate."""
    kappa, mu = 3.0, 0.7
    grid = CircleGrid(64)
    m, c = Density.from_function(grid, lambda th: np.exp(kappa * np.cos(th - mu))).moments()
    r = ive(1, kappa) / ive(0, kappa)
    assert np.allclose(m, r * np.array([np.cos(mu), np.sin(mu)]), rtol=0, atol=1e-14)  # round-off
    # E[cos 2(theta - mu)] = I_2/I_0: second moments of the same rule
    e2 = ive(2, kappa) / ive(0, kappa)
    rot = np.array([[np.cos(mu), -np.sin(mu)], [np.sin(mu), np.cos(mu)]])
    second = rot @ np.diag([(1 + e2) / 2, (1 - e2) / 2]) @ rot.T
    assert np.allclose(c, second - np.outer(m, m), rtol=0, atol=1e-14)  # round-off


def test_sample_is_reproducible_and_matches_the_density():
    grid = CircleGrid(32)
    rho = Density.from_function(grid, lambda th: np.exp(1.5 * np.cos(th)) + 0.3)
    x1 = rho.sample(200_000, 7)
    x2 = rho.sample(200_000, np.random.default_rng(7))
    assert x1.shape == (200_000, 2)
    assert np.array_equal(x1, x2)
    assert not np.array_equal(x1, rho.sample(200_000, 8))
    assert np.allclose(np.linalg.norm(x1, axis=1), 1.0, rtol=0, atol=4 * EPS)  # cos/sin pairs
    theta = np.mod(np.arctan2(x1[:, 1], x1[:, 0]), 2 * np.pi)
    cells = np.minimum((theta / grid.h).astype(int), 31)
    counts = np.bincount(cells, minlength=32)
    expected = 200_000 * rho.values * grid.h
    chi2 = np.sum((counts - expected) ** 2 / expected)
    dof = 31
    # chi-square with 31 dof: mean 31, sd sqrt(62); 6 sd is a p-value ~ 1e-5 (seeded anyway)
    assert chi2 < dof + 6 * np.sqrt(2 * dof), chi2
    # uniform inside each cell: the offset in [0, 1) has mean 1/2, sd 1/sqrt(12 n)
    offset = theta / grid.h - cells
    assert abs(offset.mean() - 0.5) < 5 / np.sqrt(12 * 200_000)  # 5 sigma


def test_sample_on_a_box_and_on_the_causal_grid():
    box = _cartesian(2)
    rho = Density.from_function(box, lambda x: 1.0 + x[..., 0] + x[..., 1] ** 2)
    x = rho.sample(100_000, 3)
    cells = box.cell_of(x)
    assert np.all(cells >= 0)  # every sample lies in the box
    counts = np.bincount(cells, minlength=box.size)
    expected = 100_000 * (rho.values * box.volumes).ravel()
    chi2 = np.sum((counts - expected) ** 2 / expected)
    dof = box.size - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof), chi2  # 6 sd of a chi-square (seeded)

    causal = CausalCircleGrid(4, 16)
    rho = Density.from_function(causal, lambda s, th: s ** 2 * (1.2 + np.cos(th)))
    s, x = rho.sample(40_000, 5)
    assert s.shape == (40_000,) and x.shape == (40_000, 2)
    assert set(np.unique(s)) <= set(causal.positions.tolist())
    fibre_mass = (rho.values * causal.volumes).sum(axis=1)
    freq = np.array([(s == p).mean() for p in causal.positions])
    # binomial frequencies: sd <= 0.5/sqrt(n) = 0.0025; 5 sd
    assert np.allclose(freq, fibre_mass, rtol=0, atol=5 * 0.5 / np.sqrt(40_000))
    s2, x2 = rho.sample(40_000, 5)
    assert np.array_equal(s, s2) and np.array_equal(x, x2)


# -- bad input -------------------------------------------------------------------------
def test_grid_bad_input():
    with pytest.raises(ValueError, match="n_cells must be >= 4"):
        CircleGrid(3)
    with pytest.raises(ValueError, match="n_cells must be >= 1"):
        CircleGrid(0)
    with pytest.raises(TypeError, match="n_cells must be an integer"):
        CircleGrid(16.0)
    with pytest.raises(ValueError, match="n_positions must be >= 1"):
        CausalCircleGrid(0, 16)
    with pytest.raises(ValueError, match="n_cells must be >= 4"):
        CausalCircleGrid(3, 2)
    with pytest.raises(ValueError, match=r"bounds\[0\] must satisfy lo < hi"):
        CartesianGrid([(1.0, 1.0)], [8])
    with pytest.raises(ValueError, match=r"bounds\[1\] must satisfy lo < hi"):
        CartesianGrid([(0.0, 1.0), (2.0, -2.0)], [8, 8])
    with pytest.raises(ValueError, match=r"bounds\[0\] must be a pair"):
        CartesianGrid([(0.0, 1.0, 2.0)], [8])
    with pytest.raises(ValueError, match=r"bounds\[0\]\[1\] must be finite"):
        CartesianGrid([(0.0, np.inf)], [8])
    with pytest.raises(ValueError, match="1 or 2 axes"):
        CartesianGrid([(0, 1), (0, 1), (0, 1)], [4, 4, 4])
    with pytest.raises(ValueError, match="1 or 2 axes"):
        CartesianGrid([(0, 1), (0, 1)], [4])
    with pytest.raises(ValueError, match=r"shape\[1\] must be >= 4"):
        CartesianGrid([(0, 1), (0, 1)], [4, 3])
    with pytest.raises(ValueError, match="boundary must be 'outflow' or 'zero-flux'"):
        CartesianGrid([(0, 1)], [8], boundary="periodic")
    with pytest.raises(TypeError, match="bounds must be a list of"):
        CartesianGrid(3.0, [8])


def test_density_bad_input():
    grid = CircleGrid(8)
    with pytest.raises(ValueError, match=r"values must have the grid's shape \(8,\)"):
        Density(grid, np.ones(9))
    with pytest.raises(ValueError, match="values must be nonnegative"):
        Density(grid, np.r_[np.ones(7), -1e-3])
    with pytest.raises(ValueError, match="values must be finite"):
        Density(grid, np.r_[np.ones(7), np.nan])
    with pytest.raises(ValueError, match="values must be finite"):
        Density(grid, np.r_[np.ones(7), np.inf])
    with pytest.raises(TypeError, match="grid must be a grid"):
        Density("circle", np.ones(8))
    with pytest.raises(ValueError, match="f must return one value per cell"):
        Density.from_function(grid, lambda th: np.ones(3))
    with pytest.raises(ValueError, match="f gives zero mass"):
        Density.from_function(grid, lambda th: 0.0 * th)
    with pytest.raises(ValueError, match="f must give finite nonnegative values"):
        Density.from_function(grid, lambda th: np.cos(th))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        Density.from_samples(grid, np.ones((5, 3)))
    with pytest.raises(ValueError, match="x has no point inside the grid"):
        Density.from_samples(CartesianGrid([(0, 1)], [4]), np.full((3, 1), 2.0))
    with pytest.raises(TypeError, match="on a CausalCircleGrid use from_function"):
        Density.from_samples(CausalCircleGrid(2, 8), np.ones((3, 2)))
    with pytest.raises(ValueError, match="n must be >= 1"):
        Density.uniform(grid).sample(0)
    with pytest.raises(TypeError, match="rng must be a numpy Generator"):
        Density.uniform(grid).sample(5, rng="seed")
