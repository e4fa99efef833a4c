r"""Results in HDF5 files: save, load, write while running, resume.

Every result of the package (:class:`~transformer_pde.Trajectory` of one system or a
batch, :class:`~transformer_pde.DensityTrajectory` with its grid,
:class:`~transformer_pde.GaussianTrajectory`,
:class:`~transformer_pde.convergence.ConvergenceStudy` with its fitted rates, and a
:class:`Table` of equal-length columns) is written by :func:`save` (or
``result.save(path)``) and read back by :func:`load` (``tp.load``) into an equal object
(``==``). A file holds

- the data as datasets (``t``, ``x`` / ``density`` / ``mean``, ``cov`` / ...), float64;
- the model as parameters, never pickled: the attribute ``model`` is JSON (the class and
  constructor arguments of the :class:`~transformer_pde.TokenDynamics`, its attention
  heads, ...; :func:`to_spec`), with its arrays (``Q``, ``K``, ``V``, a per-system
  ``beta``) as datasets under ``model/``; the grid likewise (attribute ``grid``);
- the run: ``params`` (``t_span``, the stepper and its settings, the seed when an int was
  given) and ``info`` (status, message, steps, evaluations, wall time) as JSON attributes;
- ``format_version`` (:data:`FORMAT_VERSION`) and ``package_version``.

Timings are attributes only, so the same run twice gives bit-identical datasets. A
class the format does not know is a TypeError naming it; a file of a newer format
version is a ValueError.

**Writing while running** (:class:`transformer_pde.trackers.Save`): the file is made,
complete, before the first step (built under a temporary name and renamed into place,
so it appears whole or not at all), with the datasets of every saved time allocated
(contiguous, filled with NaN) and two fixed-size *journal records*. At each saved time
the tracker writes the state's bytes straight into its row of the dataset (at the
offset HDF5 allocated), then a record: the number of completed saves, the run info and
what a resumed run needs (step controller, noise generator, the evaluation carried into
the next step), with a CRC-32, into the record slot not holding the previous one.
After the file is made HDF5's own structures are never written again while the run
goes on, so a process killed at any moment (SIGKILL included) leaves a valid HDF5 file
whose newest intact record says how many rows are complete: :func:`load` returns those,
with ``info.status == "partial"``. When the run ends (done, stopped or failed) the file
is rewritten, again through a temporary file and a rename, into the plain format of
:func:`save`. (HDF5's SWMR mode was the alternative; it needs the file kept open in a
special mode, HDF5 1.10 tools and a flag cleared after a crash, and it does not cover
the attributes a run updates. Rewriting the file at every save costs O(nt^2).)

**Resume** (:func:`resume`, ``tp.resume``): continues a partial file from its last
complete save to the end, writing into the same file; for the fixed-step methods, the
adaptive Dormand-Prince method (its proposed step and error memory and the FSAL
evaluation are in the record), the noisy Euler-Maruyama stepper (the generator's state)
and the grid PDE (the CFL controller's previous face velocities), the result is
bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

from . import _io, _spec

__all__ = [
    "FORMAT_VERSION",
    "Table",
    "save",
    "load",
    "save_table",
    "load_table",
    "resume",
    "write_sweep_point",
    "to_spec",
    "from_spec",
]

#: version of the file layout this package writes; files of a newer version are refused
FORMAT_VERSION = 1
_FORMAT = "transformer_pde"

#: the model and grid classes the format stores (by class name)
_MODEL_CLASSES = (
    "SoftmaxAttention", "ALiBiAttention", "L2Attention", "UnnormalizedAttention",
    "SigmoidAttention", "SinkhornAttention", "MultiHeadAttention", "Layers", "TokenDynamics",
    "CircleGrid", "CausalCircleGrid", "CartesianGrid", "SphereGrid", "ZonalGrid",
)


def _h5py():
    import h5py  # only this module imports h5py, and only when a file is touched

    return h5py


def _classes() -> dict:
    import transformer_pde as tp

    return {name: getattr(tp, name) for name in _MODEL_CLASSES}


# ---------------------------------------------------------------------------------------
# specs: models and grids as their constructor arguments
# ---------------------------------------------------------------------------------------
def to_spec(obj) -> dict:
    r"""A model or grid as a dict ``{"class": name, argument: value, ...}``.

    .. math::

        \mathrm{from\_spec}(\mathrm{to\_spec}(m)) = m \quad (\text{compared with} =\!=).

    The arguments are those of the class's constructor (nested models as specs, arrays
    as arrays); :func:`from_spec` rebuilds an equal object.

    Parameters
    ----------
    obj : TokenDynamics, attention, MultiHeadAttention or Grid

    Returns
    -------
    dict

    Raises
    ------
    TypeError
        For a class the format does not know, or a parameter it cannot store (a callable
        ``alpha``).

    Examples
    --------
    >>> import transformer_pde as tp
    >>> spec = tp.storage.to_spec(tp.TokenDynamics(tp.SoftmaxAttention(2.0)))
    >>> spec["class"], spec["attention"]["beta"], spec["geometry"]
    ('TokenDynamics', 2.0, 'sphere')
    >>> tp.storage.from_spec(spec) == tp.TokenDynamics(tp.SoftmaxAttention(2.0))
    True
    """
    name = type(obj).__name__
    if name not in _MODEL_CLASSES or type(obj) is not _classes()[name]:
        raise TypeError(
            f"storage cannot store a {name}: the format knows {', '.join(_MODEL_CLASSES)}")
    spec = {"class": name}
    for key, value in _spec.parameters(obj).items():
        spec[key] = _spec_value(value, f"{name}.{key}")
    return spec


def _spec_value(value, where: str):
    from .attention import Attention, Layers, MultiHeadAttention
    from .dynamics import TokenDynamics
    from .meanfield.grids import Grid

    if isinstance(value, (Attention, Layers, MultiHeadAttention, TokenDynamics, Grid)):
        try:
            return to_spec(value)
        except TypeError as err:
            raise TypeError(f"{err} (in {where})") from None
    if isinstance(value, np.ndarray):
        return np.array(value)
    if isinstance(value, (list, tuple)):
        return [_spec_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    raise TypeError(f"storage cannot store {where} = {value!r} ({type(value).__name__}): "
                    "only numbers, strings, arrays and models are stored")


def from_spec(spec: dict):
    r"""The model or grid a spec of :func:`to_spec` describes.

    .. math::

        \mathrm{from\_spec}(\mathrm{to\_spec}(m)) = m.

    Parameters
    ----------
    spec : dict

    Returns
    -------
    TokenDynamics, attention or Grid

    Examples
    --------
    >>> import transformer_pde as tp
    >>> tp.storage.from_spec({"class": "CircleGrid", "n_cells": 64})
    CircleGrid(64)
    """
    if not isinstance(spec, dict) or "class" not in spec:
        raise TypeError(f"a spec is a dict with a 'class' key, got {spec!r}")
    classes = _classes()
    name = spec["class"]
    if name not in classes:
        raise TypeError(f"storage cannot read a {name}: the format knows {', '.join(_MODEL_CLASSES)}")
    kwargs = {k: _from_value(v) for k, v in spec.items() if k != "class"}
    return classes[name](**kwargs)


def _from_value(value):
    if isinstance(value, dict) and "class" in value:
        return from_spec(value)
    if isinstance(value, list):
        return [_from_value(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------
# JSON attributes with arrays as datasets
# ---------------------------------------------------------------------------------------
def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"storage cannot store {type(obj).__name__} {obj!r} in an attribute")


def _dumps(obj) -> str:
    return json.dumps(obj, default=_json_default, sort_keys=True)


def _split_arrays(value, prefix: str, arrays: dict):
    """Replace each array in a nested spec by ``{"__array__": path}``, collecting them."""
    if isinstance(value, np.ndarray):
        arrays[prefix] = value
        return {"__array__": prefix}
    if isinstance(value, dict):
        return {k: _split_arrays(v, f"{prefix}/{k}", arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_split_arrays(v, f"{prefix}/{i}", arrays) for i, v in enumerate(value)]
    return value


def _join_arrays(value, group):
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return np.array(group[value["__array__"]][()])
        return {k: _join_arrays(v, group) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_arrays(v, group) for v in value]
    return value


def _write_spec(group, name: str, obj) -> None:
    arrays: dict = {}
    spec = _split_arrays(to_spec(obj), name, arrays)
    group.attrs[name] = _dumps(spec)
    for path, arr in arrays.items():
        group.create_dataset(path, data=arr)


def _read_spec(group, name: str):
    return from_spec(_join_arrays(json.loads(group.attrs[name]), group))


def _info_dict(info) -> dict:
    out = {"class": type(info).__name__}
    for f in dataclasses.fields(info):
        if f.name != "params":
            out[f.name] = getattr(info, f.name)
    return out


def _info_from(d: dict, params: dict | None):
    from . import gaussian, integrate
    from .meanfield import solver

    classes = {"RunInfo": integrate.RunInfo, "MeanFieldInfo": solver.MeanFieldInfo,
               "GaussianInfo": gaussian.GaussianInfo}
    d = dict(d)
    info = classes[d.pop("class")](**d)
    if params is not None:
        info.params = params
    return info


# ---------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------
class Table(dict):
    """A table: equal-length columns by name (a dict of 1-D or N-D arrays) and ``attrs``.

    What a parameter sweep writes, one group per point (:func:`save_table`). ``==``
    compares columns exactly (NaN equal to NaN) and the attributes.

    Examples
    --------
    >>> import numpy as np, transformer_pde as tp
    >>> table = tp.storage.Table({"beta": [1.0, 2.0], "clusters": [3, 1]}, attrs={"n": 64})
    >>> table["beta"], len(table)
    (array([1., 2.]), 2)
    """

    def __init__(self, columns=(), attrs: dict | None = None):
        super().__init__()
        lengths = set()
        for name, col in dict(columns).items():
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(f"column names must be non-empty strings without '/', got {name!r}")
            arr = np.asarray(col)
            if arr.ndim == 0:
                raise ValueError(f"column {name!r} must be an array of rows, got a scalar {col!r}")
            if arr.dtype.kind == "O":
                raise TypeError(f"column {name!r} must hold numbers, booleans or strings, got objects")
            lengths.add(arr.shape[0])
            self[name] = arr
        if len(lengths) > 1:
            raise ValueError("the columns of a table must have equal lengths, got "
                             + ", ".join(f"{k}: {len(v)}" for k, v in self.items()))
        self.attrs = dict(attrs or {})

    def __len__(self) -> int:
        """The number of rows (not of columns)."""
        return next(iter(self.values())).shape[0] if dict.__len__(self) else 0

    def __eq__(self, other) -> bool:
        if not isinstance(other, Table):
            return NotImplemented
        return _spec.equal(dict(self), dict(other)) and _spec.equal(self.attrs, other.attrs)

    __hash__ = None

    def save(self, path, *, group: str | None = None) -> None:
        """:func:`save_table` of this table."""
        save_table(path, self, group=group)


def _kind_of(obj) -> str:
    from .convergence import ConvergenceStudy
    from .gaussian import GaussianTrajectory
    from .integrate import Trajectory
    from .meanfield import DensityTrajectory
    from .sweep import SweepResult

    for cls in (Trajectory, DensityTrajectory, GaussianTrajectory, ConvergenceStudy, Table):
        if type(obj) is cls:
            return cls.__name__
    if type(obj) is SweepResult:
        return "Sweep"
    raise TypeError(f"storage cannot save a {type(obj).__name__}: it saves Trajectory, "
                    "DensityTrajectory, GaussianTrajectory, ConvergenceStudy, Table and SweepResult")


def _head(g, kind: str) -> None:
    import transformer_pde as tp

    g.attrs["format"] = _FORMAT
    g.attrs["format_version"] = FORMAT_VERSION
    g.attrs["kind"] = kind
    g.attrs["package_version"] = tp.__version__


def _write(g, obj) -> None:
    """Write ``obj`` into the open group g (the plain, finished layout)."""
    kind = _kind_of(obj)
    _head(g, kind)
    if kind == "Sweep":
        g.attrs.update(_sweep_grid(obj.names, obj.points))
        for i, st in enumerate(obj.status):
            if st != "missing":
                _check_value(obj.values[i], f"values[{i}]")
                _write_point(g, obj.points, i, st, obj.values[i], obj.errors[i], obj.wall_time_s[i])
        return
    if kind == "Table":
        g.attrs["columns"] = _dumps(list(obj))
        g.attrs["attrs"] = _dumps(obj.attrs)
        for name, col in obj.items():
            if col.dtype.kind == "U":
                g.create_dataset(name, data=col.astype(object), dtype=_h5py().string_dtype())
            else:
                g.create_dataset(name, data=col)
        return
    if kind == "ConvergenceStudy":
        for name in ("n", "t", "distance", "seeds"):
            g.create_dataset(name, data=np.asarray(getattr(obj, name)))
        g.attrs["p"], g.attrs["expected_slope"] = float(obj.p), float(obj.expected_slope)
        g.attrs["info"] = _dumps(obj.info)
        # the fitted rates at each time, for readers of the file (recomputed on load)
        fits = [obj.fit(k) for k in range(len(obj.t))]
        for name in ("slope", "low", "high", "intercept"):
            g.create_dataset(f"fit/{name}", data=np.array([getattr(f, name) for f in fits]))
        g["fit"].attrs["level"] = fits[0].level if fits else 0.95
        return
    _write_spec(g, "model", obj.dynamics)
    g.attrs["info"] = _dumps(_info_dict(obj.info))
    g.attrs["params"] = _dumps(getattr(obj.info, "params", {}))
    g.create_dataset("t", data=np.asarray(obj.t, dtype=np.float64))
    if kind == "Trajectory":
        g.create_dataset("x", data=obj.x)
    elif kind == "DensityTrajectory":
        _write_spec(g, "grid", obj.grid)
        g.create_dataset("density", data=obj.density)
    else:
        g.create_dataset("mean", data=obj.mean)
        g.create_dataset("cov", data=obj.cov)


def _check_version(g, path) -> str:
    if g.attrs.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a transformer_pde result file (no format attribute "
                         f"{_FORMAT!r} in group {g.name!r})")
    version = int(g.attrs["format_version"])
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written in format version {version} (by transformer_pde "
            f"{g.attrs.get('package_version')}); this transformer_pde {_version()} reads versions "
            f"up to {FORMAT_VERSION}: upgrade transformer_pde to read it")
    return str(g.attrs["kind"])


def _version() -> str:
    import transformer_pde as tp

    return tp.__version__


def _read(g, path):
    """The result in the open group g (plain layout or a running run's journal)."""
    kind = _check_version(g, path)
    if kind == "Sweep":
        return _read_sweep(g, path)
    if kind == "Table":
        columns = {}
        for name in json.loads(g.attrs["columns"]):
            d = g[name]
            columns[name] = (np.array(d.asstr()[()], dtype=str) if d.dtype.kind == "O"
                             else np.array(d[()]))
        return Table(columns, attrs=json.loads(g.attrs["attrs"]))
    if kind == "ConvergenceStudy":
        from .convergence import ConvergenceStudy

        return ConvergenceStudy(n=np.array(g["n"][()]), t=np.array(g["t"][()]),
                                distance=np.array(g["distance"][()]), seeds=np.array(g["seeds"][()]),
                                p=float(g.attrs["p"]), expected_slope=float(g.attrs["expected_slope"]),
                                info=json.loads(g.attrs["info"]))
    dyn = _read_spec(g, "model")
    params = json.loads(g.attrs["params"])
    info = json.loads(g.attrs["info"])
    count = None
    if "_journal" in g:
        record = _Journal.read_record(g)
        count = 0 if record is None else record["count"]
        if record is not None:
            info.update(record["snapshot"]["info"])
        info["status"] = "partial"
        info["message"] = (f"the run ended before it finished (killed?): {count} of {g['t'].shape[0]} "
                           "saved times are complete; tp.resume(path) continues it")
    info = _info_from(info, params)
    t = np.array(g["t"][()] if count is None else g["t"][:count])
    if kind == "Trajectory":
        from .integrate import Trajectory

        x = np.array(g["x"][()] if count is None else g["x"][:count])
        return Trajectory(t=t, x=x, dynamics=dyn, info=info)
    if kind == "DensityTrajectory":
        from .meanfield import DensityTrajectory

        density = np.array(g["density"][()] if count is None else g["density"][:count])
        return DensityTrajectory(t=t, density=density, grid=_read_spec(g, "grid"), dynamics=dyn, info=info)
    if kind == "GaussianTrajectory":
        from .gaussian import GaussianTrajectory

        return GaussianTrajectory(t=t, mean=np.array(g["mean"][()]), cov=np.array(g["cov"][()]),
                                  dynamics=dyn, info=info)
    raise ValueError(f"{path}: unknown kind of result {kind!r} in group {g.name!r}")


def _write_file(path, build) -> None:
    """Make the HDF5 file ``path`` by ``build(h5file)`` under a temporary name, then rename it."""
    h5py = _h5py()
    with _io.atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        build(f)


def save(result, path, *, group: str | None = None) -> None:
    r"""Write a result to the HDF5 file ``path``.

    .. math::

        \mathrm{load}(\mathrm{save}(r)) = r \quad (\text{exactly: float64 bytes are copied}).

    Without ``group`` the file is replaced, atomically (a new file under a temporary
    name, then renamed: a reader sees the old file or the new one). With ``group`` the
    result becomes that group of the file (created if missing; a group of that name is
    replaced), e.g. one group per point of a sweep; the file is updated copy-on-write (a
    copy with the new group, renamed onto it), so a killed writer loses nothing.

    Parameters
    ----------
    result : Trajectory, DensityTrajectory, GaussianTrajectory, ConvergenceStudy or Table
    path : str or os.PathLike
    group : str, optional
        The group to write into, e.g. ``"points/0003"``.

    Raises
    ------
    TypeError
        For a result or a model class the format does not store.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> x0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> traj = tp.simulate(tp.TokenDynamics(tp.SoftmaxAttention(1.0)), x0, (0.0, 1.0), t_eval=[0.0, 1.0])
    >>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
    >>> traj.save(path)
    >>> tp.load(path) == traj
    True
    """
    _kind_of(result)
    if group is None:
        _write_file(path, lambda f: _write(f, result))
        return
    _update_file(path, lambda f: _replace_group(f, group, lambda g: _write(g, result)))


def _replace_group(f, group: str, build) -> None:
    if group in f:
        del f[group]
    build(f.create_group(group))


def _update_file(path, change) -> None:
    """Apply ``change(h5file)`` to a copy of ``path`` (or a new file), then rename it onto ``path``.

    Copy-on-write, so a process killed while writing leaves the old file intact: the
    groups written before (the points of a sweep) are never lost. Costs a copy of the
    file per update.
    """
    h5py = _h5py()
    with _io.atomic_path(path) as tmp:
        if Path(path).exists():
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a", track_order=True) as f:
            change(f)


def load(path, *, group: str | None = None):
    r"""Read the result in the HDF5 file ``path``.

    .. math::

        \mathrm{load}(\mathrm{save}(r)) = r.

    Files written by :func:`save`, or by a :class:`~transformer_pde.trackers.Save` tracker
    (while its run goes on, after it ended, or after it was killed).

    Parameters
    ----------
    path : str or os.PathLike
    group : str, optional
        The group holding the result (:func:`save` with ``group``); the file's root by default.

    Returns
    -------
    Trajectory, DensityTrajectory, GaussianTrajectory, ConvergenceStudy or Table
        The class that was saved. A run that did not finish (its process killed) gives
        its completed saved times with ``info.status == "partial"``.

    Raises
    ------
    ValueError
        If the file is not a result file, or of a newer format version.

    Examples
    --------
    >>> import os, tempfile
    >>> import transformer_pde as tp
    >>> path = os.path.join(tempfile.mkdtemp(), "table.h5")
    >>> tp.storage.save_table(path, {"beta": [1.0, 4.0], "clusters": [2, 1]})
    >>> tp.load(path)["clusters"]
    array([2, 1])
    """
    h5py = _h5py()
    with h5py.File(path, "r") as f:
        g = f if group is None else f[group]
        return _read(g, path)


def save_table(path, columns, *, group: str | None = None, attrs: dict | None = None) -> None:
    r"""Write a table of equal-length columns (a :class:`Table` or a dict of arrays).

    .. math::

        \mathrm{load\_table}(\mathrm{save\_table}(T)) = T.

    Parameters
    ----------
    path : str or os.PathLike
    columns : Table or dict of array_like
        Numbers, booleans or strings; every column the same length.
    group : str, optional
        Write into this group of the file (created if missing, replaced if present), as
        :func:`save` does: a sweep writes one group per point, ``"points/0007"``.
    attrs : dict, optional
        JSON-able attributes (the point's parameters, an error message); a Table's own
        ``attrs`` are used when not given.

    Examples
    --------
    >>> import os, tempfile
    >>> import transformer_pde as tp
    >>> path = os.path.join(tempfile.mkdtemp(), "sweep.h5")
    >>> for i, beta in enumerate([1.0, 4.0]):
    ...     tp.storage.save_table(path, {"t": [0.0, 1.0], "energy": [0.5, 0.5 + beta]},
    ...                           group=f"points/{i:04d}", attrs={"beta": beta})
    >>> tp.storage.load_table(path, group="points/0001").attrs
    {'beta': 4.0}
    """
    table = columns if isinstance(columns, Table) and attrs is None else Table(
        columns, attrs if attrs is not None else getattr(columns, "attrs", None))
    _dumps(table.attrs)  # JSON-able, or a clear TypeError before the file is touched
    save(table, path, group=group)


def write_sweep_point(path, names, points, index: int, status: str, value, error, wall_time: float) -> None:
    r"""Write one point of a sweep into the sweep file ``path`` (made on the first call).

    The file holds the grid (``names``, ``points`` as JSON attributes) and one group
    ``points/<index>`` per computed point with its parameters, ``status`` ("done" or
    "failed"), ``error`` and ``wall_time`` as attributes and the point's value under
    ``value``: a result (any kind :func:`save` writes), a dict of results, numbers or
    arrays (one member each; a run file gives ``{task: result}``), a number or an array.
    Written copy-on-write (:func:`save` with ``group``): a killed sweep keeps every
    point written before. :func:`load` reads the file as a
    :class:`~transformer_pde.SweepResult`.

    .. math::

        \text{file} = \{(p_i, \text{status}_i, \text{value}_i) : i \text{ computed}\}.

    Raises
    ------
    TypeError
        If the value (or a member of it) is of a type the format does not store; nothing
        is written then.
    ValueError
        If the file holds a different grid.
    """
    _check_value(value, "value")
    grid = _sweep_grid(names, points)

    def change(f):
        if "kind" not in f.attrs:
            _head(f, "Sweep")
            f.attrs.update(grid)
        elif f.attrs["kind"] != "Sweep" or any(f.attrs[k] != v for k, v in grid.items()):
            raise ValueError(f"{path} holds a different sweep (another grid): write to a new file")
        _write_point(f, points, index, status, value, error, wall_time)

    _update_file(path, change)


def _sweep_grid(names, points) -> dict:
    return {"names": _dumps(list(names)), "points": _dumps(list(points))}


def _write_point(f, points, index, status, value, error, wall_time) -> None:
    def build(g):
        g.attrs["point"] = _dumps(points[index])
        g.attrs["status"] = status
        g.attrs["error"] = "" if error is None else str(error)
        g.attrs["wall_time"] = float(wall_time)
        if value is not None:
            _write_value(g, "value", value)

    _replace_group(f, f"points/{index:05d}", build)


def _check_value(value, where: str) -> None:
    if value is None or isinstance(value, (bool, int, float, np.generic, np.ndarray)):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"storage cannot store {where}: dict keys must be str, got {k!r}")
            _check_value(v, f"{where}[{k!r}]")
        return
    _kind_of(value)


