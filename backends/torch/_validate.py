"""Input checks for the torch entry points, built on haepo_core's own validation helpers so the
errors (type, argument name, expected vs received) are the core's, word for word.

Shape, rank and dtype checks always run (they read metadata only and trace cleanly). Value
checks (NaN/inf at valid steps, empty trajectories, ids out of range, non-0/1 masks) read
tensor values: they run eagerly and are skipped under ``torch.compile`` (the core's
``is_concrete`` is False there), so compiling never graph-breaks on them.
"""

from __future__ import annotations

from typing import Any

import array_api_compat.torch as xp
import torch

from haepo_core._loss import _check_nonempty, _require_inputs
from haepo_core._namespace import is_concrete as _core_is_concrete
from haepo_core._validation import check_finite as _core_check_finite
from haepo_core._validation import (
    check_float,
    check_ids,
    check_mask,
    check_options,
    check_rank,
    check_returns,
    check_shape,
)

from ._objective import Options

__all__ = [
    "check_actions",
    "check_finite",
    "check_finite_deferred",
    "check_float",
    "check_ids",
    "check_logits_finite",
    "check_rows_finite",
    "check_nonempty",
    "check_rank",
    "check_returns",
    "check_shape",
    "check_tensors",
    "is_concrete",
    "options",
    "valid_mask",
    "xp",
]


def is_concrete(x: torch.Tensor) -> bool:
    """False while ``torch.compile`` traces (asked first, so Dynamo never traces into
    array_api_compat's type probes), else the core's answer (functorch wrappers, meta)."""
    if torch.compiler.is_compiling():
        return False
    return _core_is_concrete(x)


def check_finite(xp_: Any, name: str, x: torch.Tensor, valid: torch.Tensor | None) -> None:
    if is_concrete(x):
        _core_check_finite(xp_, name, x, valid)


def check_finite_deferred(
    sums: list[torch.Tensor | None], inputs: list[tuple[str, torch.Tensor | None, Any]]
) -> None:
    """Finiteness of many inputs from a few sums the loss computes anyway.

    The core's elementwise check costs about six full passes per input (isfinite, masking,
    any); a NaN or inf at a valid position always reaches a sum over the sanitized values, so
    we test the handful of scalars the loss already has and only when one is not finite run
    the core's check on each input, which raises its exact message (or passes, for a
    legitimately overflowing sum, which then propagates as in the core).
    """
    present = [s for s in sums if s is not None]
    if not present or not all(is_concrete(s) for s in present):
        return
    if bool(torch.isfinite(torch.stack([s.detach().sum().double() for s in present])).all()):
        return
    for name, arr, valid in inputs:
        if arr is not None:
            check_finite(xp, name, arr, valid)


def check_tensors(**arrays: Any) -> torch.device:
    """Every non-None argument is a torch.Tensor, all on one device; returns that device."""
    devices = {}
    for name, value in arrays.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
        devices[name] = value.device
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k}={v}" for k, v in devices.items())
        raise ValueError(f"expected every tensor on one device, got {listing}")
    return next(iter(devices.values()))


def options(
    *,
    entropy_coef: Any,
    kl_coef: Any,
    kl_estimator: Any,
    normalize_returns: Any,
    temperature: Any,
    length_normalize: Any,
    eps: Any,
    has_entropy: bool,
    has_kl: bool,
) -> Options:
    kw = dict(
        entropy_coef=entropy_coef,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        normalize_returns=normalize_returns,
        temperature=temperature,
        length_normalize=length_normalize,
        eps=eps,
    )
    check_options(**kw)
    opts = Options(**kw)
    _require_inputs(opts, has_entropy, has_kl)  # type: ignore[arg-type]
    return opts


def valid_mask(mask: torch.Tensor | None, shape: tuple[int, int], device: torch.device) -> Any:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if mask.dtype == torch.bool or is_concrete(mask):
        return check_mask(xp, "mask", mask, shape)
    check_shape("mask", mask, shape, "[M, T] (same as logp)")  # traced numeric mask
    if mask.dtype.is_complex:
        raise TypeError(f"mask: expected a bool (or 0/1 numeric) dtype, got {mask.dtype}")
    return mask != 0


def check_nonempty(counts: torch.Tensor, what: str) -> None:
    if is_concrete(counts):
        _check_nonempty(xp, counts, what)


def check_actions(
    actions: torch.Tensor, valid: torch.Tensor, shape: tuple[int, int], v: int
) -> None:
    check_rank("actions", actions, 2, "[M, T]")
    check_shape("actions", actions, shape, "[M, T] (logits.shape[:2])")
    if actions.dtype.is_floating_point or actions.dtype.is_complex or actions.dtype == torch.bool:
        raise TypeError(f"actions: expected an integer dtype, got {actions.dtype}")
    if is_concrete(actions) and is_concrete(valid):
        bad = valid & ((actions < 0) | (actions >= v))
        if bool(bad.any()):
            raise ValueError(f"actions: expected values in 0..V-1 = 0..{v - 1} at valid steps")


def check_logits_finite(name: str, arr: torch.Tensor, valid: torch.Tensor) -> None:
    """Logits may hold -inf (masked vocabulary) but never NaN or +inf at valid steps."""
    if not is_concrete(arr):
        return
    # Row-wise max instead of an elementwise isfinite: NaN propagates through amax and +inf
    # is the max, and only an [M, T] temporary is made (an [M, T, V] bool mask would cost
    # as much memory as the chunked paths save).
    peak = arr.amax(dim=-1)
    bad = (torch.isnan(peak) | (peak == float("inf"))) & valid
    if bool(bad.any()):
        count = int(bad.sum())
        first = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"{name}: expected finite values at valid positions, got {count} NaN/inf "
            f"(first at index {first})"
        )


def check_rows_finite(name: str, arr: torch.Tensor, valid: torch.Tensor | None) -> None:
    """No NaN/inf in the rows ``arr[..., :]`` where ``valid`` (everywhere when None), checked
    through row-wise max/min so no full-size temporary is made."""
    if not is_concrete(arr):
        return
    hi, lo = arr.amax(dim=-1), arr.amin(dim=-1)
    bad = ~(torch.isfinite(hi) & torch.isfinite(lo))
    if valid is not None:
        bad = bad & valid
    if bool(bad.any()):
        first = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"{name}: expected finite values at valid positions, got {int(bad.sum())} rows "
            f"with NaN/inf (first at index {first})"
        )
