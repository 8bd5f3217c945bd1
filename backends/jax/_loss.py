"""``haepo_loss`` and ``haepo_loss_packed`` on JAX arrays (jit-, vmap- and shard_map-ready).

Validation is the core's (with the JAX hooks of :mod:`._checks`) and the objective is the
core's, fed the JAX primitives of :mod:`._policy`; what is JAX-specific here is the static
group index (:mod:`._segments`) and the padding-proof per-step sums.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from haepo_core.kit import (
    CheckHooks,
    HAEPOOutput,
    Options,
    entry_arguments,
    fill_doc,
    objective,
    validate_packed,
    validate_padded,
)

from ._checks import check_bool, hooks, require_jax, traced_value_checks
from ._collectives import AxisName
from ._policy import JaxPrimitives
from ._segments import dense_group_ids
from ._vocab import compute_dtype

__all__ = ["haepo_loss", "haepo_loss_packed"]

#: The JAX entry points' own keywords: neither arrays nor loss options.
_STATIC = ("chunk_size", "num_groups", "axis_name", "traced_checks")


def sanitize(x: jax.Array, valid: jax.Array, cdt: Any) -> jax.Array:
    """``x`` in ``cdt`` with padding replaced by 0 *before* any arithmetic (and before the
    cast: a bf16 NaN stays NaN), so NaN/inf there reach neither the value nor the gradient:
    where() after an exp would still send 0 * inf = NaN back through the exp."""
    return jnp.where(valid, x, jnp.zeros((), x.dtype)).astype(cdt)


def kl_sum(x: jax.Array, ref_logp: jax.Array, valid: jax.Array | None, estimator: str) -> jax.Array:
    """Sum of the per-step KL estimate; ``ref_logp`` is a constant (0 at padding: x = ref = 0)."""
    ref = lax.stop_gradient(ref_logp)
    ref = ref.astype(x.dtype) if valid is None else sanitize(ref, valid, x.dtype)
    return JaxPrimitives().kl_estimate_sum(x, ref, estimator)


class Call(NamedTuple):
    """A validated call (see :func:`start`): the validity mask (``None`` when packed), the
    options, the steps per trajectory (packed only), the check hooks, the dense group index
    ``gidx`` with its ``num`` segments, and what :meth:`finish` needs besides the sums."""

    valid: jax.Array | None
    opts: Options
    n_k: jax.Array | None
    hooks: CheckHooks
    gidx: jax.Array
    num: int
    returns: jax.Array
    axis_name: AxisName
    out_dtype: Any

    def finish(
        self, L: jax.Array, n_k: jax.Array, ent_sum: jax.Array | None, kl_sum: jax.Array | None
    ) -> HAEPOOutput:
        """The objective from the per-trajectory sums ``L``, ``n_k`` and the 0-d sums."""
        return objective(
            JaxPrimitives(self.axis_name), L=L, n_k=n_k, returns=self.returns, index=self.gidx,
            num=self.num, ent_sum=ent_sum, kl_sum=kl_sum, n_steps=jnp.sum(n_k), opts=self.opts,
            out_dtype=self.out_dtype,
        )  # fmt: skip


def start(args: dict[str, Any], validate: Callable[..., Any]) -> Call:
    """Check an entry point's arguments (``args``: its ``locals()`` on entry): JAX arrays,
    the static ``traced_checks``, then the core's ``validate`` (a ``validate_*`` function)
    with the JAX hooks; and build the dense group index."""
    arrays, options = entry_arguments(args, _STATIC)
    require_jax(**arrays)
    traced_checks = check_bool("traced_checks", args["traced_checks"])
    check = hooks(traced_checks)
    out = validate(jnp, **arrays, options=options, hooks=check)
    (valid, opts, _), n_k = out if validate is validate_packed else (out, None)
    returns, axis_name = args["returns"], args["axis_name"]
    group_ids, num_groups = args["group_ids"], args["num_groups"]
    # The dense group index and its static number of segments (see :mod:`._segments`).
    gidx, num = dense_group_ids(group_ids, returns.shape[0], num_groups, axis_name)
    if group_ids is not None and num_groups is not None:
        ids = (("group_ids", group_ids, num, "num_groups-1", None),)
        traced_value_checks(traced_checks, ids=ids)
    dtype = next(iter(arrays.values())).dtype  # the first argument's: logp, logits or hidden
    return Call(valid, opts, n_k, check, gidx, num, returns, axis_name, dtype)


@fill_doc
def haepo_loss(
    logp: jax.Array, returns: jax.Array, mask: jax.Array | None = None, *,
    group_ids: jax.Array | None = None, entropy: jax.Array | None = None,
    ref_logp: jax.Array | None = None,
    entropy_coef: Any = 0.0, kl_coef: Any = 0.0, kl_estimator: str = "k3",
    normalize_returns: str = "zscore", temperature: Any = 1.0,
    length_normalize: bool = False, eps: float = 1e-8,
    num_groups: int | None = None, axis_name: AxisName = None, traced_checks: bool = False,
) -> HAEPOOutput:  # fmt: skip
    r"""The HAEPO loss on padded trajectories, for JAX arrays.

    %(math)s

    Same objective, names, keywords and outputs as ``haepo_core.haepo_loss``. The policy term
    has a closed-form backward (``jax.custom_vjp``):
    :math:`\partial J_{PL}/\partial L_k = -(w_k/\tau)(\tilde R_k - \bar R_g)/\#\text{groups}`.
    Pure and jit-compatible: ``kl_estimator``, ``normalize_returns``, ``length_normalize``,
    ``num_groups``, ``axis_name`` and ``traced_checks`` are static; the coefficients
    (``entropy_coef``, ``kl_coef``, ``temperature``) may be traced.

    Args:
      %(padded)s
      %(options)s
      %(jax_keywords)s

    Returns:
      ``haepo_core.HAEPOOutput`` (a pytree). Computation runs in float32 for
      float16/bfloat16/float32 inputs and in float64 for float64 (enable ``jax_enable_x64``);
      outputs are cast back to ``logp.dtype``.

    Raises:
      As the core (at trace time under jit for shapes, dtypes and options). Under tracing,
      value checks follow ``traced_checks``; by default NaN/inf at a valid step gives a NaN
      loss.

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
    c = start(locals(), validate_padded)
    traced_value_checks(
        traced_checks, counts=("mask", jnp.sum(c.valid.astype(jnp.int32), axis=1)), mask=mask
    )
    cdt = compute_dtype(logp.dtype)
    x = sanitize(logp, c.valid, cdt)
    return c.finish(
        jnp.sum(x, axis=1),
        jnp.sum(c.valid.astype(cdt), axis=1),
        None if entropy is None else jnp.sum(sanitize(entropy, c.valid, cdt)),
        None if ref_logp is None else kl_sum(x, ref_logp, c.valid, kl_estimator),
    )


