r"""Explicit Runge-Kutta steppers and :func:`simulate`.

The vector field (:class:`~transformer_pde.TokenDynamics`), the stepper (a Butcher
tableau), what to save (``t_eval``) and the result (:class:`Trajectory`) are separate
objects. For a state space with a retraction R (the sphere) every stage point is
retracted before the field is evaluated and the step is retracted at the end:

.. math::

    Y_s = R\Big(x_n + h\sum_{j<s} a_{sj} k_j\Big),\quad k_s = F(Y_s, t_n + c_s h),\quad
    x_{n+1} = R\Big(x_n + h\sum_s b_s k_s\Big).

Because the projected field satisfies :math:`\langle y, F(R(y))\rangle = 0`, this is
the plain Runge-Kutta method for the ODE :math:`\dot y = F(R(y))` in :math:`\mathbb R^d`,
whose exact flow keeps :math:`\|y_i\| = 1`; the final retraction moves the state by
:math:`O(h^{p+1})`, so each method keeps its classical order p, and unit norms hold to
round-off at every saved time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import _validation as _v
from .dynamics import TokenDynamics

__all__ = ["simulate", "Trajectory", "RunInfo", "Tableau", "METHODS"]


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method: ``a`` (strictly lower), ``b``, ``c``, and for
    adaptive methods the embedded weights ``b_low`` of order ``order - 1``."""

    name: str
    order: int
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    b_low: tuple[float, ...] | None = None
    fsal: bool = False

    @property
    def adaptive(self) -> bool:
        return self.b_low is not None


