r"""Run files: a study described as data (TOML), checked, built and run.

A run file names the model, the initial condition and what to run; nothing in it is
executed as code (it is read with :mod:`tomllib` and every key is checked against the
schema below: an unknown key, a wrong type or a value outside its choices is a
:class:`RunFileError` naming the key and what is allowed).

.. code-block:: toml

    title = "SA on the circle"

    [model]
    attention = "softmax"        # softmax | unnormalized | l2 | sigmoid | sinkhorn
    beta = 9.0
    dim = 2
    geometry = "sphere"          # sphere | euclidean
    # Q, K, V: "identity" (default), a matrix [[...], ...], or {ensemble = "goe", seed = 1}
    # weights = {ensemble = "kq", seed = 3}   # Q, K and V of tp.random_weights at once

    [initial]
    kind = "uniform"             # uniform | von-mises-fisher | gaussian | equiangular | clusters | file
    n = 64
    seed = 0

    [particles]                  # tp.simulate
    T = 30.0
    method = "rk4"
    dt = 0.05

    [meanfield]                  # tp.solve_meanfield
    grid = "circle"
    n_cells = 512
    T = 30.0

Sections ``[particles]``, ``[meanfield]``, ``[gaussian]`` and ``[convergence]`` each
name one task; a run file has at least one. :func:`run` writes each task's result to
``DIR/<task>.h5`` (:func:`transformer_pde.load` reads it back) and ``DIR/run.json``
with what ran. The same run file with the same seeds gives bit-identical datasets.
"""

from __future__ import annotations

import copy
import json
import numbers
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import initial as _initial
from .attention import (
    ALiBiAttention,
    L2Attention,
    SigmoidAttention,
    SinkhornAttention,
    SoftmaxAttention,
    UnnormalizedAttention,
)
from .dynamics import NORMS, TokenDynamics
from .ensembles import WEIGHT_KINDS, random_weights
from .integrate import METHODS

__all__ = ["RunFileError", "RunSpec", "read", "parse", "override", "run", "run_task", "builtin",
           "default_output", "build_dynamics",
           "build_tokens", "build_grid", "build_density", "TASKS", "ATTENTIONS", "INITIAL_KINDS", "GRIDS"]

#: the task sections a run file may have, in the order they run
TASKS = ("particles", "meanfield", "gaussian", "convergence")
#: model.attention -> class
ATTENTIONS = {
    "softmax": SoftmaxAttention,
    "unnormalized": UnnormalizedAttention,
    "l2": L2Attention,
    "sigmoid": SigmoidAttention,
    "sinkhorn": SinkhornAttention,
    "alibi": ALiBiAttention,
}
#: initial.kind -> the keys it uses (besides kind, n, seed)
INITIAL_KINDS = {
    "uniform": (),
    "von-mises-fisher": ("mean_direction", "concentration"),
    "gaussian": ("mean", "cov"),
    "equiangular": ("rho",),
    "clusters": ("centers", "spread"),
    "file": ("path",),
}
#: meanfield.grid -> the keys it uses
GRIDS = {
    "circle": ("n_cells",),
    "causal-circle": ("n_positions", "n_cells"),
    "sphere": ("n_lat", "n_lon"),
    "cartesian": ("bounds", "shape", "boundary"),
}


class RunFileError(ValueError):
    """A run file that cannot be used: the message names the key and what is allowed."""


# -- the schema -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Key:
    #: "float", "int", "bool", "str", "vector", "matrix", "weights", "floats" or "ints"
    kind: str
    default: Any = None
    choices: tuple | None = None
    required: bool = False


