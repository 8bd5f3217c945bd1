"""Input checks shared by every public function: each error names the argument, what was
expected and what was received, so a wrong call fails at the door and not deep in the math.

Shape, rank and dtype checks always run (shapes are known even under tracing). Value checks
(NaN/inf in valid positions, empty trajectories, out-of-range ids) run only when the arrays are
concrete; under ``jax.jit`` or ``torch.compile`` they are skipped and non-finite inputs
propagate as NaN (see docs/spec.md, "Errors under tracing").
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

from ._namespace import Array, is_concrete, values_readable

__all__ = [
    "KL_ESTIMATORS",
    "NORMALIZATIONS",
    "check_finite",
    "check_finite_from_sums",
    "check_nonempty",
    "check_trajectories",
    "check_float",
    "check_ids",
    "check_mask",
    "check_options",
    "check_rank",
    "check_returns",
    "check_shape",
]

KL_ESTIMATORS = ("k1", "k2", "k3")
NORMALIZATIONS = ("zscore", "center", "none")


def _dtype_kind(xp: Any, x: Array) -> str:
    dt = x.dtype
    if dt == xp.bool:
        return "bool"
    if xp.isdtype(dt, "real floating"):
        return "float"
    if xp.isdtype(dt, "integral"):
        return "int"
    if xp.isdtype(dt, "complex floating"):
        return "complex"
    return str(dt)  # pragma: no cover


def check_rank(name: str, x: Array, ndim: int, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(
            f"{name}: expected a {ndim}-d array of shape {layout}, got {x.ndim}-d array "
            f"with shape {tuple(x.shape)}"
        )


def check_float(xp: Any, name: str, x: Array) -> None:
    kind = _dtype_kind(xp, x)
    if kind != "float":
        raise TypeError(
            f"{name}: expected a real floating dtype (float16, bfloat16, float32, float64), "
            f"got {x.dtype}"
        )


def check_shape(name: str, x: Array, expected: tuple[int, ...], layout: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(
            f"{name}: expected shape {layout} = {tuple(expected)}, got {tuple(x.shape)}"
        )


def check_returns(xp: Any, name: str, x: Array, m: int) -> None:
    check_rank(name, x, 1, "[M]")
    kind = _dtype_kind(xp, x)
    if kind not in ("float", "int"):
        raise TypeError(f"{name}: expected a real floating or integer dtype, got {x.dtype}")
    if x.shape[0] != m:
        raise ValueError(
            f"{name}: expected length M = {m} (one entry per trajectory), got length {x.shape[0]}"
        )


def check_mask(
    xp: Any,
    name: str,
    mask: Array,
    shape: tuple[int, ...],
    readable: Callable[[Array], bool] = values_readable,
) -> Array:
    """Validate a mask and return it as a boolean array."""
    check_shape(name, mask, shape, "[M, T] (same as logp)")
    kind = _dtype_kind(xp, mask)
    if kind == "bool":
        return mask
    if kind not in ("int", "float"):
        raise TypeError(f"{name}: expected a bool (or 0/1 numeric) dtype, got {mask.dtype}")
    if readable(mask):
        bad = xp.logical_and(mask != 0, mask != 1)
        if bool(xp.any(bad)):
            raise ValueError(f"{name}: a numeric mask must hold only 0 and 1, got other values")
    return mask != 0


def check_finite(
    xp: Any,
    name: str,
    x: Array,
    valid: Array | None,
    readable: Callable[[Array], bool] = values_readable,
) -> None:
    """Raise if ``x`` holds NaN or inf where ``valid`` is True (everywhere if ``valid`` is None).
    Skipped when ``readable`` says the values cannot be read now (tracing)."""
    if not (readable(x) and (valid is None or readable(valid))):
        return
    bad = ~xp.isfinite(x)
    if valid is not None:
        bad = xp.logical_and(bad, valid)
    if bool(xp.any(bad)):
        count = int(xp.sum(xp.astype(bad, xp.int32)))
        flat = xp.reshape(bad, (-1,))
        first = int(xp.argmax(xp.astype(flat, xp.int32)))
        where = first if x.ndim == 1 else tuple(int(i) for i in _unravel(first, tuple(x.shape)))
        raise ValueError(
            f"{name}: expected finite values at valid positions, got {count} NaN/inf "
            f"(first at index {where})"
        )


def _unravel(flat: int, shape: tuple[int, ...]) -> list[int]:
    out = []
    for dim in reversed(shape):
        out.append(flat % dim)
        flat //= dim
    return list(reversed(out))


def check_ids(xp: Any, name: str, ids: Array, n: int, layout: str) -> None:
    check_rank(name, ids, 1, layout)
    if _dtype_kind(xp, ids) != "int":
        raise TypeError(f"{name}: expected an integer dtype, got {ids.dtype}")
    if ids.shape[0] != n:
        raise ValueError(f"{name}: expected length {n} ({layout}), got length {ids.shape[0]}")


def _check_number(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if hasattr(value, "shape") and getattr(value, "ndim", 1) == 0:
            if not is_concrete(value):
                return
            # A coefficient being differentiated (a jax.grad tracer) refuses float(): read its
            # concrete primal value instead, and skip the check if there is none.
            to_concrete = getattr(value, "to_concrete_value", None)
            if to_concrete is not None:
                value = to_concrete()
                if value is None:
                    return
            detach = getattr(value, "detach", None)  # torch: read without autograd's warning
            value = float(detach() if detach is not None else value)  # type: ignore[arg-type]
        else:
            raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    v = float(value)  # type: ignore[arg-type]
    if v != v or v in (float("inf"), -float("inf")):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    if positive and not v > 0:
        raise ValueError(f"{name}: expected a value > 0, got {v}")
    if not positive and v < 0:
        raise ValueError(f"{name}: expected a value >= 0, got {v}")


def check_options(
    *,
    entropy_coef: object,
    kl_coef: object,
    kl_estimator: object,
    normalize_returns: object,
    temperature: object,
    eps: object,
    length_normalize: object,
) -> None:
    _check_number("entropy_coef", entropy_coef, positive=False)
    _check_number("kl_coef", kl_coef, positive=False)
    _check_number("temperature", temperature, positive=True)
    _check_number("eps", eps, positive=True)
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"kl_estimator: expected one of {', '.join(map(repr, KL_ESTIMATORS))}, "
            f"got {kl_estimator!r}"
        )
    if normalize_returns not in NORMALIZATIONS:
        raise ValueError(
            f"normalize_returns: expected one of {', '.join(map(repr, NORMALIZATIONS))}, "
            f"got {normalize_returns!r}"
        )
    if not isinstance(length_normalize, bool):
        raise TypeError(f"length_normalize: expected a bool, got {type(length_normalize).__name__}")


def check_trajectories(name: str, m: int, layout: str) -> None:
    """At least one trajectory: ``M = 0`` has no groups to average over."""
    if m == 0:
        raise ValueError(
            f"{name}: expected at least one trajectory (M >= 1) in {layout}, got M = 0"
        )


def check_nonempty(
    xp: Any, counts: Array, what: str, readable: Callable[[Array], bool] = values_readable
) -> None:
    """Every trajectory has at least one valid step (``counts`` ``[M]``)."""
    if not readable(counts):
        return
    empty = counts == 0
    if bool(xp.any(empty)):
        first = int(xp.argmax(xp.astype(empty, xp.int32)))
        n = int(xp.sum(xp.astype(empty, xp.int32)))
        raise ValueError(
            f"{what}: expected every trajectory to have at least one valid step, got {n} "
            f"empty trajectories (first: trajectory {first})"
        )


def check_finite_from_sums(
    xp: Any,
    sums: Sequence[Array | None],
    inputs: Sequence[tuple[str, Array | None, Array | None]],
    readable: Callable[[Array], bool] = values_readable,
) -> None:
    """Finiteness of many inputs from a few sums the loss computes anyway (a deferred check).

    The elementwise check costs several full passes per input (isfinite, masking, any); a NaN
    or inf at a valid position always reaches a sum over the sanitized values, so only the
    handful of scalars is tested, and only when one is not finite does :func:`check_finite`
    run on each input ``(name, array, valid)``: it raises its exact message (or passes, for a
    legitimately overflowing sum, which then propagates as any overflow does).
    """
    present = [s for s in sums if s is not None]
    if not present or not all(readable(s) for s in present):
        return
    total = xp.sum(present[0])
    for s in present[1:]:
        total = total + xp.sum(s)  # one read: a NaN/inf in any sum keeps the total non-finite
    if bool(xp.isfinite(total)):
        return
    for name, arr, valid in inputs:
        if arr is not None:
            check_finite(xp, name, arr, valid, readable)
