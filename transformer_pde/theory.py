r"""Closed forms from the papers.

Equiangular rates, normalization schemes, long context, linear growth rates, metastable
time scales, the noisy model, Gaussian solutions.

Every function states its equation and where it comes from (docs/math.md sections). Models
are named ``"SA"`` (softmax self-attention) and ``"USA"`` (unnormalized), both with
Q = K = V = I and post-LN on the sphere unless a normalization scheme is named.
The Gaussian solutions for :math:`V = \pm I` (docs/math.md §3.4) live in
:mod:`transformer_pde.gaussian` and are re-exported here:
:func:`gaussian_closed_form` and :func:`blow_up_time`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.integrate import solve_ivp
from scipy.optimize import brentq
from scipy.special import exp1, expi, gammaln, ive, spherical_in

from . import _validation as _v
from .gaussian import blow_up_time, gaussian_closed_form

__all__ = [
    "equiangular_rate",
    "equiangular_rho",
    "equiangular_time",
    "long_context_cosine",
    "critical_gamma",
    "circle_growth_rate",
    "sphere_growth_rate",
    "fastest_circle_mode",
    "equiangular_normalized_rate",
    "equiangular_normalized",
    "merge_time_scale",
    "metastable_time",
    "critical_kappa",
    "noisy_order_parameter",
    "noisy_growth_rate",
    "gaussian_closed_form",
    "blow_up_time",
    "causal_response",
    "causal_correlation",
    "retrieval_profile",
    "causal_correlation_matrix",
]

_MODELS = ("SA", "USA")


def _model(model: str) -> str:
    return _v.as_choice(model, "model", _MODELS)


def _times(t) -> np.ndarray:
    """Saved times of an ODE solution: a non-empty 1-D array, finite, nondecreasing, >= 0."""
    t = np.atleast_1d(_v.as_real_array(t, "t", finite=False))
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-D array of times, got shape {t.shape}")
    _v.as_real_array(t, "t")  # non-empty and finite (an infinite time has no solver steps)
    if np.any(t < 0) or np.any(np.diff(t) < 0):
        raise ValueError(f"t must be nondecreasing times >= 0, got {t}")
    return t


def _expi_scaled(x):
    r""":math:`e^{-x}\,\mathrm{Ei}(x)` for x > 0 without overflow.

    Up to x = 700 directly; above, the asymptotic series :math:`\sum_{k<40} k!/x^{k+1}`,
    whose terms decrease up to k = x, so its error (about the first omitted term,
    :math:`40!/700^{41}`, relative to 1/x) is far below round-off.
    """
    x = np.asarray(x, dtype=float)
    big = x > 700.0
    with np.errstate(over="ignore", invalid="ignore"):
        direct = expi(np.where(big, 1.0, x)) * np.exp(-np.where(big, 1.0, x))
    xb = np.where(big, x, 1.0)
    term, series = 1.0 / xb, np.zeros_like(xb)
    for k in range(40):
        series = series + term
        term = term * (k + 1) / xb
    return np.where(big, series, direct)


def _exp1_scaled(x):
    r""":math:`e^{x}\,E_1(x)` for x > 0 without underflow (:math:`E_1(x) = -\mathrm{Ei}(-x)`).

    Up to x = 700 directly; above, the alternating asymptotic series
    :math:`\sum_{k<40} (-1)^k k!/x^{k+1}` (error below its first omitted term).
    """
    x = np.asarray(x, dtype=float)
    big = x > 700.0
    direct = exp1(np.where(big, 1.0, x)) * np.exp(np.where(big, 1.0, x))
    xb = np.where(big, x, 1.0)
    term, series = 1.0 / xb, np.zeros_like(xb)
    for k in range(40):
        series = series + term
        term = -term * (k + 1) / xb
    return np.where(big, series, direct)


def _n_tokens(n) -> int:
    n = _v.as_positive_int(n, "n")
    if n < 2:
        raise ValueError(f"n must be >= 2 (pairs of tokens), got {n}")
    return n


def equiangular_rate(rho, n: int, beta: float, model: str = "SA"):
    r"""Right-hand side of the equiangular ODE (docs/math.md §4.4, `eq: ybeta`, `eq: ybetaUSA`).

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

    Returns
    -------
    float or ndarray, shape of rho
        The rate; for USA ``inf`` where :math:`e^{\beta\rho}` exceeds float64 (the true
        rate, finite, is not representable). SA rates are bounded by :math:`2(1-\rho)(1+(n-1)\rho)/(n-1)`.
    """
    n, beta, model = _n_tokens(n), _v.as_real(beta, "beta"), _model(model)
    with np.errstate(over="ignore"):  # USA at large beta rho: the rate is inf (its limit)
        return _rate(_v.as_real_array(rho, "rho"), n, beta, model)


def _rate(rho, n: int, beta: float, model: str):
    """:func:`equiangular_rate` on validated arguments (what the ODE solver calls)."""
    core = 2.0 * (1.0 - rho) * (1.0 + (n - 1) * rho)
    if model == "USA":
        return core * np.exp(beta * rho) / n
    # divide numerator and denominator by e^{beta rho}: no overflow for large beta
    return core / (np.exp(beta * (1.0 - rho)) + (n - 1))


def equiangular_rho(t, n: int, beta: float, model: str = "SA", rho0: float = 0.0) -> np.ndarray:
    r"""Solution :math:`\rho(t)` of the equiangular ODE from :math:`\rho(0) = \rho_0`.

    :math:`\beta = 0` uses the closed form
    :math:`\rho = (c e^{2t} - 1)/(c e^{2t} + n - 1)`, :math:`c = (1+(n-1)\rho_0)/(1-\rho_0)`
    (docs/math.md §4.4, 6 item 3); otherwise DOP853 at rtol 1e-13.

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
    t = _times(t)
    if beta == 0.0 and rho0 < 1.0:
        c = (1.0 + (n - 1) * rho0) / (1.0 - rho0) * np.exp(2.0 * t)
        return (c - 1.0) / (c + n - 1.0)
    sol = solve_ivp(lambda _, y: _rate(y, n, beta, model), (0.0, float(t[-1])), [rho0],
                    method="DOP853", t_eval=t, rtol=1e-13, atol=1e-15)
    _check_solved(sol, float(t[-1]), f"beta={beta:g} (model {model}, n={n})")
    return sol.y[0]


