"""The :class:`haepo_core.Backend` object for JAX (entry point ``jax``).

A backend object is the loss functions plus the autodiff primitive (``grad``:
``jax.value_and_grad``; ``hvp``: reverse over reverse, since a ``custom_vjp`` has no forward
mode); the conformance suite does the NumPy boundary and the packed/padded plumbing. Variants
run the loss itself in the other execution modes a JAX user meets: ``jit`` (the loss under
``jax.jit``, traced group ids), ``jit_num_groups`` (jitted, dense ids and a static
``num_groups``), ``chunked`` (tiny token chunks in the from-logits/from-hidden paths, so chunk
boundaries and the overlapping last chunk are exercised) and ``sharded`` (jitted ``shard_map``
over one device with ``axis_name``, so every collective runs). The loss functions are reached
through the package at call time, so the modules behind them can move freely.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: What ``grad`` and ``hvp`` differentiate: a loss from a dict of arguments.
LossCall = Callable[[dict[str, Any]], Any]

__all__ = ["JaxBackend", "backend"]

_MODES = ("eager", "jit", "jit_num_groups", "chunked", "sharded")
_LEAN = ("haepo_loss_from_logits", "haepo_loss_from_hidden")
_ENTRIES = ("haepo_loss", "haepo_loss_packed", *_LEAN)
#: Arguments that are not split across the rows of the batch under ``shard_map``.
_REPLICATED = ("weight", "bias", "ref_weight", "ref_bias")


class JaxBackend:
    """HAEPO on JAX arrays. ``mode`` picks the execution mode (see the module docstring)."""

    name = "jax"
    xp = jnp
    dtypes: tuple[str, ...] = ("float32", "float64")
    chunked = True
    #: Entry points whose second derivatives are exact (reverse over reverse).
    second_order: tuple[str, ...] = _ENTRIES

    def __init__(self, mode: str = "eager"):
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        self.mode = mode
        if mode != "eager":
            self.name = f"jax[{mode}]"
            # The same custom_vjp rules run in every mode: checked once, on the eager backend.
            self.second_order = ()
        self._jitted: dict[Any, Callable[..., Any]] = {}

    def __repr__(self) -> str:
        return f"JaxBackend(mode={self.mode!r})"

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted({d.platform for d in jax.devices()}))

    # -- the loss functions ---------------------------------------------------------------
    def haepo_loss(self, logp: Any, returns: Any, mask: Any = None, **kw: Any) -> Any:
        return self._run("haepo_loss", (logp, returns, mask), kw)

    def haepo_loss_packed(self, logp: Any, segment_ids: Any, returns: Any, **kw: Any) -> Any:
        return self._run("haepo_loss_packed", (logp, segment_ids, returns), kw)

    def haepo_loss_from_logits(
        self, logits: Any, actions: Any, returns: Any, mask: Any = None, **kw: Any
    ) -> Any:
        return self._run("haepo_loss_from_logits", (logits, actions, returns, mask), kw)

    def haepo_loss_from_hidden(
        self, hidden: Any, weight: Any, actions: Any, returns: Any, mask: Any = None, **kw: Any
    ) -> Any:
        return self._run("haepo_loss_from_hidden", (hidden, weight, actions, returns, mask), kw)

    def _run(self, entry: str, pos: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        import haepo_backends.jax as pkg

        fn = getattr(pkg, entry)
        kw = dict(kw)
        if self.mode == "chunked" and entry in _LEAN:
            kw.setdefault("chunk_size", 3)
        if self.mode in ("jit_num_groups", "sharded") and kw.get("group_ids") is not None:
            # Dense ids and a static group count, as a sharded training loop would pass them.
            _, dense = np.unique(np.asarray(kw["group_ids"]), return_inverse=True)
            kw["group_ids"] = jnp.asarray(dense.reshape(-1).astype(np.int32))
            kw["num_groups"] = int(dense.max()) + 1 if dense.size else 1
        if self.mode in ("eager", "chunked"):
            return fn(*pos, **kw)
        arrays = {k: v for k, v in kw.items() if isinstance(v, jax.Array | np.ndarray)}
        static = tuple(sorted((k, v) for k, v in kw.items() if k not in arrays))
        key = (entry, static, self.mode)
        if key not in self._jitted:
            self._jitted[key] = self._compile(fn, dict(static))
        return self._jitted[key](pos, arrays)

    def _compile(self, fn: Callable[..., Any], static: dict[str, Any]) -> Callable[..., Any]:
        if self.mode != "sharded":
            return jax.jit(lambda pos, arrays: fn(*pos, **arrays, **static))
        from jax.sharding import Mesh
        from jax.sharding import PartitionSpec as P

        mesh = Mesh(np.array(jax.devices()[:1]), ("batch",))

        def sharded(pos: tuple[Any, ...], arrays: dict[str, Any]) -> Any:
            # Rows split over a one-device axis: the loss goes through psum/pmax. Scalars
            # come out replicated, per-trajectory outputs split like the rows.
            shapes = jax.eval_shape(partial(fn, **static), *pos, **arrays)
            out_specs = jax.tree.map(lambda s: P() if s.ndim == 0 else P("batch"), shapes)
            in_specs = (
                jax.tree.map(lambda _: P("batch"), pos),
                {k: _specs_like(v, _spec(k)) for k, v in arrays.items()},
            )
            inner = jax.shard_map(
                lambda p, a: fn(*p, **a, **static, axis_name="batch"),
                mesh=mesh,
                in_specs=in_specs,
                out_specs=out_specs,
            )
            return inner(pos, arrays)

        return jax.jit(sharded)

    # -- the autodiff primitive -----------------------------------------------------------
    def grad(
        self, fn: LossCall, args: Mapping[str, Any], wrt: Sequence[str]
    ) -> tuple[Any, dict[str, Any]]:
        diff, rest = _split(args, wrt)
        return jax.value_and_grad(lambda d: fn({**rest, **d}))(diff)

    def hvp(
        self, fn: LossCall, args: Mapping[str, Any], wrt: Sequence[str], vectors: Mapping[str, Any]
    ) -> dict[str, Any]:
        diff, rest = _split(args, wrt)
        g = jax.grad(lambda d: fn({**rest, **d}))

        def directional(d: dict[str, Any]) -> Any:
            gd = g(d)
            return sum(jnp.vdot(gd[k], vectors[k]) for k in wrt)

        return jax.grad(directional)(diff)

    def variants(self) -> Mapping[str, JaxBackend]:
        if self.mode != "eager":
            return {}
        return {m: JaxBackend(m) for m in _MODES if m != "eager"}


def _specs_like(tree: Any, spec: Any) -> Any:
    return jax.tree.map(lambda _: spec, tree)


def _spec(name: str) -> Any:
    from jax.sharding import PartitionSpec as P

    return P() if name in _REPLICATED else P("batch")


def _split(args: Mapping[str, Any], wrt: Sequence[str]) -> tuple[dict, dict]:
    diff = {k: args[k] for k in wrt}
    return diff, {k: v for k, v in args.items() if k not in diff}


#: The backend registered under the ``haepo.backends`` entry point ``jax``.
backend = JaxBackend()
