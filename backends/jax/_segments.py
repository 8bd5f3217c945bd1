"""The dense group index: group labels -> segment ids with a *static* number of segments.

(The segment reductions themselves are ``jax.ops.segment_sum``/``max``/``min``, handed to the
core objective by :class:`._policy.JaxPrimitives`.)

``jax.ops.segment_sum`` needs ``num_segments`` at trace time, but the number of distinct group
labels is data-dependent. Three cases:

- ``num_groups`` given (static): labels must already be dense ids in ``0..num_groups-1``
  (checked when concrete); unused ids are allowed and simply stay empty. Required under a named
  axis, where labels are global across devices.
- concrete labels, no ``num_groups`` (eager use): ``unique_inverse`` gives dense ids and the
  exact number of groups, as in the core.
- traced labels, no ``num_groups`` (``jit``/``vmap``): ``jnp.unique(..., size=M)`` gives dense
  ids with ``M`` segments (the unused ones stay empty), O(M log M) instead of the core's
  O(M^2) comparison. The loss counts groups as non-empty segments, so every path agrees.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from haepo_core.kit import check_ids, is_concrete

from ._checks import to_numpy
from ._collectives import AxisName

__all__ = ["check_num_groups", "dense_group_ids"]


def check_num_groups(num_groups: object) -> int | None:
    """Validate the static ``num_groups`` keyword (``None`` or an int >= 1)."""
    if num_groups is None:
        return None
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise TypeError(
            f"num_groups: expected a static Python int >= 1 (or None), got "
            f"{type(num_groups).__name__} (under jit, pass it as a static argument)"
        )
    if int(num_groups) < 1:
        raise ValueError(f"num_groups: expected an int >= 1, got {int(num_groups)}")
    return int(num_groups)


def dense_group_ids(
    group_ids: jax.Array | None, m: int, num_groups: int | None, axis_name: AxisName
) -> tuple[jax.Array, int]:
    """``(segment id per trajectory [M] int32, static number of segments)``."""
    num_groups = check_num_groups(num_groups)
    if group_ids is None:
        return jnp.zeros((m,), dtype=jnp.int32), 1
    check_ids(jnp, "group_ids", group_ids, m, "[M]")
    if num_groups is not None:
        if is_concrete(group_ids) and m > 0:
            ids = to_numpy(group_ids)  # NumPy: jnp ops would be traced inside jit
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= num_groups:
                raise ValueError(
                    f"group_ids: expected dense ids in 0..num_groups-1 = 0..{num_groups - 1} "
                    f"when num_groups is given, got values in {lo}..{hi}"
                )
        return group_ids.astype(jnp.int32), num_groups
    if axis_name is not None:
        raise ValueError(
            "num_groups: expected a static int when axis_name is given (group ids are global "
            "across devices, so they cannot be renumbered per device), got None"
        )
    if is_concrete(group_ids):
        ids = to_numpy(group_ids)
        xp = np if isinstance(ids, np.ndarray) else jnp  # a grad tracer with known values
        _, inverse = xp.unique(ids, return_inverse=True)
        inverse = inverse.reshape((m,)).astype(np.int32)
        return jnp.asarray(inverse), (int(inverse.max()) + 1 if m > 0 else 1)
    # Traced labels: a sorted unique with a static size M keeps shapes static.
    _, inverse = jnp.unique(group_ids, return_inverse=True, size=m, fill_value=0)
    return inverse.reshape((m,)).astype(jnp.int32), max(m, 1)
