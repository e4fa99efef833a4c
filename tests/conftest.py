"""Shared fixtures: floating-point warnings are errors, randomness is seeded."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _fp_errors():
    """Any NumPy overflow/invalid/divide-by-zero inside a test is an error, not a NaN."""
    with np.errstate(all="raise", under="ignore"):
        yield


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded generator per test (tests are deterministic)."""
    return np.random.default_rng(20261122)


def random_sphere(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n points uniform on the unit sphere of R^d, shape (n, d)."""
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)
