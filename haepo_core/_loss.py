"""The HAEPO objective: padded, packed and from-logits entry points over one shared core."""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import array_api_compat

from ._namespace import (
    Array,
    compute_dtype,
    get_namespace,
    stop_gradient,
    values_readable,
)
from ._regularizers import _kl_steps, entropy_from_logits, kl_from_logits, log_softmax
from ._returns import _normalize
from ._segments import group_index, segment_sum
from ._validation import (
    check_finite,
    check_float,
    check_ids,
    check_mask,
    check_options,
    check_rank,
    check_returns,
    check_shape,
)
from ._weights import _ess, _group_softmax

__all__ = ["HAEPOOutput", "haepo_loss", "haepo_loss_from_logits", "haepo_loss_packed"]


class HAEPOOutput(NamedTuple):
    """What every HAEPO loss returns (a NamedTuple, hence a JAX pytree and torch.compile-able).

    Attributes:
      loss: 0-d, the scalar to minimize, ``J_PL - entropy_coef * H + kl_coef * KL``.
      weights: ``[M]`` Plackett-Luce weights ``w_k`` (differentiable).
      normalized_returns: ``[M]`` ``R~_k`` (constants).
      log_likelihood: ``[M]`` ``L_k`` as fed to the softmax before the temperature (after
        length normalization when it is on).
      stats: dict of detached 0-d arrays: ``policy_loss``, ``entropy``, ``kl``, ``ess`` (mean
        over groups of ``1 / sum w^2``), ``ess_min``, ``max_weight``, ``weighted_return``
        (mean over groups of ``sum_k w_k R_k``, raw returns), ``num_groups``.
    """

    loss: Array
    weights: Array
    normalized_returns: Array
    log_likelihood: Array
    stats: dict[str, Array]


class _Options(NamedTuple):
    entropy_coef: Any
    kl_coef: Any
    kl_estimator: str
    normalize_returns: str
    temperature: Any
    length_normalize: bool
    eps: float


def _options(**kw: Any) -> _Options:
    check_options(**kw)
    return _Options(**kw)


def _positive(value: Any) -> bool:
    """Whether a coefficient is a plain number > 0 (array coefficients, possibly traced or
    being differentiated, are not inspected: a missing input then fails loudly downstream)."""
    return isinstance(value, numbers.Real) and float(value) > 0


def _require_inputs(opts: _Options, has_entropy: bool, has_kl: bool) -> None:
    if _positive(opts.entropy_coef) and not has_entropy:
        raise ValueError(
            f"entropy: expected a per-step entropy array since entropy_coef = {opts.entropy_coef} "
            "> 0, got None"
        )
    if _positive(opts.kl_coef) and not has_kl:
        raise ValueError(
            f"ref_logp: expected reference log-probs (or ref_logits) since kl_coef = "
            f"{opts.kl_coef} > 0, got None"
        )


def _check_nonempty(xp: Any, counts: Array, what: str) -> None:
    if not values_readable(counts):
        return
    empty = counts == 0
    if bool(xp.any(empty)):
        first = int(xp.argmax(xp.astype(empty, xp.int32)))
        n = int(xp.sum(xp.astype(empty, xp.int32)))
        raise ValueError(
            f"{what}: expected every trajectory to have at least one valid step, got {n} "
            f"empty trajectories (first: trajectory {first})"
        )


