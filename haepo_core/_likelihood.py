"""Cumulative log-likelihood of each trajectory, L_k = sum_t mask[k, t] * logp[k, t]."""

from __future__ import annotations

from ._namespace import Array, compute_dtype, get_namespace
from ._validation import check_finite, check_float, check_mask, check_rank

__all__ = ["trajectory_log_likelihood"]


def trajectory_log_likelihood(
    logp: Array, mask: Array | None = None, *, length_normalize: bool = False
) -> Array:
    r"""Sum of per-step log-probabilities of each trajectory.

    .. math::

        L_k = \sum_t \mathrm{mask}_{k,t}\, \log \pi_\theta(a_t \mid s_t)
        \qquad (\text{divided by } T_k = \textstyle\sum_t \mathrm{mask}_{k,t}
        \text{ when } \texttt{length\_normalize})

    Padding (``mask`` False) never reaches the result or its gradient, even when it holds NaN
    or inf: padded entries are replaced by 0 *before* the sum.

    Args:
      logp: ``[M, T]`` floating log-probabilities of the actions taken.
      mask: ``[M, T]`` bool (or 0/1) validity mask; ``None`` means every step is valid.
      length_normalize: divide each sum by its number of valid steps.

    Returns:
      ``[M]`` array, computed in float32 at least (float64 stays float64) and cast back to
      ``logp.dtype``.

    Example:
      >>> import numpy as np
      >>> from haepo_core import trajectory_log_likelihood
      >>> logp = np.log(np.array([[0.5, 0.5], [0.25, 1.0]]))
      >>> mask = np.array([[True, True], [True, False]])
      >>> np.round(trajectory_log_likelihood(logp, mask), 4)
      array([-1.3863, -1.3863])
    """
    xp = get_namespace(logp=logp, mask=mask)
    check_rank("logp", logp, 2, "[M, T]")
    check_float(xp, "logp", logp)
    valid = None if mask is None else check_mask(xp, "mask", mask, tuple(logp.shape))
    check_finite(xp, "logp", logp, valid)
    if not isinstance(length_normalize, bool):
        raise TypeError(f"length_normalize: expected a bool, got {type(length_normalize).__name__}")
    cdt = compute_dtype(xp, logp.dtype)
    x = xp.astype(logp, cdt)
    if valid is not None:
        x = xp.where(valid, x, xp.zeros_like(x))
    total = xp.sum(x, axis=1)
    if length_normalize:
        if valid is None:
            total = total / logp.shape[1]
        else:
            n = xp.sum(xp.astype(valid, cdt), axis=1)
            total = total / xp.where(n > 0, n, xp.ones_like(n))
    return xp.astype(total, logp.dtype)
