"""Per-step log-prob of the taken action, exact entropy and exact KL over a vocabulary, walked
in chunks of rows with the backward recomputed per chunk.

Why: the plain version keeps several float32 ``[tokens, V]`` tensors alive for autograd
(log_softmax, softmax, products); with V = 32k and thousands of tokens that is gigabytes. Here
the forward keeps nothing but three ``[n]`` vectors, and the backward rebuilds each chunk's
log-softmax and writes its gradient in closed form:

    d logp_a / dz = onehot(a) - p
    d H / dz      = -p * (log p + H)
    d KL / dz     =  p * (log p - log p_ref - KL)

so at most one chunk of float32 ``[chunk, V]`` temporaries (about four of them) is alive at a
time. The rows come from a *source*: slices of a logits tensor, or ``hidden @ weight.T + bias``
(the fused LM head, whose gradients ``_fused_linear.py`` computes in two passes instead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["default_chunk_size", "logits_stats"]

# Elements per float32 [chunk, V] block: 4M (16 MiB) on CPU, where blocks that stay in the
# last-level cache win and the matmuls are already efficient at 64 rows; 32M (128 MiB) on CUDA,
# where larger GEMMs keep the device busy and the memory is still small beside the weights.
_CPU_BLOCK = 1 << 22
_CUDA_BLOCK = 1 << 25


def default_chunk_size(device: torch.device | str, vocab: int) -> int:
    """Rows per chunk for a vocabulary of ``vocab`` on ``device`` (a multiple of 8 when >= 8)."""
    kind = torch.device(device).type
    block = _CUDA_BLOCK if kind == "cuda" else _CPU_BLOCK
    rows = max(1, block // max(int(vocab), 1))
    return rows // 8 * 8 if rows >= 8 else rows


# Where a logit is -inf (masked vocabulary) log p is -inf and p is 0; 0 * -inf would be NaN.
# Clamping log p at -1e4 changes nothing (exp(-1e4) == 0 in float32 and float64, so those terms
# contribute exactly 0) while keeping every product finite. Only done when -inf can occur.
_LOG_FLOOR = -1e4


def _log_softmax(z: torch.Tensor, finite: bool) -> torch.Tensor:
    lsm = torch.log_softmax(z, dim=1)  # one fused kernel
    return lsm if finite else lsm.clamp_(min=_LOG_FLOOR)


def _rowdot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_v x[i, v] * y[i, v] as one batched matmul (no [c, V] product temporary).

    ``y`` goes in as a transposed ``[c, 1, V]`` view, not as ``y.unsqueeze(2)``: same values,
    but the CPU bmm takes a path about 2x faster for that layout (measured at [128, 32000])."""
    return torch.bmm(x.unsqueeze(1), y.unsqueeze(1).transpose(1, 2)).reshape(-1)


