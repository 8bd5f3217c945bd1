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

__all__ = [
    "KERNELS",
    "default_chunk_size",
    "kernel_blocks",
    "log_softmax",
    "logits_grad",
    "logits_stats",
    "refuse_second_order",
    "select_kernel",
]

# Elements per float32 [chunk, V] block: 3M (12 MiB, 96 rows at V = 32000) on CPU, where blocks
# that stay in the last-level cache win and the matmuls are already efficient at 64 rows (4M
# blocks put the from-hidden peak at 0.061x naive, 3M at 0.055x); 32M (128 MiB) on CUDA,
# where larger GEMMs keep the device busy and the memory is still small beside the weights.
_CPU_BLOCK = 3 << 20
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


def log_softmax(z: torch.Tensor, finite: bool = True, inplace: bool = False) -> torch.Tensor:
    """log_softmax over dim 1 (one fused kernel), floored at ``_LOG_FLOOR`` unless ``finite``.

    ``inplace=True`` overwrites ``z`` on CPU: the CPU kernel finishes a row's max and sum
    before it writes that row, so no second block is needed (checked against
    torch.log_softmax in the tests); elsewhere a new tensor, as the kernel's in-place safety
    is not documented there."""
    if inplace and z.device.type == "cpu":
        lsm = torch._log_softmax(z, 1, False, out=z)
    else:
        lsm = torch.log_softmax(z, dim=1)
    return lsm if finite else lsm.clamp_(min=_LOG_FLOOR)


