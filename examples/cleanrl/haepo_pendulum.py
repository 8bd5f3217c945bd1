"""HAEPO on Pendulum-v1 (torch, continuous actions), single file in CleanRL's manner.

    python examples/cleanrl/haepo_pendulum.py
    python examples/cleanrl/haepo_pendulum.py --help

The policy is CleanRL's continuous-action actor: a 64-64 tanh MLP giving the mean of a
diagonal Gaussian with a state-independent ``log_std`` parameter, started at
``init_log_std`` = -0.7 (std 0.5; CleanRL starts at 0, std 1). An episode-level score moves
``log_std`` only a little in a short budget (a step's noise is diluted over the whole
episode), so the exploration noise the policy starts with is nearly the noise it ends with:
starting lower is what lets InvertedPendulum stay at 1000. Per-step log-densities
are summed over action dimensions (:func:`haepo_adapters.cleanrl.gaussian_terms`), the entropy
and the KL to the previous policy are closed-form. Each update collects ``num_steps`` steps
from ``num_envs`` envs (gymnasium 1.x, NEXT_STEP autoreset), cuts whole episodes (Pendulum
episodes are always 200 steps, ended by truncation; unfinished ones are carried over), and takes
``update_epochs`` full-batch Adam steps on the HAEPO loss. Observations are normalized with
gymnasium's ``NormalizeObservation`` (as CleanRL's PPO does); actions are clipped by the env
wrapper, log-densities use the unclipped sample.

The stabilizers of ``haepo_cartpole.py`` (batches of at least ``min_episodes`` episodes,
``target_kl`` early stop, ``max_grad_norm``, ``anneal_lr``, the KL-steered learning rate
``adaptive_lr``, an entropy bonus raised while the Gaussian entropy is below ``entropy_floor``
nats per action dimension) with the continuous defaults; the same defaults serve every
continuous task (``--env-id InvertedPendulum-v5``).

Grouped starts (``--group-starts -1``, the default: all envs in one group; ``N`` for groups
of N envs, 0 for off) seed every reset so that the envs of a group replay one sequence of
start states, and rank each episode only against the episodes of the same start
(``group_ids``), as GRPO ranks the completions of one prompt: the start's share of the return
(large on Pendulum) cancels. An episode whose group-mates finished in another batch is pooled
with the batch's other lone episodes (:func:`haepo_adapters.cleanrl.start_groups`) instead of
forming a group of one, which would give it no gradient.

Writes ``runs/<run_name>/metrics.csv``, ``updates.csv`` and ``curve.png``; prints the final
20-episode moving-average return. ``--eval-episodes N`` then runs the final policy, and the
policy of the update at which the moving average was highest, on N fixed start states (the
same for every run, seed and method: :func:`haepo_adapters.cleanrl.evaluate_policy`), so the
end of a run can be compared with its best on the same starts.
"""

from __future__ import annotations

import argparse
import copy
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
    AdaptiveCoefficient,
    BestSnapshot,
    CollapseMonitor,
    ReferencePolicy,
    TrajectoryBuilder,
    evaluate_final_and_best,
    evaluate_policy,
    gaussian_terms,
    haepo_trajectory_loss,
    start_groups,
    write_run,
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
    anneal_lr: bool = True
    adaptive_lr: bool = True
    update_epochs: int = 4
    target_kl: float = 0.02
    max_grad_norm: float = 0.5
    entropy_coef: float = 0.001
    entropy_floor: float = -0.9
    kl_coef: float = 0.1
    temperature: float = 1.0
    length_normalize: bool = True
    min_episodes: int = 8
    group_starts: int = -1
    init_log_std: float = -0.7
    hidden: int = 64
    torch_threads: int = 1
    out_dir: str = "runs"
    tensorboard: bool = False
    plot: bool = True
    progress: bool = True
    moving_average: int = 20
    eval_episodes: int = 0


