"""The Transformer PDE on grids: finite-volume densities on the circle, the sphere and R^1/R^2.

``solve_meanfield(dyn, rho0, ...)`` takes the same :class:`~transformer_pde.TokenDynamics`
as :func:`~transformer_pde.simulate`. Grids know geometry only; a :class:`Density` is a
grid plus values; the field, the scheme and the time stepping are separate modules.
"""

from __future__ import annotations

from .axisymmetric import AxisymmetricGrid, solve_axisymmetric
from .density import Density
from .field import face_velocity
from .grids import CartesianGrid, CausalCircleGrid, CircleGrid, Grid
from .solver import DensityTrajectory, MassLossWarning, MeanFieldInfo, solve_meanfield
from .sphere import SphereGrid
from .zonal import ZonalGrid

__all__ = [
    "Grid",
    "CircleGrid",
    "CausalCircleGrid",
    "CartesianGrid",
    "SphereGrid",
    "AxisymmetricGrid",
    "ZonalGrid",
    "solve_axisymmetric",
    "Density",
    "face_velocity",
    "solve_meanfield",
    "DensityTrajectory",
    "MeanFieldInfo",
    "MassLossWarning",
]
