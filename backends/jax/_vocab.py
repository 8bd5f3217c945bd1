"""Per-token log-prob, exact entropy and exact KL from logits, chunked over tokens.

Why chunks and a custom VJP: autodiff of ``log_softmax`` over ``[N, V]`` logits keeps several
``[N, V]`` float32 temporaries alive until the backward (the log-softmax, the probabilities,
the reference log-softmax...). Here the forward walks the ``N = M * T`` tokens ``chunk`` rows at
a time and keeps only ``[N]`` results; the backward walks them again, recomputes one chunk's
softmax and writes that chunk's gradient in closed form (:func:`logits_grad`):

    d logp_a / dz  = onehot(a) - p
    d H / dz       = -p * (log p + H)
    d KL / dz      =  p * (log p - log p_ref - KL)

so at most one chunk of ``[chunk, V]`` temporaries is alive at a time, whatever ``N``.

The backward is written with differentiable JAX ops on the primal inputs (its residuals), so
differentiating it again (``jax.hessian``, ``jvp`` of ``grad``) gives exact second derivatives.

Chunks are taken with ``lax.dynamic_slice`` inside a ``lax.fori_loop`` (:func:`walk_chunks`).
The last chunk starts at ``N - chunk`` (dynamic slices must stay in bounds), so it overlaps the
one before; its rows that an earlier chunk already covered are masked out (``own``) before
anything is added.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "add_rows",
    "compute_dtype",
    "log_softmax",
    "logits_grad",
    "rows",
    "stats_forward",
    "token_stats",
    "token_stats_from_logits",
    "walk_chunks",
    "zero_from",
]


def compute_dtype(dtype: Any) -> Any:
    """float64 stays float64; every other float dtype computes in float32."""
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def log_softmax(z: jax.Array) -> jax.Array:
    """Log-softmax over the last axis; a row of all ``-inf`` gives ``-inf`` (not NaN)."""
    peak = lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))  # a constant shift
    peak = jnp.where(jnp.isfinite(peak), peak, jnp.zeros_like(peak))
    shifted = z - peak
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def token_stats(z: jax.Array, a: jax.Array, zr: jax.Array | None):
    """Per-row ``(logp of action a, entropy, KL or None, (p, log p, log p - log p_ref))``."""
    lsm = log_softmax(z)
    p = jnp.exp(lsm)
    # Masked vocabulary (-inf logits): p = 0 there, and 0 * -inf must count as 0, not NaN.
    lsm_f = jnp.where(p > 0, lsm, jnp.zeros_like(lsm))
    ent = -jnp.sum(p * lsm_f, axis=-1)
    logp = jnp.take_along_axis(lsm, a[:, None], axis=-1, mode="fill", fill_value=jnp.nan)[:, 0]
    if zr is None:
        return logp, ent, None, (p, lsm_f, None)
    diff = lsm - log_softmax(zr)
    diff_f = jnp.where(jnp.isfinite(diff), diff, jnp.zeros_like(diff))
    kl = jnp.sum(jnp.where(p > 0, p * diff_f, jnp.zeros_like(p)), axis=-1)
    # p > 0 where p_ref = 0: the KL really is +inf; keep it visible (as the core does).
    kl = jnp.where(jnp.any((p > 0) & jnp.isinf(diff), axis=-1), jnp.inf, kl)
    return logp, ent, kl, (p, lsm_f, diff_f)


def grad_from_softmax(p, lsm_f, diff_f, ent, kl, onehot, g_lp, g_ent, g_kl):
    """The closed-form gradient of ``sum(g_lp * logp + g_ent * H + g_kl * KL)`` w.r.t. logits,
    ``onehot(a) g_lp + p * (-g_lp - g_ent (log p + H) + g_kl (log p - log p_ref - KL))``, from
    a softmax block (``p``, ``lsm_f``, ``diff_f`` ``[c, w]`` as :func:`token_stats` gives them;
    ``diff_f`` ``None`` without a reference) and its rows' ``ent``, ``kl``, ``g_*`` ``[c, 1]``.
    The block may be a tile of the vocabulary: only the row statistics span all of it."""
    inner = -g_lp - g_ent * (lsm_f + ent)
    if diff_f is not None:
        inner = inner + g_kl * (diff_f - kl)
    return jnp.where(onehot, g_lp, 0.0).astype(p.dtype) + p * inner


def logits_grad(z, a, zr, g_lp, g_ent, g_kl):
    """``(kl, dz)``: the KL rows (``None`` without ``zr``) and the closed-form gradient of
    ``sum(g_lp * logp + g_ent * H + g_kl * KL)`` w.r.t. the chunk logits ``z``, from one
    softmax."""
    _, ent, kl, (p, lsm_f, diff_f) = token_stats(z, a, zr)
    onehot = a[:, None] == jnp.arange(z.shape[-1], dtype=a.dtype)[None, :]
    col = lambda x: None if x is None else x[:, None]
    dz = grad_from_softmax(
        p, lsm_f, diff_f, ent[:, None], col(kl), onehot, g_lp[:, None], g_ent[:, None],
        col(g_kl),
    )  # fmt: skip
    return kl, dz


# ---------------------------------------------------------------------------------------------
# The chunk walker
# ---------------------------------------------------------------------------------------------


def rows(x: jax.Array, start: jax.Array, c: int) -> jax.Array:
    """Rows ``start .. start + c - 1`` of ``x``."""
    return lax.dynamic_slice_in_dim(x, start, c, axis=0)


def add_rows(buf: jax.Array, start: jax.Array, new: jax.Array) -> jax.Array:
    """``buf`` with ``new`` added to its rows from ``start``."""
    return lax.dynamic_update_slice_in_dim(buf, rows(buf, start, new.shape[0]) + new, start, 0)


def walk_chunks(n: int, chunk: int, body: Callable, carry: Any) -> Any:
    """``carry`` after ``body(start, c, own, carry)`` over the chunks of ``n`` rows.

    ``c = min(chunk, n)`` rows per chunk; ``own [c]`` marks the rows of this chunk that no
    earlier chunk covered (the last chunk starts at ``n - c`` and may overlap the one before).
    """
    if n == 0:
        return carry
    c = max(1, min(chunk, n))

    def step(i, carry):
        start = jnp.minimum(i * c, n - c)
        return body(start, c, start + jnp.arange(c) >= i * c, carry)

    return lax.fori_loop(0, -(-n // c), step, carry)


def zero_from(cdt: Any, *arrays: Any) -> jax.Array:
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


def stats_forward(chunk_fn: Callable, n: int, chunk: int, cdt: Any, inputs: Any):
    """``(logp, entropy, kl)`` ``[N]`` from ``chunk_fn(start, c) -> (z, a, zr, valid)``."""

    def body(start, c, own, carry):
        z, a, zr, v = chunk_fn(start, c)
        own = own & v
        out = token_stats(z, a, zr)[:3]
        return tuple(
            add_rows(buf, start, jnp.where(own, new, 0)) if new is not None else buf
            for buf, new in zip(carry, out)
        )

    zeros = jnp.zeros((n,), cdt) + zero_from(cdt, inputs)
    return walk_chunks(n, chunk, body, (zeros, zeros, zeros))


# ---------------------------------------------------------------------------------------------
# From logits [N, V]
# ---------------------------------------------------------------------------------------------


def _logits_chunk(logits, actions, valid, ref, start, c, cdt):
    v = rows(valid, start, c)
    z = jnp.where(v[:, None], rows(logits, start, c), 0).astype(cdt)  # sanitize padding rows
    a = jnp.where(v, rows(actions, start, c), 0)
    zr = None if ref is None else jnp.where(v[:, None], rows(ref, start, c), 0).astype(cdt)
    return z, a, zr, v


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def token_stats_from_logits(
    logits: jax.Array, actions: jax.Array, valid: jax.Array, ref: jax.Array | None, chunk: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(logp, entropy, kl)``, each ``[N]`` in the compute dtype, from ``logits [N, V]``.

    ``actions [N]`` int, ``valid [N]`` bool (invalid rows give 0 and receive no gradient),
    ``ref [N, V]`` reference logits (a constant) or ``None`` (then ``kl`` is zeros).
    """
    return _logits_fwd(logits, actions, valid, ref, chunk)[0]


def _logits_fwd(logits, actions, valid, ref, chunk):
    n, cdt = logits.shape[0], compute_dtype(logits.dtype)
    fn = partial(_logits_chunk, logits, actions, valid, ref, cdt=cdt)
    out = stats_forward(fn, n, chunk, cdt, (logits, actions, valid, ref))
    return out, (logits, actions, valid, ref)


def _logits_bwd(chunk, res, cts):
    logits, actions, valid, ref = res
    cdt = compute_dtype(logits.dtype)

    def body(start, c, own, d):
        z, a, zr, v = _logits_chunk(logits, actions, valid, ref, start, c, cdt)
        gs = [rows(g, start, c).astype(cdt) for g in cts]
        dz = jnp.where((own & v)[:, None], logits_grad(z, a, zr, *gs)[1], 0)
        return add_rows(d, start, dz.astype(d.dtype))

    d = jnp.zeros(logits.shape, logits.dtype) + zero_from(cdt, res, cts).astype(logits.dtype)
    return walk_chunks(logits.shape[0], chunk, body, d), None, None, None


token_stats_from_logits.defvjp(_logits_fwd, _logits_bwd)
