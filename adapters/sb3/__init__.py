"""haepo_adapters.sb3: HAEPO as a Stable-Baselines3 algorithm (sb3-contrib style).

- :class:`HAEPO`: ``HAEPO("MlpPolicy", env, **kwargs).learn(...)``, save/load, predict,
  VecEnvs, VecNormalize, callbacks and SB3's logger (``haepo/ess``, ``haepo/max_weight``,
  ``haepo/kl``, ``haepo/entropy`` beside SB3's keys).
- :class:`HAEPOPolicy` (``MlpPolicy``) and :class:`CnnPolicy`: policies without a value head.
- :func:`hyperparams_path`: the shipped RL Zoo hyperparameters (``hyperparams/haepo.yml``);
  ``python -m haepo_adapters.sb3.zoo --algo haepo --env CartPole-v1`` trains through rl_zoo3.

See docs/sb3.md.
"""

from __future__ import annotations

from pathlib import Path

from ._haepo import HAEPO
from ._policies import CnnPolicy, HAEPOPolicy, MlpPolicy

__all__ = ["HAEPO", "CnnPolicy", "HAEPOPolicy", "MlpPolicy", "hyperparams_path"]


def hyperparams_path() -> Path:
    """Path of the shipped RL Zoo hyperparameters file for HAEPO (``haepo.yml``)."""
    return Path(__file__).parent / "hyperparams" / "haepo.yml"
