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

from dataclasses import dataclass, field

import numpy as np

from . import _engine
from . import _validation as _v
from ._engine import RunInfo, Status, Step
from ._spec import Result
from .dynamics import TokenDynamics

__all__ = ["simulate", "Trajectory", "RunInfo", "Tableau", "METHODS"]


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method, by its Butcher tableau.

    ``a`` (strictly lower), ``b``, ``c``, and for adaptive methods the embedded weights
    ``b_low`` of order ``order - 1``.
    """

    name: str
    order: int
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    b_low: tuple[float, ...] | None = None
    fsal: bool = False

    @property
    def adaptive(self) -> bool:
        """Whether the method has embedded weights ``b_low`` for step-size control."""
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


@dataclass(eq=False)
class Trajectory(Result):
    """Tokens at the saved times.

    Attributes
    ----------
    t : ndarray, shape (nt,)
        Saved times.
    x : ndarray, shape (nt, n, d) or (nt, B, n, d)
        States at the saved times (of each of the B systems of a batch).
    dynamics : TokenDynamics
        The model that produced them.
    info : RunInfo
        How the run ended (``status``, ``message``), steps, rejected steps, field
        evaluations, step-size range and wall time.
    """

    t: np.ndarray
    x: np.ndarray
    dynamics: TokenDynamics
    info: RunInfo = field(repr=False)

    @property
    def n_tokens(self) -> int:
        """Number of tokens n (per system of a batch)."""
        return self.x.shape[-2]

    @property
    def dim(self) -> int:
        """Dimension d of the token space."""
        return self.x.shape[-1]

    @property
    def batch(self) -> int | None:
        """Number of systems B of a batch run, None for one system."""
        return self.x.shape[1] if self.x.ndim == 4 else None

    def plot(self, ax=None, **kwargs):
        """Draw the run (:func:`transformer_pde.plotting.plot_trajectory`); returns the Axes."""
        from . import plotting  # lazily: matplotlib only when a figure is made

        return plotting.plot_trajectory(self, ax=ax, **kwargs)


class _Particles(_engine.Problem):
    """The token system of ``dyn`` for the engine.

    ``piece`` is the index of the smooth piece of a piecewise-defined field (mix-LN
    switches at ``tau``) that the current step lies in: every stage of a step uses it,
    so a step never straddles or mixes the two sides of a switch.
    """

    def __init__(self, dyn: TokenDynamics, info: RunInfo, x0: np.ndarray):
        super().__init__(info)
        self.who = f"simulate(method={info.method!r})"
        self.dyn, self.space = dyn, dyn.state_space
        self.breakpoints = np.asarray(dyn.breakpoints, dtype=float)
        self._tau = np.asarray((dyn.tau,) if dyn.norm == "mix" else (), dtype=float)
        self.piece = 0
        # the layer of a depth-dependent model (tp.Layers) the current step lies in, its
        # model and kernel (selected by start_at); the model itself otherwise
        self.layer, self.model = 0, dyn._layer(0)
        self._like = np.empty((0,) * x0.ndim)  # what _attend needs of a state: its rank
        # built once per run (per layer): the kernel for one system or a batch, the uniform weights
        self.attend = self.model._attend(x0)
        n = x0.shape[-2]
        self.weights = np.full(n, 1.0 / n)

    def evaluate(self, x, t):
        return self.model._rhs(x, t, self.attend, self.weights, self.piece)

    def retract(self, x):
        return self.space.retract(x)

    def retract_fresh(self, x):
        """:meth:`retract`, in place: for a stage point the stepper has just made."""
        return self.space._retract_fresh(x)

    def start_at(self, t: float) -> bool:
        piece = int(np.searchsorted(self._tau, t, side="right"))
        changed, self.piece = piece != self.piece, piece
        if self.dyn.layers is not None:
            layer = self.dyn.layers.index(t)  # a step starting on a boundary is in the next layer
            if layer != self.layer:
                self.layer, self.model = layer, self.dyn._layer(layer)
                self.attend = self.model._attend(self._like)
                changed = True
        return changed

    def check(self, x_new, t, h, x) -> None:
        if not np.all(np.isfinite(x_new)):
            raise _engine.RunFailure(Status.NONFINITE, self._diagnose(x, t, h, x_new))

    def _diagnose(self, x, t, h, x_bad) -> str:
        """Say where a step from the finite state x at t went non-finite.

        The token whose velocity overflows there if there is one, else the first token of x_bad
        that is bad.
        """
        v = self(x, t)
        bad_v = ~np.all(np.isfinite(v), axis=-1)
        if bad_v.any():
            return (
                f"the velocity of {_token(bad_v)} is not finite at t={t:.9g} ({int(bad_v.sum())} tokens "
                "in all): it overflows float64 (e.g. unnormalized attention with a large beta)"
            )
        bad = ~np.all(np.isfinite(x_bad), axis=-1)
        return (
            f"{_token(bad)} became non-finite in the step from t={t:.9g} to t={t + h:.9g} "
            f"({int(bad.sum())} tokens in all): the step is unstable or the solution blows up; "
            "reduce dt or use method='dopri5'"
        )

    #: the result a run of this problem makes (what :mod:`transformer_pde.storage` writes)
    kind = "Trajectory"

    def state(self, x):
        view = x.view()
        view.flags.writeable = False
        return view


def _token(bad: np.ndarray) -> str:
    """'token i=3', or 'token i=3 of system b=1' in a batch: the first True of ``bad``."""
    where = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return f"token i={where[-1]}" + (f" of system b={where[0]}" if bad.ndim > 1 else "")


class _RungeKutta(_engine.Stepper):
    """One explicit Runge-Kutta step with retraction of every stage point and of the step.

    The nonzero coefficients of each stage are listed once; a stage point
    ``R(x + h sum_j a_sj k_j)`` is formed with in-place NumPy operations in the order of
    the plain sum (so in the same floating-point arithmetic) and retracted in place.
    """

    def __init__(self, tab: Tableau):
        self.tab, self.name, self.order, self.adaptive = tab, tab.name, tab.order, tab.adaptive
        n_stages = len(tab.c) - (1 if tab.fsal else 0)  # the FSAL stage is the next step's first
        self._stages = [(_terms(tab.a[s]), tab.c[s]) for s in range(1, n_stages)]
        self._b = _terms(tab.b)
        self._e = _terms([b - bl for b, bl in zip(tab.b, tab.b_low, strict=True)]) if tab.adaptive else ()

    def step(self, problem, t, x, h, f0) -> Step:
        ks = [f0]
        for terms, c in self._stages:
            ks.append(problem(problem.retract_fresh(_combine(x, h, terms, ks)), t + c * h))
        x_new = problem.retract_fresh(_combine(x, h, self._b, ks))
        if not self.adaptive:
            return Step(x_new)
        ks.append(problem(x_new, t + h))  # FSAL stage, reused by the next step
        err = _combine(None, h, self._e, ks)
        return Step(x_new, err, ks[-1])


def _terms(coefficients) -> tuple[tuple[int, float], ...]:
    """The (index, coefficient) pairs of the nonzero coefficients."""
    return tuple((j, float(a)) for j, a in enumerate(coefficients) if a != 0.0)


def _combine(x, h, terms, ks):
    """``x + h * (a_0 k_0 + a_1 k_1 + ...)`` (just ``h * (...)`` when x is None), a new array.

    The same operations, in the same order, as the plain expression, with one temporary.
    """
    if not terms:
        return np.zeros_like(ks[0]) if x is None else x.copy()
    (j0, a0), *rest = terms
    acc = a0 * ks[j0]
    for j, a in rest:
        acc += a * ks[j]
    acc *= h
    if x is not None:
        acc += x
    return acc


class _EulerMaruyama(_engine.Stepper):
    """Euler-Maruyama with tangent noise and retraction, weak order 1 (see :func:`simulate`)."""

    name, order = "euler-maruyama", 1

    def __init__(self, space, kappa: float, rng: np.random.Generator):
        self.space, self.sigma, self.rng = space, np.sqrt(2.0 / kappa), rng

    def step(self, problem, t, x, h, f0) -> Step:
        noise = self.space.project(x, self.rng.standard_normal(x.shape))
        return Step(self.space.retract(x + h * f0 + self.sigma * np.sqrt(h) * noise))

    def snapshot(self) -> dict:
        """The generator's state: a resumed run draws the same increments."""
        return {"rng": self.rng.bit_generator.state}

    def restore(self, snap: dict) -> None:
        state = snap["rng"]
        if type(self.rng.bit_generator).__name__ != state["bit_generator"]:
            self.rng = np.random.Generator(getattr(np.random, state["bit_generator"])())
        self.rng.bit_generator.state = state


