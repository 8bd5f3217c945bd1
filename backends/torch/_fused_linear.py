"""The fused LM head (``logits = hidden @ weight.T + bias``) in two passes, with every gradient
computed inside the forward.

Why: the GEMM count. A recompute-in-backward design needs six ``[rows, V] x [V, H]``-sized
GEMMs (forward: policy and reference projections; backward: both again, then ``d hidden`` and
``d weight``), where a naive materializing version needs four. The loss gradient is known in
closed form once the per-trajectory sums ``L_k`` are known, so:

- pass 1 (:func:`policy_logp`) projects each chunk of the policy and keeps only the row
  log-sum-exp and the taken-action log-prob (1 GEMM);
- the objective on those log-probs gives, for an upstream gradient of 1, the per-step
  coefficient ``c_t = dJ/dlogp_t`` and the scalar coefficients of the entropy and KL sums;
- pass 2 (:func:`grad_walk`) re-projects the policy chunk (1 GEMM) and the reference chunk
  (1 GEMM, exact KL only), computes the entropy and KL values and
  ``dz = c_t (onehot(a_t) - p_t) + g_ent dH/dz + g_kl dKL/dz``, then ``d hidden = dz @ W`` and
  ``d weight += dz.T @ h`` (2 GEMMs): five GEMMs, and none in the autograd backward, which
  only scales the stored gradients by the upstream gradient (:class:`_PrecomputedGrad`).

Per chunk ``dz`` is the closed form of ``_vocab.logits_grad`` (written once, shared with the
from-logits backward), so at most three float32 ``[chunk, V]`` blocks are alive at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._collectives import all_reduce_sum, world_size
from ._vocab import (
    _forward_block,
    _pick,
    _rowdot,
    _walk_forward,
    log_softmax,
    logits_grad,
    refuse_second_order,
)

__all__ = ["attach_gradients", "fused_linear_values", "grad_walk", "policy_logp"]


def _linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return h @ w.T if b is None else torch.addmm(b, h, w.T)


class _Workspace:
    """Float32 (float64) ``[chunk, V]`` blocks reused by every chunk of a walk.

    Why: a fresh block per chunk and per temporary is a fresh allocation whose pages are
    faulted in (and zeroed by the kernel) every time once blocks are large enough for mmap;
    reusing three blocks pays that once per walk. The projection writes straight into its
    block when the weight is already in the compute dtype (else it is cast, a new tensor)."""

    def __init__(self, n_blocks: int, chunk: int, vocab: int, cdt: torch.dtype, dev: Any):
        self.blocks = [torch.empty(chunk, vocab, dtype=cdt, device=dev) for _ in range(n_blocks)]

    def project(
        self, i: int, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
        shift: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """``h @ w.T + b - shift[:, None]``. The row shift (pass 2's log-sum-exp) rides in the
        GEMM's accumulator, initialized with ``b - shift``: the bias had to be written there
        anyway, so subtracting the normalizer costs no extra pass over the block."""
        out = self.blocks[i][: h.shape[0]]
        if w.dtype != out.dtype or h.dtype != out.dtype:
            z = _linear(h, w, b).to(out.dtype)
            return z if shift is None else z.sub_(shift[:, None])
        if shift is None and b is None:
            return torch.mm(h, w.T, out=out)
        # Accumulating into a filled block (addmm_) measured faster on CPU than
        # torch.addmm(b, ..., out=out) with the same bias (27 vs 47 ms at [128, 32000]).
        if shift is None:
            out.copy_(b.to(out.dtype).expand_as(out))  # type: ignore[union-attr]
        elif b is None:
            torch.neg(shift[:, None].expand_as(out), out=out)
        else:
            torch.sub(b.to(out.dtype)[None, :], shift[:, None], out=out)
        return out.addmm_(h, w.T)

    def block(self, i: int, rows: int) -> torch.Tensor:
        return self.blocks[i][:rows]


def fused_linear_values(
    hidden2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    ref: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None, rows: torch.Tensor | None,
    acts: torch.Tensor, chunk: int, cdt: torch.dtype,
    forward_block: Callable[..., Any] = _forward_block,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(logp_a, entropy, kl)`` ``[n]`` with no gradient: one walk, each chunk projected once
    per head (used when nothing needs a gradient)."""
    src = lambda s, e: _linear(_pick(hidden2d, rows, s, e), weight, bias).to(cdt)
    ref_src = None
    if ref is not None:
        rh, rw, rb = ref
        ref_src = lambda s, e: _linear(_pick(rh, rows, s, e), rw, rb).to(cdt)
    # Finite hidden states and weights (checked) give finite logits: no -inf handling.
    with torch.no_grad():
        return _walk_forward(src, ref_src, acts.shape[0], acts, chunk, cdt, True, forward_block)


def grad_walk(
    hidden2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    ref: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None, rows: torch.Tensor | None,
    acts: torch.Tensor, lse: torch.Tensor, g_logp: torch.Tensor | None, g_ent: torch.Tensor | None,
    g_kl: torch.Tensor | None, chunk: int, need: tuple[bool, bool, bool], values: bool,
    kind: str = "torch",
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor | None]]:  # fmt: skip
    """Pass 2: re-project each chunk (policy with the pass-1 ``lse``, reference ``ref`` =
    ``(ref_hidden2d, ref_weight, ref_bias)`` when given) and return ``(entropy [n] | None,
    kl [n] | None, [d hidden2d, d weight, d bias])`` for the loss
    ``sum_t g_logp_t logp_t + g_ent sum_t H_t + g_kl sum_t KL_t`` (``g_logp`` ``[n]``,
    ``g_ent``/``g_kl`` 0-d, ``None`` = 0). ``need`` says which of the three gradients to build
    (the others are skipped, GEMMs included); ``values`` asks for entropy and KL values.
    ``kind="triton"`` does each chunk's statistics and ``dz`` in the Triton kernel
    (``_triton.grad_block_from_lse``: two sweeps over the raw logits block, written over it)."""
    n, cdt = acts.shape[0], lse.dtype
    dev = acts.device
    need_h, need_w, need_b = need
    use_kl = ref is not None and g_kl is not None
    want_ent = values or g_ent is not None or use_kl
    ent = torch.empty(n, dtype=cdt, device=dev) if values else None
    kl = torch.empty(n, dtype=cdt, device=dev) if values and ref is not None else None
    # Weight and bias gradients accumulate in float32 at least, whatever the parameter dtype.
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    d_h = None
    if need_h:
        d_h = (torch.empty_like if rows is None else torch.zeros_like)(hidden2d)
    d_w = torch.zeros(weight.shape, dtype=acc, device=dev) if need_w else None
    d_b = torch.zeros(weight.shape[0], dtype=acc, device=dev) if need_b else None
    gl_all = torch.zeros(n, dtype=cdt, device=dev) if g_logp is None else g_logp.to(cdt)
    ge = None if g_ent is None else g_ent.to(cdt)
    gk = g_kl.to(cdt) if use_kl else None  # type: ignore[union-attr]
    ws = _Workspace(2 if ref is None else 3, min(chunk, n), weight.shape[0], cdt, dev)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        h = _pick(hidden2d, rows, s, e)
        ref_h = None if ref is None else _pick(ref[0], rows, s, e)
        if kind == "triton":
            from . import _triton  # imported only here: building the kernels takes time

            z = ws.project(0, h, weight, bias)
            ref_z = None if ref_h is None else ws.project(2, ref_h, ref[1], ref[2])  # type: ignore[index]
            u, h_c, k_c = _triton.grad_block_from_lse(
                z, acts[s:e], lse[s:e], ref_z, gl_all[s:e], ge, gk, out=z
            )
        else:
            ref_l = None
            if ref_h is not None:
                ref_l = log_softmax(ws.project(2, ref_h, ref[1], ref[2]), inplace=True)  # type: ignore[index]
            lsm = ws.project(0, h, weight, bias, lse[s:e])  # log p, with pass 1's normalizer
            p = torch.exp(lsm, out=ws.block(1, e - s))
            h_c = -_rowdot(p, lsm) if want_ent else None
            k_c = None if ref_l is None else -h_c - _rowdot(p, ref_l)  # type: ignore[operator]
            u = None
            if need_h or need_w or need_b:
                u = logits_grad(lsm, acts[s:e], ref_l, h_c, k_c, gl_all[s:e], ge, gk, p=p)
            del ref_l
        if values:
            ent[s:e] = h_c  # type: ignore[index]
            if kl is not None:
                kl[s:e] = k_c
        if u is None or not (need_h or need_w or need_b):
            continue
        if d_b is not None:
            d_b.add_(u.sum(dim=0).to(acc))
        uw = u.to(weight.dtype)
        if d_h is not None:
            if rows is None and d_h.dtype == weight.dtype:
                torch.mm(uw, weight, out=d_h[s:e])  # straight into the gradient buffer
            elif rows is None:
                d_h[s:e] = uw @ weight
            else:
                d_h.index_copy_(0, rows[s:e], (uw @ weight).to(d_h.dtype))
        if d_w is not None:
            if d_w.dtype == weight.dtype:
                d_w.addmm_(uw.T, h)
            else:
                d_w.add_((uw.T @ h.to(weight.dtype)).to(acc))
    if d_w is not None:
        d_w = d_w.to(weight.dtype)
    if d_b is not None and bias is not None:
        d_b = d_b.to(bias.dtype)
    return ent, kl, [d_h, d_w, d_b]


