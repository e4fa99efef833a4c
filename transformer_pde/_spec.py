"""Parameters, equality and closeness of models, grids and results (private).

A model or a grid is described by the arguments of its constructor (its *parameters*):
two of them are equal when they are of the same class with equal parameters, and
:mod:`transformer_pde.storage` writes and reads them as those parameters (never pickled).
A result (:class:`Result`: a trajectory, a density trajectory, Gaussian moments, a
convergence study) compares its fields elementwise: ``==`` exactly (NaN equal to NaN),
:meth:`Result.allclose` to tolerances. Timings (``wall_time``) are not compared.

This module depends on NumPy only, so every class of the package can use it.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np

__all__ = ["parameters", "same_parameters", "equal", "close", "Result"]

#: attribute names that differ from the constructor's argument (class name -> {arg: getter})
_GETTERS = {
    "TokenDynamics": {"geometry": lambda obj: obj.geometry.name},
    "SphereGrid": {"n_lon": lambda obj: obj.n_lon.tolist() if obj._custom else None},
}


def parameters(obj) -> dict:
    """The constructor arguments of ``obj`` as stored on it: ``{name: value}``.

    Each parameter of ``type(obj).__init__`` is read from the attribute of the same name
    (the classes of the package keep their arguments so), or through :data:`_GETTERS`.
    """
    cls = type(obj)
    getters = _GETTERS.get(cls.__name__, {})
    out = {}
    for name, par in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or par.kind in (par.VAR_POSITIONAL, par.VAR_KEYWORD):
            continue
        out[name] = getters[name](obj) if name in getters else getattr(obj, name)
    return out


def same_parameters(a, b) -> bool:
    """Whether a and b are of the same class with equal constructor parameters."""
    if type(a) is not type(b):
        return False
    return a is b or equal(parameters(a), parameters(b))


def equal(a, b) -> bool:
    """Exact, elementwise, NaN-aware equality of nested values.

    Arrays must agree in shape, dtype kind and every element (NaN equal to NaN);
    dataclasses field by field (those with ``compare=False`` skipped); mappings and
    sequences item by item; other objects by ``==``.
    """
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype.kind != b.dtype.kind:
            return False
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return False
        return all(equal(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a) if f.compare)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (float, np.floating)) and isinstance(b, (float, np.floating)):
        return bool(a == b or (np.isnan(a) and np.isnan(b)))
    return bool(a == b)


def close(a, b, rtol: float, atol: float) -> bool:
    """:func:`equal`, with floating-point arrays and floats compared by ``np.allclose``."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return False
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            return bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))
        return bool(np.array_equal(a, b))
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return False
        return all(close(getattr(a, f.name), getattr(b, f.name), rtol, atol)
                   for f in dataclasses.fields(a) if f.compare)
    if isinstance(a, (float, np.floating)) and isinstance(b, (float, np.floating)):
        return bool(np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rtol, atol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close(x, y, rtol, atol) for x, y in zip(a, b, strict=True))
    return equal(a, b)


class Result:
    """Equality, closeness and saving of the result dataclasses (a mixin).

    ``==`` compares every field exactly (arrays elementwise, NaN equal to NaN; the run
    info without its wall time); :meth:`allclose` compares the floating-point data to
    tolerances and the rest exactly; :meth:`save` writes the result to HDF5
    (:func:`transformer_pde.storage.save`).
    """

    __slots__ = ()
    __hash__ = None  # mutable containers of arrays

    def __eq__(self, other) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return equal(self, other)

    def allclose(self, other, rtol: float = 1e-9, atol: float = 0.0) -> bool:
        """Whether ``other`` is the same kind of result with data within the tolerances.

        Floating-point arrays and numbers are compared by ``numpy.allclose(rtol, atol)``
        (NaN equal to NaN), everything else (the model, the grid, the run status) exactly.
        """
        return type(other) is type(self) and close(self, other, rtol, atol)

    def save(self, path, *, group: str | None = None) -> None:
        """Write this result to the HDF5 file ``path`` (:func:`transformer_pde.storage.save`)."""
        from . import storage  # lazily: h5py only when a file is written

        storage.save(self, path, group=group)