def _default_dt(problem: _Particles, x0, t0, t1) -> float:
    """The default fixed step; for a batch the smallest of the systems' default steps."""
    v = problem(x0, t0)
    rate = np.max(np.linalg.norm(v, axis=-1), axis=-1) / np.maximum(
        1.0, np.max(np.linalg.norm(x0, axis=-1), axis=-1))
    return float(np.min(np.minimum(0.01 / np.maximum(1.0, rate), (t1 - t0) / 10)))


def _system_axes(x: np.ndarray):
    """The axes of one system's state: all of them (None) for (n, d), the last two for (B, n, d)."""
    return None if x.ndim == 2 else (-2, -1)


def _initial_step(problem: _Particles, x0, t0, f0, rtol, atol, order) -> float:
    """Hairer-Norsett-Wanner starting step (Solving ODEs I, II.4).

    For a batch (B, n, d) the norms are per system and the step is the smallest of the
    systems' steps (with one trial evaluation, at the smallest first guess).
    """
    axes = _system_axes(x0)
    scale = atol + rtol * np.abs(x0)
    d0 = np.sqrt(np.mean((x0 / scale) ** 2, axis=axes))
    d1 = np.sqrt(np.mean((f0 / scale) ** 2, axis=axes))
    h0 = float(np.min([1e-6 if a < 1e-5 or b < 1e-5 else 0.01 * a / b
                       for a, b in zip(np.ravel(d0), np.ravel(d1), strict=True)]))
    f1 = problem(problem.retract(x0 + h0 * f0), t0 + h0)
    d2 = np.sqrt(np.mean(((f1 - f0) / scale) ** 2, axis=axes)) / h0
    h1 = [max(1e-6, h0 * 1e-3) if max(a, b) <= 1e-15 else (0.01 / max(a, b)) ** (1.0 / (order + 1))
          for a, b in zip(np.ravel(d1), np.ravel(d2), strict=True)]
    return min(100 * h0, float(np.min(h1)))


