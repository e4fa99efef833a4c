r"""How many threads the attention kernels use, and the per-call choice of one or all.

Every O(n^2) attention kernel exists twice: a Numba parallel version (a parallel region
over the target tokens on Numba's thread pool) and a serial version (``nogil``, on the
calling thread only). A parallel region ends with a barrier at which the threads spin
for each other; when another process holds one of the cores, a thread waits for a
core that is busy and a call of 0.1 ms can last a scheduler time slice (~5 ms). On an
idle machine the parallel version is faster (1.8x at n = 200 on 2 cores).

So the calls choose at run time. For each kernel and size class (the number of pairs
:math:`m n` rounded down to a power of two, with the thread limit) :func:`run` keeps
the median :math:`\hat t_s, \hat t_p` of the latest wall times of the serial and the
parallel version, calls the faster one, and re-times the slower one once its expected
extra cost is covered by a small share :math:`\varepsilon` of the time spent since the
last probe,

.. math::

    \text{probe when}\quad \varepsilon \sum_{\text{calls since the last probe}} t
    \;\ge\; \max(\hat t_{\text{slow}} - \hat t_{\text{fast}}, 0),

so exploring costs at most about :math:`\varepsilon` (1 %) of the time, a probe that
loses by a factor 50 under load comes rarely, and a change of load is noticed. A new
size class first times each version 3 times, alternating and starting with the parallel
one: a single sample can be an outlier by orders of magnitude (the first parallel call
of a process loads the kernel and wakes the thread pool: 169 ms measured against 0.1 ms
for the next ones), and an estimate from it would not be re-probed for seconds. Calls
with at most :data:`SERIAL_MAX_PAIRS` pairs always run serially.

Nothing global is changed: when the limit differs from Numba's thread count of the
calling thread, Numba's count is set for the one call and restored.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numba
import numpy as np

__all__ = ["set_num_threads", "get_num_threads", "num_threads"]

#: calls with at most this many pairs run serially, untimed: waking the pool costs about
#: what it saves (softmax kernel, 2 idle cores, medians: parallel/serial 1.07 at n = 32,
#: 0.74 at n = 48, 0.53 at n = 200); above it the timings decide
SERIAL_MAX_PAIRS = 32 * 32
#: the serial threshold of the previous behaviour (the "parallel" policy)
_PARALLEL_POLICY_SERIAL_MAX_PAIRS = 64 * 64
#: share of the time the adaptive choice may spend re-timing the slower version
EXPLORE_SHARE = 0.01
#: samples kept per version and size class (their median is the estimate); each version
#: is timed this often before the estimates decide
_WINDOW = 3

_setting: int | None = None
#: "adaptive" (default); "parallel": the behaviour before the adaptive choice (all
#: threads above SERIAL_MAX_PAIRS), kept as the benchmarks' baseline
_policy = "adaptive"
_classes: dict[tuple, _SizeClass] = {}


def _check_count(n: Any, name: str = "n") -> int | None:
    if n is None:
        return None
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int or None, got {n!r} ({type(n).__name__})")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(
            f"{name} must be between 1 and {limit} (numba.config.NUMBA_NUM_THREADS, the size of "
            f"Numba's thread pool), got {int(n)}"
        )
    return int(n)


def set_num_threads(n: int | None) -> None:
    """Set the most threads the attention kernels of this package may use.

    With ``n = 1`` every kernel runs on the calling thread. With ``n > 1`` each call
    runs either on the calling thread or on ``n`` of Numba's threads, whichever the
    timings taken during the run say is faster (see the module
    :mod:`transformer_pde._threads`); a busy neighbour on a shared machine then costs
    its share of the cores, not a slowdown of the parallel barriers. ``None`` restores
    the default: the thread count of :func:`numba.get_num_threads` at each call.

    The setting holds for the whole process (all Python threads); it does not change
    Numba's own thread count or any environment variable.

    Parameters
    ----------
    n : int or None
        Maximum number of threads, between 1 and ``numba.config.NUMBA_NUM_THREADS``.

    Raises
    ------
    TypeError
        If ``n`` is not an int (or None).
    ValueError
        If ``n`` is outside ``[1, numba.config.NUMBA_NUM_THREADS]``.

    See Also
    --------
    get_num_threads, num_threads

    Examples
    --------
    >>> import transformer_pde as tp
    >>> tp.set_num_threads(1)
    >>> tp.get_num_threads()
    1
    >>> tp.set_num_threads(None)  # back to Numba's thread count
    """
    global _setting
    _setting = _check_count(n)


def get_num_threads() -> int:
    """The most threads the attention kernels may use now.

    Returns
    -------
    int
        The value of :func:`set_num_threads`, or :func:`numba.get_num_threads` when it
        is unset.

    Examples
    --------
    >>> import numba
    >>> import transformer_pde as tp
    >>> tp.get_num_threads() == numba.get_num_threads()
    True
    """
    return numba.get_num_threads() if _setting is None else _setting


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Context manager: :func:`set_num_threads` for the ``with`` block, then restore.

    Parameters
    ----------
    n : int or None
        As for :func:`set_num_threads`.

    Examples
    --------
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> x = np.eye(3)
    >>> with tp.num_threads(1):
    ...     v = tp.SoftmaxAttention(beta=1.0).velocity(x)
    >>> v.shape
    (3, 3)
    """
    global _setting
    new = _check_count(n)
    old = _setting
    _setting = new
    try:
        yield
    finally:
        _setting = old


