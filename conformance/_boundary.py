"""The NumPy boundary and the calling conventions, written once for every backend.

The suite draws NumPy inputs; this module puts them into a backend's arrays (its ``xp``: the
array API ``asarray`` with the dtype and device under test), calls the backend's entry points
by their documented argument order, runs its autodiff primitive on a :class:`LossFn`, and
reads the results back to NumPy (DLPack, with fallbacks for devices and dtypes NumPy lacks).
A backend author writes none of this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "ENTRY_ARGS",
    "LossFn",
    "backend_grad",
    "backend_hvp",
    "call_entry",
    "has_entry",
    "stats_dict",
    "to_backend",
    "to_numpy",
]

#: Each entry point's positional arguments, in order (the rest are keywords).
ENTRY_ARGS: dict[str, tuple[str, ...]] = {
    "haepo_loss": ("logp", "returns", "mask"),
    "haepo_loss_packed": ("logp", "segment_ids", "returns"),
    "haepo_loss_from_logits": ("logits", "actions", "returns", "mask"),
    "haepo_loss_from_hidden": ("hidden", "weight", "actions", "returns", "mask"),
}


def has_entry(backend: Any, entry: str) -> bool:
    """Whether ``backend`` implements the entry point (optional capabilities are optional)."""
    return callable(getattr(backend, entry, None))


def _is_jax(xp: Any) -> bool:
    return array_api_compat.is_jax_namespace(xp) or getattr(xp, "__name__", "") == "jax.numpy"


def release_compiled(backend: Any) -> None:
    """Drop the backend library's caches of compiled programs.

    JAX keeps every program it compiles, one per shape signature, for the life of the process.
    A property draws a new shape for nearly every example, so a run of a few hundred examples
    keeps thousands of compiled programs, each in its own memory maps. On CPU a 500-example
    run reached Linux's default limit of 65530 maps per process after ~20 minutes: LLVM then
    failed to compile ("Cannot allocate memory") and the process died of a segmentation fault,
    with GiB of RAM still free. The runner calls this every few examples; a library without
    such a cache has nothing to drop.
    """
    if _is_jax(backend.xp):
        import jax

        jax.clear_caches()


def _dtype(backend: Any, name: str) -> Any:
    dt = getattr(backend.xp, name, None)
    if dt is None:
        raise ValueError(f"dtype: the namespace of backend {backend.name!r} has no {name!r}")
    return dt


def _device(backend: Any, device: str | None) -> Any:
    if device is None:
        return None
    if _is_jax(backend.xp):
        import jax

        return jax.devices(device)[0]
    if device == "cpu" and getattr(backend.xp, "__name__", "") in ("numpy", "array_api_strict"):
        return None  # their only device; array-api-strict wants its own Device object
    return device


def to_backend(backend: Any, x: Any, dtype: str | None = None, device: str | None = None) -> Any:
    """A NumPy array (or None) as an array of ``backend.xp``: float arrays take ``dtype`` (a
    name such as ``"float32"``), integer and bool arrays keep their kind."""
    if x is None:
        return None
    a = np.asarray(x)
    kw: dict[str, Any] = {}
    if a.dtype.kind == "u" and a.dtype != np.uint8:
        a = a.astype(np.int64)  # not every library has every unsigned integer type
    if a.dtype.kind == "f":
        name = dtype or str(a.dtype)
        if _is_jax(backend.xp) and name == "float64":
            _enable_x64()
        kw["dtype"] = _dtype(backend, name)
    dev = _device(backend, device)
    if dev is not None:
        kw["device"] = dev
    # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
    return backend.xp.asarray(a if a.flags.c_contiguous else a.copy(order="C"), **kw)


def _enable_x64() -> None:
    # float64 in JAX needs jax_enable_x64 (a process-wide flag): switched on the first time a
    # float64 array is asked for, never off (that would silently turn float64 arrays into
    # float32 ones).
    import jax

    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def to_numpy(x: Any) -> np.ndarray:
    """Any array (or Python scalar) as NumPy: DLPack first, then host copies and float32 for
    dtypes NumPy lacks (bfloat16)."""
    if isinstance(x, np.ndarray | np.generic | float | int | bool):
        return np.asarray(x)
    if hasattr(x, "detach"):
        x = x.detach()  # an autograd-tracked tensor cannot be exported
    try:
        return np.from_dlpack(x)
    except (TypeError, BufferError, RuntimeError, ValueError, AttributeError):
        pass
    try:
        xp = array_api_compat.array_namespace(x)
    except TypeError:
        return np.asarray(x)
    try:
        x = array_api_compat.to_device(x, "cpu")
    except (TypeError, ValueError, RuntimeError, AttributeError):
        pass
    if xp.isdtype(x.dtype, "real floating") and x.dtype not in (xp.float32, xp.float64):
        # float16 is fine in NumPy, bfloat16 is not: both are exact in float32.
        x = xp.astype(x, xp.float32)
    try:
        return np.from_dlpack(x)
    except (TypeError, BufferError, RuntimeError, ValueError, AttributeError):
        return np.asarray(x)


def stats_dict(stats: Any) -> dict[str, Any]:
    """``HAEPOOutput.stats`` as a dict, whether a mapping, a NamedTuple or a dataclass."""
    if isinstance(stats, Mapping):
        return dict(stats)
    if hasattr(stats, "_asdict"):
        return dict(stats._asdict())
    if dataclasses.is_dataclass(stats):
        return {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    raise TypeError(f"stats: expected a mapping, NamedTuple or dataclass, got {type(stats)}")


def call_entry(
    backend: Any, entry: str, args: Mapping[str, Any], options: Mapping[str, Any]
) -> Any:
    """``backend.<entry>(*positional, **keywords, **options)`` on backend arrays."""
    a = {k: v for k, v in args.items() if v is not None}
    pos = [a.pop(name, None) for name in ENTRY_ARGS[entry]]
    while pos and pos[-1] is None and ENTRY_ARGS[entry][len(pos) - 1] == "mask":
        pos.pop()
    return getattr(backend, entry)(*pos, **a, **options)


@dataclasses.dataclass(frozen=True)
class LossFn:
    """The scalar function the suite differentiates: ``fn(args) -> loss`` (a 0-d array),
    ``args`` a dict of backend arrays named as the entry point's arguments.

    It calls ``backend.<entry>`` with ``options``. Both are attributes, so a backend without
    autodiff can recognize the call and use a closed form instead (the core on NumPy does).
    """

    backend: Any
    entry: str
    options: Mapping[str, Any]

    def __call__(self, args: Mapping[str, Any]) -> Any:
        return call_entry(self.backend, self.entry, args, self.options).loss

    def __repr__(self) -> str:
        return f"LossFn({self.backend.name!r}, {self.entry!r}, options={dict(self.options)!r})"


def _check_grads(
    backend: Any, what: str, grads: Any, args: Mapping[str, Any], wrt: Sequence[str]
) -> dict[str, np.ndarray]:
    from ._reference import ConformanceError

    if not isinstance(grads, Mapping):
        raise ConformanceError(f"{what}: expected a dict of gradients, got {type(grads).__name__}")
    out = {}
    for k in wrt:
        if k not in grads:
            raise ConformanceError(f"{what}: asked for gradients {tuple(wrt)}, missing {k!r}")
        g = to_numpy(grads[k]).astype(np.float64)
        shape = tuple(args[k].shape)
        if g.shape != shape:
            raise ConformanceError(f"{what}: gradient {k!r} has shape {g.shape}, expected {shape}")
        out[k] = g
    return out


def backend_grad(
    backend: Any,
    entry: str,
    inputs: Mapping[str, Any],
    options: Mapping[str, Any],
    wrt: Sequence[str],
    dtype: str,
    device: str | None = None,
) -> tuple[float, dict[str, np.ndarray]]:
    """``backend.grad`` of ``entry`` at the NumPy ``inputs``: (loss, float64 NumPy grads)."""
    args = {k: to_backend(backend, v, dtype, device) for k, v in inputs.items() if v is not None}
    value, grads = backend.grad(LossFn(backend, entry, dict(options)), args, tuple(wrt))
    return float(to_numpy(value).astype(np.float64)), _check_grads(
        backend, "grad", grads, args, wrt
    )


def backend_hvp(
    backend: Any,
    entry: str,
    inputs: Mapping[str, Any],
    options: Mapping[str, Any],
    wrt: Sequence[str],
    vectors: Mapping[str, Any],
    dtype: str,
    device: str | None = None,
) -> dict[str, np.ndarray]:
    """``backend.hvp`` of ``entry``: the Hessian-vector product, as float64 NumPy."""
    args = {k: to_backend(backend, v, dtype, device) for k, v in inputs.items() if v is not None}
    vec = {k: to_backend(backend, v, dtype, device) for k, v in vectors.items()}
    h = backend.hvp(LossFn(backend, entry, dict(options)), args, tuple(wrt), vec)
    return _check_grads(backend, "hvp", h, args, wrt)
