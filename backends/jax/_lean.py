"""``haepo_loss_from_logits`` and ``haepo_loss_from_hidden``: memory-lean, chunked over tokens.

Both compute the per-token log-prob of the action taken, the exact entropy and the KL to the
reference (exact from reference logits / hidden states, or an estimator from ``ref_logp``)
with :mod:`._vocab` / :mod:`._fused_linear` (chunked, closed-form ``custom_vjp``), then the
core objective shared with :func:`haepo_loss`. The results match
``haepo_core.haepo_loss_from_logits`` (tested).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from haepo_core.kit import HAEPOOutput, fill_doc, validate_hidden, validate_logits

from ._checks import check_chunk_size, traced, traced_value_checks
from ._collectives import AxisName, vary
from ._fused_linear import token_stats_from_hidden
from ._loss import Call, kl_sum, start
from ._vocab import token_stats_from_logits

__all__ = ["default_chunk_size", "haepo_loss_from_hidden", "haepo_loss_from_logits"]

# Default chunk: about 2**22 float32 elements (16 MiB) per [chunk, V] temporary, a power of two
# between 16 and 4096 tokens (128 tokens for V = 32000). Tuned for CPU caches; on an
# accelerator a larger chunk (e.g. 1024-4096) amortizes the loop better (not measured here).
_CHUNK_BUDGET = 1 << 22


def default_chunk_size(vocab: int) -> int:
    """The default ``chunk_size`` of :func:`haepo_loss_from_logits` for a vocabulary of
    ``vocab`` entries."""
    c = max(1, _CHUNK_BUDGET // max(vocab, 1))
    return int(min(4096, max(16, 1 << (c.bit_length() - 1))))


# Default chunk of haepo_loss_from_hidden, whatever V: that path also tiles the vocabulary
# (blocks of about 2**18 elements, _fused_linear._vocab_tile), so the chunk sets the GEMM shapes,
# not the memory. On CPU (M=8, T=256, V=32000, H=512), timed with the allocator's defaults,
# 512 tokens (512-column tiles) ran in 0.86x the naive step's time against 0.99-1.04x for 256
# tokens, with 7.1 MB of compiled temporaries against 7.9 MB (benchmarks/bench_jax.py).
_HIDDEN_CHUNK = 512

#: The arrays of the LM heads, whose finite checks the traced path emits.
_HEAD_ARGS = ("hidden", "weight", "bias", "ref_hidden", "ref_weight", "ref_bias")


def _traced_checks(
    traced_checks: bool, valid: jax.Array, mask: Any, actions: jax.Array, v: int,
    logits: tuple[Any, ...] = (),
) -> None:  # fmt: skip
    traced_value_checks(
        traced_checks,
        counts=("mask", jnp.sum(valid.astype(jnp.int32), axis=1)),
        mask=mask,
        ids=(("actions", actions, v, "V-1", valid),),
        logits=logits,
    )


def _finish(
    c: Call, lp: jax.Array, ent: jax.Array, kl: jax.Array | None, ref_logp: jax.Array | None
) -> HAEPOOutput:
    """The objective from per-token ``[N]`` statistics (``kl`` ``None`` = estimate it from
    ``ref_logp``, or no KL without one)."""
    valid = c.valid
    m, t = valid.shape
    x = jnp.where(valid, lp.reshape(m, t), 0)
    if kl is not None:
        kl = jnp.sum(jnp.where(valid, kl.reshape(m, t), 0))
    elif ref_logp is not None:
        kl = kl_sum(x, ref_logp, valid, c.opts.kl_estimator)
    ent_sum = jnp.sum(jnp.where(valid, ent.reshape(m, t), 0))
    return c.finish(jnp.sum(x, axis=1), jnp.sum(valid.astype(x.dtype), axis=1), ent_sum, kl)


@fill_doc
def haepo_loss_from_logits(
    logits: jax.Array, actions: jax.Array, returns: jax.Array, mask: jax.Array | None = None, *,
    ref_logits: jax.Array | None = None, ref_logp: jax.Array | None = None,
    group_ids: jax.Array | None = None,
    entropy_coef: Any = 0.0, kl_coef: Any = 0.0, kl_estimator: str = "k3",
    normalize_returns: str = "zscore", temperature: Any = 1.0,
    length_normalize: bool = False, eps: float = 1e-8, chunk_size: int | None = None,
    num_groups: int | None = None, axis_name: AxisName = None, traced_checks: bool = False,
) -> HAEPOOutput:  # fmt: skip
    r"""The HAEPO loss from per-step logits, chunked over tokens.

    %(logits_math)s

    then the objective of :func:`haepo_loss` (``loss = J_PL - lambda H + beta KL``). The
    ``M * T`` tokens are walked ``chunk_size`` at a time with a closed-form ``custom_vjp``: at
    most one chunk of float32 ``[chunk_size, V]`` temporaries is alive, in the forward and in
    the backward (which recomputes that chunk's softmax). The gradient buffer ``d logits``
    itself is ``[M, T, V]``, like ``logits``.

    Args:
      logits: ``[M, T, V]`` floating logits (``[M, T, A]`` for small discrete policies); may
        hold ``-inf`` (masked actions), never NaN or ``+inf`` at valid steps, and each valid
        step needs at least one finite logit. Eagerly a violation is a ``ValueError`` naming
        the argument; under ``jit`` it gives a NaN loss (or a ``checkify`` error with
        ``traced_checks=True``).
      %(actions)s
      %(ref_logits)s
      %(options)s
      chunk_size: static tokens per chunk; ``None`` = :func:`default_chunk_size` of ``V``
        (128 for ``V = 32000``).
      num_groups, axis_name, traced_checks: as in :func:`haepo_loss`.

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
    c = start(locals(), validate_logits)
    valid = c.valid
    m, t, v = logits.shape
    chunk = default_chunk_size(v) if chunk_size is None else check_chunk_size(chunk_size)
    _traced_checks(
        traced_checks,
        valid,
        mask,
        actions,
        v,
        logits=(("logits", logits, valid), ("ref_logits", ref_logits, valid)),
    )

    ref2 = None if ref_logits is None else lax.stop_gradient(ref_logits).reshape(m * t, v)
    lp, ent, kl = token_stats_from_logits(
        vary(logits, axis_name).reshape(m * t, v),
        actions.reshape(m * t),
        valid.reshape(m * t),
        ref2,
        chunk,
    )
    return _finish(c, lp, ent, None if ref_logits is None else kl, ref_logp)


@fill_doc
def haepo_loss_from_hidden(
    hidden: jax.Array, weight: jax.Array, actions: jax.Array, returns: jax.Array,
    mask: jax.Array | None = None, *,
    bias: jax.Array | None = None, ref_hidden: jax.Array | None = None,
    ref_weight: jax.Array | None = None, ref_bias: jax.Array | None = None,
    ref_logp: jax.Array | None = None, group_ids: jax.Array | None = None,
    entropy_coef: Any = 0.0, kl_coef: Any = 0.0, kl_estimator: str = "k3",
    normalize_returns: str = "zscore", temperature: Any = 1.0,
    length_normalize: bool = False, eps: float = 1e-8, chunk_size: int | None = None,
    num_groups: int | None = None, axis_name: AxisName = None, traced_checks: bool = False,
) -> HAEPOOutput:  # fmt: skip
    r"""The HAEPO loss from hidden states and the LM head (fused linear + loss).

    The logits :math:`z_{k,t} = W h_{k,t} + b` are never materialized for all tokens nor for
    all of the vocabulary: the walk goes over chunks of ``chunk_size`` tokens and tiles of the
    vocabulary (blocks of about 2**18 elements). The forward keeps an online log-sum-exp, the
    exact entropy and KL per token; the ``custom_vjp`` backward recomputes each block's logits
    to give

    .. math::

        \frac{\partial \ell}{\partial h_{k,t}} = W^\top \delta_{k,t},\quad
        \frac{\partial \ell}{\partial W} = \sum_{k,t} \delta_{k,t} h_{k,t}^\top,\quad
        \frac{\partial \ell}{\partial b} = \sum_{k,t} \delta_{k,t}

    with :math:`\delta` the closed-form logits gradient of one block (see
    :func:`haepo_loss_from_logits`), ``d weight`` summed over all tokens one vocabulary tile
    at a time. Beyond the gradient buffers (``d hidden`` ``[M, T, H]``, ``d weight``
    ``[V, H]``) memory does not grow with ``M * T`` or ``V``. Same value as
    ``haepo_core.haepo_loss_from_logits(hidden @ weight.T + bias, ...)``.

    The backward is exact for any cotangent (``weights`` and ``log_likelihood`` stay
    differentiable), and second derivatives (``jax.hessian``, ``jvp`` of ``grad``) are exact.

    Args:
      %(hidden)s
      %(actions)s
      %(ref_hidden)s
      %(options)s
      chunk_size: static tokens per chunk; ``None`` = 512 (the vocabulary is tiled apart).
      num_groups, axis_name, traced_checks: as in :func:`haepo_loss`.

    Returns:
      ``haepo_core.HAEPOOutput`` in the dtype of ``hidden`` (``weight`` and ``bias`` must
      share it). bfloat16/float16 matmuls accumulate in float32, and the softmax runs in
      float32; float64 stays float64.

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
    c = start(locals(), validate_hidden)
    valid, check = c.valid, c.hooks
    m, t, h = hidden.shape
    v = weight.shape[0]
    chunk = _HIDDEN_CHUNK if chunk_size is None else check_chunk_size(chunk_size)
    _traced_checks(traced_checks, valid, mask, actions, v)
    for name, arr in zip(_HEAD_ARGS, (hidden, weight, bias, ref_hidden, ref_weight, ref_bias)):
        if arr is not None and traced(arr):  # readable ones were checked by the core
            where = valid[:, :, None] if name.endswith("hidden") else None  # only at valid steps
            check.check_finite(jnp, name, arr, where)

    refs = None
    if ref_hidden is not None:
        # The reference head defaults to the policy's (as a constant). When it *is* the
        # policy's weight, ``ref_weight = None`` marks it so that each chunk projects policy
        # and reference rows in one GEMM.
        # A reference head of its own (ref_weight given) has no bias unless ref_bias is given;
        # with the policy's head, a given ref_bias replaces the policy's bias (as in torch).
        rb = ref_bias if ref_weight is not None or ref_bias is not None else bias
        refs = lax.stop_gradient((ref_hidden.reshape(m * t, h), ref_weight, rb))
    # Under a named axis the head is usually replicated: cast it to varying so autodiff sums
    # its per-device partial gradients (see _collectives.vary).
    params = (
        vary(hidden, axis_name).reshape(m * t, h),
        vary(weight, axis_name),
        vary(bias, axis_name),
    )
    flat = (actions.reshape(m * t), valid.reshape(m * t))
    lp, ent, kl = token_stats_from_hidden(params, *flat, refs, chunk)
    return _finish(c, lp, ent, None if ref_hidden is None else kl, ref_logp)