def _check_solved(sol, t_end: float, what: str) -> None:
    """Refuse a DOP853 run that stopped early (it returns fewer saved times than asked)."""
    if sol.status != 0:
        reached = float(sol.t[-1]) if len(sol.t) else 0.0
        raise ValueError(
            f"the equiangular ODE at {what} cannot be integrated to t={t_end:g}: DOP853 stopped "
            f"at t={reached:.6g} ({sol.message}); at large beta rho jumps within a time of order "
            "e^(beta (1 - rho)) (SA) or 1/beta (USA): use a smaller beta, or equiangular_time "
            "for the time at which a given rho is reached"
        )


def equiangular_time(rho, n: int, beta: float, model: str = "SA"):
    r"""Time at which the equiangular solution from :math:`\rho_0 = 0` reaches ``rho``.

    Exact solutions of the separable ODE (docs/math.md §4.4; Ei the exponential integral):

    .. math::

        t_{SA}(\rho) = \tfrac{n-1}{2n}\ln\tfrac{1+(n-1)\rho}{1-\rho} + \tfrac1{2n}\Big[
        \mathrm{Ei}(\beta) - \mathrm{Ei}(\beta(1-\rho)) + e^{\frac{\beta n}{n-1}}\Big(
        \mathrm{Ei}\big(-\tfrac{\beta(1+(n-1)\rho)}{n-1}\big)
        - \mathrm{Ei}\big(-\tfrac{\beta}{n-1}\big)\Big)\Big],

        t_{USA}(\rho) = \tfrac12\Big[e^{-\beta}\big(\mathrm{Ei}(\beta) - \mathrm{Ei}(\beta(1-\rho))\big)
        + e^{\frac{\beta}{n-1}}\Big(\mathrm{Ei}\big(-\tfrac{\beta(1+(n-1)\rho)}{n-1}\big)
        - \mathrm{Ei}\big(-\tfrac\beta{n-1}\big)\Big)\Big],

    for :math:`\beta > 0` and :math:`0 \le \rho < 1`. Both are evaluated with the scaled
    integrals :math:`E(x) = e^{-x}\mathrm{Ei}(x)`, :math:`F(x) = e^xE_1(x)`:

    .. math::

        t_{USA} = \tfrac12\big[E(\beta) - e^{-\beta\rho}E(\beta(1-\rho))
        + F(\tfrac\beta{n-1}) - e^{-\beta\rho}F(\tfrac{\beta(1+(n-1)\rho)}{n-1})\big],

    and :math:`t_{SA}` the logarithm plus :math:`\tfrac{e^\beta}{n}` times the same bracket,
    so nothing overflows at large beta (docs/math.md §4.4).

    Returns
    -------
    float or ndarray, shape of rho
        The time; ``inf`` for SA where :math:`e^\beta` times the bracket exceeds float64
        (beta beyond about 700: the SA rate from rho = 0 is about :math:`e^{-\beta}`, so
        the true time is finite but above 1.8e308).

    Examples
    --------
    >>> round(float(equiangular_time(0.5, 4, 1e3, "USA")), 7)   # about n / (2 beta) - 4 / beta^2
    0.001996
    >>> float(equiangular_time(0.5, 4, 1e3, "SA"))              # about e^beta / beta: beyond float64
    inf
    """
    n, beta, model = _n_tokens(n), _v.as_real(beta, "beta"), _model(model)
    if beta <= 0.0:
        raise ValueError(f"beta must be > 0 for the Ei formulas (beta = 0 has a closed form), got {beta}")
    rho = _v.as_real_array(rho, "rho")
    if np.any(rho < 0.0) or np.any(rho >= 1.0):
        raise ValueError(f"rho must lie in [0, 1), got {rho}")
    m = n - 1
    damp = np.exp(-beta * rho)
    bracket = (_expi_scaled(beta) - damp * _expi_scaled(beta * (1.0 - rho))
               + _exp1_scaled(beta / m) - damp * _exp1_scaled(beta * (1.0 + m * rho) / m))
    if model == "USA":
        return 0.5 * bracket
    with np.errstate(over="ignore"):  # e^beta beyond float64: the time is inf (documented)
        scale = np.exp(beta) / (2.0 * n)
        return m / (2.0 * n) * np.log((1.0 + m * rho) / (1.0 - rho)) + scale * bracket


def long_context_cosine(n, beta, rho):
    r"""Cosine between two outputs of one attention layer on an equiangular input.

    docs/math.md §4.6 (Chen-Lin-Polyanskiy-Rigollet, arXiv 2510.05554), V = I:

    .. math::

        \langle\theta_i,\theta_j\rangle = \frac{\rho + (1-\rho)(2ab + (n-2)b^2)}
        {\rho + (1-\rho)(a^2 + (n-1)b^2)}, \qquad
        a = \frac{1}{1 + (n-1)e^{-\beta(1-\rho)}},\quad b = \frac{1-a}{n-1}.

    With :math:`\beta = \gamma\log n` and :math:`n\to\infty` the limit is 1, :math:`4\rho/(1+3\rho)`
    or :math:`\rho` for :math:`\gamma <, =, > \gamma_c = 1/(1-\rho)`.
    """
    n = _v.as_real_array(n, "n")
    beta, rho = _v.as_real_array(beta, "beta"), _v.as_real_array(rho, "rho")
    if np.any(n < 2):
        raise ValueError(f"n must be >= 2, got {n}")
    if np.any(rho <= -1.0) or np.any(rho >= 1.0):
        raise ValueError(f"rho must lie in (-1, 1), got {rho}")
    a = 1.0 / (1.0 + (n - 1.0) * np.exp(-beta * (1.0 - rho)))
    b = (1.0 - a) / (n - 1.0)
    num = rho + (1.0 - rho) * (2.0 * a * b + (n - 2.0) * b**2)
    den = rho + (1.0 - rho) * (a**2 + (n - 1.0) * b**2)
    return num / den


