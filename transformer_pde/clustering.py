r"""Clustering diagnostics of tokens and densities.

What the papers measure when they say "the tokens cluster" (docs/math.md §2.3-2.6, 1.2, 5bis v):

- clusters: tokens i, j are linked when :math:`\langle x_i, x_j\rangle > 0.9999` (arXiv
  2312.10794's code); a cluster is a connected component of that graph;
- the fraction of pairs :math:`i \ne j` with :math:`\langle x_i, x_j\rangle > 0.999`
  (the statistic of the papers' phase diagrams);
- the interaction energy
  :math:`\mathsf E_\beta[\mu] = \frac1{2\beta}\iint e^{\beta\langle x,y\rangle}d\mu(x)d\mu(y)`,
  non-decreasing along SA and USA;
- the Kuramoto order parameter :math:`r = \|\int x\,d\mu\|`;
- the attention matrix, its numerical rank, its distance to the nearest Boolean
  (0/1, one 1 per row) matrix and its leaders (docs/math.md §1.2, Paper A);
- the number of peaks of a grid density;
- the effective dimension (Gram eigenvalues above a fraction of the largest), the cluster
  count as the rank of the thresholded Gram matrix and the cluster sizes, inner-product
  histograms (per system and over an ensemble), the fraction of adjacent clustered pairs
  (causal and positional models), the cosine similarity of the heads' V eigenvectors and
  the rank of limit covariances over an ensemble of Gaussian runs (docs/math.md §9.18).

Functions that measure a state accept tokens ``x`` of shape (n, d), a stack (nt, n, d),
a :class:`~transformer_pde.Trajectory`, a :class:`~transformer_pde.Density` or a
:class:`~transformer_pde.DensityTrajectory` (a density is the measure
:math:`\sum_c \rho_c|c|\,\delta_{x_c}` on the cell centres), and return a float for one
state or an array (nt,) for a trajectory.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.csgraph import connected_components

from . import _validation as _v
from .dynamics import TokenDynamics
from .integrate import Trajectory
from .meanfield.density import Density
from .meanfield.grids import CircleGrid
from .meanfield.solver import DensityTrajectory

__all__ = [
    "CLUSTER_THRESHOLD",
    "PAIR_THRESHOLD",
    "cluster_labels",
    "cluster_count",
    "clustered_pair_fraction",
    "inner_product_stats",
    "interaction_energy",
    "order_parameter",
    "density_peaks",
    "attention_matrix",
    "nearest_boolean",
    "boolean_distance",
    "numerical_rank",
    "leaders",
    "EFFECTIVE_DIMENSION_RTOL",
    "effective_dimension",
    "cluster_rank",
    "cluster_sizes",
    "inner_product_histogram",
    "adjacent_pair_fraction",
    "head_eigenvector_similarity",
    "covariance_rank",
]

#: tokens i, j are in one cluster when <x_i, x_j> exceeds this (arXiv 2312.10794's code)
CLUSTER_THRESHOLD = 0.9999
#: a pair is "clustered" in the phase diagrams when <x_i, x_j> exceeds this
PAIR_THRESHOLD = 0.999
#: Gram eigenvalues above this fraction of the largest count in the effective dimension
EFFECTIVE_DIMENSION_RTOL = 1e-2
#: rows of the pairwise matrix handled at once for densities (bounds memory to 8 MiB * N / 1e3)
_CHUNK = 1024
#: largest beta with a finite e^beta
_LOG_MAX = float(np.log(np.finfo(np.float64).max))


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
def _states(obj, name: str = "x") -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
    """Points and weights of tokens, a stack or trajectory, a density or a density trajectory.

    Returns ``([(points (m, d), weights (m,)), ...], single)``; the weights sum to 1.
    """
    if isinstance(obj, Trajectory):
        return _states(obj.x, name)[0], False
    if isinstance(obj, (Density, DensityTrajectory)):
        grid = obj.grid
        values = obj.values[None] if isinstance(obj, Density) else obj.density
        pts = np.asarray(grid.centers, dtype=float).reshape(-1, grid.dim)
        out = []
        for k, rho in enumerate(values):
            w = (rho * grid.volumes).ravel()
            total = w.sum()
            if not 0.0 < total < np.inf:  # a Density refuses it; a trajectory's arrays may be edited
                raise ValueError(f"{name} has a state (index {k}) of mass {total:.3g}: the measure "
                                 "needs a positive, finite mass")
            out.append((pts, w / total))
        return out, isinstance(obj, Density)
    x = _v.as_real_array(obj, name, nonempty=False, finite=False)
    if x.ndim == 2:
        x = _v.as_tokens(x, name)
        return [(x, np.full(len(x), 1.0 / len(x)))], True
    if x.ndim == 3 and min(x.shape) >= 1:
        _v.as_real_array(x, name)  # finite, naming the first entry that is not
        n = x.shape[1]
        return [(xk, np.full(n, 1.0 / n)) for xk in x], False
    raise ValueError(
        f"{name} must be tokens (n, d), a stack (nt, n, d), a Trajectory, a Density or a "
        f"DensityTrajectory; got an array of shape {x.shape}"
    )


def _tokens(obj, name: str = "x") -> tuple[list[np.ndarray], bool]:
    """Token arrays (n, d) per state; densities are refused (they have no tokens)."""
    if isinstance(obj, (Density, DensityTrajectory)):
        raise TypeError(f"{name} must be tokens or a Trajectory (a density has no tokens), "
                        f"got {type(obj).__name__}")
    states, single = _states(obj, name)
    return [p for p, _ in states], single


def _out(values, single: bool):
    return values[0] if single else np.asarray(values)


def _threshold(value, name: str) -> float:
    value = _v.as_real(value, name)
    if not -1.0 <= value < 1.0:
        raise ValueError(f"{name} must be an inner product in [-1, 1), got {value}")
    return value


# ---------------------------------------------------------------------------------------
# clusters of tokens
# ---------------------------------------------------------------------------------------
def _link_parameters(threshold, distance):
    threshold = _threshold(threshold, "threshold")
    return threshold, None if distance is None else _v.as_positive(distance, "distance")


def _gram(x: np.ndarray) -> np.ndarray:
    """The Gram matrix x x^T (n, n) of tokens, refused above the dense limit (2 GiB)."""
    n = len(x)
    _v.check_dense_size((n, n), f"the pairwise statistics of n={n} tokens (their Gram matrix)",
                        "pass a subsample of the tokens (x[::k]); cluster statistics of a "
                        "subsample estimate those of the whole")
    return x @ x.T


def _components(x: np.ndarray, threshold: float, distance: float | None):
    """``(count, labels)`` of the link graph of tokens x (n, d)."""
    if distance is None:
        linked = _gram(x) > threshold
    else:
        sq = np.sum(x * x, axis=1)
        linked = sq[:, None] + sq[None, :] - 2.0 * _gram(x) < distance**2
    return connected_components(linked, directed=False)


def cluster_labels(x, threshold: float = CLUSTER_THRESHOLD, *, distance: float | None = None
                   ) -> np.ndarray:
    r"""Cluster label of each token: connected components of the link graph.

    .. math::

        i \sim j \iff \langle x_i, x_j\rangle > \text{threshold}
        \quad(\text{or } \|x_i - x_j\| < \text{distance}).

    For well-separated clusters the number of labels equals
    :math:`\operatorname{rank}\mathbf 1\{\langle x_i,x_j\rangle > 0.9999\}`, the count of
    Geshkovski et al. (docs/math.md §2.6).

    Parameters
    ----------
    x : array_like, shape (n, d)
        Tokens (unit vectors for the inner-product test).
    threshold : float
        Inner product above which two tokens are linked, in [-1, 1).
    distance : float, optional
        Link by Euclidean distance instead (for tokens in :math:`\mathbb R^d`, Paper A).

    Returns
    -------
    ndarray of int, shape (n,)
        Labels 0, 1, ..., numbered in order of first appearance.
    """
    threshold, distance = _link_parameters(threshold, distance)
    return _components(_v.as_tokens(x, "x"), threshold, distance)[1]


def cluster_count(x, threshold: float = CLUSTER_THRESHOLD, *, distance: float | None = None):
    """Number of clusters (see :func:`cluster_labels`) of tokens (n, d), or per saved time.

    For a stack (nt, n, d) or a :class:`~transformer_pde.Trajectory` the counts come as an int
    array (nt,).
    """
    states, single = _tokens(x)
    threshold, distance = _link_parameters(threshold, distance)
    counts = [_components(p, threshold, distance)[0] for p in states]
    return int(counts[0]) if single else np.asarray(counts, dtype=int)


def _offdiagonal(x: np.ndarray) -> np.ndarray:
    n = len(x)
    if n < 2:
        raise ValueError(f"x must have at least 2 tokens for pairwise statistics, got {n}")
    gram = _gram(x)
    return gram[np.triu_indices(n, k=1)]


def clustered_pair_fraction(x, threshold: float = PAIR_THRESHOLD):
    r"""Fraction of pairs :math:`i < j` with :math:`\langle x_i, x_j\rangle > \text{threshold}`.

    The statistic of the (beta, t) phase diagrams of arXiv 2312.10794 (docs/math.md §2.6):
    1 for a single cluster, about 1/k for k equal clusters, 0 for scattered tokens.
    Accepts tokens (n, d), a stack (nt, n, d) or a Trajectory.
    """
    states, single = _tokens(x)
    threshold = _threshold(threshold, "threshold")
    return _out([float(np.mean(_offdiagonal(p) > threshold)) for p in states], single)


def inner_product_stats(x) -> dict:
    r"""Minimum, mean, maximum and standard deviation of :math:`\langle x_i, x_j\rangle`, i < j.

    For tokens (n, d) a dict of floats; for a stack or Trajectory a dict of arrays (nt,).
    The equiangular state has min = max = :math:`\rho` (docs/math.md §4.4).
    """
    states, single = _tokens(x)
    rows = [_offdiagonal(p) for p in states]
    stats = {"min": [r.min() for r in rows], "mean": [r.mean() for r in rows],
             "max": [r.max() for r in rows], "std": [r.std() for r in rows]}
    return {k: float(v[0]) if single else np.asarray(v) for k, v in stats.items()}


# ---------------------------------------------------------------------------------------
# energy and order parameter
# ---------------------------------------------------------------------------------------
def _energy_normalized(pts: np.ndarray, w: np.ndarray, beta: float, kernel_hat=None) -> float:
    r""":math:`\sum_{ij} w_iw_j e^{\beta(\langle x_i,x_j\rangle - 1)}` (no overflow for large beta).

    ``kernel_hat``: the rfft of the kernel on a uniform circle grid, where the sum is
    circulant and costs one FFT product.
    """
    if kernel_hat is not None:
        return float(w @ np.fft.irfft(kernel_hat * np.fft.rfft(w), n=len(w)))
    total = 0.0
    for s in range(0, len(pts), _CHUNK):
        block = np.exp(beta * (pts[s:s + _CHUNK] @ pts.T - 1.0))
        total += float(w[s:s + _CHUNK] @ block @ w)
    return total


def interaction_energy(x, beta: float, *, normalized: bool = False):
    r"""Interaction energy of tokens or of a density (docs/math.md §2.3).

    .. math::

        \mathsf E_\beta[\mu] = \frac{1}{2\beta}\iint e^{\beta\langle x, y\rangle}\,
        d\mu(x)\,d\mu(y), \qquad
        \mathsf E_\beta(X) = \frac{1}{2\beta n^2}\sum_{i,j} e^{\beta\langle x_i, x_j\rangle}.

    It is non-decreasing along SA and USA (the dissipation identities of docs/math.md §2.3);
    on the sphere its maximum :math:`e^\beta/(2\beta)` is reached exactly at single
    clusters (Diracs) and its minimum at the uniform measure. A density uses the midpoint
    rule on its cells (second order; on a :class:`~transformer_pde.CircleGrid` by FFT,
    elsewhere in row blocks, O(N^2) time for N cells).

    Parameters
    ----------
    x : tokens (n, d), stack (nt, n, d), Trajectory, Density or DensityTrajectory
        The measure(s); token weights 1/n, density weights :math:`\rho_c|c|` / mass.
    beta : float
        Inverse temperature, > 0.
    normalized : bool
        Return :math:`\mathsf E_\beta / (e^\beta/2\beta)` in (0, 1] up to round-off (finite
        for any beta).

    Returns
    -------
    float, or ndarray (nt,) for a trajectory.
    """
    beta = _v.as_positive(beta, "beta")
    states, single = _states(x)
    grid = x.grid if isinstance(x, (Density, DensityTrajectory)) else None
    kernel_hat = None
    if isinstance(grid, CircleGrid):
        kernel_hat = np.fft.rfft(np.exp(beta * (np.cos(grid.angles - grid.angles[0]) - 1.0)))
    if not normalized and beta > _LOG_MAX:
        raise ValueError(f"E_beta overflows float64 for beta={beta:g} > {_LOG_MAX:.1f}; use normalized=True")
    scale = 1.0 if normalized else np.exp(beta) / (2.0 * beta)
    return _out([scale * _energy_normalized(p, w, beta, kernel_hat) for p, w in states], single)


def order_parameter(x):
    r"""Kuramoto order parameter :math:`r = \|\int x\,d\mu(x)\|` (docs/math.md §2.4, 4.7).

    On the circle :math:`r = |\frac1n\sum_j e^{i\theta_j}|`: 0 for the uniform measure,
    1 for one cluster. Accepts tokens, a stack, a Trajectory, a Density or a
    DensityTrajectory.
    """
    states, single = _states(x)
    return _out([float(np.linalg.norm(w @ p)) for p, w in states], single)


def density_peaks(density, factor: float = 5.0):
    r"""Number of peaks of a grid density: the clusters of a grid solution.

    A peak is a cell whose value is at least that of every cell sharing a face with it
    (ties go to the lower cell index, so a flat top counts once) and more than ``factor``
    times the mean density (mass / total volume: :math:`1/2\pi` on the circle,
    :math:`1/4\pi` on :math:`\mathbb S^2`). Works on every grid through its faces.

    Parameters
    ----------
    density : Density or DensityTrajectory
        On any grid (CircleGrid, SphereGrid, CartesianGrid, ...).
    factor : float
        Height threshold relative to the mean, > 0.

    Returns
    -------
    int, or ndarray of int (nt,) for a DensityTrajectory.
    """
    if not isinstance(density, (Density, DensityTrajectory)):
        raise TypeError(f"density must be a Density or DensityTrajectory, got {type(density).__name__}")
    factor = _v.as_positive(factor, "factor")
    grid = density.grid
    values = (density.values[None] if isinstance(density, Density) else density.density)
    values = values.reshape(len(values), -1)
    inner = grid.faces.right >= 0
    left, right = grid.faces.left[inner], grid.faces.right[inner]
    counts = []
    for rho in values:
        vl, vr = rho[left], rho[right]
        loser = np.zeros(rho.size, dtype=bool)
        loser[left[(vl < vr) | ((vl == vr) & (left > right))]] = True
        loser[right[(vr < vl) | ((vr == vl) & (right > left))]] = True
        mean = float(rho @ grid.volumes.ravel()) / float(grid.volumes.sum())
        counts.append(int(np.sum(~loser & (rho > factor * mean))))
    return counts[0] if isinstance(density, Density) else np.asarray(counts, dtype=int)


# ---------------------------------------------------------------------------------------
# the attention matrix (Paper A)
# ---------------------------------------------------------------------------------------
def attention_matrix(attention, x, weights=None) -> np.ndarray:
    r"""The attention matrix :math:`P_{ij}` of tokens x, shape (n, n) (per head (H, n, n)).

    .. math::

        P_{ij} = \frac{e^{\beta\langle Qx_i, Kx_j\rangle}}{\sum_k e^{\beta\langle Qx_i, Kx_k\rangle}}

    for softmax (the matrix of the attention object, docs/math.md §1.1; with token ``weights``
    :math:`a_j` the terms carry them). ``attention`` may be an attention object or a
    :class:`~transformer_pde.TokenDynamics`; with a normalization scheme that carries radii
    the matrix is taken on the directions.
    """
    dyn = attention if isinstance(attention, TokenDynamics) else None
    att = dyn.attention if dyn is not None else attention
    if not hasattr(att, "matrix"):
        raise TypeError(f"attention must be an attention object or TokenDynamics, got {type(att).__name__}")
    x = _v.as_tokens(x, "x")
    if dyn is not None and dyn.norm in ("pre", "peri", "mix"):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return att.matrix(x, weights)


def _matrix(P, name: str = "P") -> np.ndarray:
    """A finite 2-D matrix (an attention matrix (n, n); rectangular is fine)."""
    return _v.as_matrix(P, name, (None, None))


def nearest_boolean(P) -> np.ndarray:
    r"""The Boolean row-stochastic matrix nearest to P (shape of P, float 0/1).

    Row i is :math:`e_{j^*(i)}`, :math:`j^*(i) = \arg\max_j P_{ij}`.
    """
    P = _matrix(P)
    B = np.zeros_like(P)
    B[np.arange(len(P)), np.argmax(P, axis=1)] = 1.0
    return B


def boolean_distance(P) -> float:
    r"""Entrywise distance of a row-stochastic P to the nearest Boolean matrix.

    .. math::

        \|P - B\|_{\max} = \max_i\big(1 - \max_j P_{ij}\big),

    B from :func:`nearest_boolean` (for a row-stochastic row the entry at the argmax errs by
    :math:`1 - P_{ij^*}` and every other entry by at most as much). Tends to 0 when P
    converges to a Boolean matrix (docs/math.md §1.2, ``t:boolean``).
    """
    P = _matrix(P)
    return float(np.max(1.0 - np.max(P, axis=1)))


def numerical_rank(P, rtol: float = 1e-6) -> int:
    r"""Number of singular values of P above ``rtol`` times the largest.

    The rank of a limit attention matrix is at most 2 for d = 1 (docs/math.md §1.2).
    """
    P = _matrix(P)
    rtol = _v.as_positive(rtol, "rtol")
    s = np.linalg.svd(P, compute_uv=False)
    return int(np.sum(s > rtol * s[0])) if s[0] > 0 else 0


def leaders(P, threshold: float = 0.5) -> np.ndarray:
    r"""Leaders: columns j that attract some row, :math:`\exists i: P_{ij} > \text{threshold}`.

    In the Boolean limit of Paper A with d = 1 (docs/math.md §1.2) every row converges to
    :math:`e_a` or :math:`e_b` for the extreme tokens a, b, so the leaders are {a, b}.

    Returns
    -------
    ndarray of int
        The leader columns, in increasing order.
    """
    P = _matrix(P)
    threshold = _v.as_real(threshold, "threshold")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    return np.flatnonzero(np.any(P > threshold, axis=0))


# ---------------------------------------------------------------------------------------
# statistics of the published studies (docs/math.md §9.18)
# ---------------------------------------------------------------------------------------
def _systems(obj, name: str = "x") -> tuple[np.ndarray, str]:
    """Tokens as a float array (S, n, d) and the input's kind: "one", "stack" or "batch".

    Accepts tokens (n, d), a stack (nt, n, d), a batch of stacks (nt, B, n, d) or a
    Trajectory (its ``x``, (nt, n, d) or (nt, B, n, d)).
    """
    if isinstance(obj, (Density, DensityTrajectory)):
        raise TypeError(f"{name} must be tokens or a Trajectory (a density has no tokens), "
                        f"got {type(obj).__name__}")
    x = _v.as_real_array(obj.x if isinstance(obj, Trajectory) else obj, name, nonempty=False,
                         finite=False)  # complex and strings refused, naming the parameter
    if x.ndim not in (2, 3, 4) or x.shape[-2] < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name} must be tokens (n, d), a stack (nt, n, d), a batch (nt, B, n, d) "
                         f"or a Trajectory; got an array of shape {x.shape}")
    _v.as_real_array(x, name)  # finite, naming the first entry that is not
    kind = {2: "one", 3: "stack", 4: "batch"}[x.ndim]
    return x.reshape(-1, *x.shape[-2:]), kind


def _shaped(values: np.ndarray, obj, kind: str):
    """Per-system values (S, ...) back to the input's layout: (...), (nt, ...) or (nt, B, ...)."""
    if kind == "one":
        return values[0]
    if kind == "stack":
        return values
    x = obj.x if isinstance(obj, Trajectory) else np.asarray(obj)
    return values.reshape(x.shape[0], x.shape[1], *values.shape[1:])


