"""Shared test fixtures: the ``xp`` fixture over every installed array library, and the
Hypothesis profiles (``ci`` by default; ``HAEPO_HYPOTHESIS_PROFILE=heavy`` for more examples).
"""

from __future__ import annotations

import importlib
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "heavy",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HAEPO_HYPOTHESIS_PROFILE", "ci"))

LIBRARIES = ["numpy", "array_api_strict", "torch", "jax"]


def _load(name: str):
    if name == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
        return importlib.import_module("jax.numpy")
    if name == "torch":
        pytest.importorskip("torch")
        import array_api_compat.torch as xp_torch

        return xp_torch
    if name == "numpy":
        import array_api_compat.numpy as xp_np

        return xp_np
    return pytest.importorskip(name)


@pytest.fixture(params=LIBRARIES)
def xp(request):
    """An array namespace per installed library (skips the ones that are absent)."""
    return _load(request.param)
