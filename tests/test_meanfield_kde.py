"""Kernel density estimate on the circle (Density.from_samples with a bandwidth)."""

from __future__ import annotations

import numpy as np
import pytest

import transformer_pde as tp


def test_bandwidth_smooths_a_point_into_a_wrapped_gaussian():
    grid = tp.CircleGrid(512)
    sigma, theta0 = 0.3, 1.0
    # put the point at a cell centre so the histogram is a discrete delta at that cell
    c = int(theta0 / grid.h)
    x = grid.centers[c][None, :]
    rho = tp.Density.from_samples(grid, x, bandwidth=sigma)
    assert rho.mass() == pytest.approx(1.0, abs=1e-14)  # normalised to unit mass
    assert rho.values.min() >= 0.0
    # the first circular moment of a wrapped Gaussian is e^{-sigma^2/2} e^{i theta0}; on the
    # grid the histogram is a discrete delta whose (midpoint) moment is e^{i theta_c}, and
    # smoothing multiplies Fourier mode 1 by e^{-sigma^2/2} exactly: equal to round-off
    z = np.sum(rho.values * grid.volumes * np.exp(1j * grid.angles))
    assert abs(z) == pytest.approx(np.exp(-sigma**2 / 2), abs=1e-12)
    assert np.angle(z) == pytest.approx(grid.angles[c], abs=1e-12)


def test_bandwidth_only_on_the_circle():
    grid = tp.CartesianGrid([(-1, 1)], [16])
    with pytest.raises(ValueError, match="bandwidth is supported on a CircleGrid only"):
        tp.Density.from_samples(grid, np.zeros((3, 1)), bandwidth=0.1)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        tp.Density.from_samples(tp.CircleGrid(16), np.array([[1.0, 0.0]]), bandwidth=0.0)