HELP = {  # --help text of each option
    "exp_name": "run name: the run directory is <out-dir>/<exp-name>__<seed>__<time>",
    "seed": "seed of the policy, the sampling and the envs",
    "env_id": "gymnasium env id",
    "total_timesteps": "env steps in all (summed over the envs)",
    "num_envs": "envs stepped side by side",
    "num_steps": "steps per env per rollout chunk",
    "learning_rate": "Adam learning rate (the ceiling of the KL-steered rate)",
    "anneal_lr": "anneal the learning rate linearly to ~0 over total-timesteps",
    "adaptive_lr": "steer the learning rate by the KL each update moved the policy",
    "update_epochs": "full-batch Adam steps per update, at most",
    "target_kl": "stop the epochs once the mean KL to the previous policy exceeds it (0: off)",
    "max_grad_norm": "clip the global gradient norm to it (0: off)",
    "entropy_coef": "entropy bonus coefficient (raised while under --entropy-floor)",
    "entropy_floor": "entropy floor in nats per action dimension",
    "kl_coef": "coefficient of the exact KL to the previous policy",
    "temperature": "temperature of the Plackett-Luce softmax over the episodes",
    "length_normalize": "softmax over per-step mean log-probs, not their sums",
    "min_episodes": "finished episodes per update, at least",
    "group_starts": "envs in groups of N replaying seeded starts, ranked per start (-1: all "
    "envs in one group; 0: off)",
    "init_log_std": "initial log standard deviation of the Gaussian policy (per dimension)",
    "hidden": "width of the two hidden layers",
    "torch_threads": "torch intra-op threads",
    "out_dir": "directory of the run directories",
    "tensorboard": "also write TensorBoard events",
    "plot": "write curve.png (return, entropy, ESS)",
    "progress": "show a tqdm progress bar",
    "moving_average": "episodes in the reported moving average",
    "eval_episodes": "after training, run the final policy and the policy at its best moving "
    "average on this many fixed start states, the same for every run (0: off)",
}


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,  # "(default: ...)" after each
    )
    for f in dataclasses.fields(Args):
        name, h = f"--{f.name.replace('_', '-')}", HELP[f.name]
        if isinstance(f.default, bool):
            parser.add_argument(
                name, default=f.default, action=argparse.BooleanOptionalAction, help=h
            )
        else:
            parser.add_argument(name, type=type(f.default), default=f.default, help=h)
    return Args(**vars(parser.parse_args(argv)))


def check_args(args: Args) -> None:
    """Refuse bad options before any env is made; each error names the option."""
    positive_ints = ("total_timesteps", "num_envs", "num_steps", "update_epochs", "hidden")
    for name in (*positive_ints, "torch_threads", "moving_average"):
        v = getattr(args, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an int >= 1, got {v!r}")
    e = args.eval_episodes
    if isinstance(e, bool) or not isinstance(e, int) or e < 0:
        raise ValueError(f"--eval-episodes: expected an int >= 0, got {e!r}")
    if (
        isinstance(args.min_episodes, bool)
        or not isinstance(args.min_episodes, int)
        or (args.min_episodes < 2)
    ):
        # one episode alone has z-scored return 0: no policy gradient
        raise ValueError(f"--min-episodes: expected an int >= 2, got {args.min_episodes!r}")
    g = args.group_starts
    if (
        isinstance(g, bool)
        or not isinstance(g, int)
        or g == 1
        or g < -1
        or (g > 0 and args.num_envs % g)
    ):
        raise ValueError(
            f"--group-starts: expected -1 (all envs in one group), 0 (off) or an int >= 2 "
            f"dividing --num-envs = {args.num_envs}, got {g!r}"
        )
    for name, lo, strict in (
        ("learning_rate", 0.0, True),
        ("target_kl", 0.0, False),
        ("max_grad_norm", 0.0, False),
        ("entropy_coef", 0.0, False),
        ("kl_coef", 0.0, False),
        ("temperature", 0.0, True),
    ):
        v = getattr(args, name)
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not np.isfinite(v)
            or (v <= lo if strict else v < lo)
        ):
            op = ">" if strict else ">="
            raise ValueError(
                f"--{name.replace('_', '-')}: expected a finite number {op} {lo}, got {v!r}"
            )
    if args.adaptive_lr and args.target_kl <= 0:
        raise ValueError(
            f"--adaptive-lr: needs --target-kl > 0 (the KL it steers to), got {args.target_kl!r}"
        )
    for name, what in (("entropy_floor", "nats per action dimension"), ("init_log_std", "nats")):
        v = getattr(args, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ValueError(
                f"--{name.replace('_', '-')}: expected a finite number ({what}), got {v!r}"
            )


def group_size(args: Args) -> int:
    """Envs per start group: ``--group-starts``, all envs for -1, 0 when off."""
    return args.num_envs if args.group_starts == -1 else args.group_starts


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Actor(nn.Module):
    """CleanRL's continuous actor: obs -> 64 tanh -> 64 tanh -> mean, and a free ``log_std``."""

    def __init__(
        self, obs_dim: int, act_dim: int, hidden: int = 64, init_log_std: float = 0.0
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, act_dim), std=0.01),
        )
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(obs), self.log_std


