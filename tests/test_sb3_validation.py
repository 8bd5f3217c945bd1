"""HAEPO (SB3) rejects bad hyperparameters with errors that name the argument."""

from __future__ import annotations

import gymnasium as gym
import pytest

pytest.importorskip("stable_baselines3")

from haepo_adapters.sb3 import HAEPO

BAD = [
    ("learning_rate", 0.0),
    ("learning_rate", float("nan")),
    ("n_steps", 0),
    ("n_steps", 2.5),
    ("update_epochs", 0),
    ("min_episodes", 1),
    ("target_kl", -0.1),
    ("max_grad_norm", -1.0),
    ("entropy_coef", -0.01),
    ("entropy_floor", float("inf")),
    ("kl_coef", -1.0),
    ("temperature", 0.0),
    ("stuck_repeat", 1.0),
    ("stuck_repeat", -0.5),
    ("normalize_returns", "rank"),
]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_bad_value_names_the_argument(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        HAEPO("MlpPolicy", "CartPole-v1", **{name: value})


@pytest.mark.parametrize("name", ["adaptive_lr", "anneal_lr", "length_normalize"])
def test_flags_must_be_bool(name: str) -> None:
    with pytest.raises(TypeError, match=name):
        HAEPO("MlpPolicy", "CartPole-v1", **{name: "yes"})


def test_adaptive_lr_needs_target_kl() -> None:
    with pytest.raises(ValueError, match="adaptive_lr"):
        HAEPO("MlpPolicy", "CartPole-v1", target_kl=0.0)
    HAEPO("MlpPolicy", "CartPole-v1", target_kl=0.0, adaptive_lr=False)


def test_sticky_exploration_only_for_discrete() -> None:
    with pytest.raises(ValueError, match="stuck_repeat"):
        HAEPO("MlpPolicy", "Pendulum-v1", stuck_repeat=0.5)


def test_init_log_std_only_for_box_and_once() -> None:
    with pytest.raises(ValueError, match="init_log_std"):
        HAEPO("MlpPolicy", "CartPole-v1", init_log_std=-0.5)
    with pytest.raises(ValueError, match="init_log_std"):
        HAEPO("MlpPolicy", "Pendulum-v1", init_log_std=-0.5, policy_kwargs=dict(log_std_init=0.0))


def test_value_net_arch_rejected() -> None:
    with pytest.raises(ValueError, match="net_arch"):
        HAEPO("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=dict(pi=[8], vf=[8])))


def test_total_timesteps_checked() -> None:
    model = HAEPO("MlpPolicy", "CartPole-v1")
    with pytest.raises(ValueError, match="total_timesteps"):
        model.learn(total_timesteps=0)


def test_unsupported_action_space() -> None:
    env = gym.make("CartPole-v1")
    env.action_space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(2)))
    with pytest.raises(AssertionError, match="only supports"):
        HAEPO("MlpPolicy", env)


def test_recipe_defaults_per_action_type() -> None:
    d = HAEPO("MlpPolicy", "CartPole-v1")
    c = HAEPO("MlpPolicy", "Pendulum-v1")
    assert (d.learning_rate, d.target_kl, d.entropy_coef, d.entropy_floor, d.stuck_repeat) == (
        1e-2, 0.01, 0.01, 0.1, 0.75)  # fmt: skip
    assert (c.learning_rate, c.target_kl, c.entropy_coef, c.entropy_floor, c.stuck_repeat) == (
        3e-3, 0.02, 0.001, -0.9, 0.0)  # fmt: skip
    assert c.init_log_std == -0.7 and d.init_log_std is None
