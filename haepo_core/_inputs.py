"""Validation of a whole call, written once for every entry point of every backend.

Each ``validate_*`` function runs the shape, rank, dtype and option checks (always: they read
metadata only) and the value checks (NaN/inf at valid steps, empty trajectories, ids and
actions out of range) when the values can be read. A backend adapts them with
:class:`CheckHooks`: its own concreteness test, its own finite check (``checkify``), or a
deferred finite check of the per-step inputs (:func:`check_finite_from_sums`).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

from ._namespace import Array, device_of, values_readable
from ._objective import Options
from ._validation import (
    check_finite,
    check_float,
    check_ids,
    check_mask,
    check_nonempty,
    check_options,
    check_rank,
    check_returns,
    check_shape,
    check_trajectories,
)

__all__ = [
    "CheckHooks",
    "Validated",
    "check_actions",
    "entry_arguments",
    "check_logits",
    "check_rows_finite",
    "make_options",
    "validate_hidden",
    "validate_logits",
    "validate_packed",
    "validate_padded",
]

Deferred = list[tuple[str, Array | None, Array | None]]


class CheckHooks(NamedTuple):
    """How a backend runs the value checks.

    Attributes:
      readable: whether values computed from an array can be read now (False while tracing);
        value checks are skipped when it says no.
      finite: ``finite(xp, name, x, valid)`` raising on NaN/inf where ``valid``; ``None`` = the
        core's :func:`check_finite` under ``readable``. A JAX backend can pass a ``checkify``
        check here.
      defer_steps: do not check the per-step float inputs (log-probs, entropy, reference
        log-probs) now; they are returned in :attr:`Validated.deferred` for the backend to
        check from the sums it computes anyway (:func:`check_finite_from_sums`).
    """

    readable: Callable[[Array], bool] = values_readable
    finite: Callable[[Any, str, Array, Array | None], None] | None = None
    defer_steps: bool = False

    def check_finite(self, xp: Any, name: str, x: Array, valid: Array | None) -> None:
        if self.finite is not None:
            self.finite(xp, name, x, valid)
        else:
            check_finite(xp, name, x, valid, self.readable)

    def check_steps(self, xp: Any, deferred: Deferred, name: str, x: Any, valid: Any) -> None:
        if x is None:
            return
        if self.defer_steps:
            deferred.append((name, x, valid))
        else:
            self.check_finite(xp, name, x, valid)


DEFAULT_HOOKS = CheckHooks()


class Validated(NamedTuple):
    """What the validators return: the boolean validity mask ``[M, T]`` (``None`` for the
    packed layout), the options, and the finite checks left to the backend."""

    valid: Array | None
    opts: Options
    deferred: Deferred


def _positive(value: Any) -> bool:
    """Whether a coefficient is a plain number > 0 (array coefficients, possibly traced or
    being differentiated, are not inspected: a missing input then fails loudly downstream)."""
    return isinstance(value, numbers.Real) and float(value) > 0


def make_options(*, has_entropy: bool, has_kl: bool, **kw: Any) -> Options:
    """Check the option keywords and that the inputs the positive coefficients need exist."""
    check_options(**kw)
    opts = Options(**kw)
    if _positive(opts.entropy_coef) and not has_entropy:
        raise ValueError(
            f"entropy: expected a per-step entropy array since entropy_coef = {opts.entropy_coef} "
            "> 0, got None"
        )
    if _positive(opts.kl_coef) and not has_kl:
        raise ValueError(
            f"ref_logp: expected reference log-probs (or ref_logits) since kl_coef = "
            f"{opts.kl_coef} > 0, got None"
        )
    return opts


def _as_dict(options: Options | dict[str, Any]) -> dict[str, Any]:
    """The option keywords, given as a dict or as an (unchecked) :class:`Options`."""
    return options._asdict() if isinstance(options, Options) else dict(options)


def entry_arguments(
    args: dict[str, Any], static: tuple[str, ...] = ()
) -> tuple[dict[str, Any], Options]:
    """An entry point's arguments, its ``locals()`` on entry, split into the array arguments
    (by name, in signature order, as the ``validate_*`` functions take them) and the option
    keywords as an unchecked :class:`Options`. The names in ``static`` (a backend's own
    keywords: ``chunk_size``, ``process_group``...) go to neither."""
    skip = {*Options._fields, *static}
    arrays = {k: v for k, v in args.items() if k not in skip}
    return arrays, Options(**{k: args[k] for k in Options._fields})


def _valid_mask(xp: Any, mask: Array | None, like: Array, hooks: CheckHooks) -> Array:
    m, t = like.shape[0], like.shape[1]
    if mask is None:
        return xp.ones((m, t), dtype=xp.bool, device=device_of(like))
    return check_mask(xp, "mask", mask, (m, t), hooks.readable)


def _steps(
    xp: Any,
    like: Array,
    returns: Array,
    mask: Array | None,
    group_ids: Array | None,
    ref_logp: Array | None,
    options: Options | dict[str, Any],
    has_entropy: bool,
    has_kl: bool,
    hooks: CheckHooks,
    deferred: Deferred,
) -> tuple[Array, Options]:
    """The checks every padded ``[M, T, ...]`` entry point shares (``like`` gives M, T)."""
    m, t = like.shape[0], like.shape[1]
    check_returns(xp, "returns", returns, m)
    if group_ids is not None:
        check_ids(xp, "group_ids", group_ids, m, "[M]")
    valid = _valid_mask(xp, mask, like, hooks)
    if ref_logp is not None:
        check_float(xp, "ref_logp", ref_logp)
        check_shape("ref_logp", ref_logp, (m, t), "[M, T]")
    opts = make_options(has_entropy=has_entropy, has_kl=has_kl, **_as_dict(options))
    check_nonempty(xp, xp.sum(xp.astype(valid, xp.int32), axis=1), "mask", hooks.readable)
    hooks.check_finite(xp, "returns", returns, None)
    hooks.check_steps(xp, deferred, "ref_logp", ref_logp, valid)
    return valid, opts


def validate_padded(
    xp: Any,
    logp: Array,
    returns: Array,
    mask: Array | None,
    group_ids: Array | None,
    entropy: Array | None,
    ref_logp: Array | None,
    options: Options | dict[str, Any],
    hooks: CheckHooks = DEFAULT_HOOKS,
) -> Validated:
    """Every check of ``haepo_loss(logp [M, T], returns [M], mask, ...)``."""
    check_rank("logp", logp, 2, "[M, T]")
    check_float(xp, "logp", logp)
    m, t = logp.shape
    check_trajectories("logp", m, "[M, T]")
    if entropy is not None:
        check_float(xp, "entropy", entropy)
        check_shape("entropy", entropy, (m, t), "[M, T] (same as logp)")
    if ref_logp is not None:
        check_float(xp, "ref_logp", ref_logp)
        check_shape("ref_logp", ref_logp, (m, t), "[M, T] (same as logp)")
    deferred: Deferred = []
    valid, opts = _steps(
        xp, logp, returns, mask, group_ids, ref_logp, options,
        entropy is not None, ref_logp is not None, hooks, deferred,
    )  # fmt: skip
    hooks.check_steps(xp, deferred, "logp", logp, valid)
    hooks.check_steps(xp, deferred, "entropy", entropy, valid)
    return Validated(valid, opts, deferred)


def validate_packed(
    xp: Any,
    logp: Array,
    segment_ids: Array,
    returns: Array,
    group_ids: Array | None,
    entropy: Array | None,
    ref_logp: Array | None,
    options: Options | dict[str, Any],
    hooks: CheckHooks = DEFAULT_HOOKS,
    counts: Callable[[], Array] | None = None,
) -> tuple[Validated, Array]:
    """Every check of ``haepo_loss_packed(logp [N], segment_ids [N], returns [M], ...)``.

    Returns ``(validated, n_k)`` with ``n_k`` ``[M]`` the steps per trajectory in float32
    (float64 for float64 ``logp``), computed by ``counts()`` when given (a backend's own
    segment count, which may check the ids on the way) or by the core's segment sum.
    """
    from ._namespace import compute_dtype
    from ._segments import segment_sum

    check_rank("logp", logp, 1, "[N]")
    check_float(xp, "logp", logp)
    n = logp.shape[0]
    check_ids(xp, "segment_ids", segment_ids, n, "[N], same as logp")
    check_rank("returns", returns, 1, "[M]")
    m = returns.shape[0]
    check_trajectories("returns", m, "[M]")
    check_returns(xp, "returns", returns, m)
    if group_ids is not None:
        check_ids(xp, "group_ids", group_ids, m, "[M]")
    for name, arr in (("entropy", entropy), ("ref_logp", ref_logp)):
        if arr is not None:
            check_float(xp, name, arr)
            check_shape(name, arr, (n,), "[N] (same as logp)")
    opts = make_options(
        has_entropy=entropy is not None, has_kl=ref_logp is not None, **_as_dict(options)
    )
    if counts is None:
        if hooks.readable(segment_ids) and n > 0:
            lo, hi = int(xp.min(segment_ids)), int(xp.max(segment_ids))
            if lo < 0 or hi >= m:
                raise ValueError(
                    f"segment_ids: expected values in 0..M-1 = 0..{m - 1}, got values in {lo}..{hi}"
                )
        ones = xp.ones(n, dtype=compute_dtype(xp, logp.dtype), device=device_of(logp))
        n_k = segment_sum(ones, segment_ids, m)
    else:
        n_k = counts()
    check_nonempty(xp, n_k, "segment_ids", hooks.readable)
    hooks.check_finite(xp, "returns", returns, None)
    deferred: Deferred = []
    for name, arr in (("logp", logp), ("entropy", entropy), ("ref_logp", ref_logp)):
        hooks.check_steps(xp, deferred, name, arr, None)
    return Validated(None, opts, deferred), n_k


def check_actions(
    xp: Any, actions: Array, valid: Array, shape: tuple[int, int], v: int, hooks: CheckHooks
) -> None:
    check_rank("actions", actions, 2, "[M, T]")
    check_shape("actions", actions, shape, "[M, T] (logits.shape[:2])")
    if not xp.isdtype(actions.dtype, "integral"):
        raise TypeError(f"actions: expected an integer dtype, got {actions.dtype}")
    if hooks.readable(actions) and hooks.readable(valid):
        bad = xp.logical_and(valid, xp.logical_or(actions < 0, actions >= v))
        if bool(xp.any(bad)):
            raise ValueError(f"actions: expected values in 0..V-1 = 0..{v - 1} at valid steps")


def _first(xp: Any, bad: Array) -> tuple[int, ...]:
    flat = xp.reshape(bad, (-1,))
    i = int(xp.argmax(xp.astype(flat, xp.int32)))
    t = bad.shape[1]
    return (i // t, i % t)


def check_logits(
    xp: Any, name: str, logits: Array, valid: Array, readable: Callable[[Array], bool]
) -> None:
    """Logits ``[M, T, V]`` may hold -inf (a masked vocabulary) but never NaN or +inf at a
    valid step, and every valid step needs one finite logit (else log-softmax is NaN).

    Checked through the row maximum (NaN propagates through it, +inf is it, and it is -inf
    exactly when the whole row is): an ``[M, T]`` temporary, never an ``[M, T, V]`` mask."""
    if not (readable(logits) and readable(valid)):
        return
    peak = xp.max(logits, axis=-1)
    bad = xp.logical_and(xp.logical_or(xp.isnan(peak), peak == float("inf")), valid)
    if bool(xp.any(bad)):
        count = int(xp.sum(xp.astype(bad, xp.int32)))
        raise ValueError(
            f"{name}: expected finite values at valid positions, got {count} NaN/inf "
            f"(first at index {_first(xp, bad)})"
        )
    dead = xp.logical_and(peak == -float("inf"), valid)
    if bool(xp.any(dead)):
        count = int(xp.sum(xp.astype(dead, xp.int32)))
        raise ValueError(
            f"{name}: expected at least one finite logit at every valid step, got {count} "
            f"valid steps whose logits are all -inf (first at index {_first(xp, dead)})"
        )


def check_rows_finite(
    xp: Any, name: str, arr: Array, valid: Array | None, readable: Callable[[Array], bool]
) -> None:
    """No NaN/inf in the rows ``arr[..., :]`` where ``valid`` (everywhere when None), checked
    through the row max and min so no full-size temporary is made."""
    if not (readable(arr) and (valid is None or readable(valid))):
        return
    hi, lo = xp.max(arr, axis=-1), xp.min(arr, axis=-1)
    bad = xp.logical_not(xp.logical_and(xp.isfinite(hi), xp.isfinite(lo)))
    if valid is not None:
        bad = xp.logical_and(bad, valid)
    if bool(xp.any(bad)):
        count = int(xp.sum(xp.astype(bad, xp.int32)))
        where = _first(xp, bad) if bad.ndim == 2 else int(xp.argmax(xp.astype(bad, xp.int32)))
        raise ValueError(
            f"{name}: expected finite values at valid positions, got {count} rows "
            f"with NaN/inf (first at index {where})"
        )


def validate_logits(
    xp: Any,
    logits: Array,
    actions: Array,
    returns: Array,
    mask: Array | None,
    group_ids: Array | None,
    ref_logits: Array | None,
    ref_logp: Array | None,
    options: Options | dict[str, Any],
    hooks: CheckHooks = DEFAULT_HOOKS,
) -> Validated:
    """Every check of ``haepo_loss_from_logits(logits [M, T, V], actions [M, T], ...)``."""
    check_rank("logits", logits, 3, "[M, T, V]")
    check_float(xp, "logits", logits)
    m, t, v = logits.shape
    check_trajectories("logits", m, "[M, T, V]")
    check_rank("actions", actions, 2, "[M, T]")
    check_shape("actions", actions, (m, t), "[M, T] (logits.shape[:2])")
    if ref_logits is not None and ref_logp is not None:
        raise ValueError("ref_logits, ref_logp: expected at most one of them, got both")
    if ref_logits is not None:
        check_float(xp, "ref_logits", ref_logits)
        check_shape("ref_logits", ref_logits, (m, t, v), "[M, T, V] (same as logits)")
    deferred: Deferred = []
    has_kl = ref_logits is not None or ref_logp is not None
    valid, opts = _steps(
        xp, logits, returns, mask, group_ids, ref_logp, options, True, has_kl, hooks, deferred
    )
    check_actions(xp, actions, valid, (m, t), v, hooks)
    check_logits(xp, "logits", logits, valid, hooks.readable)
    if ref_logits is not None:
        check_logits(xp, "ref_logits", ref_logits, valid, hooks.readable)
    return Validated(valid, opts, deferred)


def validate_hidden(
    xp: Any,
    hidden: Array,
    weight: Array,
    actions: Array,
    returns: Array,
    mask: Array | None,
    bias: Array | None,
    ref_hidden: Array | None,
    ref_weight: Array | None,
    ref_bias: Array | None,
    ref_logp: Array | None,
    group_ids: Array | None,
    options: Options | dict[str, Any],
    hooks: CheckHooks = DEFAULT_HOOKS,
) -> Validated:
    """Every check of ``haepo_loss_from_hidden(hidden [M, T, H], weight [V, H], ...)``.

    ``weight`` (and ``bias``) must have the dtype of ``hidden``: the projection runs in it, and
    a silent promotion would change the memory and speed the caller chose."""
    check_rank("hidden", hidden, 3, "[M, T, H]")
    check_float(xp, "hidden", hidden)
    m, t, h = hidden.shape
    check_trajectories("hidden", m, "[M, T, H]")
    check_rank("weight", weight, 2, "[V, H]")
    check_float(xp, "weight", weight)
    if weight.shape[1] != h:
        raise ValueError(
            f"weight: expected shape [V, H] with H = {h} (hidden.shape[-1]), "
            f"got {tuple(weight.shape)}"
        )
    v = weight.shape[0]
    if bias is not None:
        check_float(xp, "bias", bias)
        check_shape("bias", bias, (v,), "[V] (weight.shape[0])")
    for name, arr in (("weight", weight), ("bias", bias)):
        if arr is not None and arr.dtype != hidden.dtype:
            raise TypeError(
                f"hidden, {name}: expected the same floating dtype (the projection runs in "
                f"it), got hidden {hidden.dtype} and {name} {arr.dtype}"
            )
    if ref_hidden is not None and ref_logp is not None:
        raise ValueError("ref_hidden, ref_logp: expected at most one of them, got both")
    if ref_hidden is None and (ref_weight is not None or ref_bias is not None):
        raise ValueError("ref_weight, ref_bias: given without ref_hidden; expected ref_hidden too")
    if ref_hidden is not None:
        check_float(xp, "ref_hidden", ref_hidden)
        check_shape("ref_hidden", ref_hidden, (m, t, h), "[M, T, H] (same as hidden)")
        if ref_weight is not None:
            check_float(xp, "ref_weight", ref_weight)
            check_shape("ref_weight", ref_weight, (v, h), "[V, H] (same as weight)")
        if ref_bias is not None:
            check_float(xp, "ref_bias", ref_bias)
            check_shape("ref_bias", ref_bias, (v,), "[V]")
    check_rank("actions", actions, 2, "[M, T]")
    check_shape("actions", actions, (m, t), "[M, T] (hidden.shape[:2])")
    deferred: Deferred = []
    has_kl = ref_hidden is not None or ref_logp is not None
    valid, opts = _steps(
        xp, hidden, returns, mask, group_ids, ref_logp, options, True, has_kl, hooks, deferred
    )
    check_actions(xp, actions, valid, (m, t), v, hooks)
    check_rows_finite(xp, "hidden", hidden, valid, hooks.readable)
    check_rows_finite(xp, "weight", weight, None, hooks.readable)
    if bias is not None:
        hooks.check_finite(xp, "bias", bias, None)
    if ref_hidden is not None:
        check_rows_finite(xp, "ref_hidden", ref_hidden, valid, hooks.readable)
    return Validated(valid, opts, deferred)