class GroupedStarts(gym.Wrapper):
    """Seeds every reset: episode ``k`` of each env of group ``group`` starts from one state.

    The seed of episode ``k`` is drawn from ``SeedSequence([seed, group, k])``, so the envs of a
    group replay the same sequence of start states while their actions differ (the policy
    samples them). HAEPO then ranks episodes against others from the same start, as GRPO ranks
    completions of one prompt: the start state's share of the return cancels in the group's
    z-scored returns.
    """

    def __init__(self, env: gym.Env, seed: int, group: int) -> None:
        super().__init__(env)
        self.base, self.group, self.episode = seed, group, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        ss = np.random.SeedSequence([self.base, self.group, self.episode])
        self.episode += 1
        return self.env.reset(seed=int(ss.generate_state(1)[0]), options=options)


def make_envs(args: Args) -> gym.vector.VectorEnv:
    # gymnasium 1.x default autoreset is NEXT_STEP: the step after a done is a reset step
    # (action ignored, reward 0); TrajectoryBuilder(autoreset="next_step") skips it, and
    # RecordEpisodeStatistics reports each finished episode's return in info["episode"].
    if args.group_starts:
        g = group_size(args)
        fns = [
            lambda i=i: GroupedStarts(gym.make(args.env_id), args.seed, i // g)
            for i in range(args.num_envs)
        ]
        envs = gym.vector.SyncVectorEnv(fns)
    else:
        envs = gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="sync")
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)  # raw returns, innermost
    envs = gym.wrappers.vector.ClipAction(envs)
    return gym.wrappers.vector.NormalizeObservation(envs)


Snapshot = tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray, float]


def snapshot(actor: Actor, envs: gym.vector.VectorEnv) -> Snapshot:
    """The policy as it acts now: its parameters and the frozen observation statistics."""
    rms = envs.obs_rms
    return copy.deepcopy(actor.state_dict()), rms.mean.copy(), rms.var.copy(), envs.epsilon


