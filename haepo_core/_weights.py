"""Plackett-Luce (top-1) weights inside each group, and their effective sample size."""

from __future__ import annotations

from typing import Any

import array_api_compat

from ._namespace import Array, compute_dtype, get_namespace, stop_gradient
from ._segments import group_index, segment_max, segment_sum
from ._validation import check_finite, check_float, check_ids, check_rank

__all__ = ["effective_sample_size", "plackett_luce_weights"]


def _group_softmax(xp: Any, z: Array, gidx: Array, num: int) -> Array:
    """Softmax of ``z`` [M] within each segment, by log-sum-exp.

    The per-group max is a constant shift (detached): it leaves the value and the gradient of
    the softmax unchanged and keeps every exp() argument <= 0, so L_k down to -1e6 stays finite.
    """
    peak = stop_gradient(segment_max(z, gidx, num))
    shifted = z - xp.take(peak, gidx, axis=0)
    e = xp.exp(shifted)
    total = segment_sum(e, gidx, num)
    total = xp.where(total > 0, total, xp.ones_like(total))  # empty segments (traced path)
    return e / xp.take(total, gidx, axis=0)


def plackett_luce_weights(
    log_likelihood: Array, group_ids: Array | None = None, *, temperature: float = 1.0
) -> Array:
    r"""Top-1 Plackett-Luce probabilities of each trajectory inside its group.

    .. math::

        w_k = \frac{\exp(L_k / \tau)}{\sum_{j \in g(k)} \exp(L_j / \tau)}

    computed by log-sum-exp in float32 at least. Adding a constant to every ``L`` of a group
    leaves its weights unchanged; a larger temperature flattens them.

    Args:
      log_likelihood: ``[M]`` floating ``L_k`` (see :func:`trajectory_log_likelihood`).
      group_ids: ``[M]`` integer group labels; ``None`` means one group.
      temperature: ``tau > 0``.

    Returns:
      ``[M]`` weights summing to 1 in each group, in the input dtype.

    Example:
      >>> import numpy as np
      >>> from haepo_core import plackett_luce_weights
      >>> plackett_luce_weights(np.log(np.array([1.0, 3.0, 2.0, 2.0])), np.array([0, 0, 1, 1]))
      array([0.25, 0.75, 0.5 , 0.5 ])
    """
    xp = get_namespace(log_likelihood=log_likelihood, group_ids=group_ids)
    check_rank("log_likelihood", log_likelihood, 1, "[M]")
    check_float(xp, "log_likelihood", log_likelihood)
    m = log_likelihood.shape[0]
    if group_ids is not None:
        check_ids(xp, "group_ids", group_ids, m, "[M]")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not temperature > 0
    ):
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    check_finite(xp, "log_likelihood", log_likelihood, None)
    gidx, num = group_index(xp, group_ids, m, array_api_compat.device(log_likelihood))
    z = xp.astype(log_likelihood, compute_dtype(xp, log_likelihood.dtype)) / temperature
    return xp.astype(_group_softmax(xp, z, gidx, num), log_likelihood.dtype)


def _ess(xp: Any, w: Array, gidx: Array, num: int) -> tuple[Array, Array]:
    """Per-segment ESS ``1 / sum w^2`` and the non-empty-segment indicator."""
    sq = segment_sum(w * w, gidx, num)
    present = sq > 0
    ess = xp.where(present, 1.0 / xp.where(present, sq, xp.ones_like(sq)), xp.zeros_like(sq))
    return ess, present


def effective_sample_size(
    weights: Array, group_ids: Array | None = None, *, reduce: str = "mean"
) -> Array:
    r"""Effective sample size of the weights of each group, :math:`1 / \sum_{k\in g} w_k^2`.

    It is ``|g|`` for uniform weights and 1 when a group's weight has collapsed onto one
    trajectory: the number every HAEPO implementation reports to watch for collapse.

    Args:
      weights: ``[M]`` weights summing to 1 in each group.
      group_ids: ``[M]`` integer labels; ``None`` means one group.
      reduce: ``"mean"`` (0-d mean over groups, the default) or ``"none"`` (``[G]``, groups in
        sorted label order; concrete ``group_ids`` only).

    Example:
      >>> import numpy as np
      >>> from haepo_core import effective_sample_size
      >>> float(effective_sample_size(np.array([0.5, 0.5, 1.0, 0.0]), np.array([0, 0, 1, 1])))
      1.5
    """
    xp = get_namespace(weights=weights, group_ids=group_ids)
    check_rank("weights", weights, 1, "[M]")
    check_float(xp, "weights", weights)
    m = weights.shape[0]
    if group_ids is not None:
        check_ids(xp, "group_ids", group_ids, m, "[M]")
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce: expected 'mean' or 'none', got {reduce!r}")
    check_finite(xp, "weights", weights, None)
    gidx, num = group_index(xp, group_ids, m, array_api_compat.device(weights))
    ess, present = _ess(xp, weights, gidx, num)
    if reduce == "none":
        return ess
    return xp.sum(ess) / xp.sum(xp.astype(present, ess.dtype))
