"""HAEPO as a Stable-Baselines3 algorithm: spaces, save/load, determinism, VecEnvs, logging."""

from __future__ import annotations

import csv
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th

pytest.importorskip("stable_baselines3")

from haepo_adapters.sb3 import HAEPO, HAEPOPolicy
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import (
    FakeImageEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
)
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

th.set_num_threads(1)

SPACES = {
    "Discrete": lambda: gym.make("CartPole-v1"),
    "Box": lambda: gym.make("Pendulum-v1"),
    "MultiDiscrete": lambda: IdentityEnvMultiDiscrete(dim=3, ep_length=10),
    "MultiBinary": lambda: IdentityEnvMultiBinary(dim=3, ep_length=10),
}


def _vec(make, n: int = 2, seed: int = 0) -> DummyVecEnv:
    return make_vec_env(make, n_envs=n, seed=seed)


@pytest.mark.parametrize("kind", sorted(SPACES))
def test_learn_smoke_each_action_space(kind: str) -> None:
    model = HAEPO("MlpPolicy", _vec(SPACES[kind]), n_steps=16, min_episodes=2, seed=0)
    model.learn(total_timesteps=600)
    assert model.num_timesteps >= 600
    assert model._n_updates >= 1  # at least one update ran on finished episodes
    obs = model.env.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert model.env.action_space.contains(
        action[0]
        if kind != "Box"
        else np.clip(action[0], model.action_space.low, model.action_space.high)
    )
    assert not hasattr(model.policy, "value_net")  # critic-free
    assert all(th.isfinite(p).all() for p in model.policy.parameters())


def test_cnn_policy_on_images() -> None:
    env = _vec(lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=1), n=1)
    model = HAEPO("CnnPolicy", env, n_steps=8, min_episodes=2, seed=0)
    model.learn(total_timesteps=64)
    assert model.policy.net_arch == []
    assert model.predict(env.reset())[0].shape == (1,)


def test_identity_box_policy_kwargs() -> None:
    env = _vec(lambda: IdentityEnvBox(ep_length=10), n=2)
    model = HAEPO(
        "MlpPolicy",
        env,
        n_steps=10,
        min_episodes=2,
        seed=0,
        policy_kwargs=dict(net_arch=dict(pi=[8]), activation_fn=th.nn.ReLU),
    )
    assert isinstance(model.policy, HAEPOPolicy)
    assert [m.out_features for m in model.policy.latent_pi if hasattr(m, "out_features")] == [8]
    # the continuous recipe: initial log std -0.7
    assert th.allclose(model.policy.log_std, th.full_like(model.policy.log_std, -0.7))


@pytest.mark.parametrize("kind", ["Discrete", "Box", "MultiDiscrete", "MultiBinary"])
def test_save_load_round_trip_predicts_the_same(kind: str, tmp_path: Path) -> None:
    env = _vec(SPACES[kind])
    model = HAEPO("MlpPolicy", env, n_steps=16, min_episodes=2, seed=0)
    model.learn(total_timesteps=300)
    obs = env.reset()
    before_det = model.predict(obs, deterministic=True)[0]
    model.save(tmp_path / "m")
    loaded = HAEPO.load(tmp_path / "m", env=env)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], before_det)
    for p, q in zip(model.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert th.equal(p, q)
    assert loaded.target_kl == model.target_kl and loaded.entropy_floor == model.entropy_floor
    loaded.learn(total_timesteps=100, reset_num_timesteps=False)  # it trains on


def _episode_returns(seed: int) -> tuple[list[float], list[th.Tensor]]:
    env = DummyVecEnv([lambda: Monitor(gym.make("CartPole-v1")) for _ in range(2)])
    model = HAEPO("MlpPolicy", env, n_steps=32, min_episodes=4, seed=seed)
    model.learn(total_timesteps=1500)
    returns = [float(r) for m in env.envs for r in m.get_episode_rewards()]
    return returns, [p.detach().clone() for p in model.policy.parameters()]


def test_same_seed_same_returns_and_weights() -> None:
    r1, p1 = _episode_returns(3)
    r2, p2 = _episode_returns(3)
    r3, _ = _episode_returns(4)
    assert len(r1) > 10
    assert r1 == r2
    assert all(th.equal(a, b) for a, b in zip(p1, p2, strict=True))
    assert r1 != r3  # the seed matters


def test_subproc_vec_env() -> None:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv,
                       vec_env_kwargs=dict(start_method="fork"))  # fmt: skip
    try:
        model = HAEPO("MlpPolicy", env, n_steps=32, min_episodes=2, seed=0)
        model.learn(total_timesteps=256)
        assert model._n_updates >= 1
    finally:
        env.close()


