"""The training scripts' stabilizers: episode-counted batches, target-KL early stop, gradient
clipping, learning-rate annealing, the entropy floor, collapse warnings, option checks, the
diagnostics plot; and the multi-task benchmark's smoke mode."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from haepo_adapters.cleanrl import CollapseWarning

gym = pytest.importorskip("gymnasium")
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path, name: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses need the module registered
        spec.loader.exec_module(mod)
    return sys.modules[name]


def example(name: str):
    return load(ROOT / "examples" / "cleanrl" / name, f"_test_recipe_{Path(name).stem}")


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    """One short default run, with clip_grad_norm_ spied on (its calls are counted)."""
    hc = example("haepo_cartpole.py")
    calls: list[float] = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        calls.append(float(max_norm))
        return real(params, max_norm, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    try:
        args = hc.Args(
            seed=0, total_timesteps=6144, progress=False, out_dir=str(tmp_path_factory.mktemp("r"))
        )
        res = hc.train(args)
    finally:
        mp.undo()
    return args, res, calls


def test_every_update_rests_on_at_least_min_episodes_finished_episodes(cartpole_run):
    args, res, _ = cartpole_run
    ups = res["updates"]
    assert len(ups) >= 3
    assert all(u["episodes"] >= args.min_episodes for u in ups)
    # and no episode is lost: every logged episode but those still running went into a batch
    assert sum(u["episodes"] for u in ups) >= len(res["episodes"]) - args.num_envs


def test_epochs_stop_at_the_target_kl_and_run_in_full_without_it(tmp_path):
    hc = example("haepo_cartpole.py")
    tight = hc.train(
        hc.Args(seed=1, total_timesteps=3072, target_kl=1e-9, progress=False, plot=False,
                adaptive_lr=False, out_dir=str(tmp_path))
    )  # fmt: skip
    # epoch 0 is always taken (KL 0 at the start); any move then exceeds 1e-9
    assert [u["epochs"] for u in tight["updates"]] == [1] * len(tight["updates"])
    free = hc.train(
        hc.Args(seed=1, total_timesteps=3072, target_kl=0.0, progress=False, plot=False,
                adaptive_lr=False, out_dir=str(tmp_path))
    )  # fmt: skip
    assert all(u["epochs"] == 4 for u in free["updates"])
    assert np.mean([u["kl"] for u in free["updates"]]) > np.mean(
        [u["kl"] for u in tight["updates"]]
    )


def test_gradients_are_clipped_to_max_grad_norm_at_every_epoch(cartpole_run):
    args, res, calls = cartpole_run
    assert len(calls) == sum(u["epochs"] for u in res["updates"]) > 0
    assert set(calls) == {args.max_grad_norm}


def test_learning_rate_is_kl_steered_and_anneals_linearly_in_env_steps(cartpole_run):
    args, res, _ = cartpole_run
    assert args.adaptive_lr
    ups = res["updates"]
    lr = np.array([u["learning_rate"] for u in ups])
    frac = 1.0 - np.array([u["global_step"] for u in ups]) / args.total_timesteps
    base = lr / (frac + 1e-3)  # the KL-steered part, before the linear anneal
    assert base[0] == pytest.approx(args.learning_rate)
    for a, b, kl in zip(base, base[1:], [u["kl"] for u in ups]):
        want = a * 1.5 if kl < args.target_kl else a / 1.5
        want = min(max(want, args.learning_rate / 100), args.learning_rate)
        assert b == pytest.approx(want, rel=1e-9)
    assert any(u["kl"] > args.target_kl for u in ups[:-1])  # the rule was exercised downwards


def test_learning_rate_anneals_linearly_without_adaptive_lr(tmp_path):
    hc = example("haepo_cartpole.py")
    args = hc.Args(seed=0, total_timesteps=4096, progress=False, plot=False,
                   adaptive_lr=False, out_dir=str(tmp_path))  # fmt: skip
    ups = hc.train(args)["updates"]
    lr = np.array([u["learning_rate"] for u in ups])
    frac = 1.0 - np.array([u["global_step"] for u in ups]) / args.total_timesteps
    np.testing.assert_allclose(lr, args.learning_rate * (frac + 1e-3), rtol=1e-12)


def test_entropy_coefficient_follows_the_floor_rule(cartpole_run):
    args, res, _ = cartpole_run
    ups = res["updates"]
    target = args.entropy_floor * np.log(2)
    for a, b in itertools.pairwise(ups):
        up = a["entropy"] < target
        want = a["entropy_coef"] * 1.5 if up else a["entropy_coef"] / 1.5
        want = min(max(want, args.entropy_coef), 100 * args.entropy_coef)
        assert b["entropy_coef"] == pytest.approx(want)


def test_curve_png_has_return_entropy_and_ess_panels(cartpole_run):
    import matplotlib.image

    _, res, _ = cartpole_run
    img = matplotlib.image.imread(Path(res["run_dir"]) / "curve.png")
    assert img.shape[0] == 750  # 3 panels: 7.5 in at 100 dpi (one panel alone: 350 px)


def test_script_warns_once_when_the_entropy_collapses(tmp_path, monkeypatch):
    hc = example("haepo_cartpole.py")
    real = hc.CollapseMonitor

    def strict_monitor(**kw):  # a threshold above log(2): every update "collapsed"
        return real(entropy_threshold=1.0, patience=kw.get("patience", 3))

    monkeypatch.setattr(hc, "CollapseMonitor", strict_monitor)
    with pytest.warns(CollapseWarning, match="entropy") as rec:
        res = hc.train(
            hc.Args(seed=0, total_timesteps=2048, progress=False, plot=False,
                    out_dir=str(tmp_path))
        )  # fmt: skip
    assert len([w for w in rec if "entropy" in str(w.message)]) == 1
    assert len(res["collapse_events"]) == len(res["updates"])


@pytest.mark.parametrize("script", ["haepo_cartpole.py", "haepo_pendulum.py"])
@pytest.mark.parametrize(
    "option, bad",
    [
        ("min_episodes", 1),
        ("target_kl", -0.01),
        ("target_kl", float("nan")),
        ("max_grad_norm", -1.0),
        ("learning_rate", 0.0),
        ("entropy_coef", float("inf")),
        ("kl_coef", -0.1),
        ("update_epochs", 0),
        ("entropy_floor", float("nan")),
        ("group_starts", 1),
        ("group_starts", 3),
        ("group_starts", -2),
    ],
)
def test_scripts_reject_bad_options_naming_them(tmp_path, script, option, bad):
    mod = example(script)
    args = mod.Args(progress=False, out_dir=str(tmp_path), **{option: bad})
    with pytest.raises(ValueError, match="--" + option.replace("_", "-")):
        mod.train(args)
    assert not any(tmp_path.iterdir())  # refused before any run dir or env is made


@pytest.mark.parametrize(
    "script", ["haepo_cartpole.py", "haepo_pendulum.py", "haepo_cartpole_jax.py"]
)
def test_adaptive_lr_without_a_target_kl_is_refused(tmp_path, script):
    if script.endswith("_jax.py"):
        pytest.importorskip("flax")
    mod = example(script)
    args = mod.Args(progress=False, out_dir=str(tmp_path), adaptive_lr=True, target_kl=0.0)
    with pytest.raises(ValueError, match="--adaptive-lr: needs --target-kl > 0"):
        mod.train(args)
    mod.check_args(mod.Args(adaptive_lr=False, target_kl=0.0))  # fine without it


def _kl_steered(args, ups) -> None:
    """Each update's rate follows the KL-steered rule from the previous update's KL."""
    lr = [u["learning_rate"] for u in ups]
    assert lr[0] == pytest.approx(args.learning_rate)
    for a, b, kl in zip(lr, lr[1:], [u["kl"] for u in ups]):
        want = a * 1.5 if kl < args.target_kl else a / 1.5
        assert b == pytest.approx(min(max(want, args.learning_rate / 100), args.learning_rate))


@pytest.mark.parametrize("script", ["haepo_cartpole.py", "haepo_pendulum.py"])
def test_kl_steered_rate_reaches_the_optimizer_without_annealing(tmp_path, monkeypatch, script):
    mod = example(script)
    used: list[float] = []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **kw):
        used.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    small = {"num_envs": 4, "num_steps": 64, "min_episodes": 4} if "pendulum" in script else {}
    args = mod.Args(seed=0, total_timesteps=6000, progress=False, plot=False, anneal_lr=False,
                    target_kl=0.002, out_dir=str(tmp_path), **small)  # fmt: skip
    ups = mod.train(args)["updates"]
    assert len(ups) >= 3
    _kl_steered(args, ups)
    # the rate of each update is the one every Adam step of that update used
    want = [u["learning_rate"] for u in ups for _ in range(u["epochs"])]
    np.testing.assert_allclose(used, want, rtol=1e-12)
    assert min(want) < args.learning_rate  # the rule was exercised downwards


def test_jax_script_steers_the_rate_by_the_kl(tmp_path):
    pytest.importorskip("flax")
    pytest.importorskip("optax")
    hj = example("haepo_cartpole_jax.py")
    args = hj.Args(total_timesteps=3072, target_kl=0.002, anneal_lr=False, progress=False,
                   plot=False, out_dir=str(tmp_path))  # fmt: skip
    ups = hj.train(args)["updates"]
    assert len(ups) >= 3
    _kl_steered(args, ups)
    assert min(u["learning_rate"] for u in ups) < args.learning_rate


def test_discrete_entropy_floor_is_a_fraction_of_the_maximum(tmp_path):
    hc = example("haepo_cartpole.py")
    with pytest.raises(ValueError, match="--entropy-floor"):
        hc.train(hc.Args(entropy_floor=1.0, progress=False, out_dir=str(tmp_path)))


def test_continuous_script_runs_with_its_stabilizers(tmp_path):
    hp = example("haepo_pendulum.py")
    args = hp.Args(total_timesteps=2048, num_envs=4, num_steps=64, min_episodes=4,
                   progress=False, plot=False, out_dir=str(tmp_path))  # fmt: skip
    res = hp.train(args)
    ups = res["updates"]
    assert ups and all(u["episodes"] >= 4 and 1 <= u["epochs"] <= args.update_epochs for u in ups)
    assert all(np.isfinite(u["loss"]) and u["kl"] >= 0 for u in ups)


@pytest.mark.parametrize("init_log_std", [-0.7, 0.0, -1.5])
def test_continuous_policy_starts_at_init_log_std(tmp_path, init_log_std):
    hp = example("haepo_pendulum.py")
    args = hp.Args(total_timesteps=1024, num_envs=4, num_steps=64, min_episodes=4, seed=3,
                   init_log_std=init_log_std, progress=False, plot=False,
                   out_dir=str(tmp_path))  # fmt: skip
    first = hp.train(args)["updates"][0]
    # the first update's entropy is taken before any Adam step: that of N(mu, exp(init)^2),
    # 0.5 log(2 pi e) + init_log_std nats for Pendulum's one action dimension
    assert first["entropy"] == pytest.approx(0.5 * np.log(2 * np.pi * np.e) + init_log_std)


def test_continuous_default_starts_at_std_one_half():
    hp = example("haepo_pendulum.py")
    assert hp.Args().init_log_std == -0.7
    actor = hp.Actor(3, 2, 8, init_log_std=-0.7)
    np.testing.assert_array_equal(actor.log_std.detach().numpy(), np.full(2, -0.7, np.float32))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), True, "0.5"])
def test_init_log_std_must_be_a_finite_number(tmp_path, bad):
    hp = example("haepo_pendulum.py")
    with pytest.raises(ValueError, match=r"--init-log-std: expected a finite number"):
        hp.train(hp.Args(init_log_std=bad, progress=False, out_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())


def test_jax_script_stops_epochs_at_the_target_kl_and_anneals(tmp_path):
    pytest.importorskip("flax")
    pytest.importorskip("optax")
    hj = example("haepo_cartpole_jax.py")
    res = hj.train(
        hj.Args(total_timesteps=2048, target_kl=1e-9, progress=False, plot=False,
                adaptive_lr=False, out_dir=str(tmp_path))
    )  # fmt: skip
    ups = res["updates"]
    assert len(ups) >= 3 and all(u["epochs"] == 1 for u in ups)
    lr = [u["learning_rate"] for u in ups]
    assert all(a > b for a, b in itertools.pairwise(lr))
    with pytest.raises(ValueError, match="--episodes-per-update"):
        hj.train(hj.Args(episodes_per_update=1, progress=False, out_dir=str(tmp_path)))


# --- the multi-task benchmark -----------------------------------------------------------------


def bench():
    return load(ROOT / "benchmarks" / "multitask.py", "_test_recipe_multitask")


def test_run_metrics_threshold_best_and_collapse_flag():
    mt = bench()
    task = mt.TASKS["cartpole"]
    steps = np.arange(1, 61) * 100.0
    rets = np.r_[np.full(20, 100.0), np.full(20, 480.0), np.full(20, 200.0)]
    m = mt.run_metrics(steps, rets, task)
    assert m["final_ma20"] == 200.0 and m["best_ma20"] == 480.0
    # MA20 first >= 475 when the window is episodes 21-40, all 480 (one 100 in it gives 461)
    assert m["steps_to_threshold"] == 4000.0
    assert m["collapsed"] == 1  # ends at 200 < half its best (240)
    ok = mt.run_metrics(steps, np.r_[rets[:40], np.full(20, 470.0)], task)
    assert ok["collapsed"] == 0 and ok["final_ma20"] == 470.0
    acro = mt.run_metrics(steps, np.full(60, -500.0), mt.TASKS["acrobot"])
    assert acro["steps_to_threshold"] == float("inf") and acro["collapsed"] == 0


def test_benchmark_rejects_bad_options():
    mt = bench()
    with pytest.raises(SystemExit):
        mt.main(["--workers", "0"])
    with pytest.raises(SystemExit):
        mt.main(["--seeds", "a-b"])
    with pytest.raises(SystemExit):
        mt.main(["--set", "target_kl"])


def test_benchmark_smoke_writes_csv_and_png_per_task(tmp_path):
    mt = bench()
    rc = mt.main(["--smoke", "--tasks", "cartpole", "--seeds", "1", "--workers", "1",
                  "--budget", "2048", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    with open(tmp_path / "multitask.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["method"] for r in rows) == ["haepo", "ppo"]
    for r in rows:
        assert r["seed"] == "1" and r["budget"] == "2048"
        assert 8 <= float(r["final_ma20"]) <= float(r["best_ma20"]) + 1e-9 <= 500
    assert (tmp_path / "cartpole.png").stat().st_size > 1000
    # finished runs are saved: a second call resumes (nothing left to run) and reports them
    assert mt.main(["--tasks", "cartpole", "--seeds", "1", "--budget", "2048",
                    "--out", str(tmp_path), "--workers", "1"]) == 0  # fmt: skip
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2


GROUPED = ["haepo_cartpole.py", "haepo_pendulum.py", "haepo_cartpole_jax.py"]


def _first_obs_per_episode(envs, steps: int, seed: int) -> list[list[np.ndarray]]:
    """Step random actions; return, per env, the raw first observation of each episode."""
    firsts: list[list[np.ndarray]] = [[] for _ in range(envs.num_envs)]
    raw = envs.unwrapped  # the SyncVectorEnv, under the vector wrappers
    obs, _ = raw.reset(seed=seed)
    for i in range(envs.num_envs):
        firsts[i].append(np.array(obs[i]))
    envs.action_space.seed(seed)
    done = np.zeros(envs.num_envs, bool)
    for _ in range(steps):
        obs, _, term, trunc, _ = raw.step(envs.action_space.sample())
        for i in np.flatnonzero(done):  # NEXT_STEP autoreset: this step was the reset
            firsts[i].append(np.array(obs[i]))
        done = term | trunc
    return firsts


@pytest.mark.parametrize("script", GROUPED)
def test_grouped_starts_replay_one_start_sequence_per_group(script):
    if script.endswith("_jax.py"):
        pytest.importorskip("flax")
    mod = example(script)
    env_id = "Pendulum-v1" if "pendulum" in script else "CartPole-v1"
    steps = 450 if "pendulum" in script else 120  # Pendulum episodes last 200 steps
    args = mod.Args(env_id=env_id, num_envs=4, group_starts=2, seed=3)
    firsts = _first_obs_per_episode(mod.make_envs(args), steps, seed=3)
    for a, b in ((0, 1), (2, 3)):  # one group: the same start states, episode by episode
        k = min(len(firsts[a]), len(firsts[b]))
        assert k >= 2
        np.testing.assert_array_equal(np.stack(firsts[a][:k]), np.stack(firsts[b][:k]))
    assert not np.array_equal(firsts[0][0], firsts[2][0])  # the groups start elsewhere
    assert not np.array_equal(firsts[0][0], firsts[0][1])  # and each episode anew
    off = mod.Args(env_id=env_id, num_envs=4, group_starts=0, seed=3)
    ungrouped = _first_obs_per_episode(mod.make_envs(off), 1, seed=3)
    assert not np.array_equal(ungrouped[0][0], ungrouped[1][0])  # off: independent starts


@pytest.mark.parametrize("script", GROUPED)
def test_group_starts_minus_one_puts_every_env_in_one_group(script):
    if script.endswith("_jax.py"):
        pytest.importorskip("flax")
    mod = example(script)
    env_id = "Pendulum-v1" if "pendulum" in script else "CartPole-v1"
    steps = 450 if "pendulum" in script else 120
    firsts = _first_obs_per_episode(
        mod.make_envs(mod.Args(env_id=env_id, num_envs=4, group_starts=-1, seed=3)), steps, seed=3
    )
    k = min(len(f) for f in firsts)
    assert k >= 2
    for other in firsts[1:]:  # one group: every env replays env 0's starts
        np.testing.assert_array_equal(np.stack(other[:k]), np.stack(firsts[0][:k]))


def test_continuous_default_groups_all_envs_whatever_their_number():
    hp = example("haepo_pendulum.py")
    assert hp.Args().group_starts == -1
    for n in (1, 4, 16):
        args = hp.Args(num_envs=n)
        hp.check_args(args)  # no --group-starts to fix when --num-envs changes
        assert hp.group_size(args) == n


@pytest.mark.parametrize("script", ["haepo_cartpole.py", "haepo_pendulum.py"])
def test_grouped_starts_make_one_loss_group_per_start(tmp_path, monkeypatch, script):
    mod = example(script)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = mod.haepo_trajectory_loss

    def spy(traj, terms, **kw):
        first = np.cumsum(traj.lengths) - traj.lengths
        ids = kw["group_ids"]
        seen.append((np.asarray(ids), traj.steps["obs"].numpy()[first]))
        return real(traj, terms, **kw)

    monkeypatch.setattr(mod, "haepo_trajectory_loss", spy)
    small = {"num_steps": 64, "min_episodes": 4} if "pendulum" in script else {}
    args = mod.Args(seed=0, total_timesteps=4000, num_envs=4, group_starts=2, progress=False,
                    plot=False, out_dir=str(tmp_path), **small)  # fmt: skip
    ups = mod.train(args)["updates"]
    assert ups and len(seen) >= len(ups)
    grouped = 0
    for ids, first_obs in seen:
        assert ids.shape == (first_obs.shape[0],)
        # the start of each episode, as the index of its first observation among the batch's
        _, start, count = np.unique(first_obs, axis=0, return_inverse=True, return_counts=True)
        start = start.reshape(-1)
        pools = 0
        for g in np.unique(ids):
            members = start[ids == g]
            if np.all(count[members] == 1):  # the pool: episodes alone of their start here
                pools += 1
            else:  # one start, and all of its episodes in the batch
                assert len(np.unique(members)) == 1 and len(members) == count[members[0]]
                grouped += 1
        assert pools <= 1
        assert all(len(np.unique(ids[start == k])) == 1 for k in np.unique(start))  # no split
    assert grouped > 0
    assert all(u["num_groups"] >= 1 for u in ups) and max(u["num_groups"] for u in ups) > 1


def test_jax_script_ranks_episodes_within_their_start_group(tmp_path):
    pytest.importorskip("flax")
    pytest.importorskip("optax")
    hj = example("haepo_cartpole_jax.py")
    kw = dict(total_timesteps=3072, progress=False, plot=False, out_dir=str(tmp_path))
    on = hj.train(hj.Args(group_starts=2, **kw))["updates"]
    off = hj.train(hj.Args(group_starts=0, **kw))["updates"]
    assert on and off
    assert max(u["num_groups"] for u in on) > 1
    assert all(u["num_groups"] == 1 for u in off)


def _assert_prev_is_the_previous_action(prev, actions, lengths) -> int:
    """Within each episode prev[t] == actions[t-1]; at its first step prev == -1."""
    ends = np.cumsum(lengths)
    checked = 0
    for lo, hi in zip(ends - lengths, ends, strict=True):
        assert prev[lo] == -1
        np.testing.assert_array_equal(prev[lo + 1 : hi], actions[lo : hi - 1])
        checked += hi - lo - 1
    return checked


class _AlwaysStuck:
    """A StuckExploration stand-in that keeps the repeat probability on at ``rho``."""

    def __init__(self, rho: float) -> None:
        self.value = rho
        self.repeat_logit = float(np.log(rho / (1 - rho)))

    def update(self, returns) -> float:
        return self.value


def test_sticky_policy_sees_each_episodes_own_previous_action(tmp_path, monkeypatch):
    hc = example("haepo_cartpole.py")
    seen: list[int] = []
    real = hc.haepo_trajectory_loss

    def spy(traj, terms, **kw):
        prev, act = traj.steps["prev"].numpy(), traj.steps["actions"].numpy()
        seen.append(_assert_prev_is_the_previous_action(prev, act, traj.lengths))
        np.testing.assert_allclose(traj.steps["repeat_logit"].numpy(), np.log(3.0), rtol=1e-6)
        return real(traj, terms, **kw)

    monkeypatch.setattr(hc, "haepo_trajectory_loss", spy)
    monkeypatch.setattr(hc, "StuckExploration", _AlwaysStuck)
    args = hc.Args(seed=0, total_timesteps=4096, progress=False, plot=False,
                   out_dir=str(tmp_path))  # fmt: skip
    ups = hc.train(args)["updates"]
    assert ups and sum(seen) > 1000
    assert all(np.isfinite(u["loss"]) and u["repeat"] == 0.75 for u in ups)


def test_jax_sticky_policy_sees_each_episodes_own_previous_action(tmp_path, monkeypatch):
    pytest.importorskip("flax")
    pytest.importorskip("optax")
    hj = example("haepo_cartpole_jax.py")
    seen: list[int] = []
    real = hj.TrajectoryBuilder.build

    def spy(self, *a, **kw):
        traj = real(self, *a, **kw)
        if traj.num_trajectories:  # the policy input ends with (previous action, repeat logit)
            obs = np.asarray(traj.steps["obs"])
            act = np.asarray(traj.steps["actions"])
            seen.append(_assert_prev_is_the_previous_action(obs[:, -2], act, traj.lengths))
            np.testing.assert_allclose(obs[:, -1], np.log(3.0), rtol=1e-6)
        return traj

    monkeypatch.setattr(hj.TrajectoryBuilder, "build", spy)
    monkeypatch.setattr(hj, "StuckExploration", _AlwaysStuck)
    args = hj.Args(seed=0, total_timesteps=3072, progress=False, plot=False,
                   out_dir=str(tmp_path))  # fmt: skip
    ups = hj.train(args)["updates"]
    assert ups and sum(seen) > 1000
    assert all(np.isfinite(u["loss"]) and u["repeat"] == 0.75 for u in ups)


@pytest.mark.parametrize("rho", [0.95, None])
def test_sticky_exploration_changes_what_the_rollouts_do(tmp_path, monkeypatch, rho):
    # A policy that mostly repeats its action topples CartPole's pole sooner than a dithering
    # one: its episodes are shorter (random play lasts ~22 steps on average).
    hc = example("haepo_cartpole.py")
    if rho is not None:
        monkeypatch.setattr(hc, "StuckExploration", lambda r: _AlwaysStuck(rho))
    args = hc.Args(seed=0, total_timesteps=2048, progress=False, plot=False,
                   out_dir=str(tmp_path))  # fmt: skip
    lengths = hc.train(args)["episodes"][:, 2]
    assert (lengths.mean() < 15) if rho else (lengths.mean() > 17)


@pytest.mark.parametrize("script", ["haepo_cartpole.py", "haepo_cartpole_jax.py"])
def test_stuck_exploration_switches_on_only_when_every_episode_fails(tmp_path, script):
    if script.endswith("_jax.py"):
        pytest.importorskip("flax")
        pytest.importorskip("optax")
    mod = example(script)
    kw = dict(progress=False, plot=False, out_dir=str(tmp_path))
    # Acrobot seed 11: every random episode of the first batches times out at -500
    ups = mod.train(mod.Args(env_id="Acrobot-v1", seed=11, total_timesteps=12_000, **kw))
    ups = ups["updates"]
    assert ups[0]["repeat"] == 0.0 and ups[0]["weighted_return"] == pytest.approx(-500.0)
    assert ups[1]["repeat"] == 0.75  # the rollout after a stuck batch is sticky
    off = mod.train(mod.Args(env_id="Acrobot-v1", seed=11, total_timesteps=8_000,
                             stuck_repeat=0.0, **kw))["updates"]  # fmt: skip
    assert all(u["repeat"] == 0.0 for u in off)


def test_cartpole_never_turns_sticky(cartpole_run):
    _, res, _ = cartpole_run
    assert res["updates"] and all(u["repeat"] == 0.0 for u in res["updates"])


@pytest.mark.parametrize("script", ["haepo_cartpole.py", "haepo_cartpole_jax.py"])
@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), True])
def test_stuck_repeat_must_be_a_probability_below_one(tmp_path, script, bad):
    if script.endswith("_jax.py"):
        pytest.importorskip("flax")
    mod = example(script)
    args = mod.Args(progress=False, out_dir=str(tmp_path), stuck_repeat=bad)
    with pytest.raises(ValueError, match=r"--stuck-repeat: expected a probability in \[0, 1\)"):
        mod.train(args)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "script", ["haepo_cartpole.py", "haepo_pendulum.py", "haepo_cartpole_jax.py"]
)
def test_help_explains_every_option_with_its_default(script, capsys):
    if script.endswith("_jax.py"):
        pytest.importorskip("flax")
    mod = example(script)
    import dataclasses

    fields = [f.name for f in dataclasses.fields(mod.Args)]
    assert sorted(mod.HELP) == sorted(fields)  # no option without a text, no stale text
    with pytest.raises(SystemExit):
        mod.parse_args(["--help"])
    out = capsys.readouterr().out
    flat = "".join(out.split())  # argparse wraps lines, also at hyphens
    for name in fields:
        assert f"--{name.replace('_', '-')}" in out
        assert "".join(mod.HELP[name].split()) in flat
    target = "--target-kl TARGET_KL stop the epochs"
    assert target in " ".join(out.split())
    assert f"(default: {mod.Args().target_kl})" in " ".join(
        out.split()
    )  # entropy_coef / target_kl / ... show their defaults
