r"""The one time-stepping engine (private).

Every run of the package (particles, the grid PDE, the axisymmetric reference) is the
same loop over small, separate pieces, as in diffrax:

- a **problem**: the right-hand side :math:`\dot y = F(y, t)` on its state space
  (:class:`Problem`), with the checks of a new state and what observers see of it;
- a **stepper** that declares its order and advances one step (:class:`Stepper`: the
  Butcher tableaux and Euler-Maruyama of :mod:`transformer_pde.integrate`, SSP-RK3 of
  :mod:`transformer_pde.meanfield.solver`);
- a **step controller** that proposes a step and accepts or redoes it
  (:class:`FixedSteps`, :class:`PIController`; the CFL controller of the grid PDE);
- the **saved times** ``t_eval`` and the **breakpoints** where the field switches
  (mix-LN's :math:`\tau`, the boundaries of :class:`~transformer_pde.Layers`): steps land
  exactly on both, and no step straddles a breakpoint; at a switch the problem selects
  its next piece (``start_at``) and a controller with a ``switched(problem)`` method
  restarts (the grid PDE's, so a run over layers repeats the runs of its layers);
- **observers** (``trackers``), called as ``tracker(t, state)`` at every saved time;
  one that returns ``True`` stops the run there;
- the **outcome**: one enumeration (:class:`Status`) of how a run ended, with a readable
  message in :class:`RunInfo`; ``throw=False`` hands back the partial result instead of
  raising.

The engine owns the validation of ``t_span``/``t_eval``, ``max_steps``, the progress
bar and the run info; :func:`~transformer_pde.simulate`,
:func:`~transformer_pde.solve_meanfield` and :func:`~transformer_pde.solve_axisymmetric`
only assemble the pieces.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import _progress
from . import _validation as _v

__all__ = [
    "Status",
    "RunInfo",
    "RunFailure",
    "Step",
    "Problem",
    "Stepper",
    "FixedSteps",
    "PIController",
    "check_times",
    "check_trackers",
    "run",
    "RunView",
    "restore",
]


class Status(enum.StrEnum):
    """How a run ended (``info.status``); compares equal to its string value."""

    #: reached the end of ``t_span``
    SUCCESS = "success"
    #: a tracker returned True: the result ends at that saved time
    STOPPED = "stopped"
    #: the state (or its velocity) became non-finite
    NONFINITE = "nonfinite"
    #: the density of a grid run became negative
    NEGATIVE = "negative_density"
    #: more than ``max_steps`` steps were needed
    MAX_STEPS = "max_steps"
    #: the adaptive step size shrank to round-off
    STEP_UNDERFLOW = "step_underflow"
    #: read back from a file whose run did not finish (killed): the saves up to then
    PARTIAL = "partial"


#: the exception each failure raises with ``throw=True``
_RAISES = {
    Status.NONFINITE: FloatingPointError,
    Status.NEGATIVE: FloatingPointError,
    Status.STEP_UNDERFLOW: FloatingPointError,
    Status.MAX_STEPS: RuntimeError,
}


class RunFailure(Exception):
    """Raised inside the loop by a piece that finds the run cannot go on."""

    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class RunInfo:
    """What a run did and how it ended.

    Attributes
    ----------
    method : str
        The time stepper.
    status : str
        ``"success"``, ``"stopped"`` (a tracker stopped the run) or the failure
        (``"nonfinite"``, ``"negative_density"``, ``"max_steps"``, ``"step_underflow"``;
        only with ``throw=False``, else it raised).
    message : str
        What happened, with the time and the place of a failure ("" on success).
    n_steps, n_rejected, n_evals : int
        Accepted steps, redone steps, evaluations of the right-hand side.
    dt_min, dt_max : float
        Range of the accepted step sizes.
    wall_time : float
        Seconds (not compared by ``==``: timings differ from run to run).
    params : dict
        The run's parameters (``t_span``, the stepper's settings, the seed when one was
        given): what :mod:`transformer_pde.storage` records and :func:`transformer_pde.resume`
        needs; not compared by ``==``.
    """

    method: str
    status: str = Status.SUCCESS.value
    message: str = ""
    n_steps: int = 0
    n_rejected: int = 0
    n_evals: int = 0
    dt_min: float = np.inf
    dt_max: float = 0.0
    wall_time: float = field(default=0.0, compare=False)
    params: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def success(self) -> bool:
        """Whether the run reached the end of ``t_span``."""
        return self.status == Status.SUCCESS

    def _record(self, h: float) -> None:
        self.n_steps += 1
        self.dt_min = min(self.dt_min, float(h))
        self.dt_max = max(self.dt_max, float(h))


@dataclass
class Step:
    """The outcome of one attempted step: the new state, the embedded error estimate
    (adaptive steppers), the evaluation at the new state when the stepper has it (FSAL),
    and the stage evaluations (what a controller may inspect)."""

    y: np.ndarray
    err: np.ndarray | None = None
    f_end: object = None
    stages: Sequence = ()


class Problem:
    """A right-hand side on a state space (the base of the particle and grid problems).

    Subclasses implement :meth:`evaluate`; the defaults suit a flat space with no
    switches.
    """

    #: name used in messages
    who = "run"

    def __init__(self, info: RunInfo):
        self.info = info

    def __call__(self, y, t):
        """The evaluation at (y, t), counted in ``info.n_evals``."""
        self.info.n_evals += 1
        return self.evaluate(y, t)

    def evaluate(self, y, t):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate(y, t)")

    def retract(self, y):
        """Map a stage point back onto the state space (identity in flat space)."""
        return y

    def start_at(self, t: float) -> bool:
        """Select the smooth piece for steps starting at t; True if it changed."""
        return False

    def check(self, y_new, t: float, h: float, y) -> None:
        """Raise :class:`RunFailure` if the step from (t, y) to ``y_new`` went wrong."""

    def accepted(self, y_new) -> None:
        """Book-keeping after an accepted step."""

    def state(self, y):
        """What observers see of the state y."""
        return y

    def snapshot(self) -> dict:
        """What a resumed run needs of the problem besides the state (JSON-able or arrays)."""
        return {}

    def restore(self, snap: dict) -> None:
        """Undo :meth:`snapshot`: continue a run from a saved time."""

    def snapshot_floats(self, y0) -> int:
        """An upper bound on the floats in the arrays of all snapshots of a run from y0."""
        return int(np.size(y0))  # the FSAL evaluation


class Stepper:
    """One step of a one-step method, ``order`` declared."""

    name: str = ""
    order: int = 1
    #: the step's embedded error estimate is meaningful (for :class:`PIController`)
    adaptive: bool = False

    def step(self, problem: Problem, t: float, y, h: float, f0) -> Step:  # pragma: no cover
        raise NotImplementedError

    def snapshot(self) -> dict:
        """The stepper's own state at a saved time (the noise generator's)."""
        return {}

    def restore(self, snap: dict) -> None:
        """Undo :meth:`snapshot`."""


class FixedSteps:
    """Cut each interval between stops into equal steps no longer than ``dt``."""

    def __init__(self, dt: float):
        self.dt = dt
        self._left = 0
        self._h = dt

    def begin(self, t: float, target: float) -> int:
        """Plan the steps to the next stop; returns their number."""
        n_sub = max(1, int(np.ceil((target - t) / self.dt * (1.0 - 1e-12))))
        self._left, self._h = n_sub, (target - t) / n_sub
        return n_sub

    def propose(self, t: float, y, f0, remaining: float) -> float:
        # the last sub-step lands on the stop exactly
        return remaining if self._left <= 1 else self._h

    def judge(self, t, y, h, result: Step):
        return True, h

    def accepted(self, h: float, f0) -> None:
        self._left -= 1

    def snapshot(self) -> dict:
        """At a saved time only ``dt`` matters: each interval is planned afresh."""
        return {"dt": self.dt}

    def restore(self, snap: dict) -> None:
        self.dt = self._h = float(snap["dt"])
        self._left = 0


class PIController:
    r"""Embedded-error step control (Hairer-Norsett-Wanner, Solving ODEs I, II.4; the PI
    form of Gustafsson, as in diffrax's ``PIDController``).

    With the RMS error norm :math:`e_n = \|\mathrm{err}/(\mathrm{atol} +
    \mathrm{rtol}\max(|y_n|, |y_{n+1}|))\|` of a method of order p, a step is accepted
    when :math:`e_n \le 1` and the next step is

    .. math::

        h_{n+1} = h_n\,\min\Big(5, 0.9\,e_n^{-(\text{icoeff} + \text{pcoeff})/p}\,
        e_{n-1}^{\text{pcoeff}/p}\Big),

    (``icoeff = 1, pcoeff = 0`` is the classical I controller, the default); a rejected
    step shrinks by :math:`\max(0.2, 0.9 e_n^{-1/p})`. A step cut short to land on a
    saved time does not shrink the one after it.

    ``norm_axes``: the axes of one system's state when the state is a batch of systems
    (the last two for (B, n, d)); :math:`e_n` is then the largest of the systems' RMS
    norms, so every system is held to the tolerance it would have alone.
    """

    def __init__(self, rtol: float, atol: float, order: int, first_step: float | None = None,
                 icoeff: float = 1.0, pcoeff: float = 0.0, norm_axes: tuple[int, ...] | None = None):
        self.rtol, self.atol, self.order = rtol, atol, order
        self.norm_axes = norm_axes
        self.icoeff, self.pcoeff = icoeff, pcoeff
        self.h = first_step
        self._err_prev = 1.0
        self._err = 1.0
        self._shortened = False

    def begin(self, t, target) -> int:
        return 0  # not known in advance

    def propose(self, t: float, y, f0, remaining: float) -> float:
        self._shortened = self.h >= remaining
        return remaining if self._shortened else self.h

    def judge(self, t, y, h, result: Step):
        scale = self.atol + self.rtol * np.maximum(np.abs(y), np.abs(result.y))
        if self.norm_axes is None:
            err = float(np.sqrt(np.mean((result.err / scale) ** 2)))
        else:  # one norm per system of a batch; the worst decides (NaN propagates)
            err = float(np.max(np.sqrt(np.mean((result.err / scale) ** 2, axis=self.norm_axes))))
        self._err = err
        if np.isfinite(err) and err <= 1.0:
            return True, h
        shrink = 0.2 if not np.isfinite(err) else max(0.2, 0.9 * err ** (-1.0 / self.order))
        self.h = h * min(1.0, shrink)
        self._shortened = False  # the retry is shorter than the way to the stop
        return False, self.h

    def accepted(self, h: float, f0) -> None:
        err, p = self._err, self.order
        if err > 0.0:
            factor = 0.9 * err ** (-(self.icoeff + self.pcoeff) / p) * self._err_prev ** (self.pcoeff / p)
            factor = min(5.0, factor)
        else:
            factor = 5.0
        self._err_prev = max(err, 1e-10)
        # a step shortened to land on a stop does not shrink the next one
        self.h = max(self.h, h * factor) if self._shortened and h < self.h else h * factor

    def snapshot(self) -> dict:
        """The proposed step and the error memory: a resumed run takes the same steps."""
        return {"h": self.h, "err_prev": self._err_prev, "err": self._err, "shortened": self._shortened}

    def restore(self, snap: dict) -> None:
        self.h, self._err_prev, self._err = float(snap["h"]), float(snap["err_prev"]), float(snap["err"])
        self._shortened = bool(snap["shortened"])


def check_times(t_span, t_eval, default_count: int = 101):
    """Validate ``t_span = (t0, t1)`` and the saved times; returns ``(t0, t1, t_eval)``."""
    t0, t1 = _v.as_time_span(t_span, "t_span")
    if t_eval is None:
        return t0, t1, np.linspace(t0, t1, default_count)
    t_eval = np.atleast_1d(_v.as_real_array(t_eval, "t_eval", nonempty=False, finite=False))
    if t_eval.ndim != 1 or t_eval.size == 0:
        raise ValueError(f"t_eval must be a non-empty 1-D array of times, got shape {t_eval.shape}")
    _v.as_real_array(t_eval, "t_eval")  # finite, naming the first entry that is not
    if np.any(np.diff(t_eval) <= 0):
        k = int(np.argmax(np.diff(t_eval) <= 0))
        raise ValueError(
            f"t_eval must be strictly increasing, got t_eval[{k}] = {t_eval[k]} >= "
            f"t_eval[{k + 1}] = {t_eval[k + 1]}"
        )
    if t_eval[0] < t0 or t_eval[-1] > t1:
        raise ValueError(
            f"t_eval must lie inside t_span=({t0}, {t1}), got times from {t_eval[0]} to {t_eval[-1]}"
        )
    return t0, t1, t_eval


def check_trackers(trackers) -> tuple[Callable, ...]:
    """A tuple of callables ``tracker(t, state)`` (None: no trackers)."""
    if trackers is None:
        return ()
    if callable(trackers):
        trackers = [trackers]
    try:
        trackers = tuple(trackers)
    except TypeError:
        raise TypeError(
            f"trackers must be a list of callables tracker(t, state), got {type(trackers).__name__}"
        ) from None
    for i, tr in enumerate(trackers):
        if not callable(tr):
            raise TypeError(f"trackers[{i}] must be callable as tracker(t, state), got {tr!r}")
    return trackers


def time_bar(total: float, desc: str, delay: float = 0.0):
    """A tqdm progress bar over simulated time, shown after ``delay`` seconds.

    A bar shown at once (asked for) stays on screen; an automatic one (``delay > 0``)
    is removed when the run ends.
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, delay=delay, leave=delay == 0.0,
                bar_format="{l_bar}{bar}| t={n:.4g}/{total:.4g} [{elapsed}<{remaining}]")


