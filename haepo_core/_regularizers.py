"""Per-step regularizers: exact entropy and KL from logits, and the k1/k2/k3 KL estimators."""

from __future__ import annotations

from typing import Any

from ._namespace import Array, compute_dtype, get_namespace, stop_gradient
from ._objective import kl_steps
from ._validation import KL_ESTIMATORS, check_float, check_shape

__all__ = ["entropy_from_logits", "kl_estimate", "kl_from_logits", "log_softmax"]


def _finite_or_zero(xp: Any, x: Array) -> Array:
    return xp.where(xp.isfinite(x), x, xp.zeros_like(x))


def log_softmax(logits: Array, axis: int = -1) -> Array:
    """Numerically stable ``log_softmax`` along ``axis`` (the shift by the max is detached)."""
    xp = get_namespace(logits=logits)
    peak = stop_gradient(xp.max(logits, axis=axis, keepdims=True))
    peak = _finite_or_zero(xp, peak)  # a row of all -inf stays -inf instead of NaN
    shifted = logits - peak
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def _check_logits(xp: Any, name: str, logits: Array) -> None:
    check_float(xp, name, logits)
    if logits.ndim < 1:
        raise ValueError(f"{name}: expected at least 1 dimension [..., V], got a 0-d array")


def entropy_from_logits(logits: Array, axis: int = -1) -> Array:
    r"""Exact entropy of the categorical distribution given by ``logits``.

    .. math:: H = -\sum_a \pi(a) \log \pi(a), \quad \pi = \mathrm{softmax}(\text{logits})

    Actions with ``-inf`` logits (masked vocabulary) contribute 0, not NaN.

    Args:
      logits: ``[..., V]`` floating (e.g. ``[M, T, V]``); float16/bfloat16 compute in float32.
      axis: the action axis.

    Returns:
      ``[...]`` (the input shape without ``axis``), in the dtype the computation ran in
      (float32 at least).

    Example:
      >>> import numpy as np
      >>> from haepo_core import entropy_from_logits
      >>> np.round(entropy_from_logits(np.zeros((2, 4))), 4)
      array([1.3863, 1.3863])
    """
    xp = get_namespace(logits=logits)
    _check_logits(xp, "logits", logits)
    x = xp.astype(logits, compute_dtype(xp, logits.dtype))
    lsm = log_softmax(x, axis=axis)
    p = xp.exp(lsm)
    return -xp.sum(p * _finite_or_zero(xp, lsm), axis=axis)


def kl_from_logits(logits: Array, ref_logits: Array, axis: int = -1) -> Array:
    r"""Exact per-step KL divergence from the reference policy, :math:`KL(\pi \| \pi_{ref})`.

    .. math:: KL = \sum_a \pi(a) \left(\log \pi(a) - \log \pi_{ref}(a)\right)

    ``ref_logits`` is a constant (frozen previous policy): no gradient flows into it.

    Args:
      logits: ``[..., V]`` floating logits of the current policy.
      ref_logits: ``[..., V]`` logits of the reference policy, same shape.
      axis: the action axis.

    Returns:
      ``[...]`` KL per step (>= 0), float32 at least.

    Example:
      >>> import numpy as np
      >>> from haepo_core import kl_from_logits
      >>> round(float(kl_from_logits(np.log([0.5, 0.5]), np.log([0.25, 0.75]))), 6)
      0.143841
    """
    xp = get_namespace(logits=logits, ref_logits=ref_logits)
    _check_logits(xp, "logits", logits)
    _check_logits(xp, "ref_logits", ref_logits)
    check_shape("ref_logits", ref_logits, tuple(logits.shape), "[..., V] (same as logits)")
    cdt = compute_dtype(xp, logits.dtype)
    lsm = log_softmax(xp.astype(logits, cdt), axis=axis)
    ref = log_softmax(stop_gradient(xp.astype(ref_logits, cdt)), axis=axis)
    p = xp.exp(lsm)
    # Where pi(a) = 0 the reference is replaced by 0 before subtracting: an action masked in
    # both policies would otherwise give -inf - (-inf) = NaN (and a NumPy RuntimeWarning).
    diff = lsm - xp.where(p > 0, ref, xp.zeros_like(ref))
    # pi(a) = 0 terms are 0 whatever the reference says (0 * inf would be NaN).
    terms = xp.where(p > 0, p * _finite_or_zero(xp, diff), xp.zeros_like(p))
    # pi(a) > 0 where pi_ref(a) = 0: the KL really is +inf; keep it visible.
    inf_terms = xp.logical_and(p > 0, xp.isinf(diff))
    kl = xp.sum(terms, axis=axis)
    return xp.where(xp.any(inf_terms, axis=axis), xp.full_like(kl, float("inf")), kl)


def kl_estimate(logp: Array, ref_logp: Array, estimator: str = "k3") -> Array:
    r"""Per-step sample estimate of :math:`KL(\pi_\theta \| \pi_{ref})` from log-probs.

    With :math:`r = \log\pi_{ref}(a) - \log\pi_\theta(a)` for the action taken:
    ``k1 = -r``, ``k2 = r^2 / 2``, ``k3 = e^r - r - 1`` (unbiased, always >= 0; the default).
    ``ref_logp`` is a constant: no gradient flows into it.

    Args:
      logp: ``[...]`` floating log-probs of the taken actions under the current policy.
      ref_logp: same shape, under the frozen reference policy.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``.

    Returns:
      Same shape as ``logp``, float32 at least.

    Example:
      >>> import numpy as np
      >>> from haepo_core import kl_estimate
      >>> np.round(kl_estimate(np.array([-1.0, -2.0]), np.array([-1.0, -1.0])), 4)
      array([0.    , 0.7183])
    """
    xp = get_namespace(logp=logp, ref_logp=ref_logp)
    check_float(xp, "logp", logp)
    check_float(xp, "ref_logp", ref_logp)
    check_shape("ref_logp", ref_logp, tuple(logp.shape), "same as logp")
    if estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"estimator: expected one of {', '.join(map(repr, KL_ESTIMATORS))}, got {estimator!r}"
        )
    cdt = compute_dtype(xp, logp.dtype)
    return kl_steps(xp, xp.astype(logp, cdt), stop_gradient(xp.astype(ref_logp, cdt)), estimator)
