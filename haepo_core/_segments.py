"""Segment reductions (sum, max, min over rows that share an id) for any array library.

The array API standard has no scatter-add, so each reduction dispatches to the library's
native primitive where there is one (``np.bincount``/``np.maximum.at``, ``torch.index_add``/
``scatter_reduce``, ``jax.ops.segment_*``: all O(n) and, for torch and JAX, differentiable)
and falls back to a one-hot reduction written in the standard (O(n * segments), used for
array-api-strict and unknown libraries).
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat

from ._namespace import Array, values_readable

__all__ = ["group_index", "segment_max", "segment_min", "segment_sum"]

# Fallback one-hot reductions walk the rows in blocks so memory stays O(block * segments).
_BLOCK = 4096


def _onehot_reduce(xp: Any, x: Array, ids: Array, num: int, kind: str) -> Array:
    seg = xp.arange(num, dtype=ids.dtype, device=array_api_compat.device(x))
    fill = {"sum": 0.0, "max": -float("inf"), "min": float("inf")}[kind]
    out = None
    n = x.shape[0]
    for start in range(0, max(n, 1), _BLOCK):
        stop = min(start + _BLOCK, n)  # the standard leaves out-of-bounds slices unspecified
        xb = x[start:stop]
        member = ids[start:stop, None] == seg[None, :]
        vals = xp.where(member, xb[:, None], xp.asarray(fill, dtype=x.dtype, device=seg.device))
        red = {"sum": xp.sum, "max": xp.max, "min": xp.min}[kind](vals, axis=0)
        if out is None:
            out = red
        elif kind == "sum":
            out = out + red
        elif kind == "max":
            out = xp.maximum(out, red)
        else:
            out = xp.minimum(out, red)
    assert out is not None
    return out


def segment_sum(x: Array, ids: Array, num_segments: int) -> Array:
    """``out[s] = sum(x[i] for i where ids[i] == s)`` for a 1-d ``x``; shape ``[num_segments]``."""
    if array_api_compat.is_numpy_array(x):
        np = sys.modules["numpy"]
        out = np.bincount(ids, weights=x, minlength=num_segments)[:num_segments]
        return out.astype(x.dtype, copy=False)
    if array_api_compat.is_torch_array(x):
        torch = sys.modules["torch"]
        out = torch.zeros(num_segments, dtype=x.dtype, device=x.device)
        return out.index_add(0, ids.to(torch.int64), x)
    if array_api_compat.is_jax_array(x):
        jax = sys.modules["jax"]
        return jax.ops.segment_sum(x, ids, num_segments=num_segments)
    xp = array_api_compat.array_namespace(x)
    return _onehot_reduce(xp, x, ids, num_segments, "sum")


def _segment_extreme(x: Array, ids: Array, num_segments: int, kind: str) -> Array:
    if array_api_compat.is_numpy_array(x):
        np = sys.modules["numpy"]
        fill = -np.inf if kind == "max" else np.inf
        out = np.full(num_segments, fill, dtype=x.dtype)
        (np.maximum if kind == "max" else np.minimum).at(out, ids, x)
        return out
    if array_api_compat.is_torch_array(x):
        torch = sys.modules["torch"]
        fill = -float("inf") if kind == "max" else float("inf")
        out = torch.full((num_segments,), fill, dtype=x.dtype, device=x.device)
        reduce = "amax" if kind == "max" else "amin"
        return out.scatter_reduce(0, ids.to(torch.int64), x, reduce=reduce, include_self=True)
    if array_api_compat.is_jax_array(x):
        jax = sys.modules["jax"]
        fn = jax.ops.segment_max if kind == "max" else jax.ops.segment_min
        return fn(x, ids, num_segments=num_segments)
    xp = array_api_compat.array_namespace(x)
    return _onehot_reduce(xp, x, ids, num_segments, kind)


def segment_max(x: Array, ids: Array, num_segments: int) -> Array:
    """Per-segment maximum of a 1-d ``x`` (``-inf`` for an empty segment)."""
    return _segment_extreme(x, ids, num_segments, "max")


def segment_min(x: Array, ids: Array, num_segments: int) -> Array:
    """Per-segment minimum of a 1-d ``x`` (``+inf`` for an empty segment)."""
    return _segment_extreme(x, ids, num_segments, "min")


def group_index(xp: Any, group_ids: Array | None, m: int, device: Any) -> tuple[Array, int]:
    """Map arbitrary group labels ``[M]`` to dense ids in ``0..G-1``.

    Returns ``(index, num_segments)``. With concrete labels this is ``unique_inverse`` and
    ``num_segments`` is the number of groups. Under tracing (``jax.jit``), where the number of
    groups cannot be known, each trajectory is mapped to the first trajectory of its group
    (an ``[M, M]`` comparison), leaving ``M`` segments of which the unused ones stay empty;
    callers count groups as the number of non-empty segments, so both paths agree.
    """
    if group_ids is None:
        return xp.zeros(m, dtype=xp.int32, device=device), 1
    if values_readable(group_ids):
        _, inverse = xp.unique_inverse(group_ids)
        inverse = xp.astype(xp.reshape(inverse, (m,)), xp.int32)
        num = int(xp.max(inverse)) + 1 if m > 0 else 0
        return inverse, num
    same = group_ids[:, None] == group_ids[None, :]
    first = xp.argmax(xp.astype(same, xp.int32), axis=1)
    return xp.astype(first, xp.int32), m
