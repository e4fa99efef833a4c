r"""Observers of a run: stopping rules and per-time diagnostics.

A tracker is any callable ``tracker(t, state)``; :func:`~transformer_pde.simulate` and
:func:`~transformer_pde.solve_meanfield` (``trackers=[...]``) call each one at every
saved time, with ``state`` the tokens (n, d) (read-only) or the
:class:`~transformer_pde.Density`. A tracker that returns True stops the run at that
time: the result then ends there and ``info.status == "stopped"``. The solvers know
nothing about what a tracker does; these are the ones users ask for most:

- :class:`StopAtClusters`: stop at the first saved time with at most k clusters;
- :class:`StopAtDensityPeak`: stop when the density exceeds a bound somewhere;
- :class:`Record`: record a diagnostic :math:`f(x(t))` at every saved time;
- :class:`Save`: write every saved time to an HDF5 file as soon as it is reached, so a
  run killed at any moment keeps its completed saves, and :func:`transformer_pde.resume`
  continues it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import _validation as _v
from . import clustering
from .meanfield import Density

__all__ = ["StopAtClusters", "StopAtDensityPeak", "Record", "Save"]


class StopAtClusters:
    r"""Stop at the first saved time with at most ``k`` clusters.

    Tokens are counted by :func:`~transformer_pde.clustering.cluster_count`
    (connected components of :math:`\langle x_i, x_j\rangle > \text{threshold}`, or of
    :math:`|x_i - x_j| < \text{distance}` in :math:`\mathbb R^d`); a density by its peaks,
    :func:`~transformer_pde.clustering.density_peaks` (cells above ``factor`` times the
    mean); a density without such a peak has formed no cluster yet (count 0) and does not
    stop the run. ``counts`` keeps the count at every saved time seen.

    Parameters
    ----------
    k : int
        Stop once the count is at most k (>= 1).
    threshold : float
        Inner-product threshold for tokens on the sphere.
    distance : float, optional
        Distance threshold for tokens in Euclidean space (replaces ``threshold``).
    factor : float
        Peak height relative to the mean density, for densities.

    Examples
    --------
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> x0 = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 1e-3]])
    >>> x0 /= np.linalg.norm(x0, axis=1, keepdims=True)
    >>> stop = tp.trackers.StopAtClusters(1)
    >>> traj = tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(1.0)), x0, (0.0, 50.0),
    ...                    t_eval=np.linspace(0.0, 50.0, 51), trackers=[stop])
    >>> traj.info.status, int(stop.counts[-1]), float(traj.t[-1]) < 50.0
    ('stopped', 1, True)
    """

    def __init__(self, k: int, threshold: float = clustering.CLUSTER_THRESHOLD, *,
                 distance: float | None = None, factor: float = 5.0):
        self.k = _v.as_positive_int(k, "k")
        self.threshold = _v.as_real(threshold, "threshold")
        self.distance = None if distance is None else _v.as_positive(distance, "distance")
        self.factor = _v.as_positive(factor, "factor")
        self.counts: list[int] = []

    def __call__(self, t: float, state) -> bool:
        """Count the clusters of ``state``, append the count to ``counts`` and say whether to stop.

        Parameters
        ----------
        t : float
            The saved time (not used).
        state : ndarray, shape (n, d), or Density
            The tokens, or the density of a mean-field run.

        Returns
        -------
        bool
            True when the count is between 1 and ``k``.
        """
        if isinstance(state, Density):
            count = clustering.density_peaks(state, self.factor)
        else:
            count = clustering.cluster_count(state, self.threshold, distance=self.distance)
        self.counts.append(int(count))
        return 1 <= count <= self.k

    def __repr__(self) -> str:
        return f"StopAtClusters(k={self.k})"


class StopAtDensityPeak:
    r"""Stop when the density exceeds ``bound`` in some cell: :math:`\max_c\rho_c > \text{bound}`.

    It observes grid densities only (tokens have no density value to bound); ``peaks`` keeps
    :math:`\max_c\rho_c` at every saved time seen.

    Parameters
    ----------
    bound : float
        Largest allowed density value (> 0), in the density's units (per length or area).

    Examples
    --------
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> grid = tp.CircleGrid(128)
    >>> rho0 = tp.Density.from_function(grid, lambda th: 1 + 0.5 * np.cos(th))
    >>> stop = tp.trackers.StopAtDensityPeak(1.0)
    >>> sol = tp.solve_meanfield(tp.TokenDynamics(tp.SoftmaxAttention(4.0)), rho0, (0.0, 10.0),
    ...                          t_eval=np.linspace(0.0, 10.0, 21), trackers=[stop])
    >>> sol.info.status, bool(sol.density[-1].max() > 1.0 >= sol.density[-2].max())
    ('stopped', True)
    """

    def __init__(self, bound: float):
        self.bound = _v.as_positive(bound, "bound")
        self.peaks: list[float] = []

    def __call__(self, t: float, state) -> bool:
        r"""Append the peak density of ``state`` to ``peaks`` and say whether it exceeds ``bound``.

        Parameters
        ----------
        t : float
            The saved time (not used).
        state : Density
            The density of a mean-field run.

        Returns
        -------
        bool
            True when :math:`\max_c\rho_c > \text{bound}`.

        Raises
        ------
        TypeError
            If ``state`` is not a :class:`~transformer_pde.Density` (tokens have no density).
        """
        if not isinstance(state, Density):
            raise TypeError(
                f"StopAtDensityPeak observes a density (solve_meanfield), got {type(state).__name__}")
        peak = float(np.max(state.values))
        self.peaks.append(peak)
        return peak > self.bound

    def __repr__(self) -> str:
        return f"StopAtDensityPeak(bound={self.bound:g})"


class Record:
    r"""Record :math:`f(\text{state})` at every saved time; never stops the run.

    Parameters
    ----------
    f : callable
        ``f(state)`` -> a value (scalar or array), e.g.
        :func:`~transformer_pde.clustering.order_parameter`.

    Attributes
    ----------
    t : list of float
        The saved times seen.
    values : list
        ``f`` at those times.

    Examples
    --------
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> x0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> rec = tp.trackers.Record(tp.clustering.order_parameter)
    >>> traj = tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(1.0)), x0, (0.0, 2.0),
    ...                    t_eval=[0.0, 1.0, 2.0], trackers=[rec])
    >>> rec.t, bool(np.all(np.diff(rec.values) > 0))     # the tokens gather
    ([0.0, 1.0, 2.0], True)
    """

    def __init__(self, f: Callable):
        if not callable(f):
            raise TypeError(f"f must be a function of the state, got {type(f).__name__}")
        self.f = f
        self.t: list[float] = []
        self.values: list = []

    def __call__(self, t: float, state) -> bool:
        """Append ``t`` to ``t`` and ``f(state)`` to ``values``.

        Parameters
        ----------
        t : float
            The saved time.
        state : ndarray, shape (n, d), or Density
            The tokens or the density.

        Returns
        -------
        bool
            False: recording never stops the run.
        """
        self.t.append(float(t))
        self.values.append(self.f(state))
        return False

    def __repr__(self) -> str:
        return f"Record({getattr(self.f, '__name__', self.f)!r})"


class Save:
    r"""Write each saved time to the HDF5 file ``path`` as soon as the run reaches it.

    A run killed at any moment (SIGKILL included) leaves a valid file that
    :func:`transformer_pde.load` reads with every completed saved time
    (``info.status == "partial"``) and :func:`transformer_pde.resume` continues to the
    same result as an uninterrupted run; a run that ends (done, stopped by a tracker, or
    failed) leaves the file :func:`transformer_pde.storage.save` would write. Never stops
    the run.

    How: the file is made complete, with room for every saved time, before the first step
    (under a temporary name, then renamed); each saved time writes the state's bytes into
    its row and then a checksummed record of the run's state into the one of two record
    slots not holding the previous record, so HDF5's own structures are never written
    while the run goes on (:mod:`transformer_pde.storage` explains the choice). Writing
    costs one ``pwrite`` of the state and one of a small record per saved time.

    .. math::

        \text{file} = \{x(t_0), \dots, x(t_k)\} \cup \{\text{record}_k\},
        \qquad k = \text{the last saved time reached}.

    Parameters
    ----------
    path : str or os.PathLike
        The file (replaced when the run starts).
    fsync : bool
        Also ``fsync`` the row and the record at each saved time, so the saves survive a
        power loss, not only a killed process (slower).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
    >>> x0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> traj = tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(1.0)), x0, (0.0, 2.0),
    ...                    t_eval=[0.0, 1.0, 2.0], trackers=[tp.trackers.Save(path)])
    >>> tp.load(path) == traj
    True
    """

    def __init__(self, path, *, fsync: bool = False, _append: bool = False):
        import os

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file name (str or os.PathLike), got {type(path).__name__}")
        from . import storage  # lazily: h5py only when a run saves

        self.path = path
        self._journal = storage._Journal(path, fsync)
        self._append = _append
        self._view = None

    def _attach(self, view) -> None:
        """Called by the engine before the run: make the file (or reopen it to continue)."""
        if not hasattr(view.problem, "kind"):
            raise TypeError(f"Save writes runs of simulate and solve_meanfield, not of {view.problem.who}")
        self._view = view
        if self._append:
            self._journal.open()
        else:
            self._journal.create(view)

    def __call__(self, t: float, state) -> bool:
        """Write the state at the saved time ``t`` (its row, then the record counting it).

        Parameters
        ----------
        t : float
            The saved time.
        state : ndarray or Density
            What the run observes (the engine hands the tracker the raw state as well).

        Returns
        -------
        bool
            False: saving never stops the run.
        """
        view = self._view
        if view is None:
            raise RuntimeError("Save is a tracker of simulate/solve_meanfield (trackers=[Save(path)]), "
                               "not a function to call")
        index = view.done + view.index
        if not (self._append and view.index == 0):  # a resumed run starts at a saved row
            self._journal.write(index, view.y, view.snapshot())
        return False

    def _finish(self, info, complete: bool) -> None:
        """Called by the engine when the run ends: the plain file, or the journal kept."""
        if complete:
            self._journal.finish(info)
        else:  # interrupted (KeyboardInterrupt, a failing tracker): keep it resumable
            self._journal.close()

    def __repr__(self) -> str:
        return f"Save({str(self.path)!r})"
