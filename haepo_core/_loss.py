"""The HAEPO objective: padded, packed and from-logits entry points over one shared core."""

from __future__ import annotations

from typing import Any

import array_api_compat

from ._docs import fill_doc
from ._inputs import entry_arguments, validate_logits, validate_packed, validate_padded
from ._namespace import Array, compute_dtype, device_of, get_namespace, stop_gradient
from ._objective import HAEPOOutput, HAEPOStats, Options, Primitives, kl_steps, objective
from ._regularizers import entropy_from_logits, kl_from_logits, log_softmax
from ._segments import group_index

__all__ = ["HAEPOOutput", "HAEPOStats", "haepo_loss", "haepo_loss_from_logits", "haepo_loss_packed"]


def _finish(
    P: Primitives,
    L: Array,
    n_k: Array,
    returns: Array,
    group_ids: Array | None,
    ent_sum: Array | None,
    kl_sum: Array | None,
    opts: Options,
    out_dtype: Any,
) -> HAEPOOutput:
    """The objective from the per-trajectory sums ``L``, ``n_k`` ``[M]`` (compute dtype)."""
    xp = P.xp
    gidx, num = group_index(xp, group_ids, L.shape[0], device_of(L))
    return objective(
        P, L=L, n_k=n_k, returns=returns, index=gidx, num=num, ent_sum=ent_sum, kl_sum=kl_sum,
        n_steps=xp.sum(n_k), opts=opts, out_dtype=out_dtype,
    )  # fmt: skip


def _padded(
    xp: Any,
    logp: Array,
    valid: Array,
    returns: Array,
    group_ids: Array | None,
    ent_steps: Array | None,
    kl_steps_: Array | None,
    ref_logp: Array | None,
    opts: Options,
    out_dtype: Any,
) -> HAEPOOutput:
    """The objective on sanitized per-step arrays ``[M, T]`` in the compute dtype; without
    ``kl_steps_``, a given ``ref_logp`` gives the KL by ``opts.kl_estimator``."""
    if kl_steps_ is None and ref_logp is not None:
        ref = _sanitize(xp, stop_gradient(ref_logp), valid, logp.dtype)
        kl_steps_ = kl_steps(xp, logp, ref, opts.kl_estimator)  # 0 at padding: x = ref = 0
    return _finish(
        Primitives(xp),
        xp.sum(logp, axis=1),
        xp.sum(xp.astype(valid, logp.dtype), axis=1),
        returns,
        group_ids,
        None if ent_steps is None else xp.sum(ent_steps),
        None if kl_steps_ is None else xp.sum(kl_steps_),
        opts,
        out_dtype,
    )


def _sanitize(xp: Any, x: Array, valid: Array, cdt: Any) -> Array:
    # Replace padding *before* any arithmetic: NaN/inf there must reach neither the value nor
    # the gradient (where() after an exp would still send 0 * inf = NaN back through exp).
    x = xp.astype(x, cdt)
    return xp.where(valid, x, xp.zeros_like(x))


def _validated(args: dict[str, Any], validate: Any) -> tuple[Any, Any]:
    """The namespace of an entry point's arrays (``args``: its ``locals()``) and what
    ``validate`` (a ``validate_*`` function) returns for them."""
    arrays, options = entry_arguments(args)
    xp = get_namespace(**arrays)
    return xp, validate(xp, **arrays, options=options)


