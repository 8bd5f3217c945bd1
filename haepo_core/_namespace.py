"""Array-namespace plumbing: which library an array comes from, dtypes, constants.

Everything here is written against the Python array API through ``array_api_compat``.
A framework is never imported unless the caller already handed us one of its arrays
(the einops rule): ``stop_gradient`` reaches ``jax.lax`` only for a JAX array.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat

Array = Any  # an array of any array-API library (NumPy, array-api-strict, torch, JAX, ...)

__all__ = [
    "Array",
    "compute_dtype",
    "device_of",
    "get_namespace",
    "is_concrete",
    "values_readable",
    "library_name",
    "stop_gradient",
]


def library_name(x: object) -> str:
    """A short human name for the library an array comes from (for error messages)."""
    if array_api_compat.is_torch_array(x):
        return "torch"
    if array_api_compat.is_jax_array(x):
        return "jax"
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    if array_api_compat.is_array_api_strict_namespace(
        getattr(x, "__array_namespace__", lambda: None)()
    ):
        return "array_api_strict"
    return type(x).__module__.split(".")[0]


def get_namespace(**arrays: object) -> Any:
    """The array-API namespace shared by the named arrays (``None`` values are skipped).

    Raises ``TypeError`` naming the arguments when an argument is not an array, or when the
    arrays come from two different libraries (mixing NumPy and torch in one call, say).
    """
    given = {k: v for k, v in arrays.items() if v is not None}
    for name, value in given.items():
        if isinstance(value, (list, tuple, int, float, bool)) or not hasattr(value, "shape"):
            raise TypeError(
                f"{name}: expected an array (NumPy, array-api-strict, torch, JAX, ...), "
                f"got {type(value).__name__}"
            )
    libs = {name: library_name(v) for name, v in given.items()}
    if len(set(libs.values())) > 1:
        listing = ", ".join(f"{n}={lib}" for n, lib in libs.items())
        raise TypeError(
            f"arrays from different libraries were mixed in one call ({listing}); "
            "expected every array argument to come from the same library"
        )
    try:
        return array_api_compat.array_namespace(*given.values())
    except TypeError as err:  # pragma: no cover - libraries agree, namespaces should too
        raise TypeError(f"could not find one array namespace for {sorted(given)}: {err}") from err


def device_of(x: Array) -> Any:
    """The device of ``x``: its ``.device`` where it has one (a plain attribute read, which
    ``torch.compile`` traces cleanly), else ``array_api_compat.device`` (JAX tracers)."""
    try:
        return x.device
    except AttributeError:
        return array_api_compat.device(x)


def compute_dtype(xp: Any, dtype: Any) -> Any:
    """The dtype HAEPO computes in: float64 stays float64, anything else runs in float32."""
    if dtype == xp.float64:
        return xp.float64
    return xp.float32


def stop_gradient(x: Array) -> Array:
    """Treat ``x`` as a constant for autodiff (``detach`` in torch, ``lax.stop_gradient`` in JAX).

    NumPy and array-api-strict have no autodiff, so the array passes through unchanged.
    """
    if array_api_compat.is_torch_array(x):
        return x.detach()
    if array_api_compat.is_jax_array(x):
        jax = sys.modules["jax"]  # already imported: the caller handed us a JAX array
        return jax.lax.stop_gradient(x)
    return x


def is_concrete(x: Array) -> bool:
    """Whether the values of ``x`` can be read now (False under ``jax.jit`` or ``torch.compile``).

    Value checks (NaN/inf, empty trajectories, 0/1 masks) run only on concrete arrays: a
    traced array has no values yet, and reading one would fail or force a graph break.
    """
    if array_api_compat.is_jax_array(x):
        jax = sys.modules["jax"]
        if isinstance(x, jax.core.Tracer):
            # jax.grad / vjp outside jit still carry concrete primal values.
            to_concrete = getattr(x, "to_concrete_value", None)
            return to_concrete is not None and to_concrete() is not None
        return True
    if array_api_compat.is_torch_array(x):
        torch = sys.modules["torch"]
        if torch.compiler.is_compiling():
            return False
        # functorch transforms (vmap, grad) wrap tensors; their values cannot be read safely.
        try:
            from torch._C._functorch import is_functorch_wrapped_tensor

            if is_functorch_wrapped_tensor(x):
                return False
        except ImportError:  # pragma: no cover
            pass
        if getattr(x, "device", None) is not None and x.device.type == "meta":
            return False
        return True
    return True


def values_readable(x: Array) -> bool:
    """Whether values *computed from* ``x`` (``bool(xp.any(...))``) can be read now.

    Stricter than :func:`is_concrete`: under ``jax.jit`` every operation is staged out, even
    on a concrete array closed over by the traced function, so a check computed from it is a
    tracer and ``bool()`` of it would fail. Value checks use this and are skipped there.
    """
    if not is_concrete(x):
        return False
    if array_api_compat.is_jax_array(x):
        jax = sys.modules["jax"]
        return not isinstance(jax.numpy.zeros(()), jax.core.Tracer)
    return True