def test_logger_keys_csv_and_tensorboard(tmp_path: Path) -> None:
    model = HAEPO("MlpPolicy", _vec(SPACES["Discrete"]), n_steps=32, min_episodes=2, seed=0)
    model.set_logger(configure(str(tmp_path), ["csv", "tensorboard"]))
    model.learn(total_timesteps=500)
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 2
    keys = set(rows[0])
    for key in ("haepo/ess", "haepo/max_weight", "haepo/kl", "haepo/entropy",
                "train/entropy_loss", "train/learning_rate", "train/loss",
                "rollout/ep_rew_mean", "time/fps", "time/total_timesteps"):  # fmt: skip
        assert key in keys, key
    ess = [float(r["haepo/ess"]) for r in rows]
    episodes = [float(r["haepo/episodes"]) for r in rows]
    assert all(1.0 <= e <= m + 1e-6 for e, m in zip(ess, episodes, strict=True))
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_eval_and_checkpoint_callbacks_progress_bar(tmp_path: Path) -> None:
    env = _vec(SPACES["Discrete"])
    eval_env = _vec(SPACES["Discrete"], n=1, seed=5)
    eval_cb = EvalCallback(
        eval_env, eval_freq=100, n_eval_episodes=2, log_path=str(tmp_path / "eval")
    )
    ckpt = CheckpointCallback(save_freq=100, save_path=str(tmp_path / "ckpt"), name_prefix="h")
    model = HAEPO("MlpPolicy", env, n_steps=32, min_episodes=2, seed=0)
    model.learn(total_timesteps=400, callback=[eval_cb, ckpt], progress_bar=True)
    evals = np.load(tmp_path / "eval" / "evaluations.npz")
    assert evals["results"].shape[0] >= 2
    saved = sorted((tmp_path / "ckpt").glob("h_*_steps.zip"))
    assert len(saved) >= 2
    HAEPO.load(saved[-1])


def test_vec_normalize_statistics_saved_and_restored(tmp_path: Path) -> None:
    env = VecNormalize(_vec(SPACES["Box"]), norm_obs=True, norm_reward=False)
    model = HAEPO("MlpPolicy", env, n_steps=32, min_episodes=2, seed=0)
    model.learn(total_timesteps=600)
    model.save(tmp_path / "m")
    env.save(str(tmp_path / "vn.pkl"))
    restored = VecNormalize.load(str(tmp_path / "vn.pkl"), _vec(SPACES["Box"]))
    restored.training = False
    np.testing.assert_array_equal(restored.obs_rms.mean, env.obs_rms.mean)
    np.testing.assert_array_equal(restored.obs_rms.var, env.obs_rms.var)
    assert env.obs_rms.count > 600  # statistics were updated during training
    loaded = HAEPO.load(tmp_path / "m", env=restored)
    raw = np.ones((2, 3), dtype=np.float32)
    np.testing.assert_array_equal(
        loaded.predict(restored.normalize_obs(raw), deterministic=True)[0],
        model.predict(env.normalize_obs(raw), deterministic=True)[0],
    )


def test_callback_can_stop_training() -> None:
    from stable_baselines3.common.callbacks import StopTrainingOnMaxEpisodes

    model = HAEPO("MlpPolicy", _vec(SPACES["Discrete"], n=1), n_steps=16, min_episodes=2, seed=0)
    model.learn(total_timesteps=100_000, callback=StopTrainingOnMaxEpisodes(5))
    assert model.num_timesteps < 2000