@fill_doc
def haepo_loss(
    logp: Array, returns: Array, mask: Array | None = None, *,
    group_ids: Array | None = None, entropy: Array | None = None, ref_logp: Array | None = None,
    entropy_coef: float = 0.0, kl_coef: float = 0.0, kl_estimator: str = "k3",
    normalize_returns: str = "zscore", temperature: float = 1.0,
    length_normalize: bool = False, eps: float = 1e-8,
) -> HAEPOOutput:  # fmt: skip
    r"""The HAEPO loss on padded trajectories.

    %(math)s

    with :math:`\tilde R` the per-group normalized returns (constants), :math:`\overline{H}` and
    :math:`\overline{KL}` token means over valid steps. The gradient flows through ``w``:
    :math:`\partial J_{PL}/\partial L_k = -(w_k/\tau)(\tilde R_k - \bar R_g)/\#\text{groups}`
    with :math:`\bar R_g = \sum_{j\in g} w_j \tilde R_j`.

    Args:
      %(padded)s
      %(options)s

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
    xp, (valid, opts, _) = _validated(locals(), validate_padded)
    cdt = compute_dtype(xp, logp.dtype)
    x = _sanitize(xp, logp, valid, cdt)
    ent = None if entropy is None else _sanitize(xp, entropy, valid, cdt)
    return _padded(xp, x, valid, returns, group_ids, ent, None, ref_logp, opts, logp.dtype)


@fill_doc
def haepo_loss_packed(
    logp: Array, segment_ids: Array, returns: Array, *,
    group_ids: Array | None = None, entropy: Array | None = None, ref_logp: Array | None = None,
    entropy_coef: float = 0.0, kl_coef: float = 0.0, kl_estimator: str = "k3",
    normalize_returns: str = "zscore", temperature: float = 1.0,
    length_normalize: bool = False, eps: float = 1e-8,
) -> HAEPOOutput:  # fmt: skip
    r"""The HAEPO loss on packed, padding-free steps.

    Same objective as :func:`haepo_loss`, with
    :math:`L_k = \sum_{i : \text{segment\_ids}_i = k} \text{logp}_i`: the cost grows with the
    number of steps ``N``, not with ``M * max(T_k)``. Steps of one trajectory need not be
    contiguous or ordered.

    Args:
      %(packed)s
      %(options)s

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
    xp, ((_, opts, _), n_k) = _validated(locals(), validate_packed)
    cdt = compute_dtype(xp, logp.dtype)
    x = xp.astype(logp, cdt)
    P = Primitives(xp)
    kl_sum = None
    if ref_logp is not None:
        kl_sum = P.kl_estimate_sum(x, stop_gradient(xp.astype(ref_logp, cdt)), kl_estimator)
    L = P.segment_sum(x, segment_ids, returns.shape[0])
    ent_sum = None if entropy is None else xp.sum(xp.astype(entropy, cdt))
    return _finish(P, L, n_k, returns, group_ids, ent_sum, kl_sum, opts, logp.dtype)


@fill_doc
def haepo_loss_from_logits(
    logits: Array, actions: Array, returns: Array, mask: Array | None = None, *,
    ref_logits: Array | None = None, ref_logp: Array | None = None, group_ids: Array | None = None,
    entropy_coef: float = 0.0, kl_coef: float = 0.0, kl_estimator: str = "k3",
    normalize_returns: str = "zscore", temperature: float = 1.0,
    length_normalize: bool = False, eps: float = 1e-8,
) -> HAEPOOutput:  # fmt: skip
    r"""The HAEPO loss from per-step logits of a categorical policy (reference version).

    Computes ``logp = log_softmax(logits)[actions]``, the exact per-step entropy, and the KL to
    the reference: exact (:func:`kl_from_logits`) from ``ref_logits``, or ``kl_estimator`` from
    ``ref_logp``; then the objective of :func:`haepo_loss`. It materializes ``[M, T, V]``: the
    torch and JAX backends have chunked, memory-lean versions checked against this one.

    Args:
      logits: ``[M, T, V]`` floating logits (``[M, T, A]`` for small discrete policies).
      %(actions)s
      %(ref_logits)s
      %(options)s

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
    xp, (valid, opts, _) = _validated(locals(), validate_logits)
    cdt = compute_dtype(xp, logits.dtype)
    valid3 = valid[:, :, None]
    # Padding rows are replaced by zeros so NaN/inf there never reach value or gradient.
    zero = xp.zeros((), dtype=cdt, device=device_of(logits))
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
    return _padded(xp, x, valid, returns, group_ids, ent, kl, ref_logp, opts, logits.dtype)
