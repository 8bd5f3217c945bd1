"""``process_group=``: groups spread over 2 gloo ranks (CPU) against the whole-batch result.

Each rank holds a slice of the trajectories (uneven, interleaved, every group split across
ranks). Every rank must return the whole-batch loss, and its own rows must receive
``world_size x`` their slice of the whole-batch gradient (the DDP/FSDP averaging convention):
shared parameters (the LM head) then average over ranks to the whole-batch gradient.
"""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")

from haepo_backends.torch import (  # noqa: E402
    haepo_loss,
    haepo_loss_from_hidden,
    haepo_loss_from_logits,
    haepo_loss_packed,
)

WORLD = 2
M, T, V, H = 8, 5, 7, 3
# Rank 0 gets 3 trajectories, rank 1 gets 5; each of the 4 groups has members on both ranks.
SLICES = [[0, 2, 5], [1, 3, 4, 6, 7]]
KW = dict(entropy_coef=0.05, kl_coef=0.1, temperature=0.8)


def _data():
    g = torch.Generator().manual_seed(0)
    dt = torch.float64
    mask = torch.rand(M, T, generator=g) > 0.3
    mask[:, 0] = True
    return {
        "logp": -3 * torch.rand(M, T, generator=g, dtype=dt),
        "entropy": torch.rand(M, T, generator=g, dtype=dt),
        "ref_logp": -3 * torch.rand(M, T, generator=g, dtype=dt),
        "returns": torch.randn(M, generator=g, dtype=dt),
        "group_ids": torch.tensor([10, 20, 30, 40, 10, 20, 30, 40]),
        "mask": mask,
        "logits": torch.randn(M, T, V, generator=g, dtype=dt),
        "ref_logits": torch.randn(M, T, V, generator=g, dtype=dt),
        "actions": torch.randint(0, V, (M, T), generator=g),
        "hidden": torch.randn(M, T, H, generator=g, dtype=dt),
        "weight": torch.randn(V, H, generator=g, dtype=dt),
        "bias": torch.randn(V, generator=g, dtype=dt),
        "ref_hidden": torch.randn(M, T, H, generator=g, dtype=dt),
    }


def _run_all(d, rows, group):
    """Loss and gradients of every entry point on the trajectories ``rows``."""
    idx = torch.tensor(rows)
    s = {k: (v[idx] if k not in ("weight", "bias") else v) for k, v in d.items()}
    out = {}

    logp = s["logp"].clone().requires_grad_()
    o = haepo_loss(
        logp,
        s["returns"],
        s["mask"],
        group_ids=s["group_ids"],
        entropy=s["entropy"],
        ref_logp=s["ref_logp"],
        process_group=group,
        **KW,
    )
    o.loss.backward()
    out["padded"] = (o.loss.detach(), logp.grad, o.weights.detach(), o.stats)

    # Packed: the same valid steps, flattened.
    m = s["mask"]
    seg = torch.arange(len(rows))[:, None].expand_as(m)[m]
    flat = s["logp"][m].clone().requires_grad_()
    o = haepo_loss_packed(
        flat,
        seg,
        s["returns"],
        group_ids=s["group_ids"],
        entropy=s["entropy"][m],
        ref_logp=s["ref_logp"][m],
        process_group=group,
        **KW,
    )
    o.loss.backward()
    out["packed"] = (o.loss.detach(), flat.grad)

    logits = s["logits"].clone().requires_grad_()
    o = haepo_loss_from_logits(
        logits,
        s["actions"],
        s["returns"],
        m,
        ref_logits=s["ref_logits"],
        group_ids=s["group_ids"],
        chunk_size=4,
        process_group=group,
        **KW,
    )
    o.loss.backward()
    out["logits"] = (o.loss.detach(), logits.grad)

    hidden = s["hidden"].clone().requires_grad_()
    weight = d["weight"].clone().requires_grad_()
    bias = d["bias"].clone().requires_grad_()
    o = haepo_loss_from_hidden(
        hidden,
        weight,
        s["actions"],
        s["returns"],
        m,
        bias=bias,
        ref_hidden=s["ref_hidden"],
        group_ids=s["group_ids"],
        chunk_size=3,
        process_group=group,
        **KW,
    )
    o.loss.backward()
    out["hidden"] = (o.loss.detach(), hidden.grad, weight.grad, bias.grad)
    return out


def _worker(rank, init, outdir):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        res = _run_all(_data(), SLICES[rank], dist.group.WORLD)
        torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks():
    with tempfile.TemporaryDirectory() as tmp:
        init = f"tcp://127.0.0.1:{_free_port()}"
        mp.spawn(_worker, args=(init, tmp), nprocs=WORLD, join=True)
        yield [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]


@pytest.fixture(scope="module")
def whole():
    return _run_all(_data(), list(range(M)), None)


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
    d = _data()
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
