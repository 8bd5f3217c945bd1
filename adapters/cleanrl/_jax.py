"""The JAX side: the frozen previous parameters, and a pure loss for ``jax.value_and_grad``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._distributions import StepTerms, categorical_terms, gaussian_terms
from ._episodes import Trajectories
from ._loss import haepo_padded_loss, haepo_trajectory_loss
from ._refresh import RefreshSchedule

__all__ = ["ReferenceParams", "make_haepo_loss_fn", "to_jax"]

PyTree = Any


class ReferenceParams(RefreshSchedule):
    """Frozen reference parameters (the previous policy), refreshed on a schedule.

    JAX arrays are immutable, so keeping the previous pytree *is* keeping a frozen copy; the
    copy is still made explicit (``jnp.array(x, copy=True)``) so buffer donation in a jitted
    update cannot invalidate it. Call :meth:`step` with the new params after each update: every
    ``refresh_every`` updates (default 1) the reference becomes those params.

    Example:
      >>> import jax.numpy as jnp
      >>> from haepo_adapters.cleanrl import ReferenceParams
      >>> ref = ReferenceParams({"w": jnp.zeros(2)})
      >>> ref.step({"w": jnp.ones(2)})
      True
      >>> ref.params["w"].tolist()
      [1.0, 1.0]
    """

    def __init__(self, params: PyTree, refresh_every: int = 1) -> None:
        super().__init__(refresh_every)
        self.params = _copy(params)

    def step(self, params: PyTree) -> bool:
        """Count one update; take ``params`` as the reference when the schedule says so."""
        if self._due():
            self.params = _copy(params)
            return True
        return False


def _copy(params: PyTree) -> PyTree:
    return jax.tree.map(lambda x: jnp.array(x, copy=True), params)


def to_jax(traj: Trajectories) -> Trajectories:
    """Move every array of a (NumPy) :class:`Trajectories` to JAX."""
    if not isinstance(traj, Trajectories):
        raise TypeError(f"traj: expected Trajectories, got {type(traj).__name__}")
    return jax.tree.map(jnp.asarray, traj)


def make_haepo_loss_fn(
    policy_fn: Callable[..., Any],
    *,
    kind: str = "categorical",
    obs_key: str = "obs",
    actions_key: str = "actions",
    layout: str = "packed",
    **loss_kw: Any,
) -> Callable[[PyTree, PyTree | None, Any], tuple[jax.Array, dict[str, jax.Array]]]:
    """A pure ``loss_fn(params, ref_params, batch) -> (loss, stats)`` for ``jax.value_and_grad``.

    ``layout="packed"`` (default): ``batch`` is a :class:`Trajectories` (see :func:`to_jax`);
    its shapes change with every rollout, so do not jit the whole loss (jit the policy).
    ``layout="padded"``: ``batch`` is a dict of fixed-shape arrays ``obs [M, T, ...]``,
    ``actions [M, T, ...]``, ``mask [M, T]`` and ``returns [M]`` (e.g. ``M`` episodes per
    update, ``T`` the env's episode limit), and optionally ``group_ids [M]`` (integer labels,
    traced: new labels do not recompile), evaluated by :func:`haepo_padded_loss`: jit it, it
    compiles once.

    ``policy_fn(params, obs)`` returns logits ``[N, A]`` (``kind="categorical"``) or
    ``(mean [N, D], log_std [N, D] or [D])`` (``kind="gaussian"``). The reference outputs come
    from the same function at ``ref_params`` under ``jax.lax.stop_gradient``; ``ref_params``
    may be ``None`` when ``kl_coef`` is 0. ``loss_kw`` go to :func:`haepo_trajectory_loss`;
    keywords given to ``loss_fn`` itself override them for that call (e.g. an adapted
    ``entropy_coef`` passed as a traced scalar to a jitted update, so changing it does not
    recompile). Use ``jax.value_and_grad(loss_fn, has_aux=True)``.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from haepo_adapters.cleanrl import make_haepo_loss_fn, rollout_to_trajectories, to_jax
      >>> tr = to_jax(rollout_to_trajectories(
      ...     np.array([[1.0, 1.0], [0.0, 1.0]]), dones=np.zeros((2, 2)), next_done=np.ones(2),
      ...     obs=np.ones((2, 2, 3), np.float32), actions=np.array([[0, 1], [1, 1]])))
      >>> loss_fn = make_haepo_loss_fn(lambda p, o: o @ p, entropy_coef=0.01)
      >>> (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(
      ...     jnp.zeros((3, 2)), None, tr)
      >>> g.shape, round(float(stats["entropy"]), 4)
      ((3, 2), 0.6931)
    """
    if kind not in ("categorical", "gaussian"):
        raise ValueError(f"kind: expected 'categorical' or 'gaussian', got {kind!r}")
    if layout not in ("packed", "padded"):
        raise ValueError(f"layout: expected 'packed' or 'padded', got {layout!r}")
    if not callable(policy_fn):
        raise TypeError(f"policy_fn: expected a callable, got {type(policy_fn).__name__}")

    def terms_of(params: PyTree, ref_params: PyTree | None, obs: Any, actions: Any) -> StepTerms:
        out = policy_fn(params, obs)
        ref = None
        if ref_params is not None:
            ref = jax.tree.map(jax.lax.stop_gradient, policy_fn(ref_params, obs))
        if kind == "categorical":
            return categorical_terms(out, actions, ref)
        mean, log_std = out
        if ref is None:
            return gaussian_terms(mean, log_std, actions)
        return gaussian_terms(mean, log_std, actions, ref[0], ref[1])

    def loss_fn(
        params: PyTree, ref_params: PyTree | None, batch: Any, **overrides: Any
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        kw = {**loss_kw, **overrides}
        if layout == "packed":
            if not isinstance(batch, Trajectories):
                raise TypeError(f"batch: expected Trajectories, got {type(batch).__name__}")
            terms = terms_of(params, ref_params, batch.steps[obs_key], batch.steps[actions_key])
            out = haepo_trajectory_loss(batch, terms, **kw)
            return out.loss, out.stats
        missing = {obs_key, actions_key, "mask", "returns"} - set(batch)
        if missing:
            raise ValueError(f"batch: expected keys {sorted(missing)} in the padded batch")
        mask = batch["mask"]
        m, t = mask.shape
        obs = batch[obs_key].reshape(m * t, *batch[obs_key].shape[2:])
        actions = batch[actions_key].reshape(m * t, *batch[actions_key].shape[2:])
        flat = terms_of(params, ref_params, obs, actions)
        terms = StepTerms(*(None if x is None else x.reshape(m, t) for x in flat))
        if "group_ids" in batch:
            kw.setdefault("group_ids", batch["group_ids"])
        out = haepo_padded_loss(terms, batch["returns"], mask, **kw)
        return out.loss, out.stats

    return loss_fn