_REAL = _Key("float")
_SCHEMA: dict[str, dict[str, _Key]] = {
    "": {"title": _Key("str", "")},
    "model": {
        "attention": _Key("str", "softmax", tuple(ATTENTIONS)),
        "beta": _Key("float", 1.0),
        "dim": _Key("int", required=True),
        "geometry": _Key("str", "sphere", ("sphere", "euclidean")),
        "norm": _Key("str", None, NORMS + ("none",)),
        "kappa": _REAL,
        "causal": _Key("bool", False),
        "include_self": _Key("bool", True),
        "slope": _Key("float", 0.0),
        "bias": _Key("float", 0.0),
        "summation": _Key("str", "auto", ("auto", "exact", "fast")),
        "tol": _Key("float", 1e-10),
        "Q": _Key("weights", "identity"),
        "K": _Key("weights", "identity"),
        "V": _Key("weights", "identity"),
        "weights": _Key("weights", None),
    },
    "initial": {
        "kind": _Key("str", "uniform", tuple(INITIAL_KINDS)),
        "n": _Key("int", required=True),
        "seed": _Key("int", 0),
        "mean_direction": _Key("vector"),
        "concentration": _REAL,
        "mean": _Key("vector"),
        "cov": _Key("matrix"),
        "rho": _REAL,
        "centers": _Key("matrix"),
        "spread": _REAL,
        "path": _Key("str"),
    },
    "particles": {
        "T": _Key("float", required=True),
        "t0": _Key("float", 0.0),
        "n_saved": _Key("int", 101),
        "method": _Key("str", None, tuple(METHODS) + ("euler-maruyama", "rescaled")),
        "dt": _REAL,
        "rtol": _Key("float", 1e-6),
        "atol": _Key("float", 1e-9),
        "seed": _Key("int", 0),
    },
    "meanfield": {
        "T": _Key("float", required=True),
        "t0": _Key("float", 0.0),
        "n_saved": _Key("int", 101),
        "grid": _Key("str", "circle", tuple(GRIDS)),
        "n_cells": _Key("int"),
        "n_positions": _Key("int"),
        "n_lat": _Key("int"),
        "n_lon": _Key("int"),
        "bounds": _Key("matrix"),
        "shape": _Key("ints"),
        "boundary": _Key("str", "outflow", ("outflow", "periodic")),
        "cfl": _Key("float", 0.45),
        "field": _Key("str", "auto", ("auto", "fast", "quadrature")),
        "initial_density": _Key("str", "law", ("law", "tokens")),
        "bandwidth": _REAL,
    },
    "gaussian": {
        "T": _Key("float", required=True),
        "t0": _Key("float", 0.0),
        "n_saved": _Key("int", 101),
        "mean": _Key("vector"),
        "cov": _Key("matrix"),
    },
    "convergence": {
        "n_values": _Key("ints", required=True),
        "times": _Key("floats", required=True),
        "seeds": _Key("ints", [0, 1, 2]),
        "p": _Key("float", 2.0),
        "method": _Key("str", "rk4", tuple(METHODS)),
        "dt": _REAL,
    },
    "output": {
        "dir": _Key("str", None),
    },
    # [sweep]: "section.key" = [values, ...] (checked by _check_sweep), for tp.sweep and
    # ``transformer-pde sweep``
    "sweep": {},
}


@dataclass(frozen=True)
class RunSpec:
    """A checked run file: every section with its defaults filled in.

    Attributes
    ----------
    sections : dict
        ``{section: {key: value}}``; the top-level keys are under ``""``.
    base : pathlib.Path
        The folder relative paths in the run file refer to (the run file's folder).
    source : str
        Where it came from (a path or ``"<string>"``), for messages.
    """

    sections: dict
    base: Path
    source: str

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task sections present, in the order :func:`run` runs them."""
        return tuple(t for t in TASKS if t in self.sections)

    def __getitem__(self, section: str) -> dict:
        return self.sections[section]

    def to_dict(self) -> dict:
        """The checked sections as plain JSON-able data (what ``run.json`` records)."""
        return json.loads(json.dumps(self.sections, default=_jsonable))


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def read(path: str | os.PathLike) -> RunSpec:
    r"""Read and check a TOML run file.

    Parameters
    ----------
    path : str or path-like
        The run file.

    Returns
    -------
    RunSpec
        Relative paths inside it are resolved against its folder.

    Raises
    ------
    RunFileError
        If the file is not valid TOML or does not follow the schema (the message names
        the key, what was given and what is allowed).
    OSError
        If the file cannot be read.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> text = '[model]\ndim = 2\n[initial]\nn = 8\n[particles]\nT = 1.0\n'
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = pathlib.Path(tmp, "study.toml")
    ...     _ = p.write_text(text)
    ...     spec = read(p)
    >>> spec.tasks, spec["model"]["beta"]
    (('particles',), 1.0)
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    return parse(raw.decode("utf-8"), base=path.resolve().parent, source=str(path))


