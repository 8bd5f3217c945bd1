"""Segment reductions and the dense group index, in plain torch ops that compile without a break.

``group_ids`` are arbitrary labels; the objective needs dense ids ``0..G-1``. ``torch.unique``
has a data-dependent output size, which forces a graph break under ``torch.compile``. We map
labels with a *sort* instead: sort the labels, mark where a new label starts, cumulative-sum
the marks, scatter back. Every shape stays static (``[M]``) and the number of segments is the
static upper bound ``M``; segments that no label uses stay empty and every reduction ignores
them (the group count is the number of non-empty segments, a tensor, never a Python int, so no
host sync on CUDA either).
"""

from __future__ import annotations

import torch

__all__ = ["dense_group_index", "segment_max", "segment_min", "segment_sum"]


def dense_group_index(
    group_ids: torch.Tensor | None, m: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """``(index [M] int64 in 0..num_segments-1, num_segments)``; equal labels share an index."""
    if group_ids is None:
        return torch.zeros(m, dtype=torch.int64, device=device), 1
    ids = group_ids.to(torch.int64)
    sorted_ids, perm = torch.sort(ids, stable=True)
    starts = torch.cat(
        [
            torch.ones(1, dtype=torch.int64, device=device),
            (sorted_ids[1:] != sorted_ids[:-1]).long(),
        ]
    )
    dense_sorted = torch.cumsum(starts, 0) - 1
    index = torch.empty_like(dense_sorted).scatter(0, perm, dense_sorted)
    return index, max(m, 1)


def segment_sum(x: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
    """``out[s] = sum(x[i] for index[i] == s)`` (differentiable: index_add backward is a gather)."""
    return torch.zeros(num, dtype=x.dtype, device=x.device).index_add(0, index, x)


def segment_max(x: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
    out = torch.full((num,), -float("inf"), dtype=x.dtype, device=x.device)
    return out.scatter_reduce(0, index, x, reduce="amax", include_self=True)


def segment_min(x: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
    out = torch.full((num,), float("inf"), dtype=x.dtype, device=x.device)
    return out.scatter_reduce(0, index, x, reduce="amin", include_self=True)