def critical_gamma(rho):
    r"""The critical :math:`\gamma_c = 1/(1-\rho)` of the scaling :math:`\beta = \gamma\log n`.

    See docs/math.md §4.6.
    """
    rho = _v.as_real_array(rho, "rho")
    if np.any(rho >= 1.0):
        raise ValueError(f"rho must be < 1, got {rho}")
    return 1.0 / (1.0 - rho)


def circle_growth_rate(k, beta: float, model: str = "SA"):
    r"""Growth rate of mode :math:`e^{ik\theta}` of the uniform density on the circle.

    docs/math.md §2.4: :math:`\lambda_k^{SA} = k^2 I_k(\beta)/(\beta I_0(\beta))`,
    :math:`\lambda_k^{USA} = k^2 I_k(\beta)/\beta` (:math:`\beta > 0`).

    Returns ``inf`` for USA where :math:`e^\beta` exceeds float64 (beta above about
    709.8): the true rate, about :math:`k^2e^\beta/\beta^{3/2}`, is finite but not
    representable. SA rates are finite for every beta (:math:`\to k^2/\beta`).
    """
    beta, model = _v.as_positive(beta, "beta"), _model(model)
    k = _degrees(k, "k")
    if model == "SA":
        return k**2 * ive(k, beta) / (beta * ive(0, beta))
    with np.errstate(over="ignore"):
        return k**2 * ive(k, beta) * np.exp(beta) / beta


def sphere_growth_rate(l, beta: float, model: str = "SA", d: int = 3):
    r"""Growth rate of a degree-l spherical harmonic of the uniform density on :math:`\mathbb S^{d-1}`.

    docs/math.md §8 (d = 3) and §9.19 (any d): linearising about the uniform probability
    :math:`\sigma`, a perturbation :math:`\varepsilon Y_l` (any spherical harmonic of degree l,
    e.g. the zonal :math:`C_l^{(d-2)/2}(\cos\vartheta)`) grows at

    .. math::

        \lambda_l^{SA} = \frac{l(l+d-2)}{\beta}\,\frac{I_{l+\nu}(\beta)}{I_\nu(\beta)}, \qquad
        \lambda_l^{USA} = \lambda_l^{SA}\;\Gamma(\nu+1)\Big(\frac2\beta\Big)^{\nu} I_\nu(\beta),
        \qquad \nu = \frac{d-2}{2},

    the Funk-Hecke coefficients of :math:`e^{\beta t}` (:math:`\beta > 0`). d = 3 gives
    :math:`l(l+1)\,i_l(\beta)/(\beta\,i_0(\beta))` (:math:`i_l` modified spherical Bessel)
    and d = 2 the circle's :func:`circle_growth_rate`. The Bessel ratio is a product of
    :math:`I_{\mu+1}/I_\mu` by backward recurrence (:func:`_bessel_ratio`), so nothing
    underflows at d = 1024.

    Parameters
    ----------
    l : int or array_like of int
        Degrees >= 0.
    beta : float
        Inverse temperature, > 0.
    model : {"SA", "USA"}
    d : int
        Ambient dimension, >= 2.

    Returns
    -------
    float or ndarray, shape of l
        Finite for SA at every beta (:math:`\to l(l+d-2)/\beta` as :math:`\beta \to \infty`,
        docs/math.md §9.19); for USA ``inf`` where :math:`I_\nu(\beta)` exceeds float64
        (beta above about 700): the true rate is finite but not representable. Outside
        1e-3 <= beta <= 500 the case d = 3 uses the ratio form of any d (:math:`i_l`
        overflows above, underflows below).

    Examples
    --------
    >>> import numpy as np
    >>> bool(np.isclose(sphere_growth_rate(1, 2.0, d=2), circle_growth_rate(1, 2.0), rtol=1e-13))
    True
    >>> round(float(sphere_growth_rate(1, 1.0, d=1024)), 4)   # about (d - 1) / d for beta << d
    0.999
    """
    beta, model = _v.as_positive(beta, "beta"), _model(model)
    d = _dimension(d)
    l = _degrees(l, "l").astype(int)
    if d == 3 and 1e-3 <= beta <= 500.0:  # i_l(beta) neither overflows nor underflows
        rate = l * (l + 1) * spherical_in(l, beta) / beta
        return rate / spherical_in(0, beta) if model == "SA" else rate
    nu = 0.5 * (d - 2)
    ls = np.atleast_1d(l).astype(int)
    top = int(ls.max())
    ratios = _bessel_ratio(nu + np.arange(top), beta)  # I_{nu+k+1} / I_nu+k, k = 0..top-1
    prod = np.concatenate([[1.0], np.cumprod(ratios)])  # I_{nu+l} / I_nu
    rate = ls * (ls + d - 2) * prod[ls] / beta
    if model == "USA":
        with np.errstate(over="ignore"):  # above float64: inf (documented in Returns)
            rate = rate * np.exp(gammaln(nu + 1.0) + nu * np.log(2.0 / beta) + _log_bessel_i(nu, beta))
    return rate.reshape(l.shape) if l.ndim else float(rate[0])


