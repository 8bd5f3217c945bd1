"""Cross-rank reductions for groups spread over data-parallel ranks (``process_group=``).

Convention (the one DDP and FSDP expect): every rank returns the *global* loss, and the
gradient each rank computes for its own rows is ``world_size x`` its slice of the whole-batch
gradient, so that after DDP/FSDP average gradients over ranks the update equals the
single-process update on the concatenated batch. It falls out of differentiating through sum
all-reduces whose backward is again a sum all-reduce (``torch.distributed.nn.functional``):
every rank backpropagates the same upstream 1.0 and the backward all-reduce adds the
world_size copies. The closed-form policy backward (``_policy.py``) reproduces exactly that.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["all_reduce_max", "all_reduce_min", "all_reduce_sum", "global_group_index", "world_size"]


def world_size(group: Any) -> int:
    if group is None:
        return 1
    import torch.distributed as dist

    return dist.get_world_size(group)


def all_reduce_sum(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Sum over ranks; differentiable (backward is a sum all-reduce of the gradient)."""
    if group is None:
        return x
    import torch.distributed as dist

    if x.requires_grad:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def _reduce_const(x: torch.Tensor, group: Any, op: str) -> torch.Tensor:
    if group is None:
        return x
    import torch.distributed as dist

    out = x.detach().clone()
    dist.all_reduce(out, op=getattr(dist.ReduceOp, op), group=group)
    return out


def all_reduce_max(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Elementwise max over ranks (a constant: used for detached shifts and statistics)."""
    return _reduce_const(x, group, "MAX")


def all_reduce_min(x: torch.Tensor, group: Any) -> torch.Tensor:
    return _reduce_const(x, group, "MIN")


def global_group_index(
    group_ids: torch.Tensor | None, m: int, device: torch.device, group: Any
) -> tuple[torch.Tensor, int]:
    """Dense group index consistent on every rank: the labels of all ranks are gathered, the
    sorted unique labels define ``0..G-1``, and each rank looks its own labels up in them.
    Eager only (the number of groups is data dependent)."""
    import torch.distributed as dist

    if group_ids is None:
        return torch.zeros(m, dtype=torch.int64, device=device), 1
    ids = group_ids.to(torch.int64)
    n = world_size(group)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(n)]
    dist.all_gather(sizes, torch.tensor([m], dtype=torch.int64, device=device), group=group)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=torch.int64, device=device)
    padded[:m] = ids
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded, group=group)
    every = torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])
    labels = torch.unique(every)
    return torch.searchsorted(labels, ids), max(int(labels.numel()), 1)
