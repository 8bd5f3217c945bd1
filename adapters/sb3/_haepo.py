"""The HAEPO algorithm for Stable-Baselines3 (an sb3-contrib-style on-policy algorithm)."""

from __future__ import annotations

import math
import numbers
import sys
import time
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from haepo_adapters.cleanrl import (
    AdaptiveCoefficient,
    CollapseMonitor,
    StuckExploration,
    TrajectoryBuilder,
    categorical_terms,
    sticky_logits,
)
from haepo_backends.torch import haepo_loss_packed
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import obs_as_tensor, safe_mean
from torch import nn
from torch.distributions import kl_divergence

from ._policies import CnnPolicy, HAEPOPolicy, MlpPolicy

__all__ = ["HAEPO"]

SelfHAEPO = TypeVar("SelfHAEPO", bound="HAEPO")
NORMALIZE_RETURNS = ("zscore", "center", "none")

#: The recipe of the CleanRL adapter: (discrete, continuous) defaults of each stabilizer.
RECIPE = {
    "learning_rate": (1e-2, 3e-3),
    "target_kl": (0.01, 0.02),
    "entropy_coef": (0.01, 0.001),
    "entropy_floor": (0.1, -0.9),
    "stuck_repeat": (0.75, 0.0),
    "init_log_std": (None, -0.7),
}


