"""haepo_conformance: the conformance suite for HAEPO backends.

Run it as ``python -m haepo_conformance --all`` (or ``--backend NAME_OR_module:object``), or as
a pytest plugin with ``pytest --haepo-backend=NAME``. docs/conformance.md explains how to write
a backend, what each property means and how to read a failure.

Importing this package is cheap (no NumPy, no Hypothesis): pytest loads the plugin module in
every run, so everything heavy is imported on first use of the names below.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MUTANTS",
    "PROPERTIES",
    "BackendEntry",
    "Result",
    "RunConfig",
    "load_vectors",
    "main",
    "resolve_backends",
    "run_property",
    "run_suite",
]

_LAZY = {
    "MUTANTS": "._mutants",
    "PROPERTIES": "._properties",
    "BackendEntry": "._runner",
    "Result": "._runner",
    "RunConfig": "._runner",
    "resolve_backends": "._runner",
    "run_property": "._runner",
    "run_suite": "._runner",
    "load_vectors": "._vectors",
    "main": ".__main__",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'haepo_conformance' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
