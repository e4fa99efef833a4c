r"""Closed forms from the papers: equiangular rates, long context, linear growth rates.

Every function states its equation and where it comes from (MATH.md sections). Models
are named ``"SA"`` (softmax self-attention) and ``"USA"`` (unnormalized), both with
Q = K = V = I and post-LN on the sphere.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp
from scipy.special import expi, ive, spherical_in

from . import _validation as _v

__all__ = [
    "equiangular_rate",
    "equiangular_rho",
    "equiangular_time",
    "long_context_cosine",
    "critical_gamma",
    "circle_growth_rate",
    "sphere_growth_rate",
    "fastest_circle_mode",
]

_MODELS = ("SA", "USA")


def _model(model: str) -> str:
    if model not in _MODELS:
        raise ValueError(f"model must be one of {_MODELS}, got {model!r}")
    return model


def _n_tokens(n) -> int:
    n = _v.as_positive_int(n, "n")
    if n < 2:
        raise ValueError(f"n must be >= 2 (pairs of tokens), got {n}")
    return n


def equiangular_rate(rho, n: int, beta: float, model: str = "SA"):
    r"""Right-hand side of the equiangular ODE (MATH.md 4.4, `eq: ybeta`, `eq: ybetaUSA`).

    .. math::

        \dot\rho = \frac{2e^{\beta\rho}(1-\rho)(1+(n-1)\rho)}{e^\beta + (n-1)e^{\beta\rho}}
        \ \ (\text{SA}), \qquad
        \dot\rho = \frac2n e^{\beta\rho}(1-\rho)(1+(n-1)\rho)\ \ (\text{USA}).

    Parameters
    ----------
    rho : float or ndarray
        Common inner product of the n tokens.
    n : int
        Number of tokens (>= 2).
    beta : float
        Inverse temperature.
    model : {"SA", "USA"}
    """
    n, beta, model = _n_tokens(n), _v.as_real(beta, "beta"), _model(model)
    rho = np.asarray(rho, dtype=float)
    core = 2.0 * (1.0 - rho) * (1.0 + (n - 1) * rho)
    if model == "USA":
        return core * np.exp(beta * rho) / n
    # divide numerator and denominator by e^{beta rho}: no overflow for large beta
    return core / (np.exp(beta * (1.0 - rho)) + (n - 1))


def equiangular_rho(t, n: int, beta: float, model: str = "SA", rho0: float = 0.0) -> np.ndarray:
    r"""Solution :math:`\rho(t)` of the equiangular ODE from :math:`\rho(0) = \rho_0`.

    :math:`\beta = 0` uses the closed form
    :math:`\rho = (c e^{2t} - 1)/(c e^{2t} + n - 1)`, :math:`c = (1+(n-1)\rho_0)/(1-\rho_0)`
    (MATH.md 4.4, 6 item 3); otherwise DOP853 at rtol 1e-13.

    Parameters
    ----------
    t : array_like, shape (nt,)
        Increasing times >= 0.
    n, beta, model
        See :func:`equiangular_rate`.
    rho0 : float
        Initial inner product in ``[-1/(n-1), 1]`` (the equiangular state exists there).

    Returns
    -------
    ndarray, shape (nt,)
    """
    n, beta, model = _n_tokens(n), _v.as_real(beta, "beta"), _model(model)
    rho0 = _v.as_real(rho0, "rho0")
    if not -1.0 / (n - 1) <= rho0 <= 1.0:
        raise ValueError(f"rho0 must lie in [-1/(n-1), 1] = [{-1 / (n - 1):.6g}, 1], got {rho0}")
    t = np.atleast_1d(np.asarray(t, dtype=float))
    if t.ndim != 1 or np.any(t < 0) or np.any(np.diff(t) < 0):
        raise ValueError("t must be a 1-D array of nondecreasing times >= 0")
    if beta == 0.0 and rho0 < 1.0:
        c = (1.0 + (n - 1) * rho0) / (1.0 - rho0) * np.exp(2.0 * t)
        return (c - 1.0) / (c + n - 1.0)
    sol = solve_ivp(lambda _, y: equiangular_rate(y, n, beta, model), (0.0, float(t[-1])), [rho0],
                    method="DOP853", t_eval=t, rtol=1e-13, atol=1e-15)
    return sol.y[0]


def equiangular_time(rho, n: int, beta: float, model: str = "SA"):
    r"""Time at which the equiangular solution from :math:`\rho_0 = 0` reaches ``rho``.

    Exact solutions of the separable ODE (MATH.md 4.4; Ei the exponential integral):

    .. math::

        t_{SA}(\rho) = \tfrac{n-1}{2n}\ln\tfrac{1+(n-1)\rho}{1-\rho} + \tfrac1{2n}\Big[
        \mathrm{Ei}(\beta) - \mathrm{Ei}(\beta(1-\rho)) + e^{\frac{\beta n}{n-1}}\Big(
        \mathrm{Ei}\big(-\tfrac{\beta(1+(n-1)\rho)}{n-1}\big)
        - \mathrm{Ei}\big(-\tfrac{\beta}{n-1}\big)\Big)\Big],

        t_{USA}(\rho) = \tfrac12\Big[e^{-\beta}\big(\mathrm{Ei}(\beta) - \mathrm{Ei}(\beta(1-\rho))\big)
        + e^{\frac{\beta}{n-1}}\Big(\mathrm{Ei}\big(-\tfrac{\beta(1+(n-1)\rho)}{n-1}\big)
        - \mathrm{Ei}\big(-\tfrac\beta{n-1}\big)\Big)\Big],

    for :math:`\beta > 0` and :math:`0 \le \rho < 1`.
    """
    n, beta, model = _n_tokens(n), _v.as_real(beta, "beta"), _model(model)
    if beta <= 0.0:
        raise ValueError(f"beta must be > 0 for the Ei formulas (beta = 0 has a closed form), got {beta}")
    rho = np.asarray(rho, dtype=float)
    if np.any(rho < 0.0) or np.any(rho >= 1.0):
        raise ValueError("rho must lie in [0, 1)")
    m = n - 1
    bracket = (np.exp(beta * n / m if model == "SA" else beta / m)
               * (expi(-beta * (1.0 + m * rho) / m) - expi(-beta / m)))
    near = expi(beta) - expi(beta * (1.0 - rho))
    if model == "SA":
        return m / (2.0 * n) * np.log((1.0 + m * rho) / (1.0 - rho)) + (near + bracket) / (2.0 * n)
    return 0.5 * (np.exp(-beta) * near + bracket)


def long_context_cosine(n, beta, rho):
    r"""Cosine between two outputs of one attention layer on an equiangular input.

    MATH.md 4.6 (Chen-Lin-Polyanskiy-Rigollet, arXiv 2510.05554), V = I:

    .. math::

        \langle\theta_i,\theta_j\rangle = \frac{\rho + (1-\rho)(2ab + (n-2)b^2)}
        {\rho + (1-\rho)(a^2 + (n-1)b^2)}, \qquad
        a = \frac{1}{1 + (n-1)e^{-\beta(1-\rho)}},\quad b = \frac{1-a}{n-1}.

    With :math:`\beta = \gamma\log n` and :math:`n\to\infty` the limit is 1, :math:`4\rho/(1+3\rho)`
    or :math:`\rho` for :math:`\gamma <, =, > \gamma_c = 1/(1-\rho)`.
    """
    n = np.asarray(n, dtype=float)
    beta, rho = np.asarray(beta, dtype=float), np.asarray(rho, dtype=float)
    if np.any(n < 2) or np.any(rho <= -1.0) or np.any(rho >= 1.0):
        raise ValueError("need n >= 2 and rho in (-1, 1)")
    a = 1.0 / (1.0 + (n - 1.0) * np.exp(-beta * (1.0 - rho)))
    b = (1.0 - a) / (n - 1.0)
    num = rho + (1.0 - rho) * (2.0 * a * b + (n - 2.0) * b**2)
    den = rho + (1.0 - rho) * (a**2 + (n - 1.0) * b**2)
    return num / den


def critical_gamma(rho):
    r""":math:`\gamma_c = 1/(1-\rho)`, the critical scaling :math:`\beta = \gamma\log n` (MATH.md 4.6)."""
    rho = np.asarray(rho, dtype=float)
    if np.any(rho >= 1.0):
        raise ValueError("rho must be < 1")
    return 1.0 / (1.0 - rho)


def circle_growth_rate(k, beta: float, model: str = "SA"):
    r"""Growth rate of mode :math:`e^{ik\theta}` of the uniform density on the circle.

    MATH.md 2.4: :math:`\lambda_k^{SA} = k^2 I_k(\beta)/(\beta I_0(\beta))`,
    :math:`\lambda_k^{USA} = k^2 I_k(\beta)/\beta` (:math:`\beta > 0`).
    """
    beta, model = _v.as_positive(beta, "beta"), _model(model)
    k = np.asarray(k, dtype=float)
    if model == "SA":
        return k**2 * ive(k, beta) / (beta * ive(0, beta))
    return k**2 * ive(k, beta) * np.exp(beta) / beta


def sphere_growth_rate(l, beta: float, model: str = "SA"):
    r"""Growth rate of a degree-l spherical harmonic of the uniform density on :math:`\mathbb S^2`.

    MATH.md 8: :math:`\lambda_l^{SA} = l(l+1)\,i_l(\beta)/(\beta\,i_0(\beta))`,
    :math:`\lambda_l^{USA} = l(l+1)\,i_l(\beta)/\beta` (:math:`i_l` modified spherical Bessel).
    """
    beta, model = _v.as_positive(beta, "beta"), _model(model)
    l = np.asarray(l, dtype=int)
    rate = l * (l + 1) * spherical_in(l, beta) / beta
    return rate / spherical_in(0, beta) if model == "SA" else rate


def fastest_circle_mode(beta: float, k_max: int = 1000) -> int:
    r""":math:`k^* = \arg\max_k k^2 I_k(\beta)`: about the number of metastable clusters on the
    circle (MATH.md 2.4, 6 item 7; :math:`k^* \approx \sqrt{2\beta}`)."""
    beta = _v.as_positive(beta, "beta")
    k = np.arange(1, _v.as_positive_int(k_max, "k_max") + 1)
    return int(k[np.argmax(k**2 * ive(k, beta))])
