"""Per-token statistics from hidden states and the LM head (fused linear + vocabulary pass).

The logits ``z = h W^T + b`` are never materialized for all tokens: each chunk of tokens
projects its ``[chunk, V]`` logits, takes the statistics of :mod:`._vocab`, and the gradient
pass (:func:`_grad_pass`, the only place the head gradients are accumulated) turns each chunk's
closed-form ``dz`` into ``d hidden = dz W`` rows, ``d weight += dz^T h`` and
``d bias += sum dz``, in float32 (float64 for float64 inputs).

Both custom VJPs are written with differentiable JAX ops on correct residuals, so their second
derivatives (``jax.hessian``, ``jvp`` of ``grad``) are exact; the tests check them with
``jax.test_util.check_grads(order=2)`` and against autodiff of the core.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._vocab import (
    add_rows,
    compute_dtype,
    logits_grad,
    rows,
    stats_forward,
    walk_chunks,
    zero_from,
)

__all__ = ["token_stats_from_hidden", "token_stats_from_hidden_fast"]


def _matmul(x: jax.Array, y: jax.Array, contract: tuple[int, int], cdt: Any) -> jax.Array:
    # bf16/fp16 inputs: the matmul accumulates in float32 (preferred_element_type).
    dt = jnp.promote_types(x.dtype, y.dtype)
    dims = (((contract[0],), (contract[1],)), ((), ()))
    return lax.dot_general(x.astype(dt), y.astype(dt), dims, preferred_element_type=cdt)


def _linear(h: jax.Array, w: jax.Array, b: jax.Array | None, cdt: Any) -> jax.Array:
    z = _matmul(h, w, (1, 1), cdt)
    return z if b is None else z + b.astype(cdt)[None, :]


def _hidden_chunk(params, actions, valid, refs, start, c, cdt):
    """``(z, a, zr, valid, h)`` for one chunk: policy logits, actions, reference logits (or
    ``None``), validity and the (sanitized) hidden rows."""
    hidden, weight, bias = params
    v = rows(valid, start, c)
    h = jnp.where(v[:, None], rows(hidden, start, c), 0)  # padding rows: NaN-proof
    a = jnp.where(v, rows(actions, start, c), 0)
    if refs is None:
        return _linear(h, weight, bias, cdt), a, None, v, h
    ref_h, ref_w, ref_b = refs
    hr = jnp.where(v[:, None], rows(ref_h, start, c), 0)
    if ref_w is None:
        # Shared LM head (``ref_weight`` not given): project policy and reference rows in ONE
        # GEMM of 2c rows. XLA:CPU runs one larger GEMM markedly faster than two of c rows
        # (chunk 256 ran at ~0.98x naive vs ~1.3x at 128), without the memory of a larger
        # chunk elsewhere. The reference half is a constant: the custom VJPs never
        # differentiate it, and stop_gradient keeps any outer trace from doing so.
        zz = _matmul(jnp.concatenate([h, hr], axis=0), weight, (1, 1), cdt)
        z, zr = zz[:c], lax.stop_gradient(zz[c:])
        z = z if bias is None else z + bias.astype(cdt)[None, :]
        zr = zr if ref_b is None else zr + ref_b.astype(cdt)[None, :]
        return z, a, zr, v, h
    return _linear(h, weight, bias, cdt), a, _linear(hr, ref_w, ref_b, cdt), v, h


def _forward(params, actions, valid, refs, chunk):
    """``(logp, entropy, kl)`` ``[N]`` (``kl`` zeros without ``refs``): 1-2 GEMMs per chunk."""
    cdt = compute_dtype(params[0].dtype)
    fn = lambda start, c: _hidden_chunk(params, actions, valid, refs, start, c, cdt)[:4]
    return stats_forward(fn, params[0].shape[0], chunk, cdt, (params, actions, valid, refs))


def _grad_pass(params, actions, valid, refs, g, chunk):
    """``(kl [N], (d hidden, d weight, d bias))`` for cotangents ``g = (g_lp, g_ent, g_kl)``
    of the three ``[N]`` outputs, in the compute dtype: one sweep of 2 (+1 with ``refs``)
    GEMMs per chunk."""
    hidden, weight, bias = params
    n, cdt = hidden.shape[0], compute_dtype(hidden.dtype)

    def body(start, c, own, carry):
        kl, dh, dw, db = carry
        z, a, zr, v, h = _hidden_chunk(params, actions, valid, refs, start, c, cdt)
        own = own & v
        k_c, dz = logits_grad(z, a, zr, *(rows(x, start, c).astype(cdt) for x in g))
        dz = jnp.where(own[:, None], dz, 0)  # [c, V], the only large temporary
        if k_c is not None:
            kl = add_rows(kl, start, jnp.where(own, k_c, 0))
        dh = add_rows(dh, start, _matmul(dz, weight, (1, 0), cdt))
        dw = dw + _matmul(dz, h, (0, 0), cdt)
        db = None if db is None else db + jnp.sum(dz, axis=0)
        return kl, dh, dw, db

    z0 = zero_from(cdt, params, actions, valid, refs, g)
    carry = (
        jnp.zeros((n,), cdt) + z0,
        jnp.zeros(hidden.shape, cdt) + z0,
        jnp.zeros(weight.shape, cdt) + z0,
        None if bias is None else jnp.zeros(bias.shape, cdt) + z0,
    )
    kl, *grads = walk_chunks(n, chunk, body, carry)
    return kl, tuple(grads)


def _cast_like(grads, params):
    return tuple(None if p is None else d.astype(p.dtype) for d, p in zip(grads, params))


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def token_stats_from_hidden(
    params: tuple[jax.Array, jax.Array, jax.Array | None],
    actions: jax.Array,
    valid: jax.Array,
    refs: tuple[jax.Array, jax.Array | None, jax.Array | None] | None,
    chunk: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(logp, entropy, kl)`` ``[N]`` from ``params = (hidden [N, H], weight [V, H], bias)``.

    ``refs = (ref_hidden [N, H], ref_weight [V, H], ref_bias)`` (constants) or ``None``;
    ``ref_weight = None`` means the reference projects with the policy's ``weight`` (as a
    constant) and ``ref_bias``.
    """
    return _forward(params, actions, valid, refs, chunk)