def _write_value(g, name: str, value) -> None:
    if isinstance(value, dict):
        sub = g.create_group(name)
        sub.attrs["members"] = _dumps(list(value))
        for k, v in value.items():
            _write_value(sub, k, v)
    elif isinstance(value, (bool, int, float, np.generic, np.ndarray)):
        g.create_dataset(name, data=np.asarray(value))
    else:
        _write(g.create_group(name), value)


def _read_value(g, path):
    if isinstance(g, _h5py().Dataset):
        v = g[()]
        return v.item() if isinstance(v, np.generic) else np.array(v)
    if "members" in g.attrs:
        return {k: _read_value(g[k], path) for k in json.loads(g.attrs["members"])}
    return _read(g, path)


def _read_sweep(f, path):
    from .sweep import SweepResult

    names, points = json.loads(f.attrs["names"]), json.loads(f.attrs["points"])
    n = len(points)
    status, values, errors, times = ["missing"] * n, [None] * n, [None] * n, [0.0] * n
    for key, g in f.get("points", {}).items():
        i = int(key)
        status[i] = str(g.attrs["status"])
        errors[i] = str(g.attrs["error"]) or None
        times[i] = float(g.attrs["wall_time"])
        if "value" in g:
            values[i] = _read_value(g["value"], path)
    return SweepResult(names, points, status, values, errors, times)