def effective_dimension(x, rtol: float = EFFECTIVE_DIMENSION_RTOL):
    r"""Effective dimension of tokens: the number of Gram eigenvalues above ``rtol`` x the largest.

    .. math::

        d_{\rm eff}(X) = \#\{k : \lambda_k(G) > \text{rtol}\,\lambda_1(G)\},\qquad
        G_{ij} = \langle x_i, x_j\rangle,

    with :math:`\lambda_1 \ge \lambda_2 \ge \dots` the eigenvalues of the Gram matrix
    :math:`G = XX^\top` (n, n), equal to the squared singular values of X (so the
    convention is relative to the largest eigenvalue, not the largest singular value; the
    nonzero eigenvalues are those of :math:`X^\top X`, so :math:`d_{\rm eff} \le \min(n, d)`).
    k clusters at linearly independent points give k (up to the spread inside the clusters);
    tokens spread in an m-dimensional subspace give m.

    Parameters
    ----------
    x : tokens (n, d), stack (nt, n, d), batch (nt, B, n, d) or Trajectory
    rtol : float
        Relative threshold, in (0, 1); default :data:`EFFECTIVE_DIMENSION_RTOL` = 0.01.

    Returns
    -------
    int, or ndarray of int (nt,) or (nt, B).

    Examples
    --------
    >>> from transformer_pde import clustering
    >>> x = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> clustering.effective_dimension(x)
    2
    """
    rtol = _v.as_real(rtol, "rtol")
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie in (0, 1), got {rtol}")
    xs, kind = _systems(x)
    # the d x d or n x n Gram, whichever is smaller: same nonzero eigenvalues
    if xs.shape[2] <= xs.shape[1]:
        gram = np.einsum("sni,snj->sij", xs, xs)
    else:
        gram = xs @ xs.transpose(0, 2, 1)
    lam = np.linalg.eigvalsh(gram)
    top = lam[:, -1:]
    dims = np.where(top[:, 0] > 0, np.sum(lam > rtol * top, axis=1), 0).astype(int)
    out = _shaped(dims, x, kind)
    return int(out) if kind == "one" else out


