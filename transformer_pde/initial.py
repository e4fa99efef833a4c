r"""Initial tokens: the standard starting configurations of the studies.

Each function returns an array of shape (n, d) (float64); random ones take ``rng``.

- :func:`uniform_tokens`: i.i.d. uniform on :math:`\mathbb S^{d-1}` (normalised Gaussians).
- :func:`von_mises_fisher_tokens`: i.i.d. von Mises-Fisher, density
  :math:`\propto e^{\kappa\langle\mu, x\rangle}` on :math:`\mathbb S^{d-1}` (Wood's
  rejection sampler, docs/math.md §9.15).
- :func:`gaussian_tokens`: i.i.d. :math:`\mathcal N(m, \Sigma)` in :math:`\mathbb R^d`.
- :func:`equiangular_tokens`: n unit vectors with all pairwise inner products equal to
  :math:`\rho` (docs/math.md §4.4), deterministic.
- :func:`cluster_tokens`: n tokens split as evenly as possible over given centres, each
  group von Mises-Fisher around its centre (on the sphere) or Gaussian (in
  :math:`\mathbb R^d`).
"""

from __future__ import annotations

import numpy as np

from . import _validation as _v

__all__ = [
    "uniform_tokens",
    "von_mises_fisher_tokens",
    "gaussian_tokens",
    "equiangular_tokens",
    "cluster_tokens",
]


def _unit(vector, name: str, d: int | None = None) -> np.ndarray:
    arr = _v._as_float_array(vector, name)
    if arr.ndim != 1 or arr.shape[0] < 2 or (d is not None and arr.shape[0] != d):
        want = f"({d},)" if d is not None else "(d,) with d >= 2"
        raise ValueError(f"{name} must have shape {want}, got shape {arr.shape}")
    _v._check_finite(arr, name)
    r = float(np.linalg.norm(arr))
    if r == 0.0:
        raise ValueError(f"{name} must be a nonzero vector (it is normalised to a unit vector)")
    return arr / r