def load_table(path, *, group: str | None = None) -> Table:
    r"""Read a table written by :func:`save_table` (the group ``group`` of the file).

    .. math::

        \mathrm{load\_table}(\mathrm{save\_table}(T)) = T.

    Parameters
    ----------
    path : str or os.PathLike
    group : str, optional

    Returns
    -------
    Table

    Examples
    --------
    >>> import os, tempfile
    >>> import transformer_pde as tp
    >>> path = os.path.join(tempfile.mkdtemp(), "t.h5")
    >>> tp.storage.save_table(path, {"n": [8, 16]}, attrs={"beta": 2.0})
    >>> tp.storage.load_table(path) == tp.storage.Table({"n": [8, 16]}, attrs={"beta": 2.0})
    True
    """
    table = load(path, group=group)
    if not isinstance(table, Table):
        raise ValueError(f"{path} (group {group or '/'}) holds a {type(table).__name__}, not a table")
    return table


# ---------------------------------------------------------------------------------------
# the journal: writing while a run goes on
# ---------------------------------------------------------------------------------------
_MAGIC = b"TPJ1"
_HEADER = struct.Struct("<4sIQQ")  # magic, crc32 of the body, count, body length
_RECORD_BASE = 1 << 16  # bytes for the JSON part of a record


def _encode(snapshot: dict) -> tuple[bytes, list]:
    """JSON with arrays moved into a list of raw little-endian float64 blocks."""
    blocks = []

    def pull(v):
        if isinstance(v, np.ndarray):
            start = sum(b.size for b in blocks)  # in floats, after the JSON part
            blocks.append(np.ascontiguousarray(v, dtype="<f8"))
            return {"__block__": len(blocks) - 1, "start": start, "shape": list(v.shape)}
        if isinstance(v, dict):
            return {k: pull(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [pull(x) for x in v]
        return v

    return _dumps(pull(snapshot)).encode("utf-8"), blocks


def _decode(body: bytes) -> dict:
    (n_json,) = struct.unpack_from("<Q", body, 0)
    head = json.loads(body[8:8 + n_json].decode("utf-8"))
    offset = 8 + n_json

    def push(v):
        if isinstance(v, dict):
            if "__block__" in v:
                count = int(np.prod(v["shape"], dtype=np.int64))
                start = offset + 8 * v["start"]
                return np.frombuffer(body, dtype="<f8", count=count, offset=start).reshape(v["shape"]).copy()
            return {k: push(x) for k, x in v.items()}
        if isinstance(v, list):
            return [push(x) for x in v]
        return v

    return push(head)


class _Journal:
    """The file of a running run (see the module docstring); made by trackers.Save."""

    def __init__(self, path, fsync: bool):
        self.path, self.fsync = Path(path), bool(fsync)
        self.fd = None

    # -- making and reopening -----------------------------------------------------
    def create(self, view) -> None:
        problem = view.problem
        kind = problem.kind
        t_eval = np.asarray(view.t_eval, dtype=np.float64)
        info = problem.info
        state_shape = view.y0.shape if kind == "Trajectory" else problem.grid.shape
        capacity = _RECORD_BASE + 8 * int(problem.snapshot_floats(view.y0))
        h5py = _h5py()

        def build(f):
            _head(f, kind)
            _write_spec(f, "model", problem.dyn)
            if kind == "DensityTrajectory":
                _write_spec(f, "grid", problem.grid)
            f.attrs["info"] = _dumps(_info_dict(info))
            f.attrs["params"] = _dumps(info.params)
            f.create_dataset("t", data=t_eval)
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # rows exist before they are written
            name = "x" if kind == "Trajectory" else "density"
            f.create_dataset(name, shape=(len(t_eval),) + tuple(state_shape), dtype="<f8",
                             fillvalue=np.nan, dcpl=dcpl)
            j = f.create_group("_journal")
            j.attrs["capacity"] = capacity
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            j.create_dataset("records", shape=(2, capacity), dtype="u1", fillvalue=0, dcpl=dcpl)

        _write_file(self.path, build)
        self.open()

    def open(self) -> None:
        """Find the byte offsets of the rows and records, and open the file for raw writes."""
        h5py = _h5py()
        with h5py.File(self.path, "r") as f:
            if "_journal" not in f:
                raise ValueError(f"{self.path} holds a finished run: there is nothing to continue")
            name = "x" if f.attrs["kind"] == "Trajectory" else "density"
            data = f[name]
            self.row_offset = data.id.get_offset()
            self.row_bytes = int(np.prod(data.shape[1:], dtype=np.int64)) * 8
            self.n_rows = data.shape[0]
            self.record_offset = f["_journal/records"].id.get_offset()
            self.capacity = int(f["_journal"].attrs["capacity"])
            self.params = json.loads(f.attrs["params"])
        if self.row_offset is None or self.record_offset is None:  # pragma: no cover - HDF5 promise
            raise RuntimeError(f"{self.path}: HDF5 did not allocate the datasets of the journal")
        self.fd = os.open(self.path, os.O_RDWR)

    # -- one saved time ----------------------------------------------------------------
    def write(self, index: int, y: np.ndarray, snapshot: dict) -> None:
        """Write row ``index`` and then the record saying rows 0..index are complete."""
        row = np.ascontiguousarray(y, dtype="<f8").tobytes()
        os.pwrite(self.fd, row, self.row_offset + index * self.row_bytes)
        if self.fsync:
            os.fsync(self.fd)  # the row reaches the disk before the record that counts it
        head_bytes, blocks = _encode(snapshot)
        body = struct.pack("<Q", len(head_bytes)) + head_bytes + b"".join(b.tobytes() for b in blocks)
        record = _HEADER.pack(_MAGIC, zlib.crc32(body), index + 1, len(body)) + body
        if len(record) > self.capacity:  # pragma: no cover - the capacity bounds every snapshot
            raise RuntimeError(f"a journal record of {len(record)} bytes exceeds its slot ({self.capacity})")
        os.pwrite(self.fd, record, self.record_offset + (index % 2) * self.capacity)
        if self.fsync:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def finish(self, info) -> None:
        """Rewrite the file in the plain layout, with the final run info."""
        self.close()
        result = load(self.path)
        info.params = self.params
        result.info = info
        # the data are what the journal holds: only the rows that were reached
        save(result, self.path)

    @staticmethod
    def read_record(g) -> dict | None:
        """The newest intact record of the journal in group g, or None."""
        records = np.array(g["_journal/records"][()])
        best = None
        for slot in records:
            raw = slot.tobytes()
            magic, crc, count, length = _HEADER.unpack_from(raw, 0)
            if magic != _MAGIC or _HEADER.size + length > len(raw):
                continue
            body = raw[_HEADER.size:_HEADER.size + length]
            if zlib.crc32(body) != crc:
                continue
            if best is None or count > best[0]:
                best = (count, body)
        if best is None:
            return None
        return {"count": int(best[0]), "snapshot": _decode(best[1])}


# ---------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------
def resume(path, *, trackers=None, progress: bool | None = None):
    r"""Continue the run of a partial file (its process killed) to the end.

    The file was written by a :class:`~transformer_pde.trackers.Save` tracker of
    :func:`~transformer_pde.simulate` or :func:`~transformer_pde.solve_meanfield`. The
    run restarts from its last complete saved time with the model, settings, step
    controller, noise generator and carried evaluation recorded there, keeps writing
    into the same file, and returns the whole result: the same (``==``, bit for bit) as
    the run would have given uninterrupted. A finished file is simply loaded.

    .. math::

        x(t_{k}) \;\xrightarrow{\text{same steps}}\; x(t_{k+1}), \dots, x(t_{\mathrm{end}}),
        \qquad k = \text{the last complete save}.

    Parameters
    ----------
    path : str or os.PathLike
    trackers : sequence of callable, optional
        Further observers for the rest of the run (they see the saved times from the
        resumed one on).
    progress : bool or None
        Show a progress bar (None: when stderr is a terminal and the run lasts, as
        :func:`~transformer_pde.simulate`).

    Returns
    -------
    Trajectory or DensityTrajectory

    Raises
    ------
    ValueError
        If nothing was saved yet (no state to continue from: run it again).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
    >>> x0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    >>> traj = tp.simulate(dyn, x0, (0.0, 1.0), t_eval=[0.0, 0.5, 1.0], trackers=[tp.trackers.Save(path)])
    >>> tp.resume(path) == traj == tp.load(path)     # finished: resume just loads it
    True
    """
    from . import _engine
    from . import trackers as _trackers
    from .integrate import Trajectory, simulate
    from .meanfield import Density, DensityTrajectory, solve_meanfield

    h5py = _h5py()
    with h5py.File(path, "r") as f:
        kind = _check_version(f, path)
        if "_journal" not in f:
            finished = True
        else:
            finished = False
            record = _Journal.read_record(f)
            if record is None:
                raise ValueError(f"{path}: the run was killed before its first saved time was written; "
                                 "there is no state to continue from: run it again")
            dyn = _read_spec(f, "model")
            params = json.loads(f.attrs["params"])
            t_eval = np.array(f["t"][()])
            k = record["count"] - 1
            name = "x" if kind == "Trajectory" else "density"
            head = np.array(f[name][:k])
            y = np.array(f[name][k])
            grid = _read_spec(f, "grid") if kind == "DensityTrajectory" else None
    if finished:
        return load(path)
    snap = record["snapshot"]
    more = list(_engine.check_trackers(trackers))
    save = _trackers.Save(path, _append=True)
    common = dict(t_eval=t_eval, max_steps=params["max_steps"], throw=params["throw"],
                  trackers=[save, *more], progress=progress, _resume=(k, y, snap))
    if kind == "Trajectory":
        tail = simulate(dyn, y, tuple(params["t_span"]), method=params["method"], dt=params["dt"],
                        rtol=params["rtol"], atol=params["atol"], **common)
        tail.info.params = params
        return Trajectory(t=np.concatenate([t_eval[:k], tail.t]), x=np.concatenate([head, tail.x]),
                          dynamics=dyn, info=tail.info)
    if kind == "DensityTrajectory":
        tail = solve_meanfield(dyn, Density(grid, y), tuple(params["t_span"]), cfl=params["cfl"],
                               field=params["field"], method=params["method"], **common)
        tail.info.params = params
        return DensityTrajectory(t=np.concatenate([t_eval[:k], tail.t]),
                                 density=np.concatenate([head, tail.density]), grid=grid,
                                 dynamics=dyn, info=tail.info)
    raise ValueError(f"{path}: a {kind} cannot be resumed")  # pragma: no cover
