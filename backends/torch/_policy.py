"""The Plackett-Luce policy term with its closed-form backward.

Forward: ``w = softmax_g(z)`` inside each group (log-sum-exp, detached max shift) and
``J = -sum_k w_k R~_k / #groups``. Backward, for upstream gradients ``gJ`` (scalar) and ``gw``
(``[M]``, when the weights are used downstream):

    u_k  = gw_k - gJ * R~_k / #groups
    dz_k = w_k * (u_k - sum_{j in g(k)} w_j u_j)

With ``gw = 0`` this is ``-(w_k)(R~_k - Rbar_g)/#groups``, the closed form of the spec
(``z = L / tau``, autograd applies the ``1/tau`` and the sum over steps). It is one pass over
``[M]`` that keeps only ``w`` (no softmax graph, no ``[M]`` exp/normalizer temporaries).

Why ``torch.autograd.Function`` with ``setup_context`` and not ``torch.library.custom_op``:
the PyTorch docs ("Extending PyTorch", "torch.compile and autograd.Function") state that an
``autograd.Function`` whose forward and backward are plain torch ops is traced *through* by
Dynamo and AOTAutograd, so Inductor can fuse it with the surrounding elementwise work, and the
``setup_context`` form is the one ``torch.func`` transforms also accept. ``custom_op`` makes an
opaque operator: the right tool when the body is not traceable (a C++/Triton kernel), but here
it would block fusion and require a separate fake (meta) kernel for the same code. Our body is
traceable, and the optional cross-rank all-reduces (eager only) sit naturally in it.
"""

from __future__ import annotations

from typing import Any

import torch

from ._distributed import all_reduce_max, all_reduce_sum
from ._segments import segment_max, segment_sum

__all__ = ["plackett_luce_policy"]


def _reduce(x: torch.Tensor, group: Any) -> torch.Tensor:
    return x if group is None else all_reduce_sum(x.detach(), group)


class _PlackettLucePolicy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        z: torch.Tensor,
        r_norm: torch.Tensor,
        index: torch.Tensor,
        n_groups: torch.Tensor,
        num: int,
        group: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The max is a constant shift (value and gradient unchanged) that keeps exp() <= 1, so
        # L_k down to -1e6 stays finite; empty segments (-inf) shift by 0.
        peak = all_reduce_max(segment_max(z, index, num), group)
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        e = torch.exp(z - peak[index])
        total = _reduce(segment_sum(e, index, num), group)
        total = torch.where(total > 0, total, torch.ones_like(total))
        w = e / total[index]
        policy = -_reduce((w * r_norm).sum(), group) / n_groups
        return policy, w

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        _, r_norm, index, n_groups, num, group = inputs
        _, w = output
        ctx.save_for_backward(w, r_norm, index, n_groups)
        ctx.num = num
        ctx.group = group

    @staticmethod
    def backward(ctx: Any, g_policy: torch.Tensor, g_w: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        w, r_norm, index, n_groups = ctx.saved_tensors
        # Every rank's scalar output is the same global J: the sum over ranks of their upstream
        # gradients is the cotangent of J (see _distributed.py for the DDP convention).
        g_policy = _reduce(g_policy, ctx.group)
        u = g_w - g_policy * r_norm / n_groups
        r_bar = _reduce(segment_sum(w * u, index, ctx.num), ctx.group)
        dz = w * (u - r_bar[index])
        return dz, None, None, None, None, None


def plackett_luce_policy(
    z: torch.Tensor,
    r_norm: torch.Tensor,
    index: torch.Tensor,
    n_groups: torch.Tensor,
    num: int,
    group: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(J_PL, w)`` for scores ``z = L / tau`` [M] (float32/64), constants ``r_norm`` [M],
    dense group ``index`` [M] with ``num`` segments and ``n_groups`` (0-d) non-empty groups."""
    return _PlackettLucePolicy.apply(z, r_norm.detach(), index, n_groups.detach(), num, group)