def parse(text: str, *, base: str | os.PathLike = ".", source: str = "<string>") -> RunSpec:
    r"""Check the TOML text of a run file against the schema and fill in the defaults.

    Parameters
    ----------
    text : str
        TOML.
    base : str or path-like
        Folder that relative paths (``initial.path``, ``output.dir``) refer to.
    source : str
        Name used in messages.

    Returns
    -------
    RunSpec

    Raises
    ------
    RunFileError
        Unknown section or key, wrong type, value not among the choices, a missing required
        key, a key that the chosen kind does not use, or no task section.

    Examples
    --------
    >>> parse('[model]\ndim = 2\nbeta = "big"\n[initial]\nn = 4\n[particles]\nT = 1\n')
    Traceback (most recent call last):
    ...
    transformer_pde.runfile.RunFileError: <string>: model.beta must be a number, got 'big' (str)
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RunFileError(f"{source}: not valid TOML: {exc}") from None
    where = f"{source}: "
    sections: dict[str, dict] = {"": {}}
    for name, value in raw.items():
        if isinstance(value, dict):
            if name not in _SCHEMA or name == "":
                allowed = ", ".join(f"[{s}]" for s in _SCHEMA if s)
                raise RunFileError(f"{where}unknown section [{name}]; allowed: {allowed}")
            sections[name] = value
        else:
            sections[""][name] = value
    return RunSpec(_check_all(where, sections), Path(base), source)


def _check_all(where: str, sections: dict) -> dict:
    checked = {name: _check_section(where, name, table) for name, table in sections.items()}
    for required in ("model", "initial"):
        if required not in checked:
            raise RunFileError(f"{where}missing section [{required}]")
    if not any(t in checked for t in TASKS):
        raise RunFileError(f"{where}no task: add at least one of "
                           + ", ".join(f"[{t}]" for t in TASKS))
    _check_kinds(where, checked)
    return checked


def override(spec: RunSpec, values: Mapping[str, Any]) -> RunSpec:
    r"""A copy of ``spec`` with keys replaced by their dotted names, checked again.

    Parameters
    ----------
    spec : RunSpec
        A checked run file.
    values : mapping
        ``{"section.key": value}`` (``"key"`` for a top-level key), e.g. the point of a sweep.

    Returns
    -------
    RunSpec

    Raises
    ------
    RunFileError
        If a name is not a key of the schema or a value does not fit it.

    Examples
    --------
    >>> spec = parse('[model]\ndim = 2\n[initial]\nn = 4\n[particles]\nT = 1\n')
    >>> override(spec, {"model.beta": 9, "initial.seed": 2})["model"]["beta"]
    9.0
    """
    where = f"{spec.source}: "
    sections = copy.deepcopy(spec.sections)
    for name, value in values.items():
        section, _, key = name.rpartition(".")
        if section not in _SCHEMA or key not in _SCHEMA[section]:
            raise RunFileError(f"{where}cannot override {name!r}: not a key of the run-file schema "
                               "(use section.key, e.g. 'model.beta')")
        if section not in sections:
            raise RunFileError(f"{where}cannot override {name!r}: the run file has no [{section}]")
        sections[section][key] = _to_toml(value)
    # defaults filled in earlier are checked again like given values
    sections = {name: {k: v for k, v in table.items() if v is not None}
                for name, table in sections.items()}
    sections.pop("sweep", None)  # a point of a sweep is one run
    return RunSpec(_check_all(where, sections), spec.base, spec.source)


def _to_toml(value):
    """NumPy scalars and arrays as the plain values TOML would give."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_sweep(where: str, table: dict) -> dict:
    """[sweep]: each key a dotted run-file key, each value a nonempty list."""
    out = {}
    for name, values in table.items():
        section, _, key = name.rpartition(".")
        if section in ("sweep", "output") or section not in _SCHEMA or key not in _SCHEMA[section]:
            raise RunFileError(f"{where}sweep: {name!r} is not a run-file key; write the dotted "
                               "name of the key to vary in quotes, e.g. \"model.beta\" = [1.0, 4.0]")
        if not isinstance(values, list) or not values:
            raise RunFileError(f"{where}sweep.{name!r} must be a nonempty list of values, "
                               f"got {values!r}")
        for v in values:
            _check_value(f"{where}sweep.{name!r}", _SCHEMA[section][key], v)
        out[name] = values
    return out


