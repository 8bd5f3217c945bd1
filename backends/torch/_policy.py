"""The Plackett-Luce policy term ``plackett_luce_term(z, r_norm, index, num) -> (S, w)`` with
its closed-form backward.

Forward: ``w = softmax_g(z)`` inside each group (log-sum-exp, detached max shift) and the local
``S = sum_k w_k R~_k`` (the objective reduces ``S`` over ranks and forms
``J = -S / #groups``). Backward, for upstream gradients ``gS`` (scalar) and ``gw`` (``[M]``,
when the weights are used downstream):

    u_k  = gw_k + gS * R~_k
    dz_k = w_k * (u_k - sum_{j in g(k)} w_j u_j)

With ``gw = 0`` and ``gS = -1/#groups`` this is ``-(w_k)(R~_k - Rbar_g)/#groups``, the closed
form of the spec (autograd applies the ``1/tau`` and the sum over steps). It is one pass over
``[M]`` that keeps only ``w`` (no softmax graph, no ``[M]`` exp/normalizer temporaries). The
backward is written with differentiable ops on the saved output ``w``, so a second backward
(Hessian-vector products) is exact: autograd differentiates it through ``w``'s own node.

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

from haepo_core.kit import Primitives, plackett_luce_forward

from ._checks import xp
from ._collectives import all_reduce_max, all_reduce_min, all_reduce_sum
from ._segments import segment_max, segment_min, segment_sum

__all__ = ["TorchPrimitives", "kl_estimate_sum", "plackett_luce_term"]


class _PlackettLuceTerm(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        z: torch.Tensor, r_norm: torch.Tensor, index: torch.Tensor, num: int, group: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return plackett_luce_forward(TorchPrimitives(group), z, r_norm, index, num)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        _, r_norm, index, num, group = inputs
        _, w = output
        ctx.save_for_backward(w, r_norm, index)
        ctx.num = num
        ctx.group = group
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, g_s: Any, g_w: Any) -> tuple[Any, ...]:  # type: ignore[override]
        w, r_norm, index = ctx.saved_tensors
        if g_s is None and g_w is None:
            return None, None, None, None, None
        u = torch.zeros_like(w) if g_w is None else g_w
        if g_s is not None:
            u = u + g_s * r_norm
        # The normalizer spans every rank's rows: so does the weighted mean of u.
        r_bar = all_reduce_sum(segment_sum(w * u, index, ctx.num), ctx.group)
        return w * (u - r_bar[index]), None, None, None, None


def plackett_luce_term(
    z: torch.Tensor, r_norm: torch.Tensor, index: torch.Tensor, num: int, group: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, w)`` for scores ``z`` [M] (float32/64), constants ``r_norm`` [M] and the dense
    group ``index`` [M] with ``num`` segments: ``w`` the group softmax (over every rank of
    ``group``), ``S = sum_k w_k r_norm_k`` over this rank's rows."""
    return _PlackettLuceTerm.apply(z, r_norm.detach(), index, num, group)


class _KLEstimateSum(torch.autograd.Function):
    """``sum_i kappa(ref_i - x_i)`` with the closed-form backward ``g * kappa'`` per step:
    k1: 1, k2: -r, k3: -expm1(r) (= 1 - e^r). One saved ``[N]`` tensor and one or two
    elementwise ops in backward, instead of autograd's chain through sub/expm1/sub (about
    six passes): the per-step KL is the only ``[N]``-sized work left besides the sum of L.

    The saved tensor is the function's second output (``r``, or ``expm1(r)`` for k3), kept
    differentiable: a second backward reaches it, and this backward adds its own gradient
    (``d r/dx = -1``, ``d expm1(r)/dx = -(1 + expm1(r))``), so double backward is exact."""

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
        ctx.estimator = estimator
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, g: Any, g_saved: Any) -> tuple[Any, ...]:  # type: ignore[override]
        (saved,) = ctx.saved_tensors  # r for k1/k2, expm1(r) for k3
        dx = None
        if g is not None:
            if ctx.estimator == "k1":
                dx = torch.full_like(saved, 1.0) * g
            else:  # k2: d/dx r^2/2 = -r;  k3: d/dx (e^r - 1 - r) = 1 - e^r = -expm1(r)
                dx = saved * (-g)
        if g_saved is not None:  # only in a second backward
            d_saved = -g_saved if ctx.estimator != "k3" else -g_saved * (saved + 1)
            dx = d_saved if dx is None else dx + d_saved
        return dx, None, None


def kl_estimate_sum(x: torch.Tensor, ref: torch.Tensor, estimator: str) -> torch.Tensor:
    """Sum over steps of the KL estimator; ``ref`` is a constant."""
    return _KLEstimateSum.apply(x, ref.detach(), estimator)[0]


class TorchPrimitives(Primitives):
    """The core objective's primitives in torch: ``index_add``/``scatter_reduce`` segment ops,
    ``torch.distributed`` reductions over ``group`` (identity when ``None``), the closed-form
    policy term and KL-estimate sum."""

    def __init__(self, group: Any = None) -> None:
        super().__init__(xp)
        self.group = group

    def stop_gradient(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach()

    def segment_sum(self, x: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
        return segment_sum(x, index, num)

    def segment_max(self, x: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
        return segment_max(x, index, num)

    def segment_min(self, x: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
        return segment_min(x, index, num)

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(x, self.group)

    def all_max(self, x: torch.Tensor) -> torch.Tensor:
        return all_reduce_max(x, self.group)

    def all_min(self, x: torch.Tensor) -> torch.Tensor:
        return all_reduce_min(x, self.group)

    def plackett_luce_term(
        self, z: torch.Tensor, r_norm: torch.Tensor, index: torch.Tensor, num: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return plackett_luce_term(z, r_norm, index, num, self.group)

    def kl_estimate_sum(self, x: torch.Tensor, ref: torch.Tensor, estimator: str) -> torch.Tensor:
        return kl_estimate_sum(x, ref, estimator)
