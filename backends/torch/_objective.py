"""From per-trajectory sums to the HAEPO output: normalized returns, the policy term (closed-form
backward), entropy and KL token means, and the diagnostics. Shared by every torch entry point;
with a ``process_group`` every sum over trajectories or steps is reduced across ranks."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from haepo_core import HAEPOOutput

from ._distributed import all_reduce_max, all_reduce_min, all_reduce_sum
from ._policy import plackett_luce_policy
from ._segments import segment_max, segment_min, segment_sum

__all__ = ["Options", "compute_dtype", "kl_estimate_sum", "kl_steps", "objective"]


class Options(NamedTuple):
    entropy_coef: Any
    kl_coef: Any
    kl_estimator: str
    normalize_returns: str
    temperature: Any
    length_normalize: bool
    eps: float


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 compute in float32 (spec: sums,
    log-sum-exp and the softmax run in float32 at least)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def kl_steps(x: torch.Tensor, ref: torch.Tensor, estimator: str) -> torch.Tensor:
    r = ref - x
    if estimator == "k1":
        return -r
    if estimator == "k2":
        return 0.5 * r * r
    return torch.expm1(r) - r  # k3; expm1 keeps small r accurate


class _KLEstimateSum(torch.autograd.Function):
    """``sum_i kappa(ref_i - x_i)`` with the closed-form backward ``g * kappa'`` per step:
    k1: 1, k2: -r, k3: -expm1(r) (= 1 - e^r). One saved ``[N]`` tensor and one or two
    elementwise ops in backward, instead of autograd's chain through sub/expm1/sub (about
    six passes): the per-step KL is the only ``[N]``-sized work left besides the sum of L."""

    @staticmethod
    def forward(  # type: ignore[override]
        x: torch.Tensor, ref: torch.Tensor, estimator: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r = ref - x
        if estimator == "k1":
            return -r.sum(), r
        if estimator == "k2":
            return 0.5 * (r * r).sum(), r
        e = torch.expm1(r)  # kept: it is the backward, up to the sign
        return e.sum() - r.sum(), e

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        _, _, estimator = inputs
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.estimator = estimator

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, _: Any) -> tuple[Any, ...]:  # type: ignore[override]
        (saved,) = ctx.saved_tensors  # r for k1/k2, expm1(r) for k3
        if ctx.estimator == "k1":
            dx = torch.full_like(saved, 1.0) * g
        else:  # k2: d/dx r^2/2 = -r;  k3: d/dx (e^r - 1 - r) = 1 - e^r = -expm1(r)
            dx = saved * (-g)
        return dx, None, None


def kl_estimate_sum(x: torch.Tensor, ref: torch.Tensor, estimator: str) -> torch.Tensor:
    """Sum over steps of the KL estimator; ``ref`` is a constant."""
    return _KLEstimateSum.apply(x, ref.detach(), estimator)[0]


def normalize(
    r: torch.Tensor, index: torch.Tensor, num: int, method: str, eps: float, group: Any
) -> torch.Tensor:
    """Per-group z-score / centering (population std), reduced over ranks when ``group``."""
    if method == "none":
        return r
    count = all_reduce_sum(segment_sum(torch.ones_like(r), index, num), group)
    count = torch.where(count > 0, count, torch.ones_like(count))
    mean = (all_reduce_sum(segment_sum(r, index, num), group) / count)[index]
    centered = r - mean
    # All-equal groups get exactly 0 (the mean of equal floats may differ in the last bit).
    hi = all_reduce_max(segment_max(r, index, num), group)
    lo = all_reduce_min(segment_min(r, index, num), group)
    flat = (hi == lo)[index]
    zero = torch.zeros_like(r)
    if method == "center":
        return torch.where(flat, zero, centered)
    var = all_reduce_sum(segment_sum(centered * centered, index, num), group) / count
    return torch.where(flat, zero, centered / (torch.sqrt(var)[index] + eps))


def objective(
    *,
    L: torch.Tensor,
    n_k: torch.Tensor,
    returns: torch.Tensor,
    index: torch.Tensor,
    num: int,
    ent_sum: torch.Tensor | None,
    kl_sum: torch.Tensor | None,
    n_steps: torch.Tensor,
    opts: Options,
    out_dtype: torch.dtype,
    group: Any = None,
) -> HAEPOOutput:
    """``L``/``n_k`` [M] in the compute dtype; ``ent_sum``/``kl_sum`` local sums over valid
    steps; ``n_steps`` the local number of valid steps."""
    cdt = L.dtype
    L_eff = L / n_k if opts.length_normalize else L
    r = returns.to(cdt)
    with torch.no_grad():
        r_norm = normalize(r, index, num, opts.normalize_returns, opts.eps, group)
        counts = all_reduce_sum(segment_sum(torch.ones_like(r), index, num), group)
        n_groups = (counts > 0).sum().to(cdt)
    policy, w = plackett_luce_policy(L_eff / opts.temperature, r_norm, index, n_groups, num, group)

    n_total = all_reduce_sum(n_steps.to(cdt), group)
    zero = torch.zeros((), dtype=cdt, device=L.device)
    entropy = zero if ent_sum is None else all_reduce_sum(ent_sum, group) / n_total
    kl = zero if kl_sum is None else all_reduce_sum(kl_sum, group) / n_total
    loss = policy - opts.entropy_coef * entropy + opts.kl_coef * kl

    with torch.no_grad():
        wc = w.detach()
        sq = all_reduce_sum(segment_sum(wc * wc, index, num), group)
        present = sq > 0
        ess = torch.where(present, 1.0 / torch.where(present, sq, torch.ones_like(sq)), 0 * sq)
        stats = {
            "policy_loss": policy.detach(),
            "entropy": entropy.detach(),
            "kl": kl.detach(),
            "ess": ess.sum() / n_groups,
            "ess_min": torch.where(present, ess, torch.full_like(ess, float("inf"))).min(),
            "max_weight": all_reduce_max(wc.max(), group),
            "weighted_return": all_reduce_sum((wc * r).sum(), group) / n_groups,
            "num_groups": n_groups,
        }
        stats = {k: v.to(out_dtype) for k, v in stats.items()}
    return HAEPOOutput(
        loss=loss.to(out_dtype),
        weights=w.to(out_dtype),
        normalized_returns=r_norm.to(out_dtype),
        log_likelihood=L_eff.to(out_dtype),
        stats=stats,
    )