def _link_matrix(x: np.ndarray, threshold: float) -> np.ndarray:
    return (_gram(x) > threshold).astype(float)


def cluster_rank(x, threshold: float = CLUSTER_THRESHOLD):
    r"""Cluster count as the rank of the thresholded Gram matrix (the published codes' count).

    .. math::

        k_{\rm rank}(X) = \operatorname{rank}\big(\mathbf 1\{\langle x_i, x_j\rangle
        > \text{threshold}\}\big)_{ij}.

    Compared with :func:`cluster_count` (connected components of the same link graph):
    the matrix is block diagonal over the components, a symmetric 0/1 block with unit
    diagonal has rank 1 exactly when it is all ones, and rank is additive over blocks, so
    :math:`k_{\rm rank} \ge k_{\rm components}`, with equality exactly when every component
    is a clique (linking is transitive: each cluster has diameter below the threshold). They
    differ for chains: three tokens with :math:`x_1 \sim x_2 \sim x_3` but
    :math:`x_1 \not\sim x_3` are one component and rank 3.

    Parameters
    ----------
    x : tokens (n, d), stack (nt, n, d), batch (nt, B, n, d) or Trajectory
        Unit vectors.
    threshold : float
        Inner product above which two tokens are linked, in [-1, 1).

    Returns
    -------
    int, or ndarray of int (nt,) or (nt, B).

    Examples
    --------
    >>> from transformer_pde import clustering
    >>> t = np.array([0.0, 0.01, 0.02])          # a chain: neighbours linked, ends not
    >>> x = np.stack([np.cos(t), np.sin(t)], axis=1)
    >>> clustering.cluster_rank(x, 0.99992), clustering.cluster_count(x, 0.99992)
    (3, 1)
    """
    threshold = _threshold(threshold, "threshold")
    xs, kind = _systems(x)
    ranks = np.array([np.linalg.matrix_rank(_link_matrix(p, threshold)) for p in xs], dtype=int)
    out = _shaped(ranks, x, kind)
    return int(out) if kind == "one" else out