def evaluate(args: Args, state: Snapshot, obs_dim: int, act_dim: int) -> np.ndarray:
    """Returns of ``args.eval_episodes`` episodes of a snapshot, from the fixed start states of
    :func:`haepo_adapters.cleanrl.evaluate_policy` (the same for every run and method),
    sampling the Gaussian policy as in training, from its own seeded generator."""
    params, mu, var, eps = state
    actor = Actor(obs_dim, act_dim, args.hidden)
    actor.load_state_dict(params)
    gen = torch.Generator().manual_seed(args.seed)

    def policy(obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(((obs - mu) / np.sqrt(var + eps))[None], dtype=torch.float32)
        with torch.no_grad():
            mean, log_std = actor(x)
            action = mean + log_std.exp() * torch.randn(mean.shape, generator=gen)
        return action[0].numpy()

    env = gym.wrappers.ClipAction(gym.make(args.env_id))
    try:
        return evaluate_policy(env, policy, episodes=args.eval_episodes)
    finally:
        env.close()


def train(args: Args) -> dict[str, object]:
    """Train and return the curves: episode (step, return) pairs and per-update diagnostics."""
    check_args(args)
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
    actor = Actor(obs_dim, act_dim, args.hidden, args.init_log_std)
    reference = ReferencePolicy(actor, refresh_every=1)
    optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate)
    builder = TrajectoryBuilder(autoreset="next_step", incomplete="carry")
    # Stabilizers (docs/cleanrl.md): the entropy bonus rises while the Gaussian entropy is
    # below entropy_floor nats per action dimension; the monitor warns once when the policy's
    # std falls under 0.01 in every dimension, or on all-equal returns.
    ent_coef = AdaptiveCoefficient(
        args.entropy_coef,
        args.entropy_floor * act_dim,
        mode="floor",
        max_value=max(100 * args.entropy_coef, 1e-3),
    )
    std_001 = 0.5 * (1.0 + np.log(2 * np.pi)) + np.log(0.01)
    monitor = CollapseMonitor(entropy_threshold=float(std_001 * act_dim), patience=3)
    # KL-steered learning rate, as in haepo_cartpole.py: /1.5 after an update that moved the
    # policy more than target_kl, x1.5 otherwise, within [lr/100, lr].
    lr_ctl = None
    if args.adaptive_lr:
        lr_ctl = AdaptiveCoefficient(
            args.learning_rate,
            args.target_kl,
            mode="floor",
            min_value=args.learning_rate / 100,
            max_value=args.learning_rate,
        )

    episodes: list[tuple[int, float, int]] = []  # (global step, return, length)
    updates: list[dict[str, float]] = []
    best = BestSnapshot(args.moving_average)  # the policy at its best moving average
    next_obs, _ = envs.reset(seed=args.seed)
    # Which start each step's episode had: (group, episode index) packed in one int64; the
    # episodes of one start form one HAEPO group under --group-starts.
    group_of_env = np.arange(args.num_envs) // max(group_size(args), 1)
    start_key = group_of_env.astype(np.int64) << 32
    next_obs = torch.as_tensor(next_obs, dtype=torch.float32)
    global_step = 0
    start = time.time()
    update = 0
    bar = tqdm(total=args.total_timesteps, disable=not args.progress, unit="step", desc="HAEPO")
    while global_step < args.total_timesteps:
        # A batch is counted in episodes: step the envs num_steps at a time until at least
        # min_episodes episodes have finished (unfinished ones are carried over), so an update
        # never rests on 2-3 long episodes.
        obs_l, act_l, rew_l, term_l, trunc_l, key_l = [], [], [], [], [], []
        finished = 0
        while global_step < args.total_timesteps and (
            len(obs_l) < args.num_steps or finished < args.min_episodes
        ):
            global_step += args.num_envs
            obs_l.append(next_obs)
            with torch.no_grad():
                mean, log_std = actor(next_obs)
                action = mean + log_std.exp() * torch.randn_like(mean)
            act_l.append(action)
            key_l.append(start_key.copy())
            next_obs, reward, term, trunc, info = envs.step(action.numpy())
            start_key += (term | trunc).astype(np.int64)  # the next episode's start
            rew_l.append(reward)
            term_l.append(term)
            trunc_l.append(trunc)
            finished += int(np.sum(term | trunc))
            next_obs = torch.as_tensor(next_obs, dtype=torch.float32)
            if "episode" in info:
                for i in np.flatnonzero(info["_episode"]):
                    ret = float(info["episode"]["r"][i])
                    episodes.append((global_step, ret, int(info["episode"]["l"][i])))
                    if writer is not None:
                        writer.add_scalar("charts/episodic_return", ret, global_step)
            bar.update(args.num_envs)

        traj = builder.build(
            np.asarray(rew_l, dtype=np.float32),
            terminated=np.asarray(term_l),
            truncated=np.asarray(trunc_l),
            obs=torch.stack(obs_l),
            actions=torch.stack(act_l),
            start=torch.as_tensor(np.asarray(key_l)),
        )
        if traj.num_trajectories < 2:  # only at the end of the budget
            continue
        if args.eval_episodes:  # the policy that collected this batch, before the update
            best.offer([r for _, r, _ in episodes], lambda: snapshot(actor, envs))
        group_ids = None
        if args.group_starts:
            lengths = np.asarray(traj.lengths)
            first = np.cumsum(lengths) - lengths  # each episode's first step
            # one group per start; an episode alone of its start here is pooled (start_groups)
            group_ids = start_groups(traj.steps["start"].numpy()[first])
        update += 1
        lr = args.learning_rate if lr_ctl is None else lr_ctl.value
        if args.anneal_lr:
            lr *= max(1.0 - global_step / args.total_timesteps, 0.0) + 1e-3
        optimizer.param_groups[0]["lr"] = lr
        row = {"update": update, "global_step": global_step, "episodes": traj.num_trajectories}
        obs_b, act_b = traj.steps["obs"], traj.steps["actions"]
        ref_mean, ref_log_std = reference(obs_b)
        epochs = 0
        for _ in range(args.update_epochs):
            mean, log_std = actor(obs_b)
            terms = gaussian_terms(mean, log_std, act_b, ref_mean, ref_log_std)
            res = haepo_trajectory_loss(
                traj,
                terms,
                entropy_coef=ent_coef.value,
                kl_coef=args.kl_coef,
                temperature=args.temperature,
                length_normalize=args.length_normalize,
                group_ids=None if group_ids is None else torch.as_tensor(group_ids),
            )
            # Trust region (CleanRL's target_kl): stop the epochs once the policy has moved
            # target_kl (exact mean KL to the policy that collected the batch) away.
            if args.target_kl > 0 and epochs > 0 and float(res.stats["kl"]) > args.target_kl:
                break
            if epochs == 0:
                row.update({k: float(v) for k, v in res.stats.items()})
                row["loss"] = float(res.loss.detach())
            optimizer.zero_grad()
            res.loss.backward()
            if args.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(actor.parameters(), args.max_grad_norm)
            optimizer.step()
            epochs += 1
        with torch.no_grad():  # how far this update moved the policy (exact mean KL)
            mean, log_std = actor(obs_b)
            kl = gaussian_terms(mean, log_std, act_b, ref_mean, ref_log_std).kl
            row["kl"] = float(kl.mean())
        reference.step()
        row.update(epochs=epochs, entropy_coef=ent_coef.value, learning_rate=lr)
        ent_coef.update(row["entropy"])
        if lr_ctl is not None:
            lr_ctl.update(row["kl"])
        monitor.update(entropy=row["entropy"], returns=traj.returns)
        updates.append(row)
        if writer is not None:
            for k, v in row.items():
                writer.add_scalar(f"haepo/{k}", v, global_step)
        if episodes:
            ma = float(np.mean([r for _, r, _ in episodes[-args.moving_average :]]))
            bar.set_postfix(ma_return=f"{ma:.1f}", ess=f"{row['ess']:.1f}")
    bar.close()
    wall = time.time() - start
    evals: dict[str, np.ndarray] = {}
    if args.eval_episodes:
        evals, summary = evaluate_final_and_best(
            lambda s: evaluate(args, s, obs_dim, act_dim), snapshot(actor, envs), best
        )
        print(summary)
    envs.close()

    ep, final_ma = write_run(
        out,
        episodes,
        updates,
        window=args.moving_average,
        plot=args.plot,
        title=f"HAEPO {args.env_id}",
    )
    if writer is not None:
        writer.close()
    return {
        "run_dir": str(out),
        "episodes": ep,
        "updates": updates,
        "collapse_events": monitor.events,
        "final_moving_average": final_ma,
        "wall_time": wall,
        "global_step": global_step,
        **evals,
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