def simulate(dyn: TokenDynamics, x0, t_span, *, t_eval=None, method: str | None = None,
             dt: float | None = None, rtol: float = 1e-6, atol: float = 1e-9, rng=None,
             progress: bool | None = None, max_steps: int = 10_000_000, trackers=None,
             throw: bool = True, _resume=None) -> Trajectory:
    r"""Integrate the token system :math:`\dot x = F(x, t)` of ``dyn`` from ``x0``.

    .. math::

        \dot x_i(t) = F_i(x(t), t), \qquad x_i(t_0) = x_{0,i}, \qquad i = 1, \dots, n,

    with F the velocity of :class:`~transformer_pde.TokenDynamics` (projected attention
    on the sphere). On the sphere every stage and every step is retracted, so
    :math:`\|x_i\| = 1` to round-off at all saved times (see the module docstring).

    When the model is noisy (``TokenDynamics(..., kappa=...)``, docs/math.md §4.7) the tokens
    carry independent Brownian motions projected on the tangent spaces,

    .. math::

        dx_i = F_i(x, t)\,dt + \sqrt{2/\kappa}\;P^\perp_{x_i}\circ dW_i,

    whose empirical measure follows the Fokker-Planck equation
    :math:`\partial_t\mu + \operatorname{div}(\mu F) = \kappa^{-1}\Delta\mu` that
    :func:`~transformer_pde.solve_meanfield` solves for the same model. The stepper
    is Euler-Maruyama with retraction (weak order 1):
    :math:`x \leftarrow R\big(x + hF(x,t) + \sqrt{2h/\kappa}\,P^\perp_x\xi\big)`,
    :math:`\xi \sim \mathcal N(0, I)`; on the sphere the retraction supplies the Itô
    drift :math:`-\kappa^{-1}(d-1)x\,dt` of Brownian motion on :math:`\mathbb S^{d-1}`
    (:math:`\|x + \sqrt{2h/\kappa}P^\perp_x\xi\|^2 = 1 + 2h(d-1)/\kappa + \dots`).

    Parameters
    ----------
    dyn : TokenDynamics
        The model (with its noise level ``kappa``, if any).
    x0 : array_like, shape (n, d) or (B, n, d)
        Initial tokens (unit vectors for norm in {"post", "ngpt", "cod"}, within
        :data:`transformer_pde.geometry.SPHERE_TOL`; they are normalised before the run,
        so ``x[0]`` has unit norms to round-off), or a batch of B independent systems
        of n tokens each (see Batches below).
    t_span : (float, float)
        Start and end times, ``t0 < t1``.
    t_eval : array_like, shape (nt,), optional
        Increasing times in ``[t0, t1]`` at which to save; 101 equally spaced times by
        default. Steps land exactly on them.
    method : {"euler", "heun", "rk4", "dopri5", "euler-maruyama", "rescaled"}, optional
        The time stepper: fixed-step methods of orders 1, 2, 4, or adaptive
        Dormand-Prince 5(4); "rk4" by default. A noisy model takes "euler-maruyama"
        (the default and only choice for it; "euler" names it too). "rescaled" (Paper A
        in :math:`\mathbb R^d`: Euclidean geometry, softmax attention, one constant V)
        integrates :math:`z = e^{-(t - t_0)V}x`, :math:`\dot z_i = \sum_j P_{ij}V(z_j - z_i)`,
        with fixed-step RK4 (order 4) and returns :math:`x = e^{(t - t_0)V}z`: the linear
        growth is exact (``scipy.linalg.expm``), and only the bounded motion of z is
        discretised (docs/math.md §9.17).
    dt : float, optional
        Largest step of the fixed-step methods (each interval between saved times is
        cut into equal steps no longer than dt); the first step of ``dopri5``.
        Default for fixed steps: ``0.01 / max(1, max_i |F_i(x0)| / max(1, max_i |x0_i|))``
        (for a batch, the smallest of the systems' defaults).
    rtol, atol : float
        Error tolerances of ``dopri5`` (RMS norm of the error over ``atol + rtol |x|``;
        for a batch, the largest of the systems' RMS norms).
    rng : numpy.random.Generator or int or None
        Source of the noise increments of a noisy model (a seed makes the run
        reproducible); deterministic dynamics do not use it.
    progress : bool or None
        A tqdm progress bar on stderr: None (default) shows one when stderr is a terminal
        and the run lasts more than 2 s; True always, False never.
    max_steps : int
        Stop with an error after this many steps (accepted and rejected).
    trackers : sequence of callable, optional
        Observers called as ``tracker(t, x)`` at every saved time, ``x`` the tokens
        (n, d) or the batch (B, n, d) (read-only); one returning True stops the run there, and the result then
        ends at that time with ``info.status == "stopped"`` (:mod:`transformer_pde.trackers`).
        :class:`transformer_pde.trackers.Save` writes each saved time to an HDF5 file as
        it is reached; :func:`transformer_pde.resume` continues such a run after a crash.
    throw : bool
        If False, a run that fails (non-finite state, ``max_steps``, step-size underflow)
        returns the states saved up to the failure, with the failure in
        ``info.status`` and ``info.message``, instead of raising.

    Returns
    -------
    Trajectory
        ``t`` (nt,), ``x`` (nt, n, d) (``(nt, B, n, d)`` for a batch) and ``info``.

    Notes
    -----
    **Batches.** ``x0`` of shape (B, n, d) is B independent systems, advanced together
    as one state with a leading axis (jax-md's convention): every stage evaluates the B
    fields in one kernel call that spreads the systems over the cores
    (:mod:`transformer_pde._threads` chooses serial or parallel per call). The model may
    carry per-system parameters, ``beta`` of shape (B,) and ``Q``, ``K`` (B, k, d), ``V``
    (B, d, d) (softmax, L2, unnormalized and sigmoid attention); such a batched model
    needs a batch of exactly B systems, while a model without batched parameters is
    shared by every system. With fixed steps (euler, heun, rk4) every system takes the
    steps it would take alone with the same ``dt``, and ``x[:, b]`` equals
    ``simulate(model b, x0[b], ...)`` to round-off (tested to 1e-12). ``dopri5`` takes
    one step size for the whole batch, accepted when the largest per-system error norm
    is at most 1, so each system is at least as accurate as alone but its steps (and
    hence its values, to within the tolerances) differ from a separate run. A batch is
    summed by the exact kernels (``summation=`` of the attention applies to one system,
    where fast summation pays off: many tokens). A noisy
    model draws the increments of all systems from one generator, so a batch is
    reproducible from its seed but does not repeat the noise of separate runs.

    Raises
    ------
    FloatingPointError
        If the state becomes non-finite; the message gives the time and the token.
    RuntimeError
        If more than ``max_steps`` steps are needed.

    Examples
    --------
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> x0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=0.0))
    >>> traj = tp.simulate(dyn, x0, (0.0, 1.0), t_eval=[0.0, 1.0], dt=0.01)
    >>> traj.x.shape, traj.info.status
    ((2, 2, 2), 'success')
    >>> rho = traj.x[-1, 0] @ traj.x[-1, 1]    # beta = 0, n = 2: rho(t) = tanh(t)
    >>> bool(abs(rho - np.tanh(1.0)) < 1e-9)
    True

    A batch of three systems, each with its own beta:

    >>> angles = np.random.default_rng(0).uniform(0, 2 * np.pi, (3, 8))
    >>> x0 = np.stack([np.cos(angles), np.sin(angles)], axis=-1)         # (B, n, d) = (3, 8, 2)
    >>> dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=[0.5, 1.0, 4.0]))
    >>> traj = tp.simulate(dyn, x0, (0.0, 1.0), t_eval=[0.0, 1.0], dt=0.05)
    >>> traj.x.shape
    (2, 3, 8, 2)
    >>> one = tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(beta=4.0)), x0[2], (0.0, 1.0),
    ...                   t_eval=[0.0, 1.0], dt=0.05)
    >>> bool(np.abs(traj.x[:, 2] - one.x).max() < 1e-12)
    True
    """
    if not isinstance(dyn, TokenDynamics):
        raise TypeError(f"dyn must be a TokenDynamics, got {type(dyn).__name__}")
    if _resume is None:
        x0 = dyn.state_space.snap(dyn.check_state(x0, "x0"))
    else:  # the state at a saved time of a run being resumed, as it was (no snapping)
        x0 = np.array(_resume[1], dtype=np.float64)
    noisy = dyn.kappa is not None
    if method is None:
        method = "euler-maruyama" if noisy else "rk4"
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {sorted(METHODS)}, got {method!r}")
    if noisy:
        if method not in ("euler", "euler-maruyama"):
            raise ValueError(
                f"a noisy model (kappa={dyn.kappa:g}) needs method='euler-maruyama', got {method!r}")
        method = "euler-maruyama"
    elif method not in METHODS and method != "rescaled":
        raise ValueError(f"method must be one of {sorted(METHODS) + ['rescaled']}, got {method!r}")
    t0, t1, t_eval = _engine.check_times(t_span, t_eval)
    dyn._check_span(t0, t1)
    if dt is not None:
        dt = _v.as_positive(dt, "dt")
    rtol, atol = _v.as_positive(rtol, "rtol"), _v.as_positive(atol, "atol")
    max_steps = _v.as_positive_int(max_steps, "max_steps")
    seed = int(rng) if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) else None
    rng = _v.as_rng(rng)
    trackers = _engine.check_trackers(trackers)

    info = RunInfo(method=method)
    if method == "rescaled":
        _check_rescaled(dyn, trackers, _resume)
        problem = _Rescaled(dyn, info, x0, t0)
        trackers = tuple(problem.observer(tr) for tr in trackers)
    else:
        problem = _Particles(dyn, info, x0)
    problem.start_at(t0)
    f0 = None
    if noisy:
        stepper = _EulerMaruyama(dyn.state_space, dyn.kappa, rng)
    elif method == "rescaled":
        stepper = _RungeKutta(_RK4)
    else:
        stepper = _RungeKutta(METHODS[method])
    if stepper.adaptive:
        if _resume is None:
            f0 = problem(x0, t0)
            first = dt if dt is not None else _initial_step(problem, x0, t0, f0, rtol, atol, stepper.order)
        else:
            first = 1.0  # the controller's state is restored below
        controller = _engine.PIController(rtol, atol, stepper.order, first, norm_axes=_system_axes(x0))
    else:
        if dt is None:
            dt = _default_dt(problem, x0, t0, t1)
        controller = _engine.FixedSteps(dt)
    info.params = {"t_span": [t0, t1], "method": method, "dt": dt, "rtol": rtol, "atol": atol,
                   "max_steps": max_steps, "throw": bool(throw), "seed": seed}
    done = 0
    if _resume is not None:  # transformer_pde.resume: continue from saved time k
        done, _, snap = _resume
        _engine.restore(problem, stepper, controller, snap)
        t0, t_eval = float(t_eval[done]), t_eval[done:]
        problem.start_at(t0)
        f0 = None if snap.get("f") is None else np.array(snap["f"], dtype=np.float64)
    t, x = _engine.run(problem, stepper, controller, x0, t0, t_eval, breakpoints=problem.breakpoints,
                       max_steps=max_steps, trackers=trackers, throw=throw,
                       progress=_engine.progress_spec(f"simulate[{method}]", progress), f0=f0,
                       fsal=stepper.adaptive, done=done)
    if method == "rescaled":  # back from z to the tokens: x = e^{(t - t0) V} z
        x = np.stack([problem.tokens(tk, zk) for tk, zk in zip(t, x, strict=True)]) if len(t) else x
    return Trajectory(t=t, x=x, dynamics=dyn, info=info)