def _forward_block(
    z: torch.Tensor, a: torch.Tensor, ref_z: torch.Tensor | None, finite: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    lsm = torch.log_softmax(z, dim=1)
    logp_a = lsm.gather(1, a[:, None])[:, 0]  # before any clamp: the true log-prob
    if not finite:
        lsm.clamp_(min=_LOG_FLOOR)
    del z
    p = torch.exp(lsm)
    ent = -_rowdot(p, lsm)
    kl = None
    if ref_z is not None:
        # KL = sum p (log p - log p_ref) = -H - sum p log p_ref
        kl = -ent - _rowdot(p, _log_softmax(ref_z, finite))
    return logp_a, ent, kl


def _zeros_or(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g.to(like.dtype)


def _backward_block(
    z: torch.Tensor,
    a: torch.Tensor,
    ref_z: torch.Tensor | None,
    ent: torch.Tensor,
    kl: torch.Tensor,
    g_logp: torch.Tensor | None,
    g_ent: torch.Tensor | None,
    g_kl: torch.Tensor | None,
    finite: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """d(sum g_logp*logp_a + g_ent*H + g_kl*KL)/dz for one block.

    With l = log p and l' = log p_ref, per row:
        dz = g_logp*onehot(a) - p * (g_logp + g_ent*(l + H) - g_kl*(l - l' - KL))
           = g_logp*onehot(a) - p * (alpha + beta*l + g_kl*l')
    alpha = g_logp + g_ent*H + g_kl*KL, beta = g_ent - g_kl: two fused multiply-adds and one
    product over the block instead of a dozen elementwise passes.
    """
    lsm = _log_softmax(z, finite)
    del z
    gl, ge, gk = (_zeros_or(g, ent) for g in (g_logp, g_ent, g_kl))
    use_kl = g_kl is not None and ref_z is not None
    alpha = gl + ge * ent + (gk * kl if use_kl else 0.0)
    beta = ge - gk if use_kl else ge
    u = torch.addcmul(-alpha[:, None], lsm, -beta[:, None])
    if use_kl:
        assert ref_z is not None
        u.addcmul_(_log_softmax(ref_z, finite), -gk[:, None])
    # The last product goes straight into the caller's gradient buffer when it can (``out``):
    # one [chunk, V] copy fewer per block.
    u = torch.mul(u, lsm.exp_(), out=out) if out is not None else u.mul_(lsm.exp_())
    if g_logp is not None:
        u.scatter_add_(1, a[:, None], gl[:, None])
    return u


Source = Callable[[int, int], torch.Tensor]


def _pick(x: torch.Tensor, rows: torch.Tensor | None, s: int, e: int) -> torch.Tensor:
    """Rows s:e of the walk: a view when every row is walked (no copy), else a gather."""
    return x[s:e] if rows is None else x.index_select(0, rows[s:e])


def _walk_forward(
    src: Source,
    ref_src: Source | None,
    n: int,
    acts: torch.Tensor,
    chunk: int,
    cdt: torch.dtype,
    finite: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dev = acts.device
    logp = torch.empty(n, dtype=cdt, device=dev)
    ent = torch.empty(n, dtype=cdt, device=dev)
    kl = torch.zeros(n, dtype=cdt, device=dev)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        ref_z = None if ref_src is None else ref_src(s, e)
        lp, h, k = _forward_block(src(s, e), acts[s:e], ref_z, finite)
        logp[s:e] = lp
        ent[s:e] = h
        if k is not None:
            kl[s:e] = k
    return logp, ent, kl


def _cut(g: torch.Tensor | None, s: int, e: int) -> torch.Tensor | None:
    return None if g is None else g[s:e]


class _LogitsStats(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits2d: torch.Tensor,
        ref2d: torch.Tensor | None,
        rows: torch.Tensor | None,
        acts: torch.Tensor,
        chunk: int,
        cdt: torch.dtype,
        finite: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        src = lambda s, e: _pick(logits2d, rows, s, e).to(cdt)
        ref_src = None if ref2d is None else (lambda s, e: _pick(ref2d, rows, s, e).to(cdt))
        logp, ent, kl = _walk_forward(src, ref_src, acts.shape[0], acts, chunk, cdt, finite)
        ctx.save_for_backward(logits2d, ref2d, rows, acts, ent, kl)
        ctx.chunk, ctx.cdt, ctx.finite = chunk, cdt, finite
        return logp, ent, kl

    @staticmethod
    def backward(ctx: Any, g_logp: Any, g_ent: Any, g_kl: Any) -> tuple[Any, ...]:  # type: ignore[override]
        logits2d, ref2d, rows, acts, ent, kl = ctx.saved_tensors
        chunk, cdt, finite = ctx.chunk, ctx.cdt, ctx.finite
        n = acts.shape[0]
        grad = (torch.empty_like if rows is None else torch.zeros_like)(logits2d)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            ref_z = None
            if ref2d is not None and g_kl is not None:
                ref_z = _pick(ref2d, rows, s, e).to(cdt)
            direct = rows is None and grad.dtype == cdt
            dz = _backward_block(
                _pick(logits2d, rows, s, e).to(cdt),
                acts[s:e],
                ref_z,
                ent[s:e],
                kl[s:e],
                _cut(g_logp, s, e),
                _cut(g_ent, s, e),
                _cut(g_kl, s, e),
                finite,
                out=grad[s:e] if direct else None,
            )
            if rows is None and not direct:
                grad[s:e] = dz
            elif rows is not None:
                grad.index_copy_(0, rows[s:e], dz.to(grad.dtype))
        return grad, None, None, None, None, None, None


def logits_stats(
    logits2d: torch.Tensor,
    ref2d: torch.Tensor | None,
    rows: torch.Tensor | None,
    acts: torch.Tensor,
    chunk: int,
    cdt: torch.dtype,
    finite: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logp_a, entropy, kl)`` ``[n]`` for the ``rows`` of ``logits2d [N, V]`` (every row
    when ``rows`` is None); ``finite=False`` when the logits may hold -inf."""
    ref = None if ref2d is None else ref2d.detach()
    return _LogitsStats.apply(logits2d, ref, rows, acts, chunk, cdt, finite)
