"""Per-token log-prob, exact entropy and exact KL, chunked over tokens (``jax.custom_vjp``).

Why chunks and a custom VJP: autodiff of ``log_softmax`` over ``[N, V]`` logits keeps several
``[N, V]`` float32 temporaries alive until the backward (the log-softmax, the probabilities,
the reference log-softmax...). Here the forward walks the ``N = M * T`` tokens ``chunk`` rows at
a time and keeps only ``[N]`` results; the backward walks them again, recomputes one chunk's
softmax and writes that chunk's gradient in closed form:

    d logp_a / dz  = onehot(a) - p
    d H / dz       = -p * (log p + H)
    d KL / dz      =  p * (log p - log p_ref - KL)

so at most one chunk of ``[chunk, V]`` temporaries is alive at a time, whatever ``N``. For the
fused-linear path (``z = h W^T + b``) the logits are never materialized for all tokens either:
the backward turns each chunk's ``dz`` into ``dh = dz W`` rows and accumulates
``dW += dz^T h`` and ``db += sum dz`` in float32.

Chunks are taken with ``lax.dynamic_slice`` inside a ``lax.fori_loop``. The last chunk starts
at ``N - chunk`` (dynamic slices must stay in bounds), so it overlaps the one before; its rows
that an earlier chunk already covered are masked out (``owned``) before anything is added.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "token_stats_from_hidden",
    "token_stats_from_hidden_fast",
    "token_stats_from_logits",
]


def _log_softmax(z: jax.Array) -> jax.Array:
    peak = jnp.max(z, axis=-1, keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, jnp.zeros_like(peak))  # all -inf rows
    shifted = z - peak
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def _stats(z: jax.Array, a: jax.Array, zr: jax.Array | None):
    """Per-row logp of action ``a``, entropy and KL (``None`` without ``zr``) + bwd pieces."""
    lsm = _log_softmax(z)
    p = jnp.exp(lsm)
    # Masked vocabulary (-inf logits): p = 0 there, and 0 * -inf must count as 0, not NaN.
    lsm_f = jnp.where(p > 0, lsm, jnp.zeros_like(lsm))
    ent = -jnp.sum(p * lsm_f, axis=-1)
    logp = jnp.take_along_axis(lsm, a[:, None], axis=-1, mode="fill", fill_value=jnp.nan)[:, 0]
    if zr is None:
        return logp, ent, None, (p, lsm_f, None)
    diff = lsm - _log_softmax(zr)
    diff_f = jnp.where(jnp.isfinite(diff), diff, jnp.zeros_like(diff))
    kl = jnp.sum(jnp.where(p > 0, p * diff_f, jnp.zeros_like(p)), axis=-1)
    # p > 0 where p_ref = 0: the KL really is +inf; keep it visible (as the core does).
    kl = jnp.where(jnp.any((p > 0) & jnp.isinf(diff), axis=-1), jnp.inf, kl)
    return logp, ent, kl, (p, lsm_f, diff_f)


def _dz(z, a, zr, g_lp, g_ent, g_kl):
    """Closed-form gradient of ``sum(g_lp*logp + g_ent*H + g_kl*KL)`` w.r.t. the chunk logits."""
    return _kl_and_dz(z, a, zr, g_lp, g_ent, g_kl)[1]


def _kl_and_dz(z, a, zr, g_lp, g_ent, g_kl):
    """``(kl, dz)`` from one softmax: the KL rows (``None`` without ``zr``) and :func:`_dz`."""
    _, ent, kl, (p, lsm_f, diff_f) = _stats(z, a, zr)
    inner = -g_lp[:, None] - g_ent[:, None] * (lsm_f + ent[:, None])
    if zr is not None:
        inner = inner + g_kl[:, None] * (diff_f - kl[:, None])
    onehot = a[:, None] == jnp.arange(z.shape[-1], dtype=a.dtype)[None, :]
    return kl, jnp.where(onehot, g_lp[:, None], 0.0).astype(z.dtype) + p * inner


def _chunks(n: int, chunk: int) -> tuple[int, int]:
    c = max(1, min(chunk, n))
    return c, -(-n // c)


def _slice(x: jax.Array, start: jax.Array, c: int) -> jax.Array:
    return lax.dynamic_slice_in_dim(x, start, c, axis=0)


def _add_rows(buf: jax.Array, start: jax.Array, rows: jax.Array) -> jax.Array:
    return lax.dynamic_update_slice_in_dim(buf, _slice(buf, start, rows.shape[0]) + rows,
                                           start, axis=0)


def _owned(i: jax.Array, start: jax.Array, c: int) -> jax.Array:
    """Rows of chunk ``i`` that no earlier chunk covered (the last chunk overlaps)."""
    return start + jnp.arange(c) >= i * c


def _start(i: jax.Array, n: int, c: int) -> jax.Array:
    return jnp.minimum(i * c, n - c)


def _zero_from(cdt: Any, *arrays: Any) -> jax.Array:
    """A 0-d zero that *depends on* ``arrays``, to seed the loop buffers.

    Under ``shard_map`` (``check_vma``) a loop carry must keep one type: a buffer made by
    ``jnp.zeros`` is device-invariant, but the rows added to it vary over the mapped axis when
    any input does. Adding this zero (computed from one element of each input, through
    ``isnan`` so padding garbage cannot leak in) gives the buffer the inputs' variance. Outside
    ``shard_map`` it is a no-op scalar.
    """
    z = jnp.zeros((), cdt)
    for a in jax.tree_util.tree_leaves(arrays):
        if a.size:
            z = z + jnp.isnan(a.reshape(-1)[0]).astype(cdt) * 0
    return z


# ---------------------------------------------------------------------------------------------
# From logits [N, V]
# ---------------------------------------------------------------------------------------------


def _logits_chunk(logits, actions, valid, ref, start, c, cdt):
    v = _slice(valid, start, c)
    z = jnp.where(v[:, None], _slice(logits, start, c), 0).astype(cdt)  # sanitize padding rows
    a = jnp.where(v, _slice(actions, start, c), 0)
    zr = None
    if ref is not None:
        zr = jnp.where(v[:, None], _slice(ref, start, c), 0).astype(cdt)
    return z, a, zr, v


def _stats_forward(chunk_fn, n, chunk, has_ref, cdt, inputs):
    c, n_chunks = _chunks(n, chunk)
    zeros = jnp.zeros((n,), cdt) + _zero_from(cdt, inputs)

    def body(i, carry):
        lp, en, kl = carry
        start = _start(i, n, c)
        z, a, zr, v = chunk_fn(start, c)
        own = _owned(i, start, c) & v
        l_c, e_c, k_c, _ = _stats(z, a, zr)
        lp = _add_rows(lp, start, jnp.where(own, l_c, 0))
        en = _add_rows(en, start, jnp.where(own, e_c, 0))
        if has_ref:
            kl = _add_rows(kl, start, jnp.where(own, k_c, 0))
        return lp, en, kl

    if n == 0:
        return zeros, zeros, zeros
    return lax.fori_loop(0, n_chunks, body, (zeros, zeros, zeros))


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def token_stats_from_logits(
    logits: jax.Array, actions: jax.Array, valid: jax.Array, ref: jax.Array | None, chunk: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(logp, entropy, kl)``, each ``[N]`` in the compute dtype, from ``logits [N, V]``.

    ``actions [N]`` int, ``valid [N]`` bool (invalid rows give 0 and receive no gradient),
    ``ref [N, V]`` reference logits (a constant) or ``None`` (then ``kl`` is zeros).
    """
    return _logits_fwd(logits, actions, valid, ref, chunk)[0]


