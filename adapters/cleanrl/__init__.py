"""haepo_adapters.cleanrl: HAEPO for CleanRL-style rollout buffers (torch and JAX).

- :class:`TrajectoryBuilder` / :func:`rollout_to_trajectories`: ``[num_steps, num_envs]``
  buffers (CleanRL ``dones`` or gymnasium ``terminated``/``truncated``, either autoreset mode)
  to whole-episode trajectories, packed and padded; unfinished episodes carried over.
- :func:`categorical_terms`, :func:`gaussian_terms` (and the Gaussian closed forms): per-step
  log-prob, exact entropy and exact KL to the frozen reference; :func:`sticky_logits`: a
  categorical that repeats the previous action with a learned probability (exploration).
- :func:`start_groups`: group labels from each episode's start key (grouped starts), an
  episode alone of its start in the batch pooled with the others alone.
- :func:`haepo_trajectory_loss`: the HAEPO loss of a :class:`Trajectories` batch;
  :func:`haepo_padded_loss`: the same on fixed-shape ``[M, T]`` arrays (jit-friendly).
- :class:`AdaptiveCoefficient` (e.g. an entropy bonus raised while the entropy is below a
  floor) and :class:`CollapseMonitor` (warns once on entropy collapse or all-equal returns):
  the training-loop stabilizers around the objective; :class:`StuckExploration` switches on
  sticky exploration while every batch is stuck at one (worst) return.
- :func:`evaluate_policy` (returns from fixed, seeded start states, the same for every policy)
  and :class:`BestSnapshot` (the policy at its best moving average so far): the final and
  best policies compared on the same starts by :func:`evaluate_final_and_best`.
- :func:`write_run` (a run's ``metrics.csv``, ``updates.csv`` and ``curve.png``, drawn by
  :func:`plot_training_curve`) and :func:`moving_average` (the MA20 the project reports).
- torch: :class:`ReferencePolicy` (imports torch only when asked for).
- JAX: :class:`ReferenceParams`, :func:`make_haepo_loss_fn`, :func:`to_jax` (import JAX only
  when asked for).

The NumPy/array-API part imports neither framework; the torch names never import JAX and the
JAX names never import torch. See docs/cleanrl.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._curves import moving_average, plot_training_curve, write_run
from ._distributions import (
    StepTerms,
    categorical_terms,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
    gaussian_terms,
    sticky_logits,
)
from ._episodes import (
    AUTORESET_MODES,
    INCOMPLETE_POLICIES,
    Trajectories,
    TrajectoryBuilder,
    rollout_to_trajectories,
)
from ._evaluate import EVAL_SEED, BestSnapshot, evaluate_final_and_best, evaluate_policy
from ._groups import start_groups
from ._loss import haepo_padded_loss, haepo_trajectory_loss
from ._stabilizers import (
    ADAPTIVE_MODES,
    AdaptiveCoefficient,
    CollapseMonitor,
    CollapseWarning,
    StuckExploration,
)

_LAZY = {
    "ReferencePolicy": "._torch",
    "ReferenceParams": "._jax",
    "make_haepo_loss_fn": "._jax",
    "to_jax": "._jax",
}

__all__ = [
    "ADAPTIVE_MODES",
    "AUTORESET_MODES",
    "AdaptiveCoefficient",
    "BestSnapshot",
    "CollapseMonitor",
    "CollapseWarning",
    "EVAL_SEED",
    "INCOMPLETE_POLICIES",
    "ReferenceParams",
    "ReferencePolicy",
    "StepTerms",
    "StuckExploration",
    "Trajectories",
    "TrajectoryBuilder",
    "categorical_terms",
    "evaluate_final_and_best",
    "evaluate_policy",
    "gaussian_entropy",
    "gaussian_kl",
    "gaussian_log_prob",
    "gaussian_terms",
    "haepo_padded_loss",
    "haepo_trajectory_loss",
    "make_haepo_loss_fn",
    "moving_average",
    "plot_training_curve",
    "rollout_to_trajectories",
    "start_groups",
    "sticky_logits",
    "to_jax",
    "write_run",
]


def __getattr__(name: str) -> Any:
    # The framework parts load on first use, so `import haepo_adapters.cleanrl` pulls in
    # neither torch nor JAX, and using the torch names never imports JAX (and vice versa).
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