def _check_section(where: str, name: str, table: dict) -> dict:
    if name == "sweep":
        return _check_sweep(where, table)
    schema = _SCHEMA[name]
    label = f"{name}." if name else ""
    out = {}
    for key, value in table.items():
        if key not in schema:
            allowed = ", ".join(schema)
            what = f"section [{name}]" if name else "the top level"
            raise RunFileError(f"{where}unknown key {label}{key} in {what}; allowed: {allowed}")
        out[key] = _check_value(f"{where}{label}{key}", schema[key], value)
    for key, spec in schema.items():
        if key not in out:
            if spec.required:
                raise RunFileError(f"{where}missing key {label}{key} (required in [{name}])")
            out[key] = spec.default
    return out


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_value(name: str, spec: _Key, value):
    got = f"got {value!r} ({type(value).__name__})"
    if spec.kind == "float":
        if not _is_number(value):
            raise RunFileError(f"{name} must be a number, {got}")
        value = float(value)
        if not np.isfinite(value):
            raise RunFileError(f"{name} must be finite, {got}")
    elif spec.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise RunFileError(f"{name} must be an integer, {got}")
    elif spec.kind == "bool":
        if not isinstance(value, bool):
            raise RunFileError(f"{name} must be true or false, {got}")
    elif spec.kind == "str":
        if not isinstance(value, str):
            raise RunFileError(f"{name} must be a string, {got}")
        if spec.choices is not None and value not in spec.choices:
            allowed = ", ".join(repr(c) for c in spec.choices)
            raise RunFileError(f"{name} must be one of {allowed}, got {value!r}")
    elif spec.kind in ("vector", "floats"):
        if not isinstance(value, list) or not value or not all(_is_number(v) for v in value):
            raise RunFileError(f"{name} must be a nonempty list of numbers, {got}")
        value = [float(v) for v in value]
    elif spec.kind == "ints":
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise RunFileError(f"{name} must be a nonempty list of integers, {got}")
    elif spec.kind == "matrix":
        value = _matrix(name, value, got)
    elif spec.kind == "weights":
        value = _weights_value(name, value, got)
    return value


def _matrix(name: str, value, got: str) -> list:
    if (not isinstance(value, list) or not value
            or not all(isinstance(r, list) and r and all(_is_number(v) for v in r) for r in value)
            or len({len(r) for r in value}) != 1):
        raise RunFileError(f"{name} must be a matrix: a nonempty list of equal-length lists "
                           f"of numbers, {got}")
    return [[float(v) for v in r] for r in value]


def _weights_value(name: str, value, got: str):
    """A weight matrix: "identity", an explicit matrix, or {ensemble = KIND, seed = S}."""
    if value == "identity":
        return value
    if isinstance(value, dict):
        unknown = set(value) - {"ensemble", "seed"}
        if unknown:
            raise RunFileError(f"{name}: unknown key {sorted(unknown)[0]!r}; allowed: ensemble, seed")
        kind = value.get("ensemble")
        if kind not in WEIGHT_KINDS:
            allowed = ", ".join(repr(k) for k in WEIGHT_KINDS)
            raise RunFileError(f"{name}.ensemble must be one of {allowed}, got {kind!r}")
        seed = value.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise RunFileError(f"{name}.seed must be an integer >= 0, got {seed!r}")
        return {"ensemble": kind, "seed": seed}
    if isinstance(value, list):
        return _matrix(name, value, got)
    raise RunFileError(f"{name} must be \"identity\", a matrix, or a table "
                       f"{{ensemble = ..., seed = ...}}, {got}")


def _check_kinds(where: str, s: dict) -> None:
    """Keys used only by some kinds must match the chosen kind; required ones be present."""
    _check_used(where, "initial", s["initial"], s["initial"]["kind"], INITIAL_KINDS, "kind")
    if "meanfield" in s:
        _check_used(where, "meanfield", s["meanfield"], s["meanfield"]["grid"], GRIDS, "grid")
    mf = s.get("meanfield")
    if mf is not None and mf["bandwidth"] is not None and mf["initial_density"] != "tokens":
        raise RunFileError(f"{where}meanfield.bandwidth smooths the initial tokens: it is used only "
                           "with meanfield.initial_density = 'tokens'")
    model = s["model"]
    for key, used_by in (("causal", ("softmax", "unnormalized")), ("bias", ("sigmoid",)),
                         ("include_self", ("softmax", "unnormalized", "alibi")),
                         ("slope", ("alibi",)),
                         ("summation", ("softmax", "unnormalized", "sigmoid")),
                         ("tol", ("softmax", "unnormalized", "sigmoid"))):
        default = _SCHEMA["model"][key].default
        if model[key] != default and model["attention"] not in used_by:
            raise RunFileError(f"{where}model.{key} is used only with attention = "
                               + " or ".join(repr(u) for u in used_by)
                               + f", not {model['attention']!r}")
    if model["weights"] is not None:
        if not isinstance(model["weights"], dict):
            raise RunFileError(f"{where}model.weights must be a table {{ensemble = ..., seed = ...}}")
        if any(model[k] != "identity" for k in "QKV"):
            raise RunFileError(f"{where}model.weights draws Q, K and V together: "
                               "remove model.Q, model.K and model.V, or drop model.weights")
    if model["dim"] < 1:
        raise RunFileError(f"{where}model.dim must be >= 1, got {model['dim']}")


