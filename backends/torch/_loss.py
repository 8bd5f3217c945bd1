"""``haepo_loss`` and ``haepo_loss_packed`` on torch tensors (padded and packed layouts), and
:func:`finish`: the core objective (``haepo_core.kit.objective``) on the torch primitives,
which every entry point of the backend ends with."""

from __future__ import annotations

from typing import Any

import torch

from haepo_core import HAEPOOutput
from haepo_core.kit import (
    Options,
    compute_dtype,
    fill_doc,
    objective,
    validate_packed,
    validate_padded,
)

from ._checks import check_deferred, is_concrete, validated, xp
from ._collectives import global_group_index
from ._policy import TorchPrimitives, kl_estimate_sum
from ._segments import dense_group_index

__all__ = ["finish", "haepo_loss", "haepo_loss_packed"]


def finish(
    L: torch.Tensor, n_k: torch.Tensor, returns: torch.Tensor, group_ids: torch.Tensor | None,
    ent_sum: torch.Tensor | None, kl_sum: torch.Tensor | None, opts: Options,
    out_dtype: torch.dtype, process_group: Any,
) -> HAEPOOutput:  # fmt: skip
    """The core objective on this rank's per-trajectory sums (``L``, ``n_k`` ``[M]``)."""
    m = L.shape[0]
    if process_group is not None:
        index, num = global_group_index(group_ids, m, L.device, process_group)
    else:
        index, num = dense_group_index(group_ids, m, L.device)
    return objective(
        TorchPrimitives(process_group), L=L, n_k=n_k, returns=returns, index=index, num=num,
        ent_sum=ent_sum, kl_sum=kl_sum, n_steps=n_k.sum(), opts=opts, out_dtype=out_dtype,
    )  # fmt: skip


