"""The Examples sections of the public docstrings run and print what they show (doctest)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import transformer_pde

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(transformer_pde.__path__, "transformer_pde.")
    if ".validation." not in info.name  # scripts, run by test_validation
)


@pytest.mark.parametrize("name", [
    # the thread-setting examples show the default setting, not the suite's one thread
    pytest.param(m, marks=pytest.mark.parallel) if m == "transformer_pde._threads" else m
    for m in MODULES
])
def test_examples_in_docstrings(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
