"""transformer_pde: the mean-field dynamics of self-attention.

Tokens move as interacting particles under attention; as their number grows their
empirical measure follows the Transformer PDE. This package simulates the particles,
evolves the density on grids, compares both with the Gaussian closed forms, and ties the
levels together with Wasserstein distances, clustering diagnostics and the theorems'
closed forms. The equations and their sources are in ``docs/math.md`` of the project.
"""

from __future__ import annotations

from . import clustering, initial, metastability, runfile, theory, trackers
from ._threads import get_num_threads, num_threads, set_num_threads
from .attention import (
    ALiBiAttention,
    Attention,
    L2Attention,
    Layers,
    MultiHeadAttention,
    SigmoidAttention,
    SinkhornAttention,
    SinkhornConvergenceWarning,
    SoftmaxAttention,
    SummationReport,
    UnnormalizedAttention,
)
from .dynamics import NORMS, TokenDynamics
from .ensembles import WEIGHT_KINDS, random_weights
from .gaussian import (
    GaussianBlowUpError,
    GaussianTrajectory,
    blow_up_time,
    gaussian_closed_form,
    gaussian_moments,
)
from .geometry import Euclidean, Sphere
from .integrate import METHODS, RunInfo, Trajectory, simulate
from .meanfield import (
    CartesianGrid,
    CausalCircleGrid,
    CircleGrid,
    Density,
    DensityTrajectory,
    SphereGrid,
    ZonalGrid,
    solve_axisymmetric,
    solve_meanfield,
)
from .sweep import SweepResult, sweep

__version__ = "0.1.0"


#: figures and movies (transformer_pde.plotting), loaded with matplotlib on first use
_PLOTTING = (
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
    "movie",
)


def __getattr__(name: str):
    """Lazy names: ``tp.wasserstein`` (the only module importing POT), ``tp.storage`` (the
    only one importing h5py) and ``tp.plotting`` with its figure functions (the only module
    importing matplotlib) load on first use."""
    import importlib

    if name in ("wasserstein", "plotting", "storage"):
        return importlib.import_module(f".{name}", __name__)
    if name in _PLOTTING:
        return getattr(importlib.import_module(".plotting", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

def load(path, *, group=None):
    """Read a result file: :func:`transformer_pde.storage.load` (h5py imported on use)."""
    from . import storage

    return storage.load(path, group=group)


def resume(path, *, trackers=None, progress=None):
    """Continue a partial run file: :func:`transformer_pde.storage.resume`."""
    from . import storage

    return storage.resume(path, trackers=trackers, progress=progress)


__all__ = [
    "Attention",
    "SoftmaxAttention",
    "ALiBiAttention",
    "SummationReport",
    "UnnormalizedAttention",
    "L2Attention",
    "SigmoidAttention",
    "SinkhornAttention",
    "MultiHeadAttention",
    "Layers",
    "SinkhornConvergenceWarning",
    "TokenDynamics",
    "NORMS",
    "Euclidean",
    "Sphere",
    "simulate",
    "random_weights",
    "WEIGHT_KINDS",
    "Trajectory",
    "RunInfo",
    "METHODS",
    "CircleGrid",
    "CausalCircleGrid",
    "CartesianGrid",
    "SphereGrid",
    "ZonalGrid",
    "Density",
    "DensityTrajectory",
    "solve_meanfield",
    "solve_axisymmetric",
    "gaussian_moments",
    "gaussian_closed_form",
    "blow_up_time",
    "GaussianTrajectory",
    "GaussianBlowUpError",
    "wasserstein",
    "storage",
    "load",
    "resume",
    "plotting",
    *_PLOTTING,
    "theory",
    "clustering",
    "metastability",
    "trackers",
    "initial",
    "runfile",
    "sweep",
    "SweepResult",
    "set_num_threads",
    "get_num_threads",
    "num_threads",
    "__version__",
]
