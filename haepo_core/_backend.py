"""The ``Backend`` protocol: what an implementation of HAEPO exposes to the conformance suite.

A backend is any object with the attributes of :class:`Backend`: a name, its array namespace,
the dtypes it supports and its loss function(s). The conformance suite does everything else
once for every backend: it turns its NumPy examples into the backend's arrays (the namespace's
``asarray`` with the dtype and device under test), calls the loss functions, reads the results
back through DLPack, and builds packed inputs from padded ones. For gradients a backend supplies
at most one tiny autodiff primitive, ``grad``.

Backends are registered under the entry-point group ``haepo.backends`` (the object, or a
zero-argument factory returning it) and found by :func:`list_backends` / :func:`load_backend`.
Listing reads package metadata only: no framework is imported until a backend is loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

from ._grad import haepo_grad
from ._loss import HAEPOOutput, haepo_loss, haepo_loss_packed

__all__ = [
    "ENTRY_POINT_GROUP",
    "ArrayAPIBackend",
    "Backend",
    "list_backends",
    "load_backend",
]

ENTRY_POINT_GROUP = "haepo.backends"


@runtime_checkable
class Backend(Protocol):
    """What a HAEPO backend provides.

    Required:
      name: short unique name (``"numpy"``, ``"torch"``, ``"my_lib"``...).
      xp: the array namespace of its arrays (anything with the array API ``asarray(x, dtype=,
        device=)``, dtype attributes such as ``xp.float32``, and arrays that support DLPack).
      dtypes: float dtype names it supports, e.g. ``("float32", "float64")``.
      haepo_loss(logp, returns, mask=None, **kw) -> HAEPOOutput: as ``haepo_core.haepo_loss``.

    Optional (each one the suite finds is checked; a missing one skips its properties):
      devices: device names it supports (default ``("cpu",)``).
      haepo_loss_packed(logp, segment_ids, returns, **kw) -> HAEPOOutput.
      haepo_loss_from_logits(logits, actions, returns, mask=None, *, ref_logits=None,
        ref_logp=None, **kw) -> HAEPOOutput: as ``haepo_core.haepo_loss_from_logits``.
      haepo_loss_from_hidden(hidden, weight, actions, returns, mask=None, *, bias=None,
        ref_hidden=None, ref_weight=None, ref_bias=None, ref_logp=None, **kw) -> HAEPOOutput:
        the from-logits loss on ``logits = hidden @ weight.T + bias``.
      chunked: True when the two functions above accept ``chunk_size=`` (tokens per block).
      grad(fn, args, wrt) -> (value, grads): the autodiff primitive. ``fn(args)`` returns a
        0-d array, ``args`` is a dict of the backend's arrays, ``wrt`` names the float entries
        to differentiate; it returns ``fn(args)`` and a dict of gradients (arrays shaped like
        the inputs). With torch: ``torch.autograd.grad``; with JAX: ``jax.value_and_grad``.
        ``fn`` also has the attributes ``entry`` (the method it calls) and ``options`` (the
        keywords), so a library without autodiff can use a closed form (the core on NumPy
        does). Without ``grad`` the gradient properties are skipped.
      hvp(fn, args, wrt, vectors) -> dict: the Hessian-vector product (``vectors`` shaped like
        the ``wrt`` inputs), and second_order: the entry points whose second derivatives are
        exact. Custom backwards that refuse a second derivative simply do not declare it.
      variants() -> Mapping[str, Backend]: other execution modes of the same backend that must
        agree with it (``"jit"``, ``"compile"``, ``"chunked"``...).
      version: a version string the conformance report shows (default: the library's).
    """

    name: str
    xp: Any
    dtypes: tuple[str, ...]

    def haepo_loss(
        self, logp: Any, returns: Any, mask: Any = None, **kwargs: Any
    ) -> HAEPOOutput: ...


class ArrayAPIBackend:
    """The core (``haepo_core``) run on an array library without autodiff (NumPy,
    array-api-strict). Its ``grad`` is the closed form of :func:`haepo_grad`, for the suite's
    calls of ``haepo_loss`` and ``haepo_loss_packed`` (it reads their ``entry`` and
    ``options``).
    """

    devices: tuple[str, ...] = ("cpu",)

    def __init__(self, name: str, module: str, dtypes: tuple[str, ...] = ("float32", "float64")):
        self.name = name
        self.dtypes = dtypes
        self.xp = importlib.import_module(module)

    def __repr__(self) -> str:
        return f"ArrayAPIBackend({self.name!r})"

    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kwargs: Any) -> HAEPOOutput:
        return haepo_loss(logp, returns, mask, **kwargs)

    def haepo_loss_packed(
        self, logp: Any, segment_ids: Any, returns: Any, **kwargs: Any
    ) -> HAEPOOutput:
        return haepo_loss_packed(logp, segment_ids, returns, **kwargs)

    def grad(
        self, fn: Callable[[Mapping[str, Any]], Any], args: Mapping[str, Any], wrt: Sequence[str]
    ) -> tuple[Any, dict[str, Any]]:
        entry, options = getattr(fn, "entry", None), getattr(fn, "options", None)
        if entry not in ("haepo_loss", "haepo_loss_packed") or options is None:
            raise TypeError(
                f"fn: expected a haepo_loss or haepo_loss_packed call with 'entry' and "
                f"'options' attributes (the core on {self.name} has no autodiff), got {fn!r}"
            )
        bad = [w for w in wrt if w not in ("logp", "entropy")]
        if bad:
            raise ValueError(f"wrt: expected a subset of ('logp', 'entropy'), got {tuple(wrt)}")
        if "entropy" in wrt and args.get("entropy") is None:
            raise ValueError("wrt: 'entropy' needs an entropy input")
        a = dict(args)
        packed = entry == "haepo_loss_packed"
        if packed:
            a, order, mask = _packed_to_padded(self.xp, a)
        out, grads = haepo_grad(
            a.pop("logp"), a.pop("returns"), a.pop("mask", None), **a, **options
        )
        result = {k: grads[k] for k in wrt}
        if packed:  # back from [M, T] to the caller's packed order
            import numpy as np

            for k, v in result.items():
                flat = np.empty(len(order), dtype=_np(v).dtype)
                flat[order] = _np(v)[mask]
                result[k] = self.xp.asarray(flat)
        return out.loss, result

    def variants(self) -> Mapping[str, Any]:
        return {}


def _np(x: Any) -> Any:
    import numpy as np

    return np.asarray(x) if isinstance(x, np.ndarray) else np.from_dlpack(x)


def _packed_to_padded(xp: Any, args: dict[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    """Packed arrays (``segment_ids`` [N]) as padded ``[M, T]`` ones, the packing order and
    the validity mask (NumPy, for the way back)."""
    import numpy as np

    seg = _np(args.pop("segment_ids"))
    m = int(args["returns"].shape[0])
    order = np.argsort(seg, kind="stable")
    counts = np.bincount(seg, minlength=m)
    t = int(counts.max()) if counts.size else 0
    mask = np.arange(t)[None, :] < counts[:, None]
    out = dict(args)
    for key in ("logp", "entropy", "ref_logp"):
        v = args.get(key)
        if v is not None:
            v = _np(v)
            pad = np.zeros((m, t), dtype=v.dtype)
            pad[mask] = v[order]
            out[key] = xp.asarray(pad)
    out["mask"] = xp.asarray(mask)
    return out, order, mask


def list_backends() -> list[str]:
    """Names registered under the ``haepo.backends`` entry-point group (nothing is imported)."""
    return sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})


def load_backend(spec: str) -> Backend:
    """Load a backend by registered name, or by ``"package.module:object"``.

    The object may be a backend or a zero-argument factory returning one. Raises
    ``ValueError`` for an unknown name and ``ImportError`` when the backend's framework is not
    installed.
    """
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"spec: expected a backend name or 'module:object' string, got {spec!r}")
    if ":" in spec:
        module, _, attr = spec.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    else:
        eps = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if not eps:
            raise ValueError(
                f"spec: expected a registered backend ({', '.join(list_backends()) or 'none'}) "
                f"or 'module:object', got {spec!r}"
            )
        obj = eps[0].load()
    if not isinstance(obj, Backend) and callable(obj):
        obj = obj()
    if not isinstance(obj, Backend):
        raise TypeError(
            f"spec: {spec!r} does not give a haepo_core.Backend (got {type(obj).__name__})"
        )
    return obj


def numpy_backend() -> ArrayAPIBackend:
    """The core on NumPy (entry point ``numpy``)."""
    return ArrayAPIBackend("numpy", "numpy", ("float32", "float64"))


def array_api_strict_backend() -> ArrayAPIBackend:
    """The core on array-api-strict (entry point ``array_api_strict``)."""
    return ArrayAPIBackend("array_api_strict", "array_api_strict", ("float32", "float64"))
