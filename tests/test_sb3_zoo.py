"""HAEPO through RL Baselines3 Zoo: registration, the shipped haepo.yml, a tiny train run."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rl_zoo3")

from haepo_adapters.sb3 import HAEPO, hyperparams_path
from haepo_adapters.sb3.zoo import main, register

TASKS = ["CartPole-v1", "Acrobot-v1", "LunarLander-v3", "Pendulum-v1", "InvertedPendulum-v5",
         "Hopper-v5"]  # fmt: skip
ZOO_KEYS = {"n_envs", "n_timesteps", "policy", "normalize"}


def test_hyperparams_cover_the_benchmark_tasks_with_valid_arguments() -> None:
    conf = yaml.safe_load(hyperparams_path().read_text())
    assert sorted(conf) == sorted(TASKS)
    params = set(inspect.signature(HAEPO.__init__).parameters)
    for task, hp in conf.items():
        assert set(hp) - ZOO_KEYS <= params, task
        assert "norm_reward': False" in hp.get("normalize", "norm_reward': False"), task


def test_register_adds_haepo_to_the_zoo() -> None:
    from rl_zoo3.utils import ALGOS

    register()
    assert ALGOS["haepo"] is HAEPO


def test_zoo_train_entry_point_tiny_budget(tmp_path: Path) -> None:
    main(["--algo", "haepo", "--env", "CartPole-v1", "-n", "600", "-f", str(tmp_path),
          "--seed", "1", "--eval-freq", "-1", "-params", "n_envs:2", "n_steps:32"])  # fmt: skip
    saved = list(tmp_path.glob("haepo/CartPole-v1_*/CartPole-v1.zip"))
    assert len(saved) == 1
    model = HAEPO.load(saved[0])
    assert model.n_steps == 32 and model.num_timesteps >= 600
