"""Keeping HAEPO groups whole through TRL's batching.

HAEPO's softmax runs over all ``num_generations`` completions of a prompt. When every
micro-batch can hold whole groups (``per_device_train_batch_size % num_generations == 0``), the
*groups* are shuffled as blocks (TRL shuffles rows) so each micro-batch's loss is the plain HAEPO
loss of its groups. Otherwise a group spans micro-batches (and, since TRL hands each process a
contiguous slice of the global generation batch, maybe processes) and the trainer uses the
split-group gradient; :func:`check_group_layout` only asks that one optimizer step hold whole
groups.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "check_eval_layout",
    "check_group_layout",
    "check_whole_groups",
    "groups_fit_micro_batches",
    "shuffle_groups",
]


def groups_fit_micro_batches(per_device_batch_size: int, num_generations: int) -> bool:
    """Whether every micro-batch holds whole groups (then no group spans micro-batches or
    processes, and the loss of a micro-batch is the plain HAEPO loss of its groups)."""
    return per_device_batch_size % num_generations == 0


def check_group_layout(
    per_device_batch_size: int,
    num_generations: int,
    gradient_accumulation_steps: int = 1,
    steps_per_generation: int | None = None,
    *,
    name: str = "per_device_train_batch_size",
) -> None:
    """Raise ``ValueError`` unless every optimizer step sees whole groups.

    Groups may span micro-batches and processes (the split-group gradient handles them) as long
    as one optimizer step holds all of a group's rows: always true when
    ``steps_per_generation == gradient_accumulation_steps`` (one generation batch per step, the
    default) or when micro-batches hold whole groups; with several optimizer steps per
    generation, each process's ``per_device_batch_size * gradient_accumulation_steps`` rows must
    be whole groups.
    """
    if groups_fit_micro_batches(per_device_batch_size, num_generations):
        return
    steps = gradient_accumulation_steps if steps_per_generation is None else steps_per_generation
    window = per_device_batch_size * gradient_accumulation_steps
    if steps == gradient_accumulation_steps:
        return
    if steps % gradient_accumulation_steps == 0 and window % num_generations == 0:
        return
    raise ValueError(
        f"steps_per_generation: with {name} = {per_device_batch_size} (not a multiple of "
        f"num_generations = {num_generations}) a group spans micro-batches, so HAEPO needs each "
        f"optimizer step to hold whole groups: expected steps_per_generation equal to "
        f"gradient_accumulation_steps = {gradient_accumulation_steps}, or a multiple of it with "
        f"{name} * gradient_accumulation_steps = {window} a multiple of {num_generations}; got "
        f"steps_per_generation = {steps}"
    )


def check_eval_layout(per_device_batch_size: int, num_generations: int) -> None:
    """Raise ``ValueError`` unless every evaluation batch holds whole groups."""
    if not groups_fit_micro_batches(per_device_batch_size, num_generations):
        raise ValueError(
            f"per_device_eval_batch_size: HAEPO evaluates whole groups in one batch; expected a "
            f"multiple of num_generations = {num_generations}, got {per_device_batch_size}"
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
