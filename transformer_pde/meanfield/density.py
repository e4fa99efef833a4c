r"""A probability density on a grid: the grid and the cell values.

Values are densities w.r.t. length or area, so the total mass is
:math:`\sum_c \rho_c\,|c| = 1`; the measure a density stands for in the attention field
is :math:`\mu = \sum_c \rho_c |c|\,\delta_{x_c}` (midpoint quadrature, second order).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import _validation as _v
from .grids import CausalCircleGrid, CircleGrid, Grid

__all__ = ["Density"]


class Density:
    """A density on a grid.

    Parameters
    ----------
    grid : Grid
        The grid.
    values : array_like, shape grid.shape
        Nonnegative, finite values (a density w.r.t. length/area) with a positive, finite
        total mass; not renormalised. A zero-mass density is refused: it has no velocity
        field (the softmax average divides by the mass) and no order parameter.
    """

    def __init__(self, grid: Grid, values):
        if not isinstance(grid, Grid):
            raise TypeError(f"grid must be a grid such as tp.CircleGrid(256), got {type(grid).__name__}")
        values = _v.as_real_array(values, "values", nonempty=False, finite=False)
        if values.shape != grid.shape:
            raise ValueError(f"values must have the grid's shape {grid.shape}, got {values.shape}")
        _v.as_real_array(values, "values")  # finite, naming the first cell that is not
        if np.any(values < 0.0):
            raise ValueError(f"values must be nonnegative (a density), got minimum {values.min():.3g}")
        mass = float(np.sum(values * grid.volumes))
        if not 0.0 < mass < np.inf:
            raise ValueError(
                f"values must have a positive, finite total mass sum(values * grid.volumes), got "
                f"{mass:.3g}" + (" (zero mass: a density needs at least one positive cell)"
                                 if mass == 0.0 else "")
            )
        self.grid = grid
        self.values = values

    def __repr__(self) -> str:
        return f"Density({self.grid!r}, mass={self.mass():.12g})"

    # -- constructors ------------------------------------------------------------
    @classmethod
    def uniform(cls, grid: Grid) -> Density:
        """The uniform probability density on the grid (on a causal grid: uniform in s and theta).

        On a :class:`~transformer_pde.meanfield.zonal.ZonalGrid` the uniform measure of the
        sphere (its polar-angle density, :meth:`~transformer_pde.meanfield.zonal.ZonalGrid.uniform_values`).
        """
        uniform = getattr(grid, "uniform_values", None)
        if uniform is not None:
            return cls(grid, uniform())
        return cls(grid, np.full(grid.shape, 1.0 / grid.volumes.sum()))

    @classmethod
    def from_function(cls, grid: Grid, f: Callable) -> Density:
        """Sample ``f`` at the cell centres and normalise to unit mass.

        ``f`` receives ``grid.coordinates``: the angles (M,) on a :class:`CircleGrid`, the
        pair ``(s, theta)`` (each (S, M)) on a :class:`CausalCircleGrid`, and the centres
        (*shape, d) otherwise (unit vectors on the sphere, points on a Cartesian grid).
        Midpoint values are second-order accurate cell averages.
        """
        coords = grid.coordinates
        values = f(*coords) if isinstance(grid, CausalCircleGrid) else f(coords)
        values = _v.as_real_array(values, "f(grid.coordinates)", nonempty=False, finite=False)
        if values.shape != grid.shape:
            raise ValueError(
                f"f must return one value per cell, shape {grid.shape}; got shape {values.shape}"
            )
        return cls._normalised(grid, values, "f")

    @classmethod
    def from_samples(cls, grid: Grid, x, weights=None, bandwidth: float | None = None) -> Density:
        r"""Histogram of points x (N, d): cell mass / cell volume, normalised to unit mass.

        With ``bandwidth`` :math:`\sigma` (radians; :class:`CircleGrid` only) the histogram
        is smoothed by the wrapped Gaussian kernel of standard deviation :math:`\sigma`
        (a kernel density estimate; Fourier multipliers :math:`e^{-k^2\sigma^2/2}`).
        Points outside a Cartesian grid are dropped (with their mass). On a causal grid
        use ``from_function`` instead (the positions s are not part of x).
        """
        if not isinstance(grid, Grid):
            raise TypeError(f"grid must be a grid such as tp.CircleGrid(256), got {type(grid).__name__}")
        if isinstance(grid, CausalCircleGrid):
            raise TypeError("from_samples needs token positions; on a CausalCircleGrid use from_function")
        x = _v.as_tokens(x, "x", d=grid.dim)
        w = _v.as_weights(weights, len(x), "weights")
        cells = grid.cell_of(x)
        keep = cells >= 0
        if not keep.any():
            raise ValueError("x has no point inside the grid")
        values = np.bincount(cells[keep], weights=w[keep], minlength=grid.size).reshape(grid.shape)
        values = values / grid.volumes
        if bandwidth is not None:
            bandwidth = _v.as_positive(bandwidth, "bandwidth")
            if not isinstance(grid, CircleGrid):
                raise ValueError(f"bandwidth is supported on a CircleGrid only, got {grid!r}")
            k = np.fft.rfftfreq(grid.n_cells, d=1.0 / grid.n_cells)
            smooth = np.fft.irfft(np.fft.rfft(values) * np.exp(-0.5 * (k * bandwidth) ** 2),
                                  n=grid.n_cells)
            values = np.maximum(smooth, 0.0)  # the kernel is positive: only round-off is cut
        return cls._normalised(grid, values, "x")

    @classmethod
    def _normalised(cls, grid, values, name):
        if not np.all(np.isfinite(values)) or np.any(values < 0.0):
            raise ValueError(f"{name} must give finite nonnegative values")
        total = float(np.sum(values * grid.volumes))
        if total <= 0.0:
            raise ValueError(f"{name} gives zero mass on the grid")
        return cls(grid, values / total)

    # -- diagnostics -------------------------------------------------------------------
    def mass(self) -> float:
        r"""Total mass :math:`\sum_c \rho_c |c|`."""
        return float(np.sum(self.values * self.grid.volumes))

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        r"""Mean (d,) and covariance (d, d) of the density, in ambient coordinates.

        These are the moments of :math:`\mu = \sum_c \rho_c|c|\delta_{x_c}`, normalised by the mass.
        """
        w = (self.values * self.grid.volumes).ravel()
        w = w / w.sum()
        own = getattr(self.grid, "moments_of", None)  # a grid whose cells are not points (ZonalGrid)
        if own is not None:
            return own(w)
        x = np.asarray(self.grid.centers).reshape(-1, self.grid.dim)
        mean = w @ x
        xc = x - mean
        return mean, (xc * w[:, None]).T @ xc

    def sample(self, n: int, rng=None) -> np.ndarray:
        """Draw n points from the density (a cell by mass, then uniform in it), shape (n, d).

        On a :class:`CausalCircleGrid` returns ``(s, x)``: fibre positions (n,) (the
        fibre's upper end k/S) and points (n, 2).
        """
        n = _v.as_positive_int(n, "n")
        rng = _v.as_rng(rng)
        p = (self.values * self.grid.volumes).ravel()
        cells = rng.choice(self.grid.size, size=n, p=p / p.sum())
        x = self.grid.sample_cells(cells, rng)
        if isinstance(self.grid, CausalCircleGrid):
            return self.grid.positions[cells // self.grid.n_cells], x
        return x
