"""A complete, minimal third-party HAEPO backend: PyTorch with autograd.

This file is the worked example of docs/conformance.md. It shows the whole ``Backend``
protocol of ``haepo_core`` in one place:

- the attributes the suite reads (name, namespace, dtypes, devices, packed support, which
  inputs are differentiable);
- conversion from and to NumPy (the suite speaks NumPy at the boundary);
- the loss functions (here the reference core run on torch tensors; put *your own*
  implementation in ``haepo_loss`` / ``haepo_loss_packed``: that is what the suite checks);
- the autodiff glue, ``value_and_grad``, here ``torch.autograd.grad``.

Run the conformance suite on it from this folder (so ``my_backend`` is importable)::

    python -m haepo_conformance --backend my_backend:backend

or register it in your package's pyproject.toml and use its name::

    [project.entry-points."haepo.backends"]
    my_torch = "my_backend:backend"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import array_api_compat.torch as xp_torch
import numpy as np
import torch

import haepo_core

FLOAT_INPUTS = ("logp", "returns", "entropy", "ref_logp")


class MyTorchBackend:
    name = "my_torch"
    xp = xp_torch  # the array namespace of the arrays this backend returns
    dtypes = ("float32", "float64", "bfloat16")  # bfloat16 is computed in float32 by the core
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    supports_packed = True
    differentiable = ("logp", "entropy")

    # -- NumPy <-> torch ------------------------------------------------------------------
    def asarray(self, x: Any, *, dtype: str | None = None, device: str | None = None) -> Any:
        t = torch.as_tensor(np.asarray(x), device=device or "cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(getattr(torch, dtype))
        return t

    def to_numpy(self, x: Any) -> np.ndarray:
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # NumPy has no bfloat16
            x = x.float()
        return x.numpy()

    # -- the losses under test ------------------------------------------------------------
    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kw: Any):
        return haepo_core.haepo_loss(logp, returns, mask, **kw)

    def haepo_loss_packed(self, logp: Any, segment_ids: Any, returns: Any, **kw: Any):
        return haepo_core.haepo_loss_packed(logp, segment_ids, returns, **kw)

    # -- autodiff glue --------------------------------------------------------------------
    def value_and_grad(
        self,
        inputs: Mapping[str, Any],
        *,
        wrt: Sequence[str] = ("logp",),
        packed: bool = False,
        dtype: str = "float64",
        device: str | None = None,
        **kw: Any,
    ) -> tuple[float, dict[str, np.ndarray]]:
        args = {
            k: self.asarray(v, dtype=dtype if k in FLOAT_INPUTS else None, device=device)
            for k, v in inputs.items()
            if v is not None
        }
        for k in wrt:
            if k not in self.differentiable or k not in args:
                raise ValueError(f"wrt: cannot differentiate with respect to {k!r}")
            args[k].requires_grad_(True)
        call = dict(args)
        if packed:
            out = self.haepo_loss_packed(
                call.pop("logp"), call.pop("segment_ids"), call.pop("returns"), **call, **kw
            )
        else:
            out = self.haepo_loss(
                call.pop("logp"), call.pop("returns"), call.pop("mask", None), **call, **kw
            )
        grads = torch.autograd.grad(out.loss, [args[k] for k in wrt], allow_unused=True)
        result = {
            k: self.to_numpy(torch.zeros_like(args[k]) if g is None else g)
            for k, g in zip(wrt, grads)
        }
        return float(out.loss.detach().float()), result

    def variants(self) -> Mapping[str, Any]:
        return {}  # e.g. {"compile": MyCompiledBackend()}: each must agree with this one


#: what ``--backend my_backend:backend`` and the entry point load
backend = MyTorchBackend()