def _degrees(k, name: str) -> np.ndarray:
    """Integer degrees >= 0 (a scalar or an array), as float64."""
    given = _v.as_real_array(k, name)
    if np.any(given != np.round(given)) or np.any(given < 0):
        raise ValueError(f"{name} must be integer degrees >= 0, got {k!r}")
    return given


#: the most backward-recurrence steps of :func:`_bessel_ratio` (60 + 2x of them are needed)
_MAX_RECURRENCE = 2_000_000


def _bessel_ratio(mu, x: float, extra: int | None = None) -> np.ndarray:
    r""":math:`I_{\mu+1}(x)/I_\mu(x)` for each :math:`\mu \ge 0` by backward recurrence.

    :math:`r_\mu = x / (2(\mu+1) + x\,r_{\mu+1})`, started ``extra`` orders above from
    Amos's bound :math:`r_\mu \approx x/(\mu + 1 + \sqrt{(\mu+1)^2 + x^2})`; the
    starting error is damped by the product of the ratios below it (each < 1), so 60 + 2x
    orders give round-off accuracy.
    """
    mu = np.atleast_1d(np.asarray(mu, dtype=float))
    if extra is None and x > 1000.0:
        # far above the orders: I_mu(x) e^{-x} ~ 1/sqrt(2 pi x) does not underflow, and
        # ive's ratio has round-off accuracy; the recurrence is for what remains
        lo, hi = ive(mu, x), ive(mu + 1.0, x)
        good = (lo > 1e-250) & (hi > 1e-250)
        if np.all(good):
            return hi / lo
    steps = int(60 + 2.0 * x) if extra is None else extra
    if steps > _MAX_RECURRENCE:
        raise ValueError(
            f"beta = {x:g} with orders up to {mu.max():g}: the Bessel ratios I_(mu+1)/I_mu would "
            f"need {steps} recurrence steps (limit {_MAX_RECURRENCE}); use beta <= 1e6 or lower orders"
        )
    top = mu + steps
    r = x / (top + 1.0 + np.sqrt((top + 1.0) ** 2 + x * x))
    for k in range(steps, 0, -1):
        m = mu + k - 1
        r = x / (2.0 * (m + 1.0) + x * r)
    return r


def _log_bessel_i(nu: float, x: float) -> float:
    r""":math:`\log I_\nu(x)` for x > 0: from ``ive`` where it does not underflow, else by ratios.

    Below the underflow, :math:`I_\nu = I_{\nu_0}\prod_{k<\nu-\nu_0} r_{\nu_0+k}` with
    :math:`\nu_0 = \nu - \lfloor\nu\rfloor` (where ``ive`` is accurate) and the ratios
    :math:`r_m = I_{m+1}/I_m` of :func:`_bessel_ratio`.
    """
    value = ive(nu, x)
    if value > 1e-280:
        return float(np.log(value) + x)
    base = nu - np.floor(nu)
    ratios = _bessel_ratio(base + np.arange(int(np.floor(nu))), x)
    return float(np.log(ive(base, x)) + x + np.sum(np.log(ratios)))


def fastest_circle_mode(beta: float, k_max: int = 1000) -> int:
    r""":math:`k^* = \arg\max_k k^2 I_k(\beta)`: about the number of metastable clusters on the circle.

    See docs/math.md §2.4, 6 item 7; :math:`k^* \approx \sqrt{2\beta}`.
    """
    beta = _v.as_positive(beta, "beta")
    k = np.arange(1, _v.as_positive_int(k_max, "k_max") + 1)
    return int(k[np.argmax(k**2 * ive(k, beta))])


# ---------------------------------------------------------------------------------------
# normalization schemes in the equiangular model (docs/math.md §4.5)
# ---------------------------------------------------------------------------------------
_NORM_SCHEMES = ("post", "pre", "peri", "mix", "ngpt", "cod")


def _alpha_at(alpha, t: float) -> float:
    return float(alpha(t)) if callable(alpha) else alpha


def equiangular_normalized_rate(rho, r, t: float, n: int, beta: float, norm: str = "post", *,
                                alpha: float | Callable[[float], float] = 1.0, tau: float = 1.0):
    r"""Right-hand side :math:`(\dot\rho, \dot r)` of the equiangular SA model under a normalization scheme.

    See docs/math.md §4.5 (Karagodin-Ge-Polyanskiy-Rigollet, arXiv 2510.22026).

    Tokens :math:`x_j = r\theta_j` with a common radius r and
    :math:`\langle\theta_i,\theta_j\rangle = \rho`; with :math:`Z = e^\beta + (n-1)e^{\beta\rho}`,

    .. math::

        \dot\rho = \frac{2}{s}\,\frac{e^{\beta\rho}(1-\rho)(1+(n-1)\rho)}{Z}, \quad
        \langle\theta, A\rangle = \frac{e^\beta + (n-1)\rho e^{\beta\rho}}{Z}, \quad
        \|A\|^2 = \frac{e^{2\beta} + 2(n-1)\rho e^{\beta(1+\rho)}
        + (n-1)e^{2\beta\rho}(1+(n-2)\rho)}{Z^2},

    with speed factor s and radius rate: post :math:`s = 1, \dot r = 0`; pre
    :math:`s = r, \dot r = \langle\theta, A\rangle`; mix post for :math:`t \le \tau`, pre
    after; peri :math:`s = r\|A\|, \dot r = \langle\theta, A\rangle/\|A\|`; nGPT
    :math:`s = \|A\|/\alpha_t, \dot r = 0`; CoD :math:`s = \sqrt{t+1}, \dot r = 0` (the
    schemes of :class:`~transformer_pde.TokenDynamics`).

    Parameters
    ----------
    rho, r : float
        Common inner product and common radius (> 0).
    t : float
        Time (mix, nGPT with a callable alpha, CoD).
    n : int
        Number of tokens, >= 2.
    beta : float
        Inverse temperature.
    norm : {"post", "pre", "peri", "mix", "ngpt", "cod"}
    alpha : float or callable
        nGPT step size :math:`\alpha_t`.
    tau : float
        Mix-LN switching time.

    Returns
    -------
    (float, float)
    """
    n, beta = _n_tokens(n), _v.as_real(beta, "beta")
    rho, r = _v.as_real(rho, "rho"), _v.as_positive(r, "r")
    return _normalized_rate(rho, r, _v.as_real(t, "t"), n, beta, _norm_scheme(norm),
                            alpha, _v.as_real(tau, "tau"))


