"""Shared fixtures: floating-point warnings are errors, randomness is seeded."""

from __future__ import annotations

import os

# One BLAS thread for the tests, set before NumPy loads OpenBLAS: its idle threads spin for
# a core, so beside a busy process a small product (an 800 x 800 matvec of the
# axisymmetric solver) ran 3-4x slower with two threads than with one. The tests check
# mathematics, not speed; the package's own kernels take their thread count from
# transformer_pde.set_num_threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest
from hypothesis import HealthCheck, settings

# Hypothesis profiles (README, "Property-based tests"). "ci", the default: derandomized (the
# examples are a function of each test's source, so every run tries the same ones), a few
# examples per property, no deadline (timings on a shared machine are noise), failures
# printed with the @reproduce_failure blob, no example database written. "slow": many more
# examples from a fresh random seed per run (printed on failure; replay with
# ``--hypothesis-seed=N``). Selected by HYPOTHESIS_PROFILE, else "slow" when the run selects
# the slow set (``pytest -m slow``), else "ci".
settings.register_profile(
    "ci", derandomize=True, max_examples=15, deadline=None, print_blob=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "slow", max_examples=400, deadline=None, print_blob=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: modules whose tests are the properties: ``pytest -m slow`` runs them too, under "slow"
PROPERTY_MODULES = ("test_properties",)


def _slow_selected(config) -> bool:
    expr = (config.getoption("markexpr", "") or "").replace(" ", "")
    return "slow" in expr and "notslow" not in expr


def pytest_configure(config):
    profile = os.environ.get("HYPOTHESIS_PROFILE") or ("slow" if _slow_selected(config) else "ci")
    settings.load_profile(profile)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under ``-m slow`` the property tests join the slow set (with the "slow" profile)."""
    if not _slow_selected(config):
        return
    for item in items:
        if item.module.__name__.startswith(PROPERTY_MODULES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fp_errors():
    """Any NumPy overflow/invalid/divide-by-zero inside a test is an error, not a NaN."""
    with np.errstate(all="raise", under="ignore"):
        yield


@pytest.fixture(autouse=True)
def _one_kernel_thread(request):
    """The package's kernels run on one thread, except in tests marked ``parallel``.

    Every O(n^2) kernel exists in a serial and a parallel version that give the same
    numbers; tests/test_threads.py (marked ``parallel``) checks that for every variant.
    Elsewhere the serial version suffices to check the mathematics, and compiling the
    parallel versions too would double the suite's compile time (CI starts from a cold
    Numba cache) for no new check.
    """
    if request.node.get_closest_marker("parallel") is not None:
        yield
        return
    import transformer_pde as tp

    with tp.num_threads(1):
        yield


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded generator per test (tests are deterministic)."""
    return np.random.default_rng(20261122)


def random_sphere(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n points uniform on the unit sphere of R^d, shape (n, d)."""
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)
