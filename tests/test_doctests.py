"""Every docstring example of the installed library packages runs and prints what it says.

The modules are imported by their installed names (``haepo_core._loss``, ...), never as the
bare source folders, so this is the code users get. A module whose optional dependency is
missing is skipped, not failed.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("haepo_core", "haepo_backends", "haepo_adapters")


def _modules() -> list[str]:
    names = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg_name}."):
            names.append(info.name)
    return sorted(names)


def test_the_packages_have_doctests():
    """Guards the collection itself: an empty list would make the test below vacuous."""
    finder = doctest.DocTestFinder()
    found = 0
    for name in ("haepo_core._loss", "haepo_core._weights", "haepo_adapters.cleanrl._evaluate"):
        found += sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
    assert found >= 5


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    try:
        module = importlib.import_module(name)
    except ImportError as err:  # an optional extra (jax, triton, ...) is not installed
        pytest.skip(f"{name}: {err}")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, name) if t.examples]
    if not tests:
        pytest.skip(f"{name} has no docstring examples")
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