def _check_used(where, section, table, kind, table_of_kinds, kind_key) -> None:
    """A key that only other kinds use must be left unset (or at its default)."""
    for key in {k for keys in table_of_kinds.values() for k in keys} - set(table_of_kinds[kind]):
        if table[key] != _SCHEMA[section][key].default:
            users = [k for k, v in table_of_kinds.items() if key in v]
            raise RunFileError(f"{where}{section}.{key} is used only with {kind_key} = "
                               + " or ".join(repr(u) for u in users) + f", not {kind!r}")


# -- building objects -------------------------------------------------------------------
def _weight_matrix(value, d: int, name: str, source: str):
    """None (identity), an explicit matrix, or V drawn from a V-only ensemble."""
    if value == "identity":
        return None
    if isinstance(value, dict):
        if name != "V" or value["ensemble"] in ("kq", "-kq"):
            raise RunFileError(f"{source}: model.{name} = {{ensemble = {value['ensemble']!r}}}: "
                               "only V can be drawn alone (ensembles 'gaussian-product', 'goe', "
                               "'psd'); draw Q, K and V together with model.weights = "
                               "{ensemble = ..., seed = ...}")
        return random_weights(value["ensemble"], d, value["seed"])["V"]
    return np.asarray(value, dtype=np.float64)


def build_dynamics(spec: RunSpec) -> TokenDynamics:
    """The :class:`~transformer_pde.TokenDynamics` of the run file's ``[model]``.

    Errors of the constructors (shapes of Q, K, V against ``dim``, ...) are raised as
    :class:`RunFileError` naming the run file.
    """
    m = spec["model"]
    d = m["dim"]
    try:
        if m["weights"] is not None:
            w = random_weights(m["weights"]["ensemble"], d, m["weights"]["seed"])
        else:
            w = {k: _weight_matrix(m[k], d, k, spec.source) for k in "QKV"}
        for k, mat in w.items():
            if mat is not None and np.shape(mat)[-1] != d:
                raise RunFileError(f"{spec.source}: model.{k} must have {d} columns (model.dim), "
                                   f"got shape {np.shape(mat)}")
        cls = ATTENTIONS[m["attention"]]
        kwargs: dict[str, Any] = dict(beta=m["beta"], **w)
        if m["attention"] in ("softmax", "unnormalized"):
            kwargs["causal"] = m["causal"]
        if m["attention"] in ("softmax", "unnormalized", "alibi"):
            kwargs["include_self"] = m["include_self"]
        if m["attention"] == "alibi":
            kwargs["slope"] = m["slope"]
        if m["attention"] == "sigmoid":
            kwargs["bias"] = m["bias"]
        if m["attention"] in ("softmax", "unnormalized", "sigmoid"):
            kwargs.update(summation=m["summation"], tol=m["tol"])
        att = cls(**kwargs)
        norm = None if m["norm"] == "none" else m["norm"]
        return TokenDynamics(att, geometry=m["geometry"], norm=norm, kappa=m["kappa"])
    except (ValueError, TypeError) as exc:
        if isinstance(exc, RunFileError):
            raise
        raise RunFileError(f"{spec.source}: [model]: {exc}") from None