def progress_spec(desc: str, progress) -> tuple[str, float] | None:
    """The ``progress`` argument of :func:`run` for a public ``progress=`` (None, True, False)."""
    delay = _progress.bar_delay(progress)
    return None if delay is None else (desc, delay)


def _advance_bar(bar, t: float, t0: float) -> None:
    # set the position to the time itself, clamped to [0, total]: incrementing by step
    # sizes drifts past the total by round-off, and tqdm then clamps with a TqdmWarning
    bar.n = min(max(t - t0, 0.0), bar.total)
    bar.update(0)  # redraws when tqdm's minimum interval has passed


def _stops(t_eval, k, breakpoints, t):
    """Times to land on after t, in order: ``(time, index into t_eval or -1)``."""
    stops = [(float(te), i) for i, te in enumerate(t_eval) if i >= k]
    stops += [(float(b), -1) for b in breakpoints if t < b < t_eval[-1] and b not in t_eval]
    return sorted(stops)


def run(problem: Problem, stepper: Stepper, controller, y0: np.ndarray, t0: float,
        t_eval: np.ndarray, *, breakpoints=(), max_steps: int, trackers=(), throw: bool = True,
        progress: str | None = None, f0=None, fsal: bool = False, done: int = 0):
    """Advance ``y0`` from ``t0`` over the saved times ``t_eval``.

    Returns ``(t, ys)``: the saved times reached and the states there,
    ``ys.shape == (len(t),) + y0.shape``; ``problem.info`` records the outcome.
    ``f0`` is the evaluation at ``(y0, t0)`` if the caller has it already; with ``fsal``
    the stepper's ``Step.f_end`` is reused as the next step's first stage.
    ``progress`` is the description of a tqdm bar (None: no bar), or ``(description,
    delay)`` for a bar that shows after ``delay`` seconds.

    Trackers with an ``_attach(run)`` method (:class:`transformer_pde.trackers.Save`) see
    the run itself (:class:`RunView`: problem, stepper, controller, the evaluation carried
    to the next step), so they can record what a resumed run needs; ``done`` is the number
    of saved times before ``t_eval[0]`` already recorded (a resumed run), and their
    ``_finish(info, complete)`` is called when the run ends.
    """
    info = problem.info
    ys = np.empty((len(t_eval),) + y0.shape)
    start, wall0 = time.perf_counter(), info.wall_time
    if isinstance(progress, tuple):
        bar = time_bar(float(t_eval[-1] - t0), *progress)
    else:
        bar = time_bar(float(t_eval[-1] - t0), progress) if progress else None
    y, t = y0, t0
    observe = _Observers(trackers, problem, RunView(problem, stepper, controller, y0, t0, t_eval, done))
    complete = False
    k = int(np.searchsorted(t_eval, t0, side="right"))  # saved times at t0 are y0 itself
    ys[:k] = y0
    n_saved = 0
    try:
        for i in range(k):
            n_saved = i + 1
            if observe(float(t_eval[i]), y0, i, f0):
                raise _Stop
        f = f0
        problem.start_at(t)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for target, save in _stops(t_eval, k, breakpoints, t):
                if info.n_steps + controller.begin(t, target) > max_steps:
                    raise RunFailure(Status.MAX_STEPS,
                                     f"more than max_steps={max_steps} steps needed at t={t:.9g}")
                while t < target:
                    if info.n_steps + info.n_rejected >= max_steps:
                        raise RunFailure(Status.MAX_STEPS,
                                         f"more than max_steps={max_steps} steps at t={t:.9g}")
                    if f is None:
                        f = problem(y, t)
                    h = controller.propose(t, y, f, target - t)
                    while True:
                        result = stepper.step(problem, t, y, h, f)
                        ok, h_retry = controller.judge(t, y, h, result)
                        if ok:
                            break
                        info.n_rejected += 1
                        if h_retry <= 1e-14 * max(1.0, abs(t)):
                            problem.check(result.y, t, h, y)  # a non-finite state says where
                            raise RunFailure(Status.STEP_UNDERFLOW,
                                             f"step size underflow (h={h_retry:.3g}) at t={t:.9g}")
                        if info.n_steps + info.n_rejected >= max_steps:
                            raise RunFailure(Status.MAX_STEPS,
                                             f"more than max_steps={max_steps} steps at t={t:.9g}")
                        h = min(h_retry, target - t)
                    problem.check(result.y, t, h, y)
                    controller.accepted(h, f)
                    t = target if h >= target - t else t + h
                    y = result.y
                    f = result.f_end if fsal else None
                    info._record(h)
                    problem.accepted(y)
                    if bar is not None:
                        _advance_bar(bar, t, t0)
                if problem.start_at(t):
                    f = None  # a switch of the field: the stored first stage is stale
                    switched = getattr(controller, "switched", None)
                    if switched is not None:  # a controller that restarts at a switch (grid PDE)
                        switched(problem)
                if save >= 0:
                    ys[save] = y
                    n_saved = save + 1
                    if observe(target, y, save, f):
                        raise _Stop
        complete = True
    except _Stop:
        complete = True
        info.status = Status.STOPPED.value
        info.message = f"stopped by a tracker at t={t_eval[n_saved - 1]:.9g}"
    except RunFailure as failure:
        complete = True
        info.status, info.message = failure.status.value, f"{problem.who} stopped: {failure.message}"
        if throw:
            raise _RAISES[failure.status](info.message) from None
    finally:
        if bar is not None:
            if info.status == Status.SUCCESS.value:
                bar.n = bar.total  # a finished run ends at 100%
            bar.close()
        info.wall_time = wall0 + (time.perf_counter() - start)
        observe.finish(info, complete)
    return t_eval[:n_saved].copy(), ys[:n_saved]


