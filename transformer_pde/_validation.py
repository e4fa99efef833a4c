"""Input checks shared by the public functions (private).

Every helper raises ``TypeError`` or ``ValueError`` with a message that names the
parameter, what was given and what is expected. Kernels never validate: this module
is the public boundary.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "as_real",
    "as_positive",
    "as_positive_int",
    "as_tokens",
    "as_states",
    "as_matrix",
    "as_weights",
    "as_rng",
]


def as_real(value, name: str) -> float:
    """A finite real scalar (bool rejected)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def as_positive(value, name: str) -> float:
    """A finite real scalar > 0."""
    value = as_real(value, name)
    if value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def as_positive_int(value, name: str) -> int:
    """An integer >= 1 (bool rejected)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _as_float_array(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} must be array-like, got {type(value).__name__}") from exc
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(arr)):
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
