"""HAEPO on Pendulum-v1 (torch, continuous actions), single file in CleanRL's manner.

    python examples/cleanrl/haepo_pendulum.py
    python examples/cleanrl/haepo_pendulum.py --help

The policy is CleanRL's continuous-action actor: a 64-64 tanh MLP giving the mean of a
diagonal Gaussian with a state-independent ``log_std`` parameter. Per-step log-densities
are summed over action dimensions (:func:`haepo_adapters.cleanrl.gaussian_terms`), the entropy
and the KL to the previous policy are closed-form. Each update collects ``num_steps`` steps
from ``num_envs`` envs (gymnasium 1.x, NEXT_STEP autoreset), cuts whole episodes (Pendulum
episodes are always 200 steps, ended by truncation; unfinished ones are carried over), and takes
``update_epochs`` full-batch Adam steps on the HAEPO loss. Observations are normalized with
gymnasium's ``NormalizeObservation`` (as CleanRL's PPO does); actions are clipped by the env
wrapper, log-densities use the unclipped sample.

Writes ``runs/<run_name>/metrics.csv``, ``updates.csv`` and ``curve.png``; prints the final
20-episode moving-average return.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from haepo_adapters.cleanrl import (
    ReferencePolicy,
    TrajectoryBuilder,
    gaussian_terms,
    haepo_trajectory_loss,
)
from torch import nn
from tqdm.auto import tqdm


@dataclass
class Args:
    exp_name: str = "haepo_pendulum"
    seed: int = 1
    env_id: str = "Pendulum-v1"
    total_timesteps: int = 100_000
    num_envs: int = 16
    num_steps: int = 256
    learning_rate: float = 3e-3
    update_epochs: int = 4
    entropy_coef: float = 0.0
    kl_coef: float = 0.1
    temperature: float = 1.0
    length_normalize: bool = True
    min_episodes: int = 2
    hidden: int = 64
    torch_threads: int = 1
    out_dir: str = "runs"
    tensorboard: bool = False
    plot: bool = True
    progress: bool = True
    moving_average: int = 20


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(Args):
        name = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):
            parser.add_argument(name, default=f.default, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(name, type=type(f.default), default=f.default)
    return Args(**vars(parser.parse_args(argv)))


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Actor(nn.Module):
    """CleanRL's continuous actor: obs -> 64 tanh -> 64 tanh -> mean, and a free ``log_std``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, act_dim), std=0.01),
        )
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(obs), self.log_std


def make_envs(args: Args) -> gym.vector.VectorEnv:
    # gymnasium 1.x default autoreset is NEXT_STEP: the step after a done is a reset step
    # (action ignored, reward 0); TrajectoryBuilder(autoreset="next_step") skips it, and
    # RecordEpisodeStatistics reports each finished episode's return in info["episode"].
    envs = gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="sync")
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)  # raw returns, innermost
    envs = gym.wrappers.vector.ClipAction(envs)
    return gym.wrappers.vector.NormalizeObservation(envs)


def moving_average(x: np.ndarray, k: int) -> np.ndarray:
    """Trailing mean over the last ``k`` entries (fewer at the start)."""
    c = np.cumsum(np.insert(np.asarray(x, dtype=np.float64), 0, 0.0))
    n = np.arange(1, len(x) + 1)
    lo = np.maximum(n - k, 0)
    return (c[n] - c[lo]) / (n - lo)