def _cdt(dtype: Any) -> Any:
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _logits_fwd(logits, actions, valid, ref, chunk):
    n, cdt = logits.shape[0], _cdt(logits.dtype)
    fn = lambda start, c: _logits_chunk(logits, actions, valid, ref, start, c, cdt)
    out = _stats_forward(fn, n, chunk, ref is not None, cdt, (logits, actions, valid, ref))
    return out, (logits, actions, valid, ref)


def _logits_bwd(chunk, res, cts):
    logits, actions, valid, ref = res
    g_lp, g_ent, g_kl = cts
    n, cdt = logits.shape[0], _cdt(logits.dtype)
    c, n_chunks = _chunks(n, chunk)

    def body(i, d):
        start = _start(i, n, c)
        z, a, zr, v = _logits_chunk(logits, actions, valid, ref, start, c, cdt)
        own = (_owned(i, start, c) & v)[:, None]
        gs = [_slice(g, start, c).astype(cdt) for g in (g_lp, g_ent, g_kl)]
        dz = jnp.where(own, _dz(z, a, zr, *gs), 0)
        return _add_rows(d, start, dz.astype(d.dtype))

    d = jnp.zeros(logits.shape, logits.dtype)
    d = d + _zero_from(cdt, res, cts).astype(d.dtype)
    if n > 0:
        d = lax.fori_loop(0, n_chunks, body, d)
    return d, None, None, None