def _objective(
    xp: Any,
    *,
    L: Array,
    n_k: Array,
    returns: Array,
    group_ids: Array | None,
    ent_sum: Array | None,
    kl_sum: Array | None,
    n_steps: Array,
    opts: _Options,
    out_dtype: Any,
) -> HAEPOOutput:
    """Group softmax, normalized returns, regularizers and stats from per-trajectory sums.

    ``L`` and ``n_k`` are ``[M]`` in the compute dtype; ``ent_sum``/``kl_sum`` are the sums of
    the per-step regularizers over valid steps; ``n_steps`` the number of valid steps.
    """
    m = L.shape[0]
    cdt = L.dtype
    gidx, num = group_index(xp, group_ids, m, array_api_compat.device(L))
    L_eff = L / n_k if opts.length_normalize else L
    w = _group_softmax(xp, L_eff / opts.temperature, gidx, num)

    r = xp.astype(returns, cdt)
    r_norm = stop_gradient(_normalize(xp, r, gidx, num, opts.normalize_returns, opts.eps))
    counts = segment_sum(xp.ones_like(L), gidx, num)
    n_groups = xp.sum(xp.astype(counts > 0, cdt))

    policy = -xp.sum(w * r_norm) / n_groups
    zero = xp.zeros((), dtype=cdt, device=array_api_compat.device(L))
    entropy = zero if ent_sum is None else ent_sum / n_steps
    kl = zero if kl_sum is None else kl_sum / n_steps
    loss = policy - opts.entropy_coef * entropy + opts.kl_coef * kl

    w_const = stop_gradient(w)
    ess, present = _ess(xp, w_const, gidx, num)
    ess_min = xp.min(xp.where(present, ess, xp.full_like(ess, float("inf"))))
    stats = {
        "policy_loss": policy,
        "entropy": entropy,
        "kl": kl,
        "ess": xp.sum(ess) / n_groups,
        "ess_min": ess_min,
        "max_weight": xp.max(w_const),
        "weighted_return": xp.sum(w_const * r) / n_groups,
        "num_groups": n_groups,
    }
    stats = {k: xp.astype(stop_gradient(v), out_dtype) for k, v in stats.items()}
    return HAEPOOutput(
        loss=xp.astype(loss, out_dtype),
        weights=xp.astype(w, out_dtype),
        normalized_returns=xp.astype(r_norm, out_dtype),
        log_likelihood=xp.astype(L_eff, out_dtype),
        stats=stats,
    )


def _check_group_ids(xp: Any, group_ids: Array | None, m: int) -> None:
    if group_ids is not None:
        check_ids(xp, "group_ids", group_ids, m, "[M]")


def _padded(
    xp: Any,
    logp: Array,
    valid: Array,
    returns: Array,
    group_ids: Array | None,
    ent_steps: Array | None,
    kl_steps: Array | None,
    opts: _Options,
) -> HAEPOOutput:
    """Shared padded path. ``logp`` is sanitized, in the compute dtype; step arrays likewise."""
    cdt = logp.dtype
    vf = xp.astype(valid, cdt)
    n_k = xp.sum(vf, axis=1)
    return _objective(
        xp,
        L=xp.sum(logp, axis=1),
        n_k=n_k,
        returns=returns,
        group_ids=group_ids,
        ent_sum=None if ent_steps is None else xp.sum(ent_steps),
        kl_sum=None if kl_steps is None else xp.sum(kl_steps),
        n_steps=xp.sum(n_k),
        opts=opts,
        out_dtype=cdt,
    )


def _sanitize(xp: Any, x: Array, valid: Array, cdt: Any) -> Array:
    # Replace padding *before* any arithmetic: NaN/inf there must reach neither the value nor
    # the gradient (where() after an exp would still send 0 * inf = NaN back through exp).
    x = xp.astype(x, cdt)
    return xp.where(valid, x, xp.zeros_like(x))


