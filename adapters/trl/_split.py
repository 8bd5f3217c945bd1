"""Exact HAEPO gradients when a group spans micro-batches or processes.

The policy term couples the completions of a group only through their log-likelihoods ``L_k``
(one scalar each), and its derivative in them is closed form
(``haepo_core.haepo_grad``)::

    dJ/dL_k = -(w_k / tau) * (R~_k - sum_j w_j R~_j) / #groups

So with every ``L_k`` of the optimizer step known first (no gradient needed), the constants
``c_k = dJ/dL_k`` are fixed, and back-propagating ``sum_k c_k L_k(theta)`` micro-batch by
micro-batch accumulates exactly ``dJ/dtheta = sum_k c_k dL_k/dtheta``. Token means (entropy,
KL) divide by the step's global token count. Across processes only the ``L_k`` (with rewards
and group labels: 4 numbers a completion) are all-gathered.
"""

from __future__ import annotations

import torch

from haepo_core import HAEPOOutput, haepo_grad, kl_estimate

__all__ = ["completion_log_likelihood", "split_micro_batch_loss", "window_coefficients"]


def completion_log_likelihood(
    per_token_logps: torch.Tensor, valid: torch.Tensor, length_normalize: bool
) -> torch.Tensor:
    """``[B]`` ``L_k = sum_t valid * logp`` (divided by the token count under
    ``length_normalize``); 0 for a row without valid tokens. Padding never leaks (``where``)."""
    zero = torch.zeros((), dtype=per_token_logps.dtype, device=per_token_logps.device)
    total = torch.where(valid, per_token_logps, zero).sum(dim=1)
    if length_normalize:
        total = total / valid.sum(dim=1).clamp(min=1).to(total.dtype)
    return total


def window_coefficients(
    log_likelihood: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    keep: torch.Tensor,
    *,
    normalize_returns: str,
    temperature: float,
    eps: float,
) -> tuple[torch.Tensor, HAEPOOutput]:
    """``c_k = dJ_PL/dL_k`` for every completion of an optimizer step (all processes).

    Args:
      log_likelihood: ``[M]`` ``L_k`` (after length normalization when it is on), no grad.
      rewards: ``[M]`` raw rewards; group_ids: ``[M]`` global group labels.
      keep: ``[M]`` bool, rows with at least one valid token (the others get ``c_k = 0`` and do
        not count in their group's statistics, as in the whole-group loss).
      normalize_returns, temperature, eps: HAEPO's settings.

    Returns:
      ``(c, out)``: ``c`` ``[M]`` in float64 (0 for dropped rows) and the core's
      ``HAEPOOutput`` over the kept rows (weights, normalized returns, whole-step ``stats``).
    """
    idx = torch.nonzero(keep, as_tuple=True)[0]
    # float64: M scalars, so the precision is free, and c_k keeps every digit the policy
    # gradient needs even when L_k is large (long completions without length_normalize).
    lk = log_likelihood.detach().double().index_select(0, idx)[:, None]
    out, grads = haepo_grad(
        lk,
        rewards.detach().double().index_select(0, idx),
        None,
        group_ids=group_ids.index_select(0, idx),
        normalize_returns=normalize_returns,
        temperature=temperature,
        eps=eps,
    )
    coef = torch.zeros(keep.shape[0], dtype=torch.float64, device=lk.device)
    return coef.index_copy(0, idx, grads["logp"][:, 0]), out


def split_micro_batch_loss(
    per_token_logps: torch.Tensor,
    valid: torch.Tensor,
    coef: torch.Tensor,
    *,
    length_normalize: bool,
    num_tokens: float,
    entropies: torch.Tensor | None = None,
    ref_per_token_logps: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    log_likelihood: torch.Tensor | None = None,
    regularizers: torch.Tensor | None = None,
) -> torch.Tensor:
    """One micro-batch's share of the step's HAEPO gradient (its *value* is not the loss).

    ``sum_k c_k L_k - entropy_coef * sum H / N + kl_coef * sum KL / N`` over the micro-batch's
    valid tokens, ``N = num_tokens`` the step's global count. Summed over the step's
    micro-batches (and processes) its gradient is the gradient of the whole-step HAEPO loss.
    ``log_likelihood`` (``[B]``) replaces the ``L_k`` computed from ``per_token_logps`` and
    ``regularizers`` (0-d) the entropy and KL terms, when another path (the fused LM head)
    computed them.
    """
    lk = (
        completion_log_likelihood(per_token_logps, valid, length_normalize)
        if log_likelihood is None
        else log_likelihood
    )
    loss = (coef.to(lk.dtype) * lk).sum()
    if regularizers is not None:
        return loss + regularizers
    zero = torch.zeros((), dtype=lk.dtype, device=lk.device)
    if entropy_coef > 0:
        if entropies is None:
            raise ValueError(
                "entropies: expected [B, T] entropies since entropy_coef > 0, got None"
            )
        loss = loss - entropy_coef * torch.where(valid, entropies, zero).sum() / num_tokens
    if kl_coef > 0 and ref_per_token_logps is not None:
        # Padding is zeroed before the estimator so NaN/inf there cannot reach the gradient.
        logp = torch.where(valid, per_token_logps, zero)
        ref = torch.where(valid, ref_per_token_logps.to(lk.dtype), zero)
        steps = kl_estimate(logp, ref, kl_estimator)
        loss = loss + kl_coef * torch.where(valid, steps, zero).sum() / num_tokens
    return loss
