"""Per-token statistics from hidden states and the LM head (fused linear + vocabulary pass).

The logits ``z = h W^T + b`` are never materialized for all tokens, nor for all of the
vocabulary at once: the walk is two-dimensional, over chunks of ``chunk`` tokens and tiles of
the vocabulary (:func:`_vocab_tile` columns, about 2**18 elements per ``[chunk, tile]`` block),
so every large temporary is one small block that stays in cache and never grows with ``N`` or
``V``.

- :func:`_stats` (the forward): token chunks outside, vocabulary tiles inside. Each tile's
  logits (policy and reference: one GEMM of ``2 chunk`` rows when they share the head) update
  an online log-sum-exp, the entropy sum ``sum e^(z-m) (z-m)`` and the KL sum
  ``sum e^(z-m) (z - z_ref)``, rescaled whenever the running max ``m`` moves; the log-prob of
  the action is the row dot ``h . W[a] + b[a]``. It returns ``(logp, entropy, kl)`` and the
  row log-sum-exps ``lse``, ``lse_ref``.
- :func:`_grad_pass` (the only place the head gradients are accumulated): vocabulary tiles
  outside, token chunks inside. With the row statistics known, a tile's closed-form ``dz``
  (``_vocab.logits_grad``'s formula) needs nothing beyond that tile, so ``d weight`` for the
  tile is summed over all tokens in a ``[tile, H]`` accumulator and written into its rows
  once: no ``[V, H]`` temporary and no per-chunk read-modify-write of the whole ``d weight``
  (a ``[V, H]`` product plus its add per chunk, the largest temporary of a walk over token
  chunks only). ``d hidden`` rows are accumulated per tile (``[N, H]``, small), ``d bias`` per
  tile. Everything is float32 (float64 for float64 inputs).

Cost: 2 projections in the forward (policy and reference) and 4 GEMMs in the gradient pass
(both projections again, ``d hidden``, ``d weight``); on CPU the in-cache blocks make these
faster than a walk over full ``[chunk, V]`` rows with one projection fewer (see
docs/benchmarks.md).

Both custom VJPs are written with differentiable JAX ops on correct residuals (the online
max is a constant shift, as in ``log_softmax``), so their second derivatives (``jax.hessian``,
``jvp`` of ``grad``) are exact; the tests check them with
``jax.test_util.check_grads(order=2)`` and against autodiff of the core.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ._vocab import add_rows, compute_dtype, grad_from_softmax, rows, walk_chunks, zero_from

__all__ = ["token_stats_from_hidden"]

# Elements per [chunk, tile] block: 2**18 float32 = 1 MiB, so the few blocks alive at a time
# (logits, reference logits, dz) stay in the CPU's L2/L3 and total a few MiB, whatever N or V.
_TILE_BUDGET = 1 << 18
_MIN_TILE = 128  # narrower tiles would starve the GEMMs


def _vocab_tile(v: int, c: int) -> int:
    """Vocabulary columns per tile for chunks of ``c`` tokens: about ``_TILE_BUDGET / c``
    (at least ``_MIN_TILE``), evened out over the tiles and rounded up to a multiple of 8."""
    target = max(_MIN_TILE, _TILE_BUDGET // max(c, 1))
    if target >= v:
        return v
    n_tiles = -(-v // target)
    per_tile = -(-v // n_tiles)
    return min(v, -(-per_tile // 8) * 8)


def _matmul(x: jax.Array, y: jax.Array, contract: tuple[int, int], cdt: Any) -> jax.Array:
    # bf16/fp16 inputs: the matmul accumulates in float32 (preferred_element_type).
    dt = jnp.promote_types(x.dtype, y.dtype)
    dims = (((contract[0],), (contract[1],)), ((), ()))
    return lax.dot_general(x.astype(dt), y.astype(dt), dims, preferred_element_type=cdt)


def _plus(z: jax.Array, b: jax.Array | None, cdt: Any) -> jax.Array:
    return z if b is None else z + b.astype(cdt)[None, :]


def _tile_logits(h, hr, head, start, vt, cdt):
    """``(z, zr)`` ``[c, vt]``: policy and reference (or ``None``) logits of the vocabulary
    columns ``start .. start + vt - 1`` for the (sanitized) rows ``h``, ``hr``."""
    weight, bias, ref_w, ref_b = head
    wt = rows(weight, start, vt)
    bt = None if bias is None else rows(bias, start, vt)
    if hr is None:
        return _plus(_matmul(h, wt, (1, 1), cdt), bt, cdt), None
    rbt = None if ref_b is None else rows(ref_b, start, vt)
    if ref_w is None:
        # Shared LM head (``ref_weight`` not given): project policy and reference rows in ONE
        # GEMM of 2c rows. XLA:CPU runs one larger GEMM faster than two of c rows, without a
        # larger block elsewhere. The reference half is a constant: the custom VJPs never
        # differentiate it, and stop_gradient keeps any outer trace from doing so.
        c = h.shape[0]
        zz = _matmul(jnp.concatenate([h, hr], axis=0), wt, (1, 1), cdt)
        return _plus(zz[:c], bt, cdt), lax.stop_gradient(_plus(zz[c:], rbt, cdt))
    zr = _plus(_matmul(hr, rows(ref_w, start, vt), (1, 1), cdt), rbt, cdt)
    return _plus(_matmul(h, wt, (1, 1), cdt), bt, cdt), zr


def _chunk_rows(params, actions, valid, refs, start, c):
    """``(h, hr, a, v)`` of one token chunk: padding rows zeroed (NaN-proof), actions 0 there."""
    v = rows(valid, start, c)
    h = jnp.where(v[:, None], rows(params[0], start, c), 0)
    hr = None if refs is None else jnp.where(v[:, None], rows(refs[0], start, c), 0)
    return h, hr, jnp.where(v, rows(actions, start, c), 0), v


def _head(params, refs):
    return (params[1], params[2], None, None) if refs is None else (params[1], params[2], *refs[1:])


def _online(m, s, z, keep):
    """One tile of an online log-sum-exp over the rows of ``z`` (``keep``: columns to count,
    ``None`` = all). ``(m_new, shift, d, scale, e)``: the running max, the finite shift the new
    sums use, ``d = m - shift`` and ``scale = e^d`` (0 while no finite logit was seen) that
    carry the old sums over, and ``e = e^(z - shift)``. The max is a constant shift (exactly as
    in ``log_softmax``), so derivatives of the results are exact."""
    m_new = jnp.maximum(m, lax.stop_gradient(jnp.max(z, axis=1)))
    shift = jnp.where(jnp.isfinite(m_new), m_new, 0)
    fin = jnp.isfinite(m)
    d = jnp.where(fin, m - shift, 0)
    scale = jnp.where(fin, jnp.exp(d), 0)
    e = jnp.exp(z - shift[:, None])
    if keep is not None:
        e = jnp.where(keep[None, :], e, 0)
    return m_new, shift, d, scale, e


def _stats(params, actions, valid, refs, chunk):
    """``(logp, entropy, kl, lse, lse_ref)`` ``[N]`` in the compute dtype (``kl`` zeros and
    ``lse_ref`` ``None`` without ``refs``); padding rows give 0."""
    hidden, weight, bias = params
    n, v = hidden.shape[0], weight.shape[0]
    cdt = compute_dtype(hidden.dtype)
    z0 = zero_from(cdt, params, actions, valid, refs)
    head = _head(params, refs)
    vt = _vocab_tile(v, max(1, min(chunk, n)))
    overlap = v % vt != 0  # the last tile starts at v - vt: mask the columns seen before

    def chunk_body(start, c, own, out):
        h, hr, a, vr = _chunk_rows(params, actions, valid, refs, start, c)

        def tile_body(t0, vt_, own_c, acc):
            m, s, u, mr, sr, w = acc
            z, zr = _tile_logits(h, hr, head, t0, vt_, cdt)
            keep = own_c if overlap else None
            m, shift, d, scale, e = _online(m, s, z, keep)
            ez = jnp.where(e > 0, e * (z - shift[:, None]), 0)
            # u = sum e^(z - shift) (z - shift), carried over a moved shift exactly.
            u = scale * (u + d * s) + jnp.sum(ez, axis=1)
            s = scale * s + jnp.sum(e, axis=1)
            if zr is not None:
                w = scale * w + jnp.sum(jnp.where(e > 0, e * (z - zr), 0), axis=1)
                mr, _, _, scale_r, er = _online(mr, sr, zr, keep)
                sr = scale_r * sr + jnp.sum(er, axis=1)
            return m, s, u, mr, sr, w

        zeros = jnp.zeros((c,), cdt) + z0
        ninf = zeros - jnp.inf
        m, s, u, mr, sr, w = walk_chunks(v, vt, tile_body, (ninf, zeros, zeros, ninf, zeros, zeros))
        lse = jnp.where(jnp.isfinite(m), m, 0) + jnp.log(s)
        ent = jnp.log(s) - u / s  # -sum p log p
        # The action's logit as a row dot (NaN for an out-of-range action, as the gather of
        # the logits path gives).
        wa = jnp.take(weight, a, axis=0, mode="fill", fill_value=jnp.nan)
        za = jnp.sum(h.astype(cdt) * wa.astype(cdt), axis=1)
        if bias is not None:
            za = za + jnp.take(bias, a, mode="fill", fill_value=jnp.nan).astype(cdt)
        new = [za - lse, ent, zeros, lse, None]
        if hr is not None:
            lse_r = jnp.where(jnp.isfinite(mr), mr, 0) + jnp.log(sr)
            new[2], new[4] = w / s - (lse - lse_r), lse_r  # sum p (log p - log p_ref)
        keep_r = own & vr
        return tuple(
            buf if x is None else add_rows(buf, start, jnp.where(keep_r, x, 0))
            for buf, x in zip(out, new)
        )

    zn = jnp.zeros((n,), cdt) + z0
    out = walk_chunks(n, chunk, chunk_body, (zn, zn, zn, zn, zn))
    return (*out[:4], out[4] if refs is not None else None)


def _forward(params, actions, valid, refs, chunk):
    """``(logp, entropy, kl)`` ``[N]`` (``kl`` zeros without ``refs``)."""
    return _stats(params, actions, valid, refs, chunk)[:3]


def _grad_pass(params, actions, valid, refs, g, st, chunk):
    """``(d hidden, d weight, d bias)`` in the compute dtype for cotangents
    ``g = (g_lp, g_ent, g_kl)`` of the three ``[N]`` outputs, given ``st = _stats(...)``: one
    sweep of 2 (+1 with ``refs``) GEMMs per block, vocabulary tiles outside."""
    hidden, weight, bias = params
    (n, hdim), v = hidden.shape, weight.shape[0]
    cdt = compute_dtype(hidden.dtype)
    _, ent, kl, lse, lse_r = st
    g = tuple(x.astype(cdt) for x in g)
    z0 = zero_from(cdt, params, actions, valid, refs, g)
    head = _head(params, refs)
    c_rows = max(1, min(chunk, n))
    vt = _vocab_tile(v, c_rows)
    overlap = v % vt != 0

    def tile_body(t0, vt_, own_c, carry):
        dh, dw, db = carry
        wt = rows(weight, t0, vt_)

        def chunk_body(start, c, own, inner):
            dh, acc_w, acc_b = inner
            h, hr, a, vr = _chunk_rows(params, actions, valid, refs, start, c)
            z, zr = _tile_logits(h, hr, head, t0, vt_, cdt)
            g_lp, g_ent, g_kl = (rows(x, start, c)[:, None] for x in g)
            lsm = z - rows(lse, start, c)[:, None]
            p = jnp.exp(lsm)
            # Masked vocabulary (p = 0) counts as 0, as in _vocab.token_stats.
            lsm_f = jnp.where(p > 0, lsm, 0)
            diff_f = None
            if zr is not None:
                diff = lsm - (zr - rows(lse_r, start, c)[:, None])
                diff_f = jnp.where(jnp.isfinite(diff), diff, 0)
            onehot = (a - t0)[:, None] == jnp.arange(vt_, dtype=a.dtype)[None, :]
            ent_c, kl_c = rows(ent, start, c)[:, None], rows(kl, start, c)[:, None]
            dz = grad_from_softmax(p, lsm_f, diff_f, ent_c, kl_c, onehot, g_lp, g_ent, g_kl)
            keep = (own & vr)[:, None]
            if overlap:
                keep = keep & own_c[None, :]
            dz = jnp.where(keep, dz, 0)  # [c, vt], the only large temporary
            dh = add_rows(dh, start, _matmul(dz, wt, (1, 0), cdt))
            acc_w = acc_w + _matmul(dz, h, (0, 0), cdt)
            acc_b = None if acc_b is None else acc_b + jnp.sum(dz, axis=0)
            return dh, acc_w, acc_b

        inner0 = (
            dh,
            jnp.zeros((vt_, hdim), cdt) + z0,
            None if db is None else jnp.zeros((vt_,), cdt) + z0,
        )
        dh, acc_w, acc_b = walk_chunks(n, chunk, chunk_body, inner0)
        dw = add_rows(dw, t0, acc_w)
        db = None if db is None else add_rows(db, t0, acc_b)
        return dh, dw, db

    carry = (
        jnp.zeros(hidden.shape, cdt) + z0,
        jnp.zeros(weight.shape, cdt) + z0,
        None if bias is None else jnp.zeros(bias.shape, cdt) + z0,
    )
    return walk_chunks(v, vt, tile_body, carry)


def _cast_like(grads, params):
    return tuple(None if p is None else d.astype(p.dtype) for d, p in zip(grads, params))


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def token_stats_from_hidden(
    params: tuple[jax.Array, jax.Array, jax.Array | None], actions: jax.Array, valid: jax.Array,
    refs: tuple[jax.Array, jax.Array | None, jax.Array | None] | None, chunk: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:  # fmt: skip
    """``(logp, entropy, kl)`` ``[N]`` from ``params = (hidden [N, H], weight [V, H], bias)``.

    ``refs = (ref_hidden [N, H], ref_weight [V, H], ref_bias)`` (constants) or ``None``;
    ``ref_weight = None`` means the reference projects with the policy's ``weight`` (as a
    constant) and ``ref_bias``.
    """
    return _forward(params, actions, valid, refs, chunk)


def _hidden_fwd(params, actions, valid, refs, chunk):
    st = _stats(params, actions, valid, refs, chunk)
    # The row statistics are [N] vectors: keeping them spares the backward the 2 projections
    # of a second statistics pass, so the backward is the gradient pass alone, exact for any
    # cotangent. (Forming the loss gradient in the forward instead saves no GEMM here and
    # needs a lax.cond on the [V, H] gradient in the backward, which XLA copies.)
    return st[:3], ((params, actions, valid, refs), st)


def _hidden_bwd(chunk, res, cts):
    (params, actions, valid, refs), st = res
    grads = _grad_pass(params, actions, valid, refs, cts, st, chunk)
    return _cast_like(grads, params), None, None, None


token_stats_from_hidden.defvjp(_hidden_fwd, _hidden_bwd)