def _hidden_fwd(params, actions, valid, refs, chunk):
    return _forward(params, actions, valid, refs, chunk), (params, actions, valid, refs)


def _hidden_bwd(chunk, res, cts):
    params, actions, valid, refs = res
    grads = _grad_pass(params, actions, valid, refs, cts, chunk)[1]
    return _cast_like(grads, params), None, None, None


token_stats_from_hidden.defvjp(_hidden_fwd, _hidden_bwd)


# ---------------------------------------------------------------------------------------------
# 5 GEMMs per chunk instead of 6: the loss gradient is formed in the differentiated forward
# ---------------------------------------------------------------------------------------------
#
# Why: under ``value_and_grad`` the path above projects the policy and the reference logits in
# the forward, then projects both again in the backward before forming ``d hidden`` and
# ``d weight``: 6 ``[c, H] x [H, V]``-sized GEMMs per chunk where a materializing
# implementation runs 4. The cotangents the backward will receive for the loss are known in
# the forward, though: ``cot_fn`` gives them from ``(logp, entropy)`` alone (the KL enters the
# loss linearly). So the differentiated forward (the ``fwd`` rule, used only under autodiff)
#   pass 1: projects the policy only -> logp, entropy (1 GEMM);
#   asks ``cot_fn`` for the loss's cotangents ``g`` of (logp, entropy, kl) at those values;
#   pass 2: :func:`_grad_pass` for ``g`` -> the KL and ``G = (d hidden, d weight, d bias)``
#           (2 + 2 GEMMs).
# The backward then checks that the cotangents it receives are ``s * g`` (true whenever only
# ``loss`` is differentiated, with ``s`` the loss cotangent, 1 under ``grad``) and returns
# ``s * G``; any other cotangent (``weights`` or ``log_likelihood`` differentiated too) takes
# the exact recomputation of :func:`_hidden_bwd`, so every output stays differentiable.
# ``g`` is *not* detached: differentiating ``s * G`` again then follows ``g``'s dependence on
# the parameters (and on the coefficients in ``aux``), which keeps second derivatives exact.
# Without autodiff the primal rule is the plain forward.


def _proportional(cts, g, cdt):
    """``(s, ok)``: ``ok`` when ``cts == s * g`` up to rounding (``g`` the expected ones)."""
    dot = sum(jnp.sum(c.astype(cdt) * x) for c, x in zip(cts, g))
    gg = sum(jnp.sum(x * x) for x in g)
    s = jnp.where(gg > 0, dot / jnp.where(gg > 0, gg, 1), 0)
    scale = jnp.max(jnp.stack([jnp.max(jnp.abs(c.astype(cdt)), initial=0) for c in cts]))
    resid = jnp.max(
        jnp.stack([jnp.max(jnp.abs(c.astype(cdt) - s * x), initial=0) for c, x in zip(cts, g)])
    )
    # 64 ulps of the largest cotangent: the two are the same computation, so a cotangent that is
    # really s * g differs by rounding only; anything else takes the exact path.
    ok = resid <= 64 * jnp.finfo(cdt).eps * scale
    return s, ok & jnp.isfinite(s)


def _float_zeros(tree):
    """Zero cotangents for ``tree`` (``float0`` for integer/bool leaves)."""

    def zero(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.zeros_like(x)
        return np.zeros(x.shape, dtype=jax.dtypes.float0)

    return jax.tree_util.tree_map(zero, tree)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def token_stats_from_hidden_fast(params, actions, valid, refs, aux, chunk: int, cot_fn):
    """As :func:`token_stats_from_hidden`, forming the loss gradient in the forward (5 GEMMs).

    ``cot_fn(logp, entropy, aux) -> (g_lp, g_ent, g_kl)`` (static, hashable) gives the
    cotangents that the loss sends to the three ``[N]`` outputs; ``aux`` (a pytree of arrays
    it needs: returns, mask, coefficients...) receives no gradient (the outputs do not depend
    on it).
    """
    del aux, cot_fn
    return _forward(params, actions, valid, refs, chunk)


def _fast_fwd(params, actions, valid, refs, aux, chunk, cot_fn):
    cdt = compute_dtype(params[0].dtype)
    # Pass 1: policy logits only (the reference is not needed for the loss's cotangents).
    lp, ent, _ = _forward(params, actions, valid, None, chunk)
    g = tuple(x.astype(cdt) for x in cot_fn(lp, ent, aux))
    kl, big_g = _grad_pass(params, actions, valid, refs, g, chunk)
    return (lp, ent, kl), ((params, actions, valid, refs), g, big_g, aux)


def _fast_bwd(chunk, cot_fn, res, cts):
    inputs, g, big_g, aux = res
    params, refs = inputs[0], inputs[3]
    use = (0, 1, 2) if refs is not None else (0, 1)  # without refs the kl output is constant
    s, ok = _proportional([cts[i] for i in use], [g[i] for i in use], g[0].dtype)

    def fast(_):
        return _cast_like(tuple(None if d is None else s * d for d in big_g), params)

    def exact(_):
        return _hidden_bwd(chunk, inputs, cts)[0]

    return lax.cond(ok, fast, exact, None), None, None, None, _float_zeros(aux)


token_stats_from_hidden_fast.defvjp(_fast_fwd, _fast_bwd)