token_stats_from_logits.defvjp(_logits_fwd, _logits_bwd)


# ---------------------------------------------------------------------------------------------
# From hidden states [N, H] and the LM head [V, H] (+ bias [V])
# ---------------------------------------------------------------------------------------------


def _linear(h: jax.Array, w: jax.Array, b: jax.Array | None, cdt: Any) -> jax.Array:
    # bf16/fp16 inputs: the matmul accumulates in float32 (preferred_element_type).
    dt = jnp.promote_types(h.dtype, w.dtype)
    z = lax.dot_general(h.astype(dt), w.astype(dt), (((1,), (1,)), ((), ())),
                        preferred_element_type=cdt)
    return z if b is None else z + b.astype(cdt)[None, :]


def _hidden_chunk(params, actions, valid, refs, start, c, cdt):
    hidden, weight, bias = params
    v = _slice(valid, start, c)
    h = jnp.where(v[:, None], _slice(hidden, start, c), 0)  # padding rows: NaN-proof
    a = jnp.where(v, _slice(actions, start, c), 0)
    if refs is None:
        return _linear(h, weight, bias, cdt), a, None, v, h
    ref_h, ref_w, ref_b = refs
    hr = jnp.where(v[:, None], _slice(ref_h, start, c), 0)
    if ref_w is None:
        # Shared LM head (``ref_weight`` not given): project policy and reference rows in ONE
        # GEMM of 2c rows. XLA:CPU runs one larger GEMM markedly faster than two of c rows
        # (chunk 256 ran at ~0.98x naive vs ~1.3x at 128), without the memory of a larger
        # chunk elsewhere. The reference half is a constant: the custom VJPs never
        # differentiate it, and stop_gradient keeps any outer trace from doing so.
        zz = _linear(jnp.concatenate([h, hr], axis=0), weight, bias, cdt)
        return zz[:c], a, lax.stop_gradient(zz[c:]), v, h
    return _linear(h, weight, bias, cdt), a, _linear(hr, ref_w, ref_b, cdt), v, h


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def token_stats_from_hidden(
    params: tuple[jax.Array, jax.Array, jax.Array | None],
    actions: jax.Array,
    valid: jax.Array,
    refs: tuple[jax.Array, jax.Array, jax.Array | None] | None,
    chunk: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(logp, entropy, kl)`` ``[N]`` from ``params = (hidden [N, H], weight [V, H], bias)``.

    ``refs = (ref_hidden [N, H], ref_weight [V, H], ref_bias)`` (constants) or ``None``.
    """
    return _hidden_fwd(params, actions, valid, refs, chunk)[0]


def _hidden_fwd(params, actions, valid, refs, chunk):
    hidden = params[0]
    n, cdt = hidden.shape[0], _cdt(hidden.dtype)
    fn = lambda start, c: _hidden_chunk(params, actions, valid, refs, start, c, cdt)[:4]
    inputs = (params, actions, valid, refs)
    out = _stats_forward(fn, n, chunk, refs is not None, cdt, inputs)
    return out, inputs


def _hidden_bwd(chunk, res, cts):
    params, actions, valid, refs = res
    hidden, weight, bias = params
    g_lp, g_ent, g_kl = cts
    n, cdt = hidden.shape[0], _cdt(hidden.dtype)
    c, n_chunks = _chunks(n, chunk)

    def body(i, carry):
        dh, dw, db = carry
        start = _start(i, n, c)
        z, a, zr, v, h = _hidden_chunk(params, actions, valid, refs, start, c, cdt)
        own = (_owned(i, start, c) & v)[:, None]
        gs = [_slice(g, start, c).astype(cdt) for g in (g_lp, g_ent, g_kl)]
        dz = jnp.where(own, _dz(z, a, zr, *gs), 0)  # [c, V], the only large temporary
        dh_c = lax.dot_general(dz, weight.astype(cdt), (((1,), (0,)), ((), ())),
                               preferred_element_type=cdt)
        dh = _add_rows(dh, start, dh_c)
        dw = dw + lax.dot_general(dz, h.astype(cdt), (((0,), (0,)), ((), ())),
                                  preferred_element_type=cdt)
        if db is not None:
            db = db + jnp.sum(dz, axis=0)
        return dh, dw, db

    z0 = _zero_from(cdt, res, cts)
    dh = jnp.zeros(hidden.shape, cdt) + z0
    dw = jnp.zeros(weight.shape, cdt) + z0
    db = None if bias is None else jnp.zeros(bias.shape, cdt) + z0
    if n > 0:
        dh, dw, db = lax.fori_loop(0, n_chunks, body, (dh, dw, db))
    grads = (
        dh.astype(hidden.dtype),
        dw.astype(weight.dtype),
        None if bias is None else db.astype(bias.dtype),
    )
    return grads, None, None, None


token_stats_from_hidden.defvjp(_hidden_fwd, _hidden_bwd)


# ---------------------------------------------------------------------------------------------
# From hidden states, 5 GEMMs per chunk instead of 6 (the gradient is formed in the forward)
# ---------------------------------------------------------------------------------------------
#
# Why: under ``value_and_grad`` the path above projects the policy and the reference logits in
# the forward, then projects both again in the backward before forming ``d hidden`` and
# ``d weight``: 6 ``[c, H] x [H, V]``-sized GEMMs per chunk where a materializing
# implementation runs 4. The cotangents the backward will receive for the loss are known in
# the forward, though: ``dJ/dL_k`` has a closed form that needs only ``L`` (see
# ``haepo_core._grad``) and the entropy/KL cotangents are ``-lambda/n`` and ``beta/n`` per
# valid token. So the differentiated forward (the ``fwd`` rule, used only under autodiff)
#   pass 1: projects the policy only -> logp, entropy (1 GEMM);
#   asks ``cot_fn`` for the loss's cotangents ``g`` of (logp, entropy, kl) at those values;
#   pass 2: projects policy and reference (2 GEMMs), computes the KL and the closed-form
#           ``dz`` for ``g``, and accumulates ``G = (d hidden, d weight, d bias)`` (2 GEMMs).
# The backward then checks that the cotangents it receives are ``s * g`` (true whenever only
# ``loss`` is differentiated, with ``s`` the loss cotangent, 1 under ``grad``) and returns
# ``s * G``; any other cotangent (``weights`` or ``log_likelihood`` differentiated too) takes
# the exact 4-GEMM recomputation of :func:`_hidden_bwd`, so every output stays differentiable.
# Without autodiff the primal rule is the plain 2-GEMM forward.


def _proportional(cts, g, cdt):
    """``(s, ok)``: ``ok`` when ``cts == s * g`` up to rounding (``g`` the expected ones)."""
    dot = sum(jnp.sum(c.astype(cdt) * x) for c, x in zip(cts, g))
    gg = sum(jnp.sum(x * x) for x in g)
    s = jnp.where(gg > 0, dot / jnp.where(gg > 0, gg, 1), 0)
    scale = jnp.max(jnp.stack([jnp.max(jnp.abs(c.astype(cdt)), initial=0) for c in cts]))
    resid = jnp.max(jnp.stack([jnp.max(jnp.abs(c.astype(cdt) - s * x), initial=0)
                               for c, x in zip(cts, g)]))
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
    it needs: returns, mask, coefficients...) is not differentiated through (the outputs do
    not depend on it).
    """
    del aux, cot_fn
    return _hidden_fwd(params, actions, valid, refs, chunk)[0]


def _fast_fwd(params, actions, valid, refs, aux, chunk, cot_fn):
    hidden, weight, bias = params
    n, cdt = hidden.shape[0], _cdt(hidden.dtype)
    inputs = (params, actions, valid, refs)
    # Pass 1: policy logits only (the reference is not needed for dJ/dL or the entropy).
    fn1 = lambda start, c: _hidden_chunk(params, actions, valid, None, start, c, cdt)[:4]
    lp, ent, _ = _stats_forward(fn1, n, chunk, False, cdt, inputs)
    g = tuple(lax.stop_gradient(x).astype(cdt) for x in cot_fn(lp, ent, aux))
    c, n_chunks = _chunks(n, chunk)

    def body(i, carry):
        kl, dh, dw, db = carry
        start = _start(i, n, c)
        z, a, zr, v, h = _hidden_chunk(params, actions, valid, refs, start, c, cdt)
        own = _owned(i, start, c) & v
        gs = [_slice(x, start, c) for x in g]
        k_c, dz = _kl_and_dz(z, a, zr, *gs)
        dz = jnp.where(own[:, None], dz, 0)
        if refs is not None:
            kl = _add_rows(kl, start, jnp.where(own, k_c, 0))
        dh = _add_rows(dh, start, lax.dot_general(
            dz, weight.astype(cdt), (((1,), (0,)), ((), ())), preferred_element_type=cdt))
        dw = dw + lax.dot_general(dz, h.astype(cdt), (((0,), (0,)), ((), ())),
                                  preferred_element_type=cdt)
        if db is not None:
            db = db + jnp.sum(dz, axis=0)
        return kl, dh, dw, db

    z0 = _zero_from(cdt, inputs, g)
    carry = (jnp.zeros((n,), cdt) + z0, jnp.zeros(hidden.shape, cdt) + z0,
             jnp.zeros(weight.shape, cdt) + z0,
             None if bias is None else jnp.zeros(bias.shape, cdt) + z0)
    if n > 0:
        carry = lax.fori_loop(0, n_chunks, body, carry)
    kl, dh, dw, db = carry
    return (lp, ent, kl), (inputs, g, (dh, dw, db), aux)


def _fast_bwd(chunk, cot_fn, res, cts):
    inputs, g, big_g, aux = res
    (hidden, weight, bias), refs = inputs[0], inputs[3]
    cdt = _cdt(hidden.dtype)
    use = (0, 1, 2) if refs is not None else (0, 1)  # without refs the kl output is constant
    s, ok = _proportional([cts[i] for i in use], [g[i] for i in use], cdt)

    def cast(dh, dw, db):
        return (dh.astype(hidden.dtype), dw.astype(weight.dtype),
                None if bias is None else db.astype(bias.dtype))

    def fast(_):
        dh, dw, db = big_g
        return cast(s * dh, s * dw, None if db is None else s * db)

    def exact(_):
        return _hidden_bwd(chunk, inputs, cts)[0]

    grads = lax.cond(ok, fast, exact, None)
    return grads, None, None, None, _float_zeros(aux)


token_stats_from_hidden_fast.defvjp(_fast_fwd, _fast_bwd)
