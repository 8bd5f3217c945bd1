"""``haepo_loss_from_logits`` and ``haepo_loss_from_hidden``: the memory-lean LLM entry points.

Both turn their input into per-step ``(logp of the taken action, entropy, KL)`` with the
chunked kernels of ``_vocab.py`` (only valid steps are visited: padding costs nothing), then
hand the per-trajectory sums to the shared objective (closed-form policy backward).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from haepo_core import HAEPOOutput
from haepo_core.kit import (
    CheckHooks,
    Options,
    compute_dtype,
    fill_doc,
    validate_hidden,
    validate_logits,
)

from ._checks import is_concrete, validated, xp
from ._fused_linear import attach_gradients, fused_linear_values, grad_walk, policy_logp
from ._loss import finish as _objective
from ._policy import kl_estimate_sum
from ._vocab import default_chunk_size, kernel_blocks, logits_stats, select_kernel

# The lean paths check their few per-step inputs (ref_logp) at once: there is no cheap sum to
# defer them to.
_HOOKS = CheckHooks(readable=is_concrete)

__all__ = ["default_chunk_size", "haepo_loss_from_hidden", "haepo_loss_from_logits"]


def _is_zero(coef: Any) -> bool:
    return isinstance(coef, numbers.Real) and float(coef) == 0.0


def _check_chunk(chunk_size: Any, device: torch.device, vocab: int) -> int:
    if chunk_size is None:
        return default_chunk_size(device, vocab)
    not_int = isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
    if not_int or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer or None, got {chunk_size!r}")
    return int(chunk_size)


def _sums(
    ent_r: torch.Tensor, kl_r: torch.Tensor, exact_kl: bool, opts: Options
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Entropy and exact-KL sums over the valid steps. A coefficient that is exactly 0 needs no
    gradient through its term: detaching it spares the backward one [chunk, V] pass per chunk
    (the value still reaches the stats)."""
    ent_sum = (ent_r.detach() if _is_zero(opts.entropy_coef) else ent_r).sum()
    kl_sum = None
    if exact_kl:
        kl_sum = (kl_r.detach() if _is_zero(opts.kl_coef) else kl_r).sum()
    return ent_sum, kl_sum


class _Walk(NamedTuple):
    """A validated lean call and its walk over the valid steps: ``walk`` their flat indices
    (``None`` when every step is valid: then chunks are views and nothing is gathered),
    ``acts`` the actions there, and ``finish(logp_r, ent_sum, kl_sum)``, the objective on the
    walk's per-step log-probs, entropy sum and exact-KL sum (``None``: the ``ref_logp``
    estimator, or no KL)."""

    opts: Options
    kind: str
    chunk: int
    cdt: torch.dtype
    walk: torch.Tensor | None
    acts: torch.Tensor
    finish: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], HAEPOOutput]


def _start(args: dict[str, Any], validate: Callable[..., Any]) -> _Walk:
    """Validate a lean call (``args``: its ``locals()`` on entry) and set up its walk."""
    dev, (valid, opts, _) = validated(args, validate, _HOOKS)
    x = args["logits"] if "logits" in args else args["hidden"]
    vocab = x.shape[2] if "logits" in args else args["weight"].shape[0]
    m, t = valid.shape
    flat = valid.reshape(-1)
    rows = torch.nonzero(flat).reshape(-1)
    walk = None if rows.shape[0] == flat.shape[0] else rows
    acts = args["actions"].reshape(-1).to(torch.int64)
    acts = acts if walk is None else acts.index_select(0, rows)
    ref_logp, process_group = args["ref_logp"], args["process_group"]

    def finish(
        logp_r: torch.Tensor, ent_sum: torch.Tensor, kl_sum: torch.Tensor | None
    ) -> HAEPOOutput:
        cdt = logp_r.dtype
        if kl_sum is None and ref_logp is not None:
            ref_r = ref_logp.detach().reshape(-1).index_select(0, rows).to(cdt)
            kl_sum = kl_estimate_sum(logp_r, ref_r, opts.kl_estimator)
        traj = torch.div(rows, t, rounding_mode="floor")
        L = torch.zeros(m, dtype=cdt, device=dev).index_add(0, traj, logp_r)
        n_k = valid.sum(dim=1).to(cdt)
        return _objective(
            L, n_k, args["returns"], args["group_ids"], ent_sum, kl_sum, opts, x.dtype,
            process_group,
        )  # fmt: skip

    kind = select_kernel(args["kernel"], dev)
    chunk = _check_chunk(args["chunk_size"], dev, vocab)
    return _Walk(opts, kind, chunk, compute_dtype(xp, x.dtype), walk, acts, finish)


