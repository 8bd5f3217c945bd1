"""PPO baseline on CartPole-v1 (torch), single file in CleanRL's manner, for gymnasium 1.x.

    python examples/cleanrl/ppo_cartpole.py
    python examples/cleanrl/ppo_cartpole.py --help

CleanRL's ``ppo.py`` algorithm and defaults (4 envs x 128 steps, GAE(0.99, 0.95), 4 epochs of
4 minibatches, clip 0.2, lr 2.5e-4 annealed, entropy 0.01), with the same actor network as
``haepo_cartpole.py`` plus a critic of the same shape, and the same env-step budget.

gymnasium 1.x autoreset: the vector env runs in the default NEXT_STEP mode, where the ``step``
after a done only resets the env (its action is ignored, its reward is 0). CleanRL's published
``ppo.py`` was written for same-step autoreset and mixes that reset transition into the batch;
here its ``dones[t]`` flag marks step ``t`` as the reset step, which is (a) not bootstrapped
across (the episode ended at ``t - 1``) and (b) masked out of the PPO loss. Episodic returns
come from ``RecordEpisodeStatistics`` (``info["episode"]``, no ``final_info`` in 1.x).
Like CleanRL, truncation is treated as termination (no value bootstrap at the time limit).
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
from haepo_adapters.cleanrl import BestSnapshot, evaluate_final_and_best, evaluate_policy, write_run
from torch import nn
from tqdm.auto import tqdm


@dataclass
class Args:
    exp_name: str = "ppo_cartpole"
    seed: int = 1
    env_id: str = "CartPole-v1"
    total_timesteps: int = 100_000
    learning_rate: float = 2.5e-4
    num_envs: int = 4
    num_steps: int = 128
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    norm_adv: bool = True
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    torch_threads: int = 1
    out_dir: str = "runs"
    tensorboard: bool = False
    plot: bool = True
    progress: bool = True
    moving_average: int = 20
    eval_episodes: int = 0  # after training: final and best policy on fixed starts (0: off)


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(Args):
        name = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):
            parser.add_argument(name, default=f.default, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(name, type=type(f.default), default=f.default)
    args = Args(**vars(parser.parse_args(argv)))
    if args.eval_episodes < 0:
        parser.error(f"--eval-episodes: expected an int >= 0, got {args.eval_episodes}")
    return args


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def mlp(obs_dim: int, out: int, hidden: int, out_std: float) -> nn.Sequential:
    return nn.Sequential(
        layer_init(nn.Linear(obs_dim, hidden)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden, hidden)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden, out), std=out_std),
    )


class Agent(nn.Module):
    """Actor (the same network as HAEPO's) and critic of the same shape."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.actor = mlp(obs_dim, n_actions, hidden, 0.01)
        self.critic = mlp(obs_dim, 1, hidden, 1.0)

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(
        self, x: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        probs = torch.distributions.Categorical(logits=self.actor(x))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


def evaluate(args: Args, params: dict[str, torch.Tensor], obs_dim: int, n: int) -> np.ndarray:
    """Returns of ``args.eval_episodes`` episodes of the actor with these parameters, on the
    fixed start states of ``haepo_adapters.cleanrl.evaluate_policy`` (the same as HAEPO's
    evaluation), actions sampled from a seeded generator."""
    agent = Agent(obs_dim, n, args.hidden)
    agent.load_state_dict(params)
    gen = torch.Generator().manual_seed(args.seed)

    def policy(obs: np.ndarray) -> int:
        with torch.no_grad():
            probs = torch.softmax(agent.actor(torch.as_tensor(obs, dtype=torch.float32)), -1)
        return int(torch.multinomial(probs, 1, generator=gen))

    env = gym.make(args.env_id)
    try:
        return evaluate_policy(env, policy, episodes=args.eval_episodes)
    finally:
        env.close()


def make_envs(args: Args) -> gym.vector.VectorEnv:
    envs = gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="sync")
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def train(args: Args) -> dict[str, object]:
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    torch.distributions.Distribution.set_default_validate_args(False)  # speed, as CleanRL's jax
    run_name = f"{args.exp_name}__{args.seed}__{int(time.time())}"
    out = Path(args.out_dir) / run_name
    out.mkdir(parents=True, exist_ok=True)
    writer = None
    if args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out))

    envs = make_envs(args)
    obs_dim = envs.single_observation_space.shape[0]
    agent = Agent(obs_dim, envs.single_action_space.n, args.hidden)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    s, e = args.num_steps, args.num_envs
    obs = torch.zeros((s, e, obs_dim))
    actions = torch.zeros((s, e), dtype=torch.int64)
    logprobs = torch.zeros((s, e))
    rewards = torch.zeros((s, e))
    dones = torch.zeros((s, e))
    values = torch.zeros((s, e))

    episodes: list[tuple[int, float, int]] = []
    updates: list[dict[str, float]] = []
    best = BestSnapshot(args.moving_average)  # the policy at its best moving average
    global_step = 0
    start = time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    next_obs = torch.as_tensor(next_obs, dtype=torch.float32)
    next_done = torch.zeros(e)
    batch_size = s * e
    minibatch_size = batch_size // args.num_minibatches
    num_updates = max(args.total_timesteps // batch_size, 1)
    bar = tqdm(total=num_updates * batch_size, disable=not args.progress, unit="step", desc="PPO")
    for update in range(1, num_updates + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (update - 1.0) / num_updates) * (
                args.learning_rate
            )
        for step in range(s):
            global_step += e
            obs[step] = next_obs
            dones[step] = next_done  # NEXT_STEP: 1 marks this step as the env's reset step
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
            values[step] = value.flatten()
            actions[step], logprobs[step] = action, logprob
            next_obs, reward, term, trunc, info = envs.step(action.numpy())
            rewards[step] = torch.as_tensor(reward, dtype=torch.float32)
            next_obs = torch.as_tensor(next_obs, dtype=torch.float32)
            next_done = torch.as_tensor(np.logical_or(term, trunc), dtype=torch.float32)
            if "episode" in info:
                for i in np.flatnonzero(info["_episode"]):
                    ret = float(info["episode"]["r"][i])
                    episodes.append((global_step, ret, int(info["episode"]["l"][i])))
                    if writer is not None:
                        writer.add_scalar("charts/episodic_return", ret, global_step)
        bar.update(batch_size)
        if args.eval_episodes:  # the policy that collected this batch, before the update
            best.offer([r for _, r, _ in episodes], lambda: copy.deepcopy(agent.state_dict()))

        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(s)):
                # Transition t ends its episode when the *next* step is a reset step.
                if t == s - 1:
                    nextnonterminal = 1.0 - next_done
                    nextvalues = next_value
                else:
                    nextnonterminal = 1.0 - dones[t + 1]
                    nextvalues = values[t + 1]
                delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
                advantages[t] = lastgaelam
            returns = advantages + values

        valid = (dones == 0).reshape(-1)  # reset steps belong to no episode: out of the loss
        b_obs = obs.reshape(-1, obs_dim)
        b_logprobs, b_actions = logprobs.reshape(-1), actions.reshape(-1)
        b_adv, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)
        b_inds = np.arange(batch_size)
        clipfracs = []
        for _ in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for lo in range(0, batch_size, minibatch_size):
                mb = torch.as_tensor(b_inds[lo : lo + minibatch_size])
                mb = mb[valid[mb]]
                if len(mb) < 2:
                    continue
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                    b_obs[mb], b_actions[mb]
                )
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())
                mb_adv = b_adv[mb]
                if args.norm_adv:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(
                    -mb_adv * ratio,
                    -mb_adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef),
                ).mean()
                newvalue = newvalue.view(-1)
                if args.clip_vloss:
                    v_unclipped = (newvalue - b_returns[mb]) ** 2
                    v_clipped = b_values[mb] + torch.clamp(
                        newvalue - b_values[mb], -args.clip_coef, args.clip_coef
                    )
                    v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - b_returns[mb]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb]) ** 2).mean()
                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
        row = {
            "update": update,
            "global_step": global_step,
            "approx_kl": float(approx_kl),
            "clipfrac": float(np.mean(clipfracs)) if clipfracs else float("nan"),
            "entropy": float(entropy_loss.detach()),
            "value_loss": float(v_loss.detach()),
        }
        updates.append(row)
        if writer is not None:
            for k, v in row.items():
                writer.add_scalar(f"losses/{k}", v, global_step)
        if episodes:
            ma = float(np.mean([r for _, r, _ in episodes[-args.moving_average :]]))
            bar.set_postfix(ma_return=f"{ma:.1f}")
    bar.close()
    envs.close()
    wall = time.time() - start
    evals: dict[str, np.ndarray] = {}
    if args.eval_episodes:
        n_actions = int(envs.single_action_space.n)
        evals, summary = evaluate_final_and_best(
            lambda s: evaluate(args, s, obs_dim, n_actions), copy.deepcopy(agent.state_dict()), best
        )
        print(summary)

    ep, final_ma = write_run(
        out,
        episodes,
        updates,
        window=args.moving_average,
        plot=args.plot,
        title=f"PPO {args.env_id}",
    )
    if writer is not None:
        writer.close()
    return {
        "run_dir": str(out),
        "episodes": ep,
        "updates": updates,
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