def _norm_scheme(norm: str) -> str:
    return _v.as_choice(norm, "norm", _NORM_SCHEMES)


def _normalized_rate(rho, r, t, n, beta, norm, alpha, tau):
    """:func:`equiangular_normalized_rate` on validated arguments."""
    # b = e^{beta rho}/Z and a = e^beta/Z, computed without overflow
    b = 1.0 / (np.exp(beta * (1.0 - rho)) + (n - 1))
    a = 1.0 - (n - 1) * b
    along = a + (n - 1) * rho * b  # <theta, A>
    if norm == "mix":
        norm = "post" if t <= tau else "pre"
    if norm in ("peri", "ngpt"):
        size = np.sqrt(a * a + 2.0 * (n - 1) * rho * a * b + (n - 1) * b * b * (1.0 + (n - 2) * rho))
    if norm == "post":
        s, r_dot = 1.0, 0.0
    elif norm == "pre":
        s, r_dot = r, along
    elif norm == "peri":
        s, r_dot = r * size, along / size
    elif norm == "ngpt":
        s, r_dot = size / _alpha_at(alpha, t), 0.0
    else:  # cod
        s, r_dot = np.sqrt(t + 1.0), 0.0
    return 2.0 * b * (1.0 - rho) * (1.0 + (n - 1) * rho) / s, r_dot


