"""The primitives of the core objective for JAX, and the Plackett-Luce term's closed-form
backward (``jax.custom_vjp``).

:class:`JaxPrimitives` feeds ``haepo_core``'s objective with the
``lax.psum``/``pmax``/``pmin`` of :mod:`._collectives` over ``axis_name`` and
:func:`plackett_luce_term` (the segment reductions are the core's, ``jax.ops.segment_*`` on JAX
arrays).

Forward of the term: ``w = softmax_g(z)`` within each group (log-sum-exp with the per-group max)
and the local ``S = sum_k w_k R~_k``. Backward, for cotangents ``(s, c_w)`` of ``(S, w)``: with
``c_k = c_w,k + s R~_k`` (the total cotangent reaching ``w_k``) the softmax VJP is

    dz_k = w_k (c_k - sum_{j in g} w_j c_j),

which for the loss alone (``c_w = 0``, ``s = -1/#groups``) is the spec's closed form
``dJ/dL_k = -(w_k / tau)(R~_k - Rbar_g) / #groups``. One segment sum and two gathers: no softmax
graph is kept, only ``w`` and ``R~`` (``[M]`` each) are saved for the backward. The backward is
made of differentiable ops on ``w`` (itself differentiable in ``z``), so second derivatives are
exact.

Why a custom VJP rather than autodiff: autodiff of the stabilised softmax saves ``exp`` and the
per-group sums and replays the segment max/gather chain; the closed form is shorter, and under a
named axis its one ``psum`` of ``sum_g w c`` is the only collective of the backward.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from haepo_core.kit import Primitives, plackett_luce_forward

from ._collectives import AxisName, pmax, pmin, psum

__all__ = ["JaxPrimitives", "plackett_luce_term"]


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def plackett_luce_term(
    z: jax.Array, r: jax.Array, gidx: jax.Array, num: int, axis_name: AxisName
) -> tuple[jax.Array, jax.Array]:
    """``(S, w)``: ``w`` [M] the within-group softmax of ``z`` [M] (normalizers global over
    ``axis_name``) and this device's ``S = sum_k w_k r_k`` (0-d).

    ``r`` (the normalized returns) is a constant: it receives no gradient.
    """
    return plackett_luce_forward(JaxPrimitives(axis_name), z, r, gidx, num)


def _fwd(z, r, gidx, num, axis_name):
    s, w = plackett_luce_forward(JaxPrimitives(axis_name), z, r, gidx, num)
    return (s, w), (w, r, gidx)


def _bwd(num, axis_name, res, cts):
    w, r, gidx = res
    ct_s, ct_w = cts
    c = ct_w + ct_s * r
    # The weighted mean of the cotangent in each group (global under axis_name).
    cbar = psum(jax.ops.segment_sum(w * c, gidx, num_segments=num), axis_name)
    return w * (c - cbar[gidx]), None, None


plackett_luce_term.defvjp(_fwd, _bwd)


class JaxPrimitives(Primitives):
    """The core objective's primitives on JAX arrays: the core's segment reductions (which are
    ``jax.ops.segment_*`` on JAX arrays), collectives over ``axis_name`` and the closed-form
    policy term."""

    def __init__(self, axis_name: AxisName = None) -> None:
        super().__init__(jnp)
        self.axis_name = axis_name

    def all_sum(self, x: jax.Array) -> jax.Array:
        return psum(x, self.axis_name)

    def all_max(self, x: jax.Array) -> jax.Array:
        return pmax(x, self.axis_name)

    def all_min(self, x: jax.Array) -> jax.Array:
        return pmin(x, self.axis_name)

    def plackett_luce_term(
        self, z: jax.Array, r_norm: jax.Array, index: jax.Array, num: int
    ) -> tuple[jax.Array, jax.Array]:
        return plackett_luce_term(z, r_norm, index, num, self.axis_name)
