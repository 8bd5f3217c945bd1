"""The workloads of ``bench_torch.py``: inputs and one loss+backward step per variant.

Each ``CASES[name]`` maps a variant name to ``setup(params) -> state`` and
``step(state) -> None`` (one forward and backward). Kept apart from the driver so that a fresh
child process can import just this and measure one variant's peak memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from haepo_backends.torch import (
    haepo_loss,
    haepo_loss_from_hidden,
    haepo_loss_from_logits,
    haepo_loss_packed,
)

ENT, BETA = 0.01, 0.05  # entropy and KL coefficients of the LLM workloads


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- from hidden


def hidden_setup(p: dict[str, Any]) -> dict[str, Any]:
    m, t, v, h, g = p["M"], p["T"], p["V"], p["H"], p["G"]
    gen = _gen()
    return {
        "hidden": (torch.randn(m, t, h, generator=gen) / h**0.5).requires_grad_(),
        "weight": torch.randn(v, h, generator=gen).requires_grad_(),
        "bias": torch.zeros(v).requires_grad_(),
        "ref_hidden": torch.randn(m, t, h, generator=gen) / h**0.5,
        "ref_weight": torch.randn(v, h, generator=gen),
        "actions": torch.randint(0, v, (m, t), generator=gen),
        "returns": torch.randn(m, generator=gen),
        "group_ids": torch.arange(m) // g,
        "chunk": p.get("chunk"),
    }


def _zero_grads(s: dict[str, Any]) -> None:
    for k in ("hidden", "weight", "bias", "logits"):
        if k in s and s[k].grad is not None:
            s[k].grad = None


def hidden_naive(s: dict[str, Any]) -> None:
    """Materialize logits and reference logits, log_softmax, gather, entropy, exact KL."""
    _zero_grads(s)
    logits = torch.addmm(s["bias"], s["hidden"].flatten(0, 1), s["weight"].T)
    with torch.no_grad():
        ref = s["ref_hidden"].flatten(0, 1) @ s["ref_weight"].T
        ref_lsm = torch.log_softmax(ref, dim=-1)
        del ref
    lsm = torch.log_softmax(logits, dim=-1)
    logp = lsm.gather(1, s["actions"].reshape(-1, 1)).reshape(s["actions"].shape)
    p = lsm.exp()
    ent = -(p * lsm).sum(-1).reshape(logp.shape)
    kl = (p * (lsm - ref_lsm)).sum(-1).mean()
    out = haepo_loss(logp, s["returns"], group_ids=s["group_ids"], entropy=ent, entropy_coef=ENT)
    (out.loss + BETA * kl).backward()


def hidden_haepo(s: dict[str, Any]) -> None:
    _zero_grads(s)
    out = haepo_loss_from_hidden(
        s["hidden"],
        s["weight"],
        s["actions"],
        s["returns"],
        bias=s["bias"],
        ref_hidden=s["ref_hidden"],
        ref_weight=s["ref_weight"],
        group_ids=s["group_ids"],
        entropy_coef=ENT,
        kl_coef=BETA,
        chunk_size=s["chunk"],
    )
    out.loss.backward()


def _group_advantages(s: dict[str, Any]) -> torch.Tensor:
    r = s["returns"]
    g = s["group_ids"]
    n = int(g.max()) + 1
    mean = torch.zeros(n).index_add(0, g, r) / torch.bincount(g, minlength=n)
    return r - mean[g]


def hidden_liger(s: dict[str, Any]) -> None:
    """Liger-Kernel's fused-linear GRPO loss (plain-torch chunked_loss on CPU): per-token
    clipped objective and the k3 KL of the taken token; no entropy, no exact KL."""
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    _zero_grads(s)
    if "liger" not in s:
        s["liger"] = LigerFusedLinearGRPOLoss(beta=BETA, compiled=False, use_ref_model=True)
    mask = torch.ones_like(s["actions"])
    out = s["liger"](
        s["hidden"],
        s["weight"],
        s["actions"],
        mask,
        _group_advantages(s),
        bias=s["bias"],
        ref_input=s["ref_hidden"],
        ref_weight=s["ref_weight"],
    )
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()


def hidden_trl(s: dict[str, Any]) -> None:
    """TRL's ChunkedLogProbFunction (log-probs + entropy, vocabulary tiles), run again without
    grad on the reference hidden states, then HAEPO with the k3 KL *estimator* (not exact)."""
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    _zero_grads(s)
    m, t = s["actions"].shape
    tgt = s["actions"].reshape(-1)
    logp, ent, *_ = ChunkedLogProbFunction.apply(
        s["hidden"].flatten(0, 1),
        s["weight"],
        s["bias"],
        tgt,
        1.0,
        4096,
        None,
        1.0,
        ("entropy",),
    )
    with torch.no_grad():
        ref_logp, *_ = ChunkedLogProbFunction.apply(
            s["ref_hidden"].flatten(0, 1),
            s["ref_weight"],
            None,
            tgt,
            1.0,
            4096,
            None,
            1.0,
            (),
        )
    out = haepo_loss(
        logp.reshape(m, t),
        s["returns"],
        group_ids=s["group_ids"],
        entropy=ent.reshape(m, t),
        ref_logp=ref_logp.reshape(m, t),
        entropy_coef=ENT,
        kl_coef=BETA,
    )
    out.loss.backward()


# --------------------------------------------------------------------------- from logits


def logits_setup(p: dict[str, Any]) -> dict[str, Any]:
    m, t, v, g = p["M"], p["T"], p["V"], p["G"]
    gen = _gen()
    return {
        "logits": torch.randn(m, t, v, generator=gen).requires_grad_(),
        "ref_logits": torch.randn(m, t, v, generator=gen),
        "actions": torch.randint(0, v, (m, t), generator=gen),
        "returns": torch.randn(m, generator=gen),
        "group_ids": torch.arange(m) // g,
        "chunk": p.get("chunk"),
    }


def logits_naive(s: dict[str, Any]) -> None:
    _zero_grads(s)
    lsm = torch.log_softmax(s["logits"], dim=-1)
    logp = lsm.gather(2, s["actions"][..., None])[..., 0]
    p = lsm.exp()
    ent = -(p * lsm).sum(-1)
    ref_lsm = torch.log_softmax(s["ref_logits"], dim=-1)
    kl = (p * (lsm - ref_lsm)).sum(-1).mean()
    out = haepo_loss(logp, s["returns"], group_ids=s["group_ids"], entropy=ent, entropy_coef=ENT)
    (out.loss + BETA * kl).backward()


def logits_haepo(s: dict[str, Any]) -> None:
    _zero_grads(s)
    out = haepo_loss_from_logits(
        s["logits"],
        s["actions"],
        s["returns"],
        ref_logits=s["ref_logits"],
        group_ids=s["group_ids"],
        entropy_coef=ENT,
        kl_coef=BETA,
        chunk_size=s["chunk"],
    )
    out.loss.backward()


# --------------------------------------------------------------------------- policy term


def policy_setup(p: dict[str, Any]) -> dict[str, Any]:
    m, t, g = p["M"], p["T"], p["G"]
    gen = _gen()
    lengths = torch.randint(1, t + 1, (m,), generator=gen)
    logp = -torch.rand(m, t, generator=gen) * 2
    return {
        "logp": logp.requires_grad_(),
        "old_logp": logp.detach() + 0.01 * torch.randn(m, t, generator=gen),
        "ref_logp": logp.detach() + 0.05 * torch.randn(m, t, generator=gen),
        "mask": torch.arange(t)[None, :] < lengths[:, None],
        "returns": torch.randn(m, generator=gen),
        "group_ids": torch.arange(m) // g,
        "G": g,
    }


def policy_haepo(s: dict[str, Any]) -> None:
    s["logp"].grad = None
    out = haepo_loss(
        s["logp"],
        s["returns"],
        s["mask"],
        group_ids=s["group_ids"],
        ref_logp=s["ref_logp"],
        kl_coef=BETA,
    )
    out.loss.backward()


def policy_grpo_trl(s: dict[str, Any]) -> None:
    """GRPO as TRL computes it: group-normalized advantages, clipped ratio per token, k3 KL
    per token, per-sequence token mean, batch mean ("grpo" loss type)."""
    s["logp"].grad = None
    r = s["returns"].view(-1, s["G"])
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).reshape(-1, 1)
    logp, mask = s["logp"], s["mask"].float()
    coef_1 = torch.exp(logp - s["old_logp"])
    coef_2 = torch.clamp(coef_1, 1 - 0.2, 1 + 0.2)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    d = s["ref_logp"] - logp
    per_token = per_token + BETA * (torch.exp(d) - d - 1)
    loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    loss.backward()


# --------------------------------------------------------------------------- packed vs padded


def packed_setup(p: dict[str, Any]) -> dict[str, Any]:
    m, t, g = p["M"], p["T"], p["G"]
    gen = _gen()
    lengths = torch.randint(1, t + 1, (m,), generator=gen)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    logp = -torch.rand(m, t, generator=gen) * 2
    ref = logp + 0.05 * torch.randn(m, t, generator=gen)
    return {
        "logp": logp.requires_grad_(),
        "ref_logp": ref,
        "mask": mask,
        "flat": logp.detach()[mask].clone().requires_grad_(),
        "flat_ref": ref[mask].clone(),
        "segment_ids": torch.repeat_interleave(torch.arange(m), lengths),
        "returns": torch.randn(m, generator=gen),
        "group_ids": torch.arange(m) // g,
    }


def padded_step(s: dict[str, Any]) -> None:
    s["logp"].grad = None
    out = haepo_loss(
        s["logp"],
        s["returns"],
        s["mask"],
        group_ids=s["group_ids"],
        ref_logp=s["ref_logp"],
        kl_coef=BETA,
    )
    out.loss.backward()


def packed_step(s: dict[str, Any]) -> None:
    s["flat"].grad = None
    out = haepo_loss_packed(
        s["flat"],
        s["segment_ids"],
        s["returns"],
        group_ids=s["group_ids"],
        ref_logp=s["flat_ref"],
        kl_coef=BETA,
    )
    out.loss.backward()


Setup = Callable[[dict[str, Any]], dict[str, Any]]
Step = Callable[[dict[str, Any]], None]

CASES: dict[str, tuple[Setup, dict[str, Step]]] = {
    "hidden": (
        hidden_setup,
        {"naive": hidden_naive, "haepo": hidden_haepo, "liger": hidden_liger, "trl": hidden_trl},
    ),
    "logits": (logits_setup, {"naive": logits_naive, "haepo": logits_haepo}),
    "policy": (policy_setup, {"grpo_trl": policy_grpo_trl, "haepo": policy_haepo}),
    "packed": (packed_setup, {"padded": padded_step, "packed": packed_step}),
}