class HAEPO(BaseAlgorithm):
    r"""HAEPO: a critic-free policy gradient that ranks whole episodes (Plackett-Luce).

    The loss is :func:`haepo_backends.torch.haepo_loss_packed` (the library's, on packed
    steps) plus ``kl_coef`` times the exact mean KL to the policy that collected the batch:

    .. math::

        \text{loss} = J_{PL}(L, R; \tau) - \lambda\,\overline{H} + \beta\,\overline{KL},
        \qquad L_k = \sum_{t \in k} \log\pi_\theta(a_t|s_t)

    with :math:`R_k` each episode's undiscounted return (z-scored in its group). There is no
    value function, no advantage and no discount: ``gamma``, ``gae_lambda``, ``vf_coef`` and
    ``clip_range`` do not exist here.

    **From a rollout to trajectories.** The ``n_envs`` envs step side by side; step data
    (observation as the policy saw it, action, reward, SB3's ``dones`` and
    ``infos[i]["TimeLimit.truncated"]``) fill a ``[steps, n_envs]`` buffer. An update waits
    until at least ``n_steps`` steps per env *and* ``min_episodes`` finished episodes have
    been collected (the envs keep stepping, nothing is discarded). The buffer is cut into
    episodes per env column (an episode never mixes envs) by the CleanRL adapter's
    :class:`~haepo_adapters.cleanrl.TrajectoryBuilder` (SB3's VecEnvs reset in the same step);
    every finished episode is one HAEPO trajectory, and all the finished episodes of the batch
    form one group (the softmax and the return z-score run over them together).

    **Time limits.** An episode cut by a time limit (``TimeLimit.truncated``) ends there and is
    ranked by the return it collected, like a terminated one: HAEPO scores whole episodes and
    bootstraps nothing, so there is no value to add at the cut.

    **Unfinished episodes.** An episode still running when the rollout ends is carried over: its
    steps are kept and it becomes a trajectory in the rollout where it ends, its log-probs
    recomputed under the current policy (no importance ratio is needed). Dropping it would bias
    every batch towards short episodes. Envs are reset only when ``learn`` resets them (then
    the carried steps are forgotten).

    **Stabilizers** (same names and meanings as in ``haepo_adapters.cleanrl``'s scripts;
    ``None`` takes the recipe's default for the action space, discrete / continuous):
    ``min_episodes`` (8), ``target_kl`` (0.01 / 0.02; the epochs stop once the exact mean KL
    exceeds it, 0: off), ``adaptive_lr`` (the rate divided by 1.5 after an update that moved the
    policy more than ``target_kl``, times 1.5 otherwise, within ``[lr / 100, lr]``),
    ``anneal_lr`` (linear to ~0 over the budget), ``entropy_coef`` (0.01 / 0.001) raised 1.5x per
    update while the mean entropy is below ``entropy_floor`` (0.1 x the maximum entropy for
    discrete kinds; -0.9 nats per action dimension for ``Box``), ``max_grad_norm`` (0.5),
    ``stuck_repeat`` (0.75 / 0; ``Discrete`` only: after a batch of all-equal returns no better
    than any seen, the rollouts repeat the previous action with this probability, halved per
    batch with a learning signal) and ``init_log_std`` (- / -0.7, the Gaussian's initial log
    std).

    Args:
      policy: ``"MlpPolicy"``, ``"CnnPolicy"`` or a :class:`HAEPOPolicy` subclass.
      env: a gymnasium env, its id, or a VecEnv.
      learning_rate: Adam's rate (the ceiling of the KL-steered rate), a float or a schedule.
      n_steps: steps per env per rollout, at least (more while fewer than ``min_episodes``
        episodes have finished).
      update_epochs: full-batch Adam steps per update, at most.
      kl_coef: coefficient of the exact KL to the policy that collected the batch.
      temperature: temperature of the Plackett-Luce softmax over the episodes.
      length_normalize: softmax over per-step mean log-probs instead of their sums.
      normalize_returns: ``"zscore"``, ``"center"`` or ``"none"`` (as in the core).
      stats_window_size, tensorboard_log, policy_kwargs, verbose, seed, device,
        _init_setup_model: as in SB3.

    Example:
      >>> from haepo_adapters.sb3 import HAEPO
      >>> model = HAEPO("MlpPolicy", "CartPole-v1", n_steps=32, seed=0)
      >>> model = model.learn(total_timesteps=512)
      >>> model.predict(model.env.reset(), deterministic=True)[0].shape
      (1,)
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
    }
    policy: HAEPOPolicy

    def __init__(
        self,
        policy: str | type[HAEPOPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule | None = None,
        n_steps: int = 128,
        update_epochs: int = 4,
        min_episodes: int = 8,
        target_kl: float | None = None,
        adaptive_lr: bool = True,
        anneal_lr: bool = True,
        max_grad_norm: float = 0.5,
        entropy_coef: float | None = None,
        entropy_floor: float | None = None,
        kl_coef: float = 0.1,
        temperature: float = 1.0,
        length_normalize: bool = True,
        normalize_returns: str = "zscore",
        stuck_repeat: float | None = None,
        init_log_std: float | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        super().__init__(
            policy,
            env,
            learning_rate=1.0 if learning_rate is None else learning_rate,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            support_multi_env=True,
            supported_action_spaces=(
                spaces.Box,
                spaces.Discrete,
                spaces.MultiDiscrete,
                spaces.MultiBinary,
            ),
        )
        self._learning_rate_arg = learning_rate
        self.n_steps = n_steps
        self.update_epochs = update_epochs
        self.min_episodes = min_episodes
        self.target_kl = target_kl
        self.adaptive_lr = adaptive_lr
        self.anneal_lr = anneal_lr
        self.max_grad_norm = max_grad_norm
        self.entropy_coef = entropy_coef
        self.entropy_floor = entropy_floor
        self.kl_coef = kl_coef
        self.temperature = temperature
        self.length_normalize = length_normalize
        self.normalize_returns = normalize_returns
        self.stuck_repeat = stuck_repeat
        self.init_log_std = init_log_std
        if _init_setup_model:
            self._setup_model()

    # -- setup ---------------------------------------------------------------------------------
    def _resolve_defaults(self) -> None:
        """Fill ``None`` hyperparameters from the recipe, then check every one."""
        continuous = isinstance(self.action_space, spaces.Box)
        pick = int(continuous)
        if self._learning_rate_arg is None:
            self._learning_rate_arg = RECIPE["learning_rate"][pick]
        self.learning_rate = self._learning_rate_arg
        for name in ("target_kl", "entropy_coef", "entropy_floor"):
            if getattr(self, name) is None:
                setattr(self, name, RECIPE[name][pick])
        if self.stuck_repeat is None:  # sticky exploration needs a single categorical
            discrete = isinstance(self.action_space, spaces.Discrete)
            self.stuck_repeat = RECIPE["stuck_repeat"][0 if discrete else 1]
        given = self.policy_kwargs.get("log_std_init")
        if self.init_log_std is None:
            self.init_log_std = RECIPE["init_log_std"][pick] if given is None else given
        _check_args(self)
        if self.stuck_repeat > 0 and not isinstance(self.action_space, spaces.Discrete):
            raise ValueError(
                f"stuck_repeat: sticky exploration needs a Discrete action space, got "
                f"{type(self.action_space).__name__} with stuck_repeat={self.stuck_repeat}"
            )
        if self.init_log_std is not None:
            if not continuous:
                raise ValueError(
                    f"init_log_std: only for Box action spaces, got "
                    f"{type(self.action_space).__name__}"
                )
            if given is not None and given != self.init_log_std:
                raise ValueError(
                    f"init_log_std: given twice, as init_log_std={self.init_log_std} and as "
                    f"policy_kwargs['log_std_init']={given}; pass one of them"
                )
            self.policy_kwargs = {**self.policy_kwargs, "log_std_init": self.init_log_std}

    def _setup_model(self) -> None:
        self._resolve_defaults()
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)
        if not isinstance(self.policy, HAEPOPolicy):
            raise TypeError(
                f"policy: expected a HAEPOPolicy (no value head), got {type(self.policy).__name__}"
            )
        self.max_entropy = _max_entropy(self.action_space)
        continuous = isinstance(self.action_space, spaces.Box)
        if getattr(self, "_ent_ctl", None) is None:
            target = self.entropy_floor * (self.max_entropy if not continuous else 1.0)
            self._ent_ctl = AdaptiveCoefficient(
                self.entropy_coef,
                target,
                mode="floor",
                min_value=self.entropy_coef,
                max_value=max(100 * self.entropy_coef, 1e-3),
            )
        if getattr(self, "_lr_ctl", None) is None and self.adaptive_lr and self.target_kl > 0:
            # a factor on the (scheduled) rate, within [1/100, 1]
            self._lr_ctl = AdaptiveCoefficient(
                1.0, self.target_kl, mode="floor", min_value=0.01, max_value=1.0
            )
        if getattr(self, "_explore", None) is None:
            self._explore = StuckExploration(self.stuck_repeat)
        if continuous:  # a std under 0.01 in every dimension
            threshold = self.max_entropy * (math.log(0.01) + 0.5 * (1 + math.log(2 * math.pi)))
        else:
            threshold = 0.01 * self.max_entropy
        self._monitor = CollapseMonitor(entropy_threshold=threshold, patience=3)
        self._builder = TrajectoryBuilder(autoreset="same_step", incomplete="carry")
        self._prev_actions: np.ndarray | None = None

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_builder", "_monitor", "_prev_actions"]

    # -- rollouts ------------------------------------------------------------------------------
    def _collect(self, callback: BaseCallback, total_timesteps: int) -> dict[str, Any] | None:
        """Step the envs until ``n_steps`` per env and ``min_episodes`` episodes are in.

        Returns the ``[S, n_envs, ...]`` buffer, or ``None`` when a callback stopped training.
        """
        assert self._last_obs is not None and self.env is not None
        n_envs = self.env.num_envs
        if self._prev_actions is None:
            self._prev_actions = np.full(n_envs, -1, dtype=np.int64)
        sticky = self.policy.is_categorical
        buf: dict[str, list[np.ndarray]] = {
            k: [] for k in ("obs", "actions", "rewards", "term", "trunc", "prev", "rep")
        }
        finished = 0
        self.policy.set_training_mode(False)
        callback.on_rollout_start()
        while self.num_timesteps < total_timesteps and (
            len(buf["rewards"]) < self.n_steps or finished < self.min_episodes
        ):
            obs_t = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
            rep = np.full(n_envs, self._explore.repeat_logit, dtype=np.float32)
            with th.no_grad():
                params = self.policy.action_params(obs_t)
                if sticky and self._explore.value > 0:
                    logits = sticky_logits(
                        params,
                        th.as_tensor(rep, device=self.device),
                        th.as_tensor(self._prev_actions, device=self.device),
                    )
                    actions_t = th.distributions.Categorical(logits=logits).sample()
                else:
                    actions_t = self.policy.distribution_from_params(params).get_actions()
            actions = actions_t.cpu().numpy()
            env_actions = actions
            if isinstance(self.action_space, spaces.Box):
                env_actions = np.clip(actions, self.action_space.low, self.action_space.high)
            elif isinstance(self.action_space, spaces.Discrete):
                env_actions = actions.reshape(-1)
            new_obs, rewards, dones, infos = self.env.step(env_actions)
            self.num_timesteps += n_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return None
            self._update_info_buffer(infos, dones)
            trunc = np.array([bool(i.get("TimeLimit.truncated", False)) for i in infos])
            dones = np.asarray(dones, dtype=bool)
            buf["obs"].append(np.array(self._last_obs, copy=True))
            buf["actions"].append(actions)
            buf["rewards"].append(np.asarray(rewards, dtype=np.float32))
            buf["term"].append(dones & ~trunc)
            buf["trunc"].append(dones & trunc)
            buf["prev"].append(self._prev_actions.copy())
            buf["rep"].append(rep)
            if sticky:
                self._prev_actions = np.where(dones, -1, actions.reshape(-1)).astype(np.int64)
            finished += int(dones.sum())
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
        callback.update_locals(locals())
        callback.on_rollout_end()
        return {k: np.stack(v) for k, v in buf.items() if v}

    # -- the update ----------------------------------------------------------------------------
    def _terms(self, obs: th.Tensor, actions: th.Tensor, prev: th.Tensor, rep: th.Tensor,
               ref: Any) -> tuple[th.Tensor, th.Tensor, th.Tensor, Any]:  # fmt: skip
        """Per-step log-prob, exact entropy and exact KL to ``ref`` (``[N]`` each)."""
        params = self.policy.action_params(obs)
        if self.policy.is_categorical:
            logits = params
            if bool(th.isfinite(rep).any()):
                logits = sticky_logits(params, rep, prev)
            t = categorical_terms(logits, actions.reshape(-1).long(), ref)
            return t.logp, t.entropy, t.kl, logits.detach()
        dist = self.policy.distribution_from_params(params)
        logp, ent = dist.log_prob(actions), dist.entropy()
        assert ent is not None
        kl = None if ref is None else _exact_kl(dist, ref)
        return logp, ent, kl, dist

    def train_on(self, batch: dict[str, np.ndarray]) -> None:
        """One HAEPO update on the finished episodes of ``batch`` (a rollout buffer)."""
        traj = self._builder.build(
            batch["rewards"],
            terminated=batch["term"],
            truncated=batch["trunc"],
            obs=batch["obs"],
            actions=batch["actions"],
            prev=batch["prev"],
            rep=batch["rep"],
        )
        if traj.num_trajectories < 2:  # nothing is lost: unfinished episodes are carried
            return
        self.policy.set_training_mode(True)
        dev = self.device
        obs = obs_as_tensor(traj.steps["obs"], dev)
        actions = th.as_tensor(traj.steps["actions"], device=dev)
        prev = th.as_tensor(traj.steps["prev"], device=dev)
        rep = th.as_tensor(traj.steps["rep"], device=dev)
        seg = th.as_tensor(traj.segment_ids, device=dev)
        returns = th.as_tensor(traj.returns, dtype=th.float32, device=dev)
        with th.no_grad():  # the reference: the policy that collected the batch
            *_, ref = self._terms(obs, actions, prev, rep, None)
        progress = self._current_progress_remaining
        lr = float(self.lr_schedule(progress))
        if self._lr_ctl is not None:
            lr *= self._lr_ctl.value
        if self.anneal_lr:
            lr *= progress + 1e-3
        for group in self.policy.optimizer.param_groups:
            group["lr"] = lr
        stats: dict[str, float] = {}
        epochs = 0
        for _ in range(self.update_epochs):
            logp, ent, kl, _ = self._terms(obs, actions, prev, rep, ref)
            out = haepo_loss_packed(
                logp,
                seg,
                returns,
                entropy=ent,
                entropy_coef=self._ent_ctl.value,
                temperature=self.temperature,
                length_normalize=self.length_normalize,
                normalize_returns=self.normalize_returns,
            )
            kl_mean = kl.mean()
            if self.target_kl > 0 and epochs > 0 and float(kl_mean.detach()) > self.target_kl:
                break
            loss = out.loss + self.kl_coef * kl_mean
            if epochs == 0:
                stats = {k: float(v) for k, v in out.stats.items()}
                stats["loss"] = float(loss.detach())
            self.policy.optimizer.zero_grad()
            loss.backward()
            if self.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
            epochs += 1
        with th.no_grad():  # how far this update moved the policy
            moved = float(self._terms(obs, actions, prev, rep, ref)[2].mean())
        self._n_updates += 1
        returns_np = np.asarray(traj.returns)
        rec = self.logger.record
        rec("haepo/ess", stats["ess"])
        rec("haepo/max_weight", stats["max_weight"])
        rec("haepo/kl", moved)
        rec("haepo/entropy", stats["entropy"])
        rec("haepo/episodes", traj.num_trajectories)
        rec("haepo/return_std", float(returns_np.std()))
        rec("haepo/epochs", epochs)
        rec("haepo/entropy_coef", self._ent_ctl.value)
        rec("haepo/repeat", self._explore.value)
        rec("haepo/carried_steps", int(np.sum(traj.carried_steps)))
        rec("train/loss", stats["loss"])
        rec("train/policy_loss", stats["policy_loss"])
        rec("train/entropy_loss", -stats["entropy"])
        rec("train/approx_kl", moved)
        rec("train/learning_rate", lr)
        rec("train/n_updates", self._n_updates, exclude="tensorboard")
        self._ent_ctl.update(stats["entropy"])
        if self._lr_ctl is not None:
            self._lr_ctl.update(moved)
        self._monitor.update(entropy=stats["entropy"], returns=returns_np)
        self._explore.update(returns_np)

    def learn(
        self: SelfHAEPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "HAEPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfHAEPO:
        """Train for ``total_timesteps`` env steps (summed over the envs), as SB3's ``learn``."""
        if isinstance(total_timesteps, bool) or not isinstance(total_timesteps, numbers.Integral):
            raise TypeError(
                f"total_timesteps: expected an int, got {type(total_timesteps).__name__}"
            )
        if total_timesteps < 1:
            raise ValueError(f"total_timesteps: expected an int >= 1, got {total_timesteps}")
        if reset_num_timesteps or self._last_obs is None:
            self._builder.reset()  # the envs are reset: nothing is carried over
            self._prev_actions = None
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        callback.on_training_start(locals(), globals())
        iteration = 0
        while self.num_timesteps < total_timesteps:
            batch = self._collect(callback, total_timesteps)
            if batch is None:
                break
            iteration += 1
            self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
            self.train_on(batch)
            if log_interval is not None and iteration % log_interval == 0:
                self._dump_logs(iteration)
        callback.on_training_end()
        return self

    def _dump_logs(self, iteration: int) -> None:
        assert self.ep_info_buffer is not None
        elapsed = max((time.time_ns() - self.start_time) / 1e9, sys.float_info.epsilon)
        fps = int((self.num_timesteps - self._num_timesteps_at_start) / elapsed)
        self.logger.record("time/iterations", iteration, exclude="tensorboard")
        if len(self.ep_info_buffer) > 0:
            self.logger.record(
                "rollout/ep_rew_mean", safe_mean([e["r"] for e in self.ep_info_buffer])
            )
            self.logger.record(
                "rollout/ep_len_mean", safe_mean([e["l"] for e in self.ep_info_buffer])
            )
        self.logger.record("time/fps", fps)
        self.logger.record("time/time_elapsed", int(elapsed), exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(step=self.num_timesteps)


def _max_entropy(space: spaces.Space) -> float:
    """log A (Discrete), sum log n_i (MultiDiscrete), n log 2 (MultiBinary), D (Box: dims)."""
    if isinstance(space, spaces.Discrete):
        return float(np.log(space.n))
    if isinstance(space, spaces.MultiDiscrete):
        return float(np.sum(np.log(space.nvec)))
    if isinstance(space, spaces.MultiBinary):
        return float(np.prod(space.shape) * np.log(2))
    return float(np.prod(space.shape))


def _exact_kl(dist: Any, ref: Any) -> th.Tensor:
    """Exact per-step ``KL(pi || pi_ref)`` ``[N]``, summed over action dims / sub-actions."""
    cur, old = dist.distribution, ref.distribution
    if isinstance(cur, list):  # MultiCategorical
        return th.stack([kl_divergence(c, o) for c, o in zip(cur, old, strict=True)], 1).sum(1)
    kl = kl_divergence(cur, old)
    return kl.sum(-1) if kl.ndim > 1 else kl


def _check_args(m: HAEPO) -> None:
    """Every hyperparameter, each with an error naming it (as SB3's own checks)."""

    def real(name: str, lo: float | None = None, strict: bool = False, hi: float | None = None,
             hi_strict: bool = False) -> None:  # fmt: skip
        v = getattr(m, name)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{name}: expected a finite real number, got {v!r}")
        if lo is not None and (v <= lo if strict else v < lo):
            raise ValueError(f"{name}: expected a value {'>' if strict else '>='} {lo}, got {v}")
        if hi is not None and (v >= hi if hi_strict else v > hi):
            raise ValueError(f"{name}: expected a value {'<' if hi_strict else '<='} {hi}, got {v}")

    def integer(name: str, lo: int) -> None:
        v = getattr(m, name)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")

    def flag(name: str) -> None:
        v = getattr(m, name)
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{name}: expected a bool, got {type(v).__name__} {v!r}")

    lr = m._learning_rate_arg
    if not callable(lr):
        if (
            isinstance(lr, bool)
            or not isinstance(lr, numbers.Real)
            or not lr > 0
            or not math.isfinite(lr)
        ):
            raise ValueError(
                f"learning_rate: expected a finite float > 0 or a schedule, got {lr!r}"
            )
    integer("n_steps", 1)
    integer("update_epochs", 1)
    integer("min_episodes", 2)
    real("target_kl", 0.0)
    real("max_grad_norm", 0.0)
    real("entropy_coef", 0.0)
    real("entropy_floor")
    real("kl_coef", 0.0)
    real("temperature", 0.0, strict=True)
    real("stuck_repeat", 0.0, hi=1.0, hi_strict=True)
    if m.init_log_std is not None:
        real("init_log_std")
    flag("adaptive_lr")
    flag("anneal_lr")
    flag("length_normalize")
    if m.normalize_returns not in NORMALIZE_RETURNS:
        raise ValueError(
            f"normalize_returns: expected one of {NORMALIZE_RETURNS}, got {m.normalize_returns!r}"
        )
    if m.adaptive_lr and m.target_kl == 0:
        raise ValueError("adaptive_lr: needs target_kl > 0 (the KL it steers by), got target_kl=0")
