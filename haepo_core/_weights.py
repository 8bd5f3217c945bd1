"""Plackett-Luce (top-1) weights inside each group, and their effective sample size."""

from __future__ import annotations

import array_api_compat

from ._namespace import Array, compute_dtype, get_namespace
from ._objective import Primitives, group_ess, scores
from ._segments import group_index
from ._validation import check_finite, check_float, check_ids, check_rank, check_trajectories

__all__ = ["effective_sample_size", "plackett_luce_weights"]


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
    P = Primitives(xp)
    L = xp.astype(log_likelihood, compute_dtype(xp, log_likelihood.dtype))
    _, w = P.plackett_luce_term(scores(P, L, gidx, num, temperature), xp.zeros_like(L), gidx, num)
    return xp.astype(w, log_likelihood.dtype)


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
    check_trajectories("weights", m, "[M]")  # no group to average over
    if group_ids is not None:
        check_ids(xp, "group_ids", group_ids, m, "[M]")
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce: expected 'mean' or 'none', got {reduce!r}")
    check_finite(xp, "weights", weights, None)
    gidx, num = group_index(xp, group_ids, m, array_api_compat.device(weights))
    ess, present = group_ess(Primitives(xp), weights, gidx, num)
    if reduce == "none":
        return ess
    return xp.sum(ess) / xp.sum(xp.astype(present, ess.dtype))
