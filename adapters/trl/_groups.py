"""Keeping HAEPO groups whole through TRL's batching.

HAEPO's softmax runs over all ``num_generations`` completions of a prompt, so one micro-batch
must hold every row of each group it touches. TRL's ``GRPOTrainer._prepare_inputs`` shuffles
the rows of the generation batch one by one and splits it into ``steps_per_generation``
micro-batches, which can cut a group in two; here the *groups* are shuffled as blocks instead.
Across processes TRL hands each process a contiguous slice of ``per_device_train_batch_size *
steps_per_generation`` rows of the global generation batch, so a group stays on one process as
long as each micro-batch holds whole groups (``per_device_train_batch_size % num_generations ==
0``): :func:`check_group_layout` enforces that constraint.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_group_layout", "check_whole_groups", "shuffle_groups"]


def check_group_layout(
    per_device_batch_size: int, num_generations: int, *, name: str = "per_device_train_batch_size"
) -> None:
    """Raise ``ValueError`` unless every micro-batch (hence every process) holds whole groups."""
    if per_device_batch_size % num_generations != 0:
        raise ValueError(
            f"{name}: HAEPO needs every micro-batch to hold whole groups of num_generations "
            f"completions (its softmax runs over a whole group, and a group split across "
            f"micro-batches or processes would be scored in pieces); expected a multiple of "
            f"num_generations = {num_generations}, got {per_device_batch_size}. Raise {name} to "
            f"a multiple of {num_generations} and lower gradient_accumulation_steps (or "
            f"steps_per_generation) to keep the same generation batch, or lower num_generations."
        )


def shuffle_groups(
    batch: dict[str, Any], num_generations: int, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """Permute whole groups of ``num_generations`` consecutive rows, keeping each group's rows
    together and in order.

    Works like TRL's ``shuffle_sequence_dict`` on the same dict (tensors with a batch
    dimension, lists, 0-d tensors and ``None`` values kept as they are), but the permutation
    maps block ``g`` (rows ``g*G .. g*G+G-1``) to a block.
    """
    sized = [v for v in batch.values() if v is not None and not _is_scalar(v)]
    if not sized:
        return dict(batch)
    n = len(sized[0])
    if n % num_generations != 0:
        raise ValueError(
            f"batch: expected a number of rows divisible by num_generations = {num_generations},"
            f" got {n}"
        )
    blocks = torch.randperm(n // num_generations, generator=generator)
    perm = (blocks[:, None] * num_generations + torch.arange(num_generations)).reshape(-1)

    def permute(v: Any) -> Any:
        if v is None or _is_scalar(v):
            return v
        if isinstance(v, torch.Tensor):
            return v[perm.to(v.device)]
        return [v[i] for i in perm.tolist()]

    return {k: permute(v) for k, v in batch.items()}


def _is_scalar(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return v.ndim == 0
    return not isinstance(v, (list, tuple))


def check_whole_groups(group_ids: torch.Tensor, num_generations: int) -> None:
    """Raise ``RuntimeError`` unless ``group_ids`` is whole blocks of ``num_generations`` rows.

    Guards the loss: if rows of one group ever reached two micro-batches (a TRL change, a
    custom sampler), the softmax would silently run over part of a group.
    """
    n = group_ids.shape[0]
    blocks = group_ids.reshape(-1, num_generations) if n % num_generations == 0 else None
    if (
        blocks is None
        or bool((blocks != blocks[:, :1]).any())
        or torch.unique(blocks[:, 0]).numel() != blocks.shape[0]
    ):
        raise RuntimeError(
            f"HAEPO: a micro-batch of {n} rows does not hold whole groups of num_generations = "
            f"{num_generations} completions (group ids {group_ids.tolist()}); a group was split "
            "across micro-batches or processes"
        )
