"""The Plackett-Luce policy term with its closed-form backward (``jax.custom_vjp``).

Forward: ``w = softmax_g(z)`` within each group (log-sum-exp with the per-group max) and
``S = sum_k w_k R~_k``. Backward, for cotangents ``(s, c_w)`` of ``(S, w)``: with
``c_k = c_w,k + s R~_k`` (the total cotangent reaching ``w_k``) the softmax VJP is

    dz_k = w_k (c_k - sum_{j in g} w_j c_j),

which for the loss alone (``c_w = 0``, ``s = -1/#groups``) is the spec's closed form
``dJ/dL_k = -(w_k / tau)(R~_k - Rbar_g) / #groups``. One segment sum and two gathers: no softmax
graph is kept, only ``w`` and ``R~`` (``[M]`` each) are saved for the backward.

Why a custom VJP rather than autodiff: autodiff of the stabilised softmax saves ``exp`` and the
per-group sums and replays the segment max/gather chain; the closed form is shorter, and under a
named axis its one ``psum`` of ``sum_g w c`` is the only collective of the backward.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ._collectives import AxisName, pmax, psum

__all__ = ["plackett_luce_term"]


def _forward(
    z: jax.Array, r: jax.Array, gidx: jax.Array, num: int, axis_name: AxisName
) -> tuple[jax.Array, jax.Array]:
    # The per-group max is a constant shift: it keeps every exp() argument <= 0, so L_k down to
    # -1e6 stays finite; it leaves the softmax (and its gradient) unchanged.
    peak = pmax(jax.ops.segment_max(z, gidx, num_segments=num), axis_name)
    peak = jnp.where(jnp.isfinite(peak), peak, jnp.zeros_like(peak))  # empty segments
    e = jnp.exp(z - peak[gidx])
    total = psum(jax.ops.segment_sum(e, gidx, num_segments=num), axis_name)
    total = jnp.where(total > 0, total, jnp.ones_like(total))
    w = e / total[gidx]
    s = psum(jnp.sum(w * r), axis_name)
    return s, w


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def plackett_luce_term(
    z: jax.Array, r: jax.Array, gidx: jax.Array, num: int, axis_name: AxisName
) -> tuple[jax.Array, jax.Array]:
    """``(S, w)``: ``w`` [M] the within-group softmax of ``z`` [M], ``S = sum_k w_k r_k`` (0-d).

    ``r`` (the normalized returns) is a constant: it receives no gradient. Under a named axis
    ``S`` and the normalizers are global over the devices of ``axis_name``.
    """
    return _forward(z, r, gidx, num, axis_name)


def _fwd(z, r, gidx, num, axis_name):
    s, w = _forward(z, r, gidx, num, axis_name)
    return (s, w), (w, r, gidx)


def _bwd(num, axis_name, res, cts):
    w, r, gidx = res
    ct_s, ct_w = cts
    c = ct_w + ct_s * r
    # Rbar-like weighted mean of the cotangent in each group (global under axis_name).
    cbar = psum(jax.ops.segment_sum(w * c, gidx, num_segments=num), axis_name)
    dz = w * (c - cbar[gidx])
    return dz, None, None


plackett_luce_term.defvjp(_fwd, _bwd)