class _SizeClass:
    """Latest wall times of the serial [0] and parallel [1] version, their medians, and
    the time spent since the last probe."""

    __slots__ = ("times", "est", "credit")

    def __init__(self):
        self.times: tuple[list[float], list[float]] = ([], [])
        self.est = [0.0, 0.0]
        self.credit = 0.0

    def choose(self) -> int:
        """0 (serial) or 1 (parallel): the faster, or the slower when a probe is due."""
        n_serial, n_parallel = len(self.times[0]), len(self.times[1])
        if min(n_serial, n_parallel) < _WINDOW:
            # fill both windows first, alternating; parallel first: above SERIAL_MAX_PAIRS
            # it is the better guess on an idle machine
            return 1 if n_parallel <= n_serial else 0
        ts, tp = self.est
        fast = 0 if ts <= tp else 1
        slow = 1 - fast
        if EXPLORE_SHARE * self.credit >= abs(tp - ts):
            self.credit = 0.0
            return slow
        return fast

    def record(self, which: int, seconds: float) -> None:
        t = self.times[which]
        t.append(seconds)
        if len(t) > _WINDOW:
            del t[0]
        self.est[which] = sorted(t)[len(t) // 2]
        if min(len(self.times[0]), len(self.times[1])) >= _WINDOW:
            self.credit += seconds  # the probe budget counts from when both windows are full


def run(name: str, pairs: int, serial: Callable, parallel: Callable, *args) -> Any:
    """Call ``serial(*args)`` or ``parallel(*args)`` (two versions of one kernel).

    ``name`` and ``pairs`` (the O(pairs) work of the call) select the size class whose
    timings decide; see the module docstring.
    """
    current = numba.get_num_threads()
    limit = current if _setting is None else _setting
    if _policy == "parallel":
        if limit == 1 or pairs <= _PARALLEL_POLICY_SERIAL_MAX_PAIRS:
            return serial(*args)
        return _parallel(limit, current, parallel, args)
    if limit == 1 or pairs <= SERIAL_MAX_PAIRS:
        return serial(*args)
    key = (name, limit, int(pairs).bit_length())
    size_class = _classes.get(key)
    if size_class is None:
        size_class = _classes[key] = _SizeClass()
    which = size_class.choose()
    t0 = time.perf_counter()
    out = _parallel(limit, current, parallel, args) if which else serial(*args)
    size_class.record(which, time.perf_counter() - t0)
    return out


def _parallel(limit: int, current: int, kernel: Callable, args: tuple) -> Any:
    """``kernel(*args)`` with Numba's thread count of this thread (``current``) set to
    ``limit`` for the call."""
    if current == limit:
        return kernel(*args)
    numba.set_num_threads(limit)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(current)


def _reset() -> None:
    """Forget all timings (tests, benchmarks)."""
    _classes.clear()