def cluster_sizes(x, threshold: float = CLUSTER_THRESHOLD, *, distance: float | None = None):
    r"""Sizes of the clusters of :func:`cluster_labels`, largest first.

    .. math::

        |C_1| \ge |C_2| \ge \dots, \qquad \textstyle\sum_c |C_c| = n.

    Parameters
    ----------
    x : tokens (n, d), stack (nt, n, d) or Trajectory
    threshold, distance :
        As in :func:`cluster_labels`.

    Returns
    -------
    ndarray of int (number of clusters,), or a list of them per saved time.

    Examples
    --------
    >>> from transformer_pde import clustering
    >>> e = np.eye(2)
    >>> clustering.cluster_sizes(e[[0, 1, 0, 0]]).tolist()
    [3, 1]
    """
    states, single = _tokens(x)
    threshold, distance = _link_parameters(threshold, distance)
    sizes = [np.sort(np.bincount(_components(p, threshold, distance)[1]))[::-1] for p in states]
    return sizes[0] if single else sizes


def inner_product_histogram(x, bins: int = 50, *, ensemble: bool = False, density: bool = True):
    r"""Histogram of the pairwise inner products :math:`\langle x_i, x_j\rangle`, i < j, on [-1, 1].

    .. math::

        h_b = \frac{\#\{i<j : \langle x_i,x_j\rangle \in I_b\}}{\binom n2\,|I_b|}
        \quad(\text{density}),\qquad I_b = [-1 + 2b/\text{bins},\ -1 + 2(b+1)/\text{bins}),

    the last bin closed (so an inner product of exactly 1, a collapsed pair, counts).
    For uniform tokens on the circle the density tends to the arcsine law
    :math:`1/(\pi\sqrt{1-u^2})`; a clustered state puts mass :math:`\sum_c\binom{|C_c|}2/\binom n2`
    in the last bin.

    Parameters
    ----------
    x : tokens (n, d), stack (nt, n, d), batch (nt, B, n, d) or Trajectory
        Unit vectors, n >= 2.
    bins : int
        Number of equal bins on [-1, 1].
    ensemble : bool
        For a batch: pool the pairs of all B systems at each time (one histogram per time).
    density : bool
        Normalize to a probability density on [-1, 1] (else raw pair counts).

    Returns
    -------
    (hist, edges) : ndarray (bins,), (nt, bins) or (nt, B, bins); ndarray (bins + 1,)

    Examples
    --------
    >>> from transformer_pde import clustering
    >>> x = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    >>> h, edges = clustering.inner_product_histogram(x, bins=2, density=False)
    >>> h.tolist()
    [2.0, 1.0]
    """
    bins = _v.as_positive_int(bins, "bins")
    xs, kind = _systems(x)
    n = xs.shape[1]
    if n < 2:
        raise ValueError(f"x must have at least 2 tokens for pairwise statistics, got {n}")
    if ensemble and kind != "batch":
        raise ValueError(f"ensemble=True needs a batch (nt, B, n, d) of systems, got x of kind {kind!r}")
    edges = np.linspace(-1.0, 1.0, bins + 1)
    iu = np.triu_indices(n, k=1)
    ips = np.clip((xs @ xs.transpose(0, 2, 1))[:, iu[0], iu[1]], -1.0, 1.0)  # (S, pairs)
    index = np.minimum(((ips + 1.0) * (bins / 2.0)).astype(int), bins - 1)
    counts = np.zeros((len(xs), bins))
    np.add.at(counts, (np.arange(len(xs))[:, None], index), 1.0)
    counts = _shaped(counts, x, kind)
    if ensemble:
        counts = counts.sum(axis=1)
    if density:
        counts = counts / (counts.sum(axis=-1, keepdims=True) * (2.0 / bins))
    return counts, edges