def _check_rescaled(dyn: TokenDynamics, trackers, resume) -> None:
    """Raise ValueError/TypeError unless ``method="rescaled"`` applies to ``dyn``."""
    from .attention import SoftmaxAttention  # here: integrate imports no attention class otherwise

    why = None
    att = dyn.attention
    if dyn.norm != "none":
        why = (f"it needs geometry='euclidean' (tokens in R^d that grow like e^(tV)), got "
               f"geometry={dyn.geometry.name!r}, norm={dyn.norm!r}")
    elif dyn.kappa is not None:
        why = f"it integrates the noiseless ODE, but dyn has kappa={dyn.kappa:g}"
    elif not isinstance(att, SoftmaxAttention):
        why = (f"it needs softmax attention with one constant V (rows of P summing to 1), got "
               f"{type(att).__name__}")
    elif att.batch is not None:
        why = "it needs one V shared by all systems, got a batched model (per-system parameters)"
    if why is not None:
        raise ValueError(f"simulate(method='rescaled'): {why}; use method='rk4' or 'dopri5'")
    for i, tr in enumerate(trackers):
        if hasattr(tr, "_attach"):
            raise ValueError(
                f"simulate(method='rescaled'): trackers[{i}] ({type(tr).__name__}) records the run's "
                "state for resume, which for this method is the rescaled z; save the result instead"
            )
    if resume is not None:  # pragma: no cover - no Save tracker, so no file to resume
        raise ValueError("simulate(method='rescaled') cannot resume a run")