def build_tokens(spec: RunSpec) -> np.ndarray:
    """The initial tokens (n, d) of the run file's ``[initial]`` (seeded by ``initial.seed``)."""
    s = spec["initial"]
    d = spec["model"]["dim"]
    kind, n, seed = s["kind"], s["n"], s["seed"]
    where = f"{spec.source}: initial"
    need = {k: s[k] for k in INITIAL_KINDS[kind]}
    missing = [k for k, v in need.items() if v is None]
    if missing:
        raise RunFileError(f"{where}.kind = {kind!r} needs initial.{missing[0]}")
    sphere = spec["model"]["geometry"] == "sphere"
    try:
        if kind == "uniform":
            if not sphere:
                raise RunFileError(f"{where}.kind = 'uniform' is uniform on the sphere; in "
                                   "Euclidean geometry use kind = 'gaussian'")
            x = _initial.uniform_tokens(n, d, seed)
        elif kind == "von-mises-fisher":
            x = _initial.von_mises_fisher_tokens(n, need["mean_direction"], need["concentration"], seed)
        elif kind == "gaussian":
            x = _initial.gaussian_tokens(n, need["mean"], need["cov"], seed)
        elif kind == "equiangular":
            x = _initial.equiangular_tokens(n, need["rho"], d)
        elif kind == "clusters":
            x = _initial.cluster_tokens(n, need["centers"], need["spread"], seed,
                                        geometry="sphere" if sphere else "euclidean")
        else:
            x = _tokens_from_file(spec, need["path"])
    except (ValueError, TypeError) as exc:
        if isinstance(exc, RunFileError):
            raise
        raise RunFileError(f"{where}: {exc}") from None
    if x.shape != (n, d):
        raise RunFileError(f"{where} gives tokens of shape {x.shape}, expected (initial.n, "
                           f"model.dim) = ({n}, {d})")
    return x


def _tokens_from_file(spec: RunSpec, path: str) -> np.ndarray:
    """Tokens from a .npy array (n, d), or the last state of a saved trajectory (.h5)."""
    p = Path(path)
    if not p.is_absolute():
        p = spec.base / p
    if p.suffix == ".npy":
        return np.asarray(np.load(p, allow_pickle=False), dtype=np.float64)
    if p.suffix in (".h5", ".hdf5"):
        from .storage import load

        result = load(p)
        x = getattr(result, "x", None)
        if x is None or x.ndim != 3:
            raise RunFileError(f"initial.path {path!r}: expected a saved one-system Trajectory")
        return np.array(x[-1])
    raise RunFileError(f"initial.path must end in .npy or .h5, got {path!r}")


def build_grid(spec: RunSpec):
    """The grid of the run file's ``[meanfield]``."""
    from .meanfield import CartesianGrid, CausalCircleGrid, CircleGrid, SphereGrid

    s = spec["meanfield"]
    kind = s["grid"]
    where = f"{spec.source}: meanfield"
    defaults = {"n_cells": 512, "n_lat": 32}
    args = {k: s[k] if s[k] is not None else defaults.get(k) for k in GRIDS[kind]}
    try:
        if kind == "circle":
            return CircleGrid(args["n_cells"])
        if kind == "causal-circle":
            if args["n_positions"] is None:
                raise RunFileError(f"{where}.grid = 'causal-circle' needs meanfield.n_positions")
            return CausalCircleGrid(args["n_positions"], args["n_cells"])
        if kind == "sphere":
            return SphereGrid(args["n_lat"], args["n_lon"])
        if args["bounds"] is None or args["shape"] is None:
            raise RunFileError(f"{where}.grid = 'cartesian' needs meanfield.bounds and meanfield.shape")
        return CartesianGrid(args["bounds"], args["shape"], boundary=args["boundary"])
    except (ValueError, TypeError) as exc:
        if isinstance(exc, RunFileError):
            raise
        raise RunFileError(f"{where}: {exc}") from None