def equiangular_normalized(t, n: int, beta: float, norm: str = "post", *, rho0: float = 0.0,
                           r0: float = 1.0, alpha: float | Callable[[float], float] = 1.0,
                           tau: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    r"""Solve the equiangular SA model under a normalization scheme (DOP853, rtol 1e-13).

    See :func:`equiangular_normalized_rate` for the equations. Consequences (docs/math.md §4.5):
    post :math:`1-\rho \sim e^{-2t}`; pre and peri :math:`r(t)/t \to 1` and
    :math:`1 - \rho \sim Ct^{-2}`; CoD :math:`1-\rho \sim e^{-4\sqrt t}`; nGPT
    :math:`1-\rho\sim e^{-2\int_0^t\alpha}`. Particles :math:`x_i(0) = r_0e_i` (n = d) of
    :class:`~transformer_pde.TokenDynamics` with the same scheme follow it.

    Parameters
    ----------
    t : array_like, shape (nt,)
        Nondecreasing times >= 0.
    n, beta, norm, alpha, tau
        See :func:`equiangular_normalized_rate`.
    rho0 : float
        Initial inner product in [-1/(n-1), 1).
    r0 : float
        Initial radius, > 0.

    Returns
    -------
    rho, r : ndarray, shape (nt,)
    """
    n, beta = _n_tokens(n), _v.as_real(beta, "beta")
    rho0, r0, tau = _v.as_real(rho0, "rho0"), _v.as_positive(r0, "r0"), _v.as_real(tau, "tau")
    if not -1.0 / (n - 1) <= rho0 < 1.0:
        raise ValueError(f"rho0 must lie in [-1/(n-1), 1) = [{-1 / (n - 1):.6g}, 1), got {rho0}")
    if not callable(alpha):
        alpha = _v.as_positive(alpha, "alpha")
    t = _times(t)
    norm = _norm_scheme(norm)

    def rhs(time, y):
        return _normalized_rate(y[0], y[1], time, n, beta, norm, alpha, tau)

    # mix-LN switches at tau: integrate the two smooth pieces separately
    cuts = [0.0] + ([tau] if norm == "mix" and 0.0 < tau < t[-1] else []) + [float(t[-1])]
    out = np.empty((2, len(t)))
    y = np.array([rho0, r0])
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        inside = (t >= lo) & (t <= hi)
        stops = np.unique(np.append(t[inside], hi))
        sol = solve_ivp(rhs, (lo, hi), y, method="DOP853", t_eval=stops, rtol=1e-13, atol=1e-15)
        _check_solved(sol, hi, f"beta={beta:g} (norm {norm}, n={n})")
        out[:, inside] = sol.y[:, np.searchsorted(stops, t[inside])]
        y = sol.y[:, -1]
    return out[0], out[1]


# ---------------------------------------------------------------------------------------
# metastability (docs/math.md §4.3, 5.1)
# ---------------------------------------------------------------------------------------
def merge_time_scale(beta: float, rho_max):
    r"""Time scale :math:`e^{\beta(1-\rho_{\max})}` of the next merge of clusters.

    For clusters whose largest inter-cluster inner product is :math:`\rho_{\max}`
    (docs/math.md §4.3, Bruno-Pasqualotto-Agazzi).

    k equally spaced clusters on the circle have :math:`\rho_{\max} = \cos(2\pi/k)`.
    Returns ``inf`` where :math:`\beta(1-\rho_{\max}) > 709` (the scale exceeds float64).
    """
    beta = _v.as_real(beta, "beta")
    rho_max = _v.as_real_array(rho_max, "rho_max")
    if np.any(np.abs(rho_max) > 1.0):
        raise ValueError(f"rho_max must lie in [-1, 1], got {rho_max}")
    with np.errstate(over="ignore"):
        return np.exp(beta * (1.0 - rho_max))


def metastable_time(beta: float, n: int, alpha: float, epsilon: float) -> float:
    r"""Lower bound on how long k separated caps persist (docs/math.md §5.1, GKPR arXiv 2410.06833).

    The bound reads

    .. math::

        T_2 \ge \frac{\varepsilon}{n}\,e^{(1-\alpha)\beta},

    for caps of radius :math:`\varepsilon \in (0, 1/16)` whose inter-cap inner products are
    at most :math:`\alpha`, and :math:`\beta > 1`.
    """
    beta, n = _v.as_real(beta, "beta"), _v.as_positive_int(n, "n")
    alpha, epsilon = _v.as_real(alpha, "alpha"), _v.as_positive(epsilon, "epsilon")
    if beta <= 1.0:
        raise ValueError(f"beta must be > 1 for the metastability bound, got {beta}")
    if not -1.0 <= alpha < 1.0:
        raise ValueError(f"alpha (an inner product bound) must lie in [-1, 1), got {alpha}")
    if epsilon >= 1.0 / 16.0:
        raise ValueError(f"epsilon must lie in (0, 1/16), got {epsilon}")
    with np.errstate(over="ignore"):  # inf where the bound exceeds float64 (it then says: forever)
        return float(epsilon / n * np.exp((1.0 - alpha) * beta))


# ---------------------------------------------------------------------------------------
# the noisy model at beta = 0 (docs/math.md §4.7, 8)
# ---------------------------------------------------------------------------------------
def _dimension(d) -> int:
    d = _v.as_positive_int(d, "d")
    if d < 2:
        raise ValueError(f"d must be >= 2 (tokens on the sphere S^(d-1)), got {d}")
    return d


def critical_kappa(d: int = 2) -> float:
    r"""The critical :math:`\kappa_c = d` of the noisy model at :math:`\beta = 0` on :math:`\mathbb S^{d-1}`.

    The uniform state loses stability for :math:`\kappa > d` (docs/math.md §4.7; 2 on the circle).
    """
    return float(_dimension(d))


def noisy_order_parameter(kappa: float, d: int = 2) -> float:
    r"""Order parameter of the stationary state of the noisy model at :math:`\beta = 0`.

    The stationary densities are von Mises-Fisher, :math:`\propto e^{\kappa r\langle x, w\rangle}`,
    with r solving (docs/math.md §4.7)

    .. math::

        r = \frac{I_{d/2}(\kappa r)}{I_{d/2-1}(\kappa r)}

    (:math:`r = I_1(\kappa r)/I_0(\kappa r)` on the circle): r = 0 for :math:`\kappa \le d`,
    the positive root for :math:`\kappa > d` (a pitchfork at :math:`\kappa_c = d`). Above
    :math:`\kappa = 10^8` the expansion :math:`r = 1 - (d-1)/(2\kappa) + O(\kappa^{-2})`
    (from :math:`I_{\nu+1}/I_\nu(x) = 1 - (2\nu+1)/(2x) + O(x^{-2})`) is exact to round-off.
    """
    kappa, d = _v.as_positive(kappa, "kappa"), _dimension(d)
    if kappa <= d:
        return 0.0
    if kappa > 1e8:  # r = 1 - (d-1)/(2 kappa) + O(kappa^-2): exact to round-off here
        return 1.0 - (d - 1) / (2.0 * kappa)

    def gap(r):
        return ive(d / 2.0, kappa * r) / ive(d / 2.0 - 1.0, kappa * r) - r

    return float(brentq(gap, 1e-12, 1.0, xtol=1e-15, rtol=1e-14))


def noisy_growth_rate(kappa: float, d: int = 2) -> float:
    r"""Growth rate of the first harmonic of the uniform state, noisy model, :math:`\beta = 0`.

    .. math::

        \lambda = (d-1)\Big(\frac1d - \frac1\kappa\Big),

    the drift's :math:`(d-1)/d` (docs/math.md §8, :math:`\beta\to0`) minus the diffusion
    :math:`\kappa^{-1}l(l+d-2)` at l = 1: :math:`\tfrac12 - \tfrac1\kappa` on the circle.
    """
    kappa, d = _v.as_positive(kappa, "kappa"), _dimension(d)
    return (d - 1) * (1.0 / d - 1.0 / kappa)


# -- causal tokens on the circle: linear response and pair correlations ------------------
def _causal_tau(t, beta, k, model) -> np.ndarray:
    """The causal linearisation's clock tau = lambda_k t (lambda_k: :func:`circle_growth_rate`)."""
    t = _v.as_real_array(t, "t")
    if np.any(t < 0):
        raise ValueError(f"t must be >= 0, got {t}")
    k = _v.as_positive_int(k, "k")
    return circle_growth_rate(k, beta, model) * t


def _bessel_f(tau, lag):
    r""":math:`F_\tau(L) = \sqrt{\tau/L}\,I_1(2\sqrt{\tau L})` (:math:`F_\tau(0) = \tau`), for L >= 0."""
    tau, lag = np.broadcast_arrays(np.asarray(tau, dtype=float), np.asarray(lag, dtype=float))
    z = 2.0 * np.sqrt(tau * lag)
    safe = np.where(lag > 0, lag, 1.0)
    with np.errstate(over="ignore"):
        val = np.sqrt(tau / safe) * ive(1, z) * np.exp(z)
    return np.where(lag > 0, val, tau)


def _positions(s, name) -> np.ndarray:
    s = _v.as_real_array(s, name, finite=False)
    if np.any(~np.isfinite(s)) or np.any(s <= 0) or np.any(s > 1):
        raise ValueError(f"{name} must lie in (0, 1] (positions i/n in the sequence), got {s}")
    return s


def causal_response(s, sigma, t, beta: float, k: int = 1, model: str = "SA"):
    r"""Linear response of position s to position :math:`\sigma < s` for causal tokens on the circle.

    Around the uniform density :math:`1/(2\pi)` on :math:`(0, 1]\times\mathbb S^1` (the causal
    mean field of tokens at positions :math:`s = i/n`, :class:`CausalCircleGrid`), mode
    k of a perturbation :math:`g(s)e^{ik\theta}` evolves by a Volterra equation in s:
    :math:`\partial_t g = \lambda_k\,C g` with :math:`(Cg)(s) = \frac1s\int_0^s g` for SA
    (the causal softmax average) and :math:`\int_0^s g` for USA, :math:`\lambda_k` the rate of
    :func:`circle_growth_rate`. Its solution is :math:`e^{\tau C}` (:math:`\tau = \lambda_k t`):
    the identity plus the kernel

    .. math::

        H_\tau(s, \sigma) = \frac{1}{s}\,F_\tau\big(\log\tfrac{s}{\sigma}\big) \;(\mathrm{SA}),
        \qquad H_\tau(s, \sigma) = F_\tau(s - \sigma) \;(\mathrm{USA}),
        \qquad F_\tau(L) = \sqrt{\tau/L}\;I_1\big(2\sqrt{\tau L}\big),

    for :math:`\sigma < s` (0 otherwise): :math:`C^m` has the kernel
    :math:`\frac1s L^{m-1}/(m-1)!`, and :math:`\sum_m \tau^m L^{m-1}/(m!(m-1)!)` is the Bessel
    series. Primacy: for SA, :math:`H_\tau(1, \sigma)` grows like
    :math:`e^{2\sqrt{\tau\log(1/\sigma)}}` as :math:`\sigma \to 0` (all later tokens attend to
    the first ones). docs/math.md §11 (derived here; see there for the source).

    Parameters
    ----------
    s, sigma : array_like
        Target and source positions in (0, 1] (broadcast); H = 0 where sigma >= s.
    t : array_like
        Time(s) >= 0.
    beta : float
        Inverse temperature > 0.
    k : int
        Fourier mode >= 1.
    model : {"SA", "USA"}

    Returns
    -------
    ndarray, the broadcast shape of s, sigma, t

    Examples
    --------
    >>> import numpy as np, transformer_pde as tp
    >>> h = tp.theory.causal_response(1.0, [0.01, 0.5, 0.99], 2.0, 1.0)
    >>> bool(np.all(np.diff(h) < 0))  # primacy: the earliest tokens weigh most
    True
    """
    model = _model(model)
    s, sigma = _positions(s, "s"), _positions(sigma, "sigma")
    tau = _causal_tau(t, beta, k, model)
    s, sigma, tau = np.broadcast_arrays(s, sigma, tau)
    before = sigma < s
    if model == "SA":
        lag = np.log(np.where(before, s / sigma, 1.0))
        out = _bessel_f(tau, lag) / s
    else:
        out = _bessel_f(tau, np.where(before, s - sigma, 0.0))
    return np.where(before, out, 0.0)


def _correlation_integral_closed(tau: float, a: float) -> float:
    r"""The common-ancestor integral J = int_0^inf e^{-u} F(u + a) F(u) du as a series.

    .. math::

        J = \sum_{q \ge 0} \tau\,{}_1F_1(q + 1; 2; \tau)\,
            (\tau/a)^{(q+1)/2}\, I_{q+1}\big(2\sqrt{\tau a}\big)

    (expand both F, integrate :math:`e^{-u}u^p(u+a)^m`, sum the series in p as a Kummer
    function and the one in m as a Bessel function); all terms are positive, and they
    fall like :math:`\tau^{q+1}e^{2\sqrt{q\tau}}/(q+1)!`.
    """
    from scipy.special import hyp1f1

    total = 0.0
    z = 2.0 * np.sqrt(tau * a)
    for q in range(400):
        if a > 0:
            bessel = (tau / a) ** (0.5 * (q + 1)) * ive(q + 1, z) * np.exp(z)
        else:  # (tau/a)^{(q+1)/2} I_{q+1}(2 sqrt(tau a)) -> tau^{q+1}/(q+1)!
            bessel = np.exp((q + 1) * np.log(tau) - np.sum(np.log(np.arange(1, q + 2))))
        term = tau * hyp1f1(q + 1, 2, tau) * bessel
        total += term
        if term <= 1e-17 * total and q > 2:
            return float(total)
    raise ArithmeticError(f"the correlation series did not converge (tau={tau}, a={a})")


def _correlation_integral_quad(tau: float, a: float) -> float:
    from scipy.integrate import quad

    def f(u):
        return np.exp(-u) * float(_bessel_f(tau, u + a)) * float(_bessel_f(tau, u))

    return float(quad(f, 0.0, np.inf, epsabs=0.0, epsrel=1e-13, limit=400)[0])


def causal_correlation(s, s_prime, t, beta: float, k: int = 1, method: str = "closed"):
    r"""Pair correlation of causal SA tokens from iid uniform tokens on the circle.

    Tokens :math:`\theta_i` at positions :math:`s_i = i/n`, initially iid uniform, moved by
    causal softmax attention (Q = K = V = I, the circle's post-LN dynamics). To first order
    in the fluctuations, the fluctuation field :math:`\eta = \sqrt n(\mu_n - \bar\rho)` evolves
    by the linearised causal mean field (:func:`causal_response`), from white noise of unit
    intensity in s. Its covariance gives the pair correlation of two tokens at positions
    :math:`s' < s`:

    .. math::

        n\,\mathbb E\big[\cos k(\theta_i(t) - \theta_j(t))\big] \;\to\;
        R_k(t; s, s') = H_\tau(s, s') + \int_0^{s'} H_\tau(s, \sigma) H_\tau(s', \sigma)\,d\sigma
        = F_\tau(a) + \int_0^\infty e^{-u}F_\tau(u + a)F_\tau(u)\,du,

    :math:`a = \log(s/s')`, :math:`\tau = \lambda_k t`, taking :math:`s = 1` for the last token
    (:math:`R` depends on s and s' through a and a factor 1/s:
    :math:`R_k(t; s, s') = R_k(t; 1, s'/s)/s`). The first term is the direct
    response of token i to token j, the second the common influence of the tokens before
    both. docs/math.md §11.

    Parameters
    ----------
    s, s_prime : float
        Positions in (0, 1] with s_prime < s.
    t : float
        Time >= 0.
    beta : float
        Inverse temperature > 0.
    k : int
        Fourier mode >= 1.
    method : {"closed", "quadrature"}
        The Bessel-Kummer series of the integral, or adaptive quadrature of it.

    Returns
    -------
    float

    Examples
    --------
    >>> import transformer_pde as tp
    >>> r = tp.theory.causal_correlation(1.0, 0.5, 1.0, 2.0)
    >>> q = tp.theory.causal_correlation(1.0, 0.5, 1.0, 2.0, method="quadrature")
    >>> bool(abs(r - q) < 1e-10 * r)
    True
    """
    s, s_prime = float(_positions(s, "s")), float(_positions(s_prime, "s_prime"))
    if not s_prime < s:
        raise ValueError(f"s_prime must be < s (the source before the target), got s={s}, "
                         f"s_prime={s_prime}")
    _v.as_choice(method, "method", ("closed", "quadrature"))
    tau = float(_causal_tau(float(t), beta, k, "SA"))
    a = np.log(s / s_prime)
    integral = (_correlation_integral_closed if method == "closed" else _correlation_integral_quad)
    return (float(_bessel_f(tau, a)) + integral(tau, a)) / s


def retrieval_profile(s_prime, t, beta: float, k: int = 1, method: str = "closed") -> np.ndarray:
    r"""The last token's correlation with the token at position s', :math:`R_k(t; 1, s')`.

    .. math::

        P(s') = R_k(t; 1, s') = F_\tau(\log\tfrac{1}{s'})
        + \int_0^\infty e^{-u}F_\tau\big(u + \log\tfrac{1}{s'}\big)F_\tau(u)\,du

    (:func:`causal_correlation`): the to-first-order retrieval profile of the source position,
    for s' in (0, 1). It is decreasing in s' (primacy: it diverges like
    :math:`e^{2\sqrt{\tau\log(1/s')}}` as :math:`s' \to 0`), and the recency is the token's
    own term (the identity of :math:`e^{\tau C}`, of weight 1 at s' = 1, not in P). This first-order
    profile has no interior minimum (docs/math.md §11 says how it relates to the source).

    Parameters
    ----------
    s_prime : array_like
        Source positions in (0, 1).
    t, beta, k, method
        See :func:`causal_correlation`.

    Returns
    -------
    ndarray, the shape of s_prime

    Examples
    --------
    >>> import numpy as np, transformer_pde as tp
    >>> p = tp.theory.retrieval_profile([0.1, 0.5, 0.9], 1.0, 1.0)
    >>> bool(np.all(np.diff(p) < 0))
    True
    """
    sp = _v.as_real_array(s_prime, "s_prime", finite=False)  # the range check names NaN
    flat = [causal_correlation(1.0, float(x), t, beta, k, method) for x in sp.ravel()]
    return np.asarray(flat).reshape(sp.shape)


def causal_correlation_matrix(n: int, t: float, beta: float, k: int = 1) -> np.ndarray:
    r"""The finite-n version of :func:`causal_correlation`, n times the pair correlations of n tokens.

    The same first-order linearisation for n tokens at positions i/n (i = 1..n): mode k of
    token i is driven by the tokens :math:`j < i` (the token's own term has no velocity),
    each with the weight :math:`1/(i - 1 + e^\beta/I_0(\beta))` (the causal softmax
    denominator of token i with its own term :math:`e^{\beta}` kept: :math:`(i-1) I_0 + e^\beta`
    on average), so :math:`z(t) = e^{\tau A}z(0)` with

    .. math::

        A_{ij} = \frac{1}{i - 1 + e^{\beta}/I_0(\beta)}\;(j < i), \qquad
        n\,\mathbb E\big[\cos k(\theta_i - \theta_j)\big] \approx n\,(e^{\tau A}e^{\tau A^\top})_{ij},

    from uncorrelated z(0) of unit variance (:math:`\tau = \lambda_k t`). As n grows its
    entries tend to :math:`R_k(t; i/n, j/n)`, slowly near the start of the sequence (the
    first tokens are few and held by their own term). docs/math.md §11.

    Parameters
    ----------
    n : int
        Number of tokens >= 2.
    t, beta, k
        See :func:`causal_correlation`.

    Returns
    -------
    ndarray, shape (n, n)
        Symmetric; the off-diagonal entries are the predictions (the diagonal is n times
        the variance of the linearised mode, not a pair).

    Examples
    --------
    >>> import transformer_pde as tp
    >>> c = tp.theory.causal_correlation_matrix(400, 1.0, 1.0)
    >>> r = tp.theory.causal_correlation(1.0, 0.5, 1.0, 1.0)
    >>> bool(abs(c[399, 199] - r) < 0.1 * r)
    True
    """
    from scipy.linalg import expm

    n = _n_tokens(n)
    _v.check_dense_size((n, n), f"causal_correlation_matrix(n={n})",
                        "take a smaller n (the matrix exponential of an n x n matrix is O(n^3))")
    tau = float(_causal_tau(_v.as_real(t, "t"), beta, k, "SA"))
    shift = float(np.exp(beta - np.log(ive(0, beta)) - beta))  # e^beta / I_0(beta)
    i = np.arange(1, n + 1, dtype=float)
    a = np.tril(np.ones((n, n)), -1) / (i[:, None] - 1.0 + shift)
    m = expm(tau * a)
    return n * (m @ m.T)
