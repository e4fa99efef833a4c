r"""Parameter sweeps: one function or run file over a grid of parameters, on any executor.

:func:`sweep` evaluates a target at every point of the Cartesian product of a parameter
grid,

.. math::

    \{(p_1, \dots, p_m)\} = P_1 \times \dots \times P_m, \qquad
    \text{value}(p) = f(p_1, \dots, p_m),

through a :class:`concurrent.futures.Executor`: local processes by default (each with one
kernel thread and one BLAS thread, so that processes times threads never exceed the
cores), or any executor the caller passes, e.g. a Dask cluster's
(``distributed.Client(address).get_executor()``; ``dask[distributed]`` is the optional
extra ``dask``). The target is

- a function called as ``f(**point)`` that returns a result object of the package (a
  :class:`~transformer_pde.Trajectory`, ...), or a dict of numbers and arrays; it must be
  importable by the workers (defined in a module, not in ``__main__`` for local processes);
- or a run file (path or :class:`~transformer_pde.runfile.RunSpec`) whose keys the grid
  overrides by their dotted names (``{"model.beta": [1, 4, 9], "initial.seed": [0, 1]}``);
  each point runs every task of the run file and gives ``{task: result}``.

A point that raises is recorded with its error and the others finish. With ``output`` the
points are written to one HDF5 file as they complete (one group per point); a sweep that
was stopped resumes with ``resume=True``, computing only the points the file lacks.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _spec
from . import _validation as _v

__all__ = ["sweep", "SweepResult", "points_of"]

#: the thread counts set in the environment of the local worker processes
_WORKER_ENV = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def points_of(grid: Mapping[str, Sequence]) -> list[dict]:
    """The points of a parameter grid: the Cartesian product, last parameter fastest.

    Examples
    --------
    >>> points_of({"beta": [1, 4], "seed": [0, 1, 2]})[:4]
    [{'beta': 1, 'seed': 0}, {'beta': 1, 'seed': 1}, {'beta': 1, 'seed': 2}, {'beta': 4, 'seed': 0}]
    """
    if not isinstance(grid, Mapping) or not grid:
        raise TypeError(f"grid must be a nonempty mapping of parameter names to lists of values, "
                        f"got {grid!r}")
    names = list(grid)
    values = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"grid keys must be parameter names (str), got {name!r}")
        v = grid[name]
        if hasattr(v, "tolist") and getattr(v, "ndim", 0) >= 1:  # a NumPy array of values
            v = list(v)
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) == 0:
            raise ValueError(f"grid[{name!r}] must be a nonempty list of values, got {v!r}")
        values.append(list(v))
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


@dataclass(eq=False)
class SweepResult(_spec.Result):
    """The points of a sweep with what each gave.

    Attributes
    ----------
    names : list of str
        The parameter names.
    points : list of dict
        The parameter values of each point, in grid order.
    status : list of str
        ``"done"`` or ``"failed"`` per point (``"missing"`` for a point not computed, in a
        partial file).
    values : list
        What the target returned per point (None where it failed).
    errors : list of str or None
        The error (type, message and traceback) of each failed point.
    wall_time_s : list of float
        Time each point took in its worker (not compared by ``==``).

    ``==`` compares the points, statuses, values and errors exactly; ``save(path)``
    writes the sweep file (:func:`transformer_pde.storage.write_sweep_point`) and
    ``tp.load`` reads it back.
    """

    names: list
    points: list
    status: list
    values: list
    errors: list
    wall_time_s: list = field(default_factory=list, compare=False)

    @property
    def failed(self) -> list[dict]:
        """The points that raised."""
        return [p for p, s in zip(self.points, self.status, strict=True) if s == "failed"]

    def table(self, value: Callable | None = None) -> dict[str, list]:
        """Columns: each parameter, ``status``, and ``value(result)`` of each point if given."""
        cols: dict[str, list] = {name: [p[name] for p in self.points] for name in self.names}
        cols["status"] = list(self.status)
        if value is not None:
            cols["value"] = [value(v) if s == "done" else None
                             for v, s in zip(self.values, self.status, strict=True)]
        return cols

    def plot(self, value=None, *, x: str | None = None, ax=None, **kwargs):
        """Draw ``value`` of each point against parameter ``x``; returns the Axes.

        :func:`transformer_pde.plotting.plot_sweep`; without ``value``, a table of the
        points and their status.
        """
        from . import plotting  # lazily: matplotlib only when a figure is made

        return plotting.plot_sweep(self, value, x=x, ax=ax, **kwargs)

    def __repr__(self) -> str:
        done = self.status.count("done")
        return (f"SweepResult({len(self.points)} points over {self.names}: {done} done, "
                f"{self.status.count('failed')} failed)")


def _call(target, point: dict) -> tuple[str, Any, str | None, float]:
    """Evaluate one point in a worker; never raises (errors are returned)."""
    t0 = time.perf_counter()
    try:
        if isinstance(target, (str, os.PathLike)) or _is_spec(target):
            value = _run_point(target, point)
        else:
            value = target(**point)
        return "done", value, None, time.perf_counter() - t0
    except Exception as exc:  # a failed point is recorded, the others go on
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return "failed", None, text, time.perf_counter() - t0


def _is_spec(target) -> bool:
    from .runfile import RunSpec

    return isinstance(target, RunSpec)


def _run_point(target, point: dict) -> dict:
    from . import runfile

    spec = runfile.read(target) if not _is_spec(target) else target
    spec = runfile.override(spec, point)
    return {task: runfile.run_task(spec, task) for task in spec.tasks}


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the processes started inside (restored after)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sweep(target, grid: Mapping[str, Sequence], *, executor: Executor | None = None,
          max_workers: int | None = None, threads_per_worker: int = 1,
          output: str | os.PathLike | None = None,
          resume: bool = False, progress: bool | None = None) -> SweepResult:
    r"""Evaluate ``target`` at every point of ``grid``, in parallel.

    .. math::

        \text{value}(p) = f(p), \qquad p \in P_1 \times \dots \times P_m .

    Parameters
    ----------
    target : callable or str or path-like or RunSpec
        ``f(**point)`` (importable by the workers), or a run file whose dotted keys the
        grid overrides.
    grid : mapping of str to sequence
        Parameter name -> values; the points are the Cartesian product (:func:`points_of`).
    executor : concurrent.futures.Executor, optional
        Where the points run. Default: a pool of local processes (spawned), each with one
        kernel and one BLAS thread; a Dask cluster through
        ``distributed.Client(...).get_executor()``.
    max_workers : int, optional
        Size of the default local pool (default: the number of cores, at most the number
        of points). Ignored with ``executor``.
    threads_per_worker : int
        Kernel and BLAS threads of each local worker (default 1: processes times threads
        stay within the cores). Ignored with ``executor``.
    output : str or path-like, optional
        HDF5 file the points are written to as they complete (one group per point).
    resume : bool
        With ``output``: keep the points the file already has and compute the others.
    progress : bool, optional
        A progress bar (default: when stderr is a terminal).

    Returns
    -------
    SweepResult

    Examples
    --------
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> def ratio(a, b):
    ...     return a / b
    >>> with ThreadPoolExecutor(2) as ex:
    ...     res = sweep(ratio, {"a": [3.0, 5.0], "b": [4.0, 0.0]}, executor=ex)
    >>> res.values, res.status
    ([0.75, None, 1.25, None], ['done', 'failed', 'done', 'failed'])
    >>> res.errors[1].splitlines()[-1]
    'ZeroDivisionError: float division by zero'
    """
    # the points as plain values (NumPy scalars as Python numbers): what the file holds
    points = json.loads(json.dumps(points_of(grid), default=_plain))
    names = list(grid)
    if not (callable(target) or isinstance(target, (str, os.PathLike)) or _is_spec(target)):
        raise TypeError(f"target must be a function or a run file (path or RunSpec), "
                        f"got {type(target).__name__}")
    if isinstance(target, (str, os.PathLike)):
        from . import runfile

        spec = runfile.read(target)
        runfile.override(spec, points[0])  # a wrong key fails here, before any work
        target = spec
    elif _is_spec(target):
        from . import runfile

        runfile.override(target, points[0])
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(f"executor must be a concurrent.futures.Executor (for Dask: "
                        f"client.get_executor()), got {type(executor).__name__}")
    if resume and output is None:
        raise ValueError("resume=True needs output (the file of the sweep to resume)")
    status = ["missing"] * len(points)
    values: list = [None] * len(points)
    errors: list = [None] * len(points)
    times = [0.0] * len(points)
    if output is not None:
        from . import storage

        output = Path(output)
        if resume and output.exists():
            old = storage.load(output)
            if not isinstance(old, SweepResult) or old.names != names or old.points != points:
                raise ValueError(f"{output} holds a different sweep: resume needs the same grid")
            for i, st in enumerate(old.status):
                if st == "done":  # failed points are computed again
                    status[i], values[i], errors[i], times[i] = st, old.values[i], None, old.wall_time_s[i]
        elif output.exists():
            output.unlink()  # a new sweep replaces the file
    todo = [i for i, s in enumerate(status) if s != "done"]
    own = executor is None and bool(todo)
    threads = _v.as_positive_int(threads_per_worker, "threads_per_worker")
    env = (_environment({k: str(threads) for k in _WORKER_ENV}) if own
           else contextlib.nullcontext())
    if own:
        import multiprocessing

        workers = max_workers if max_workers is not None else (os.cpu_count() or 1)
        workers = max(1, min(int(workers), len(todo)))
        # spawned workers start on demand, at submit: the environment stays set until then
        executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    bar = _bar(len(todo), progress)
    try:
        with env:
            futures = {executor.submit(_call, target, points[i]): i for i in todo}
        for fut in as_completed(futures):
            i = futures[fut]
            status[i], values[i], errors[i], times[i] = fut.result()
            if output is not None:
                _store(output, names, points, i, status, values, errors, times)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if own:
            executor.shutdown(wait=True, cancel_futures=True)
    return SweepResult(names, points, status, values, errors, times)


def _plain(value):
    """NumPy scalars and arrays as JSON gives them back (the points as a file holds them)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a sweep parameter value must be a number, string or array, got {value!r}")


def _store(output, names, points, i, status, values, errors, times) -> None:
    """Write point i to the sweep file; a value the format cannot store fails the point."""
    from . import storage

    try:
        storage.write_sweep_point(output, names, points, i, status[i], values[i], errors[i], times[i])
    except TypeError as exc:
        status[i], values[i] = "failed", None
        errors[i] = f"the point's value cannot be stored: {exc}"
        storage.write_sweep_point(output, names, points, i, status[i], None, errors[i], times[i])


def _bar(total: int, progress: bool | None):
    import sys

    if progress is None:
        progress = sys.stderr.isatty()
    if not progress or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep", unit="point")