def haepo_loss(
    logp: Array,
    returns: Array,
    mask: Array | None = None,
    *,
    group_ids: Array | None = None,
    entropy: Array | None = None,
    ref_logp: Array | None = None,
    entropy_coef: float = 0.0,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    normalize_returns: str = "zscore",
    temperature: float = 1.0,
    length_normalize: bool = False,
    eps: float = 1e-8,
) -> HAEPOOutput:
    r"""The HAEPO loss on padded trajectories.

    .. math::

        L_k &= \sum_t m_{k,t} \log\pi_\theta(a_{k,t} \mid s_{k,t})
            \quad(\div T_k \text{ if length\_normalize}) \\
        w_k &= \operatorname{softmax}_{j \in g(k)}(L_j / \tau)_k \\
        J_{PL} &= -\frac{1}{\#\text{groups}} \sum_g \sum_{k \in g} w_k \tilde R_k \\
        \text{loss} &= J_{PL} - \lambda\, \overline{H} + \beta\, \overline{KL}

    with :math:`\tilde R` the per-group normalized returns (constants), :math:`\overline{H}` and
    :math:`\overline{KL}` token means over valid steps. The gradient flows through ``w``:
    :math:`\partial J_{PL}/\partial L_k = -(w_k/\tau)(\tilde R_k - \bar R_g)/\#\text{groups}`
    with :math:`\bar R_g = \sum_{j\in g} w_j \tilde R_j`.

    Args:
      logp: ``[M, T]`` floating log-probs (log-densities for continuous actions) of the actions
        taken; padding may hold anything, NaN and inf included.
      returns: ``[M]`` real returns ``R_k`` (integers allowed).
      mask: ``[M, T]`` bool (or 0/1) validity mask; ``None`` = all steps valid. Each trajectory
        needs at least one valid step.
      group_ids: ``[M]`` integer group labels (any values); ``None`` = one group of all ``M``.
      entropy: ``[M, T]`` per-step policy entropy (required when ``entropy_coef > 0``).
      ref_logp: ``[M, T]`` per-step log-probs under the frozen reference policy (a constant;
        required when ``kl_coef > 0``).
      entropy_coef: ``lambda >= 0``.
      kl_coef: ``beta >= 0``.
      kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (default, unbiased and >= 0).
      normalize_returns: ``"zscore"`` (default, population std), ``"center"`` or ``"none"``.
      temperature: ``tau > 0``; larger values flatten the weights.
      length_normalize: divide each ``L_k`` by its number of valid steps before the softmax
        (beyond the paper; guards against weight collapse on long horizons).
      eps: ``> 0``, guards the std of the returns only.

    Returns:
      :class:`HAEPOOutput`. Arrays are in the namespace, device and dtype of ``logp``;
      reductions run in float32 at least (float16/bfloat16 are upcast; float64 stays).

    Raises:
      ValueError / TypeError naming the argument for bad shapes, ranks, dtypes, options, NaN or
      inf at valid positions, empty trajectories, or arrays of different libraries. Value checks
      need concrete arrays: under ``jax.jit``/``torch.compile`` they are skipped and bad values
      propagate as NaN.

    Example:
      >>> import numpy as np
      >>> from haepo_core import haepo_loss
      >>> logp = np.log(np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.2]]))
      >>> mask = np.array([[True, True], [True, False], [True, True]])
      >>> out = haepo_loss(logp, np.array([1.0, 0.0, 2.0]), mask)
      >>> round(float(out.loss), 6), np.round(out.weights, 4)
      (0.88511, array([0.2101, 0.7563, 0.0336]))
    """
    xp = get_namespace(
        logp=logp,
        returns=returns,
        mask=mask,
        group_ids=group_ids,
        entropy=entropy,
        ref_logp=ref_logp,
    )
    check_rank("logp", logp, 2, "[M, T]")
    check_float(xp, "logp", logp)
    m, t = logp.shape
    check_returns(xp, "returns", returns, m)
    _check_group_ids(xp, group_ids, m)
    valid = (
        xp.ones((m, t), dtype=xp.bool, device=array_api_compat.device(logp))
        if mask is None
        else check_mask(xp, "mask", mask, (m, t))
    )
    for name, arr in (("entropy", entropy), ("ref_logp", ref_logp)):
        if arr is not None:
            check_float(xp, name, arr)
            check_shape(name, arr, (m, t), "[M, T] (same as logp)")
    opts = _options(
        entropy_coef=entropy_coef,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        normalize_returns=normalize_returns,
        temperature=temperature,
        length_normalize=length_normalize,
        eps=eps,
    )
    _require_inputs(opts, entropy is not None, ref_logp is not None)
    _check_nonempty(xp, xp.sum(xp.astype(valid, xp.int32), axis=1), "mask")
    check_finite(xp, "logp", logp, valid)
    check_finite(xp, "returns", returns, None)
    for name, arr in (("entropy", entropy), ("ref_logp", ref_logp)):
        if arr is not None:
            check_finite(xp, name, arr, valid)

    cdt = compute_dtype(xp, logp.dtype)
    x = _sanitize(xp, logp, valid, cdt)
    ent = None if entropy is None else _sanitize(xp, entropy, valid, cdt)
    kl = None
    if ref_logp is not None:
        ref = _sanitize(xp, stop_gradient(ref_logp), valid, cdt)
        kl = _kl_steps(xp, x, ref, kl_estimator)  # 0 at padding: there x = ref = 0
    out = _padded(xp, x, valid, returns, group_ids, ent, kl, opts)
    return _cast_output(xp, out, logp.dtype)


