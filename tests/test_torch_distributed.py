"""``process_group=``: groups spread over 2 gloo ranks (CPU) against the whole-batch result.

Each rank holds a slice of the trajectories (uneven, interleaved, every group split across
ranks). Every rank must return the whole-batch loss, and its own rows must receive
``world_size x`` their slice of the whole-batch gradient (the DDP/FSDP averaging convention):
shared parameters (the LM head) then average over ranks to the whole-batch gradient.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")

# The worker module must be importable by the spawned processes: put tests/ (not the repo
# root) on sys.path, which torch.multiprocessing passes on to its children.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from _torch_distributed_worker import SLICES, WORLD, M, T, data, run_all, worker  # noqa: E402


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks():
    with tempfile.TemporaryDirectory() as tmp:
        init = f"tcp://127.0.0.1:{_free_port()}"
        mp.spawn(worker, args=(init, tmp), nprocs=WORLD, join=True)
        yield [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]


@pytest.fixture(scope="module")
def whole():
    return run_all(data(), list(range(M)), None)


def test_every_rank_returns_the_whole_batch_loss(ranks, whole):
    for name in ("padded", "packed", "logits", "hidden"):
        for r in range(WORLD):
            torch.testing.assert_close(ranks[r][name][0], whole[name][0], msg=name)


def test_weights_and_stats_are_global(ranks, whole):
    w_whole, stats_whole = whole["padded"][2], whole["padded"][3]
    for r in range(WORLD):
        torch.testing.assert_close(ranks[r]["padded"][2], w_whole[SLICES[r]])
        for k, v in stats_whole.items():
            torch.testing.assert_close(ranks[r]["padded"][3][k], v, msg=k)


def test_rank_rows_get_world_size_times_their_gradient_slice(ranks, whole):
    for name in ("padded", "logits"):
        for r in range(WORLD):
            torch.testing.assert_close(ranks[r][name][1], WORLD * whole[name][1][SLICES[r]])
    # hidden gradient, per rank slice
    for r in range(WORLD):
        torch.testing.assert_close(ranks[r]["hidden"][1], WORLD * whole["hidden"][1][SLICES[r]])


def test_packed_gradients_follow_the_same_convention(ranks, whole):
    d = data()
    m = d["mask"]
    # Position of each valid step of the whole batch in the flattened order.
    order = torch.arange(m.sum()).new_zeros(M, T)
    order[m] = torch.arange(int(m.sum()))
    for r in range(WORLD):
        want = WORLD * whole["packed"][1][order[SLICES[r]][m[SLICES[r]]]]
        torch.testing.assert_close(ranks[r]["packed"][1], want)


def test_shared_head_gradients_average_to_the_whole_batch_one(ranks, whole):
    for i in (2, 3):  # weight, bias: what DDP/FSDP all-reduce-average
        mean = sum(ranks[r]["hidden"][i] for r in range(WORLD)) / WORLD
        torch.testing.assert_close(mean, whole["hidden"][i])
