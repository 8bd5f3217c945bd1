"""Per-step log-prob, entropy and exact KL for the two policy heads of CleanRL's scripts.

Written once against the array API (torch and JAX arrays both work; autograd flows through):

- categorical (discrete actions, ``logits [N, A]``): exact entropy and exact
  ``KL(pi || pi_ref)`` from the logits, via :mod:`haepo_core`;
- sticky categorical (discrete actions with temporally correlated exploration):
  :func:`sticky_logits` mixes a categorical with "repeat the previous action";
- diagonal Gaussian (continuous actions, ``mean [N, D]``, ``log_std [N, D]`` or ``[D]``):
  closed-form entropy and KL, log-densities summed over the ``D`` action dimensions.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import array_api_compat

from haepo_core import entropy_from_logits, kl_from_logits
from haepo_core._namespace import device_of, get_namespace, is_concrete, stop_gradient
from haepo_core._regularizers import log_softmax

__all__ = [
    "StepTerms",
    "categorical_terms",
    "gaussian_entropy",
    "gaussian_kl",
    "gaussian_log_prob",
    "gaussian_terms",
    "sticky_logits",
]

Array = Any
_LOG_2PI = math.log(2.0 * math.pi)


class StepTerms(NamedTuple):
    """Per-step quantities the HAEPO loss needs, each ``[N]``.

    Attributes:
      logp: log-prob (log-density for Gaussian heads) of the action taken.
      entropy: exact entropy of the policy at that step.
      kl: exact ``KL(pi || pi_ref)`` at that step, ``None`` without a reference.
    """

    logp: Array
    entropy: Array
    kl: Array | None


def _float(xp: Any, name: str, x: Array) -> None:
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name}: expected a real floating dtype, got {x.dtype}")


def categorical_terms(logits: Array, actions: Array, ref_logits: Array | None = None) -> StepTerms:
    r"""Log-prob of the taken action, exact entropy and exact KL of a categorical policy.

    .. math::

        \log\pi(a) = \text{logits}_a - \operatorname{logsumexp}(\text{logits}),\quad
        H = -\sum_a \pi(a)\log\pi(a),\quad
        KL = \sum_a \pi(a)\,(\log\pi(a) - \log\pi_{ref}(a))

    Args:
      logits: ``[N, A]`` floating logits of the current policy.
      actions: ``[N]`` integer actions in ``0..A-1``.
      ref_logits: ``[N, A]`` logits of the frozen reference policy (a constant), or ``None``.

    Returns:
      :class:`StepTerms` of ``[N]`` arrays (float32 at least).

    Example:
      >>> import numpy as np
      >>> from haepo_adapters.cleanrl import categorical_terms
      >>> t = categorical_terms(np.log([[0.5, 0.5]]), np.array([0]), np.log([[0.25, 0.75]]))
      >>> round(float(t.logp[0]), 4), round(float(t.entropy[0]), 4), round(float(t.kl[0]), 4)
      (-0.6931, 0.6931, 0.1438)
    """
    xp = get_namespace(logits=logits, actions=actions, ref_logits=ref_logits)
    _float(xp, "logits", logits)
    if logits.ndim != 2:
        raise ValueError(
            f"logits: expected a 2-d array of shape [N, A], got shape {tuple(logits.shape)}"
        )
    n, a = logits.shape
    if not xp.isdtype(actions.dtype, "integral"):
        raise TypeError(f"actions: expected an integer dtype, got {actions.dtype}")
    if tuple(actions.shape) != (n,):
        raise ValueError(f"actions: expected shape [N] = ({n},), got {tuple(actions.shape)}")
    if ref_logits is not None:
        _float(xp, "ref_logits", ref_logits)
        if tuple(ref_logits.shape) != (n, a):
            raise ValueError(
                f"ref_logits: expected shape [N, A] = {(n, a)}, got {tuple(ref_logits.shape)}"
            )
    if n and is_concrete(actions):
        lo, hi = int(xp.min(actions)), int(xp.max(actions))
        if lo < 0 or hi >= a:
            raise ValueError(f"actions: expected values in 0..A-1 = 0..{a - 1}, got {lo}..{hi}")
    x = logits if logits.dtype in (xp.float32, xp.float64) else xp.astype(logits, xp.float32)
    peak = stop_gradient(xp.max(x, axis=-1, keepdims=True))
    shifted = x - peak
    lsm = shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    # torch gathers with int64 indices only; JAX keeps its own int dtype (int32 without x64).
    idx = actions if array_api_compat.is_jax_array(actions) else xp.astype(actions, xp.int64)
    idx = idx[:, None]
    logp = xp.take_along_axis(lsm, idx, axis=-1)[:, 0]
    ent = entropy_from_logits(x, axis=-1)
    kl = None if ref_logits is None else kl_from_logits(x, ref_logits, axis=-1)
    return StepTerms(logp=logp, entropy=ent, kl=kl)


def sticky_logits(logits: Array, repeat_logit: Array, prev_actions: Array) -> Array:
    r"""Log-probs of a *sticky* categorical policy: repeat the previous action with prob. ``rho``.

    .. math::

        \pi(a \mid s, a_{prev}) = (1 - \rho(s))\,\mathrm{softmax}(\text{logits}(s))_a
            + \rho(s)\,[a = a_{prev}], \qquad \rho(s) = \sigma(\text{repeat\_logit}(s))

    At the first step of an episode (``prev_actions < 0``) there is no previous action and
    :math:`\pi = \mathrm{softmax}(\text{logits})`. The result is a normalized ``[N, A]`` array of
    log-probs, so it serves as the logits of :func:`categorical_terms` (exact log-prob, entropy
    and KL of the mixture) and of sampling. The policy stays a Markov policy of
    :math:`(s, a_{prev})` and its log-probs are exact, so HAEPO's objective is unchanged; what
    changes is exploration. A uniform policy dithers, while a sticky one keeps an action for
    :math:`1 / (1 - \rho)` steps on average, which reaches far more states in tasks that reward
    sustained pushes (Acrobot's swing-up). Both ``logits`` and ``repeat_logit`` are learned,
    so the policy can unlearn the stickiness where it does not pay.

    Args:
      logits: ``[N, A]`` floating logits of the base categorical.
      repeat_logit: ``[N]`` floating logits of the repeat probability ``rho``.
      prev_actions: ``[N]`` integer previous actions in ``-1..A-1``; negative means none.

    Returns:
      ``[N, A]`` log-probs of the mixture, in the dtype of ``logits`` (float32 at least).

    Example:
      >>> import numpy as np
      >>> from haepo_adapters.cleanrl import sticky_logits
      >>> lp = sticky_logits(np.zeros((2, 2)), np.zeros(2), np.array([1, -1]))
      >>> np.round(np.exp(lp), 3).tolist()  # rho = 0.5: repeat action 1; no previous action
      [[0.25, 0.75], [0.5, 0.5]]
    """
    xp = get_namespace(logits=logits, repeat_logit=repeat_logit, prev_actions=prev_actions)
    _float(xp, "logits", logits)
    if logits.ndim != 2:
        raise ValueError(
            f"logits: expected a 2-d array of shape [N, A], got shape {tuple(logits.shape)}"
        )
    n, a = logits.shape
    _float(xp, "repeat_logit", repeat_logit)
    if tuple(repeat_logit.shape) != (n,):
        raise ValueError(
            f"repeat_logit: expected shape [N] = ({n},), got {tuple(repeat_logit.shape)}"
        )
    if not xp.isdtype(prev_actions.dtype, "integral"):
        raise TypeError(f"prev_actions: expected an integer dtype, got {prev_actions.dtype}")
    if tuple(prev_actions.shape) != (n,):
        raise ValueError(
            f"prev_actions: expected shape [N] = ({n},), got {tuple(prev_actions.shape)}"
        )
    if n and is_concrete(prev_actions):
        hi = int(xp.max(prev_actions))
        if hi >= a:
            raise ValueError(
                f"prev_actions: expected values in -1..A-1 = -1..{a - 1} (negative: none), "
                f"got a maximum of {hi}"
            )
    x = logits if logits.dtype in (xp.float32, xp.float64) else xp.astype(logits, xp.float32)
    g = xp.astype(repeat_logit, x.dtype)[:, None]
    zero = xp.zeros_like(g)
    log_rho = -xp.logaddexp(zero, -g)  # log sigmoid(g), stable for either sign
    log_keep = -xp.logaddexp(zero, g)  # log (1 - sigmoid(g))
    lsm = log_softmax(x, axis=-1)
    mixed = log_keep + lsm
    ids = xp.arange(a, device=device_of(x))
    prev = xp.astype(prev_actions, ids.dtype)[:, None]
    repeat = ids[None, :] == prev
    mixed = xp.where(repeat, xp.logaddexp(mixed, log_rho), mixed)
    return xp.where(prev >= 0, mixed, lsm)


def _gauss_args(
    xp: Any, mean: Array, log_std: Array, name_m: str = "mean", name_s: str = "log_std"
) -> None:
    _float(xp, name_m, mean)
    _float(xp, name_s, log_std)
    if mean.ndim != 2:
        raise ValueError(
            f"{name_m}: expected a 2-d array of shape [N, D], got shape {tuple(mean.shape)}"
        )
    d = mean.shape[1]
    if tuple(log_std.shape) not in ((d,), tuple(mean.shape)):
        raise ValueError(
            f"{name_s}: expected shape [N, D] = {tuple(mean.shape)} or [D] = ({d},), got "
            f"{tuple(log_std.shape)}"
        )


def gaussian_log_prob(mean: Array, log_std: Array, actions: Array) -> Array:
    r"""Log-density of ``actions`` under a diagonal Gaussian, summed over action dimensions.

    .. math:: \log\pi(a) = -\sum_{d}\Big(\frac{(a_d-\mu_d)^2}{2\sigma_d^2} + \log\sigma_d
              + \tfrac12\log 2\pi\Big)

    Args:
      mean: ``[N, D]``; log_std: ``[N, D]`` or ``[D]`` (state-independent, CleanRL's
        ``actor_logstd``); actions: ``[N, D]`` floating.

    Returns:
      ``[N]`` log-densities (may be positive).

    Example:
      >>> import numpy as np
      >>> from haepo_adapters.cleanrl import gaussian_log_prob
      >>> round(float(gaussian_log_prob(np.zeros((1, 2)), np.zeros(2), np.zeros((1, 2)))[0]), 4)
      -1.8379
    """
    xp = get_namespace(mean=mean, log_std=log_std, actions=actions)
    _gauss_args(xp, mean, log_std)
    _float(xp, "actions", actions)
    if tuple(actions.shape) != tuple(mean.shape):
        raise ValueError(
            f"actions: expected shape [N, D] = {tuple(mean.shape)}, got {tuple(actions.shape)}"
        )
    z = (actions - mean) * xp.exp(-log_std)
    per_dim = -0.5 * z * z - log_std - 0.5 * _LOG_2PI
    return xp.sum(per_dim, axis=-1)


def gaussian_entropy(log_std: Array, n: int | None = None) -> Array:
    r"""Closed-form entropy of a diagonal Gaussian, summed over action dimensions.

    .. math:: H = \sum_d \big(\log\sigma_d + \tfrac12 (1 + \log 2\pi)\big)

    Args:
      log_std: ``[N, D]``, or ``[D]`` with ``n`` given to broadcast to ``[n]``.
      n: number of steps when ``log_std`` is ``[D]``.

    Returns:
      ``[N]`` (or ``[n]``).

    Example:
      >>> import numpy as np
      >>> from haepo_adapters.cleanrl import gaussian_entropy
      >>> round(float(gaussian_entropy(np.zeros((1, 1)))[0]), 4)
      1.4189
    """
    xp = get_namespace(log_std=log_std)
    _float(xp, "log_std", log_std)
    if log_std.ndim == 1:
        if n is None:
            raise ValueError("n: expected the number of steps when log_std is [D], got None")
        log_std = xp.broadcast_to(log_std[None, :], (n, log_std.shape[0]))
    elif log_std.ndim != 2:
        raise ValueError(f"log_std: expected shape [N, D] or [D], got shape {tuple(log_std.shape)}")
    return xp.sum(log_std + 0.5 * (1.0 + _LOG_2PI), axis=-1)


def gaussian_kl(mean: Array, log_std: Array, ref_mean: Array, ref_log_std: Array) -> Array:
    r"""Closed-form ``KL(N(mean, std) || N(ref_mean, ref_std))``, summed over action dims.

    .. math:: KL = \sum_d \Big(\log\frac{\sigma^{ref}_d}{\sigma_d}
              + \frac{\sigma_d^2 + (\mu_d - \mu^{ref}_d)^2}{2 (\sigma^{ref}_d)^2}
              - \tfrac12\Big)

    The reference arguments are constants (no gradient flows into them).

    Args:
      mean, ref_mean: ``[N, D]``; log_std, ref_log_std: ``[N, D]`` or ``[D]``.

    Returns:
      ``[N]`` KL per step (>= 0).

    Example:
      >>> import numpy as np
      >>> from haepo_adapters.cleanrl import gaussian_kl
      >>> round(float(gaussian_kl(np.ones((1, 1)), np.zeros(1), np.zeros((1, 1)),
      ...                         np.zeros(1))[0]), 4)
      0.5
    """
    xp = get_namespace(mean=mean, log_std=log_std, ref_mean=ref_mean, ref_log_std=ref_log_std)
    _gauss_args(xp, mean, log_std)
    _gauss_args(xp, ref_mean, ref_log_std, "ref_mean", "ref_log_std")
    if tuple(ref_mean.shape) != tuple(mean.shape):
        raise ValueError(
            f"ref_mean: expected shape [N, D] = {tuple(mean.shape)}, got {tuple(ref_mean.shape)}"
        )
    ref_mean = stop_gradient(ref_mean)
    ref_log_std = stop_gradient(ref_log_std)
    diff = mean - ref_mean
    var_ratio = xp.exp(2.0 * (log_std - ref_log_std))
    per_dim = (
        ref_log_std - log_std + 0.5 * (var_ratio + diff * diff * xp.exp(-2.0 * ref_log_std)) - 0.5
    )
    per_dim = per_dim + xp.zeros_like(mean)  # broadcast a [D] log_std to [N, D]
    return xp.sum(per_dim, axis=-1)


def gaussian_terms(
    mean: Array,
    log_std: Array,
    actions: Array,
    ref_mean: Array | None = None,
    ref_log_std: Array | None = None,
) -> StepTerms:
    """Log-density, closed-form entropy and closed-form KL of a diagonal Gaussian policy.

    Args:
      mean: ``[N, D]``; log_std: ``[N, D]`` or ``[D]``; actions: ``[N, D]``;
      ref_mean, ref_log_std: the frozen reference's parameters (give both or neither).

    Returns:
      :class:`StepTerms` of ``[N]`` arrays.

    Example:
      >>> import numpy as np
      >>> from haepo_adapters.cleanrl import gaussian_terms
      >>> t = gaussian_terms(np.zeros((3, 2)), np.zeros(2), np.zeros((3, 2)))
      >>> t.logp.shape, t.entropy.shape, t.kl is None
      ((3,), (3,), True)
    """
    if (ref_mean is None) != (ref_log_std is None):
        raise ValueError("ref_mean, ref_log_std: expected both or neither, got only one")
    logp = gaussian_log_prob(mean, log_std, actions)
    ent = (
        gaussian_entropy(log_std, n=mean.shape[0])
        if log_std.ndim == 1
        else gaussian_entropy(log_std)
    )
    kl = None if ref_mean is None else gaussian_kl(mean, log_std, ref_mean, ref_log_std)
    return StepTerms(logp=logp, entropy=ent, kl=kl)
