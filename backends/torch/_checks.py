"""The torch hooks of the core's input validation (``haepo_core.kit``): which tensors can be
read now, and the device check. Every check itself, and every message, is the core's.

Shape, rank and dtype checks always run (they read metadata only and trace cleanly). Value
checks (NaN/inf at valid steps, empty trajectories, ids out of range, non-0/1 masks) read
tensor values: they run eagerly and are skipped under ``torch.compile``, so compiling never
graph-breaks on them. The finite checks of the per-step inputs are deferred to the sums the
loss computes anyway (``check_finite_from_sums``): a handful of scalars instead of several
full passes per input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat.torch as xp
import torch

from haepo_core.kit import CheckHooks, check_finite_from_sums, entry_arguments
from haepo_core.kit import is_concrete as _core_is_concrete

__all__ = ["HOOKS", "check_deferred", "check_tensors", "is_concrete", "validated", "xp"]

#: The torch entry points' own keywords: neither tensors nor loss options.
_STATIC = ("process_group", "chunk_size", "kernel")


def is_concrete(x: torch.Tensor) -> bool:
    """False while ``torch.compile`` traces (asked first, so Dynamo never traces into
    array_api_compat's type probes), else the core's answer (functorch wrappers, meta)."""
    if torch.compiler.is_compiling():
        return False
    return _core_is_concrete(x)


HOOKS = CheckHooks(readable=is_concrete, defer_steps=True)


def check_deferred(sums: list[Any], deferred: list[Any]) -> None:
    """The deferred finite checks of the per-step inputs, from sums over their valid steps."""
    if deferred:
        check_finite_from_sums(xp, sums, deferred, is_concrete)


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


def validated(
    args: dict[str, Any], validate: Callable[..., Any], hooks: CheckHooks | None = None, **kw: Any
) -> tuple[torch.device, Any]:
    """An entry point's tensors (``args``: its ``locals()`` on entry) checked by
    :func:`check_tensors`, then by the core's ``validate`` (a ``validate_*`` function, with
    ``hooks``, default :data:`HOOKS`, and any keywords ``kw``): ``(device, its result)``."""
    arrays, options = entry_arguments(args, _STATIC)
    device = check_tensors(**arrays)
    hooks = HOOKS if hooks is None else hooks
    return device, validate(xp, **arrays, options=options, hooks=hooks, **kw)
