r"""Gaussian closed forms of the Transformer PDE in :math:`\mathbb R^d`.

If the attention field of a Gaussian :math:`\mu = \mathcal N(m, \Sigma)` is affine,

.. math::

    \Gamma[\mu](x) = b(m, \Sigma) + M(m, \Sigma)\,(x - m),

then the solution of :math:`\partial_t\mu_t + \operatorname{div}(\mu_t\Gamma[\mu_t]) = 0`
stays Gaussian, with

.. math::

    \dot m = b, \qquad \dot\Sigma = M\Sigma + \Sigma M^\top

(docs/math.md §3.2). This holds for softmax, :math:`L^2` and Sinkhorn attention and for sums
of them (multi-head), in Euclidean geometry without causal mask. With
:math:`A = \beta K^\top Q` (the package convention: logits :math:`\beta\langle Qx, Ky\rangle
= y^\top A x`, no hidden :math:`1/\sqrt d`), and per head (multi-head sums b and M):

=========== ===================================================== =================================
variant     :math:`b`                                             :math:`M`
=========== ===================================================== =================================
softmax     :math:`V(I + \Sigma A)\,m`                            :math:`V\Sigma A`
:math:`L^2` :math:`V\big[m + (\Sigma^{-1} + H)^{-1}(A - H)m\big]` :math:`V(\Sigma^{-1} + H)^{-1} A`
Sinkhorn    :math:`Vm`                                            :math:`V M_S`
=========== ===================================================== =================================

where :math:`H = \beta K^\top K` (the :math:`L^2` logits are
:math:`-\frac\beta2\|Qx - Ky\|^2`, i.e. :math:`\alpha = \beta/2` in docs/math.md §3.3) and
:math:`M_S` is the regression matrix :math:`E[Y\mid X = x] = m + M_S(x - m)` of the
entropic self-transport plan of :math:`\mu` with kernel :math:`e^{y^\top A x}`, i.e.
:math:`\varepsilon = 1` with the temperature carried by :math:`\beta` (what
:class:`~transformer_pde.SinkhornAttention` computes on particles). Writing
:math:`\Sigma = LL^\top` and :math:`B = L^\top A L = U D W^\top` (SVD),

.. math::

    M_S L = L N, \qquad N = U f(D) W^\top, \qquad f(s) = \frac{\sqrt{1 + 4s^2} - 1}{2s}
    = \frac{2s}{1 + \sqrt{1 + 4s^2}},

which needs no inverse of A or of :math:`\Sigma` and equals the code form of docs/math.md §3.3
when A is invertible. All three follow from the tilting lemma (docs/math.md §5bis).

The ODE is integrated for a factor :math:`L` of :math:`\Sigma`: :math:`\dot L = ML` gives
:math:`\frac{d}{dt}LL^\top = M\Sigma + \Sigma M^\top`, so :math:`\Sigma = LL^\top` is
symmetric positive semi-definite by construction at every time. With :math:`V = cI`
softmax heads, :math:`\frac{d}{dt}\Sigma^{-1} = -\sum_h c_h(A_h + A_h^\top)` and the
covariance is known in closed form; a positive eigenvalue of that matrix's product with
:math:`\Sigma_0` means a finite-time blow-up (docs/math.md §3.4).

Variants without a Gaussian closure raise ``ValueError`` saying why: unnormalized and
sigmoid attention (the field of a Gaussian is not affine), causal masks (the state carries
the token position), and the sphere (attention acts on directions :math:`x/|x|`).

Reference: Castin, Ablin, Carrillo, Peyré, *A unified perspective on the dynamics of deep
Transformers* (arXiv 2501.18322), section on Gaussian data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import solve_ivp

from . import _validation as _v
from ._spec import Result
from .attention import (
    L2Attention,
    MultiHeadAttention,
    SinkhornAttention,
    SoftmaxAttention,
)
from .dynamics import TokenDynamics

__all__ = [
    "GaussianTrajectory",
    "GaussianInfo",
    "GaussianBlowUpError",
    "gaussian_moments",
    "gaussian_closed_form",
    "blow_up_time",
    "affine_field",
    "sinkhorn_plan_precision",
]


class GaussianBlowUpError(FloatingPointError):
    r"""The covariance grew past ``max_trace`` before the last requested time.

    Attributes
    ----------
    t : float
        The blow-up time (absolute, on the scale of ``t_eval``) when ``finite_time`` is
        true: the time where :math:`\operatorname{tr}\Sigma` reached ``max_trace``,
        refined by extrapolating :math:`1/\operatorname{tr}\Sigma` to zero (accurate to
        about ``1/max_trace`` relative); otherwise the time where the trace crossed
        ``max_trace``.
    finite_time : bool
        Whether the growth is a finite-time blow-up (:math:`\operatorname{tr}\Sigma \sim
        c/(t^* - t)`) rather than exponential growth past the cap.
    """

    def __init__(self, message: str, t: float, finite_time: bool = True):
        super().__init__(message)
        self.t = float(t)
        self.finite_time = bool(finite_time)


@dataclass
class GaussianInfo:
    """How the moments were computed: method, tolerances, right-hand-side evaluations, time."""

    method: str
    rtol: float | None = None
    atol: float | None = None
    n_evals: int = 0
    wall_time: float = field(default=0.0, compare=False)


@dataclass(eq=False)
class GaussianTrajectory(Result):
    r"""Mean and covariance of the Gaussian solution at the saved times.

    Attributes
    ----------
    t : ndarray, shape (nt,)
        Saved times (``t[0]`` is the initial time).
    mean : ndarray, shape (nt, d)
        Means :math:`m(t)`.
    cov : ndarray, shape (nt, d, d)
        Covariances :math:`\Sigma(t)`, symmetric positive semi-definite.
    dynamics : TokenDynamics
        The model.
    info : GaussianInfo
        Method, tolerances, evaluations and wall time.
    """

    t: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    dynamics: TokenDynamics
    info: GaussianInfo = field(repr=False)

    @property
    def dim(self) -> int:
        """Dimension d of the token space."""
        return self.mean.shape[1]

    @property
    def normalized_cov(self) -> np.ndarray:
        r"""The shape of the Gaussian, :math:`\Sigma(t)/\operatorname{tr}\Sigma(t)`, shape (nt, d, d).

        docs/math.md §3.4 describes its limits.
        """
        return self.cov / np.trace(self.cov, axis1=1, axis2=2)[:, None, None]

    def plot(self, ax=None, **kwargs):
        """Draw the covariances (:func:`transformer_pde.plotting.plot_covariance`); returns the Axes."""
        from . import plotting  # lazily: matplotlib only when a figure is made

        return plotting.plot_covariance(self, ax=ax, **kwargs)


# ---------------------------------------------------------------------------------------
# heads and their affine fields
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Head:
    """One head in matrix form: its kind and the matrices V, A and H.

    kind in {"softmax", "l2", "sinkhorn"}, V (d, d), A = beta K^T Q (d, d),
    H = beta K^T K for L2 (else None).
    """

    kind: str
    V: np.ndarray
    A: np.ndarray
    H: np.ndarray | None


def _no_closure_reason(att) -> str | None:
    """Why a single-head attention object has no Gaussian closure (None if it has one)."""
    if isinstance(att, SoftmaxAttention) and att.causal:
        return (
            "causal (masked) attention has no Gaussian closure: the state carries each token's "
            "position s and the field depends on the law of the tokens before s, so it is not "
            "an affine function of x for a Gaussian in R^d (docs/math.md §3.3)"
        )
    if isinstance(att, (L2Attention, SoftmaxAttention, SinkhornAttention)):
        return None
    name = type(att).__name__
    if name == "UnnormalizedAttention":
        return (
            "UnnormalizedAttention has no Gaussian closure: without the softmax denominator the "
            "field of N(m, S) is exp(quadratic in x) times an affine map, not affine, so Gaussians "
            "are not preserved"
        )
    if name == "SigmoidAttention":
        return (
            "SigmoidAttention has no Gaussian closure: the sigmoid weight is not an exponential "
            "of a quadratic, so the field of a Gaussian is not affine in x (docs/math.md §3.3)"
        )
    return f"{name} has no known Gaussian closure (only softmax, L2, Sinkhorn and their sums do)"


def _check_dyn(dyn) -> None:
    if not isinstance(dyn, TokenDynamics):
        raise TypeError(
            "dyn must be a TokenDynamics, e.g. tp.TokenDynamics(att, geometry='euclidean'), "
            f"got {type(dyn).__name__}"
        )
    dyn._check_single("the Gaussian moment solvers")


def _check_noiseless(dyn, who: str) -> None:
    """The moment equations here have no diffusion term: refuse a noisy model."""
    if dyn.kappa is not None:
        raise ValueError(
            f"{who} solves the noiseless moment equations, but dyn has kappa={dyn.kappa:g} (noise); "
            "use tp.TokenDynamics(..., kappa=None), or simulate / solve_meanfield for the noisy model"
        )


def _heads(dyn, d: int) -> list[_Head]:
    """The heads of ``dyn`` in matrix form, or ValueError saying why there is no closure."""
    _check_dyn(dyn)
    if dyn.geometry.name != "euclidean" or dyn.norm != "none":
        raise ValueError(
            f"dyn has geometry={dyn.geometry.name!r} and norm={dyn.norm!r}: there is no Gaussian "
            "closure on the sphere or with a normalization scheme (attention acts on the "
            "directions x/|x|, so the field of a Gaussian is not affine); use "
            "geometry='euclidean'"
        )
    if dyn.layers is not None:
        raise ValueError(
            f"dyn is depth-dependent ({dyn.layers!r}): gaussian_moments integrates it layer by "
            "layer; the closed forms and the affine field take the model of one layer"
        )
    att = dyn.attention
    multi = isinstance(att, MultiHeadAttention)
    heads = att.heads if multi else (att,)
    out = []
    eye = np.eye(d)
    for h, head in enumerate(heads):
        reason = _no_closure_reason(head)
        if reason is not None:
            where = f"head {h} of the MultiHeadAttention: " if multi else ""
            raise ValueError(where + reason)
        Q = eye if head.Q is None else head.Q
        K = eye if head.K is None else head.K
        V = eye if head.V is None else head.V
        A = head.beta * (K.T @ Q)
        if isinstance(head, L2Attention):
            out.append(_Head("l2", V, A, head.beta * (K.T @ K)))
        elif isinstance(head, SinkhornAttention):
            out.append(_Head("sinkhorn", V, A, None))
        else:
            out.append(_Head("softmax", V, A, None))
    return out


def _sinkhorn_N(B: np.ndarray) -> np.ndarray:
    """N = U f(D) W^T for B = U D W^T, f(s) = 2s / (1 + sqrt(1 + 4 s^2)).

    N is the whitened regression matrix of the entropic plan of N(0, I) with itself for the
    kernel exp(w^T B u).
    """
    U, s, Wt = np.linalg.svd(B)
    f = 2.0 * s / (1.0 + np.sqrt(1.0 + 4.0 * s * s))
    return (U * f) @ Wt


def _rhs(heads: list[_Head], m: np.ndarray, L: np.ndarray):
    """(dm/dt, dL/dt) with dL/dt = M L for Sigma = L L^T (see the module docstring)."""
    d = len(m)
    dm = np.zeros(d)
    dL = np.zeros((d, d))
    for hd in heads:
        if hd.kind == "softmax":
            B = L.T @ hd.A @ L
            dL += hd.V @ (L @ B)
            dm += hd.V @ (m + L @ (L.T @ (hd.A @ m)))
        elif hd.kind == "l2":
            # (Sigma^-1 + H)^-1 = L (I + L^T H L)^-1 L^T, which needs no inverse of Sigma
            rhs = np.column_stack([L.T @ hd.A @ L, L.T @ ((hd.A - hd.H) @ m)])
            X = np.linalg.solve(np.eye(d) + L.T @ hd.H @ L, rhs)
            dL += hd.V @ (L @ X[:, :d])
            dm += hd.V @ (m + L @ X[:, d])
        else:  # sinkhorn
            dL += hd.V @ (L @ _sinkhorn_N(L.T @ hd.A @ L))
            dm += hd.V @ m
    return dm, dL


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------
def _check_mean_cov(dyn, mean, cov, mean_name: str, cov_name: str):
    """Checked mean (d,) and symmetric positive definite cov (d, d); returns (mean, cov, L = chol)."""
    mean = _v._as_float_array(mean, mean_name)
    if mean.ndim != 1 or mean.size < 1:
        raise ValueError(f"{mean_name} must have shape (d,) with d >= 1, got shape {mean.shape}")
    d = mean.size
    if isinstance(dyn, TokenDynamics) and dyn.dim is not None and dyn.dim != d:
        raise ValueError(
            f"{mean_name} has dimension d={d}, but the attention of dyn acts on dimension "
            f"{dyn.dim} (from the shapes of Q, K, V)"
        )
    _v._check_finite(mean, mean_name)
    cov = _v._as_float_array(cov, cov_name)
    if cov.shape != (d, d):
        raise ValueError(f"{cov_name} must have shape ({d}, {d}) to match {mean_name}, got shape {cov.shape}")
    _v._check_finite(cov, cov_name)
    asym = float(np.max(np.abs(cov - cov.T)))
    scale = float(np.max(np.abs(cov)))
    if asym > 1e-10 * scale:
        raise ValueError(
            f"{cov_name} must be symmetric, but max |cov - cov.T| = {asym:.3g} "
            f"(relative {asym / scale:.3g} > 1e-10)"
        )
    cov = 0.5 * (cov + cov.T)
    try:
        L = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        lam = float(np.linalg.eigvalsh(cov)[0])
        raise ValueError(
            f"{cov_name} must be positive definite, but its smallest eigenvalue is {lam:.3g}"
        ) from None
    return mean, cov, L


def _square_size(cov, name: str) -> int:
    """The size d of a square (d, d) array (the full checks follow in _check_mean_cov)."""
    shape = np.shape(cov)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        raise ValueError(f"{name} must be a square (d, d) matrix with d >= 1, got shape {shape}")
    return shape[0]


def _check_t_eval(t_eval, name: str = "t_eval") -> np.ndarray:
    t = np.atleast_1d(_v.as_real_array(t_eval, name, nonempty=False, finite=False))
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of times, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{name} must be finite, got {t}")
    if t[0] < 0.0:
        raise ValueError(f"{name} must start at a time >= 0 ({name}[0] is the initial time), got {t[0]}")
    if np.any(np.diff(t) <= 0.0):
        i = int(np.argmax(np.diff(t) <= 0.0))
        raise ValueError(
            f"{name} must be strictly increasing, but {name}[{i}]={t[i]} >= {name}[{i + 1}]={t[i + 1]}"
        )
    return t


def _sym(S: np.ndarray) -> np.ndarray:
    return 0.5 * (S + np.swapaxes(S, -1, -2))


# ---------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------
def affine_field(dyn: TokenDynamics, mean, cov) -> tuple[np.ndarray, np.ndarray]:
    r"""The attention field of a Gaussian, :math:`\Gamma[\mathcal N(m, \Sigma)](x) = b + M(x - m)`.

    .. math::

        \text{softmax: } b = V(I + \Sigma A)m,\ M = V\Sigma A; \quad
        L^2\text{: } b = V[m + (\Sigma^{-1} + H)^{-1}(A - H)m],\ M = V(\Sigma^{-1} + H)^{-1}A;
        \quad \text{Sinkhorn: } b = Vm,\ M = VM_S,

    summed over heads, with :math:`A = \beta K^\top Q`, :math:`H = \beta K^\top K` and
    :math:`M_S` of the module docstring.

    Parameters
    ----------
    dyn : TokenDynamics
        Euclidean dynamics of softmax, L2, Sinkhorn or multi-head attention made of them.
    mean : array_like, shape (d,)
        Mean m.
    cov : array_like, shape (d, d)
        Symmetric positive definite covariance :math:`\Sigma`.

    Returns
    -------
    b : ndarray, shape (d,)
        The field at the mean.
    M : ndarray, shape (d, d)
        Its Jacobian.
    """
    _check_dyn(dyn)
    mean, cov, L = _check_mean_cov(dyn, mean, cov, "mean", "cov")
    heads = _heads(dyn, len(mean))
    b, ML = _rhs(heads, mean, L)
    # M = (M L) L^-1: L is the Cholesky factor of a positive definite matrix
    M = np.linalg.solve(L.T, ML.T).T
    return b, M


def sinkhorn_plan_precision(cov, A0) -> tuple[np.ndarray, np.ndarray]:
    r"""Diagonal blocks of the precision of the entropic self-transport plan of a Gaussian.

    The plan of :math:`(\mathcal N(m, \Sigma), \mathcal N(m, \Sigma))` for the kernel
    :math:`e^{y^\top A_0 x}` (:math:`\varepsilon = 1`) is Gaussian with joint precision
    :math:`\begin{pmatrix}P_{11} & -A_0^\top\\ -A_0 & P_{22}\end{pmatrix}` of (x, y), where

    .. math::

        P_{22} = \Sigma^{-1} + A_0P_{11}^{-1}A_0^\top, \qquad
        P_{11} = \Sigma^{-1} + A_0^\top P_{22}^{-1}A_0

    (the marginal constraints, docs/math.md §3.3). Here both blocks are computed in closed form
    from the SVD :math:`L^\top A_0 L = UDW^\top` (:math:`\Sigma = LL^\top`):
    :math:`P_{22}^{-1} = L\,U h(D^2) U^\top L^\top`, :math:`P_{11}^{-1} = L\,W h(D^2) W^\top L^\top`,
    :math:`h(s^2) = 2/(1 + \sqrt{1 + 4s^2})`; the regression matrix of y on x is
    :math:`M_S = P_{22}^{-1}A_0`.

    Parameters
    ----------
    cov : array_like, shape (d, d)
        Symmetric positive definite :math:`\Sigma`.
    A0 : array_like, shape (d, d)
        Kernel matrix (:math:`\beta K^\top Q` for :class:`~transformer_pde.SinkhornAttention`).

    Returns
    -------
    P11, P22 : ndarray, shape (d, d)
        Precision blocks of x and of y.
    """
    _, cov, L = _check_mean_cov(None, np.zeros(_square_size(cov, "cov")), cov, "cov", "cov")
    A0 = _v.as_matrix(A0, "A0", cov.shape)
    U, s, Wt = np.linalg.svd(L.T @ A0 @ L)
    # 1 / h(s^2) = (1 + sqrt(1 + 4 s^2)) / 2
    inv_h = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * s * s))
    Linv = np.linalg.solve(L, np.eye(len(L)))
    P22 = Linv.T @ ((U * inv_h) @ U.T) @ Linv
    P11 = Linv.T @ ((Wt.T * inv_h) @ Wt) @ Linv
    return _sym(P11), _sym(P22)


def gaussian_moments(dyn: TokenDynamics, mean0, cov0, t_eval, *, rtol: float = 1e-10,
                     atol: float = 1e-12, max_trace: float = 1e8) -> GaussianTrajectory:
    r"""Mean and covariance of the Gaussian solution of the Transformer PDE.

    .. math::

        \dot m = b(m, \Sigma), \qquad \dot\Sigma = M\Sigma + \Sigma M^\top, \qquad
        (m, \Sigma)(t_0) = (m_0, \Sigma_0),

    with b, M the affine field of :func:`affine_field` (softmax, :math:`L^2`, Sinkhorn
    with :math:`\varepsilon = 1`, and multi-head sums of them; docs/math.md §3.2-3.3). The
    factor ODE :math:`\dot L = ML`, :math:`\Sigma = LL^\top`, is integrated with scipy's
    DOP853, so the covariance is symmetric positive semi-definite at every saved time.

    Parameters
    ----------
    dyn : TokenDynamics
        Euclidean dynamics (``geometry="euclidean"``) of softmax (non-causal), L2,
        Sinkhorn or multi-head attention made of them, or a depth-dependent model
        (:class:`~transformer_pde.Layers` of them): then one DOP853 run per layer, each
        started from the mean and covariance where the previous one ended, exactly as
        consecutive calls would be, with ``t_eval`` inside the layers' times.
    mean0 : array_like, shape (d,)
        Initial mean.
    cov0 : array_like, shape (d, d)
        Initial covariance, symmetric positive definite.
    t_eval : array_like, shape (nt,)
        Strictly increasing times >= 0; ``t_eval[0]`` is the initial time.
    rtol, atol : float
        DOP853 tolerances on (m, L).
    max_trace : float
        Stop when :math:`\operatorname{tr}\Sigma` exceeds this (finite-time blow-up).

    Returns
    -------
    GaussianTrajectory
        ``t`` (nt,), ``mean`` (nt, d), ``cov`` (nt, d, d), ``dynamics``, ``info``.

    Raises
    ------
    GaussianBlowUpError
        (a ``FloatingPointError``) if :math:`\operatorname{tr}\Sigma` exceeds ``max_trace``
        before ``t_eval[-1]``; its ``t`` is the blow-up time, refined from the event by
        extrapolating :math:`1/\operatorname{tr}\Sigma` to zero (softmax with
        :math:`V = I`: :math:`t^* = 1/\lambda_{\max}(\Sigma_0^{1/2}(A + A^\top)\Sigma_0^{1/2})`,
        docs/math.md §3.4; see :func:`blow_up_time`).
    ValueError
        For variants or geometries with no Gaussian closure (unnormalized, sigmoid,
        causal, the sphere), and for bad input.
    """
    start = time.perf_counter()
    _check_dyn(dyn)
    _check_noiseless(dyn, "gaussian_moments")
    mean0, cov0, L0 = _check_mean_cov(dyn, mean0, cov0, "mean0", "cov0")
    d = len(mean0)
    t = _check_t_eval(t_eval)
    dyn._check_span(float(t[0]), float(t[-1]), "t_eval")
    for k in range(len(dyn.layers) if dyn.layers is not None else 1):
        _heads(dyn._layer(k), d)  # every layer has the closure (ValueError saying why not)
    rtol = _v.as_positive(rtol, "rtol")
    atol = _v.as_positive(atol, "atol")
    max_trace = _v.as_positive(max_trace, "max_trace")
    tr0 = float(np.trace(cov0))
    if tr0 >= max_trace:
        raise ValueError(f"max_trace={max_trace:g} must exceed tr(cov0)={tr0:g}")

    info = GaussianInfo(method="DOP853", rtol=rtol, atol=atol)
    mean = np.empty((len(t), d))
    cov = np.empty((len(t), d, d))
    mean[0], cov[0] = mean0, cov0
    # a depth-dependent model: one run per layer, each from the end state of the one before
    # (restarted as a fresh run is: from the mean and covariance), landing on the boundaries
    edges = [float(t[0]), *(b for b in dyn.breakpoints if t[0] < b < t[-1]), float(t[-1])]
    m, S, L = mean0, cov0, L0
    for k in range(len(edges) - 1 if len(t) > 1 else 0):
        a, b = edges[k], edges[k + 1]
        inside = np.flatnonzero((t > a) & (t < b))
        seg = np.concatenate([[a], t[inside], [b]])  # the times of one layer's run
        heads = _heads(dyn._layer_at(a), d)
        ms, cs = _moments_run(heads, d, m, S, L, seg, rtol, atol, max_trace,
                              float(np.trace(S)), info)
        mean[inside], cov[inside] = ms[1:-1], cs[1:-1]
        mean[-1], cov[-1] = ms[-1], cs[-1]
        if k + 2 < len(edges):  # the next layer starts from (m, S) as a fresh run would
            m, S, L = _check_mean_cov(None, ms[-1], cs[-1], f"the mean at t={b:g}",
                                      f"the covariance at t={b:g}")
            where = int(np.searchsorted(t, b))
            if where < len(t) and t[where] == b:
                mean[where], cov[where] = m, S
    info.wall_time = time.perf_counter() - start
    return GaussianTrajectory(t=t.copy(), mean=mean, cov=cov, dynamics=dyn, info=info)


def _moments_run(heads, d, mean0, cov0, L0, t, rtol, atol, max_trace, tr0, info):
    """The moments at the times t (nt,) of one smooth piece (one layer): DOP853 on (m, L)."""
    mean = np.empty((len(t), d))
    cov = np.empty((len(t), d, d))
    mean[0], cov[0] = mean0, cov0
    if len(t) > 1:
        def f(_t, y):
            dm, dL = _rhs(heads, y[:d], y[d:].reshape(d, d))
            return np.concatenate([dm, dL.ravel()])

        def trace_event(_t, y):
            L = y[d:]
            return float(L @ L) - max_trace

        trace_event.terminal = True
        trace_event.direction = 1.0
        y0 = np.concatenate([mean0, L0.ravel()])
        with np.errstate(over="ignore", invalid="ignore"):
            sol = solve_ivp(f, (t[0], t[-1]), y0, method="DOP853", t_eval=t, rtol=rtol,
                            atol=atol, events=trace_event)
        info.n_evals += int(sol.nfev)
        if sol.status == 1:  # the trace event fired
            _raise_blow_up(f, d, float(sol.t_events[0][0]), sol.y_events[0][0], t, tr0,
                           max_trace)
        if sol.status != 0 or sol.y.shape[1] != len(t):
            last = sol.y[:, -1] if sol.y.size else y0
            size = float(np.max(np.abs(last[:d])))
            why = (f" (the mean has grown to max|m_i| = {size:.3g} while tr cov = "
                   f"{float(last[d:] @ last[d:]):.3g}: the mean grows like e^(tV) and float64 "
                   "cannot follow it; shorten t_eval, or start from mean0 = 0, which stays 0)"
                   if not np.isfinite(size) or size > 1e100 else "")
            raise FloatingPointError(
                f"gaussian_moments: the moment ODE solver stopped at t={sol.t[-1]:.9g}: "
                f"{sol.message}{why}"
            )
        ys = sol.y.T
        mean[:] = ys[:, :d]
        Ls = ys[:, d:].reshape(len(t), d, d)
        cov[:] = _sym(Ls @ np.swapaxes(Ls, 1, 2))
        mean[0], cov[0] = mean0, cov0
    return mean, cov


def _raise_blow_up(f, d, t_e, y_e, t, tr0, max_trace):
    r"""Classify the growth at the trace event and raise GaussianBlowUpError.

    For a finite-time blow-up :math:`\operatorname{tr}\Sigma \approx c/(t^* - t)`, so
    :math:`\kappa = \frac{d}{dt}\operatorname{tr}\Sigma / (\operatorname{tr}\Sigma)^2 \to 1/c`
    and one Newton step on :math:`1/\operatorname{tr}\Sigma` gives
    :math:`t^* \approx t_e + \operatorname{tr}\Sigma/\frac{d}{dt}\operatorname{tr}\Sigma`
    with error :math:`O(\operatorname{tr}\Sigma^{-2})`. Exponential growth at rate r has
    :math:`\kappa = r/\operatorname{tr}\Sigma`, so :math:`\kappa\,\operatorname{tr}\Sigma
    \,(t_e - t_0)` is about :math:`\log R` for it and :math:`R - 1` for a blow-up
    (:math:`R = \text{max\_trace}/\operatorname{tr}\Sigma_0`); the threshold between
    them is the geometric mean :math:`\sqrt{R\log R}`.
    """
    L = y_e[d:].reshape(d, d)
    trace = float(np.sum(L * L))
    dy = f(t_e, y_e)
    dtrace = 2.0 * float(np.sum(L * dy[d:].reshape(d, d)))
    tau = trace / dtrace if dtrace > 0 else np.inf
    # elapsed time over the remaining time to blow-up: huge for 1/(t* - t) growth, and
    # about log(max_trace / tr0) for exponential growth
    ratio = (t_e - t[0]) / tau
    growth = max_trace / tr0
    finite = ratio > np.sqrt(growth * max(1.0, np.log(growth)))
    if finite:
        t_star = t_e + tau
        raise GaussianBlowUpError(
            f"gaussian_moments: the covariance blows up in finite time at t* = {t_star:.10g} "
            f"(tr cov reached max_trace={max_trace:g} at t={t_e:.10g}), before the last "
            f"requested time t_eval[-1]={t[-1]:g}; the Gaussian solution does not exist past t* "
            "(docs/math.md §3.4)",
            t_star, True,
        )
    raise GaussianBlowUpError(
        f"gaussian_moments: tr cov exceeded max_trace={max_trace:g} at t={t_e:.10g}, before the "
        f"last requested time t_eval[-1]={t[-1]:g}; the growth is exponential (rate "
        f"{1 / tau:.4g}), not a finite-time blow-up: raise max_trace to go further",
        t_e, False,
    )


def _scalar_v_heads(dyn, d: int, who: str):
    """(c_h, A_h) of the heads when every head is softmax attention with V = c_h I."""
    _check_noiseless(dyn, who)
    heads = _heads(dyn, d)
    out = []
    for h, hd in enumerate(heads):
        where = f"head {h}" if len(heads) > 1 else "the attention"
        if hd.kind != "softmax":
            raise ValueError(
                f"{who} applies to softmax attention with V = c I (e.g. V = +-I) only, but "
                f"{where} is {hd.kind}; use gaussian_moments"
            )
        c = float(np.trace(hd.V)) / d
        if np.max(np.abs(hd.V - c * np.eye(d))) > 1e-12 * max(1.0, abs(c)):
            raise ValueError(
                f"{who} applies to softmax attention with V = c I (e.g. V = +-I) only, but the V "
                f"of {where} is not a multiple of the identity; use gaussian_moments"
            )
        out.append((c, hd.A))
    return out


def blow_up_time(dyn: TokenDynamics, cov0) -> float:
    r"""Time to finite-time blow-up of the covariance, for softmax heads with :math:`V_h = c_hI`.

    .. math::

        \Sigma(t)^{-1} = \Sigma_0^{-1} - tS, \quad S = \sum_h c_h(A_h + A_h^\top), \qquad
        t^* = \frac{1}{\lambda_{\max}(\Sigma_0^{1/2}S\,\Sigma_0^{1/2})}

    (docs/math.md §3.4; :math:`V = I` gives :math:`S = A + A^\top`), and :math:`t^* = \infty`
    when :math:`\lambda_{\max} \le 0`. The blow-up does not depend on the mean.

    Parameters
    ----------
    dyn : TokenDynamics
        Euclidean dynamics of softmax attention (or multi-head softmax) with every
        :math:`V = cI` (``None`` is :math:`I`).
    cov0 : array_like, shape (d, d)
        Initial covariance, symmetric positive definite.

    Returns
    -------
    float
        :math:`t^*`, measured from the initial time (``inf`` if there is no blow-up).
    """
    _check_dyn(dyn)
    _, cov0, L0 = _check_mean_cov(dyn, np.zeros(_square_size(cov0, "cov0")), cov0, "cov0", "cov0")
    lam = _closed_form_spectrum(dyn, L0, "blow_up_time")[1]
    lmax = float(lam[-1])
    return 1.0 / lmax if lmax > 0.0 else np.inf


def _closed_form_spectrum(dyn, L0, who):
    """Eigen-decomposition L0^T S L0 = W diag(lam) W^T, plus (c_sum, A_eff)."""
    d = len(L0)
    cs = _scalar_v_heads(dyn, d, who)
    S = sum(c * (A + A.T) for c, A in cs)
    lam, W = np.linalg.eigh(_sym(L0.T @ S @ L0))
    c_sum = sum(c for c, _ in cs)
    A_eff = sum(c * A for c, A in cs)
    return W, lam, c_sum, A_eff


def gaussian_closed_form(dyn: TokenDynamics, mean0, cov0, t) -> GaussianTrajectory:
    r"""Closed-form covariance for softmax attention with :math:`V = cI` (e.g. :math:`V = \pm I`).

    .. math::

        \Sigma(t) = \big(\Sigma_0^{-1} - (t - t_0)S\big)^{-1}, \quad
        S = \sum_h c_h(A_h + A_h^\top), \qquad
        \dot m = \Big(\sum_h c_h\Big)m + \Sigma(t)\Big(\sum_h c_hA_h\Big)m

    (docs/math.md §3.4: :math:`\frac{d}{dt}\Sigma^{-1} = -S`). The covariance is evaluated as
    :math:`L_0W\operatorname{diag}(1/(1 - (t - t_0)\lambda))W^\top L_0^\top` with
    :math:`L_0^\top SL_0 = W\operatorname{diag}(\lambda)W^\top`, :math:`\Sigma_0 = L_0L_0^\top`.
    No closed form is known for the mean when A is not symmetric; it is integrated from
    its linear ODE (DOP853, rtol 1e-13) with the closed-form covariance. When the
    covariance blows up (:math:`\lambda_{\max} > 0`) the ODE is solved in the clock
    :math:`s = -\log(1 - (t - t_0)\lambda_{\max})`, in which its coefficient stays bounded up
    to the blow-up, so times just before :math:`t^*` cost a number of steps that grows
    like :math:`\log` of the distance to :math:`t^*`, not like its inverse.

    Parameters
    ----------
    dyn : TokenDynamics
        Euclidean dynamics of softmax (or multi-head softmax) attention with every
        :math:`V = cI`.
    mean0 : array_like, shape (d,)
        Initial mean.
    cov0 : array_like, shape (d, d)
        Initial covariance, symmetric positive definite.
    t : array_like, shape (nt,)
        Strictly increasing times >= 0; ``t[0]`` is the initial time.

    Returns
    -------
    GaussianTrajectory
        ``t`` (nt,), ``mean`` (nt, d), ``cov`` (nt, d, d).

    Raises
    ------
    GaussianBlowUpError
        If ``t[-1] - t[0]`` reaches the blow-up time :func:`blow_up_time` (its ``t`` is
        the absolute blow-up time).
    ValueError
        If some head is not softmax with V a multiple of the identity, or bad input.
    """
    start = time.perf_counter()
    _check_dyn(dyn)
    mean0, cov0, L0 = _check_mean_cov(dyn, mean0, cov0, "mean0", "cov0")
    t = _check_t_eval(t, "t")
    W, lam, c_sum, A_eff = _closed_form_spectrum(dyn, L0, "gaussian_closed_form")
    lmax = float(lam[-1])
    t_star = t[0] + (1.0 / lmax if lmax > 0.0 else np.inf)
    if t[-1] >= t_star:
        raise GaussianBlowUpError(
            f"gaussian_closed_form: the covariance blows up at t* = {t_star:.10g} "
            f"(1/lambda_max(Sigma0^1/2 S Sigma0^1/2) after t[0]={t[0]:g}), but t goes up to "
            f"{t[-1]:g} (docs/math.md §3.4)",
            t_star, True,
        )
    F = L0 @ W

    def cov_at(tau):
        return _sym((F / (1.0 - tau * lam)) @ F.T)

    d = len(mean0)
    cov = np.stack([cov_at(tau) for tau in t - t[0]])
    mean = np.empty((len(t), d))
    mean[0] = mean0
    n_evals = 0
    if len(t) > 1 and lmax > 0.0:
        # clock s = -log(1 - tau lmax): dtau/ds = e^{-s}/lmax, and 1 - tau lam_i =
        # e^{-s} + (1 - e^{-s})(1 - lam_i/lmax) without the cancellation of 1 - tau lam_i
        rel = 1.0 - lam / lmax

        def rhs(s, m):
            q = np.exp(-s)
            cov_s = _sym((F / (q + (1.0 - q) * rel)) @ F.T)
            return q / lmax * (c_sum * m + cov_s @ (A_eff @ m))

        s_eval = -np.log1p(-(t - t[0]) * lmax)
        sol = solve_ivp(rhs, (0.0, float(s_eval[-1])), mean0, method="DOP853", t_eval=s_eval,
                        rtol=1e-13, atol=1e-15)
    elif len(t) > 1:
        sol = solve_ivp(lambda s, m: c_sum * m + cov_at(s - t[0]) @ (A_eff @ m), (t[0], t[-1]),
                        mean0, method="DOP853", t_eval=t, rtol=1e-13, atol=1e-15)
    if len(t) > 1:
        if sol.status != 0:  # pragma: no cover - a linear ODE with a bounded coefficient
            raise FloatingPointError(f"gaussian_closed_form: the mean ODE failed: {sol.message}")
        mean[:] = sol.y.T
        mean[0] = mean0
        n_evals = int(sol.nfev)
    info = GaussianInfo(method="closed form (mean: DOP853)", rtol=1e-13, atol=1e-15,
                        n_evals=n_evals, wall_time=time.perf_counter() - start)
    return GaussianTrajectory(t=t.copy(), mean=mean, cov=cov, dynamics=dyn, info=info)