def sanitize(x: torch.Tensor, valid: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    """Padding replaced by 0 *before* any arithmetic: NaN/inf there must reach neither the
    value nor the gradient (where() after an exp would still send 0 * inf = NaN back)."""
    x = x.to(cdt)
    return torch.where(valid, x, torch.zeros((), dtype=cdt, device=x.device))


def _step_counts(segment_ids: torch.Tensor, m: int, like: torch.Tensor) -> torch.Tensor:
    """Steps per trajectory ``[M]`` in the compute dtype of ``like``, checking
    ``0 <= segment_ids < M`` on the way.

    One ``index_add`` does both: torch itself rejects an index outside ``0..M-1`` (CPU and
    CUDA), and only then do we pay for the min/max passes that word the error. (``bincount``
    would spend two hidden min/max passes on every call, and its output size is data
    dependent, which breaks ``torch.compile``.)
    """
    cdt = compute_dtype(xp, like.dtype)
    seg = segment_ids.to(torch.int64)
    ones = torch.ones(seg.shape[0], dtype=cdt, device=seg.device)
    try:
        return torch.zeros(m, dtype=cdt, device=seg.device).index_add(0, seg, ones)
    except (RuntimeError, IndexError):
        if not is_concrete(seg) or seg.shape[0] == 0:
            raise
        lo, hi = int(seg.min()), int(seg.max())
        if lo >= 0 and hi < m:
            raise
        raise ValueError(
            f"segment_ids: expected values in 0..M-1 = 0..{m - 1}, got values in {lo}..{hi}"
        ) from None


@fill_doc
def haepo_loss(
    logp: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None, *,
    group_ids: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    entropy_coef: float = 0.0, kl_coef: float = 0.0, kl_estimator: str = "k3",
    normalize_returns: str = "zscore", temperature: float = 1.0,
    length_normalize: bool = False, eps: float = 1e-8, process_group: Any = None,
) -> HAEPOOutput:  # fmt: skip
    r"""The HAEPO loss on padded trajectories (torch; closed-form policy backward).

    %(math)s

    Same arguments, keywords, outputs and errors as :func:`haepo_core.haepo_loss`; the
    gradient of the policy term is computed in closed form,
    :math:`\partial J/\partial L_k = -(w_k/\tau)(\tilde R_k - \bar R_g)/\#\text{groups}`, in
    one pass that keeps only ``w`` (no softmax graph). ``torch.compile(fullgraph=True)``
    compiles it without a graph break (value checks are skipped while compiling: check
    eagerly first).

    Args:
      %(padded)s
      %(options)s
      %(process_group)s

    Returns:
      :class:`haepo_core.HAEPOOutput` in ``logp``'s dtype and device; reductions run in
      float32 (float64 stays float64).

    Example:
      >>> import torch
      >>> from haepo_backends.torch import haepo_loss
      >>> logp = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.2]]))
      >>> mask = torch.tensor([[True, True], [True, False], [True, True]])
      >>> out = haepo_loss(logp.requires_grad_(), torch.tensor([1.0, 0.0, 2.0]), mask)
      >>> round(out.loss.item(), 6)
      0.88511
      >>> out.loss.backward()
    """
    _, (valid, opts, deferred) = validated(locals(), validate_padded)
    cdt = compute_dtype(xp, logp.dtype)
    x = sanitize(logp, valid, cdt)
    kl_sum = None
    if ref_logp is not None:
        ref = sanitize(ref_logp.detach(), valid, cdt)
        kl_sum = kl_estimate_sum(x, ref, opts.kl_estimator)  # 0 at padding: there x = ref = 0
    L = x.sum(dim=1)
    ent_sum = None if entropy is None else sanitize(entropy, valid, cdt).sum()
    check_deferred([L, ent_sum, kl_sum], deferred)  # NaN/inf in ref_logp reaches the KL sum
    n_k = valid.sum(dim=1).to(cdt)
    return finish(L, n_k, returns, group_ids, ent_sum, kl_sum, opts, logp.dtype, process_group)


@fill_doc
def haepo_loss_packed(
    logp: torch.Tensor, segment_ids: torch.Tensor, returns: torch.Tensor, *,
    group_ids: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    entropy_coef: float = 0.0, kl_coef: float = 0.0, kl_estimator: str = "k3",
    normalize_returns: str = "zscore", temperature: float = 1.0,
    length_normalize: bool = False, eps: float = 1e-8, process_group: Any = None,
) -> HAEPOOutput:  # fmt: skip
    r"""The HAEPO loss on packed, padding-free steps (torch; closed-form policy backward).

    Same objective as :func:`haepo_loss` with
    :math:`L_k = \sum_{i:\,\text{segment\_ids}_i = k} \text{logp}_i`, computed with one
    ``index_add`` (its backward is a gather): the cost grows with the number of steps ``N``,
    not with ``M * max(T_k)``. Steps of one trajectory need not be contiguous.

    Args:
      %(packed)s
      %(options)s
      process_group: as in :func:`haepo_loss`; ``segment_ids`` are then local indices into
        this rank's ``returns``.

    Returns:
      :class:`haepo_core.HAEPOOutput` in ``logp``'s dtype.

    Example:
      >>> import torch
      >>> from haepo_backends.torch import haepo_loss_packed
      >>> logp = torch.log(torch.tensor([0.5, 0.5, 0.9, 0.2, 0.2]))
      >>> out = haepo_loss_packed(logp, torch.tensor([0, 0, 1, 2, 2]),
      ...                         torch.tensor([1.0, 0.0, 2.0]))
      >>> round(float(out.loss), 6)
      0.88511
    """
    dev, ((_, opts, deferred), n_k) = validated(
        locals(), validate_packed, counts=lambda: _step_counts(segment_ids, returns.shape[0], logp)
    )
    m, cdt = returns.shape[0], n_k.dtype
    x = logp.to(cdt)
    kl_sum = None
    if ref_logp is not None:
        kl_sum = kl_estimate_sum(x, ref_logp.detach().to(cdt), opts.kl_estimator)
    L = torch.zeros(m, dtype=cdt, device=dev).index_add(0, segment_ids.to(torch.int64), x)
    ent_sum = None if entropy is None else entropy.to(cdt).sum()
    check_deferred([L, ent_sum, kl_sum], deferred)
    return finish(L, n_k, returns, group_ids, ent_sum, kl_sum, opts, logp.dtype, process_group)
