"""Worker code of ``test_torch_distributed.py``, in its own module so that the processes
``torch.multiprocessing.spawn`` starts can unpickle ``worker`` by a top-level module name.

The test puts this folder (``tests/``, never the repo root, which would make the bare
``backends``/``adapters``/``conformance`` folders importable) on ``sys.path``; spawned children
inherit that path.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from haepo_backends.torch import (
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


def data():
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


def run_all(d, rows, group):
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
    out["padded"] = (o.loss.detach(), logp.grad, o.weights.detach(), dict(o.stats.items()))

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


def worker(rank, init, outdir):
    # Both ranks are on this host: pin gloo to the loopback interface, so a hostname that
    # resolves to another interface (common on CI machines) cannot break the connections.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        res = run_all(data(), SLICES[rank], dist.group.WORLD)
        torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
