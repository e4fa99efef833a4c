"""Input checks shared by the public functions (private).

Every helper raises ``TypeError`` or ``ValueError`` with a message that names the
parameter, what was given and what is expected. Kernels never validate: this module
is the public boundary.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "DENSE_LIMIT_BYTES",
    "MAX_COUNT",
    "as_real",
    "as_real_array",
    "as_choice",
    "as_time_span",
    "check_dense_size",
    "as_positive",
    "as_positive_int",
    "as_tokens",
    "as_states",
    "as_matrix",
    "as_weights",
    "as_rng",
]


#: the largest single dense array (n x n attention or logit matrix, n_projections x n
#: projections) the public functions allocate: 2 GiB, n = 16384 for an n x n float64 matrix.
#: A fixed count rather than a fraction of the free memory, so that the same call is
#: accepted or refused on every machine; every refusal names the O(n) alternative.
#: A caller who means it may raise it (``transformer_pde._validation.DENSE_LIMIT_BYTES``).
DENSE_LIMIT_BYTES = 2**31


def _describe(value) -> str:
    """``repr`` of a value, shortened (an integer of 400 digits is named by its size)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def as_real(value, name: str) -> float:
    """A finite real scalar (bool, complex, strings rejected; ints beyond float64 refused)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(
            f"{name} must be a real number, got {_describe(value)} of type {type(value).__name__}"
        )
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(
            f"{name} must be a finite float64 (|{name}| < 1.8e308), got {_describe(value)}"
        ) from None
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def as_positive(value, name: str) -> float:
    """A finite real scalar > 0."""
    value = as_real(value, name)
    if value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


#: the largest count (of tokens, cells, systems, iterations, ...) a public function takes:
#: 2**53, the integers float64 holds exactly; far beyond any array that fits in memory
MAX_COUNT = 2**53


def as_positive_int(value, name: str) -> int:
    """An integer 1 <= value <= :data:`MAX_COUNT` (bool rejected)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(
            f"{name} must be an integer, got {_describe(value)} of type {type(value).__name__}"
        )
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if value > MAX_COUNT:
        raise ValueError(
            f"{name} must be at most 2**53 (a count float64 holds exactly), got {_describe(value)}"
        )
    return int(value)


def _as_float_array(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged nested lists, exotic objects
        raise TypeError(
            f"{name} must be a real numeric array, got {type(value).__name__} ({exc})"
        ) from None
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        kind = {"c": "complex", "U": "string", "S": "bytes", "O": "object"}.get(arr.dtype.kind, "")
        what = f"{kind} dtype {arr.dtype}" if kind else f"dtype {arr.dtype}"
        raise TypeError(
            f"{name} must be a real numeric array (float or int), got {what}"
            + (": take .real or np.abs explicitly" if kind == "complex" else "")
        )
    return np.asarray(arr, dtype=np.float64, order="C")  # a 0-d array stays 0-d


def as_real_array(value, name: str, *, ndim: int | None = None, nonempty: bool = True,
                  finite: bool = True) -> np.ndarray:
    """A float64 array of real numbers (a scalar gives a 0-d array).

    ``ndim``: the required number of axes (None: any); ``nonempty``: at least one entry;
    ``finite``: every entry finite (NaN and inf refused with the index of the first).
    """
    arr = _as_float_array(value, name)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    if nonempty and arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if finite:
        _check_finite(arr, name)
    return arr


def as_choice(value, name: str, allowed) -> str:
    """One of the strings ``allowed``: TypeError for a non-string, ValueError for another string."""
    allowed = tuple(allowed)
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be a string, one of {allowed}, got {_describe(value)} of type "
            f"{type(value).__name__}"
        )
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def as_time_span(t_span, name: str = "t_span") -> tuple[float, float]:
    """``(t0, t1)``: finite, ``t0 < t1``, with a length that float64 can subdivide.

    The length must be a normal float64 (>= 2.2e-308) and at least ``2**10`` units in the
    last place of ``max(|t0|, |t1|)``: below that, steps and saved times between t0 and t1
    are not representable (t0 + h rounds to t0 or t1).
    """
    try:
        t0, t1 = t_span
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (t0, t1), got {_describe(t_span)}") from None
    t0, t1 = as_real(t0, f"{name}[0]"), as_real(t1, f"{name}[1]")
    if not t1 > t0:
        raise ValueError(f"{name} must satisfy t0 < t1 (forward in time), got ({t0}, {t1})")
    length = t1 - t0
    if not np.isfinite(length):
        raise ValueError(f"{name} must have a finite length t1 - t0, got ({t0}, {t1})")
    floor = max(np.finfo(np.float64).tiny, 2.0**10 * np.spacing(max(abs(t0), abs(t1))))
    if length < floor:
        raise ValueError(
            f"{name} = ({t0}, {t1}) is too short to subdivide in float64: its length {length:.3g} "
            f"must be >= {floor:.3g} (2**10 units in the last place of its end times, and a "
            "normal float64)"
        )
    return t0, t1