_EULER = Tableau("euler", 1, ((),), (1.0,), (0.0,))
_HEUN = Tableau("heun", 2, ((), (1.0,)), (0.5, 0.5), (0.0, 1.0))
_RK4 = Tableau(
    "rk4", 4, ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    (1 / 6, 1 / 3, 1 / 3, 1 / 6), (0.0, 0.5, 0.5, 1.0),
)
# Dormand-Prince 5(4) (Hairer, Norsett, Wanner, Solving ODEs I, Table II.5.2)
_DOPRI5 = Tableau(
    "dopri5", 5,
    (
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    b_low=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    fsal=True,
)

#: the steppers :func:`simulate` accepts, by name
METHODS = {tab.name: tab for tab in (_EULER, _HEUN, _RK4, _DOPRI5)}


@dataclass
class RunInfo:
    """What a run did: accepted and rejected steps, field evaluations, step sizes, time."""

    method: str
    n_steps: int = 0
    n_rejected: int = 0
    n_evals: int = 0
    dt_min: float = np.inf
    dt_max: float = 0.0
    wall_time: float = 0.0

    def _record(self, h: float) -> None:
        self.n_steps += 1
        self.dt_min = min(self.dt_min, float(h))
        self.dt_max = max(self.dt_max, float(h))


@dataclass
class Trajectory:
    """Tokens at the saved times.

    Attributes
    ----------
    t : ndarray, shape (nt,)
        Saved times.
    x : ndarray, shape (nt, n, d)
        States at the saved times.
    dynamics : TokenDynamics
        The model that produced them.
    info : RunInfo
        Steps, rejected steps, field evaluations, step-size range and wall time.
    """

    t: np.ndarray
    x: np.ndarray
    dynamics: TokenDynamics
    info: RunInfo = field(repr=False)

    @property
    def n_tokens(self) -> int:
        return self.x.shape[1]

    @property
    def dim(self) -> int:
        return self.x.shape[2]


def time_bar(total: float, desc: str):
    """A tqdm progress bar over simulated time (advance it with ``bar.update(dt)``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc,
                bar_format="{l_bar}{bar}| t={n:.4g}/{total:.4g} [{elapsed}<{remaining}]")


def _check_times(t_span, t_eval):
    try:
        t0, t1 = t_span
    except (TypeError, ValueError):
        raise TypeError(f"t_span must be a pair (t0, t1), got {t_span!r}") from None
    t0, t1 = _v.as_real(t0, "t_span[0]"), _v.as_real(t1, "t_span[1]")
    if not t1 > t0:
        raise ValueError(f"t_span must satisfy t0 < t1 (forward in time), got ({t0}, {t1})")
    if t_eval is None:
        return t0, t1, np.linspace(t0, t1, 101)
    t_eval = np.atleast_1d(np.asarray(t_eval, dtype=np.float64))
    if t_eval.ndim != 1 or t_eval.size == 0:
        raise ValueError(f"t_eval must be a non-empty 1-D array of times, got shape {t_eval.shape}")
    if not np.all(np.isfinite(t_eval)):
        raise ValueError("t_eval must be finite")
    if np.any(np.diff(t_eval) <= 0):
        raise ValueError("t_eval must be strictly increasing")
    if t_eval[0] < t0 or t_eval[-1] > t1:
        raise ValueError(
            f"t_eval must lie inside t_span=({t0}, {t1}), got times from {t_eval[0]} to {t_eval[-1]}"
        )
    return t0, t1, t_eval


def _diagnose(stepper, x, t, h, x_bad) -> str:
    """Say where a step from the finite state x at t went non-finite: the token whose
    velocity overflows there if there is one, else the first token of x_bad that is bad."""
    v = stepper.rhs(x, t)
    bad_v = ~np.all(np.isfinite(v), axis=1)
    if bad_v.any():
        i = int(np.argmax(bad_v))
        return (
            f"the velocity of token i={i} is not finite at t={t:.9g} ({int(bad_v.sum())} tokens "
            "in all): it overflows float64 (e.g. unnormalized attention with a large beta)"
        )
    bad = ~np.all(np.isfinite(x_bad), axis=1)
    i = int(np.argmax(bad))
    return (
        f"token i={i} became non-finite in the step from t={t:.9g} to t={t + h:.9g} "
        f"({int(bad.sum())} tokens in all): the step is unstable or the solution blows up; "
        "reduce dt or use method='dopri5'"
    )


class _Stepper:
    """One explicit RK step with retraction; counts field evaluations.

    ``piece`` is the index of the smooth piece of a piecewise-defined field (mix-LN
    switches at ``tau``) that the current step lies in: every stage of a step uses it,
    so a step never straddles or mixes the two sides of a switch.
    """

    def __init__(self, dyn: TokenDynamics, tab: Tableau, info: RunInfo):
        self.dyn, self.tab, self.info = dyn, tab, info
        self.space = dyn.state_space
        self.breakpoints = np.asarray(dyn.breakpoints, dtype=float)
        self.piece = 0

    def start_at(self, t: float) -> None:
        """Select the piece for steps starting at t (a switch time opens the next piece)."""
        self.piece = int(np.searchsorted(self.breakpoints, t, side="right"))

    def rhs(self, x, t):
        self.info.n_evals += 1
        return self.dyn._rhs(x, t, self.dyn.attention._velocity, None, self.piece)

    def step(self, t, x, h, k1=None):
        """Return ``(x_new, error_estimate or None, last stage)``."""
        tab, space = self.tab, self.space
        ks = [self.rhs(x, t) if k1 is None else k1]
        for s in range(1, len(tab.c)):
            if tab.fsal and s == len(tab.c) - 1:
                break
            incr = sum(a * k for a, k in zip(tab.a[s], ks) if a != 0.0)
            ks.append(self.rhs(space.retract(x + h * incr), t + tab.c[s] * h))
        x_new = space.retract(x + h * sum(b * k for b, k in zip(tab.b, ks) if b != 0.0))
        if not tab.adaptive:
            return x_new, None, None
        ks.append(self.rhs(x_new, t + h))  # FSAL stage, reused by the next step
        err = h * sum((b - bl) * k for b, bl, k in zip(tab.b, tab.b_low, ks) if b != bl)
        return x_new, err, ks[-1]


class _NoisyStepper(_Stepper):
    """Euler-Maruyama with tangent noise and retraction (see :func:`simulate`)."""

    def __init__(self, dyn, tab, info, kappa, rng):
        super().__init__(dyn, tab, info)
        self.sigma, self.rng = np.sqrt(2.0 / kappa), rng

    def step(self, t, x, h, k1=None):
        noise = self.space.project(x, self.rng.standard_normal(x.shape))
        return self.space.retract(x + h * self.rhs(x, t) + self.sigma * np.sqrt(h) * noise), None, None


def _default_dt(stepper: _Stepper, x0, t0, t1) -> float:
    v = stepper.rhs(x0, t0)
    rate = np.max(np.linalg.norm(v, axis=1)) / max(1.0, float(np.max(np.linalg.norm(x0, axis=1))))
    return min(0.01 / max(1.0, rate), (t1 - t0) / 10)


def _initial_step(stepper: _Stepper, x0, t0, f0, rtol, atol, order) -> float:
    """Hairer-Norsett-Wanner starting step (Solving ODEs I, II.4)."""
    scale = atol + rtol * np.abs(x0)
    d0 = np.sqrt(np.mean((x0 / scale) ** 2))
    d1 = np.sqrt(np.mean((f0 / scale) ** 2))
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    x1 = stepper.space.retract(x0 + h0 * f0)
    f1 = stepper.rhs(x1, t0 + h0)
    d2 = np.sqrt(np.mean(((f1 - f0) / scale) ** 2)) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1)


def simulate(dyn: TokenDynamics, x0, t_span, *, t_eval=None, method: str | None = None,
             dt: float | None = None, rtol: float = 1e-6, atol: float = 1e-9, rng=None,
             kappa: float | None = None, progress: bool = False,
             max_steps: int = 10_000_000) -> Trajectory:
    r"""Integrate the token system :math:`\dot x = F(x, t)` of ``dyn`` from ``x0``.

    .. math::

        \dot x_i(t) = F_i(x(t), t), \qquad x_i(t_0) = x_{0,i}, \qquad i = 1, \dots, n,

    with F the velocity of :class:`~transformer_pde.TokenDynamics` (projected attention
    on the sphere). On the sphere every stage and every step is retracted, so
    :math:`\|x_i\| = 1` to round-off at all saved times (see the module docstring).

    With ``kappa`` the tokens are noisy (MATH.md 4.7): independent Brownian motions
    projected on the tangent spaces,

    .. math::

        dx_i = F_i(x, t)\,dt + \sqrt{2/\kappa}\;P^\perp_{x_i}\circ dW_i,

    whose empirical measure follows the Fokker-Planck equation
    :math:`\partial_t\mu + \operatorname{div}(\mu F) = \kappa^{-1}\Delta\mu` that
    :func:`~transformer_pde.solve_meanfield` solves with the same ``kappa``. The stepper
    is Euler-Maruyama with retraction (weak order 1):
    :math:`x \leftarrow R\big(x + hF(x,t) + \sqrt{2h/\kappa}\,P^\perp_x\xi\big)`,
    :math:`\xi \sim \mathcal N(0, I)`; on the sphere the retraction supplies the Itô
    drift :math:`-\kappa^{-1}(d-1)x\,dt` of Brownian motion on :math:`\mathbb S^{d-1}`
    (:math:`\|x + \sqrt{2h/\kappa}P^\perp_x\xi\|^2 = 1 + 2h(d-1)/\kappa + \dots`).

    Parameters
    ----------
    dyn : TokenDynamics
        The model.
    x0 : array_like, shape (n, d)
        Initial tokens (unit vectors for norm in {"post", "ngpt", "cod"}, within
        :data:`transformer_pde.geometry.SPHERE_TOL`; they are normalised before the run,
        so ``x[0]`` has unit norms to round-off).
    t_span : (float, float)
        Start and end times, ``t0 < t1``.
    t_eval : array_like, shape (nt,), optional
        Increasing times in ``[t0, t1]`` at which to save; 101 equally spaced times by
        default. Steps land exactly on them.
    method : {"euler", "heun", "rk4", "dopri5"}, optional
        Fixed-step methods of orders 1, 2, 4, or adaptive Dormand-Prince 5(4); "rk4" by
        default, "euler" (Euler-Maruyama, the only choice) with ``kappa``.
    dt : float, optional
        Largest step of the fixed-step methods (each interval between saved times is
        cut into equal steps no longer than dt); the first step of ``dopri5``.
        Default for fixed steps: ``0.01 / max(1, max_i |F_i(x0)| / max(1, max_i |x0_i|))``.
    rtol, atol : float
        Error tolerances of ``dopri5`` (RMS norm of the error over ``atol + rtol |x|``).
    rng : numpy.random.Generator or int or None
        Source of the noise increments with ``kappa`` (a seed makes the run
        reproducible); deterministic dynamics do not use it.
    kappa : float, optional
        Noise level :math:`\kappa > 0` (diffusion :math:`\kappa^{-1}`); None: no noise.
        Only for states on the sphere (norm "post", "ngpt", "cod") and in Euclidean space.
    progress : bool
        Show a tqdm progress bar.
    max_steps : int
        Stop with an error after this many steps.

    Returns
    -------
    Trajectory
        ``t`` (nt,), ``x`` (nt, n, d) and ``info``.

    Raises
    ------
    FloatingPointError
        If the state becomes non-finite; the message gives the time and the token.
    """
    if not isinstance(dyn, TokenDynamics):
        raise TypeError(f"dyn must be a TokenDynamics, got {type(dyn).__name__}")
    x0 = dyn.state_space.snap(dyn.check_state(x0, "x0"))
    if kappa is not None:
        kappa = _v.as_positive(kappa, "kappa")
        if dyn.norm in ("pre", "peri", "mix"):
            raise ValueError(
                f"kappa (noise) is supported on the sphere and in Euclidean space, not for "
                f"norm={dyn.norm!r}, whose state carries token radii"
            )
        if method not in (None, "euler"):
            raise ValueError(f"with kappa (noise) method must be 'euler' (Euler-Maruyama), got {method!r}")
    method = ("euler" if kappa is not None else "rk4") if method is None else method
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    tab = METHODS[method]
    t0, t1, t_eval = _check_times(t_span, t_eval)
    if dt is not None:
        dt = _v.as_positive(dt, "dt")
    rtol, atol = _v.as_positive(rtol, "rtol"), _v.as_positive(atol, "atol")
    max_steps = _v.as_positive_int(max_steps, "max_steps")
    rng = _v.as_rng(rng)

    info = RunInfo(method="euler-maruyama" if kappa is not None else method)
    stepper = _Stepper(dyn, tab, info) if kappa is None else _NoisyStepper(dyn, tab, info, kappa, rng)
    xs = np.empty((len(t_eval),) + x0.shape)
    start = time.perf_counter()
    bar = time_bar(t1 - t0, f"simulate[{method}]") if progress else None
    x, t = x0.copy(), t0
    # saved times equal to t0 are the initial state itself
    k = int(np.searchsorted(t_eval, t0, side="right"))
    xs[:k] = x0
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if tab.adaptive:
                _run_adaptive(stepper, x, t, t_eval, k, xs, dt, rtol, atol, max_steps, bar)
            else:
                if dt is None:
                    dt = _default_dt(stepper, x0, t0, t1)
                _run_fixed(stepper, x, t, t_eval, k, xs, dt, max_steps, bar)
    finally:
        if bar is not None:
            bar.close()
    info.wall_time = time.perf_counter() - start
    return Trajectory(t=t_eval.copy(), x=xs, dynamics=dyn, info=info)


def _stops(t_eval, k, breakpoints, t):
    """Times to land on after t, in order: ``(time, index into t_eval or -1)``."""
    stops = [(float(te), i) for i, te in enumerate(t_eval) if i >= k]
    stops += [(float(b), -1) for b in breakpoints if t < b < t_eval[-1] and b not in t_eval]
    return sorted(stops)


def _advance(stepper, x, t, h, x_new, bar):
    if not np.all(np.isfinite(x_new)):
        raise FloatingPointError(
            f"simulate(method={stepper.tab.name!r}) stopped: "
            + _diagnose(stepper, x, t, h, x_new)
        )
    stepper.info._record(h)
    if bar is not None:
        bar.update(h)


def _run_fixed(stepper, x, t, t_eval, k, xs, dt, max_steps, bar):
    for target, save in _stops(t_eval, k, stepper.breakpoints, t):
        stepper.start_at(t)
        n_sub = max(1, int(np.ceil((target - t) / dt * (1.0 - 1e-12))))
        h = (target - t) / n_sub
        if stepper.info.n_steps + n_sub > max_steps:
            raise RuntimeError(f"simulate: more than max_steps={max_steps} steps needed; raise dt")
        for s in range(n_sub):
            x_new, _, _ = stepper.step(t, x, h)
            _advance(stepper, x, t, h, x_new, bar)
            x = x_new
            t = target if s == n_sub - 1 else t + h
        if save >= 0:
            xs[save] = x


def _run_adaptive(stepper, x, t, t_eval, k, xs, dt, rtol, atol, max_steps, bar):
    tab, info = stepper.tab, stepper.info
    stepper.start_at(t)
    f = stepper.rhs(x, t)
    h = dt if dt is not None else _initial_step(stepper, x, t, f, rtol, atol, tab.order)
    exponent = -1.0 / tab.order  # error of the embedded pair is O(h^order)
    for target, save in _stops(t_eval, k, stepper.breakpoints, t):
        while t < target:
            if info.n_steps + info.n_rejected >= max_steps:
                raise RuntimeError(f"simulate: more than max_steps={max_steps} steps at t={t:.9g}")
            step = min(h, target - t)
            landing = step >= target - t
            x_new, err, f_new = stepper.step(t, x, step, k1=f)
            scale = atol + rtol * np.maximum(np.abs(x), np.abs(x_new))
            err_norm = float(np.sqrt(np.mean((err / scale) ** 2)))
            if not np.isfinite(err_norm) or err_norm > 1.0:
                info.n_rejected += 1
                shrink = 0.2 if not np.isfinite(err_norm) else max(0.2, 0.9 * err_norm ** exponent)
                h = step * min(1.0, shrink)
                if h <= 1e-14 * max(1.0, abs(t)):
                    raise FloatingPointError(
                        f"simulate(method={tab.name!r}) stopped: step size underflow "
                        f"(h={h:.3g}) at t={t:.9g}; " + _diagnose(stepper, x, t, step, x_new)
                    )
                continue
            factor = min(5.0, 0.9 * err_norm ** exponent) if err_norm > 0 else 5.0
            _advance(stepper, x, t, step, x_new, bar)
            x, f = x_new, f_new
            t = target if landing else t + step
            # a step shortened to land on a stop does not shrink the next one
            h = max(h, step * factor) if landing and step < h else step * factor
        if save >= 0:
            xs[save] = x
        piece = stepper.piece
        stepper.start_at(t)
        if stepper.piece != piece:  # a switch of the field: the FSAL stage is stale
            f = stepper.rhs(x, t)