def uniform_tokens(n: int, d: int, rng) -> np.ndarray:
    r"""Draw n tokens i.i.d. uniformly on the unit sphere :math:`\mathbb S^{d-1}`.

    .. math::

        x_i = g_i / |g_i|, \qquad g_i \sim \mathcal N(0, I_d)\ \text{i.i.d.}

    Parameters
    ----------
    n : int
        Number of tokens, >= 1.
    d : int
        Dimension of the ambient space, >= 2 (d = 2: the circle).
    rng : numpy.random.Generator or int or None
        Source of the draws.

    Returns
    -------
    ndarray, shape (n, d)

    Examples
    --------
    >>> import numpy as np
    >>> x = uniform_tokens(5, 3, rng=0)
    >>> x.shape, bool(np.allclose(np.linalg.norm(x, axis=1), 1.0))
    ((5, 3), True)
    """
    n = _v.as_positive_int(n, "n")
    d = _dim(d)
    g = _v.as_rng(rng).standard_normal((n, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def _dim(d) -> int:
    d = _v.as_positive_int(d, "d")
    if d < 2:
        raise ValueError(f"d must be >= 2 for tokens on the sphere S^(d-1), got {d}")
    return d


def von_mises_fisher_tokens(n: int, mean_direction, concentration: float, rng) -> np.ndarray:
    r"""Draw n tokens i.i.d. from the von Mises-Fisher law on :math:`\mathbb S^{d-1}`.

    .. math::

        p(x) \propto e^{\kappa \langle \mu, x\rangle}, \qquad
        \mathbb E\langle \mu, x\rangle = A_d(\kappa) = \frac{I_{d/2}(\kappa)}{I_{d/2-1}(\kappa)}.

    The component :math:`w = \langle\mu, x\rangle` is drawn by Wood's rejection sampler
    (exact; acceptance rate above 0.6 for every :math:`\kappa` and d), the tangent
    direction uniformly on the sphere of :math:`\mu^\perp`.

    Parameters
    ----------
    n : int
        Number of tokens, >= 1.
    mean_direction : array_like, shape (d,)
        The mode :math:`\mu` (normalised here), d >= 2.
    concentration : float
        :math:`\kappa \ge 0`; 0 gives the uniform law.
    rng : numpy.random.Generator or int or None
        Source of the draws.

    Returns
    -------
    ndarray, shape (n, d)

    Examples
    --------
    >>> x = von_mises_fisher_tokens(2000, [0.0, 0.0, 1.0], 50.0, rng=1)
    >>> round(float(x[:, 2].mean()), 2)    # A_3(50) = coth(50) - 1/50 = 0.98
    0.98
    """
    n = _v.as_positive_int(n, "n")
    mu = _unit(mean_direction, "mean_direction")
    kappa = _v.as_real(concentration, "concentration")
    if kappa < 0.0:
        raise ValueError(f"concentration must be >= 0, got {kappa}")
    rng = _v.as_rng(rng)
    d = mu.shape[0]
    w = _wood(n, d, kappa, rng)
    # a uniform direction orthogonal to e_1, then the reflection that maps e_1 to mu
    tangent = rng.standard_normal((n, d - 1))
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    x = np.empty((n, d))
    x[:, 0] = w
    x[:, 1:] = np.sqrt(np.maximum(1.0 - w * w, 0.0))[:, None] * tangent
    u = np.zeros(d)
    u[0] = 1.0
    u -= mu
    norm_u = np.linalg.norm(u)
    if norm_u > 0.0:  # Householder reflection H = I - 2 u u^T / |u|^2 with H e_1 = mu
        u /= norm_u
        x -= 2.0 * np.outer(x @ u, u)
    return x


def _wood(n: int, d: int, kappa: float, rng: np.random.Generator) -> np.ndarray:
    """Draw n values of w = <mu, x> for the vMF law on S^(d-1) (Wood 1994)."""
    if d == 2:  # the circle: numpy's von Mises sampler, then w = cos(angle)
        return np.cos(rng.vonmises(0.0, kappa, size=n))
    m = d - 1.0
    b = m / (2.0 * kappa + np.sqrt(4.0 * kappa * kappa + m * m))  # stable form of Wood's b
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + m * np.log(1.0 - x0 * x0)
    out = np.empty(n)
    filled = 0
    while filled < n:
        k = int(1.5 * (n - filled)) + 8
        z = rng.beta(m / 2.0, m / 2.0, size=k)
        w = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        u = rng.uniform(size=k)
        ok = kappa * w + m * np.log(1.0 - x0 * w) - c >= np.log(u)
        take = w[ok][: n - filled]
        out[filled : filled + take.shape[0]] = take
        filled += take.shape[0]
    return out


def gaussian_tokens(n: int, mean, cov, rng) -> np.ndarray:
    r"""Draw n tokens i.i.d. from the Gaussian :math:`\mathcal N(m, \Sigma)` in :math:`\mathbb R^d`.

    .. math::

        x_i = m + L g_i, \qquad L L^\top = \Sigma,\ g_i \sim \mathcal N(0, I_d).

    Parameters
    ----------
    n : int
        Number of tokens, >= 1.
    mean : array_like, shape (d,)
        The mean m.
    cov : array_like, shape (d, d)
        The covariance :math:`\Sigma`, symmetric positive semi-definite.
    rng : numpy.random.Generator or int or None
        Source of the draws.

    Returns
    -------
    ndarray, shape (n, d)

    Examples
    --------
    >>> x = gaussian_tokens(4, [0.0, 1.0], [[1.0, 0.0], [0.0, 4.0]], rng=0)
    >>> x.shape
    (4, 2)
    """
    n = _v.as_positive_int(n, "n")
    m = _v._as_float_array(mean, "mean")
    if m.ndim != 1 or m.shape[0] < 1:
        raise ValueError(f"mean must have shape (d,) with d >= 1, got shape {m.shape}")
    _v._check_finite(m, "mean")
    d = m.shape[0]
    s = _v.as_matrix(cov, "cov", (d, d))
    if not np.allclose(s, s.T, rtol=1e-12, atol=1e-14 * np.abs(s).max(initial=0.0)):
        raise ValueError("cov must be symmetric")
    lam, vecs = np.linalg.eigh(0.5 * (s + s.T))
    if lam.min() < -1e-12 * max(lam.max(), 0.0):
        raise ValueError(f"cov must be positive semi-definite, got smallest eigenvalue {lam.min():.3g}")
    root = vecs * np.sqrt(np.maximum(lam, 0.0))
    return m + _v.as_rng(rng).standard_normal((n, d)) @ root.T


def equiangular_tokens(n: int, rho: float, d: int | None = None) -> np.ndarray:
    r"""Place n unit vectors whose pairwise inner products all equal :math:`\rho`.

    .. math::

        x_i = \sqrt{1-\rho}\, e_i + c\,\mathbf 1, \qquad
        c = \frac{-\sqrt{1-\rho} + \sqrt{1 + (n-1)\rho}}{n},

    so that :math:`\langle x_i, x_j\rangle = \rho` for :math:`i \ne j` and
    :math:`|x_i| = 1`; possible for :math:`-1/(n-1) \le \rho \le 1` in dimension
    :math:`d \ge n` (zero-padded to d).

    Parameters
    ----------
    n : int
        Number of tokens, >= 2.
    rho : float
        The common inner product, in [-1/(n-1), 1].
    d : int, optional
        Ambient dimension, >= n (default n).

    Returns
    -------
    ndarray, shape (n, d)

    Examples
    --------
    >>> x = equiangular_tokens(3, 0.5)
    >>> import numpy as np
    >>> np.round(x @ x.T, 12)
    array([[1. , 0.5, 0.5],
           [0.5, 1. , 0.5],
           [0.5, 0.5, 1. ]])
    """
    n = _v.as_positive_int(n, "n")
    if n < 2:
        raise ValueError(f"n must be >= 2 for pairwise inner products, got {n}")
    rho = _v.as_real(rho, "rho")
    if not -1.0 / (n - 1) <= rho <= 1.0:
        raise ValueError(f"rho must be in [-1/(n-1), 1] = [{-1.0 / (n - 1):.6g}, 1] for n = {n}, got {rho}")
    d = n if d is None else _v.as_positive_int(d, "d")
    if d < n:
        raise ValueError(f"d must be >= n = {n} for n equiangular tokens, got {d}")
    s = np.sqrt(1.0 - rho)
    c = (-s + np.sqrt(max(1.0 + (n - 1) * rho, 0.0))) / n
    x = np.zeros((n, d))
    x[:, :n] = c
    x[np.arange(n), np.arange(n)] += s
    return x


def cluster_tokens(n: int, centers, spread: float, rng, geometry: str = "sphere") -> np.ndarray:
    r"""Draw n tokens in groups around k centres (sizes differ by at most one).

    .. math::

        x \sim \mathrm{vMF}(c_k, 1/\sigma^2) \ \text{(sphere)}, \qquad
        x \sim \mathcal N(c_k, \sigma^2 I) \ \text{(Euclidean)},

    for the tokens of group k; group sizes are :math:`\lfloor n/k\rfloor` or
    :math:`\lceil n/k\rceil`, the first groups taking the extra tokens. On the sphere
    the centres are normalised and, for small :math:`\sigma`, each tangent component of a
    token about its centre has standard deviation about :math:`\sigma` (radians; the angle
    to the centre is :math:`\sigma\sqrt{d-1}` in root mean square, docs/math.md §9.15);
    ``spread = 0`` puts every token exactly on its centre.

    Parameters
    ----------
    n : int
        Number of tokens, >= 1.
    centers : array_like, shape (k, d)
        The centres.
    spread : float
        :math:`\sigma \ge 0`.
    rng : numpy.random.Generator or int or None
        Source of the draws.
    geometry : {"sphere", "euclidean"}
        Where the tokens live.

    Returns
    -------
    ndarray, shape (n, d)

    Examples
    --------
    >>> x = cluster_tokens(6, [[1.0, 0.0], [-1.0, 0.0]], 0.0, rng=0)
    >>> x[:, 0]
    array([ 1.,  1.,  1., -1., -1., -1.])
    """
    n = _v.as_positive_int(n, "n")
    c = _v.as_matrix(centers, "centers", (None, None))
    if c.shape[0] < 1 or c.shape[1] < 1:
        raise ValueError(f"centers must have shape (k, d) with k, d >= 1, got shape {c.shape}")
    sigma = _v.as_real(spread, "spread")
    if sigma < 0.0:
        raise ValueError(f"spread must be >= 0, got {sigma}")
    _v.as_choice(geometry, "geometry", ("sphere", "euclidean"))
    rng = _v.as_rng(rng)
    k = c.shape[0]
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    groups = []
    for center, size in zip(c, sizes, strict=True):
        if size == 0:
            continue
        if geometry == "sphere":
            mu = _unit(center, "centers[k]")
            if sigma == 0.0:
                groups.append(np.tile(mu, (size, 1)))
            else:
                groups.append(von_mises_fisher_tokens(int(size), mu, 1.0 / sigma**2, rng))
        else:
            groups.append(center + sigma * rng.standard_normal((int(size), c.shape[1])))
    return np.concatenate(groups, axis=0)