def _cast_output(xp: Any, out: HAEPOOutput, dtype: Any) -> HAEPOOutput:
    if out.loss.dtype == dtype:
        return out
    return HAEPOOutput(
        loss=xp.astype(out.loss, dtype),
        weights=xp.astype(out.weights, dtype),
        normalized_returns=xp.astype(out.normalized_returns, dtype),
        log_likelihood=xp.astype(out.log_likelihood, dtype),
        stats={k: xp.astype(v, dtype) for k, v in out.stats.items()},
    )


def haepo_loss_packed(
    logp: Array,
    segment_ids: Array,
    returns: Array,
    *,
    group_ids: Array | None = None,
    entropy: Array | None = None,
    ref_logp: Array | None = None,
    entropy_coef: float = 0.0,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    normalize_returns: str = "zscore",
    temperature: float = 1.0,
    length_normalize: bool = False,
    eps: float = 1e-8,
) -> HAEPOOutput:
    r"""The HAEPO loss on packed, padding-free steps.

    Same objective as :func:`haepo_loss`, with
    :math:`L_k = \sum_{i : \text{segment\_ids}_i = k} \text{logp}_i`: the cost grows with the
    number of steps ``N``, not with ``M * max(T_k)``. Steps of one trajectory need not be
    contiguous or ordered.

    Args:
      logp: ``[N]`` floating log-probs of every step of every trajectory.
      segment_ids: ``[N]`` integer trajectory index of each step, in ``0..M-1``; every
        trajectory needs at least one step.
      returns: ``[M]`` real returns.
      group_ids, entropy (``[N]``), ref_logp (``[N]``) and the keywords: as in
        :func:`haepo_loss`.

    Returns:
      :class:`HAEPOOutput`, as :func:`haepo_loss`. Under ``jax.jit`` ids out of range are not
      checked (JAX drops them); check them eagerly first.

    Example:
      >>> import numpy as np
      >>> from haepo_core import haepo_loss_packed
      >>> logp = np.log(np.array([0.5, 0.5, 0.9, 0.2, 0.2]))
      >>> out = haepo_loss_packed(logp, np.array([0, 0, 1, 2, 2]), np.array([1.0, 0.0, 2.0]))
      >>> round(float(out.loss), 6)
      0.88511
    """
    xp = get_namespace(
        logp=logp,
        segment_ids=segment_ids,
        returns=returns,
        group_ids=group_ids,
        entropy=entropy,
        ref_logp=ref_logp,
    )
    check_rank("logp", logp, 1, "[N]")
    check_float(xp, "logp", logp)
    n = logp.shape[0]
    check_ids(xp, "segment_ids", segment_ids, n, "[N], same as logp")
    check_rank("returns", returns, 1, "[M]")
    m = returns.shape[0]
    check_returns(xp, "returns", returns, m)
    _check_group_ids(xp, group_ids, m)
    for name, arr in (("entropy", entropy), ("ref_logp", ref_logp)):
        if arr is not None:
            check_float(xp, name, arr)
            check_shape(name, arr, (n,), "[N] (same as logp)")
    opts = _options(
        entropy_coef=entropy_coef,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        normalize_returns=normalize_returns,
        temperature=temperature,
        length_normalize=length_normalize,
        eps=eps,
    )
    _require_inputs(opts, entropy is not None, ref_logp is not None)
    if values_readable(segment_ids) and n > 0:
        lo, hi = int(xp.min(segment_ids)), int(xp.max(segment_ids))
        if lo < 0 or hi >= m:
            raise ValueError(
                f"segment_ids: expected values in 0..M-1 = 0..{m - 1}, got values in {lo}..{hi}"
            )
    cdt = compute_dtype(xp, logp.dtype)
    ones = xp.ones(n, dtype=cdt, device=array_api_compat.device(logp))
    n_k = segment_sum(ones, segment_ids, m)
    _check_nonempty(xp, n_k, "segment_ids")
    check_finite(xp, "logp", logp, None)
    check_finite(xp, "returns", returns, None)
    for name, arr in (("entropy", entropy), ("ref_logp", ref_logp)):
        if arr is not None:
            check_finite(xp, name, arr, None)

    x = xp.astype(logp, cdt)
    kl_sum = None
    if ref_logp is not None:
        ref = stop_gradient(xp.astype(ref_logp, cdt))
        kl_sum = xp.sum(_kl_steps(xp, x, ref, kl_estimator))
    out = _objective(
        xp,
        L=segment_sum(x, segment_ids, m),
        n_k=n_k,
        returns=returns,
        group_ids=group_ids,
        ent_sum=None if entropy is None else xp.sum(xp.astype(entropy, cdt)),
        kl_sum=kl_sum,
        n_steps=xp.asarray(float(n), dtype=cdt, device=array_api_compat.device(logp)),
        opts=opts,
        out_dtype=cdt,
    )
    return _cast_output(xp, out, logp.dtype)


