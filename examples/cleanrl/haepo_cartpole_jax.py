"""HAEPO on CartPole-v1 in JAX (flax + optax), single file in CleanRL's manner.

    python examples/cleanrl/haepo_cartpole_jax.py
    python examples/cleanrl/haepo_cartpole_jax.py --help

The same algorithm and defaults as ``haepo_cartpole.py`` (the torch version), written the JAX
way: the policy is a ``flax.linen`` MLP, parameters are a pytree updated by ``optax.adam``, the
frozen reference is the previous parameter pytree (:class:`haepo_adapters.cleanrl.ReferenceParams`,
refreshed after every update), and the loss is the pure function returned by
:func:`haepo_adapters.cleanrl.make_haepo_loss_fn`, differentiated with ``jax.value_and_grad``.

Shapes, the JAX way: XLA compiles once per input shape, and a fixed-length rollout yields a
different number of episodes every time. So this script steps the envs in chunks of
``num_steps``, queues the completed episodes (unfinished ones are carried over by the
builder), and updates on exactly ``episodes_per_update`` episodes padded to the env's episode
limit (500 steps): the jitted update (``make_haepo_loss_fn(layout="padded")`` + optax) compiles
once. Episodes left in the queue after an update are used by the next one (collected by the
previous policy: HAEPO has no importance ratio, so this is a small, bounded staleness).

The stabilizers and their defaults are those of the torch script (docs/cleanrl.md): batches
of ``episodes_per_update`` episodes, epochs stopped inside the jitted update once the KL to the
previous policy exceeds ``target_kl`` (the remaining ones leave the parameters unchanged),
``max_grad_norm`` (``optax.clip_by_global_norm``), linear ``anneal_lr``, the KL-steered
learning rate ``adaptive_lr``, and the entropy bonus raised while the entropy is below
``entropy_floor * log(num_actions)`` (the rate and the bonus reach the jitted update as traced
scalars: no recompile), sticky exploration while the rollouts are stuck (``stuck_repeat``; the
previous action and the repeat logit ride in the policy's input, so they are traced too);
the same collapse warnings and ``curve.png`` panels.

``--group-starts N`` (off by default; -1: all envs in one group) seeds every reset so that the
envs come in groups of N replaying one sequence of start states, and ranks each episode only
against the episodes of the same start (``group_ids``), as GRPO ranks the completions of one
prompt; an episode alone of its start in a batch is pooled with the batch's other lone ones.

Writes ``runs/<run_name>/metrics.csv``, ``updates.csv`` and ``curve.png`` (return, entropy,
ESS); prints the final 20-episode moving-average return.
``--eval-episodes N`` then runs the final policy, and the policy of the update at which the
moving average was highest, on N fixed start states (the same for every run and method:
:func:`haepo_adapters.cleanrl.evaluate_policy`) and prints their mean returns.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import flax.linen as nn
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
from haepo_adapters.cleanrl import (
    AdaptiveCoefficient,
    BestSnapshot,
    CollapseMonitor,
    ReferenceParams,
    StuckExploration,
    TrajectoryBuilder,
    evaluate_final_and_best,
    evaluate_policy,
    make_haepo_loss_fn,
    start_groups,
    sticky_logits,
    write_run,
)
from tqdm.auto import tqdm


@dataclass
class Args:
    exp_name: str = "haepo_cartpole_jax"
    seed: int = 1
    env_id: str = "CartPole-v1"
    total_timesteps: int = 100_000
    num_envs: int = 8
    num_steps: int = 32
    episodes_per_update: int = 8
    group_starts: int = 0
    stuck_repeat: float = 0.75
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
    hidden: int = 64
    out_dir: str = "runs"
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
    "episodes_per_update": "episodes per update, exactly (fixed shapes: one compile)",
    "group_starts": "envs in groups of N replaying seeded starts, ranked per start (-1: all "
    "envs in one group; 0: off)",
    "stuck_repeat": "repeat probability of the sticky policy used while stuck (0: off)",
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
    "hidden": "width of the two hidden layers",
    "out_dir": "directory of the run directories",
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
    for name in (*positive_ints, "moving_average"):
        v = getattr(args, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an int >= 1, got {v!r}")
    e = args.eval_episodes
    if isinstance(e, bool) or not isinstance(e, int) or e < 0:
        raise ValueError(f"--eval-episodes: expected an int >= 0, got {e!r}")
    e = args.episodes_per_update
    if isinstance(e, bool) or not isinstance(e, int) or e < 2:
        # one episode alone has z-scored return 0: no policy gradient
        raise ValueError(f"--episodes-per-update: expected an int >= 2, got {e!r}")
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


class Actor(nn.Module):
    """obs -> 64 tanh -> 64 tanh -> logits, orthogonal init as CleanRL's PPO actor.

    With ``sticky=True`` the input's last two columns are each env's previous action (``-1``:
    none; small ints are exact in float32) and the logit of the repeat probability (``-inf``:
    off), and the output is the sticky categorical's log-probs
    (:func:`haepo_adapters.cleanrl.sticky_logits`). Carrying both in the input keeps the
    padded batch's ``obs`` one ``[M, T, d + 2]`` array and the update compiled once.
    """

    n_actions: int
    hidden: int = 64
    sticky: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.orthogonal
        if self.sticky:
            x, prev, g = x[:, :-2], x[:, -2].astype(jnp.int32), x[:, -1]
        x = nn.tanh(nn.Dense(self.hidden, kernel_init=init(np.sqrt(2)))(x))
        x = nn.tanh(nn.Dense(self.hidden, kernel_init=init(np.sqrt(2)))(x))
        logits = nn.Dense(self.n_actions, kernel_init=init(0.01))(x)
        return sticky_logits(logits, g, prev) if self.sticky else logits


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


def group_size(args: Args) -> int:
    """Envs per start group: ``--group-starts``, all envs for -1, 0 when off."""
    return args.num_envs if args.group_starts == -1 else args.group_starts


def train(args: Args) -> dict[str, object]:
    """Train and return the curves: episode (step, return) pairs and per-update diagnostics."""
    check_args(args)
    np.random.seed(args.seed)
    key = jax.random.PRNGKey(args.seed)
    run_name = f"{args.exp_name}__{args.seed}__{int(time.time())}"
    out = Path(args.out_dir) / run_name
    out.mkdir(parents=True, exist_ok=True)

    envs = make_envs(args)
    # the policy's input: the observation, and for the sticky policy the previous action and
    # the repeat logit
    sticky = args.stuck_repeat > 0
    obs_dim = envs.single_observation_space.shape[0] + 2 * sticky
    n_actions = int(envs.single_action_space.n)
    actor = Actor(n_actions, args.hidden, sticky)
    key, init_key = jax.random.split(key)
    params = actor.init(init_key, jnp.zeros((1, obs_dim)))
    clip = optax.clip_by_global_norm(args.max_grad_norm) if args.max_grad_norm > 0 else None
    optimizer = optax.chain(*([clip] if clip else []), optax.adam(args.learning_rate))
    opt_state = optimizer.init(params)
    reference = ReferenceParams(params, refresh_every=1)
    builder = TrajectoryBuilder(autoreset="next_step", incomplete="carry")
    # Stabilizers (docs/cleanrl.md), as in the torch script: the entropy bonus rises while the
    # entropy is below entropy_floor * log(A); the monitor warns once on entropy collapse or
    # all-equal returns.
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
    # The KL-steered learning rate of the torch script: divided by 1.5 after an update that
    # moved the policy more than target_kl, multiplied by 1.5 otherwise, within [lr/100, lr].
    lr_ctl = None
    if args.adaptive_lr:
        lr_ctl = AdaptiveCoefficient(
            args.learning_rate,
            args.target_kl,
            mode="floor",
            min_value=args.learning_rate / 100,
            max_value=args.learning_rate,
        )

    @jax.jit
    def act(params: object, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        key, sub = jax.random.split(key)  # one dispatch per env step
        return jax.random.categorical(sub, actor.apply(params, obs)), key

    loss_fn = make_haepo_loss_fn(
        actor.apply,
        kind="categorical",
        layout="padded",
        kl_coef=args.kl_coef,
        temperature=args.temperature,
        length_normalize=args.length_normalize,
    )

    target_kl = args.target_kl if args.target_kl > 0 else float("inf")

    @jax.jit
    def update_step(
        params: object, opt_state: object, ref_params: object, batch: dict, coefs: dict
    ) -> tuple:
        def epoch(carry: tuple, i: jax.Array) -> tuple:
            params, opt_state, stopped = carry
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, ref_params, batch, entropy_coef=coefs["entropy_coef"]
            )
            # Trust region (CleanRL's target_kl): once the policy is target_kl (exact mean KL
            # to the policy that collected the batch) away, the remaining epochs do nothing.
            stopped = stopped | ((i > 0) & (stats["kl"] > target_kl))
            upd, new_state = optimizer.update(grads, opt_state, params)
            upd = jax.tree.map(lambda u: u * coefs["lr_scale"], upd)  # Adam is linear in lr
            new_params = optax.apply_updates(params, upd)

            def keep(old: object, new: object) -> object:
                return jax.tree.map(lambda a, b: jnp.where(stopped, a, b), old, new)

            carry = (keep(params, new_params), keep(opt_state, new_state), stopped)
            return carry, (loss, stats, ~stopped)

        init = (params, opt_state, jnp.asarray(False))
        (params, opt_state, _), (loss, stats, ran) = jax.lax.scan(
            epoch, init, jnp.arange(args.update_epochs)
        )
        _, after = loss_fn(params, ref_params, batch, entropy_coef=coefs["entropy_coef"])
        stats = jax.tree.map(lambda x: x[0], stats)  # at the start of the update
        stats["kl"] = after["kl"]  # how far this update moved the policy
        stats["epochs"] = jnp.sum(ran)
        return params, opt_state, loss[0], stats

    max_len = envs.spec.max_episode_steps if envs.spec is not None else 500
    # (obs [T, d], actions [T], R, start key)
    queue: list[tuple[np.ndarray, np.ndarray, float, int]] = []

    def make_batch(eps: list[tuple[np.ndarray, np.ndarray, float, int]]) -> dict[str, jax.Array]:
        k = len(eps)
        obs = np.zeros((k, max_len, obs_dim), np.float32)
        acts = np.zeros((k, max_len), np.int32)
        mask = np.zeros((k, max_len), bool)
        for i, (o, a, *_) in enumerate(eps):
            obs[i, : len(a)], acts[i, : len(a)], mask[i, : len(a)] = o, a, True
        rets = np.array([ep[2] for ep in eps], np.float32)
        batch = {"obs": obs, "actions": acts, "mask": mask, "returns": rets}
        if args.group_starts:  # the episodes of one start form one HAEPO group; an episode
            keys = np.array([ep[3] for ep in eps])  # alone of its start is pooled
            batch["group_ids"] = start_groups(keys).astype(np.int32)
        return batch

    s, e = args.num_steps, args.num_envs
    obs_buf = np.zeros((s, e, obs_dim), dtype=np.float32)
    act_buf = np.zeros((s, e), dtype=np.int32)
    rew_buf = np.zeros((s, e), dtype=np.float32)
    term_buf = np.zeros((s, e), dtype=bool)
    trunc_buf = np.zeros((s, e), dtype=bool)
    key_buf = np.zeros((s, e), dtype=np.int64)

    episodes: list[tuple[int, float, int]] = []
    updates: list[dict[str, float]] = []
    best = BestSnapshot(args.moving_average)  # the policy at its best moving average
    next_obs, _ = envs.reset(seed=args.seed)
    # Each env's previous action, for the sticky policy: -1 on the first step of an episode
    # (and on the reset step after a done, whose action the env ignores).
    prev = np.full(e, -1, dtype=np.int64)
    reset_step = np.zeros(e, dtype=bool)
    # Which start each step's episode had: (group, episode index) packed in one int64.
    group_of_env = np.arange(args.num_envs) // max(group_size(args), 1)
    start_key = group_of_env.astype(np.int64) << 32
    global_step = 0
    start = time.time()
    batch = s * e
    num_chunks = max(args.total_timesteps // batch, 1)
    update = 0
    bar = tqdm(total=num_chunks * batch, disable=not args.progress, unit="step", desc="HAEPO-JAX")
    for _chunk in range(num_chunks):
        for step in range(s):
            global_step += e
            if sticky:
                g = np.full(e, explore.repeat_logit)
                obs_buf[step] = np.concatenate([next_obs, prev[:, None], g[:, None]], axis=1)
            else:
                obs_buf[step] = next_obs
            action, key = act(params, jnp.asarray(obs_buf[step]), key)
            action = np.asarray(action)
            act_buf[step] = action
            key_buf[step] = start_key
            next_obs, reward, term, trunc, info = envs.step(action)
            start_key += (term | trunc).astype(np.int64)  # the next episode's start
            done = term | trunc
            prev = np.where(done | reset_step, -1, action)
            reset_step = done  # the next step of a done env is its reset step
            rew_buf[step], term_buf[step], trunc_buf[step] = reward, term, trunc
            if "episode" in info:
                for i in np.flatnonzero(info["_episode"]):
                    episodes.append(
                        (global_step, float(info["episode"]["r"][i]), int(info["episode"]["l"][i]))
                    )
        bar.update(batch)

        traj = builder.build(
            rew_buf,
            terminated=term_buf,
            truncated=trunc_buf,
            obs=obs_buf,
            actions=act_buf,
            start=key_buf,
        )
        ends = np.cumsum(traj.lengths)
        for k in range(traj.num_trajectories):
            lo = ends[k] - traj.lengths[k]
            queue.append(
                (
                    traj.steps["obs"][lo : ends[k]],
                    traj.steps["actions"][lo : ends[k]],
                    float(traj.returns[k]),
                    int(traj.steps["start"][lo]),
                )
            )
        if len(queue) < args.episodes_per_update:
            continue
        eps, queue = queue[: args.episodes_per_update], queue[args.episodes_per_update :]
        update += 1
        if args.eval_episodes:  # the policy that collected these episodes, before the update
            best.offer([r for _, r, _ in episodes], lambda p=params: p)  # immutable pytree
        # optax.adam was built with learning_rate; lr_scale rescales its updates to the rate
        # of this update (KL-steered, then annealed), with no recompile.
        lr_scale = 1.0 if lr_ctl is None else lr_ctl.value / args.learning_rate
        if args.anneal_lr:
            lr_scale *= max(1.0 - global_step / args.total_timesteps, 0.0) + 1e-3
        coefs = {"entropy_coef": jnp.float32(ent_coef.value), "lr_scale": jnp.float32(lr_scale)}
        batch_e = make_batch(eps)
        params, opt_state, loss, stats = update_step(
            params, opt_state, reference.params, batch_e, coefs
        )
        reference.step(params)
        row: dict[str, float] = {"update": update, "global_step": global_step, "episodes": len(eps)}
        row.update({k: float(v) for k, v in stats.items()})
        row.update(
            loss=float(loss),
            entropy_coef=ent_coef.value,
            learning_rate=args.learning_rate * lr_scale,
        )
        ent_coef.update(row["entropy"])
        if lr_ctl is not None:
            lr_ctl.update(row["kl"])
        monitor.update(entropy=row["entropy"], returns=batch_e["returns"])
        row["repeat"] = explore.value  # of the rollout that ended with this update
        explore.update(batch_e["returns"])
        updates.append(row)
        if episodes:
            ma = float(np.mean([r for _, r, _ in episodes[-args.moving_average :]]))
            # a rollout with < 2 finished episodes makes no update: show "-" rather than NaN
            ess = f"{row['ess']:.1f}" if "ess" in row else "-"
            bar.set_postfix(ma_return=f"{ma:.1f}", ess=ess)
    bar.close()
    envs.close()
    wall = time.time() - start
    evals: dict[str, np.ndarray] = {}
    if args.eval_episodes:

        def evaluate(p: object) -> np.ndarray:
            # The fixed start states of evaluate_policy (the same for every run and method);
            # the plain categorical (never sticky), sampled from its own seeded key.
            state = {"key": jax.random.PRNGKey(args.seed)}
            tail = np.array([-1.0, -np.inf], np.float32)[: 2 * sticky]

            def policy(o: np.ndarray) -> int:
                x = np.concatenate([np.asarray(o, np.float32), tail])[None]
                a, state["key"] = act(p, jnp.asarray(x), state["key"])
                return int(a[0])

            env = gym.make(args.env_id)
            try:
                return evaluate_policy(env, policy, episodes=args.eval_episodes)
            finally:
                env.close()

        evals, summary = evaluate_final_and_best(evaluate, params, best)
        print(summary)

    ep, final_ma = write_run(
        out,
        episodes,
        updates,
        window=args.moving_average,
        plot=args.plot,
        title=f"HAEPO {args.env_id} (JAX)",
    )
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
    main()
