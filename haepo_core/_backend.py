"""The ``Backend`` protocol: what an implementation of HAEPO exposes to the conformance suite.

A backend is any object with the attributes and methods of :class:`Backend`. Backends are
registered under the entry-point group ``haepo.backends`` (the object, or a zero-argument
factory returning it) and found by :func:`list_backends` / :func:`load_backend`. Listing reads
package metadata only: no framework is imported until a backend is loaded.

The suite speaks NumPy at the boundary: it hands a backend NumPy arrays, the backend converts
them (``asarray``), runs, and gives NumPy back (``to_numpy``), so one set of Hypothesis
strategies drives every library.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
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

#: Float inputs a backend converts to the requested dtype; everything else keeps its kind.
FLOAT_INPUTS = ("logp", "returns", "entropy", "ref_logp", "logits", "ref_logits")


@runtime_checkable
class Backend(Protocol):
    """What a HAEPO backend provides.

    Attributes:
      name: short unique name (``"numpy"``, ``"torch"``, ``"my_lib"``...).
      xp: its array namespace (``array_api_compat.array_namespace`` of its arrays).
      dtypes: float dtype names it supports, e.g. ``("float32", "float64")``.
      devices: device names it supports, e.g. ``("cpu",)`` or ``("cpu", "cuda")``.
      supports_packed: whether :meth:`haepo_loss_packed` is implemented.
      differentiable: inputs :meth:`value_and_grad` can differentiate, at least ``("logp",)``.
      version (optional, not part of the runtime check): a version string the conformance
        report shows; without it the report shows the version of the library behind ``xp``.

    Methods:
      asarray(x, dtype=None, device=None): NumPy -> backend array. Float arrays take ``dtype``
        (a name such as ``"float32"``); integer and bool arrays keep their kind.
      to_numpy(x): backend array -> NumPy.
      haepo_loss(logp, returns, mask=None, **kw) -> HAEPOOutput: as ``haepo_core.haepo_loss``.
      haepo_loss_packed(logp, segment_ids, returns, **kw) -> HAEPOOutput.
      value_and_grad(inputs, *, wrt=("logp",), packed=False, dtype="float64", device=None,
        **kw) -> (loss: float, grads: dict[str, np.ndarray]): the loss and its gradient with
        respect to the named inputs, ``inputs`` being a dict of NumPy arrays named as the loss
        arguments (``logp``, ``returns``, ``mask``, ``group_ids``, ``entropy``, ``ref_logp``,
        or ``segment_ids`` when ``packed``). This is the autodiff glue under test.
      variants() -> Mapping[str, Backend]: other execution modes of the same backend that must
        agree with it (``"jit"``, ``"compile"``, ``"chunked"``...); may be empty.
    """

    name: str
    xp: Any
    dtypes: tuple[str, ...]
    devices: tuple[str, ...]
    supports_packed: bool
    differentiable: tuple[str, ...]

    def asarray(self, x: Any, *, dtype: str | None = None, device: str | None = None) -> Any: ...

    def to_numpy(self, x: Any) -> Any: ...

    def haepo_loss(
        self, logp: Any, returns: Any, mask: Any = None, **kwargs: Any
    ) -> HAEPOOutput: ...

    def haepo_loss_packed(
        self, logp: Any, segment_ids: Any, returns: Any, **kwargs: Any
    ) -> HAEPOOutput: ...

    def value_and_grad(
        self,
        inputs: Mapping[str, Any],
        *,
        wrt: Sequence[str] = ("logp",),
        packed: bool = False,
        dtype: str = "float64",
        device: str | None = None,
        **kwargs: Any,
    ) -> tuple[float, dict[str, Any]]: ...

    def variants(self) -> Mapping[str, Backend]: ...


class ArrayAPIBackend:
    """The core (``haepo_core``) run on an array library without autodiff (NumPy,
    array-api-strict). Its ``value_and_grad`` uses the closed form of :func:`haepo_grad`.
    """

    supports_packed = True
    differentiable = ("logp", "entropy")
    devices: tuple[str, ...] = ("cpu",)

    def __init__(self, name: str, module: str, dtypes: tuple[str, ...] = ("float32", "float64")):
        self.name = name
        self._module = module
        self.dtypes = dtypes
        self.xp = importlib.import_module(module)

    def __repr__(self) -> str:
        return f"ArrayAPIBackend({self.name!r})"

    def asarray(self, x: Any, *, dtype: str | None = None, device: str | None = None) -> Any:
        import numpy as np

        x = np.asarray(x)
        if dtype is not None and x.dtype.kind == "f":
            x = x.astype(dtype)
        if self._module == "numpy":
            return x
        return self.xp.asarray(x)

    def to_numpy(self, x: Any) -> Any:
        import numpy as np

        if self._module == "numpy":
            return np.asarray(x)
        try:
            return np.from_dlpack(x)
        except (TypeError, BufferError, AttributeError):  # pragma: no cover - old versions
            return np.asarray(x)

    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kwargs: Any) -> HAEPOOutput:
        return haepo_loss(logp, returns, mask, **kwargs)

    def haepo_loss_packed(
        self, logp: Any, segment_ids: Any, returns: Any, **kwargs: Any
    ) -> HAEPOOutput:
        return haepo_loss_packed(logp, segment_ids, returns, **kwargs)

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
        import numpy as np

        bad = [w for w in wrt if w not in self.differentiable]
        if bad:
            raise ValueError(f"wrt: expected a subset of {self.differentiable}, got {tuple(wrt)}")
        args = {k: (None if v is None else np.asarray(v)) for k, v in inputs.items()}
        order = None
        if packed:
            args = _packed_to_padded(args)
            order = args.pop("_order")  # NumPy indices: stays on the host
        conv = {
            k: (None if v is None else self.asarray(v, dtype=dtype if k in FLOAT_INPUTS else None))
            for k, v in args.items()
        }
        logp, returns, mask = conv.pop("logp"), conv.pop("returns"), conv.pop("mask", None)
        out, grads = haepo_grad(logp, returns, mask, **conv, **kwargs)
        result = {k: self.to_numpy(grads[k]) for k in wrt if k in grads}
        if "entropy" in wrt and "entropy" not in grads:
            raise ValueError("wrt: 'entropy' needs an entropy input")
        if packed:  # back from [M, T] to the caller's packed order
            unpacked = {}
            for k, v in result.items():
                flat = np.empty(len(order), dtype=v.dtype)
                flat[order] = v[args["mask"]]
                unpacked[k] = flat
            result = unpacked
        return float(self.to_numpy(out.loss)), result

    def variants(self) -> Mapping[str, Backend]:
        return {}


def _packed_to_padded(args: dict[str, Any]) -> dict[str, Any]:
    """Rearrange packed NumPy inputs (``segment_ids`` [N]) into padded ``[M, T]`` ones."""
    import numpy as np

    seg = np.asarray(args.pop("segment_ids"))
    m = int(np.asarray(args["returns"]).shape[0])
    order = np.argsort(seg, kind="stable")
    counts = np.bincount(seg, minlength=m)
    t = int(counts.max()) if counts.size else 0
    mask = np.arange(t)[None, :] < counts[:, None]
    out = dict(args)
    for key in ("logp", "entropy", "ref_logp"):
        v = args.get(key)
        if v is not None:
            pad = np.zeros((m, t), dtype=np.asarray(v).dtype)
            pad[mask] = np.asarray(v)[order]
            out[key] = pad
    out["mask"] = mask
    out["_order"] = order
    return out


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
