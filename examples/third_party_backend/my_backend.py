"""A complete, minimal third-party HAEPO backend: PyTorch with autograd.

This file is the worked example of docs/conformance.md. A backend is:

- four attributes: ``name``, ``xp`` (the array namespace of its arrays), ``dtypes`` and,
  optionally, ``devices``;
- the loss functions under test: ``haepo_loss`` and, optionally, ``haepo_loss_packed``,
  ``haepo_loss_from_logits``, ``haepo_loss_from_hidden`` (here the reference core run on
  torch tensors; put *your own* implementation there: that is what the suite checks);
- optionally ``grad(fn, args, wrt)``, a tiny autodiff primitive (here ``torch.autograd``),
  and ``hvp`` with ``second_order`` for second derivatives.

The suite does the rest: NumPy in and out (through ``xp.asarray`` and DLPack), the dtype and
device under test, the packed layout. Run it from this folder (so ``my_backend`` imports)::

    python -m haepo_conformance --backend my_backend:backend

or register it in your package's pyproject.toml and use its name::

    [project.entry-points."haepo.backends"]
    my_torch = "my_backend:backend"
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import array_api_compat.torch as xp_torch
import torch

import haepo_core


class MyTorchBackend:
    name = "my_torch"
    xp = xp_torch  # the array namespace of the arrays this backend takes and returns
    dtypes = ("float32", "float64", "bfloat16")  # bfloat16 is computed in float32 by the core
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    second_order = ("haepo_loss", "haepo_loss_packed", "haepo_loss_from_logits")

    # -- the losses under test ------------------------------------------------------------
    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kw: Any):
        return haepo_core.haepo_loss(logp, returns, mask, **kw)

    def haepo_loss_packed(self, logp: Any, segment_ids: Any, returns: Any, **kw: Any):
        return haepo_core.haepo_loss_packed(logp, segment_ids, returns, **kw)

    def haepo_loss_from_logits(
        self, logits: Any, actions: Any, returns: Any, mask: Any = None, **kw: Any
    ):
        return haepo_core.haepo_loss_from_logits(logits, actions, returns, mask, **kw)

    # -- the autodiff primitive -----------------------------------------------------------
    def grad(
        self, fn: Callable[[dict], Any], args: Mapping[str, Any], wrt: Sequence[str]
    ) -> tuple[Any, dict[str, Any]]:
        args = {**args, **{k: args[k].detach().requires_grad_(True) for k in wrt}}
        loss = fn(args)
        grads = torch.autograd.grad(loss, [args[k] for k in wrt], allow_unused=True)
        return loss.detach(), {
            k: torch.zeros_like(args[k]) if g is None else g for k, g in zip(wrt, grads)
        }

    def hvp(
        self,
        fn: Callable[[dict], Any],
        args: Mapping[str, Any],
        wrt: Sequence[str],
        vectors: Mapping[str, Any],
    ) -> dict[str, Any]:
        args = {**args, **{k: args[k].detach().requires_grad_(True) for k in wrt}}
        leaves = [args[k] for k in wrt]
        grads = torch.autograd.grad(fn(args), leaves, create_graph=True, allow_unused=True)
        # An unused input (entropy with entropy_coef=0) has no gradient: its row is zero.
        dot = sum((g * vectors[k]).sum() for k, g in zip(wrt, grads) if g is not None)
        hv = torch.autograd.grad(dot, leaves, allow_unused=True)
        return {k: torch.zeros_like(x) if h is None else h for k, x, h in zip(wrt, leaves, hv)}

    def variants(self) -> Mapping[str, Any]:
        return {}  # e.g. {"compile": MyCompiledBackend()}: each must agree with this one


#: what ``--backend my_backend:backend`` and the entry point load
backend = MyTorchBackend()
