"""Reductions across devices: no-ops on one device, ``lax.psum``/``pmax``/``pmin`` under a
named mapped axis (``shard_map`` or ``pmap``).

Every statistic HAEPO needs over a group (the softmax normalizer, the return mean and std, the
token counts of the means) is a sum, max or min of per-device partial results, so routing each
partial result through one of these helpers makes the sharded loss equal the single-device one.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
from jax import lax

__all__ = ["pmax", "pmin", "psum", "vary"]

AxisName = Hashable | tuple[Hashable, ...] | None


def psum(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """Sum of ``x`` over the devices of ``axis_name`` (``x`` itself when ``axis_name`` is None)."""
    return x if axis_name is None else lax.psum(x, axis_name)


def pmax(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """Elementwise max of ``x`` over the devices of ``axis_name``."""
    return x if axis_name is None else lax.pmax(x, axis_name)


def pmin(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """Elementwise min of ``x`` over the devices of ``axis_name``."""
    return x if axis_name is None else lax.pmin(x, axis_name)


def vary(x: jax.Array | None, axis_name: AxisName) -> jax.Array | None:
    """Mark ``x`` as varying over ``axis_name`` (``shard_map`` with ``check_vma``).

    A replicated input (the LM head, say) used by per-device rows gets a per-device partial
    gradient; its true gradient is the sum over devices. Casting it to "varying" before it
    enters a ``custom_vjp`` lets autodiff insert that ``psum`` (the transpose of the cast), so
    the custom backward can return plain per-device partials. Arrays already varying, and
    calls outside a ``check_vma`` shard_map (``pmap``), are returned unchanged.
    """
    if axis_name is None or x is None:
        return x
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    try:
        have = jax.typeof(x).manual_axis_type.varying
    except AttributeError:  # pragma: no cover - other jax versions: leave the array alone
        return x
    missing = tuple(a for a in names if a not in have)
    if not missing:
        return x
    try:
        return lax.pcast(x, missing, to="varying")
    except (ValueError, TypeError, NameError):  # pragma: no cover - not under check_vma
        return x
