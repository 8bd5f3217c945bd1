"""``haepo_loss_from_logits`` and ``haepo_loss_from_hidden``: memory-lean, chunked over tokens.

Both compute the per-token log-prob of the action taken, the exact entropy and the KL to the
reference (exact from reference logits / hidden states, or an estimator from ``ref_logp``)
with :mod:`._tokens` (chunked, closed-form ``custom_vjp``), then the objective shared with
:func:`haepo_loss`. The results match ``haepo_core.haepo_loss_from_logits`` (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from haepo_core import HAEPOOutput
from haepo_core._loss import _require_inputs
from haepo_core._namespace import compute_dtype
from haepo_core._regularizers import _kl_steps
from haepo_core._validation import (
    check_float,
    check_ids,
    check_rank,
    check_returns,
    check_shape,
)

from ._checks import check_bool, check_chunk_size, finite, ids_in_range, nonempty
from ._collectives import AxisName, vary
from ._groups import dense_group_ids
from ._loss import _require_jax, _sanitize, make_options, valid_mask
from ._objective import Options, objective
from ._tokens import (
    token_stats_from_hidden,
    token_stats_from_hidden_fast,
    token_stats_from_logits,
)

__all__ = ["default_chunk_size", "haepo_loss_from_hidden", "haepo_loss_from_logits"]

# Default chunk: about 2**22 float32 elements (16 MiB) per [chunk, V] temporary, a power of two
# between 16 and 4096 tokens (128 tokens for V = 32000). Tuned for CPU caches; on an
# accelerator a larger chunk (e.g. 1024-4096) amortizes the loop better (not measured here).
_CHUNK_BUDGET = 1 << 22


def default_chunk_size(vocab: int) -> int:
    """The default ``chunk_size`` for a vocabulary of ``vocab`` entries."""
    c = max(1, _CHUNK_BUDGET // max(vocab, 1))
    return int(min(4096, max(16, 1 << (c.bit_length() - 1))))


def _check_actions(actions: jax.Array, m: int, t: int, v: int, valid: jax.Array,
                   traced_checks: bool) -> None:
    check_rank("actions", actions, 2, "[M, T]")
    check_shape("actions", actions, (m, t), "[M, T] (logits.shape[:2])")
    if not jnp.issubdtype(actions.dtype, jnp.integer):
        raise TypeError(f"actions: expected an integer dtype, got {actions.dtype}")
    ids_in_range("actions", actions, v, valid, traced_checks, "V-1")


def _common(
    *, m: int, t: int, returns, group_ids, mask, ref_logp, has_exact_ref: bool, opts_kw: dict,
    num_groups, axis_name, traced_checks,
):
    check_returns(jnp, "returns", returns, m)
    if group_ids is not None:
        check_ids(jnp, "group_ids", group_ids, m, "[M]")
    if has_exact_ref and ref_logp is not None:
        raise ValueError(
            "ref_logp: expected at most one reference (exact reference logits/hidden states, "
            "or ref_logp for the estimator), got both"
        )
    if ref_logp is not None:
        check_float(jnp, "ref_logp", ref_logp)
        check_shape("ref_logp", ref_logp, (m, t), "[M, T]")
    opts = make_options(**opts_kw)
    check_bool("traced_checks", traced_checks)
    _require_inputs(opts, True, has_exact_ref or ref_logp is not None)
    valid = valid_mask(mask, (m, t), traced_checks)
    gidx, num = dense_group_ids(group_ids, m, num_groups, axis_name)
    nonempty("mask", jnp.sum(valid.astype(jnp.int32), axis=1), traced_checks)
    finite("returns", returns, None, traced_checks)
    if ref_logp is not None:
        finite("ref_logp", ref_logp, valid, traced_checks)
    if group_ids is not None and num_groups is not None:
        ids_in_range("group_ids", group_ids, num, None, traced_checks, "num_groups-1")
    return opts, valid, gidx, num


def _finish(logp_steps, ent_steps, kl_steps, *, valid, ref_logp, returns, gidx, num, opts,
            axis_name, out_dtype, cdt) -> HAEPOOutput:
    m, t = valid.shape
    x = jnp.where(valid, logp_steps.reshape(m, t), 0)
    ent = jnp.where(valid, ent_steps.reshape(m, t), 0)
    if kl_steps is not None:
        kl = jnp.where(valid, kl_steps.reshape(m, t), 0)
    elif ref_logp is not None:
        ref = _sanitize(lax.stop_gradient(ref_logp), valid, cdt)
        kl = _kl_steps(jnp, x, ref, opts.kl_estimator)
    else:
        kl = None
    n_k = jnp.sum(valid.astype(cdt), axis=1)
    return objective(
        L=jnp.sum(x, axis=1), n_k=n_k, returns=returns, gidx=gidx, num=num,
        ent_sum=jnp.sum(ent), kl_sum=None if kl is None else jnp.sum(kl),
        n_steps=jnp.sum(n_k), opts=opts, axis_name=axis_name, out_dtype=out_dtype,
    )


@dataclass(frozen=True)
class _LossCotangents:
    """``cot_fn`` of :func:`token_stats_from_hidden_fast`: the cotangents that ``loss`` sends
    to the per-token ``(logp, entropy, kl)``, by autodiff of the very :func:`_finish` that
    builds the loss (so the two paths cannot drift apart). Static and hashable; the arrays it
    needs come in ``aux``. ``kl`` enters the loss linearly, so its value (zeros here) does not
    change any cotangent."""

    kl_estimator: str
    normalize_returns: str
    length_normalize: bool
    num: int
    shape: tuple[int, int]
    exact_kl: bool

    def __call__(self, lp, ent, aux):
        def loss(lp_, ent_, kl_):
            opts = Options(
                entropy_coef=aux["entropy_coef"], kl_coef=aux["kl_coef"],
                kl_estimator=self.kl_estimator, normalize_returns=self.normalize_returns,
                temperature=aux["temperature"], length_normalize=self.length_normalize,
                eps=aux["eps"],
            )
            return _finish(
                lp_, ent_, kl_ if self.exact_kl else None, valid=aux["valid"],
                ref_logp=aux["ref_logp"], returns=aux["returns"], gidx=aux["gidx"],
                num=self.num, opts=opts, axis_name=None, out_dtype=lp.dtype, cdt=lp.dtype,
            ).loss

        return jax.grad(loss, argnums=(0, 1, 2))(lp, ent, jnp.zeros_like(lp))


def haepo_loss_from_logits(
    logits: jax.Array,
    actions: jax.Array,
    returns: jax.Array,
    mask: jax.Array | None = None,
    *,
    ref_logits: jax.Array | None = None,
    ref_logp: jax.Array | None = None,
    group_ids: jax.Array | None = None,
    entropy_coef: Any = 0.0,
    kl_coef: Any = 0.0,
    kl_estimator: str = "k3",
    normalize_returns: str = "zscore",
    temperature: Any = 1.0,
    length_normalize: bool = False,
    eps: float = 1e-8,
    chunk_size: int | None = None,
    num_groups: int | None = None,
    axis_name: AxisName = None,
    traced_checks: bool = False,
) -> HAEPOOutput:
    r"""The HAEPO loss from per-step logits, chunked over tokens.

    .. math::

        \log\pi_{k,t} &= \operatorname{log\_softmax}(z_{k,t})[a_{k,t}], \quad
        H_{k,t} = -\textstyle\sum_a \pi(a)\log\pi(a), \\
        KL_{k,t} &= \textstyle\sum_a \pi(a)\,(\log\pi(a) - \log\pi_{ref}(a))
        \ \text{(from ref\_logits) or } k_{1,2,3}(\text{ref\_logp} - \log\pi),

    then the objective of :func:`haepo_loss` (``loss = J_PL - lambda H + beta KL``). The
    ``M * T`` tokens are walked ``chunk_size`` at a time with a closed-form ``custom_vjp``: at
    most one chunk of float32 ``[chunk_size, V]`` temporaries is alive, in the forward and in
    the backward (which recomputes that chunk's softmax). The gradient buffer ``d logits``
    itself is ``[M, T, V]``, like ``logits``.

    Args:
      logits: ``[M, T, V]`` floating logits (``[M, T, A]`` for small discrete policies); may
        hold ``-inf`` (masked actions), never NaN or ``+inf`` at valid steps.
      actions: ``[M, T]`` integer actions (padding may hold anything, e.g. -100).
      returns: ``[M]``; mask: ``[M, T]``; group_ids: ``[M]``: as in :func:`haepo_loss`.
      ref_logits: ``[M, T, V]`` reference logits (a constant) for the exact KL, or
      ref_logp: ``[M, T]`` reference log-probs for ``kl_estimator`` (at most one of them).
      chunk_size: static tokens per chunk; ``None`` = :func:`default_chunk_size` of ``V``
        (128 for ``V = 32000``).
      other keywords: as in :func:`haepo_loss` (``num_groups``, ``axis_name``,
        ``traced_checks`` included).

    Returns:
      ``haepo_core.HAEPOOutput``; ``stats["entropy"]`` is the exact mean entropy. float16/
      bfloat16/float32 logits compute in float32, float64 in float64; outputs take the dtype of
      ``logits``, and the gradient too.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from haepo_backends.jax import haepo_loss_from_logits
      >>> logits = jnp.zeros((2, 3, 4))
      >>> actions = jnp.zeros((2, 3), dtype=jnp.int32)
      >>> out = haepo_loss_from_logits(logits, actions, jnp.array([0.0, 1.0]),
      ...                              entropy_coef=0.1, chunk_size=4)
      >>> round(float(out.stats["entropy"]), 4)
      1.3863
    """
    _require_jax(
        logits=logits, actions=actions, returns=returns, mask=mask, ref_logits=ref_logits,
        ref_logp=ref_logp, group_ids=group_ids,
    )
    check_rank("logits", logits, 3, "[M, T, V]")
    check_float(jnp, "logits", logits)
    m, t, v = logits.shape
    if ref_logits is not None:
        check_float(jnp, "ref_logits", ref_logits)
        check_shape("ref_logits", ref_logits, (m, t, v), "[M, T, V] (same as logits)")
    if ref_logits is not None and ref_logp is not None:
        raise ValueError("ref_logits, ref_logp: expected at most one of them, got both")
    chunk = default_chunk_size(v) if chunk_size is None else check_chunk_size(chunk_size)
    opts, valid, gidx, num = _common(
        m=m, t=t, returns=returns, group_ids=group_ids, mask=mask, ref_logp=ref_logp,
        has_exact_ref=ref_logits is not None,
        opts_kw=dict(
            entropy_coef=entropy_coef, kl_coef=kl_coef, kl_estimator=kl_estimator,
            normalize_returns=normalize_returns, temperature=temperature,
            length_normalize=length_normalize, eps=eps,
        ),
        num_groups=num_groups, axis_name=axis_name, traced_checks=traced_checks,
    )
    _check_actions(actions, m, t, v, valid, traced_checks)
    # Logits may hold -inf (masked vocabulary) but never NaN or +inf at valid steps.
    for name, arr in (("logits", logits), ("ref_logits", ref_logits)):
        if arr is not None:
            finite(name, jnp.where(arr == -jnp.inf, 0, arr), valid[:, :, None], traced_checks)

    cdt = compute_dtype(jnp, logits.dtype)
    ref2 = None if ref_logits is None else lax.stop_gradient(ref_logits).reshape(m * t, v)
    lp, ent, kl = token_stats_from_logits(
        vary(logits, axis_name).reshape(m * t, v), actions.reshape(m * t), valid.reshape(m * t),
        ref2, chunk,
    )
    return _finish(
        lp, ent, None if ref_logits is None else kl, valid=valid, ref_logp=ref_logp,
        returns=returns, gidx=gidx, num=num, opts=opts, axis_name=axis_name,
        out_dtype=logits.dtype, cdt=cdt,
    )


def haepo_loss_from_hidden(
    hidden: jax.Array,
    weight: jax.Array,
    actions: jax.Array,
    returns: jax.Array,
    mask: jax.Array | None = None,
    *,
    bias: jax.Array | None = None,
    ref_hidden: jax.Array | None = None,
    ref_weight: jax.Array | None = None,
    ref_bias: jax.Array | None = None,
    ref_logp: jax.Array | None = None,
    group_ids: jax.Array | None = None,
    entropy_coef: Any = 0.0,
    kl_coef: Any = 0.0,
    kl_estimator: str = "k3",
    normalize_returns: str = "zscore",
    temperature: Any = 1.0,
    length_normalize: bool = False,
    eps: float = 1e-8,
    chunk_size: int | None = None,
    num_groups: int | None = None,
    axis_name: AxisName = None,
    traced_checks: bool = False,
) -> HAEPOOutput:
    r"""The HAEPO loss from hidden states and the LM head (fused linear + loss).

    The logits :math:`z_{k,t} = W h_{k,t} + b` are never materialized for all tokens: each
    chunk of ``chunk_size`` tokens computes its ``[chunk_size, V]`` logits, log-prob, exact
    entropy and KL, and the ``custom_vjp`` backward recomputes them per chunk to give

    .. math::

        \frac{\partial \ell}{\partial h_{k,t}} = W^\top \delta_{k,t},\quad
        \frac{\partial \ell}{\partial W} = \sum_{k,t} \delta_{k,t} h_{k,t}^\top,\quad
        \frac{\partial \ell}{\partial b} = \sum_{k,t} \delta_{k,t}

    with :math:`\delta` the closed-form logits gradient of one chunk (see
    :func:`haepo_loss_from_logits`). Beyond the gradient buffers (``d hidden`` ``[M, T, H]``,
    ``d weight`` ``[V, H]``) memory does not grow with ``M * T``. Same value as
    ``haepo_core.haepo_loss_from_logits(hidden @ weight.T + bias, ...)``.

    Under autodiff (without ``axis_name``) the forward already forms the gradient of ``loss``
    (5 GEMMs per chunk instead of 6; see ``_tokens.token_stats_from_hidden_fast``). The backward
    reuses it when only ``loss`` is differentiated and recomputes exactly otherwise, so
    ``weights`` and ``log_likelihood`` stay differentiable.

    Args:
      hidden: ``[M, T, H]`` floating hidden states (differentiable).
      weight: ``[V, H]`` LM-head weight (differentiable); bias: ``[V]`` or ``None``.
      actions: ``[M, T]`` integer tokens; returns ``[M]``; mask ``[M, T]``; group_ids ``[M]``.
      ref_hidden: ``[M, T, H]`` reference hidden states for the exact KL (constants), with
        ref_weight: ``[V, H]`` and ref_bias: ``[V]`` (both default to ``weight``/``bias``, as
        constants, when ``ref_weight`` is ``None``); or
      ref_logp: ``[M, T]`` reference log-probs for ``kl_estimator`` (not with ``ref_hidden``).
      chunk_size: static tokens per chunk; ``None`` = :func:`default_chunk_size` of ``V``.
      other keywords: as in :func:`haepo_loss`.

    Returns:
      ``haepo_core.HAEPOOutput`` in the dtype of ``hidden``. bfloat16/float16 matmuls
      accumulate in float32, and the softmax runs in float32; float64 stays float64.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from haepo_backends.jax import haepo_loss_from_hidden
      >>> k1, k2 = jax.random.split(jax.random.PRNGKey(0))
      >>> hidden = jax.random.normal(k1, (4, 3, 8))
      >>> weight = jax.random.normal(k2, (16, 8))
      >>> actions = jnp.ones((4, 3), dtype=jnp.int32)
      >>> f = lambda h, w: haepo_loss_from_hidden(
      ...     h, w, actions, jnp.array([1.0, 0.0, 2.0, 0.5]), entropy_coef=0.01,
      ...     ref_hidden=hidden + 0.1, kl_coef=0.1, chunk_size=5).loss
      >>> loss, (dh, dw) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(hidden, weight)
      >>> dh.shape, dw.shape
      ((4, 3, 8), (16, 8))
    """
    _require_jax(
        hidden=hidden, weight=weight, actions=actions, returns=returns, mask=mask, bias=bias,
        ref_hidden=ref_hidden, ref_weight=ref_weight, ref_bias=ref_bias, ref_logp=ref_logp,
        group_ids=group_ids,
    )
    check_rank("hidden", hidden, 3, "[M, T, H]")
    check_float(jnp, "hidden", hidden)
    m, t, h = hidden.shape
    check_rank("weight", weight, 2, "[V, H]")
    check_float(jnp, "weight", weight)
    if weight.shape[1] != h:
        raise ValueError(
            f"weight: expected shape [V, H] with H = {h} (hidden.shape[-1]), got "
            f"{tuple(weight.shape)}"
        )
    v = weight.shape[0]
    for name, b in (("bias", bias), ("ref_bias", ref_bias)):
        if b is not None:
            check_float(jnp, name, b)
            check_shape(name, b, (v,), "[V]")
    if ref_hidden is not None:
        check_float(jnp, "ref_hidden", ref_hidden)
        check_shape("ref_hidden", ref_hidden, (m, t, h), "[M, T, H] (same as hidden)")
    if ref_weight is not None:
        check_float(jnp, "ref_weight", ref_weight)
        check_shape("ref_weight", ref_weight, (v, h), "[V, H] (same as weight)")
        if ref_hidden is None:
            raise ValueError("ref_weight: given without ref_hidden (expected both, or neither)")
    if ref_bias is not None and ref_weight is None:
        raise ValueError("ref_bias: given without ref_weight (expected ref_weight too)")
    if ref_hidden is not None and ref_logp is not None:
        raise ValueError("ref_hidden, ref_logp: expected at most one of them, got both")
    chunk = default_chunk_size(v) if chunk_size is None else check_chunk_size(chunk_size)
    opts, valid, gidx, num = _common(
        m=m, t=t, returns=returns, group_ids=group_ids, mask=mask, ref_logp=ref_logp,
        has_exact_ref=ref_hidden is not None,
        opts_kw=dict(
            entropy_coef=entropy_coef, kl_coef=kl_coef, kl_estimator=kl_estimator,
            normalize_returns=normalize_returns, temperature=temperature,
            length_normalize=length_normalize, eps=eps,
        ),
        num_groups=num_groups, axis_name=axis_name, traced_checks=traced_checks,
    )
    _check_actions(actions, m, t, v, valid, traced_checks)
    finite("hidden", hidden, valid[:, :, None], traced_checks)
    finite("weight", weight, None, traced_checks)
    if bias is not None:
        finite("bias", jnp.where(bias == -jnp.inf, 0, bias), None, traced_checks)
    if ref_hidden is not None:
        finite("ref_hidden", ref_hidden, valid[:, :, None], traced_checks)
    if ref_weight is not None:
        finite("ref_weight", ref_weight, None, traced_checks)

    cdt = compute_dtype(jnp, hidden.dtype)
    refs = None
    if ref_hidden is not None:
        rw, rb = (weight, bias) if ref_weight is None else (ref_weight, ref_bias)
        refs = lax.stop_gradient(
            (ref_hidden.reshape(m * t, h), rw, rb)
        )
    # Under a named axis the head is usually replicated: cast it to varying so autodiff sums
    # its per-device partial gradients (see _collectives.vary).
    params = (vary(hidden, axis_name).reshape(m * t, h), vary(weight, axis_name),
              vary(bias, axis_name))
    if axis_name is None:
        if refs is not None and ref_weight is None:
            # shared head: mark it so each chunk projects policy + reference in one GEMM
            refs = (refs[0], None, None)
        # 5-GEMM path (see _tokens.token_stats_from_hidden_fast): the loss gradient is formed
        # in the differentiated forward. Under a named axis the loss cotangents need
        # collectives, so that case keeps the 6-GEMM path below.
        aux = dict(
            valid=valid, returns=returns, gidx=gidx,
            ref_logp=None if ref_logp is None else lax.stop_gradient(ref_logp),
            **{k: lax.stop_gradient(jnp.asarray(getattr(opts, k), cdt))
               for k in ("entropy_coef", "kl_coef", "temperature", "eps")},
        )
        cot_fn = _LossCotangents(
            opts.kl_estimator, opts.normalize_returns, bool(opts.length_normalize), int(num),
            (m, t), ref_hidden is not None,
        )
        lp, ent, kl = token_stats_from_hidden_fast(
            params, actions.reshape(m * t), valid.reshape(m * t), refs, aux, chunk, cot_fn
        )
    else:
        lp, ent, kl = token_stats_from_hidden(
            params, actions.reshape(m * t), valid.reshape(m * t), refs, chunk
        )
    return _finish(
        lp, ent, None if ref_hidden is None else kl, valid=valid, ref_logp=ref_logp,
        returns=returns, gidx=gidx, num=num, opts=opts, axis_name=axis_name,
        out_dtype=hidden.dtype, cdt=cdt,
    )
