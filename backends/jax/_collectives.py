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

__all__ = ["pmax", "pmin", "psum"]

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
