"""The ``haepo_core.Backend`` object for PyTorch (entry point ``torch``) and its variants."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import array_api_compat.torch as xp_torch
import numpy as np
import torch

from haepo_core import HAEPOOutput

from ._loss import haepo_loss, haepo_loss_packed

__all__ = ["TorchBackend", "backend"]

_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
_FLOAT_INPUTS = ("logp", "returns", "entropy", "ref_logp", "logits", "ref_logits")


class TorchBackend:
    """HAEPO on PyTorch: closed-form policy backward, autograd for everything else.

    ``value_and_grad`` runs ``torch.autograd`` through this backend's own loss functions.
    ``variants()`` gives ``"compile"`` (the same functions under
    ``torch.compile(fullgraph=True, dynamic=True)``, value checks run eagerly first) and
    ``"core_autograd"`` (``haepo_core`` itself on torch tensors, plain autograd through the
    softmax): both must agree with this one.
    """

    name = "torch"
    xp = xp_torch
    dtypes: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16")
    supports_packed = True
    differentiable: tuple[str, ...] = ("logp", "entropy")

    def __init__(
        self,
        name: str = "torch",
        loss: Callable[..., HAEPOOutput] | None = None,
        loss_packed: Callable[..., HAEPOOutput] | None = None,
    ) -> None:
        self.name = name
        self._loss = loss or haepo_loss
        self._loss_packed = loss_packed or haepo_loss_packed

    def __repr__(self) -> str:
        return f"TorchBackend({self.name!r})"

    @property
    def devices(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)

    def asarray(self, x: Any, *, dtype: str | None = None, device: str | None = None) -> Any:
        if isinstance(x, torch.Tensor):
            t = x
        else:
            a = np.asarray(x)
            if a.dtype.kind == "u" and a.dtype != np.uint8:
                a = a.astype(np.int64)  # torch has no general unsigned integer support
            t = torch.from_numpy(np.ascontiguousarray(a))
        if dtype is not None and t.dtype.is_floating_point:
            if dtype not in _DTYPES:
                raise ValueError(f"dtype: expected one of {tuple(_DTYPES)}, got {dtype!r}")
            t = t.to(_DTYPES[dtype])
        if device is not None:
            t = t.to(device)
        return t

    def to_numpy(self, x: Any) -> Any:
        t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(x)
        if t.dtype == torch.bfloat16:  # NumPy has no bfloat16
            t = t.to(torch.float32)
        return t.numpy()

    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kwargs: Any) -> HAEPOOutput:
        return self._loss(logp, returns, mask, **kwargs)

    def haepo_loss_packed(
        self, logp: Any, segment_ids: Any, returns: Any, **kwargs: Any
    ) -> HAEPOOutput:
        return self._loss_packed(logp, segment_ids, returns, **kwargs)

    def value_and_grad(
        self,
        inputs: Mapping[str, Any],
        *,
        wrt: Sequence[str] = ("logp",),
        packed: bool = False,
        dtype: str = "float64",
        device: str | None = None,
        **kwargs: Any,
    ) -> tuple[float, dict[str, Any]]:
        bad = [w for w in wrt if w not in self.differentiable]
        if bad:
            raise ValueError(f"wrt: expected a subset of {self.differentiable}, got {tuple(wrt)}")
        if "entropy" in wrt and inputs.get("entropy") is None:
            raise ValueError("wrt: 'entropy' needs an entropy input")
        args = {
            k: None
            if v is None
            else self.asarray(v, dtype=dtype if k in _FLOAT_INPUTS else None, device=device)
            for k, v in inputs.items()
        }
        leaves = list(wrt)
        tensors = []
        for k in leaves:
            args[k] = args[k].detach().requires_grad_(True)
            tensors.append(args[k])
        if packed:
            out = self.haepo_loss_packed(
                args.pop("logp"), args.pop("segment_ids"), args.pop("returns"), **args, **kwargs
            )
        else:
            out = self.haepo_loss(
                args.pop("logp"), args.pop("returns"), args.pop("mask", None), **args, **kwargs
            )
        grads = torch.autograd.grad(out.loss, tensors, allow_unused=True)
        result = {
            k: self.to_numpy(torch.zeros_like(t) if g is None else g)
            for k, t, g in zip(leaves, tensors, grads)
        }
        return float(out.loss.detach().to(torch.float64)), result

    def variants(self) -> Mapping[str, TorchBackend]:
        if self.name != "torch":
            return {}
        return {"compile": _compiled_backend(), "core_autograd": _core_backend()}


def _core_backend() -> TorchBackend:
    import haepo_core

    return TorchBackend("torch[core_autograd]", haepo_core.haepo_loss, haepo_core.haepo_loss_packed)


_COMPILED: dict[str, Callable[..., HAEPOOutput]] = {}


def _compiled(name: str, fn: Callable[..., HAEPOOutput]) -> Callable[..., HAEPOOutput]:
    # The conformance suite calls this variant with many shapes and options. Dynamo (which
    # decides graph breaks: fullgraph=True makes any break an error) and AOTAutograd (which
    # traces the closed-form backward) are what must accept our code; Inductor's C++ build
    # costs ~100 s per graph on a 2-core CPU box, so the variant defaults to "aot_eager".
    # HAEPO_TORCH_COMPILE_BACKEND=inductor runs the full stack.
    if name not in _COMPILED:
        backend_name = os.environ.get("HAEPO_TORCH_COMPILE_BACKEND", "aot_eager")
        _COMPILED[name] = torch.compile(fn, fullgraph=True, dynamic=True, backend=backend_name)
    return _COMPILED[name]


def _compiled_backend() -> TorchBackend:
    def loss(logp: Any, returns: Any, mask: Any = None, **kw: Any) -> HAEPOOutput:
        haepo_loss(logp.detach(), returns, mask, **_no_group(kw))  # eager value checks
        with _recompile_budget():
            return _compiled("padded", haepo_loss)(logp, returns, mask, **kw)

    def loss_packed(logp: Any, segment_ids: Any, returns: Any, **kw: Any) -> HAEPOOutput:
        haepo_loss_packed(logp.detach(), segment_ids, returns, **_no_group(kw))
        with _recompile_budget():
            return _compiled("packed", haepo_loss_packed)(logp, segment_ids, returns, **kw)

    return TorchBackend("torch[compile]", loss, loss_packed)


def _recompile_budget() -> Any:
    """A conformance run calls the variant with every dtype, option string and
    present/absent optional input: each combination is one more (legitimate) specialization of
    the same function, many more than Dynamo's default limit of 8, and with fullgraph=True
    hitting the limit is a hard error. Raise the limit for these calls only."""
    return torch._dynamo.config.patch(recompile_limit=512, accumulated_recompile_limit=4096)


def _no_group(kw: dict[str, Any]) -> dict[str, Any]:
    if kw.get("process_group") is not None:
        raise ValueError("process_group: the compile variant runs single-process; got a group")
    return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


backend = TorchBackend()
