"""HAEPO on CartPole-v1 (torch, discrete actions), single file in CleanRL's manner.

    python examples/cleanrl/haepo_cartpole.py            # defaults: ~1-2 min on 2 CPU cores
    python examples/cleanrl/haepo_cartpole.py --help

Each update steps ``num_envs`` envs (gymnasium 1.x, default NEXT_STEP autoreset) ``num_steps``
at a time until at least ``min_episodes`` episodes have finished, cuts the steps into whole
episodes with :class:`haepo_adapters.cleanrl.TrajectoryBuilder` (unfinished episodes are
carried into the next batch), and takes up to ``update_epochs`` full-batch Adam steps on the
HAEPO loss: a Plackett-Luce softmax over the episodes' summed log-probs weighting their
z-scored returns, plus an entropy bonus and the exact KL to the previous policy (refreshed
after every update).

Stabilizers around the objective (they go beyond the paper; docs/cleanrl.md): batches counted
in episodes (``min_episodes``), early stop of the epochs once the KL to the previous policy
exceeds ``target_kl``, gradient-norm clipping (``max_grad_norm``), linear learning-rate
annealing (``anneal_lr``), a learning rate steered by the KL each update moved the policy
(``adaptive_lr``: divided by 1.5 after an update that moved it more than ``target_kl``,
multiplied by 1.5 otherwise, within ``[learning_rate / 100, learning_rate]``), an
entropy bonus raised while the entropy is below ``entropy_floor * log(num_actions)``, and
sticky exploration while the rollouts are stuck (``stuck_repeat``): after a batch whose
returns are all equal and no better than any seen before (every Acrobot episode timing out),
the policy repeats its previous action with probability ``stuck_repeat``, and that
probability halves with every batch that carries a learning signal
(:class:`haepo_adapters.cleanrl.StuckExploration`; the policy's log-probs, entropy and KL are
those of that sticky mixture).
The script warns once (``CollapseWarning``) when the
entropy falls near 0 or when three updates in a row see all-equal returns. The same defaults
serve every discrete task: ``--env-id Acrobot-v1``, ``--env-id LunarLander-v3``.

Why these defaults: CartPole episodes last up to 500 steps, so the summed log-likelihoods
``L_k`` of a batch spread over hundreds of nats and a plain softmax puts all the weight on one
(the shortest) episode: the effective sample size (ESS) collapses to 1 and learning stalls.
``length_normalize`` (softmax over per-step mean log-probs) keeps the ESS close to the number
of episodes; see docs/cleanrl.md and the ablation in docs/benchmarks.md.

``--group-starts N`` (off by default; -1: all envs in one group) seeds every reset so that the
envs come in groups of N replaying one sequence of start states, and ranks each episode only
against the episodes of the same start (``group_ids``), as GRPO ranks the completions of one
prompt; an episode alone of its start in a batch is pooled with the batch's other lone ones.

Writes ``runs/<run_name>/metrics.csv`` (one row per finished episode), ``updates.csv`` (one
row per update), ``curve.png`` (return curve, with entropy and ESS under it), optionally
TensorBoard events (``--tensorboard``), and prints the final 20-episode moving-average return.
``--eval-episodes N`` then runs the final policy, and the policy of the update at which the
moving average was highest, on N fixed start states (the same for every run and method:
:func:`haepo_adapters.cleanrl.evaluate_policy`) and prints their mean returns.
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
    StuckExploration,
    TrajectoryBuilder,
    categorical_terms,
    evaluate_final_and_best,
    evaluate_policy,
    haepo_trajectory_loss,
    start_groups,
    sticky_logits,
    write_run,
)
from torch import nn
from tqdm.auto import tqdm


@dataclass
class Args:
    exp_name: str = "haepo_cartpole"
    seed: int = 1
    env_id: str = "CartPole-v1"
    total_timesteps: int = 100_000
    num_envs: int = 8
    num_steps: int = 128
    learning_rate: float = 1e-2
    anneal_lr: bool = True
    adaptive_lr: bool = True
    update_epochs: int = 4
    target_kl: float = 0.01
    max_grad_norm: float = 0.5
    entropy_coef: float = 0.01
    entropy_floor: float = 0.1
    kl_coef: float = 0.1
    temperature: float = 1.0
    length_normalize: bool = True
    min_episodes: int = 8
    group_starts: int = 0
    stuck_repeat: float = 0.75
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
    "entropy_floor": "entropy floor, a fraction of log(num_actions)",
    "kl_coef": "coefficient of the exact KL to the previous policy",
    "temperature": "temperature of the Plackett-Luce softmax over the episodes",
    "length_normalize": "softmax over per-step mean log-probs, not their sums",
    "min_episodes": "finished episodes per update, at least",
    "group_starts": "envs in groups of N replaying seeded starts, ranked per start (-1: all "
    "envs in one group; 0: off)",
    "stuck_repeat": "repeat probability of the sticky policy used while stuck (0: off)",
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
    r = args.stuck_repeat
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0.0 <= r < 1.0):
        raise ValueError(f"--stuck-repeat: expected a probability in [0, 1) (0: off), got {r!r}")
    if not (0.0 <= args.entropy_floor < 1.0):
        raise ValueError(
            f"--entropy-floor: expected a fraction of log(num_actions) in [0, 1), "
            f"got {args.entropy_floor!r}"
        )


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Actor(nn.Module):
    """CleanRL's PPO actor: obs -> 64 tanh -> 64 tanh -> logits (the PPO baseline uses it too).

    ``forward(obs, prev, repeat_logit)`` returns the log-probs of the sticky categorical of
    :func:`haepo_adapters.cleanrl.sticky_logits` instead: each step's previous action (``prev``,
    ``-1``: none) is repeated with probability ``sigmoid(repeat_logit)`` (``-inf``: never).
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden, n_actions), std=0.01),
        )

    def forward(
        self,
        obs: torch.Tensor,
        prev: torch.Tensor | None = None,
        repeat_logit: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = self.net(obs)
        if prev is None or repeat_logit is None or not bool(torch.isfinite(repeat_logit).any()):
            return logits  # never sticky here: the plain categorical, exactly
        return sticky_logits(logits, repeat_logit.to(logits.dtype), prev)


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


def group_size(args: Args) -> int:
    """Envs per start group: ``--group-starts``, all envs for -1, 0 when off."""
    return args.num_envs if args.group_starts == -1 else args.group_starts


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
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def evaluate(args: Args, params: dict[str, torch.Tensor], obs_dim: int, n: int) -> np.ndarray:
    """Returns of ``args.eval_episodes`` episodes of the policy with these parameters, from the
    fixed start states of :func:`haepo_adapters.cleanrl.evaluate_policy` (the same for every run
    and method), sampling the plain categorical (never sticky) from its own seeded generator."""
    actor = Actor(obs_dim, n, args.hidden)
    actor.load_state_dict(params)
    gen = torch.Generator().manual_seed(args.seed)

    def policy(obs: np.ndarray) -> int:
        with torch.no_grad():
            probs = torch.softmax(actor(torch.as_tensor(obs, dtype=torch.float32)), -1)
        return int(torch.multinomial(probs, 1, generator=gen))

    env = gym.make(args.env_id)
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
    n_actions = int(envs.single_action_space.n)
    actor = Actor(obs_dim, n_actions, args.hidden)
    reference = ReferencePolicy(actor, refresh_every=1)
    optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate)
    builder = TrajectoryBuilder(autoreset="next_step", incomplete="carry")
    # Stabilizers (docs/cleanrl.md): the entropy bonus rises while the entropy is below
    # entropy_floor * log(A); the monitor warns once on entropy collapse or all-equal returns.
    max_entropy = float(np.log(n_actions))
    ent_coef = AdaptiveCoefficient(
        args.entropy_coef,
        args.entropy_floor * max_entropy,
        mode="floor",
        max_value=max(100 * args.entropy_coef, 1e-3),
    )
    monitor = CollapseMonitor(entropy_threshold=0.01 * max_entropy, patience=3)
    # While every batch is stuck at one return no better than any seen (all Acrobot episodes
    # timing out), the policy repeats its previous action with probability stuck_repeat.
    explore = StuckExploration(args.stuck_repeat)
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
    # Each env's previous action, for the sticky policy: -1 on the first step of an episode
    # (and on the reset step after a done, whose action the env ignores).
    prev = torch.full((args.num_envs,), -1, dtype=torch.int64)
    reset_step = np.zeros(args.num_envs, dtype=bool)
    global_step = 0
    start = time.time()
    update = 0
    bar = tqdm(total=args.total_timesteps, disable=not args.progress, unit="step", desc="HAEPO")
    while global_step < args.total_timesteps:
        # A batch is counted in episodes: step the envs num_steps at a time until at least
        # min_episodes episodes have finished (unfinished ones are carried over), so an update
        # never rests on 2-3 long episodes.
        obs_l, act_l, rew_l, term_l, trunc_l, key_l, prev_l, rep_l = ([] for _ in range(8))
        finished = 0
        while global_step < args.total_timesteps and (
            len(obs_l) < args.num_steps or finished < args.min_episodes
        ):
            global_step += args.num_envs
            obs_l.append(next_obs)
            rep = torch.full((args.num_envs,), explore.repeat_logit)
            with torch.no_grad():
                logits = actor(next_obs, prev, rep)
            action = torch.distributions.Categorical(logits=logits).sample()
            act_l.append(action)
            prev_l.append(prev)
            rep_l.append(rep)
            key_l.append(start_key.copy())
            next_obs, reward, term, trunc, info = envs.step(action.numpy())
            start_key += (term | trunc).astype(np.int64)  # the next episode's start
            done = term | trunc
            prev = torch.where(torch.as_tensor(done | reset_step), -1, action)
            reset_step = done  # the next step of a done env is its reset step
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
            prev=torch.stack(prev_l),
            repeat_logit=torch.stack(rep_l),
        )
        if traj.num_trajectories < 2:  # only at the end of the budget
            continue
        if args.eval_episodes:  # the policy that collected this batch, before the update
            best.offer([r for _, r, _ in episodes], lambda: copy.deepcopy(actor.state_dict()))
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
        row = {
            "update": update,
            "global_step": global_step,
            "episodes": traj.num_trajectories,
        }
        obs_b, act_b = traj.steps["obs"], traj.steps["actions"]
        # each step's previous action and the repeat logit it was collected with
        sticky_b = traj.steps["prev"], traj.steps["repeat_logit"]
        with torch.no_grad():
            ref_logits = reference(obs_b, *sticky_b)
        epochs = 0
        for _ in range(args.update_epochs):
            terms = categorical_terms(actor(obs_b, *sticky_b), act_b, ref_logits)
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
            row["kl"] = float(
                categorical_terms(actor(obs_b, *sticky_b), act_b, ref_logits).kl.mean()
            )
        reference.step()
        row.update(epochs=epochs, entropy_coef=ent_coef.value, learning_rate=lr)
        row["repeat"] = explore.value  # of the rollout that ended with this update
        ent_coef.update(row["entropy"])
        if lr_ctl is not None:
            lr_ctl.update(row["kl"])
        monitor.update(entropy=row["entropy"], returns=traj.returns)
        explore.update(traj.returns)
        updates.append(row)
        if writer is not None:
            for k, v in row.items():
                writer.add_scalar(f"haepo/{k}", v, global_step)
        if episodes:
            ma = float(np.mean([r for _, r, _ in episodes[-args.moving_average :]]))
            bar.set_postfix(ma_return=f"{ma:.1f}", ess=f"{row['ess']:.1f}")
    bar.close()
    envs.close()
    wall = time.time() - start
    evals: dict[str, np.ndarray] = {}
    if args.eval_episodes:
        evals, summary = evaluate_final_and_best(
            lambda s: evaluate(args, s, obs_dim, n_actions), copy.deepcopy(actor.state_dict()), best
        )
        print(summary)

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
