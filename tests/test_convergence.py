"""Mean-field convergence study: particles approach the grid PDE at the rate n^-1/2."""

from __future__ import annotations

import numpy as np
import pytest

import transformer_pde as tp
from transformer_pde.convergence import meanfield_convergence


@pytest.fixture(scope="module")
def circle_study():
    grid = tp.CircleGrid(1024)
    rho0 = tp.Density.from_function(grid, lambda th: np.exp(np.cos(th - 1.0)))
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    return meanfield_convergence(dyn, rho0, [64, 128, 256, 512, 1024], [0.5, 1.0],
                                 seeds=range(8), p=2, dt=0.1)


def test_circle_rate_is_one_over_sqrt_n(circle_study):
    """W_2(mu^n_t, mu_t) ~ n^{-1/2} on the circle (docs/math.md §5.3, Fournier-Guillin on a 1-D
    support, propagated by the stable flow). With 8 seeds x 5 token counts the slope's
    95% interval is about +-0.09 wide (measured -0.47 to -0.49 over two seed sets)."""
    for k in range(len(circle_study.t)):
        fit = circle_study.fit(k)
        assert abs(fit.slope - (-0.5)) <= 0.1, circle_study.table()
        assert fit.contains(-0.5), circle_study.table()


def test_study_shapes_and_table(circle_study):
    assert circle_study.distance.shape == (5, 8, 2)
    assert np.all(circle_study.distance > 0)
    # the grid error (M = 1024, second order) is far below the smallest distance measured
    assert circle_study.info["pde_mass_drift"] < 1e-12
    text = circle_study.table()
    assert "slope" in text and "theory -0.50" in text


def test_bad_input():
    grid = tp.CircleGrid(64)
    rho0 = tp.Density.uniform(grid)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    with pytest.raises(ValueError, match="n_values needs at least two"):
        meanfield_convergence(dyn, rho0, [64], [1.0])
    with pytest.raises(ValueError, match="times must be increasing and > 0"):
        meanfield_convergence(dyn, rho0, [64, 128], [0.0, 1.0])
    with pytest.raises(TypeError, match="rho0 must be a Density"):
        meanfield_convergence(dyn, rho0.values, [64, 128], [1.0])
    with pytest.raises(ValueError, match="p must be >= 1"):
        meanfield_convergence(dyn, rho0, [64, 128], [1.0], p=0.5)


def test_several_orders_share_the_runs():
    # the same particle runs measured with W_1 and W_2: each equals its single-order study
    grid = tp.CircleGrid(256)
    rho0 = tp.Density.from_function(grid, lambda th: 1.5 + np.cos(th))
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    w1, w2 = meanfield_convergence(dyn, rho0, [32, 64], [0.5], seeds=[0, 1], p=(1, 2), dt=0.1)
    single = meanfield_convergence(dyn, rho0, [32, 64], [0.5], seeds=[0, 1], p=2, dt=0.1)
    assert (w1.p, w2.p) == (1.0, 2.0)
    np.testing.assert_array_equal(w2.distance, single.distance)
    assert np.all(w1.distance <= w2.distance * (1 + 1e-12))  # W_1 <= W_2 (Jensen)


def test_plot_draws_medians_fits_and_theory(circle_study):
    ax = circle_study.plot()
    # per time: medians and fit; plus the theory line
    assert len(ax.lines) == 2 * len(circle_study.t) + 1
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
