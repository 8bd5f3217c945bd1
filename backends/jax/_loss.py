"""``haepo_loss`` and ``haepo_loss_packed`` on JAX arrays (jit-, vmap- and shard_map-ready)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from haepo_core import HAEPOOutput
from haepo_core._loss import _options, _require_inputs
from haepo_core._namespace import compute_dtype, get_namespace
from haepo_core._regularizers import _kl_steps
from haepo_core._validation import (
    check_float,
    check_ids,
    check_mask,
    check_rank,
    check_returns,
    check_shape,
)

from ._checks import (
    check_bool,
    finite,
    ids_in_range,
    nonempty,
    to_numpy,
    traced,
    value_namespace,
)
from ._collectives import AxisName
from ._groups import dense_group_ids
from ._objective import Options, objective

__all__ = ["haepo_loss", "haepo_loss_packed"]


def _require_jax(**arrays: Any) -> None:
    xp = get_namespace(**arrays)  # TypeError for non-arrays or mixed libraries
    if xp is not jnp and getattr(xp, "__name__", "") != "jax.numpy":
        bad = next(k for k, v in arrays.items() if v is not None)
        raise TypeError(
            f"{bad}: expected a jax.Array (haepo_backends.jax works on JAX arrays; use "
            f"haepo_core for other libraries), got {type(arrays[bad]).__module__}."
            f"{type(arrays[bad]).__name__}"
        )


def make_options(**kw: Any) -> Options:
    """Validate the options with the core's checks and messages.

    A traced coefficient (``jit`` argument, or differentiated with ``jax.grad``/``vjp``) has no
    value to check: only its rank is checked here; its value then follows the documented
    tracing rules (a negative coefficient is not caught).
    """
    checked = dict(kw)
    for name in ("entropy_coef", "kl_coef", "temperature", "eps"):
        value = kw[name]
        if isinstance(value, jax.core.Tracer):
            if value.ndim != 0:
                raise TypeError(f"{name}: expected a real number or a 0-d array, got shape "
                                f"{tuple(value.shape)}")
            checked[name] = 1.0
    _options(**checked)
    return Options(**kw)


def _sanitize(x: jax.Array, valid: jax.Array, cdt: Any) -> jax.Array:
    # Padding is replaced *before* any arithmetic (and before the cast: a bf16 NaN stays NaN),
    # so NaN/inf there reach neither the value nor the gradient: where() after an exp would
    # still send 0 * inf = NaN back through the exp.
    return jnp.where(valid, x, jnp.zeros((), x.dtype)).astype(cdt)


def valid_mask(mask: jax.Array | None, shape: tuple[int, int], traced_checks: bool) -> jax.Array:
    """Boolean ``[M, T]`` validity from ``mask`` (core checks; checkify for traced 0/1)."""
    if mask is None:
        return jnp.ones(shape, dtype=bool)
    if not traced(mask):  # the core's shape, dtype and 0/1 checks, on the values via NumPy
        check_mask(value_namespace(mask), "mask", to_numpy(mask), shape)
    else:
        check_mask(jnp, "mask", mask, shape)  # shape and dtype only (values are traced)
        if traced_checks and mask.dtype != jnp.bool_:
            from jax.experimental import checkify

            checkify.check(
                jnp.all((mask == 0) | (mask == 1)),
                "mask: a numeric mask must hold only 0 and 1, got other values",
            )
    return mask if mask.dtype == jnp.bool_ else mask != 0


def haepo_loss(
    logp: jax.Array,
    returns: jax.Array,
    mask: jax.Array | None = None,
    *,
    group_ids: jax.Array | None = None,
    entropy: jax.Array | None = None,
    ref_logp: jax.Array | None = None,
    entropy_coef: Any = 0.0,
    kl_coef: Any = 0.0,
    kl_estimator: str = "k3",
    normalize_returns: str = "zscore",
    temperature: Any = 1.0,
    length_normalize: bool = False,
    eps: float = 1e-8,
    num_groups: int | None = None,
    axis_name: AxisName = None,
    traced_checks: bool = False,
) -> HAEPOOutput:
    r"""The HAEPO loss on padded trajectories, for JAX arrays.

    .. math::

        L_k &= \sum_t m_{k,t} \log\pi_\theta(a_{k,t} \mid s_{k,t})
            \quad(\div T_k \text{ if length\_normalize}) \\
        w_k &= \operatorname{softmax}_{j \in g(k)}(L_j / \tau)_k \\
        J_{PL} &= -\frac{1}{\#\text{groups}} \sum_g \sum_{k \in g} w_k \tilde R_k \\
        \text{loss} &= J_{PL} - \lambda\, \overline{H} + \beta\, \overline{KL}

    Same objective, names, keywords and outputs as ``haepo_core.haepo_loss``. The policy term
    has a closed-form backward (``jax.custom_vjp``):
    :math:`\partial J_{PL}/\partial L_k = -(w_k/\tau)(\tilde R_k - \bar R_g)/\#\text{groups}`.
    Pure and jit-compatible: ``kl_estimator``, ``normalize_returns``, ``length_normalize``,
    ``num_groups``, ``axis_name`` and ``traced_checks`` are static; the coefficients
    (``entropy_coef``, ``kl_coef``, ``temperature``) may be traced.

    Args:
      logp: ``[M, T]`` floating log-probs of the actions taken; padding may hold anything.
      returns: ``[M]`` real returns (integers allowed).
      mask: ``[M, T]`` bool (or 0/1) validity; ``None`` = all valid. Each trajectory needs a
        valid step.
      group_ids: ``[M]`` integer group labels; ``None`` = one group. Any labels when eager;
        dense ids ``0..num_groups-1`` when ``num_groups`` is given.
      entropy: ``[M, T]`` per-step entropy (needed when ``entropy_coef > 0``).
      ref_logp: ``[M, T]`` reference log-probs (a constant; needed when ``kl_coef > 0``).
      entropy_coef, kl_coef: ``>= 0``; kl_estimator: ``"k1"``, ``"k2"``, ``"k3"``.
      normalize_returns: ``"zscore"`` (population std), ``"center"`` or ``"none"``.
      temperature: ``tau > 0``; length_normalize: divide ``L_k`` by ``T_k``; eps: std guard.
      num_groups: static number of group segments. The number of distinct labels is
        data-dependent, so under ``jit``/``vmap`` pass it to get ``G`` segments (labels must be
        ``0..num_groups-1``; unused ids are fine). Without it, eager calls count the labels and
        traced calls use ``M`` segments (any labels, O(M log M)). Required with ``axis_name``.
      axis_name: a ``shard_map``/``pmap`` axis name. Trajectories of one group may then live on
        different devices (``group_ids`` are global ids): normalizers, return statistics and
        token counts are reduced with ``lax.psum``/``pmax``, so ``loss`` and ``stats`` are the
        global ones and the gradient of each device's rows is its slice of the single-device
        gradient (under ``shard_map`` with its default ``check_vma=True``). ``weights``,
        ``normalized_returns`` and ``log_likelihood`` are this device's rows.
      traced_checks: also emit the value checks as ``jax.experimental.checkify`` checks when
        the inputs are traced (wrap the caller in ``checkify.checkify``). Eager calls always
        run the value checks and raise ``ValueError``.

    Returns:
      ``haepo_core.HAEPOOutput`` (a pytree): ``loss``, ``weights [M]``,
      ``normalized_returns [M]``, ``log_likelihood [M]``, ``stats`` (dict of 0-d, no gradient).
      Computation runs in float32 for float16/bfloat16/float32 inputs and in float64 for
      float64 (enable ``jax_enable_x64``); outputs are cast back to ``logp.dtype``.

    Raises:
      ValueError / TypeError naming the argument, as the core, for bad shapes, dtypes and
      options (at trace time under jit) and, on concrete arrays, for NaN/inf at valid steps,
      empty trajectories and out-of-range ids. Under tracing, value checks follow
      ``traced_checks`` (see above); by default NaN/inf at a valid step gives a NaN loss.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from haepo_backends.jax import haepo_loss
      >>> logp = jnp.log(jnp.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.2]]))
      >>> mask = jnp.array([[True, True], [True, False], [True, True]])
      >>> out = haepo_loss(logp, jnp.array([1.0, 0.0, 2.0]), mask)
      >>> round(float(out.loss), 5)
      0.88511
      >>> g = jax.jit(jax.grad(lambda lp: haepo_loss(lp, jnp.array([1.0, 0.0, 2.0]), mask).loss))
      >>> g(logp).shape
      (3, 2)
    """
    _require_jax(
        logp=logp, returns=returns, mask=mask, group_ids=group_ids, entropy=entropy,
        ref_logp=ref_logp,
    )
    check_rank("logp", logp, 2, "[M, T]")
    check_float(jnp, "logp", logp)
    m, t = logp.shape
    check_returns(jnp, "returns", returns, m)
    if group_ids is not None:
        check_ids(jnp, "group_ids", group_ids, m, "[M]")
    for name, arr in (("entropy", entropy), ("ref_logp", ref_logp)):
        if arr is not None:
            check_float(jnp, name, arr)
            check_shape(name, arr, (m, t), "[M, T] (same as logp)")
    opts = make_options(
        entropy_coef=entropy_coef, kl_coef=kl_coef, kl_estimator=kl_estimator,
        normalize_returns=normalize_returns, temperature=temperature,
        length_normalize=length_normalize, eps=eps,
    )
    check_bool("traced_checks", traced_checks)
    _require_inputs(opts, entropy is not None, ref_logp is not None)
    valid = valid_mask(mask, (m, t), traced_checks)
    gidx, num = dense_group_ids(group_ids, m, num_groups, axis_name)
    nonempty("mask", jnp.sum(valid.astype(jnp.int32), axis=1), traced_checks)
    finite("logp", logp, valid, traced_checks)
    finite("returns", returns, None, traced_checks)
    for name, arr in (("entropy", entropy), ("ref_logp", ref_logp)):
        if arr is not None:
            finite(name, arr, valid, traced_checks)
    if group_ids is not None and num_groups is not None:
        ids_in_range("group_ids", group_ids, num, None, traced_checks, "num_groups-1")

    cdt = compute_dtype(jnp, logp.dtype)
    x = _sanitize(logp, valid, cdt)
    n_k = jnp.sum(valid.astype(cdt), axis=1)
    ent_sum = None if entropy is None else jnp.sum(_sanitize(entropy, valid, cdt))
    kl_sum = None
    if ref_logp is not None:
        ref = _sanitize(lax.stop_gradient(ref_logp), valid, cdt)
        kl_sum = jnp.sum(_kl_steps(jnp, x, ref, kl_estimator))  # 0 at padding (x = ref = 0)
    return objective(
        L=jnp.sum(x, axis=1), n_k=n_k, returns=returns, gidx=gidx, num=num, ent_sum=ent_sum,
        kl_sum=kl_sum, n_steps=jnp.sum(n_k), opts=opts, axis_name=axis_name,
        out_dtype=logp.dtype,
    )


def haepo_loss_packed(
    logp: jax.Array,
    segment_ids: jax.Array,
    returns: jax.Array,
    *,
    group_ids: jax.Array | None = None,
    entropy: jax.Array | None = None,
    ref_logp: jax.Array | None = None,
    entropy_coef: Any = 0.0,
    kl_coef: Any = 0.0,
    kl_estimator: str = "k3",
    normalize_returns: str = "zscore",
    temperature: Any = 1.0,
    length_normalize: bool = False,
    eps: float = 1e-8,
    num_groups: int | None = None,
    axis_name: AxisName = None,
    traced_checks: bool = False,
) -> HAEPOOutput:
    r"""The HAEPO loss on packed, padding-free steps, for JAX arrays.

    Same objective as :func:`haepo_loss` with
    :math:`L_k = \sum_{i : \text{segment\_ids}_i = k} \text{logp}_i`, computed with
    ``jax.ops.segment_sum`` over the static ``num_segments = M = returns.shape[0]``: the cost
    grows with the number of steps ``N``, not ``M * max(T_k)``. Steps of one trajectory need not
    be contiguous or ordered.

    Args:
      logp: ``[N]`` floating log-probs of every step.
      segment_ids: ``[N]`` integer trajectory of each step, in ``0..M-1``; every trajectory
        needs a step. Under ``jit`` out-of-range ids are dropped by the segment sums (check
        them eagerly, or with ``traced_checks=True``).
      returns: ``[M]`` real returns.
      group_ids, entropy (``[N]``), ref_logp (``[N]``), coefficients, ``num_groups``,
        ``axis_name`` (each trajectory's steps on the device holding its ``returns`` row),
        ``traced_checks``: as in :func:`haepo_loss`.

    Returns:
      ``haepo_core.HAEPOOutput``, as :func:`haepo_loss`.

    Example:
      >>> import jax.numpy as jnp
      >>> from haepo_backends.jax import haepo_loss_packed
      >>> logp = jnp.log(jnp.array([0.5, 0.5, 0.9, 0.2, 0.2]))
      >>> out = haepo_loss_packed(logp, jnp.array([0, 0, 1, 2, 2]), jnp.array([1.0, 0.0, 2.0]))
      >>> round(float(out.loss), 5)
      0.88511
    """
    _require_jax(
        logp=logp, segment_ids=segment_ids, returns=returns, group_ids=group_ids,
        entropy=entropy, ref_logp=ref_logp,
    )
    check_rank("logp", logp, 1, "[N]")
    check_float(jnp, "logp", logp)
    n = logp.shape[0]
    check_ids(jnp, "segment_ids", segment_ids, n, "[N], same as logp")
    check_rank("returns", returns, 1, "[M]")
    m = returns.shape[0]
    check_returns(jnp, "returns", returns, m)
    if group_ids is not None:
        check_ids(jnp, "group_ids", group_ids, m, "[M]")
    for name, arr in (("entropy", entropy), ("ref_logp", ref_logp)):
        if arr is not None:
            check_float(jnp, name, arr)
            check_shape(name, arr, (n,), "[N] (same as logp)")
    opts = make_options(
        entropy_coef=entropy_coef, kl_coef=kl_coef, kl_estimator=kl_estimator,
        normalize_returns=normalize_returns, temperature=temperature,
        length_normalize=length_normalize, eps=eps,
    )
    check_bool("traced_checks", traced_checks)
    _require_inputs(opts, entropy is not None, ref_logp is not None)
    ids_in_range("segment_ids", segment_ids, m, None, traced_checks)
    gidx, num = dense_group_ids(group_ids, m, num_groups, axis_name)
    cdt = compute_dtype(jnp, logp.dtype)
    seg = segment_ids.astype(jnp.int32)
    n_k = jax.ops.segment_sum(jnp.ones((n,), cdt), seg, num_segments=m)
    nonempty("segment_ids", n_k, traced_checks)
    finite("logp", logp, None, traced_checks)
    finite("returns", returns, None, traced_checks)
    for name, arr in (("entropy", entropy), ("ref_logp", ref_logp)):
        if arr is not None:
            finite(name, arr, None, traced_checks)
    if group_ids is not None and num_groups is not None:
        ids_in_range("group_ids", group_ids, num, None, traced_checks, "num_groups-1")

    x = logp.astype(cdt)
    kl_sum = None
    if ref_logp is not None:
        ref = lax.stop_gradient(ref_logp).astype(cdt)
        kl_sum = jnp.sum(_kl_steps(jnp, x, ref, kl_estimator))
    return objective(
        L=jax.ops.segment_sum(x, seg, num_segments=m), n_k=n_k, returns=returns, gidx=gidx,
        num=num, ent_sum=None if entropy is None else jnp.sum(entropy.astype(cdt)),
        kl_sum=kl_sum, n_steps=jnp.asarray(n, dtype=cdt), opts=opts, axis_name=axis_name,
        out_dtype=logp.dtype,
    )
