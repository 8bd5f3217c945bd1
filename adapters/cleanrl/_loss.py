"""The HAEPO loss on :class:`Trajectories` with exact per-step entropy and KL."""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any

import array_api_compat

from haepo_core import HAEPOOutput, haepo_loss, haepo_loss_packed
from haepo_core._namespace import is_concrete, stop_gradient

from ._distributions import StepTerms
from ._episodes import Trajectories

__all__ = ["haepo_padded_loss", "haepo_trajectory_loss"]

Array = Any
LAYOUTS = ("packed", "padded")


def haepo_trajectory_loss(
    traj: Trajectories, terms: StepTerms, *,
    entropy_coef: float = 0.0, kl_coef: float = 0.0, temperature: float = 1.0,
    length_normalize: bool = False, normalize_returns: str = "zscore",
    group_ids: Array | None = None, layout: str = "packed",
) -> HAEPOOutput:  # fmt: skip
    r"""HAEPO loss of a batch of trajectories, with the exact KL to the frozen reference.

    .. math::

        \text{loss} = J_{PL}(L, R; \tau) - \lambda\,\overline{H} + \beta\,\overline{KL}

    where :math:`L_k = \sum_{t \in k} \log\pi_\theta(a_t|s_t)` (``terms.logp`` summed per
    trajectory), :math:`J_{PL}` the Plackett-Luce policy term of :func:`haepo_core.haepo_loss`,
    and :math:`\overline{H}`, :math:`\overline{KL}` the means of ``terms.entropy`` and of the
    exact ``terms.kl`` over all steps (token means, as in the spec). The policy term and the
    entropy come from the core (``haepo_loss_packed`` or, with ``layout="padded"``,
    ``haepo_loss`` on ``traj.pad(...)``: both give the same value); the exact KL is added here
    because the core only takes exact KL from categorical logits in its padded path.

    Args:
      traj: ``M >= 1`` trajectories from :class:`TrajectoryBuilder` (``N`` steps).
      terms: :class:`StepTerms` of ``[N]`` arrays computed on ``traj.steps`` under the current
        policy (``terms.kl`` may be ``None`` when ``kl_coef == 0``).
      entropy_coef, kl_coef, temperature, length_normalize, normalize_returns: as in
        :func:`haepo_core.haepo_loss`.
      group_ids: ``[M]`` optional group labels (default: one group of all ``M``).
      layout: ``"packed"`` (default) or ``"padded"``.

    Returns:
      :class:`haepo_core.HAEPOOutput`; ``stats["kl"]`` is the exact mean KL.

    Raises:
      ValueError / TypeError naming the argument for an empty batch, mismatched shapes, a
      ``kl_coef`` that is not a finite real ``>= 0``, NaN/inf in ``terms.kl``, or a missing KL
      when ``kl_coef > 0``.

    Example:
      >>> import numpy as np
      >>> from haepo_adapters.cleanrl import (StepTerms, haepo_trajectory_loss,
      ...                                     rollout_to_trajectories)
      >>> tr = rollout_to_trajectories(np.ones((3, 2)), dones=np.array([[0, 0], [0, 1], [1, 0]]),
      ...                              next_done=np.array([1, 1]))
      >>> logp = np.full(tr.num_steps, -0.5)
      >>> out = haepo_trajectory_loss(tr, StepTerms(logp, np.ones_like(logp), None))
      >>> tr.returns.tolist(), round(float(out.loss), 4)  # short episodes have larger L_k
      ([2.0, 1.0, 1.0, 2.0], 0.2449)
    """
    if not isinstance(traj, Trajectories):
        raise TypeError(f"traj: expected Trajectories, got {type(traj).__name__}")
    if not isinstance(terms, StepTerms):
        raise TypeError(f"terms: expected StepTerms, got {type(terms).__name__}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if traj.num_trajectories == 0:
        raise ValueError(
            "traj: expected at least one completed trajectory, got 0 (skip the update)"
        )
    n = traj.num_steps
    for name in ("logp", "entropy", "kl"):
        x = getattr(terms, name)
        if x is not None and tuple(x.shape) != (n,):
            raise ValueError(f"terms.{name}: expected shape [N] = ({n},), got {tuple(x.shape)}")
    _check_kl(terms, kl_coef)
    xp = array_api_compat.array_namespace(terms.logp)
    if terms.kl is not None:
        _check_finite_kl(xp, terms.kl, None)
    kw = _core_keywords(locals())
    if layout == "packed":
        out = haepo_loss_packed(terms.logp, traj.segment_ids, traj.returns, **kw)
    else:
        if terms.entropy is not None:
            kw["entropy"] = traj.pad(terms.entropy)
        out = haepo_loss(traj.pad(terms.logp), traj.returns, traj.mask, **kw)
    if terms.kl is None:
        return out
    return _with_kl(out, xp.mean(xp.astype(terms.kl, out.loss.dtype)), kl_coef)


def haepo_padded_loss(
    terms: StepTerms, returns: Array, mask: Array, *,
    entropy_coef: float = 0.0, kl_coef: float = 0.0, temperature: float = 1.0,
    length_normalize: bool = False, normalize_returns: str = "zscore",
    group_ids: Array | None = None,
) -> HAEPOOutput:  # fmt: skip
    r"""HAEPO loss on fixed-shape padded per-step terms (for ``jax.jit`` / ``torch.compile``).

    The same objective as :func:`haepo_trajectory_loss`, on ``[M, T]`` arrays: the policy term
    and entropy come from :func:`haepo_core.haepo_loss` with ``mask``; the exact KL is the mean
    of ``terms.kl`` over valid steps. Nothing here needs concrete values, so shapes fixed once
    (``T`` = the env's episode limit, ``M`` = episodes per update) compile once.

    Args:
      terms: :class:`StepTerms` of ``[M, T]`` arrays (padding may hold anything finite or not).
      returns: ``[M]``; mask: ``[M, T]`` bool, each row with at least one valid step.
      keywords: as in :func:`haepo_trajectory_loss`.

    Returns:
      :class:`haepo_core.HAEPOOutput` (``stats["kl"]`` is the exact mean KL).

    Raises:
      ValueError / TypeError naming the argument, as :func:`haepo_trajectory_loss` (NaN/inf in
      ``terms.kl`` at valid steps; the check is skipped under ``jax.jit``, as in the core).

    Example:
      >>> import numpy as np
      >>> from haepo_adapters.cleanrl import StepTerms, haepo_padded_loss
      >>> logp = np.array([[-0.5, -0.5], [-0.5, np.nan]])
      >>> mask = np.array([[True, True], [True, False]])
      >>> t = StepTerms(logp, np.ones_like(logp), np.zeros_like(logp))
      >>> out = haepo_padded_loss(t, np.array([2.0, 1.0]), mask, kl_coef=0.1,
      ...                         length_normalize=True)
      >>> round(float(out.loss), 4)
      0.0
    """
    if not isinstance(terms, StepTerms):
        raise TypeError(f"terms: expected StepTerms, got {type(terms).__name__}")
    _check_kl(terms, kl_coef)
    out = haepo_loss(terms.logp, returns, mask, **_core_keywords(locals()))
    if terms.kl is None:
        return out
    if tuple(terms.kl.shape) != tuple(mask.shape):
        raise ValueError(
            f"terms.kl: expected shape [M, T] = {tuple(mask.shape)}, got {tuple(terms.kl.shape)}"
        )
    xp = array_api_compat.array_namespace(terms.logp)
    valid = xp.astype(mask, xp.bool)
    _check_finite_kl(xp, terms.kl, valid)  # padding may hold anything
    kl_steps = xp.astype(terms.kl, out.loss.dtype)
    kl_steps = xp.where(valid, kl_steps, xp.zeros_like(kl_steps))  # padding never leaks
    return _with_kl(out, xp.sum(kl_steps) / xp.sum(xp.astype(valid, out.loss.dtype)), kl_coef)


#: The keywords both entry points hand to the core unchanged.
_CORE_KEYWORDS = (
    "group_ids",
    "entropy_coef",
    "temperature",
    "length_normalize",
    "normalize_returns",
)


def _core_keywords(args: dict[str, Any]) -> dict[str, Any]:
    """The core's keywords from an entry point's ``locals()``: its options and the entropy."""
    kw = {k: args[k] for k in _CORE_KEYWORDS}
    kw["entropy"] = args["terms"].entropy
    return kw


def _with_kl(out: HAEPOOutput, kl: Array, kl_coef: Any) -> HAEPOOutput:
    """The core's output plus ``kl_coef`` times the exact mean KL ``kl`` (0-d)."""
    stats = dict(out.stats)
    stats["kl"] = stop_gradient(kl)
    return out._replace(loss=out.loss + kl_coef * kl, stats=stats)


def _check_kl(terms: StepTerms, kl_coef: object) -> None:
    """``kl_coef`` is a finite real >= 0 (as in the core), and a KL is given when it is > 0."""
    value = _coef_value("kl_coef", kl_coef)
    if terms.kl is None and (value is None or value != 0):
        raise ValueError(f"terms.kl: expected the per-step KL since kl_coef = {kl_coef}, got None")


def _coef_value(name: str, value: object) -> float | None:
    """The float value of a coefficient after checking it; ``None`` when traced (no value)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if not (hasattr(value, "shape") and getattr(value, "ndim", 1) == 0):
            raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
        if not is_concrete(value):
            return None
        to_concrete = getattr(value, "to_concrete_value", None)  # a jax.grad tracer
        if to_concrete is not None:
            value = to_concrete()
            if value is None:
                return None
        detach = getattr(value, "detach", None)  # torch: read without autograd's warning
        value = detach() if detach is not None else value
    v = float(value)  # type: ignore[arg-type]
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    if v < 0:
        raise ValueError(f"{name}: expected a value >= 0, got {v}")
    return v


def _staged(x: Array) -> bool:
    """Whether checks computed from ``x`` cannot be read now (traced, or inside ``jax.jit``)."""
    if not is_concrete(x):
        return True
    if array_api_compat.is_jax_array(x):
        jax = sys.modules["jax"]
        return isinstance(jax.numpy.zeros(()), jax.core.Tracer)
    return False


def _check_finite_kl(xp: Any, kl: Array, valid: Array | None) -> None:
    """No NaN/inf in the per-step KL at valid steps (skipped under tracing, as in the core)."""
    if _staged(kl) or (valid is not None and _staged(valid)):
        return
    bad = ~xp.isfinite(kl)
    if valid is not None:
        bad = xp.logical_and(bad, valid)
    count = int(xp.sum(xp.astype(bad, xp.int32)))
    if count:
        raise ValueError(
            f"terms.kl: expected finite values at valid steps, got {count} NaN/inf "
            f"(shape {tuple(kl.shape)})"
        )