def check_dense_size(shape, name: str, alternative: str, itemsize: int = 8) -> None:
    """Refuse a dense array of ``shape`` above :data:`DENSE_LIMIT_BYTES`, naming the way round.

    ``name``: what would be allocated (with the parameter that sets its size);
    ``alternative``: the call that does without it.
    """
    nbytes = float(itemsize)
    for s in shape:
        nbytes *= float(s)
    if nbytes > DENSE_LIMIT_BYTES:
        dims = " x ".join(str(int(s)) for s in shape)
        raise ValueError(
            f"{name} would need a dense {dims} array of {nbytes / 2**30:.3g} GiB, above the limit "
            f"of {DENSE_LIMIT_BYTES / 2**30:g} GiB for one array (DENSE_LIMIT_BYTES); {alternative}"
        )


def _check_finite(arr: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(arr)):
        if arr.ndim == 0:
            raise ValueError(f"{name} must be finite, got {arr[()]}")
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{name} must be finite, but entry {tuple(int(b) for b in bad)} is {arr[tuple(bad)]}"
        )


def as_tokens(x, name: str = "x", d: int | None = None) -> np.ndarray:
    """A finite float64 array of shape (n, d) with n >= 1 and d >= 1."""
    arr = _as_float_array(x, name)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, d) with n, d >= 1, got shape {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"{name} must have shape (n, {d}), got shape {arr.shape}")
    _check_finite(arr, name)
    return arr


def as_states(x, name: str = "x", d: int | None = None) -> np.ndarray:
    """Tokens (n, d) or a batch of B systems of tokens (B, n, d): finite float64, all sizes >= 1."""
    arr = _as_float_array(x, name)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (n, d) or (B, n, d), got shape {arr.shape}")
    if arr.ndim == 2:
        return as_tokens(arr, name, d)
    if min(arr.shape) < 1:
        raise ValueError(f"{name} must have shape (B, n, d) with B, n, d >= 1, got shape {arr.shape}")
    if d is not None and arr.shape[2] != d:
        raise ValueError(f"{name} must have shape (B, n, {d}), got shape {arr.shape}")
    _check_finite(arr, name)
    return arr


def as_matrix(value, name: str, shape: tuple[int | None, int | None]) -> np.ndarray:
    """A finite float64 2-D array; ``None`` entries in ``shape`` match any size."""
    arr = _as_float_array(value, name)
    if arr.ndim != 2 or any(s is not None and s != a for s, a in zip(shape, arr.shape, strict=True)):
        want = "(" + ", ".join("k" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {arr.shape}")
    _check_finite(arr, name)
    return arr


def as_weights(weights, n: int, name: str = "weights") -> np.ndarray:
    """Nonnegative weights of shape (n,) with positive total, normalised to sum 1."""
    if weights is None:
        return np.full(n, 1.0 / n)
    arr = _as_float_array(weights, name)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got shape {arr.shape}")
    _check_finite(arr, name)
    if np.any(arr < 0.0):
        raise ValueError(f"{name} must be nonnegative, got minimum {arr.min()}")
    total = arr.sum()
    if total <= 0.0:
        raise ValueError(f"{name} must have a positive sum, got {total}")
    return arr / total


def as_rng(rng) -> np.random.Generator:
    """``np.random.default_rng`` of an int/None/Generator, with a clear error otherwise."""
    if rng is None or isinstance(rng, np.random.Generator):
        return np.random.default_rng(rng)
    if isinstance(rng, (numbers.Integral, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")