def plot_curve(path: Path, steps: np.ndarray, returns: np.ndarray, k: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, returns, ".", ms=2, alpha=0.3, label="episode return")
    ax.plot(steps, moving_average(returns, k), lw=2, label=f"{k}-episode moving average")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train(args: Args) -> dict[str, object]:
    """Train and return the curves: episode (step, return) pairs and per-update diagnostics."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    run_name = f"{args.exp_name}__{args.seed}__{int(time.time())}"
    out = Path(args.out_dir) / run_name
    out.mkdir(parents=True, exist_ok=True)
    writer = None
    if args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out))
        writer.add_text("hyperparameters", str(dataclasses.asdict(args)))

    envs = make_envs(args)
    obs_dim = envs.single_observation_space.shape[0]
    act_dim = envs.single_action_space.shape[0]
    actor = Actor(obs_dim, act_dim, args.hidden)
    reference = ReferencePolicy(actor, refresh_every=1)
    optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate)
    builder = TrajectoryBuilder(autoreset="next_step", incomplete="carry")

    obs_buf = torch.zeros((args.num_steps, args.num_envs, obs_dim))
    act_buf = torch.zeros((args.num_steps, args.num_envs, act_dim))
    rew_buf = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
    term_buf = np.zeros((args.num_steps, args.num_envs), dtype=bool)
    trunc_buf = np.zeros((args.num_steps, args.num_envs), dtype=bool)

    episodes: list[tuple[int, float, int]] = []  # (global step, return, length)
    updates: list[dict[str, float]] = []
    next_obs, _ = envs.reset(seed=args.seed)
    next_obs = torch.as_tensor(next_obs, dtype=torch.float32)
    global_step = 0
    start = time.time()
    batch = args.num_envs * args.num_steps
    num_updates = max(args.total_timesteps // batch, 1)
    bar = tqdm(total=num_updates * batch, disable=not args.progress, unit="step", desc="HAEPO")
    for update in range(1, num_updates + 1):
        for step in range(args.num_steps):
            global_step += args.num_envs
            obs_buf[step] = next_obs
            with torch.no_grad():
                mean, log_std = actor(next_obs)
                action = mean + log_std.exp() * torch.randn_like(mean)
            act_buf[step] = action
            next_obs, reward, term, trunc, info = envs.step(action.numpy())
            rew_buf[step], term_buf[step], trunc_buf[step] = reward, term, trunc
            next_obs = torch.as_tensor(next_obs, dtype=torch.float32)
            if "episode" in info:
                for i in np.flatnonzero(info["_episode"]):
                    ret = float(info["episode"]["r"][i])
                    episodes.append((global_step, ret, int(info["episode"]["l"][i])))
                    if writer is not None:
                        writer.add_scalar("charts/episodic_return", ret, global_step)
        bar.update(batch)

        traj = builder.build(
            rew_buf, terminated=term_buf, truncated=trunc_buf, obs=obs_buf, actions=act_buf
        )
        row = {"update": update, "global_step": global_step, "episodes": traj.num_trajectories}
        if traj.num_trajectories >= args.min_episodes:
            obs_b, act_b = traj.steps["obs"], traj.steps["actions"]
            ref_mean, ref_log_std = reference(obs_b)
            for _ in range(args.update_epochs):
                mean, log_std = actor(obs_b)
                terms = gaussian_terms(mean, log_std, act_b, ref_mean, ref_log_std)
                res = haepo_trajectory_loss(
                    traj,
                    terms,
                    entropy_coef=args.entropy_coef,
                    kl_coef=args.kl_coef,
                    temperature=args.temperature,
                    length_normalize=args.length_normalize,
                )
                optimizer.zero_grad()
                res.loss.backward()
                optimizer.step()
            reference.step()
            row.update({k: float(v) for k, v in res.stats.items()})
            row["loss"] = float(res.loss.detach())
        updates.append(row)
        if writer is not None:
            for k, v in row.items():
                writer.add_scalar(f"haepo/{k}", v, global_step)
        if episodes:
            ma = float(np.mean([r for _, r, _ in episodes[-args.moving_average :]]))
            # a rollout with < 2 finished episodes makes no update: show "-" rather than NaN
            ess = f"{row['ess']:.1f}" if "ess" in row else "-"
            bar.set_postfix(ma_return=f"{ma:.1f}", ess=ess)
    bar.close()
    envs.close()
    wall = time.time() - start

    ep = np.array(episodes, dtype=np.float64).reshape(-1, 3)
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "global_step", "episodic_return", "episodic_length"])
        for s, r, n in episodes:
            w.writerow(["episode", s, r, n])
    keys = sorted({k for row in updates for k in row})
    with open(out / "updates.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(updates)
    final_ma = float(np.mean(ep[-args.moving_average :, 1])) if len(ep) else float("nan")
    if args.plot and len(ep):
        plot_curve(out / "curve.png", ep[:, 0], ep[:, 1], args.moving_average, "HAEPO Pendulum-v1")
    if writer is not None:
        writer.close()
    return {
        "run_dir": str(out),
        "episodes": ep,
        "updates": updates,
        "final_moving_average": final_ma,
        "wall_time": wall,
        "global_step": global_step,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    res = train(args)
    print(f"run dir: {res['run_dir']}")
    print(
        f"final {args.moving_average}-episode moving-average return: "
        f"{res['final_moving_average']:.1f} after {res['global_step']} env steps "
        f"in {res['wall_time']:.0f} s"
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