class _PolicyLogp(torch.autograd.Function):
    """Pass 1 as an autograd node: ``(logp [n], lse [n])``. Its backward (a re-projection
    walk) runs only when something other than the loss is differentiated through the
    log-probs (``weights``, ``log_likelihood``): the loss itself uses the gradients computed
    in the forward, so a plain ``loss.backward()`` never calls it."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
        rows: torch.Tensor | None, acts: torch.Tensor, chunk: int, cdt: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        ctx.set_materialize_grads(False)
        n = acts.shape[0]
        logp = torch.empty(n, dtype=cdt, device=acts.device)
        lse = torch.empty(n, dtype=cdt, device=acts.device)
        ws = _Workspace(1, min(chunk, n), weight.shape[0], cdt, acts.device)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            z = ws.project(0, _pick(hidden2d, rows, s, e), weight, bias)
            a = acts[s:e, None]
            z_a = z.gather(1, a)[:, 0]
            # log_softmax is one fused kernel; torch.logsumexp makes about four passes (3x
            # slower at [128, 32000] on CPU). lse = z_a - log p_a.
            lp = log_softmax(z, inplace=True).gather(1, a)[:, 0]
            logp[s:e] = lp
            lse[s:e] = z_a - lp
        ctx.save_for_backward(hidden2d, weight, bias, rows, acts, lse)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(lse)
        return logp, lse

    @staticmethod
    def backward(ctx: Any, g_logp: Any, _: Any) -> tuple[Any, ...]:  # type: ignore[override]
        refuse_second_order("haepo_loss_from_hidden")
        hidden2d, weight, bias, rows, acts, lse = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        if g_logp is None:
            return None, None, None, None, None, None, None
        _, _, (d_h, d_w, d_b) = grad_walk(
            hidden2d, weight, bias, None, rows, acts, lse, g_logp, None, None, ctx.chunk,
            need, False,
        )  # fmt: skip
        return d_h, d_w, d_b, None, None, None, None


policy_logp = _PolicyLogp.apply
"""Pass 1: ``policy_logp(hidden2d, weight, bias, rows, acts, chunk, cdt) -> (logp_a [n],
lse [n])`` for the ``rows`` of ``hidden2d @ weight.T + bias`` (every row when ``rows`` is
None); ``logp_a`` is differentiable, ``lse`` a constant."""


class _PrecomputedGrad(torch.autograd.Function):
    """``value`` (the loss, 0-d) whose backward returns the gradients computed in the forward,
    times the upstream gradient. The first backward hands the stored buffers over (no copy:
    ``.grad`` may adopt them); a second one (``retain_graph=True``) recomputes them."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, value: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor,
        bias: torch.Tensor | None, grads: list[torch.Tensor | None],
        recompute: Callable[[], list[torch.Tensor | None]], group: Any,
    ) -> torch.Tensor:  # fmt: skip
        ctx.grads, ctx.recompute, ctx.group = grads, recompute, group
        ctx.shape = hidden.shape
        return value.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        refuse_second_order("haepo_loss_from_hidden")
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            grads = ctx.recompute()
        if ctx.group is not None:
            # The stored gradients are for an upstream 1.0 on every rank; the reduced objective
            # is linear in the sum of the ranks' upstream gradients (see _collectives.py).
            g = all_reduce_sum(g.detach(), ctx.group) / world_size(ctx.group)
        if bool(g != 1):
            grads = [None if d is None else d.mul_(g.to(d.dtype)) for d in grads]
        d_h, d_w, d_b = grads
        if d_h is not None:
            d_h = d_h.reshape(ctx.shape)
        return None, d_h, d_w, d_b, None, None, None


attach_gradients = _PrecomputedGrad.apply
"""``attach_gradients(value, hidden, weight, bias, grads, recompute, group)``: the detached
loss ``value`` made differentiable w.r.t. ``hidden``, ``weight`` and ``bias`` with the
precomputed ``grads`` (``[d hidden2d, d weight, d bias]``; ``recompute()`` rebuilds them for a
second backward)."""
