"""Training stabilizers and collapse diagnostics around the HAEPO objective (framework-free).

These do not change the objective: HAEPO stays critic-free and trajectory-level. They are the
controls a training loop wraps around it (see docs/cleanrl.md, "Stabilizers"):

- :class:`AdaptiveCoefficient`: a regularization coefficient moved by a constant factor after
  each update to keep a measured statistic above a floor (the entropy bonus) or below a ceiling;
- :class:`CollapseMonitor`: warns once when the policy entropy falls near zero, or when several
  updates in a row see a batch whose returns are all equal (no policy gradient is left);
- :class:`StuckExploration`: the repeat probability of a sticky policy
  (:func:`~haepo_adapters.cleanrl.sticky_logits`), switched on while the batches carry no
  learning signal at the worst return seen, and decayed away once they do.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

__all__ = [
    "ADAPTIVE_MODES",
    "AdaptiveCoefficient",
    "CollapseMonitor",
    "CollapseWarning",
    "StuckExploration",
]

ADAPTIVE_MODES = ("floor", "ceiling")


def _real(name: str, value: object, *, lo: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    if lo is not None and (v <= lo if strict else v < lo):
        raise ValueError(f"{name}: expected a value {'>' if strict else '>='} {lo}, got {v}")
    return v


class AdaptiveCoefficient:
    r"""A coefficient adapted multiplicatively to keep a statistic on one side of a target.

    After each update call :meth:`update` with the measured statistic ``s``:

    - ``mode="floor"`` (e.g. the entropy bonus against entropy collapse): if ``s < target`` the
      coefficient is multiplied by ``factor``, otherwise divided by it;
    - ``mode="ceiling"`` (e.g. a KL penalty, as PPO's adaptive KL): multiplied while
      ``s > target``, divided otherwise;

    and kept in ``[min_value, max_value]``. With ``min_value`` equal to the initial value (the
    default) the coefficient is the usual fixed one until the statistic crosses the target,
    then rises geometrically until it is back on the right side, then decays back.

    Args:
      value: initial coefficient, ``>= 0``.
      target: the floor or ceiling for the statistic (any finite real: a Gaussian entropy may
        be negative).
      mode: ``"floor"`` or ``"ceiling"``.
      factor: ``> 1``, the multiplicative step per update (default 1.5).
      min_value: lower bound, ``0 <= min_value <= value`` (default ``value``).
      max_value: upper bound, ``>= value`` (default ``100 * value``).

    Example:
      >>> from haepo_adapters.cleanrl import AdaptiveCoefficient
      >>> c = AdaptiveCoefficient(0.01, target=0.1, mode="floor", factor=2.0)
      >>> [round(c.update(s), 4) for s in (0.5, 0.05, 0.05, 0.2, 0.2)]
      [0.01, 0.02, 0.04, 0.02, 0.01]
    """

    def __init__(
        self,
        value: float,
        target: float,
        *,
        mode: str = "floor",
        factor: float = 1.5,
        min_value: float | None = None,
        max_value: float | None = None,
    ) -> None:
        v = _real("value", value, lo=0.0)
        self.target = _real("target", target)
        if mode not in ADAPTIVE_MODES:
            raise ValueError(f"mode: expected one of {ADAPTIVE_MODES}, got {mode!r}")
        self.mode = mode
        self.factor = _real("factor", factor, lo=1.0, strict=True)
        self.min_value = v if min_value is None else _real("min_value", min_value, lo=0.0)
        self.max_value = 100.0 * v if max_value is None else _real("max_value", max_value)
        if self.min_value > v:
            raise ValueError(f"min_value: expected a value <= value = {v}, got {self.min_value}")
        if self.max_value < v:
            raise ValueError(f"max_value: expected a value >= value = {v}, got {self.max_value}")
        self.value = v

    def update(self, stat: float) -> float:
        """Move the coefficient after one update that measured ``stat``; returns the new value."""
        s = _real("stat", float(stat) if isinstance(stat, np.floating) else stat)
        wrong_side = s < self.target if self.mode == "floor" else s > self.target
        v = self.value * self.factor if wrong_side else self.value / self.factor
        self.value = min(max(v, self.min_value), self.max_value)
        return self.value

    def __float__(self) -> float:
        return self.value

    def __repr__(self) -> str:
        return (
            f"AdaptiveCoefficient(value={self.value:g}, target={self.target:g}, "
            f"mode={self.mode!r}, factor={self.factor:g})"
        )


class CollapseWarning(RuntimeWarning):
    """Training has lost its learning signal (entropy near 0, or all-equal returns)."""


class CollapseMonitor:
    """Warns once per kind when HAEPO training is collapsing.

    - **entropy**: the mean policy entropy of an update is below ``entropy_threshold`` (nats;
      for a categorical policy a small fraction of ``log(num_actions)``): the policy is nearly
      deterministic and explores no more.
    - **equal returns**: ``patience`` updates in a row had batches whose returns are all equal
      (up to ``rtol``): their z-scored returns are all 0 and the policy term has no gradient
      (e.g. every Acrobot episode timing out at -500). The warning says which case it is,
      from every return seen so far: *converged* (the best return seen, and worse ones were
      seen: e.g. every CartPole episode at 500), *stuck* (nothing better was ever seen: no
      first success yet) or *a collapse* (better returns were seen before).

    Each warning is a :class:`CollapseWarning` issued once (the first time); :attr:`events`
    keeps ``(update, kind)`` for every update where a condition held.

    Example:
      >>> import numpy as np, warnings
      >>> from haepo_adapters.cleanrl import CollapseMonitor
      >>> mon = CollapseMonitor(entropy_threshold=0.01, patience=2)
      >>> with warnings.catch_warnings(record=True) as w:
      ...     warnings.simplefilter("always")
      ...     for _ in range(3):
      ...         _ = mon.update(entropy=0.5, returns=np.full(4, -500.0))
      >>> len(w), mon.events
      (1, [(2, 'equal_returns'), (3, 'equal_returns')])
    """

    def __init__(self, *, entropy_threshold: float, patience: int = 3, rtol: float = 1e-6) -> None:
        self.entropy_threshold = _real("entropy_threshold", entropy_threshold)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience: expected an int >= 1, got {patience!r}")
        self.patience = patience
        self.rtol = _real("rtol", rtol, lo=0.0)
        self.updates = 0
        self.equal_streak = 0
        self.best, self.worst = -math.inf, math.inf  # over every return seen so far
        self.warned: set[str] = set()
        self.events: list[tuple[int, str]] = []

    def update(self, *, entropy: float, returns: Any) -> list[str]:
        """Record one update; returns the kinds that held this time (``[]`` when healthy)."""
        h = _real("entropy", float(entropy))
        r = np.asarray(returns, dtype=np.float64).reshape(-1)
        if r.size == 0 or not np.all(np.isfinite(r)):
            raise ValueError(f"returns: expected >= 1 finite values, got {r.size} ({r[:4]}...)")
        self.updates += 1
        held = []
        if h < self.entropy_threshold:
            held.append("entropy")
            self._warn(
                "entropy",
                f"HAEPO collapse: policy entropy {h:.3g} < {self.entropy_threshold:.3g} at update "
                f"{self.updates}: the policy is nearly deterministic and has stopped exploring",
            )
        spread = float(np.ptp(r))
        if spread <= self.rtol * max(1.0, float(np.max(np.abs(r)))):
            self.equal_streak += 1
        else:
            self.equal_streak = 0
        if self.equal_streak >= self.patience:
            held.append("equal_returns")
            self._warn(
                "equal_returns",
                f"HAEPO has no learning signal: {self.equal_streak} updates in a row with "
                f"all-equal returns (last: {r[0]:.6g} x {r.size}) at update {self.updates}; "
                "their normalized returns are 0 and the policy term has no gradient: "
                + self._diagnosis(float(r[0])),
            )
        self.best = max(self.best, float(np.max(r)))
        self.worst = min(self.worst, float(np.min(r)))
        self.events += [(self.updates, k) for k in held]
        return held

    def _diagnosis(self, value: float) -> str:
        tol = self.rtol * max(1.0, abs(value))
        if value >= self.best - tol and self.worst < value - tol:
            return "every return equals the best seen so far (likely the task's maximum: converged)"
        if value >= self.best - tol:
            return (
                "no return so far was better (stuck before a first success: an exploration problem)"
            )
        return f"better returns were seen before (best {self.best:.6g}): a collapse"

    def _warn(self, kind: str, msg: str) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            warnings.warn(msg, CollapseWarning, stacklevel=3)


class StuckExploration:
    r"""Sticky exploration while the rollouts are stuck: all returns equal, at the worst seen.

    A batch whose returns are all equal gives HAEPO no policy gradient. If that return is no
    better than every return seen so far (every Acrobot episode timing out at -500 before any
    reached the goal), the policy is stuck, and a dithering policy may stay stuck for the
    whole budget. If it is better than returns seen before (every CartPole episode at 500),
    the policy has converged and should be left alone. After each update call :meth:`update`
    with the batch's returns; :attr:`value` is then the repeat probability ``rho`` for the
    next rollout and update (:func:`~haepo_adapters.cleanrl.sticky_logits` with
    ``repeat_logit = log(rho / (1 - rho))``):

    - stuck: ``rho = repeat`` (a policy that keeps an action for ``1 / (1 - rho)`` steps on
      average reaches states a dithering one does not);
    - otherwise: ``rho *= decay``, and ``rho = 0`` once below ``cutoff``.

    ``rho`` starts at 0, so a run that is never stuck never explores this way. ``rho``
    changes between updates only: each update's log-probs, entropy and KL are those of the
    policy that collected its rollout.

    Example:
      >>> import numpy as np
      >>> from haepo_adapters.cleanrl import StuckExploration
      >>> ex = StuckExploration(repeat=0.75)
      >>> [ex.update(r) for r in (np.full(8, -500.0), [-500.0, -320.0], np.full(8, -500.0))]
      [0.75, 0.375, 0.75]
      >>> ex.update([-200.0, -90.0]), ex.update(np.full(4, -90.0))  # -90 beats -500: converged
      (0.375, 0.1875)
    """

    def __init__(
        self, repeat: float, *, decay: float = 0.5, cutoff: float = 0.01, rtol: float = 1e-6
    ) -> None:
        self.repeat = _real("repeat", repeat, lo=0.0)
        if self.repeat >= 1.0:
            raise ValueError(f"repeat: expected a probability in [0, 1), got {self.repeat}")
        self.decay = _real("decay", decay, lo=0.0)
        if self.decay >= 1.0:
            raise ValueError(f"decay: expected a factor in [0, 1), got {self.decay}")
        self.cutoff = _real("cutoff", cutoff, lo=0.0)
        self.rtol = _real("rtol", rtol, lo=0.0)
        self.value = 0.0
        self.worst = math.inf
        self.stuck_updates = 0

    def update(self, returns: Any) -> float:
        """Record one batch's returns; returns the repeat probability for the next update."""
        r = np.asarray(returns, dtype=np.float64).reshape(-1)
        if r.size == 0 or not np.all(np.isfinite(r)):
            raise ValueError(f"returns: expected >= 1 finite values, got {r.size} ({r[:4]}...)")
        lo, hi = float(np.min(r)), float(np.max(r))
        tol = self.rtol * max(1.0, abs(hi))
        stuck = hi - lo <= tol and hi <= self.worst + tol
        self.worst = min(self.worst, lo)
        if stuck:
            self.stuck_updates += 1
            self.value = self.repeat
        else:
            self.value *= self.decay
            if self.value < self.cutoff:
                self.value = 0.0
        return self.value

    @property
    def repeat_logit(self) -> float:
        """``log(rho / (1 - rho))`` of the current :attr:`value` (``-inf`` at 0)."""
        if self.value <= 0.0:
            return -math.inf
        return math.log(self.value / (1.0 - self.value))

    def __repr__(self) -> str:
        return (
            f"StuckExploration(value={self.value:g}, repeat={self.repeat:g}, "
            f"decay={self.decay:g}, worst={self.worst:g})"
        )