def adjacent_pair_fraction(x, threshold: float = PAIR_THRESHOLD):
    r"""Fraction of adjacent pairs (i, i+1) that are clustered (causal and positional models).

    .. math::

        a(X) = \frac{1}{n-1}\#\{i < n : \langle x_i, x_{i+1}\rangle > \text{threshold}\},

    in token order (the order of a causal mask or of positions). 1 when all tokens sit in
    one cluster; for clusters of consecutive tokens, :math:`1 - (k-1)/(n-1)` for k clusters.

    Parameters
    ----------
    x : tokens (n, d), stack (nt, n, d), batch (nt, B, n, d) or Trajectory
        Unit vectors, n >= 2, in token order.
    threshold : float
        Inner product above which a pair is clustered, in [-1, 1).

    Returns
    -------
    float, or ndarray (nt,) or (nt, B).

    Examples
    --------
    >>> from transformer_pde import clustering
    >>> e = np.eye(2)
    >>> clustering.adjacent_pair_fraction(e[[0, 0, 1, 1, 0]])
    0.5
    """
    threshold = _threshold(threshold, "threshold")
    xs, kind = _systems(x)
    if xs.shape[1] < 2:
        raise ValueError(f"x must have at least 2 tokens for pairwise statistics, got {xs.shape[1]}")
    adjacent = np.einsum("snd,snd->sn", xs[:, :-1], xs[:, 1:]) > threshold
    out = _shaped(adjacent.mean(axis=1), x, kind)
    return float(out) if kind == "one" else out