def _rowdot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_v x[i, v] * y[i, v] as one batched matmul (no [c, V] product temporary).

    ``y`` goes in as a transposed ``[c, 1, V]`` view, not as ``y.unsqueeze(2)``: same values,
    but the CPU bmm takes a path about 2x faster for that layout (measured at [128, 32000])."""
    return torch.bmm(x.unsqueeze(1), y.unsqueeze(1).transpose(1, 2)).reshape(-1)


def _col(x: torch.Tensor) -> torch.Tensor:
    """A per-row ``[c]`` coefficient as a ``[c, 1]`` column; a 0-d one as is."""
    return x[:, None] if x.ndim == 1 else x


def logits_grad(
    lsm: torch.Tensor, a: torch.Tensor, ref_lsm: torch.Tensor | None, ent: torch.Tensor | None,
    kl: torch.Tensor | None, g_logp: torch.Tensor | None, g_ent: torch.Tensor | None,
    g_kl: torch.Tensor | None, p: torch.Tensor | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """The closed-form gradient ``d(sum g_logp*logp_a + g_ent*H + g_kl*KL)/dz`` of one block.

    With l = log p = ``lsm`` and l' = log p_ref = ``ref_lsm``, per row:

        d logp_a / dz = onehot(a) - p,   d H / dz = -p (l + H),   d KL / dz = p (l - l' - KL)
        dz = g_logp*onehot(a) - p * (alpha + beta*l + g_kl*l'),
        alpha = g_logp + g_ent*H + g_kl*KL,   beta = g_ent - g_kl

    two fused multiply-adds and one product over the block instead of a dozen elementwise
    passes. Each ``g_*`` is ``[c]``, 0-d or None (= 0). ``lsm`` is consumed: with ``p`` given
    the result is written over ``lsm``; without, ``p = exp(lsm)`` is formed in place and the
    result goes to ``out`` (the caller's gradient buffer: one ``[c, V]`` copy fewer) or to a
    new tensor.
    """
    use_kl = g_kl is not None and ref_lsm is not None
    zero = torch.zeros((), dtype=lsm.dtype, device=lsm.device)
    alpha = zero if g_logp is None else g_logp
    if g_ent is not None:
        alpha = alpha + g_ent * ent
    if use_kl:
        alpha = alpha + g_kl * kl
    beta = zero if g_ent is None else g_ent
    if use_kl:
        beta = beta - g_kl
    u = torch.addcmul(-_col(alpha), lsm, -_col(beta), out=lsm if p is not None else out)
    if use_kl:
        u.addcmul_(ref_lsm, -_col(g_kl))  # type: ignore[arg-type]
    u.mul_(lsm.exp_() if p is None else p)
    if g_logp is not None:
        u.scatter_add_(1, a[:, None], _col(g_logp.expand(u.shape[0])))
    return u


def _forward_block(
    z: torch.Tensor, a: torch.Tensor, ref_z: torch.Tensor | None, finite: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(logp_a, entropy, kl | None)`` ``[c]`` for the logits block ``z [c, V]``."""
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
        kl = -ent - _rowdot(p, log_softmax(ref_z, finite))
    return logp_a, ent, kl


def _backward_block(
    z: torch.Tensor, a: torch.Tensor, ref_z: torch.Tensor | None, ent: torch.Tensor,
    kl: torch.Tensor, g_logp: torch.Tensor | None, g_ent: torch.Tensor | None,
    g_kl: torch.Tensor | None, finite: bool, out: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """:func:`logits_grad` of the block ``z [c, V]`` from the forward's ``ent``/``kl``."""
    ref_lsm = None if ref_z is None or g_kl is None else log_softmax(ref_z, finite)
    cast = lambda g: None if g is None else g.to(ent.dtype)
    return logits_grad(
        log_softmax(z, finite), a, ref_lsm, ent, kl, cast(g_logp), cast(g_ent), cast(g_kl),
        out=out,
    )  # fmt: skip


def refuse_second_order(entry: str) -> None:
    """Raise when a backward runs under ``create_graph=True``: the chunk walks compute the
    gradient in closed form with in-place ops, so it has no graph to differentiate again.

    Why not ``torch.autograd.function.once_differentiable``: it detaches the gradient it
    returns, so a second ``torch.autograd.grad`` fails with "not used in the graph" (or, with
    ``allow_unused=True``, silently returns None, a wrong zero Hessian) instead of saying why.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{entry}: second derivatives are not supported (its backward is computed in "
            "closed form by in-place chunk walks, not by differentiable ops); for "
            "Hessian-vector products differentiate haepo_loss on per-step log-probs, or "
            "haepo_core, instead"
        )


Blocks = tuple[Callable[..., Any], Callable[..., Any]]
TORCH_BLOCKS: Blocks = (_forward_block, _backward_block)
KERNELS = ("auto", "torch", "triton")


def _triton() -> Any:
    try:
        from . import _triton
    except ImportError:  # pragma: no cover - the module imports without triton too
        return None
    return _triton


def select_kernel(kernel: Any, device: torch.device) -> str:
    """``"torch"`` or ``"triton"`` for the ``kernel`` keyword on ``device``: ``"auto"`` takes
    the Triton kernels for CUDA tensors when triton is importable, the torch blocks else;
    ``"triton"`` raises when they cannot run."""
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {', '.join(map(repr, KERNELS))}, got {kernel!r}")
    if kernel == "torch":
        return "torch"
    if kernel == "auto" and device.type != "cuda":
        # "auto" takes the Triton kernels for CUDA tensors only, so a CPU call never imports
        # triton: its import alone costs about 90 MiB of RSS and 0.2 s in a fresh process.
        return "torch"
    tr = _triton()
    ok = tr is not None and tr.available(device)
    if kernel == "triton" and not ok:
        raise ValueError(
            "kernel: expected the Triton kernels to be runnable ('triton' needs the triton "
            f"package and a CUDA tensor, or TRITON_INTERPRET=1), got a tensor on {device} "
            f"with triton {'importable' if tr is not None and tr.triton is not None else 'absent'}"
        )
    return "triton" if ok and (kernel == "triton" or device.type == "cuda") else "torch"


def kernel_blocks(kind: str) -> Blocks:
    """The ``(forward_block, backward_block)`` pair of a kernel kind."""
    if kind == "triton":
        tr = _triton()
        return tr.forward_block, tr.backward_block
    return TORCH_BLOCKS


Source = Callable[[int, int], torch.Tensor]


def _pick(x: torch.Tensor, rows: torch.Tensor | None, s: int, e: int) -> torch.Tensor:
    """Rows s:e of the walk: a view when every row is walked (no copy), else a gather."""
    return x[s:e] if rows is None else x.index_select(0, rows[s:e])


def _walk_forward(
    src: Source, ref_src: Source | None, n: int, acts: torch.Tensor, chunk: int, cdt: torch.dtype,
    finite: bool, forward_block: Callable[..., Any] = _forward_block,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    dev = acts.device
    logp = torch.empty(n, dtype=cdt, device=dev)
    ent = torch.empty(n, dtype=cdt, device=dev)
    kl = torch.zeros(n, dtype=cdt, device=dev)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        ref_z = None if ref_src is None else ref_src(s, e)
        lp, h, k = forward_block(src(s, e), acts[s:e], ref_z, finite)
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
        ctx: Any, logits2d: torch.Tensor, ref2d: torch.Tensor | None, rows: torch.Tensor | None,
        acts: torch.Tensor, chunk: int, cdt: torch.dtype, finite: bool, blocks: Blocks,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        ctx.set_materialize_grads(False)
        src = lambda s, e: _pick(logits2d, rows, s, e).to(cdt)
        ref_src = None if ref2d is None else (lambda s, e: _pick(ref2d, rows, s, e).to(cdt))
        n = acts.shape[0]
        logp, ent, kl = _walk_forward(src, ref_src, n, acts, chunk, cdt, finite, blocks[0])
        ctx.save_for_backward(logits2d, ref2d, rows, acts, ent, kl)
        ctx.chunk, ctx.cdt, ctx.finite, ctx.blocks = chunk, cdt, finite, blocks
        return logp, ent, kl

    @staticmethod
    def backward(ctx: Any, g_logp: Any, g_ent: Any, g_kl: Any) -> tuple[Any, ...]:  # type: ignore[override]
        refuse_second_order("haepo_loss_from_logits")
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
            dz = ctx.blocks[1](
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
        return grad, None, None, None, None, None, None, None


logits_stats = _LogitsStats.apply
"""``logits_stats(logits2d, ref2d, rows, acts, chunk, cdt, finite, blocks) -> (logp_a,
entropy, kl)``, each ``[n]``, for the ``rows`` of ``logits2d [N, V]`` (every row when ``rows``
is None; ``ref2d`` a constant or None); ``finite=False`` when the logits may hold -inf;
``blocks`` the ``(forward_block, backward_block)`` pair doing the per-chunk work
(:func:`kernel_blocks`)."""
