"""HAEPO groups through TRL's batching: micro-batches and processes.

The multi-process case is tested on TRL's and Accelerate's own samplers (``RepeatSampler``
feeding ``BatchSamplerShard``, the path ``GRPOTrainer``'s dataloader takes), simulating each
process's view. When micro-batches can hold whole groups, the group shuffle keeps them whole;
otherwise groups span micro-batches and processes (the split-group gradient), and only a
layout that would split a group across optimizer steps is refused.
"""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from accelerate.data_loader import BatchSamplerShard  # noqa: E402
from haepo_adapters.trl._groups import (  # noqa: E402
    check_group_layout,
    check_whole_groups,
    groups_fit_micro_batches,
    shuffle_groups,
)
from torch.utils.data import BatchSampler  # noqa: E402
from trl.trainer.utils import (  # noqa: E402
    RepeatSampler,
    shuffle_sequence_dict,
    split_tensor_dict,
)


def _generation_batch(groups: int, g: int) -> dict:
    rows = groups * g
    return {
        "haepo_group_ids": torch.arange(rows) // g,
        "completion_ids": torch.arange(rows * 3).view(rows, 3),
        "prompts": [f"p{i // g}" for i in range(rows)],
        "num_items_in_batch": torch.tensor(17),
        "old_per_token_logps": None,
    }


def _micro_batches_whole(micro: list[dict], g: int) -> bool:
    try:
        for mb in micro:
            check_whole_groups(mb["haepo_group_ids"], g)
    except RuntimeError:
        return False
    return True


def test_trl_row_shuffle_splits_groups_across_micro_batches() -> None:
    # The problem being solved: TRL's row shuffle + split cuts groups (for most seeds).
    g, spg = 4, 2
    splits = 0
    for seed in range(20):
        torch.manual_seed(seed)
        batch = shuffle_sequence_dict(_generation_batch(spg, g))
        splits += not _micro_batches_whole(split_tensor_dict(batch, spg), g)
    assert splits >= 15


@pytest.mark.parametrize("seed", range(10))
def test_group_shuffle_keeps_every_group_whole_in_one_micro_batch(seed: int) -> None:
    g, spg, groups_per_micro = 4, 3, 2
    batch = _generation_batch(spg * groups_per_micro, g)
    gen = torch.Generator().manual_seed(seed)
    shuffled = shuffle_groups(batch, g, generator=gen)
    micro = split_tensor_dict(shuffled, spg)
    assert _micro_batches_whole(micro, g)
    # Every column moved together, scalars and None untouched, nothing lost.
    ids = shuffled["haepo_group_ids"]
    assert [int(p[1:]) for p in shuffled["prompts"]] == ids.tolist()
    torch.testing.assert_close(shuffled["completion_ids"][:, 0] // 3 // g, ids)
    assert sorted(ids.tolist()) == sorted(batch["haepo_group_ids"].tolist())
    assert shuffled["num_items_in_batch"].item() == 17 and shuffled["old_per_token_logps"] is None


def test_group_shuffle_actually_permutes_groups() -> None:
    batch = _generation_batch(8, 4)
    orders = {
        tuple(shuffle_groups(batch, 4, torch.Generator().manual_seed(s))["haepo_group_ids"][::4])
        for s in range(10)
    }
    assert len(orders) > 5


def test_group_shuffle_rejects_a_batch_of_partial_groups() -> None:
    with pytest.raises(ValueError, match="divisible by num_generations = 4"):
        shuffle_groups({"x": torch.zeros(6)}, 4)


def test_check_whole_groups_catches_each_kind_of_split() -> None:
    check_whole_groups(torch.tensor([5, 5, 2, 2]), 2)
    for bad in ([0, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0], [3, 3, 3, 3]):
        with pytest.raises(RuntimeError, match="does not hold whole groups"):
            check_whole_groups(torch.tensor(bad), 2)


def _process_views(n_prompts: int, g: int, per_device: int, spg: int, processes: int):
    """Rows (prompt index) each process sees per generation batch, via TRL + Accelerate."""
    gen_batch = per_device * processes * spg
    sampler = RepeatSampler(
        list(range(n_prompts)),
        mini_repeat_count=g,
        batch_size=gen_batch // g,
        repeat_count=spg,
        shuffle=True,
        seed=0,
    )
    views = []
    for p in range(processes):
        shard = BatchSamplerShard(
            BatchSampler(sampler, per_device * spg, drop_last=True),
            num_processes=processes,
            process_index=p,
        )
        views.append([list(b) for b in shard])
    return views


def _groups_split_across_processes(views: list, g: int) -> bool:
    for step in zip(*views):  # one generation batch, every process's local rows
        owners: dict[int, set[int]] = {}
        for p, rows in enumerate(step):
            # A local batch is whole groups when its rows come in runs of g equal prompt ids.
            for i in range(0, len(rows), g):
                run = rows[i : i + g]
                if len(run) < g or len(set(run)) != 1:
                    return True
                owners.setdefault(run[0], set()).add(p)
    return False


@pytest.mark.parametrize(
    ("per_device", "g", "spg", "processes"),
    [(4, 4, 2, 2), (8, 4, 1, 2), (8, 2, 3, 4), (6, 3, 2, 3)],
)
def test_valid_layout_keeps_groups_on_one_process_and_one_micro_batch(
    per_device: int, g: int, spg: int, processes: int
) -> None:
    assert groups_fit_micro_batches(per_device, g)  # micro-batches can hold whole groups
    views = _process_views(64, g, per_device, spg, processes)
    assert not _groups_split_across_processes(views, g)
    for p, batches in enumerate(views):
        for k, rows in enumerate(batches):
            local = {"haepo_group_ids": torch.tensor(rows), "row": torch.arange(len(rows))}
            # rows are prompt ids; two groups of one prompt never share a generation batch
            shuffled = shuffle_groups(local, g, torch.Generator().manual_seed(p * 100 + k))
            assert _micro_batches_whole(split_tensor_dict(shuffled, spg), g)


@pytest.mark.parametrize(
    ("per_device", "g", "spg", "processes"), [(2, 4, 1, 2), (6, 4, 1, 2), (3, 4, 2, 2)]
)
def test_layout_splitting_groups_across_processes_is_accepted_for_split_groups(
    per_device: int, g: int, spg: int, processes: int
) -> None:
    # One optimizer step per generation batch (steps_per_generation == accumulation): a group
    # spread over processes and micro-batches is handled by the split-group gradient (the
    # trainer-level check is tests/test_trl_multiprocess_gloo.py).
    views = _process_views(64, g, per_device, spg, processes)
    assert _groups_split_across_processes(views, g)
    check_group_layout(per_device, g, spg, spg)


def test_layout_splitting_a_group_across_optimizer_steps_is_refused() -> None:
    # 2 rows per process and step, 2 steps per generation, groups of 8: each optimizer step
    # would see part of a group, whose gradient cannot be exact (the policy moves in between).
    views = _process_views(64, 8, 2, 2, 2)
    assert _groups_split_across_processes(views, 8)
    with pytest.raises(ValueError, match="steps_per_generation: with per_device_train_batch"):
        check_group_layout(2, 8, 1, 2)
