"""Evaluation on fixed start states: evaluate_policy, BestSnapshot, the scripts' --eval-episodes
and the benchmark's evaluation columns."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from haepo_adapters.cleanrl import (
    EVAL_SEED,
    BestSnapshot,
    evaluate_final_and_best,
    evaluate_policy,
)

ROOT = Path(__file__).resolve().parents[1]


class CountdownEnv:
    """Episode of ``seed % 5 + 1`` steps; reward = the action; records every reset seed."""

    def __init__(self) -> None:
        self.seeds: list[int | None] = []
        self.left = 0

    def reset(self, *, seed=None, options=None):
        self.seeds.append(seed)
        self.left = (seed or 0) % 5 + 1
        return np.array([self.left], np.float32), {}

    def step(self, action):
        self.left -= 1
        return np.array([self.left], np.float32), float(action), False, self.left == 0, {}


def test_evaluate_policy_returns_one_undiscounted_return_per_episode():
    env = CountdownEnv()
    out = evaluate_policy(env, lambda obs: 2.0, episodes=4, seed=10)
    # episode k starts from seed 10 + k and lasts (10 + k) % 5 + 1 steps of reward 2
    np.testing.assert_array_equal(out, [2.0, 4.0, 6.0, 8.0])
    assert out.dtype == np.float64 and out.shape == (4,)


def test_every_policy_meets_the_same_start_states():
    a, b = CountdownEnv(), CountdownEnv()
    evaluate_policy(a, lambda obs: 0.0, episodes=3)
    evaluate_policy(b, lambda obs: float(obs[0]), episodes=3)
    assert a.seeds == b.seeds == [EVAL_SEED, EVAL_SEED + 1, EVAL_SEED + 2]


def test_evaluate_policy_on_a_gymnasium_env_is_reproducible():
    gym = pytest.importorskip("gymnasium")
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(0)
    out = evaluate_policy(env, lambda obs: int(obs[2] > 0), episodes=3)  # deterministic policy
    again = evaluate_policy(env, lambda obs: int(obs[2] > 0) if rng.random() < 2 else 0, episodes=3)
    np.testing.assert_array_equal(out, again)
    assert (out > 9).all()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(episodes=0), ValueError, "episodes: expected an int >= 1, got 0"),
        (dict(episodes=2.0), TypeError, "episodes: expected an int >= 1, got float"),
        (dict(episodes=True), TypeError, "episodes"),
        (dict(episodes=1, seed=-1), ValueError, "seed: expected an int >= 0, got -1"),
        (dict(episodes=1, max_steps=0), ValueError, "max_steps"),
    ],
)
def test_evaluate_policy_rejects_bad_options_naming_them(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        evaluate_policy(CountdownEnv(), lambda obs: 0.0, **kwargs)


def test_evaluate_policy_rejects_a_bad_env_or_policy():
    with pytest.raises(TypeError, match="env: expected an env with reset"):
        evaluate_policy(object(), lambda obs: 0.0, episodes=1)
    with pytest.raises(TypeError, match="policy: expected a callable"):
        evaluate_policy(CountdownEnv(), 3, episodes=1)


def test_evaluate_policy_refuses_a_non_finite_reward():
    with pytest.raises(ValueError, match="env: expected finite rewards, got nan in episode 0"):
        evaluate_policy(CountdownEnv(), lambda obs: math.nan, episodes=1)


def test_evaluate_policy_stops_an_episode_that_never_ends():
    class Endless(CountdownEnv):
        def step(self, action):
            return np.zeros(1, np.float32), 0.0, False, False, {}

    with pytest.raises(RuntimeError, match="max_steps = 7"):
        evaluate_policy(Endless(), lambda obs: 0.0, episodes=1, max_steps=7)


def test_best_snapshot_keeps_the_policy_of_the_best_full_window():
    best = BestSnapshot(window=3)
    made: list[int] = []

    def snap(i: int):
        return lambda: made.append(i) or i

    assert not best.offer([5.0, 5.0], snap(0))  # no full window yet: nothing kept
    assert best.offer([5.0, 5.0, 2.0], snap(1))  # mean 4
    assert not best.offer([5.0, 5.0, 2.0, 1.0], snap(2))  # mean 8/3
    assert best.offer([5.0, 5.0, 2.0, 1.0, 9.0, 9.0], snap(3))  # mean 19/3
    assert not best.offer([5.0, 5.0, 2.0, 1.0, 9.0, 9.0, 1.0], snap(4))  # 19/3 again: not better
    assert best.state == 3 and best.best == pytest.approx(19 / 3) and best.offers == 5
    assert made == [1, 3]  # a snapshot is taken only when it is kept


def test_best_snapshot_rejects_bad_input():
    with pytest.raises(ValueError, match="window: expected an int >= 1, got 0"):
        BestSnapshot(0)
    with pytest.raises(TypeError, match="window"):
        BestSnapshot(2.5)
    best = BestSnapshot(2)
    with pytest.raises(TypeError, match="snapshot: expected a callable"):
        best.offer([1.0, 2.0], "state")
    with pytest.raises(ValueError, match="returns: expected finite returns"):
        best.offer([1.0, math.nan], lambda: 0)


def test_final_and_best_are_each_evaluated_once_and_summarized():
    best = BestSnapshot(window=2)
    best.offer([1.0, 3.0], lambda: "best")
    calls: list[str] = []

    def evaluate(state: str) -> list[float]:
        calls.append(state)
        return [10.0, 20.0, 30.0] if state == "final" else [1.0, 2.0, 3.0]

    evals, summary = evaluate_final_and_best(evaluate, "final", best)
    assert calls == ["final", "best"]
    assert evals["eval_final"].dtype == np.float64
    np.testing.assert_array_equal(evals["eval_final"], [10.0, 20.0, 30.0])
    np.testing.assert_array_equal(evals["eval_best"], [1.0, 2.0, 3.0])
    assert summary == (
        "evaluation on 3 fixed starts: final policy 20.0, "
        "policy at its best moving average (2.0) 2.0"
    )


def test_without_a_full_window_the_final_policy_stands_in_for_the_best():
    best = BestSnapshot(window=20)
    best.offer([1.0] * 5, lambda: "never kept")
    calls: list[str] = []
    evals, summary = evaluate_final_and_best(lambda s: calls.append(s) or [4.0, 6.0], "fin", best)
    assert calls == ["fin"]  # evaluated once, not twice
    np.testing.assert_array_equal(evals["eval_best"], evals["eval_final"])
    assert evals["eval_best"] is not evals["eval_final"]
    assert "no full 20-episode window: the final policy" in summary and "inf" not in summary


@pytest.mark.parametrize(
    "evaluate, match",
    [
        (lambda s: [], r"non-empty 1-D array of returns for the final policy, got shape \(0,\)"),
        (lambda s: [[1.0, 2.0]], r"for the final policy, got shape \(1, 2\)"),
        (lambda s: [1.0, math.nan], "expected finite returns for the final policy"),
        (lambda s: [1.0] if s == "best" else [1.0, 2.0], "got 2 for the final policy and 1"),
    ],
)
def test_evaluate_final_and_best_rejects_bad_evaluations(evaluate, match):
    best = BestSnapshot(window=1)
    best.offer([1.0], lambda: "best")
    with pytest.raises(ValueError, match=match):
        evaluate_final_and_best(evaluate, "final", best)


def test_evaluate_final_and_best_rejects_bad_arguments():
    with pytest.raises(TypeError, match="evaluate: expected a callable"):
        evaluate_final_and_best("run", 0, BestSnapshot(2))
    with pytest.raises(TypeError, match="best: expected a BestSnapshot, got dict"):
        evaluate_final_and_best(lambda s: [1.0], 0, {"state": 0})


def load(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses need the module registered
        spec.loader.exec_module(mod)
    return sys.modules[name]


def example(script: str):
    return load(f"_test_eval_{Path(script).stem}", ROOT / "examples" / "cleanrl" / script)


SCRIPTS = {  # script: (budget, extra options)
    "haepo_cartpole.py": (3072, {}),
    "ppo_cartpole.py": (1024, dict(num_steps=128)),
    "haepo_pendulum.py": (4096, {}),
    "ppo_pendulum.py": (4096, {}),
    "haepo_cartpole_jax.py": (3072, {}),
}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_scripts_evaluate_the_final_and_the_best_policy_on_fixed_starts(
    tmp_path, monkeypatch, script
):
    pytest.importorskip("gymnasium")
    pytest.importorskip("torch")
    if script.endswith("_jax.py"):
        pytest.importorskip("flax")
    mod = example(script)
    seen: list[tuple[int, dict]] = []
    real = mod.evaluate_policy

    def spy(env, policy, *, episodes, **kw):
        seen.append((episodes, kw))
        return real(env, policy, episodes=episodes, **kw)

    monkeypatch.setattr(mod, "evaluate_policy", spy)
    budget, extra = SCRIPTS[script]
    args = mod.Args(
        total_timesteps=budget, progress=False, plot=False, out_dir=str(tmp_path),
        eval_episodes=3, moving_average=4, **extra,
    )  # fmt: skip
    res = mod.train(args)
    assert res["eval_final"].shape == res["eval_best"].shape == (3,)
    assert np.isfinite(res["eval_final"]).all() and np.isfinite(res["eval_best"]).all()
    assert seen == [(3, {})] * 2  # both policies on the default, fixed starts (EVAL_SEED + k)
    # the evaluation is seeded: the same run evaluates to the same returns
    again = mod.train(args)
    np.testing.assert_array_equal(res["eval_final"], again["eval_final"])
    off = mod.train(mod.Args(**{**vars(args), "eval_episodes": 0}))
    assert "eval_final" not in off and "eval_best" not in off
    # evaluating changes nothing in training: the same episodes with and without it
    np.testing.assert_array_equal(off["episodes"][:, 1], res["episodes"][:, 1])


def test_continuous_evaluation_uses_the_frozen_observation_statistics(tmp_path):
    pytest.importorskip("gymnasium")
    torch = pytest.importorskip("torch")
    mod = example("haepo_pendulum.py")
    args = mod.Args(total_timesteps=2048, progress=False, plot=False, out_dir=str(tmp_path))
    envs = mod.make_envs(args)
    envs.reset(seed=0)
    for _ in range(50):
        envs.step(envs.action_space.sample())
    actor = mod.Actor(3, 1, args.hidden, args.init_log_std)
    params, mu, var, eps = mod.snapshot(actor, envs)
    assert not np.allclose(mu, 0.0)  # statistics were gathered: normalization matters
    seen = []
    real_forward = mod.Actor.forward

    def spy(self, obs):
        seen.append(obs.clone())
        return real_forward(self, obs)

    mod.Actor.forward = spy
    try:
        mod.evaluate(mod.Args(**{**vars(args), "eval_episodes": 1}), (params, mu, var, eps), 3, 1)
    finally:
        mod.Actor.forward = real_forward
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    first, _ = env.reset(seed=EVAL_SEED)
    want = (first - mu) / np.sqrt(var + eps)
    torch.testing.assert_close(seen[0][0], torch.as_tensor(want, dtype=torch.float32))
    envs.close()


@pytest.mark.parametrize("script", ["haepo_cartpole.py", "haepo_pendulum.py"])
def test_scripts_reject_a_negative_eval_episodes(tmp_path, script):
    mod = example(script)
    with pytest.raises(ValueError, match="--eval-episodes: expected an int >= 0, got -1"):
        mod.train(mod.Args(progress=False, out_dir=str(tmp_path), eval_episodes=-1))


def bench():
    return load("_test_eval_multitask", ROOT / "benchmarks" / "multitask.py")


def test_eval_collapse_flag_compares_the_final_and_best_policy_on_the_same_starts():
    mt = bench()
    pend = mt.TASKS["pendulum"]  # floor -1500
    ok = mt.eval_metrics({"eval_final": [-1100.0, -1000.0], "eval_best": [-900.0]}, pend)
    assert ok == dict(eval_final=-1050.0, eval_best=-900.0, eval_collapsed=0)
    bad = mt.eval_metrics({"eval_final": [-1300.0], "eval_best": [-900.0]}, pend)
    assert bad["eval_collapsed"] == 1  # -1300 is below half-way (-1200) from -1500 to -900
    none = mt.eval_metrics({}, pend)
    assert none == dict(eval_final="", eval_best="", eval_collapsed="")


def test_benchmark_smoke_writes_the_evaluation_columns(tmp_path):
    pytest.importorskip("gymnasium")
    mt = bench()
    rc = mt.main(["--smoke", "--tasks", "pendulum", "--seeds", "1", "--workers", "1",
                  "--budget", "2048", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    with open(tmp_path / "multitask.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["method"] for r in rows) == ["haepo", "ppo"]
    for r in rows:
        assert -2000 < float(r["eval_final"]) < 0 and -2000 < float(r["eval_best"]) < 0
        assert r["eval_collapsed"] in ("0", "1")
    assert (tmp_path / "pendulum_eval.png").stat().st_size > 1000
    with pytest.raises(SystemExit):
        mt.main(["--eval-episodes", "-1"])