def build_density(spec: RunSpec, grid):
    r"""The initial density on ``grid`` matching ``[initial]``.

    With ``meanfield.initial_density = "law"`` (default), ``uniform``: the uniform
    density; ``von-mises-fisher``: :math:`\propto e^{\kappa\langle\mu, x\rangle}` at the
    cell centres; ``gaussian``: the Gaussian density at the cell centres; other kinds: the
    histogram of the initial tokens. With ``"tokens"``: the histogram of the particles'
    own initial sample, smoothed by ``meanfield.bandwidth`` (radians, circle grid) if
    given, so that particles and PDE start from the same perturbation of the law.
    """
    from .meanfield import CausalCircleGrid, CircleGrid, Density

    s = spec["initial"]
    kind = s["kind"]
    m = spec.sections.get("meanfield", {})
    if m.get("initial_density") == "tokens":
        if isinstance(grid, CausalCircleGrid):
            raise RunFileError(f"{spec.source}: meanfield.initial_density = 'tokens' is not "
                               "available on the causal-circle grid")
        if m.get("bandwidth") is not None and not isinstance(grid, CircleGrid):
            raise RunFileError(f"{spec.source}: meanfield.bandwidth (a kernel estimate) is "
                               "available on the circle grid only")
        return Density.from_samples(grid, build_tokens(spec), bandwidth=m.get("bandwidth"))
    if isinstance(grid, CausalCircleGrid):
        if kind != "uniform":
            raise RunFileError(f"{spec.source}: on the causal-circle grid the initial density "
                               f"is uniform only (initial.kind = 'uniform'), got {kind!r}")
        return Density.uniform(grid)
    if kind == "uniform":
        return Density.uniform(grid)
    if kind == "von-mises-fisher":
        mu = np.asarray(s["mean_direction"], dtype=np.float64)
        mu = mu / np.linalg.norm(mu)
        kappa = s["concentration"]
        if isinstance(grid, CircleGrid):
            return Density.from_function(grid, lambda th: np.exp(kappa * (np.cos(th) * mu[0]
                                                                           + np.sin(th) * mu[1] - 1)))
        return Density.from_function(grid, lambda c: np.exp(kappa * (c @ mu - 1.0)))
    if kind == "gaussian":
        mean = np.asarray(s["mean"], dtype=np.float64)
        prec = np.linalg.inv(np.asarray(s["cov"], dtype=np.float64))

        def gauss(c):
            z = c - mean
            return np.exp(-0.5 * np.einsum("...i,ij,...j->...", z, prec, z))

        return Density.from_function(grid, gauss)
    return Density.from_samples(grid, build_tokens(spec))


# -- running ----------------------------------------------------------------------------
def _times(s: dict, where: str) -> np.ndarray:
    if not s["T"] > s["t0"]:
        raise RunFileError(f"{where}.T must be > {where}.t0 = {s['t0']:g}, got {s['T']:g}")
    if s["n_saved"] < 2:
        raise RunFileError(f"{where}.n_saved must be >= 2, got {s['n_saved']}")
    return np.linspace(s["t0"], s["T"], s["n_saved"])


def run_task(spec: RunSpec, task: str, *, progress: bool = False, trackers=None):
    """Run one task section of a checked run file and return its result object.

    ``particles``: :func:`~transformer_pde.simulate` (noise seeded by ``particles.seed``);
    ``meanfield``: :func:`~transformer_pde.solve_meanfield`; ``gaussian``:
    :func:`~transformer_pde.gaussian_moments` (mean and covariance from ``[gaussian]``, or
    those of a Gaussian ``[initial]``); ``convergence``:
    :func:`~transformer_pde.convergence.meanfield_convergence` on the grid of ``[meanfield]``.
    """
    if task not in spec.sections or task not in TASKS:
        raise RunFileError(f"{spec.source}: no task section [{task}]; present: "
                           + ", ".join(f"[{t}]" for t in spec.tasks))
    dyn = build_dynamics(spec)
    s = spec[task]
    if task == "particles":
        from .integrate import simulate

        t = _times(s, "particles")
        return simulate(dyn, build_tokens(spec), (t[0], t[-1]), t_eval=t, method=s["method"],
                        dt=s["dt"], rtol=s["rtol"], atol=s["atol"], rng=s["seed"],
                        progress=progress, trackers=trackers)
    if task == "meanfield":
        from .meanfield import solve_meanfield

        t = _times(s, "meanfield")
        grid = build_grid(spec)
        return solve_meanfield(dyn, build_density(spec, grid), (t[0], t[-1]), t_eval=t,
                               cfl=s["cfl"], field=s["field"], progress=progress,
                               trackers=trackers)
    if task == "gaussian":
        from .gaussian import gaussian_moments

        t = _times(s, "gaussian")
        mean, cov = s["mean"], s["cov"]
        if mean is None or cov is None:
            if spec["initial"]["kind"] != "gaussian":
                raise RunFileError(f"{spec.source}: [gaussian] needs gaussian.mean and gaussian.cov "
                                   "(or initial.kind = 'gaussian' to take them from [initial])")
            mean = spec["initial"]["mean"] if mean is None else mean
            cov = spec["initial"]["cov"] if cov is None else cov
        return gaussian_moments(dyn, np.asarray(mean), np.asarray(cov), t)
    from .convergence import meanfield_convergence

    if "meanfield" not in spec.sections:
        raise RunFileError(f"{spec.source}: [convergence] compares with the PDE on the grid of "
                           "[meanfield]: add a [meanfield] section")
    grid = build_grid(spec)
    return meanfield_convergence(dyn, build_density(spec, grid), s["n_values"], s["times"],
                                 seeds=tuple(s["seeds"]), p=s["p"], method=s["method"],
                                 dt=s["dt"], field=spec["meanfield"]["field"],
                                 cfl=spec["meanfield"]["cfl"])