class _Stop(Exception):
    """A tracker asked to stop."""


class RunView:
    """What a tracker with ``_attach`` sees of a run: the pieces, and at each saved time
    the index of that time, the state and the evaluation carried into the next step.

    :meth:`snapshot` is everything a resumed run needs besides the state.
    """

    def __init__(self, problem, stepper, controller, y0, t0, t_eval, done):
        self.problem, self.stepper, self.controller = problem, stepper, controller
        self.y0, self.t0, self.t_eval, self.done = y0, t0, t_eval, done
        self.index, self.y, self.f = -1, None, None
        # a resumed run starts from the wall time of the part before it
        self._wall0, self._start = problem.info.wall_time, time.perf_counter()

    def snapshot(self) -> dict:
        """The state of the run at the latest saved time, but the state itself."""
        info = self.problem.info
        counters = {k: getattr(info, k) for k in info.__dataclass_fields__ if k != "params"}
        counters["wall_time"] = self._wall0 + (time.perf_counter() - self._start)
        return {"info": counters, "problem": self.problem.snapshot(),
                "stepper": self.stepper.snapshot(), "controller": self.controller.snapshot(),
                "f": self.f if isinstance(self.f, np.ndarray) else None}


def restore(problem, stepper, controller, snap: dict) -> None:
    """Put a run's pieces back in the state :meth:`RunView.snapshot` recorded."""
    info = problem.info
    for k, v in snap["info"].items():
        setattr(info, k, v)
    problem.restore(snap["problem"])
    stepper.restore(snap["stepper"])
    controller.restore(snap["controller"])


class _Observers:
    """Call every tracker with (t, what observers see of y); True if one asks to stop.

    Trackers run under the floating-point error settings of the caller, not under the
    engine's (which ignores overflow inside steps to report it with time and place).
    """

    def __init__(self, trackers, problem: Problem, view: RunView):
        self.trackers, self.problem = trackers, problem
        self.errstate = np.geterr()
        self.view = view
        self.watchers = [tr for tr in trackers if hasattr(tr, "_attach")]
        for tr in self.watchers:
            tr._attach(view)

    def finish(self, info, complete: bool) -> None:
        for tr in self.watchers:
            tr._finish(info, complete)

    def __call__(self, t: float, y, index: int = -1, f=None) -> bool:
        if not self.trackers:
            return False
        if self.watchers:
            self.view.index, self.view.y, self.view.f = index, y, f
        state = self.problem.state(y)
        stop = False
        with np.errstate(**self.errstate):
            for tracker in self.trackers:
                stop = bool(tracker(t, state)) or stop  # every tracker sees every saved time
        return stop