@fill_doc
def haepo_loss_from_logits(
    logits: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor,
    mask: torch.Tensor | None = None, *,
    ref_logits: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
    group_ids: torch.Tensor | None = None,
    entropy_coef: float = 0.0, kl_coef: float = 0.0, kl_estimator: str = "k3",
    normalize_returns: str = "zscore", temperature: float = 1.0,
    length_normalize: bool = False, eps: float = 1e-8,
    chunk_size: int | None = None, process_group: Any = None, kernel: str = "auto",
) -> HAEPOOutput:  # fmt: skip
    r"""The HAEPO loss from per-step logits of a categorical policy, chunked over tokens.

    %(logits_math)s

    then the objective of :func:`haepo_loss` (``stats["entropy"]`` is the exact mean
    entropy). The valid steps are walked ``chunk_size`` rows at a time: at most one chunk of
    float32 ``[chunk_size, V]`` temporaries is alive, nothing ``[M, T, V]`` is kept for
    backward, and backward recomputes each chunk (the only full-size tensor it makes is the
    gradient of ``logits`` itself). Matches :func:`haepo_core.haepo_loss_from_logits`.

    Args:
      logits: ``[M, T, V]`` float16/bfloat16/float32/float64 (``[M, T, A]`` for small
        discrete policies); ``-inf`` entries (masked vocabulary) are allowed.
      %(actions)s
      %(ref_logits)s
      %(options)s
      process_group: as in :func:`haepo_loss`.
      %(torch_chunks)s

    Returns:
      :class:`haepo_core.HAEPOOutput` in ``logits``' dtype. Eager only (the walk over valid
      steps is data dependent): compile :func:`haepo_loss` on per-step log-probs instead.

    Example:
      >>> import torch
      >>> from haepo_backends.torch import haepo_loss_from_logits
      >>> logits = torch.zeros(2, 3, 4, requires_grad=True)
      >>> out = haepo_loss_from_logits(logits, torch.zeros(2, 3, dtype=torch.long),
      ...                              torch.tensor([0.0, 1.0]), entropy_coef=0.1)
      >>> round(float(out.stats["entropy"]), 4)
      1.3863
      >>> out.loss.backward()
    """
    c = _start(locals(), validate_logits)
    m, t, v = logits.shape
    # -inf logits (masked vocabulary) need a clamp per block; skip it when there are none.
    finite = bool(logits.amin() > -torch.inf) and (
        ref_logits is None or bool(ref_logits.amin() > -torch.inf)
    )
    ref2d = None if ref_logits is None else ref_logits.detach().reshape(m * t, v)
    logp_r, ent_r, kl_r = logits_stats(
        logits.reshape(m * t, v), ref2d, c.walk, c.acts, c.chunk, c.cdt, finite,
        kernel_blocks(c.kind),
    )  # fmt: skip
    return c.finish(logp_r, *_sums(ent_r, kl_r, ref_logits is not None, c.opts))


@fill_doc
def haepo_loss_from_hidden(
    hidden: torch.Tensor, weight: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor,
    mask: torch.Tensor | None = None, *,
    bias: torch.Tensor | None = None, ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None, ref_bias: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None, group_ids: torch.Tensor | None = None,
    entropy_coef: float = 0.0, kl_coef: float = 0.0, kl_estimator: str = "k3",
    normalize_returns: str = "zscore", temperature: float = 1.0,
    length_normalize: bool = False, eps: float = 1e-8,
    chunk_size: int | None = None, process_group: Any = None, kernel: str = "auto",
) -> HAEPOOutput:  # fmt: skip
    r"""The HAEPO loss from last hidden states and the LM head (fused linear, chunked).

    Same as :func:`haepo_loss_from_logits` on ``logits = hidden @ weight.T + bias``, but the
    logits are never materialized for all tokens. Two passes over chunks of valid rows, with
    every gradient computed in the forward (5 GEMMs, where recomputing in backward takes 6):
    pass 1 keeps each row's log-sum-exp and the taken log-prob, which fixes the closed-form
    coefficients ``dJ/dlogp_t`` and those of the entropy and KL sums; pass 2 re-projects,
    computes entropy and KL and ``dz``, and accumulates ``d hidden = dz @ weight``,
    ``d weight += dz.T @ hidden_chunk``, ``d bias += sum dz`` (float32 at least). Backward
    only scales them by the upstream gradient (a second backward recomputes pass 2). Inputs
    that need no gradient get no gradient GEMM; under ``torch.no_grad()`` one pass computes
    the values. ``weights`` and ``log_likelihood`` stay differentiable (through the pass-1
    log-probs, re-projected only if they are differentiated).

    Args:
      %(hidden)s
      %(actions)s
      %(ref_hidden)s
      %(options)s
      process_group: as in :func:`haepo_loss`.
      %(torch_chunks)s

    Returns:
      :class:`haepo_core.HAEPOOutput` in ``hidden``'s dtype; gradients reach ``hidden``,
      ``weight`` and ``bias``.

    Example:
      >>> import torch
      >>> from haepo_backends.torch import haepo_loss_from_hidden
      >>> hidden = torch.randn(2, 3, 8, requires_grad=True)
      >>> weight = torch.randn(16, 8, requires_grad=True)
      >>> out = haepo_loss_from_hidden(hidden, weight, torch.zeros(2, 3, dtype=torch.long),
      ...                              torch.tensor([0.0, 1.0]), ref_hidden=hidden.detach(),
      ...                              entropy_coef=0.01, kl_coef=0.1)
      >>> out.loss.backward()
      >>> weight.grad.shape
      torch.Size([16, 8])
    """
    c = _start(locals(), validate_hidden)
    m, t, h = hidden.shape
    if ref_hidden is not None and ref_weight is None:
        # The policy's head (detached) projects the reference; a given ref_bias replaces its bias.
        ref_weight, ref_bias = weight, bias if ref_bias is None else ref_bias
    hidden2d = hidden.reshape(m * t, h)
    ref = None
    if ref_hidden is not None:
        det = lambda x: None if x is None else x.detach()
        ref = (ref_hidden.detach().reshape(m * t, h), ref_weight.detach(), det(ref_bias))
    need = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    if not (torch.is_grad_enabled() and any(need)):
        # No gradient wanted: one walk, each chunk projected once per head (2 GEMMs).
        logp_r, ent_r, kl_r = fused_linear_values(
            hidden2d, weight, bias, ref, c.walk, c.acts, c.chunk, c.cdt, kernel_blocks(c.kind)[0]
        )
        return c.finish(logp_r, *_sums(ent_r, kl_r, ref is not None, c.opts))
    return _from_hidden_two_pass(hidden, hidden2d, weight, bias, ref, c, need, process_group)