def default_output(spec: RunSpec) -> Path:
    """The folder :func:`run` writes to by default.

    ``output.dir`` (relative to the run file's folder), else ``./<run file name>_results``
    in the working directory.
    """
    out = spec["output"]["dir"] if "output" in spec.sections else None
    if out is not None:
        p = Path(out).expanduser()
        return p if p.is_absolute() else spec.base / p
    stem = Path(spec.source).stem if spec.source != "<string>" else "run"
    return Path.cwd() / f"{stem}_results"


def run(spec, output: str | os.PathLike | None = None, *, resume: bool = False,
        progress: bool | None = None) -> dict:
    """Run every task of a run file; write ``DIR/<task>.h5`` and ``DIR/run.json``.

    Parameters
    ----------
    spec : RunSpec or str or path-like
        The run file (read and checked if a path).
    output : str or path-like, optional
        The folder (created if missing); default :func:`default_output`.
    resume : bool
        Keep the tasks whose file is complete, continue those whose file is partial (a run
        that was killed) and run the others. Without it, existing files are replaced.
    progress : bool, optional
        Progress bars (default: when stderr is a terminal).

    Returns
    -------
    dict
        ``{task: result}`` in the order of :data:`TASKS`.
    """
    import sys

    from . import __version__
    from ._io import write_json

    if not isinstance(spec, RunSpec):
        spec = read(spec)
    out = Path(output).expanduser() if output is not None else default_output(spec)
    out.mkdir(parents=True, exist_ok=True)
    if progress is None:
        progress = sys.stderr.isatty()
    results = {}
    for task in spec.tasks:
        path = out / f"{task}.h5"
        results[task] = _run_saved(spec, task, path, resume=resume, progress=progress)
    write_json(out / "run.json", {"version": __version__, "source": spec.source,
                                  "tasks": list(spec.tasks),
                                  "files": [f"{t}.h5" for t in spec.tasks],
                                  "run_file": spec.to_dict()})
    return results


def _run_saved(spec: RunSpec, task: str, path: Path, *, resume: bool, progress):
    """Run a task into ``path``; with ``resume``, keep a complete file, continue a partial one.

    Particle and grid runs are written as they go (:class:`~transformer_pde.trackers.Save`):
    a killed run keeps its saved times and :func:`~transformer_pde.resume` continues it to
    the result of an uninterrupted run. The other tasks write their file when done.
    """
    from . import storage
    from .trackers import Save

    if resume and path.exists():
        try:
            done = storage.load(path)
        except (OSError, ValueError, KeyError):
            done = None  # not a readable result file: run the task again
        if done is not None:
            if getattr(getattr(done, "info", None), "status", None) != "partial":
                return done
            try:
                return storage.resume(path, progress=progress)
            except ValueError:
                pass  # killed before its first save: nothing to continue from
    if task in ("particles", "meanfield"):
        return run_task(spec, task, progress=progress, trackers=[Save(path)])
    result = run_task(spec, task, progress=progress)
    result.save(path)
    return result


def builtin(name: str) -> RunSpec:
    """A run file shipped with the package (``transformer_pde/runfiles/<name>.toml``).

    Examples
    --------
    >>> builtin("demo_circle")["model"]["beta"]
    9.0
    """
    from importlib import resources

    files = resources.files("transformer_pde") / "runfiles"
    names = sorted(p.name.removesuffix(".toml") for p in files.iterdir() if p.name.endswith(".toml"))
    if name not in names:
        raise ValueError(f"name must be one of the built-in run files {names}, got {name!r}")
    return parse((files / f"{name}.toml").read_text(encoding="utf-8"), source=f"<built-in {name}>")
