"""The :class:`haepo_core.Backend` object for JAX (entry point ``jax``).

The conformance suite hands NumPy arrays in and wants NumPy back; :meth:`JaxBackend.
value_and_grad` differentiates with ``jax.value_and_grad``. Variants run the same maths in the
other execution modes a JAX user meets: ``jit`` (traced group ids, ``M`` segments),
``jit_num_groups`` (static ``num_groups``), ``chunked`` (tiny token chunks for logits inputs,
so chunk boundaries and the overlapping last chunk are exercised) and ``sharded``
(``shard_map`` over the local devices with ``axis_name``, collectives on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from haepo_core import HAEPOOutput

from ._fused import haepo_loss_from_logits
from ._loss import haepo_loss, haepo_loss_packed

__all__ = ["JaxBackend", "backend"]

_FLOAT_INPUTS = ("logp", "returns", "entropy", "ref_logp", "logits", "ref_logits")
_MODES = ("eager", "jit", "jit_num_groups", "chunked", "sharded")


def _enable_x64_for(dtype: str | None) -> None:
    # float64 needs jax_enable_x64 (a process-wide flag): it is switched on the first time a
    # float64 array is asked for, and never switched off (doing so would silently turn the
    # caller's float64 arrays into float32 ones).
    if dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


class JaxBackend:
    """HAEPO on JAX arrays. ``mode`` picks the execution mode (see the module docstring)."""

    name = "jax"
    xp = jnp
    dtypes: tuple[str, ...] = ("float32", "float64")
    supports_packed = True
    differentiable: tuple[str, ...] = ("logp", "entropy")

    def __init__(self, mode: str = "eager"):
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        self.mode = mode
        if mode != "eager":
            self.name = f"jax[{mode}]"

    def __repr__(self) -> str:
        return f"JaxBackend(mode={self.mode!r})"

    @property
    def devices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(sorted({d.platform for d in jax.devices()}))

    def asarray(self, x: Any, *, dtype: str | None = None, device: str | None = None) -> Any:
        x = np.asarray(x)
        if dtype is not None and x.dtype.kind == "f":
            _enable_x64_for(dtype)
            x = x.astype(dtype)
        elif x.dtype == np.float64:
            _enable_x64_for("float64")
        dev = None if device is None else jax.devices(device)[0]
        return jax.device_put(jnp.asarray(x), dev)

    def to_numpy(self, x: Any) -> Any:
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
        """The loss and its gradient w.r.t. ``wrt`` (``jax.value_and_grad``), in NumPy."""
        allowed = self.differentiable + (("logits",) if "logits" in inputs else ())
        bad = [w for w in wrt if w not in allowed]
        if bad:
            raise ValueError(f"wrt: expected a subset of {allowed}, got {tuple(wrt)}")
        if "entropy" in wrt and inputs.get("entropy") is None:
            raise ValueError("wrt: 'entropy' needs an entropy input")
        args = {
            k: self.asarray(v, dtype=dtype if k in _FLOAT_INPUTS else None, device=device)
            for k, v in inputs.items()
            if v is not None
        }
        kwargs = dict(kwargs)
        if self.mode in ("jit_num_groups", "sharded") and "group_ids" in args:
            # Dense ids and a static group count, as a sharded training loop would pass them.
            _, dense = np.unique(np.asarray(inputs["group_ids"]), return_inverse=True)
            args["group_ids"] = jnp.asarray(dense.reshape(-1).astype(np.int32))
            kwargs["num_groups"] = int(dense.max()) + 1 if dense.size else 1
        if self.mode == "chunked" and "logits" in args:
            kwargs.setdefault("chunk_size", 3)
        diff = {k: args.pop(k) for k in wrt}

        def loss_fn(d: dict[str, Any], rest: dict[str, Any]) -> Any:
            return _call(packed, {**rest, **d}, kwargs, axis_name=None).loss

        if self.mode == "sharded":
            loss_fn = _sharded(packed, kwargs, sorted(diff), sorted(args))
        vg = jax.value_and_grad(loss_fn)
        if self.mode != "eager":
            vg = jax.jit(vg)
        loss, grads = vg(diff, args)
        return float(loss), {k: np.asarray(grads[k]) for k in wrt}

    def variants(self) -> Mapping[str, JaxBackend]:
        if self.mode != "eager":
            return {}
        return {m: JaxBackend(m) for m in _MODES if m != "eager"}


def _call(packed: bool, a: dict[str, Any], kwargs: dict[str, Any], axis_name: Any) -> HAEPOOutput:
    a = dict(a)
    extra = {} if axis_name is None else {"axis_name": axis_name}
    if packed:
        return haepo_loss_packed(a.pop("logp"), a.pop("segment_ids"), a.pop("returns"),
                                 **a, **kwargs, **extra)
    if "logits" in a:
        return haepo_loss_from_logits(a.pop("logits"), a.pop("actions"), a.pop("returns"),
                                      a.pop("mask", None), **a, **kwargs, **extra)
    return haepo_loss(a.pop("logp"), a.pop("returns"), a.pop("mask", None), **a, **kwargs,
                      **extra)


def _sharded(packed: bool, kwargs: dict[str, Any], diff_keys: list[str], rest_keys: list[str]):
    """The loss under ``shard_map`` over one device with ``axis_name`` (collectives active)."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:1]), ("batch",))

    def fn(d: dict[str, Any], rest: dict[str, Any]) -> Any:
        # Rows sharded over a one-device axis: the loss goes through psum/pmax.
        inner = partial(_local, packed=packed, kwargs=kwargs)
        sm = jax.shard_map(
            inner,
            mesh=mesh,
            in_specs=({k: P("batch") for k in diff_keys}, {k: P("batch") for k in rest_keys}),
            out_specs=P(),
        )
        return sm(d, rest)

    return fn


def _local(d, rest, *, packed, kwargs):
    return _call(packed, {**rest, **d}, kwargs, axis_name="batch").loss


#: The backend registered under the ``haepo.backends`` entry point ``jax``.
backend = JaxBackend()