@fill_doc
def haepo_loss_packed(
    logp: jax.Array, segment_ids: jax.Array, returns: jax.Array, *,
    group_ids: jax.Array | None = None, entropy: jax.Array | None = None,
    ref_logp: jax.Array | None = None,
    entropy_coef: Any = 0.0, kl_coef: Any = 0.0, kl_estimator: str = "k3",
    normalize_returns: str = "zscore", temperature: Any = 1.0,
    length_normalize: bool = False, eps: float = 1e-8,
    num_groups: int | None = None, axis_name: AxisName = None, traced_checks: bool = False,
) -> HAEPOOutput:  # fmt: skip
    r"""The HAEPO loss on packed, padding-free steps, for JAX arrays.

    Same objective as :func:`haepo_loss` with
    :math:`L_k = \sum_{i : \text{segment\_ids}_i = k} \text{logp}_i`, computed with
    ``jax.ops.segment_sum`` over the static ``num_segments = M = returns.shape[0]``: the cost
    grows with the number of steps ``N``, not ``M * max(T_k)``. Steps of one trajectory need not
    be contiguous or ordered. Under ``jit`` out-of-range ``segment_ids`` are dropped by the
    segment sums (check them eagerly, or with ``traced_checks=True``).

    Args:
      %(packed)s
      %(options)s
      num_groups, axis_name, traced_checks: as in :func:`haepo_loss` (under ``axis_name``,
        each trajectory's steps on the device holding its ``returns`` row).

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
    c = start(locals(), validate_packed)
    m = returns.shape[0]
    traced_value_checks(
        traced_checks,
        ids=(("segment_ids", segment_ids, m, "M-1", None),),
        counts=("segment_ids", c.n_k),
    )
    cdt = compute_dtype(logp.dtype)
    x = logp.astype(cdt)
    return c.finish(
        jax.ops.segment_sum(x, segment_ids.astype(jnp.int32), num_segments=m),
        c.n_k.astype(cdt),
        None if entropy is None else jnp.sum(entropy.astype(cdt)),
        None if ref_logp is None else kl_sum(x, ref_logp, None, kl_estimator),
    )
