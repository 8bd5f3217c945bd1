"""The HAEPO objective from per-trajectory sums, shared by every entry point of the backend.

Given ``L_k`` (differentiable), the valid-step counts and the regularizer sums, this builds the
group softmax (closed-form backward, :mod:`._policy`), the per-group normalized returns, the
regularizer token means and the diagnostics. Every reduction that spans trajectories goes
through :mod:`._collectives`, so under a named axis the result is the single-device one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from haepo_core import HAEPOOutput

from ._collectives import AxisName, pmax, pmin, psum
from ._policy import plackett_luce_term

__all__ = ["Options", "objective"]


class Options(NamedTuple):
    """Loss options. Strings and bools are static; coefficients may be traced."""

    entropy_coef: Any
    kl_coef: Any
    kl_estimator: str
    normalize_returns: str
    temperature: Any
    length_normalize: bool
    eps: Any


def _segsum(x: jax.Array, gidx: jax.Array, num: int, axis_name: AxisName) -> jax.Array:
    return psum(jax.ops.segment_sum(x, gidx, num_segments=num), axis_name)


def normalized_returns(
    r: jax.Array, gidx: jax.Array, num: int, method: str, eps: Any, axis_name: AxisName
) -> jax.Array:
    """Per-group ``zscore``/``center``/``none`` of ``r`` (population std), a constant."""
    if method == "none":
        return r
    count = _segsum(jnp.ones_like(r), gidx, num, axis_name)
    count = jnp.where(count > 0, count, jnp.ones_like(count))
    mean = (_segsum(r, gidx, num, axis_name) / count)[gidx]
    centered = r - mean
    # A group whose returns are all equal has R~ = 0 exactly (the mean of equal floats can miss
    # them by one ulp), so test max == min rather than trusting r - mean.
    hi = pmax(jax.ops.segment_max(r, gidx, num_segments=num), axis_name)
    lo = pmin(jax.ops.segment_min(r, gidx, num_segments=num), axis_name)
    flat = (hi == lo)[gidx]
    zero = jnp.zeros_like(r)
    if method == "center":
        return jnp.where(flat, zero, centered)
    var = _segsum(centered * centered, gidx, num, axis_name) / count
    std = jnp.sqrt(var)[gidx]
    return jnp.where(flat, zero, centered / (std + eps))


def objective(
    *,
    L: jax.Array,
    n_k: jax.Array,
    returns: jax.Array,
    gidx: jax.Array,
    num: int,
    ent_sum: jax.Array | None,
    kl_sum: jax.Array | None,
    n_steps: jax.Array,
    opts: Options,
    axis_name: AxisName,
    out_dtype: Any,
) -> HAEPOOutput:
    """HAEPOOutput from ``L`` [M] and ``n_k`` [M] (compute dtype) and regularizer sums.

    ``n_steps``, ``ent_sum`` and ``kl_sum`` are this device's partial sums; they are reduced
    over ``axis_name`` here.
    """
    cdt = L.dtype
    L_eff = L / n_k if opts.length_normalize else L
    r = returns.astype(cdt)
    r_norm = lax.stop_gradient(
        normalized_returns(r, gidx, num, opts.normalize_returns, opts.eps, axis_name)
    )
    counts = _segsum(jnp.ones_like(L), gidx, num, axis_name)
    n_groups = jnp.sum((counts > 0).astype(cdt))

    s, w = plackett_luce_term(L_eff / opts.temperature, r_norm, gidx, num, axis_name)
    policy = -s / n_groups
    n_all = psum(n_steps, axis_name)
    zero = jnp.zeros((), dtype=cdt)
    entropy = zero if ent_sum is None else psum(ent_sum, axis_name) / n_all
    kl = zero if kl_sum is None else psum(kl_sum, axis_name) / n_all
    loss = policy - opts.entropy_coef * entropy + opts.kl_coef * kl

    wc = lax.stop_gradient(w)
    sq = _segsum(wc * wc, gidx, num, axis_name)
    present = sq > 0
    ess = jnp.where(present, 1.0 / jnp.where(present, sq, jnp.ones_like(sq)), jnp.zeros_like(sq))
    stats = {
        "policy_loss": policy,
        "entropy": entropy,
        "kl": kl,
        "ess": jnp.sum(ess) / n_groups,
        "ess_min": jnp.min(jnp.where(present, ess, jnp.full_like(ess, jnp.inf))),
        "max_weight": pmax(jnp.max(wc, initial=-jnp.inf), axis_name),
        "weighted_return": psum(jnp.sum(wc * r), axis_name) / n_groups,
        "num_groups": n_groups,
    }
    stats = {k: lax.stop_gradient(v).astype(out_dtype) for k, v in stats.items()}
    return HAEPOOutput(
        loss=loss.astype(out_dtype),
        weights=w.astype(out_dtype),
        normalized_returns=r_norm.astype(out_dtype),
        log_likelihood=L_eff.astype(out_dtype),
        stats=stats,
    )
