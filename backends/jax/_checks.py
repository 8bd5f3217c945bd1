"""Input validation for the JAX backend.

Shape, rank, dtype and option checks are the core's (``haepo_core._validation``) and always
run, at trace time under ``jax.jit``: a wrong shape fails before anything is compiled.

Value checks (NaN/inf at valid steps, empty trajectories, ids out of range, non-0/1 masks) need
concrete arrays. Eagerly they raise the core's ``ValueError``. Under tracing (``jit``, ``vmap``,
``shard_map``) they are skipped by default and bad values propagate: NaN/inf at a valid step
make the loss NaN (padding never matters); out-of-range ids are dropped by the segment sums.
With ``traced_checks=True`` the same conditions are emitted as ``jax.experimental.checkify``
checks instead, so ``checkify.checkify(jax.jit(f))`` reports them with the core's wording
(the function must then be wrapped in ``checkify.checkify``, or JAX refuses to stage it).
"""

from __future__ import annotations

import array_api_compat.numpy as np_xp
import jax
import jax.numpy as jnp
import numpy as np

from haepo_core._namespace import is_concrete
from haepo_core._validation import check_finite

__all__ = ["check_chunk_size", "finite", "ids_in_range", "nonempty", "to_numpy", "traced"]


def traced(*arrays: jax.Array | None) -> bool:
    """Whether any of ``arrays`` has no concrete value (jit/vmap/shard_map tracing)."""
    return any(a is not None and not is_concrete(a) for a in arrays)


def to_numpy(x: jax.Array | None) -> np.ndarray | jax.Array | None:
    """A concrete array's values, as NumPy where possible.

    Value checks read concrete arrays through NumPy, not ``jnp``: a concrete array closed over
    by a jitted function is still concrete, but ``jnp`` ops on it inside the trace return
    tracers, and ``bool()`` of a tracer fails. The exception is a tracer with known values
    (``jax.grad`` without ``jit``): it cannot become NumPy, but ``jnp`` ops on it stay concrete.
    """
    if x is None or isinstance(x, jax.core.Tracer):
        return x
    return np.asarray(x)


def value_namespace(*arrays: object):
    """``jnp`` if any array is a (concrete) tracer, else NumPy (see :func:`to_numpy`)."""
    return jnp if any(isinstance(a, jax.core.Tracer) for a in arrays) else np_xp


def _checkify():
    from jax.experimental import checkify  # imported only when traced checks are asked for

    return checkify


def finite(name: str, x: jax.Array, valid: jax.Array | None, traced_checks: bool) -> None:
    """NaN/inf at valid positions: core ``ValueError`` eagerly, a checkify check if asked."""
    if not traced(x, valid):
        check_finite(value_namespace(x, valid), name, to_numpy(x), to_numpy(valid))
        return
    if traced_checks:
        bad = ~jnp.isfinite(x)
        if valid is not None:
            bad = bad & valid
        _checkify().check(
            ~jnp.any(bad),
            f"{name}: expected finite values at valid positions, got {{count}} NaN/inf",
            count=jnp.sum(bad.astype(jnp.int32)),
        )


def nonempty(what: str, counts: jax.Array, traced_checks: bool) -> None:
    """Every trajectory has at least one valid step."""
    if not traced(counts):
        empty_np = to_numpy(counts) == 0
        if bool(empty_np.any()):
            first = int(empty_np.argmax())
            n = int(empty_np.sum())
            raise ValueError(
                f"{what}: expected every trajectory to have at least one valid step, got {n} "
                f"empty trajectories (first: trajectory {first})"
            )
        return
    if traced_checks:
        empty = counts == 0
        _checkify().check(
            ~jnp.any(empty),
            f"{what}: expected every trajectory to have at least one valid step, got {{n}} "
            "empty trajectories",
            n=jnp.sum(empty.astype(jnp.int32)),
        )


def ids_in_range(name: str, ids: jax.Array, hi: int, valid: jax.Array | None,
                 traced_checks: bool, what: str = "M-1") -> None:
    """Integer ids in ``0..hi-1`` (at valid positions when ``valid`` is given)."""
    if ids.size == 0:
        return
    if not traced(ids, valid):
        ids_np = to_numpy(ids)
        bad_np = (ids_np < 0) | (ids_np >= hi)
        if valid is not None:
            bad_np = bad_np & to_numpy(valid)
        if bool(bad_np.any()):
            if valid is not None:  # the core's wording for actions at valid steps
                raise ValueError(f"{name}: expected values in 0..{what} = 0..{hi - 1} at valid "
                                 "steps")
            raise ValueError(
                f"{name}: expected values in 0..{what} = 0..{hi - 1}, got values in "
                f"{int(ids_np.min())}..{int(ids_np.max())}"
            )
        return
    if traced_checks:
        bad = (ids < 0) | (ids >= hi)
        if valid is not None:
            bad = bad & valid
        _checkify().check(
            ~jnp.any(bad),
            f"{name}: expected values in 0..{what} = 0..{hi - 1}, got {{n}} values outside",
            n=jnp.sum(bad.astype(jnp.int32)),
        )


def check_chunk_size(chunk_size: object) -> int:
    """The static ``chunk_size`` keyword: a Python int >= 1."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(
            f"chunk_size: expected a static Python int >= 1, got {type(chunk_size).__name__}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected an int >= 1, got {chunk_size}")
    return chunk_size


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value
