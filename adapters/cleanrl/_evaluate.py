"""Evaluation of a trained policy on fixed start states, and the policy at its best so far.

A training curve's moving average mixes policy quality with which start states the last
episodes happened to get. When the envs replay seeded starts together (grouped starts), the
last 20 episodes come from one or two starts, and the moving average moves by hundreds with
the start alone. Evaluating a policy on the same fixed, independent start states for every
run and every method separates the two:

- :func:`evaluate_policy` runs a policy for ``episodes`` episodes on one env, episode ``k``
  started with ``reset(seed=seed + k)``, so two policies (or two methods) evaluated with the
  same ``seed`` meet the same start states;
- :class:`BestSnapshot` keeps a copy of the policy at the update where the moving average of
  the training returns was highest, so "did this run end worse than it was at its best?" can
  be asked of the two policies on the same starts, not of two windows of different starts;
- :func:`evaluate_final_and_best` evaluates the final policy and that snapshot with one
  evaluation function and says what it found in one line, as every training script does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["EVAL_SEED", "BestSnapshot", "evaluate_final_and_best", "evaluate_policy"]

EVAL_SEED = 1_000_000  # first start seed of evaluations: far from the training seeds (1-20)

S = TypeVar("S")


def _int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {lo}, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {value!r}")
    return int(value)


def evaluate_policy(
    env: Any,
    policy: Callable[[Any], Any],
    *,
    episodes: int,
    seed: int = EVAL_SEED,
    max_steps: int = 1_000_000,
) -> np.ndarray:
    r"""Undiscounted returns ``[episodes]`` of ``policy`` on ``env``, from fixed start states.

    .. math::

        G_k = \sum_{t} r_t^{(k)}, \qquad s_0^{(k)} \sim \texttt{env.reset(seed=seed + k)},
        \quad k = 0, \dots, \texttt{episodes} - 1

    Each episode runs until the env reports ``terminated`` or ``truncated``. The start states
    depend only on ``seed`` and the env, never on the policy: two policies evaluated with the
    same ``seed`` meet the same starts. The policy may be stochastic; seed its own sampling
    for a reproducible evaluation.

    Args:
      env: one (not vectorized) env with the gymnasium API: ``reset(seed=...) -> (obs, info)``
        and ``step(action) -> (obs, reward, terminated, truncated, info)``. Wrap it as the
        policy expects (e.g. ``ClipAction``); observation normalization belongs in ``policy``.
      policy: ``obs -> action`` for one observation.
      episodes: ``int >= 1``, episodes to run.
      seed: ``int >= 0``, the start seed of episode 0 (default :data:`EVAL_SEED`).
      max_steps: ``int >= 1``; an episode longer than this raises (an env without a time
        limit would otherwise never return).

    Returns:
      ``[episodes]`` float64 NumPy returns, in episode order.

    Raises:
      TypeError: ``env`` without ``reset``/``step``, ``policy`` not callable, or an option not
        an int.
      ValueError: an option out of range, or a reward that is not a finite number.
      RuntimeError: an episode ran ``max_steps`` steps without ending.

    Example:
      >>> import gymnasium as gym
      >>> from haepo_adapters.cleanrl import evaluate_policy
      >>> env = gym.make("CartPole-v1")
      >>> returns = evaluate_policy(env, lambda obs: int(obs[2] > 0), episodes=3)
      >>> returns.shape, bool((returns > 9).all())
      ((3,), True)
    """
    if not (callable(getattr(env, "reset", None)) and callable(getattr(env, "step", None))):
        raise TypeError(f"env: expected an env with reset() and step(), got {type(env).__name__}")
    if not callable(policy):
        raise TypeError(f"policy: expected a callable obs -> action, got {type(policy).__name__}")
    episodes = _int("episodes", episodes, 1)
    seed = _int("seed", seed, 0)
    max_steps = _int("max_steps", max_steps, 1)
    out = np.empty(episodes, dtype=np.float64)
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        total, done, steps = 0.0, False, 0
        while not done:
            if steps == max_steps:
                raise RuntimeError(
                    f"evaluate_policy: episode {k} ran max_steps = {max_steps} steps without "
                    "ending; give the env a time limit or raise max_steps"
                )
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            r = float(reward)
            if not math.isfinite(r):
                raise ValueError(f"env: expected finite rewards, got {r} in episode {k}")
            total += r
            done = bool(terminated) or bool(truncated)
            steps += 1
        out[k] = total
    return out


class BestSnapshot(Generic[S]):
    """A copy of the policy at its best moving average of training returns so far.

    Call :meth:`offer` once per update, before the update changes the policy, with every
    finished episode's return so far: when the mean of the last ``window`` returns (a full
    window only) beats every earlier offer, ``snapshot()`` is called and its result kept in
    :attr:`state` (``best`` holds that mean, ``offers`` counts the calls).

    Args:
      window: ``int >= 1``, the episodes of the moving average (20, as the training scripts
        report).

    Example:
      >>> from haepo_adapters.cleanrl import BestSnapshot
      >>> best = BestSnapshot(window=2)
      >>> best.offer([1.0], lambda: "a")  # not a full window yet
      False
      >>> best.offer([1.0, 3.0], lambda: "b"), best.offer([1.0, 3.0, 0.0], lambda: "c")
      (True, False)
      >>> best.state, best.best
      ('b', 2.0)
    """

    def __init__(self, window: int = 20) -> None:
        self.window = _int("window", window, 1)
        self.best = -math.inf
        self.state: S | None = None
        self.offers = 0

    def offer(self, returns: Sequence[float], snapshot: Callable[[], S]) -> bool:
        """Keep ``snapshot()`` if the last ``window`` returns beat the best mean so far."""
        if not callable(snapshot):
            raise TypeError(
                f"snapshot: expected a callable returning the state, got {type(snapshot).__name__}"
            )
        self.offers += 1
        if len(returns) < self.window:
            return False
        tail = np.asarray(returns[-self.window :], dtype=np.float64)
        if tail.ndim != 1:
            raise ValueError(f"returns: expected a sequence of numbers, got shape {tail.shape}")
        mean = float(tail.mean())
        if not math.isfinite(mean):
            raise ValueError(f"returns: expected finite returns, got a mean of {mean}")
        if mean <= self.best:
            return False
        self.best, self.state = mean, snapshot()
        return True


def evaluate_final_and_best(
    evaluate: Callable[[S], Any], final: S, best: BestSnapshot[S]
) -> tuple[dict[str, np.ndarray], str]:
    """Evaluate the final policy and the policy at its best moving average on the same starts.

    ``evaluate(state)`` runs one policy state (a ``state_dict``, a pytree of parameters, ...)
    on the fixed start states, usually through :func:`evaluate_policy`, and returns its
    ``[episodes]`` returns. It is called on ``final`` and on ``best.state``. When the run
    never filled a window of the moving average, ``best`` holds no policy: the final policy
    stands in for it, and the summary says so.

    Args:
      evaluate: ``state -> [episodes]`` returns, the same start states on every call.
      final: the policy state at the end of training.
      best: the :class:`BestSnapshot` offered every update's returns during training.

    Returns:
      ``({"eval_final": [E], "eval_best": [E]}, summary)``: float64 NumPy returns of the two
      policies, and a one-line summary of their means.

    Raises:
      TypeError: ``evaluate`` not callable, or ``best`` not a :class:`BestSnapshot`.
      ValueError: ``evaluate`` returned something that is not a non-empty 1-D array of finite
        returns, or two calls returned different numbers of episodes.

    Example:
      >>> from haepo_adapters.cleanrl import BestSnapshot, evaluate_final_and_best
      >>> best = BestSnapshot(window=2)
      >>> _ = best.offer([1.0, 3.0], lambda: 2.0)  # the "policy" here is a number
      >>> evals, summary = evaluate_final_and_best(lambda s: [s, s + 1.0], 5.0, best)
      >>> evals["eval_final"].tolist(), evals["eval_best"].tolist()
      ([5.0, 6.0], [2.0, 3.0])
      >>> summary
      'evaluation on 2 fixed starts: final policy 5.5, policy at its best moving average (2.0) 2.5'
    """
    if not callable(evaluate):
        raise TypeError(
            f"evaluate: expected a callable state -> returns, got {type(evaluate).__name__}"
        )
    if not isinstance(best, BestSnapshot):
        raise TypeError(f"best: expected a BestSnapshot, got {type(best).__name__}")

    def run(which: str, state: S) -> np.ndarray:
        out = np.asarray(evaluate(state), dtype=np.float64)
        if out.ndim != 1 or out.size == 0:
            raise ValueError(
                f"evaluate: expected a non-empty 1-D array of returns for the {which} policy, "
                f"got shape {out.shape}"
            )
        if not np.isfinite(out).all():
            raise ValueError(f"evaluate: expected finite returns for the {which} policy, got {out}")
        return out

    evals = {"eval_final": run("final", final)}
    if best.state is None:
        evals["eval_best"] = evals["eval_final"].copy()
        at_best = f"(no full {best.window}-episode window: the final policy)"
    else:
        evals["eval_best"] = run("best", best.state)
        at_best = f"at its best moving average ({best.best:.1f})"
    n = evals["eval_final"].size
    if evals["eval_best"].size != n:
        raise ValueError(
            f"evaluate: expected the same number of episodes for both policies, got {n} for the "
            f"final policy and {evals['eval_best'].size} for the best"
        )
    summary = (
        f"evaluation on {n} fixed starts: final policy {evals['eval_final'].mean():.1f}, "
        f"policy {at_best} {evals['eval_best'].mean():.1f}"
    )
    return evals, summary
