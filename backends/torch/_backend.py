"""The ``haepo_core.Backend`` object for PyTorch (entry point ``torch``) and its variants.

A backend object is the loss functions plus a two-function autodiff primitive (``grad`` and
``hvp``, both ``torch.autograd``); the conformance suite does the NumPy boundary and the
packed/padded plumbing. The loss functions are reached through the package at call time, so
the modules behind them can move freely.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import array_api_compat.torch as xp_torch
import torch

#: What ``grad`` and ``hvp`` differentiate: a loss from a dict of arguments.
LossCall = Callable[[dict[str, Any]], Any]

__all__ = ["TorchBackend", "backend"]

_LEAN = ("haepo_loss_from_logits", "haepo_loss_from_hidden")
_ENTRIES = ("haepo_loss", "haepo_loss_packed", *_LEAN)


def _public(name: str) -> Callable[..., Any]:
    """``haepo_backends.torch.<name>``, looked up at call time."""

    def call(*args: Any, **kwargs: Any) -> Any:
        import haepo_backends.torch as pkg

        return getattr(pkg, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


class TorchBackend:
    """HAEPO on PyTorch: the given loss functions, differentiated by ``torch.autograd``.

    ``entries`` maps entry-point names (``haepo_loss``, ``haepo_loss_packed``,
    ``haepo_loss_from_logits``, ``haepo_loss_from_hidden``) to functions; only those become
    attributes (the suite checks the capabilities a backend has). ``second_order`` lists the
    entries whose double backward is exact (the ``gradient.second_order`` property checks
    them). ``variants()`` of the default backend: ``"compile"`` (``torch.compile(
    fullgraph=True, dynamic=True)``, value checks run eagerly first), ``"core_autograd"``
    (``haepo_core`` on torch tensors, plain autograd, exact second derivatives) and, where
    Triton can run, ``"triton"`` (the lean paths with ``kernel="triton"``).
    """

    xp = xp_torch
    dtypes: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16")

    def __init__(
        self,
        name: str = "torch",
        entries: Mapping[str, Callable[..., Any]] | None = None,
        *,
        chunked: bool = True,
        second_order: Sequence[str] = (),
    ) -> None:
        self.name = name
        entries = {e: _public(e) for e in _ENTRIES} if entries is None else dict(entries)
        unknown = set(entries) - set(_ENTRIES)
        if unknown:
            raise ValueError(f"entries: expected names among {_ENTRIES}, got {sorted(unknown)}")
        for entry, fn in entries.items():
            setattr(self, entry, fn)
        self.chunked = chunked and any(e in entries for e in _LEAN)
        self.second_order = tuple(second_order)

    def __repr__(self) -> str:
        return f"TorchBackend({self.name!r})"

    @property
    def devices(self) -> tuple[str, ...]:
        return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)

    def grad(
        self, fn: LossCall, args: Mapping[str, Any], wrt: Sequence[str]
    ) -> tuple[Any, dict[str, Any]]:
        a, leaves = _leaves(args, wrt)
        loss = fn(a)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return loss.detach(), _zeros_for_none(wrt, leaves, grads)

    def hvp(
        self, fn: LossCall, args: Mapping[str, Any], wrt: Sequence[str], vectors: Mapping[str, Any]
    ) -> dict[str, Any]:
        a, leaves = _leaves(args, wrt)
        grads = torch.autograd.grad(fn(a), leaves, create_graph=True, allow_unused=True)
        dot = sum((g * vectors[k]).sum() for k, g in zip(wrt, grads) if g is not None)
        if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
            return {k: torch.zeros_like(x) for k, x in zip(wrt, leaves)}
        return _zeros_for_none(wrt, leaves, torch.autograd.grad(dot, leaves, allow_unused=True))

    def variants(self) -> Mapping[str, TorchBackend]:
        if self.name != "torch":
            return {}
        out = {"compile": _compiled_backend(), "core_autograd": _core_backend()}
        triton = _triton_backend()
        if triton is not None:
            out["triton"] = triton
        return out


def _leaves(args: Mapping[str, Any], wrt: Sequence[str]) -> tuple[dict[str, Any], list[Any]]:
    a = dict(args)
    for k in wrt:
        a[k] = a[k].detach().requires_grad_(True)
    return a, [a[k] for k in wrt]


def _zeros_for_none(wrt: Sequence[str], leaves: list[Any], grads: Sequence[Any]) -> dict:
    return {
        k: (torch.zeros_like(x) if g is None else g.detach()) for k, x, g in zip(wrt, leaves, grads)
    }


def _core_backend() -> TorchBackend:
    import haepo_core

    entries = {
        "haepo_loss": haepo_core.haepo_loss,
        "haepo_loss_packed": haepo_core.haepo_loss_packed,
        "haepo_loss_from_logits": haepo_core.haepo_loss_from_logits,
    }
    # Plain autograd through the core's array-API code: every second derivative is exact.
    return TorchBackend("torch[core_autograd]", entries, chunked=False, second_order=tuple(entries))


def _triton_backend() -> TorchBackend | None:
    """The lean paths with ``kernel="triton"``, when the keyword exists and Triton can run
    here (CUDA, or ``TRITON_INTERPRET=1``); None otherwise."""
    try:
        import haepo_backends.torch as pkg
        from haepo_backends.torch import _triton  # detection only, no loss function
    except ImportError:
        return None
    available = getattr(_triton, "available", None)
    if not callable(available) or not available():
        return None
    entries = {}
    for entry in _LEAN:
        fn = getattr(pkg, entry, None)
        if fn is None or "kernel" not in inspect.signature(fn).parameters:
            continue
        entries[entry] = _with_kernel(entry, "triton")
    return TorchBackend("torch[triton]", entries) if entries else None


def _with_kernel(entry: str, kernel: str) -> Callable[..., Any]:
    public = _public(entry)

    def call(*args: Any, **kwargs: Any) -> Any:
        return public(*args, kernel=kernel, **kwargs)

    call.__name__ = call.__qualname__ = entry
    return call


_COMPILED: dict[str, Callable[..., Any]] = {}


def _compiled(name: str) -> Callable[..., Any]:
    # The conformance suite calls this variant with many shapes and options. Dynamo (which
    # decides graph breaks: fullgraph=True makes any break an error) and AOTAutograd (which
    # traces the closed-form backward) are what must accept our code; Inductor's C++ build
    # costs ~100 s per graph on a 2-core CPU box, so the variant defaults to "aot_eager".
    # HAEPO_TORCH_COMPILE_BACKEND=inductor runs the full stack.
    if name not in _COMPILED:
        import haepo_backends.torch as pkg

        backend_name = os.environ.get("HAEPO_TORCH_COMPILE_BACKEND", "aot_eager")
        _COMPILED[name] = torch.compile(
            getattr(pkg, name), fullgraph=True, dynamic=True, backend=backend_name
        )
    return _COMPILED[name]


def _compiled_entry(name: str) -> Callable[..., Any]:
    eager = _public(name)

    def call(*args: Any, **kwargs: Any) -> Any:
        # Value checks (NaN at valid steps, empty trajectories...) read values: they run
        # eagerly first, as a training loop would run them once before compiling.
        eager(*_detached(args), **_no_group(kwargs))
        with _recompile_budget():
            return _compiled(name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def _compiled_backend() -> TorchBackend:
    return TorchBackend(
        "torch[compile]", {e: _compiled_entry(e) for e in ("haepo_loss", "haepo_loss_packed")}
    )


def _recompile_budget() -> Any:
    """A conformance run calls the variant with every dtype, option string and
    present/absent optional input: each combination is one more (legitimate) specialization of
    the same function, many more than Dynamo's default limit of 8, and with fullgraph=True
    hitting the limit is a hard error. Raise the limit for these calls only."""
    return torch._dynamo.config.patch(recompile_limit=512, accumulated_recompile_limit=4096)


def _detached(args: Sequence[Any]) -> list[Any]:
    return [a.detach() if isinstance(a, torch.Tensor) else a for a in args]


def _no_group(kw: dict[str, Any]) -> dict[str, Any]:
    if kw.get("process_group") is not None:
        raise ValueError("process_group: the compile variant runs single-process; got a group")
    return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


# The padded and packed losses have an exact double backward (the policy term's and the
# KL-estimate sum's backwards are built from differentiable ops); the lean paths refuse
# second derivatives with a clear error, so they are not declared.
backend = TorchBackend(second_order=("haepo_loss", "haepo_loss_packed"))
