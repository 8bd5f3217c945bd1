"""The HAEPO loss from TRL-style per-token tensors: one group per prompt, ``num_generations`` rows.

This is the bridge between TRL's tensors (``per_token_logps``, ``completion_mask``, rewards) and
``haepo_backends.torch.haepo_loss`` (the core's math with a closed-form policy backward); this
module only checks and shapes the inputs.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from haepo_backends.torch import haepo_loss

from haepo_core import HAEPOOutput, HAEPOStats
from haepo_core.kit import Options, fill_doc

__all__ = ["haepo_loss_from_token_logps"]


def _check_tensor(name: str, x: object, shape: tuple[int, ...] | None, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {what}, got {type(x).__name__}")
    if shape is not None and tuple(x.shape) != shape:
        raise ValueError(f"{name}: expected shape {what} = {shape}, got {tuple(x.shape)}")
    return x


def _check_mask(name: str, x: object, shape: tuple[int, int]) -> torch.Tensor:
    x = _check_tensor(name, x, shape, "[B, T] (same as per_token_logps)")
    if x.dtype == torch.bool:
        return x
    if x.dtype.is_floating_point or x.dtype.is_complex:
        raise TypeError(f"{name}: expected a bool or integer 0/1 mask, got dtype {x.dtype}")
    if bool(((x != 0) & (x != 1)).any()):
        raise ValueError(f"{name}: expected only 0/1 values, got values outside {{0, 1}}")
    return x != 0


def group_ids_for(batch_size: int, num_generations: int, device: torch.device) -> torch.Tensor:
    """``[B]`` group label of each row: rows ``g*G .. g*G+G-1`` form group ``g``."""
    return torch.div(
        torch.arange(batch_size, device=device), num_generations, rounding_mode="floor"
    )


def _empty_output(per_token_logps: torch.Tensor, batch_size: int) -> HAEPOOutput:
    """Every row is empty: a zero loss still attached to the graph, zero stats."""
    safe = torch.where(
        torch.zeros_like(per_token_logps, dtype=torch.bool),
        per_token_logps,
        torch.zeros_like(per_token_logps),
    )
    zero = safe.sum() * 0.0
    zeros = per_token_logps.new_zeros(batch_size)
    stats = {k: zero.detach().clone() for k in HAEPOStats._fields}
    return HAEPOOutput(zero, zeros, zeros, zeros, stats)


def haepo_step_loss(
    per_token_logps: torch.Tensor,
    valid: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    entropies: torch.Tensor | None,
    ref_per_token_logps: torch.Tensor | None,
    **options: Any,
) -> HAEPOOutput:
    """Checked-input backend call shared by the public function and the trainer; ``options``
    are the loss option keywords of ``haepo_loss``.

    Rows without a valid token (``mask_truncated_completions`` zeroes whole rows) are dropped
    from their group before the core sees them: such a completion has no log-likelihood to
    weigh. Per-row outputs are scattered back to ``[B]`` with 0 for the dropped rows.
    """
    b = per_token_logps.shape[0]
    keep = valid.any(dim=1)
    if not bool(keep.any()):
        return _empty_output(per_token_logps, b)
    all_kept = bool(keep.all())
    idx = None if all_kept else torch.nonzero(keep, as_tuple=True)[0]

    def rows(x: torch.Tensor | None) -> torch.Tensor | None:
        return x if x is None or idx is None else x.index_select(0, idx)

    out = haepo_loss(
        rows(per_token_logps),
        rows(rewards),
        rows(valid),
        group_ids=rows(group_ids),
        entropy=rows(entropies),
        ref_logp=rows(ref_per_token_logps),
        **options,
    )
    if idx is None:
        return out

    def scatter(v: torch.Tensor) -> torch.Tensor:
        return v.new_zeros(b).index_copy(0, idx, v)

    return HAEPOOutput(
        out.loss,
        scatter(out.weights),
        scatter(out.normalized_returns),
        scatter(out.log_likelihood),
        out.stats,
    )


@fill_doc
def haepo_loss_from_token_logps(
    per_token_logps: torch.Tensor, completion_mask: torch.Tensor,
    rewards: torch.Tensor | Sequence[float], num_generations: int, *,
    entropies: torch.Tensor | None = None, ref_per_token_logps: torch.Tensor | None = None,
    tool_mask: torch.Tensor | None = None,
    entropy_coef: float = 0.0, kl_coef: float = 0.0, kl_estimator: str = "k3",
    normalize_returns: str = "zscore", temperature: float = 1.0,
    length_normalize: bool = True, eps: float = 1e-8,
) -> HAEPOOutput:  # fmt: skip
    r"""HAEPO loss of a TRL-style batch whose ``num_generations`` consecutive rows share a prompt.

    Row ``b`` belongs to group ``g = b // G`` (``G = num_generations``), the layout TRL's
    ``RepeatSampler`` produces. With :math:`m_{b,t}` = ``completion_mask`` (times ``tool_mask``
    when given, so tool-output tokens are not scored):

    .. math::

        L_b &= \sum_t m_{b,t}\,\log\pi_\theta(y_{b,t} \mid x_b, y_{b,<t})
              \quad(\div\ \textstyle\sum_t m_{b,t} \text{ if length\_normalize}) \\
        w_b &= \operatorname{softmax}_{j \in g(b)}(L_j / \tau)_b, \qquad
        \tilde R_b = \frac{R_b - \operatorname{mean}_{g(b)} R}{\operatorname{std}_{g(b)} R
              + \epsilon} \\
        \text{loss} &= -\frac{1}{\#\text{groups}} \sum_g \sum_{b \in g} w_b \tilde R_b
              \;-\; \lambda\,\overline{H} \;+\; \beta\,\overline{KL}(\pi_\theta \,\|\,
              \pi_{\text{ref}})

    :math:`\overline{H}` and :math:`\overline{KL}` are means over all valid tokens (the KL per
    token by the ``k3`` estimator :math:`e^{r} - r - 1`, :math:`r = \log\pi_{\text{ref}} -
    \log\pi_\theta`, by default). Rewards are normalized inside each group (population std), not
    taken from GRPO's advantages; :math:`\tilde R` and the reference are constants. Gradients
    flow through ``per_token_logps`` (and ``entropies``); the math is ``haepo_core.haepo_loss``,
    computed by ``haepo_backends.torch.haepo_loss`` (closed-form policy backward).

    Rows whose mask has no valid token (e.g. TRL's ``mask_truncated_completions``) are dropped
    from their group: they get weight 0 and do not count in its reward statistics. A group of
    one valid row, or of equal rewards, contributes no policy gradient.

    Args:
      per_token_logps: ``[B, T]`` float log-probs of the sampled completion tokens (TRL's
        ``per_token_logps``); ``B = num_groups * num_generations``. Padding may hold anything.
      completion_mask: ``[B, T]`` bool or 0/1 integer mask of the completion tokens.
      rewards: ``[B]`` finite real rewards (a tensor or a sequence of numbers), one per row.
      num_generations: ``G >= 1``, the completions per prompt; must divide ``B``.
      entropies: ``[B, T]`` per-token policy entropies (required when ``entropy_coef > 0``).
      ref_per_token_logps: ``[B, T]`` per-token log-probs under the frozen reference policy
        (TRL's ``old_per_token_logps`` or ``ref_per_token_logps``; required when
        ``kl_coef > 0``; treated as a constant).
      tool_mask: ``[B, T]`` optional mask of the tokens the policy generated (TRL's
        ``tool_mask``: 0 on tool outputs); multiplied into ``completion_mask``.
      %(coefficients)s
      length_normalize: divide each ``L_b`` by its token count (default ``True``: sums of
        log-probs of long completions differ by many nats and collapse the softmax onto one
        completion; see docs/trl.md for the measurement).
      eps: ``> 0``, guards the std of the rewards.

    Returns:
      ``haepo_core.HAEPOOutput``: ``loss`` (0-d), ``weights``, ``normalized_returns`` and
      ``log_likelihood`` (``[B]``, 0 for dropped rows) and detached ``stats`` (``policy_loss``,
      ``entropy``, ``kl``, ``ess``, ``ess_min``, ``max_weight``, ``weighted_return``,
      ``num_groups``). float16/bfloat16 inputs are computed in float32 and cast back.

    Raises:
      TypeError / ValueError naming the argument: not a tensor, wrong shape, float mask,
      non-0/1 mask, ``num_generations`` not a positive int dividing ``B``, a regularizer
      coefficient > 0 without its input, NaN/inf at valid positions or in ``rewards``.

    Example:
      >>> import torch
      >>> from haepo_adapters.trl import haepo_loss_from_token_logps
      >>> logps = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.9], [0.2, 0.4], [0.4, 0.2]]))
      >>> logps.requires_grad_(True)  # doctest: +ELLIPSIS
      tensor(...)
      >>> mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]])
      >>> out = haepo_loss_from_token_logps(logps, mask, [1.0, 0.0, 0.0, 1.0], 2)
      >>> round(out.loss.item(), 4), [round(w, 4) for w in out.weights.tolist()]
      (0.1429, [0.3571, 0.6429, 0.5, 0.5])
      >>> out.loss.backward()  # gradients reach the per-token log-probs
    """
    options = {k: v for k, v in locals().items() if k in Options._fields}
    logp = _check_tensor("per_token_logps", per_token_logps, None, "[B, T]")
    if logp.ndim != 2:
        raise ValueError(f"per_token_logps: expected rank 2 [B, T], got shape {tuple(logp.shape)}")
    if not logp.dtype.is_floating_point:
        raise TypeError(f"per_token_logps: expected a floating dtype, got {logp.dtype}")
    b, t = logp.shape
    valid = _check_mask("completion_mask", completion_mask, (b, t))
    if tool_mask is not None:
        valid = valid & _check_mask("tool_mask", tool_mask, (b, t))
    if isinstance(num_generations, bool) or not isinstance(num_generations, numbers.Integral):
        raise TypeError(f"num_generations: expected an int >= 1, got {num_generations!r}")
    if num_generations < 1 or b % num_generations != 0:
        raise ValueError(
            f"num_generations: expected an int >= 1 dividing the batch size B = {b} (rows are "
            f"whole groups of num_generations completions), got {num_generations}"
        )
    if not isinstance(rewards, torch.Tensor):
        try:
            rewards = torch.as_tensor(list(rewards), dtype=torch.float32, device=logp.device)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"rewards: expected a [B] tensor or a sequence of numbers, got "
                f"{type(rewards).__name__}"
            ) from exc
    if tuple(rewards.shape) != (b,):
        raise ValueError(f"rewards: expected shape [B] = ({b},), got {tuple(rewards.shape)}")
    for name, arr in (("entropies", entropies), ("ref_per_token_logps", ref_per_token_logps)):
        if arr is not None:
            _check_tensor(name, arr, (b, t), "[B, T] (same as per_token_logps)")
            if not arr.dtype.is_floating_point:
                raise TypeError(f"{name}: expected a floating dtype, got {arr.dtype}")
    if isinstance(entropy_coef, numbers.Real) and entropy_coef > 0 and entropies is None:
        raise ValueError(
            f"entropies: expected [B, T] entropies since entropy_coef = {entropy_coef}, got None"
        )
    if isinstance(kl_coef, numbers.Real) and kl_coef > 0 and ref_per_token_logps is None:
        raise ValueError(
            f"ref_per_token_logps: expected [B, T] reference log-probs since kl_coef = "
            f"{kl_coef}, got None"
        )
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards: expected finite values, got NaN or inf")
    for name, arr in (
        ("per_token_logps", logp),
        ("entropies", entropies),
        ("ref_per_token_logps", ref_per_token_logps),
    ):
        if arr is not None and not bool(torch.isfinite(arr.detach()[valid]).all()):
            raise ValueError(f"{name}: expected finite values where the mask is 1, got NaN or inf")
    return haepo_step_loss(
        logp,
        valid,
        rewards,
        group_ids_for(b, int(num_generations), logp.device),
        entropies=entropies,
        ref_per_token_logps=ref_per_token_logps,
        **options,
    )
