"""Input validation hooks for the JAX backend.

Every check of a call is the core's (``haepo_core._inputs``): shapes, ranks, dtypes and options
always run, at trace time under ``jax.jit``, so a wrong shape fails before anything is compiled.
Value checks (NaN/inf at valid steps, empty trajectories, ids and actions out of range, non-0/1
masks, valid steps whose logits are all ``-inf``) need readable values. Eagerly they raise the
core's ``ValueError``. Under tracing (``jit``, ``vmap``, ``shard_map``) they are skipped by
default and bad values propagate: NaN/inf at a valid step make the loss NaN (padding never
matters); out-of-range ids are dropped by the segment sums. With ``traced_checks=True`` the
same conditions are emitted as ``jax.experimental.checkify`` checks instead, so
``checkify.checkify(jax.jit(f))`` reports them with the core's wording (the function must then
be wrapped in ``checkify.checkify``, or JAX refuses to stage it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from haepo_core.kit import CheckHooks, check_finite, values_readable

__all__ = [
    "check_bool",
    "check_chunk_size",
    "hooks",
    "require_jax",
    "to_numpy",
    "traced",
    "traced_value_checks",
]


def require_jax(**arrays: Any) -> None:
    """``TypeError`` naming the first argument (``None`` aside) that is not a JAX array."""
    for name, x in arrays.items():
        if x is not None and not isinstance(x, jax.Array):
            raise TypeError(
                f"{name}: expected a jax.Array (haepo_backends.jax works on JAX arrays; use "
                f"haepo_core for other libraries), got {type(x).__module__}.{type(x).__name__}"
            )


def traced(*arrays: Any) -> bool:
    """Whether the values of any of ``arrays`` cannot be read now (jit/vmap/shard_map)."""
    return any(a is not None and not values_readable(a) for a in arrays)


def to_numpy(x: jax.Array | None) -> Any:
    """A concrete array's values, as NumPy where possible.

    A concrete array closed over by a jitted function is still concrete, but ``jnp`` ops on it
    inside the trace return tracers (``bool()`` of one fails), so its values are read through
    NumPy. The exception is a tracer with known values (``jax.grad`` without ``jit``): it cannot
    become NumPy, but ``jnp`` ops on it stay concrete.
    """
    import numpy as np

    if x is None or isinstance(x, jax.core.Tracer):
        return x
    return np.asarray(x)


def _checkify():
    from jax.experimental import checkify  # imported only when traced checks are asked for

    return checkify


def _check_none(bad: jax.Array, message: str) -> None:
    """A ``checkify`` check that no entry of ``bad`` is set; ``{n}`` in ``message`` counts them."""
    _checkify().check(~jnp.any(bad), message, n=jnp.sum(bad.astype(jnp.int32)))


def _finite_check(name: str, bad: jax.Array) -> None:
    _check_none(bad, f"{name}: expected finite values at valid positions, got {{n}} NaN/inf")


def hooks(traced_checks: bool) -> CheckHooks:
    """The core's check hooks for JAX: readable values are checked as in the core; traced ones
    become ``checkify`` checks when ``traced_checks`` is on, and are skipped otherwise."""

    def finite(xp: Any, name: str, x: jax.Array, valid: jax.Array | None) -> None:
        if not traced(x, valid):
            check_finite(xp, name, x, valid)
        elif traced_checks:
            bad = ~jnp.isfinite(x)
            _finite_check(name, bad if valid is None else bad & valid)

    return CheckHooks(readable=values_readable, finite=finite)


def traced_value_checks(
    traced_checks: bool,
    *,
    counts: tuple[str, jax.Array] | None = None,
    mask: jax.Array | None = None,
    ids: tuple[tuple[str, jax.Array | None, int, str, jax.Array | None], ...] = (),
    logits: tuple[tuple[str, jax.Array | None, jax.Array], ...] = (),
) -> None:
    """The core's value checks as ``checkify`` checks, for traced inputs under
    ``traced_checks=True`` (readable inputs were already checked by the core validators).

    Args:
      counts: ``(what, [M] valid steps per trajectory)``: every trajectory has a valid step.
      mask: a numeric mask, which must hold only 0 and 1.
      ids: ``(name, ids, hi, what, valid)``: ``ids`` in ``0..hi-1`` (at ``valid`` positions).
      logits: ``(name, [M, T, V] logits, [M, T] valid)``: no NaN or +inf at valid steps, and
        at least one finite logit at each (the row maximum says both).
    """
    if not traced_checks:
        return
    if counts is not None and traced(counts[1]):
        what, n_k = counts
        _check_none(
            n_k == 0,
            f"{what}: expected every trajectory to have at least one valid step, got {{n}} "
            "empty trajectories",
        )
    if mask is not None and mask.dtype != jnp.bool_ and traced(mask):
        _checkify().check(
            jnp.all((mask == 0) | (mask == 1)),
            "mask: a numeric mask must hold only 0 and 1, got other values",
        )
    for name, x, hi, what, valid in ids:
        if x is None or x.size == 0 or not traced(x, valid):
            continue
        bad = (x < 0) | (x >= hi)
        if valid is not None:
            bad = bad & valid
        _check_none(
            bad, f"{name}: expected values in 0..{what} = 0..{hi - 1}, got {{n}} values outside"
        )
    for name, x, valid in logits:
        if x is None or not traced(x, valid):
            continue
        peak = jnp.max(x, axis=-1)
        _finite_check(name, (jnp.isnan(peak) | (peak == jnp.inf)) & valid)
        _check_none(
            (peak == -jnp.inf) & valid,
            f"{name}: expected at least one finite logit at every valid step, got {{n}} valid "
            "steps whose logits are all -inf",
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
    """A static bool keyword."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value