class _Rescaled(_Particles):
    r"""Paper A's rescaled system: the state is :math:`z_i = e^{-(t - t_0)V} x_i`.

    .. math::

        \dot z_i = \sum_j P_{ij}\, V (z_j - z_i), \qquad
        P_{ij} = \operatorname{softmax}_j\big(\log a_j + \beta\langle Qx_i, Kx_j\rangle\big),
        \quad x = e^{(t - t_0)V} z,

    (docs/math.md §1.1, §9.17): the attention kernel sums the values :math:`z_j` (not
    :math:`Vx_j`) with the weights of the logits of x, so the linear growth
    :math:`e^{tV}` never enters the right-hand side and is applied exactly at the
    saved times. :math:`e^{sV}` is ``scipy.linalg.expm`` (scaling and squaring with Padé
    approximants), accurate for any V: an eigendecomposition would lose
    :math:`\kappa(R)\,\epsilon` for a non-normal V with ill-conditioned eigenvectors R.
    """

    def __init__(self, dyn, info, x0, t0: float):
        super().__init__(dyn, info, x0)
        self.who = "simulate(method='rescaled')"
        att = dyn.attention
        d = x0.shape[-1]
        self.att, self.t0 = att, float(t0)
        self.V = np.eye(d) if att.V is None else np.array(att.V, dtype=np.float64)
        self.VT = np.ascontiguousarray(self.V.T)
        self._expm: dict = {}

    def expm(self, t: float) -> np.ndarray:
        """:math:`e^{(t - t_0)V}`, cached for the few stage times of a step."""
        s = float(t) - self.t0
        E = self._expm.get(s)
        if E is None:
            from scipy.linalg import expm

            if len(self._expm) >= 8:
                self._expm.clear()
            E = self._expm[s] = expm(s * self.V)
        return E

    def tokens(self, t: float, z: np.ndarray) -> np.ndarray:
        """The tokens :math:`x = e^{(t - t_0)V} z` (rowwise) of the rescaled state z."""
        return z @ self.expm(t).T

    def evaluate(self, z, t):
        att = self.att
        x = self.tokens(t, z)
        qx = att._query(x)
        kx = np.ascontiguousarray(x if att.K is None else x @ att.K.T)
        vz = np.ascontiguousarray(z)
        pz = np.empty_like(vz)
        if z.ndim == 2:
            att._kernel(self.weights, qx, kx, vz, pz, att.causal)
        else:
            att._kernel_batch(self.weights, qx, kx, vz, pz, att.causal)
        pz -= z
        return pz @ self.VT

    def evaluate_reference(self, z, t):
        """:meth:`evaluate` in dense NumPy (one system): ``(P z - z) V^T``."""
        P = self.att.matrix(self.tokens(t, z), self.weights)
        return (P @ z - z) @ self.V.T

    def observer(self, tracker):
        """``tracker`` called with the tokens x at each saved time (the engine holds z)."""
        def observe(t, z):
            x = self.tokens(t, z)
            x.flags.writeable = False
            return tracker(t, x)

        return observe