def _from_hidden_two_pass(
    hidden: torch.Tensor, hidden2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    ref: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None, c: _Walk,
    need: tuple[bool, bool, bool], process_group: Any,
) -> HAEPOOutput:  # fmt: skip
    """Five GEMMs instead of six: all gradient work happens in the forward (see
    ``_fused_linear.py`` for why and how); ``loss.backward()`` only scales the stored
    gradients. ``weights`` and ``log_likelihood`` stay differentiable through the pass-1
    log-probs (their backward re-projects, and runs only if they are differentiated)."""
    # Pass 1: policy log-sum-exp and taken-action log-probs (1 GEMM).
    logp_r, lse = policy_logp(hidden2d, weight, bias, c.walk, c.acts, c.chunk, c.cdt)
    # The objective's gradient for an upstream 1.0: per step for the log-probs (policy term
    # and any KL estimator), and one scalar each for the entropy and exact-KL sums (the loss
    # is linear in them, so zeros stand in for their values). Cross-rank reductions of a
    # process_group happen here, on every rank alike.
    with torch.enable_grad():
        lp = logp_r.detach().requires_grad_()
        zero = torch.zeros((), dtype=c.cdt, device=lp.device)
        e0 = None if _is_zero(c.opts.entropy_coef) else zero.clone().requires_grad_()
        k0 = None if ref is None or _is_zero(c.opts.kl_coef) else zero.clone().requires_grad_()
        out0 = c.finish(
            lp,
            zero if e0 is None else e0,
            (zero if k0 is None else k0) if ref is not None else None,
        )
        leaves = [x for x in (lp, e0, k0) if x is not None]
        found = list(torch.autograd.grad(out0.loss, leaves, allow_unused=True))
    g_lp = found.pop(0)
    g_ent = None if e0 is None else found.pop(0)
    g_kl = None if k0 is None else found.pop(0)
    hw = (hidden2d.detach(), weight.detach(), None if bias is None else bias.detach())
    walk_args = (*hw, ref, c.walk, c.acts, lse.detach(), g_lp, g_ent, g_kl, c.chunk, need)
    # Pass 2: re-project (1 GEMM, +1 for the exact-KL reference), values and gradients
    # (2 GEMMs, fewer when weight or hidden needs no gradient).
    with torch.no_grad():
        ent_r, kl_r, grads = grad_walk(*walk_args, True, c.kind)

    def recompute() -> list[torch.Tensor | None]:
        with torch.no_grad():
            return grad_walk(*walk_args, False, c.kind)[2]

    assert ent_r is not None
    ent_sum, kl_sum = ent_r.sum(), None if kl_r is None else kl_r.sum()
    out = c.finish(logp_r, ent_sum, kl_sum)
    loss = attach_gradients(
        out.loss.detach(), hidden, weight, bias, grads, recompute, process_group
    )
    coefs = (c.opts.entropy_coef, c.opts.kl_coef, c.opts.temperature)
    if any(isinstance(k, torch.Tensor) and k.requires_grad for k in coefs):
        # Coefficients being differentiated: their gradient comes from the objective on the
        # constant per-step values (value + 0; no path to hidden/weight/bias, which the stored
        # gradients already cover).
        by_coef = c.finish(logp_r.detach(), ent_sum, kl_sum).loss
        loss = loss + (by_coef - by_coef.detach())
    return out._replace(loss=loss)