def haepo_loss_from_logits(
    logits: Array,
    actions: Array,
    returns: Array,
    mask: Array | None = None,
    *,
    ref_logits: Array | None = None,
    ref_logp: Array | None = None,
    group_ids: Array | None = None,
    entropy_coef: float = 0.0,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    normalize_returns: str = "zscore",
    temperature: float = 1.0,
    length_normalize: bool = False,
    eps: float = 1e-8,
) -> HAEPOOutput:
    r"""The HAEPO loss from per-step logits of a categorical policy (reference version).

    Computes ``logp = log_softmax(logits)[actions]``, the exact per-step entropy, and the KL to
    the reference: exact (:func:`kl_from_logits`) from ``ref_logits``, or ``kl_estimator`` from
    ``ref_logp``; then the objective of :func:`haepo_loss`. It materializes ``[M, T, V]``: the
    torch and JAX backends have chunked, memory-lean versions checked against this one.

    Args:
      logits: ``[M, T, V]`` floating logits (``[M, T, A]`` for small discrete policies).
      actions: ``[M, T]`` integer actions taken (padding may hold anything, e.g. -100).
      returns: ``[M]``; mask: ``[M, T]``; group_ids: ``[M]``.
      ref_logits: ``[M, T, V]`` reference logits for the exact KL, or
      ref_logp: ``[M, T]`` reference log-probs for the estimator (give at most one).
      keywords: as in :func:`haepo_loss`.

    Returns:
      :class:`HAEPOOutput`; ``stats["entropy"]`` is always the exact mean entropy.

    Example:
      >>> import numpy as np
      >>> from haepo_core import haepo_loss_from_logits
      >>> logits = np.zeros((2, 3, 4))
      >>> out = haepo_loss_from_logits(logits, np.zeros((2, 3), dtype=np.int64),
      ...                              np.array([0.0, 1.0]), entropy_coef=0.1)
      >>> round(float(out.stats["entropy"]), 4)
      1.3863
    """
    xp = get_namespace(
        logits=logits,
        actions=actions,
        returns=returns,
        mask=mask,
        ref_logits=ref_logits,
        ref_logp=ref_logp,
        group_ids=group_ids,
    )
    check_rank("logits", logits, 3, "[M, T, V]")
    check_float(xp, "logits", logits)
    m, t, v = logits.shape
    check_rank("actions", actions, 2, "[M, T]")
    check_shape("actions", actions, (m, t), "[M, T] (logits.shape[:2])")
    if not xp.isdtype(actions.dtype, "integral"):
        raise TypeError(f"actions: expected an integer dtype, got {actions.dtype}")
    check_returns(xp, "returns", returns, m)
    _check_group_ids(xp, group_ids, m)
    if ref_logits is not None and ref_logp is not None:
        raise ValueError("ref_logits, ref_logp: expected at most one of them, got both")
    if ref_logits is not None:
        check_float(xp, "ref_logits", ref_logits)
        check_shape("ref_logits", ref_logits, (m, t, v), "[M, T, V] (same as logits)")
    if ref_logp is not None:
        check_float(xp, "ref_logp", ref_logp)
        check_shape("ref_logp", ref_logp, (m, t), "[M, T]")
    valid = (
        xp.ones((m, t), dtype=xp.bool, device=array_api_compat.device(logits))
        if mask is None
        else check_mask(xp, "mask", mask, (m, t))
    )
    opts = _options(
        entropy_coef=entropy_coef,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        normalize_returns=normalize_returns,
        temperature=temperature,
        length_normalize=length_normalize,
        eps=eps,
    )
    _require_inputs(opts, True, ref_logits is not None or ref_logp is not None)
    _check_nonempty(xp, xp.sum(xp.astype(valid, xp.int32), axis=1), "mask")
    if values_readable(actions) and values_readable(valid):
        bad = xp.logical_and(valid, xp.logical_or(actions < 0, actions >= v))
        if bool(xp.any(bad)):
            raise ValueError(f"actions: expected values in 0..V-1 = 0..{v - 1} at valid steps")
    check_finite(xp, "returns", returns, None)
    if ref_logp is not None:
        check_finite(xp, "ref_logp", ref_logp, valid)
    # Logits may hold -inf (masked vocabulary) but never NaN or +inf at valid steps.
    for name, arr in (("logits", logits), ("ref_logits", ref_logits)):
        if arr is not None:
            check_finite(
                xp, name, xp.where(arr == -xp.inf, xp.zeros_like(arr), arr), valid[:, :, None]
            )

    cdt = compute_dtype(xp, logits.dtype)
    valid3 = valid[:, :, None]
    # Padding rows are replaced by zeros so NaN/inf there never reach value or gradient.
    zero = xp.zeros((), dtype=cdt, device=array_api_compat.device(logits))
    lg = xp.where(valid3, xp.astype(logits, cdt), zero)
    safe_actions = xp.where(valid, actions, xp.zeros_like(actions))
    lsm = log_softmax(lg, axis=-1)
    # torch's gather wants int64 indices; JAX without x64 has no int64 (it would warn).
    index_dtype = xp.int32 if array_api_compat.is_jax_namespace(xp) else xp.int64
    x = xp.take_along_axis(lsm, xp.astype(safe_actions[:, :, None], index_dtype), axis=-1)[:, :, 0]
    x = xp.where(valid, x, xp.zeros_like(x))
    ent = xp.where(valid, entropy_from_logits(lg, axis=-1), xp.zeros_like(x))
    kl = None
    if ref_logits is not None:
        rl = xp.where(valid3, xp.astype(ref_logits, cdt), zero)
        kl = xp.where(valid, kl_from_logits(lg, rl, axis=-1), xp.zeros_like(x))
    elif ref_logp is not None:
        ref = _sanitize(xp, stop_gradient(ref_logp), valid, cdt)
        kl = _kl_steps(xp, x, ref, kl_estimator)
    out = _padded(xp, x, valid, returns, group_ids, ent, kl, opts)
    return _cast_output(xp, out, logits.dtype)