def head_eigenvector_similarity(attention) -> np.ndarray:
    r"""Cosine similarity of the V eigenvectors of the heads of a multi-head model.

    .. math::

        C_{hgab} = \frac{|\langle u^{(h)}_a, u^{(g)}_b\rangle|}{\|u^{(h)}_a\|\,\|u^{(g)}_b\|},
        \qquad V_h u^{(h)}_a = \lambda^{(h)}_a u^{(h)}_a,

    with each head's eigenvalues sorted by decreasing real part (then imaginary part) and
    the Hermitian inner product for complex eigenvectors; the modulus removes the sign (or
    phase) of each eigenvector. :math:`C_{hh} = I` when :math:`V_h` is symmetric; heads whose
    :math:`V` share eigenvectors in the same eigenvalue order give :math:`C_{hg} = I`.

    Parameters
    ----------
    attention : MultiHeadAttention or TokenDynamics with one
        Every head needs a value matrix ``V`` (d, d) (a head without one uses the identity).

    Returns
    -------
    ndarray, shape (H, H, d, d)

    Examples
    --------
    >>> import transformer_pde as tp
    >>> from transformer_pde import clustering
    >>> heads = [tp.SoftmaxAttention(1.0, V=np.diag([2.0, 1.0])),
    ...          tp.SoftmaxAttention(1.0, V=np.diag([1.0, 3.0]))]
    >>> clustering.head_eigenvector_similarity(tp.MultiHeadAttention(heads))[0, 1].tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    from .attention import MultiHeadAttention

    att = attention.attention if isinstance(attention, TokenDynamics) else attention
    if not isinstance(att, MultiHeadAttention):
        raise TypeError(f"attention must be a MultiHeadAttention (or TokenDynamics with one), got "
                        f"{type(att).__name__}")
    d = att.dim
    vectors = []
    for h, head in enumerate(att.heads):
        V = getattr(head, "V", None)
        V = np.eye(d or 1) if V is None else np.asarray(V, dtype=float)
        if V.ndim != 2 or V.shape[0] != V.shape[1]:
            raise ValueError(f"head {h} must have one value matrix V (d, d), got shape {V.shape}")
        lam, u = np.linalg.eig(V)
        order = np.lexsort((-lam.imag, -lam.real))
        u = u[:, order]
        vectors.append(u / np.linalg.norm(u, axis=0))
    shapes = {u.shape for u in vectors}
    if len(shapes) != 1:
        raise ValueError(f"the heads' V must share one dimension, got shapes {sorted(shapes)}")
    U = np.stack(vectors)  # (H, d, d): columns are eigenvectors
    return np.minimum(np.abs(np.einsum("hka,gkb->hgab", U.conj(), U)), 1.0)


def covariance_rank(results, rtol: float = 1e-6, *, k: int = -1) -> np.ndarray:
    r"""Numerical rank of the (limit) covariance of each Gaussian run of an ensemble.

    .. math::

        r_b = \#\{m : \lambda_m(\Sigma_b(t_k)) > \text{rtol}\,\lambda_1(\Sigma_b(t_k))\},

    the eigenvalues of the covariance at the saved time ``k`` (the last by default: the
    limit shape :math:`\Sigma/\operatorname{tr}\Sigma` has the same rank). Collapse onto
    the top eigenspace of V (Paper C) shows as rank 1 when that eigenvalue is simple;
    ``np.bincount`` of the result gives the distribution of limit ranks.

    Parameters
    ----------
    results : sequence of GaussianTrajectory, or covariances (B, d, d)
        The runs (e.g. one per random model of an ensemble).
    rtol : float
        Relative eigenvalue threshold, in (0, 1).
    k : int
        Saved time of each run.

    Returns
    -------
    ndarray of int, shape (B,)

    Examples
    --------
    >>> from transformer_pde import clustering
    >>> clustering.covariance_rank(np.array([np.diag([1.0, 1e-9]), np.eye(2)])).tolist()
    [1, 2]
    """
    from .gaussian import GaussianTrajectory

    rtol = _v.as_real(rtol, "rtol")
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie in (0, 1), got {rtol}")
    if isinstance(results, GaussianTrajectory):
        results = [results]
    if isinstance(results, np.ndarray):
        covs = _v.as_real_array(results, "results")
    else:
        results = list(results)
        bad = [type(r).__name__ for r in results if not isinstance(r, GaussianTrajectory)]
        if bad or not results:
            raise TypeError(f"results must be GaussianTrajectory runs or covariances (B, d, d), got "
                            f"{bad or 'an empty sequence'}")
        covs = np.stack([np.asarray(r.cov[k], dtype=float) for r in results])
    if covs.ndim != 3 or covs.shape[1] != covs.shape[2] or not np.all(np.isfinite(covs)):
        raise ValueError(f"covariances must be finite, of shape (B, d, d), got {covs.shape}")
    lam = np.linalg.eigvalsh(0.5 * (covs + covs.transpose(0, 2, 1)))
    top = lam[:, -1:]
    return np.where(top[:, 0] > 0, np.sum(lam > rtol * top, axis=1), 0).astype(int)
