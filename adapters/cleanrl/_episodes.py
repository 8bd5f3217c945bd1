"""Rollout buffer -> HAEPO trajectories: cut each env's steps into episodes, pack and pad them.

A CleanRL rollout buffer stores per-step arrays of shape ``[num_steps, num_envs, ...]``. HAEPO
scores *whole* trajectories, so the steps of each env are cut at episode ends, every completed
episode becomes one trajectory (steps never mix across envs) with its return, and the result is
laid out both packed (``segment_ids``) and padded (``index``/``mask``).

The episode boundaries are planned in NumPy on the (small, host-side) flags and rewards; the
step data itself is gathered in its own library (torch, JAX, NumPy) through the array API, so
torch autograd and ``jax.grad`` flow through :meth:`Trajectories.pad` and the packed arrays.

Unfinished episodes (policy, see docs/cleanrl.md): by default an episode still running when the
buffer ends is **carried over** into the next rollout and becomes a trajectory once it ends.
Dropping it instead (``incomplete="drop"``) biases the batch towards short episodes, because a
long episode is more likely to straddle a rollout boundary; on CartPole the long episodes are
the good ones, so dropping them removes exactly the signal HAEPO needs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_compat
import numpy as np

__all__ = [
    "AUTORESET_MODES",
    "INCOMPLETE_POLICIES",
    "TrajectoryBuilder",
    "Trajectories",
    "rollout_to_trajectories",
]

Array = Any

AUTORESET_MODES = ("same_step", "next_step")
INCOMPLETE_POLICIES = ("carry", "drop")


class Trajectories(NamedTuple):
    """Completed episodes of one or more rollouts, packed (and paddable).

    ``M`` trajectories, ``N`` steps in all, ``T = max length``. Array fields are in the library
    of the step data handed to :meth:`TrajectoryBuilder.build` (NumPy when none was given).

    Attributes:
      steps: dict of packed step arrays ``[N, ...]`` (e.g. ``obs``, ``actions``, ``logprobs``),
        grouped by trajectory and in time order inside each trajectory.
      segment_ids: ``[N]`` int64 trajectory index of each step, in ``0..M-1`` (nondecreasing).
      returns: ``[M]`` undiscounted return of each episode (sum of its rewards), float64 NumPy
        cast to the library and dtype of ``rewards``.
      lengths: ``[M]`` int64 number of steps of each episode.
      env_ids: ``[M]`` int64 env each episode ran in.
      truncated: ``[M]`` bool, True when the episode ended by truncation (time limit) rather
        than termination (unknown from CleanRL ``dones`` alone: False there).
      carried_steps: ``[M]`` int64, how many of the episode's steps came from earlier rollouts.
      index: ``[M, T]`` int64 position in the packed arrays of step ``j`` of trajectory ``k``
        (0 where padding).
      mask: ``[M, T]`` bool, True at valid steps.
    """

    steps: dict[str, Array]
    segment_ids: Array
    returns: Array
    lengths: Array
    env_ids: Array
    truncated: Array
    carried_steps: Array
    index: Array
    mask: Array

    @property
    def num_trajectories(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.segment_ids.shape[0])

    def pad(self, x: Array, fill: float = 0.0) -> Array:
        """Packed ``[N, ...]`` -> padded ``[M, T, ...]``; padding holds ``fill``.

        Differentiable (a gather and a ``where``), so ``haepo_loss(traj.pad(logp), returns,
        traj.mask)`` equals ``haepo_loss_packed(logp, traj.segment_ids, returns)``.
        """
        xp = array_api_compat.array_namespace(x)
        if x.ndim < 1 or x.shape[0] != self.num_steps:
            raise ValueError(
                f"x: expected a packed array of shape [N, ...] with N = {self.num_steps}, "
                f"got shape {tuple(x.shape)}"
            )
        m, t = self.mask.shape
        dev = array_api_compat.device(x)
        idx = xp.reshape(_to(xp, self.index, dev), (-1,))
        mask = _to(xp, self.mask, dev)
        if self.num_steps == 0:
            return xp.full((m, t, *x.shape[1:]), fill, dtype=x.dtype, device=dev)
        out = xp.reshape(xp.take(x, idx, axis=0), (m, t, *x.shape[1:]))
        mask = xp.reshape(mask, (m, t) + (1,) * (x.ndim - 1))
        return xp.where(mask, out, xp.asarray(fill, dtype=x.dtype, device=dev))


def _to(xp: Any, a: Any, dev: Any) -> Any:
    """``a`` in namespace ``xp`` on ``dev`` (no host round trip when it already is)."""
    if array_api_compat.array_namespace(a) is xp:
        return a if array_api_compat.device(a) == dev else xp.asarray(a, device=dev)
    return xp.asarray(np.asarray(a), device=dev)


def _as_numpy(name: str, x: Any) -> np.ndarray:
    if not hasattr(x, "shape"):
        raise TypeError(f"{name}: expected an array (NumPy, torch, JAX), got {type(x).__name__}")
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _flags(name: str, x: Any, shape: tuple[int, ...], layout: str) -> np.ndarray:
    a = _as_numpy(name, x)
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {layout} = {shape}, got {a.shape}")
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a bool or 0/1 numeric dtype, got {a.dtype}")
    if not np.all((a == 0) | (a == 1)):
        bad = a[(a != 0) & (a != 1)].ravel()[0]
        raise ValueError(f"{name}: expected only 0/1 (or bool) values, got {bad!r}")
    return a.astype(bool)


class _Carry(NamedTuple):
    """Unfinished episode tails, env-contiguous: env ``e`` owns ``lens[e]`` steps in order."""

    steps: dict[str, Array]
    rewards: np.ndarray  # [Nc] float64
    lens: np.ndarray  # [E] int64
    pending_reset: np.ndarray  # [E] bool: next_step autoreset, step 0 of the next rollout is junk
    headless: np.ndarray  # [E] bool: drop mode lost the head of the running episode


class TrajectoryBuilder:
    """Turns successive rollout buffers into HAEPO trajectories (stateful across rollouts).

    Call :meth:`build` once per rollout. Flags come either CleanRL-style (``dones``, with
    ``next_done`` for the step after the buffer) or gymnasium-style (``terminated`` and
    ``truncated`` returned by each ``envs.step``).

    ``autoreset`` says how the vector env resets (gymnasium 1.x ``AutoresetMode``):

    - ``"same_step"`` (gymnasium < 1.0 and ``AutoresetMode.SAME_STEP``): the step that ends an
      episode already returns the first observation of the next one. CleanRL's ``dones[t]``
      then marks ``obs[t]`` as the first step of a new episode, so an episode ends at ``t``
      when ``dones[t + 1]`` (``next_done`` for the last step).
    - ``"next_step"`` (gymnasium 1.x default, ``AutoresetMode.NEXT_STEP``): the ``step`` call
      *after* a done is a reset step: the action is ignored, the reward is 0, and the observation
      is the new episode's first. That step belongs to no episode and is skipped. With
      CleanRL's loop ``dones[t]`` then marks step ``t`` as the reset step; with gymnasium flags
      step ``t`` is a reset step when step ``t - 1`` ended (across rollouts too).

    ``incomplete`` is the policy for an episode still running when the buffer ends:
    ``"carry"`` (default) keeps its steps and completes it in the next rollout; ``"drop"``
    discards it, and also discards the tail of that episode seen in the next rollout (its head
    is lost). Carried steps keep the data they were collected with (``obs``, ``actions``, the
    behaviour ``logprobs``): recompute log-probs from ``obs``/``actions`` under the current
    policy when computing the loss.

    The first :meth:`build` (and the first after :meth:`reset`) assumes every env starts a
    fresh episode at step 0, as right after ``envs.reset()``.

    Example:
      >>> import numpy as np
      >>> from haepo_adapters.cleanrl import TrajectoryBuilder
      >>> b = TrajectoryBuilder()
      >>> dones = np.array([[0, 0], [0, 1], [1, 0]])  # env 0 ends at step 1, env 1 at step 0
      >>> tr = b.build(np.ones((3, 2)), dones=dones, next_done=np.array([0, 0]))
      >>> tr.returns.tolist(), tr.env_ids.tolist(), tr.lengths.tolist()
      ([2.0, 1.0], [0, 1], [2, 1])
      >>> b.build(np.ones((1, 2)), dones=np.zeros((1, 2)), next_done=np.ones(2)).returns.tolist()
      [2.0, 3.0]
    """

    def __init__(self, *, autoreset: str = "same_step", incomplete: str = "carry") -> None:
        if autoreset not in AUTORESET_MODES:
            raise ValueError(f"autoreset: expected one of {AUTORESET_MODES}, got {autoreset!r}")
        if incomplete not in INCOMPLETE_POLICIES:
            raise ValueError(
                f"incomplete: expected one of {INCOMPLETE_POLICIES}, got {incomplete!r}"
            )
        self.autoreset = autoreset
        self.incomplete = incomplete
        self._carry: _Carry | None = None

    def reset(self) -> None:
        """Forget carried episodes (call after ``envs.reset()``)."""
        self._carry = None

    @property
    def carried_steps(self) -> int:
        """Number of steps of unfinished episodes held for the next rollout."""
        return 0 if self._carry is None else int(self._carry.lens.sum())

    def build(
        self,
        rewards: Array,
        *,
        dones: Array | None = None,
        next_done: Array | None = None,
        terminated: Array | None = None,
        truncated: Array | None = None,
        **step_data: Array,
    ) -> Trajectories:
        """Cut one rollout into episodes; return the completed ones.

        Args:
          rewards: ``[S, E]`` real rewards (``S = num_steps``, ``E = num_envs``).
          dones: ``[S, E]`` bool or 0/1, CleanRL's flags (see the class docstring for their
            meaning under each ``autoreset`` mode). Give either ``dones`` or both
            ``terminated`` and ``truncated``.
          next_done: ``[E]`` the done flag after the last step (CleanRL's ``next_done``);
            ``None``: no episode is known to end at the last step.
          terminated, truncated: ``[S, E]`` gymnasium's flags returned by step ``t``.
          **step_data: ``[S, E, ...]`` arrays gathered per step (``obs``, ``actions``,
            ``logprobs``, ...), any library, all of one library.

        Returns:
          :class:`Trajectories` with ``M >= 0`` completed episodes (``M == 0`` when no episode
          finished: nothing is lost under ``incomplete="carry"``).

        Raises:
          ValueError / TypeError naming the argument for wrong shapes, ranks, dtypes, flag
          values, a missing or doubled flag source, or step data of a different layout than the
          carried one.
        """
        r = _as_numpy("rewards", rewards)
        if r.ndim != 2:
            raise ValueError(
                f"rewards: expected a 2-d array of shape [num_steps, num_envs], got "
                f"{r.ndim}-d array with shape {r.shape}"
            )
        if r.dtype.kind not in "biuf":
            raise TypeError(f"rewards: expected a real floating or integer dtype, got {r.dtype}")
        if not np.all(np.isfinite(r)):
            raise ValueError("rewards: expected finite values, got NaN or inf")
        s, e = r.shape
        shape = (s, e)
        ends, resets, trunc = self._boundaries(dones, next_done, terminated, truncated, shape)
        data = self._check_step_data(step_data, shape)
        carry = self._carry
        if carry is not None and carry.lens.shape[0] != e:
            raise ValueError(
                f"rewards: expected num_envs = {carry.lens.shape[0]} (as in the previous "
                f"rollout), got {e}; call reset() when the envs change"
            )
        if carry is None:
            carry = _empty_carry(data, e)
        if self.autoreset == "next_step" and terminated is not None:
            resets[0] |= carry.pending_reset  # the rollout opens with the reset step
        ends &= ~resets
        return self._assemble(r, ends, resets, trunc, data, carry, rewards)

    # -- flags ---------------------------------------------------------------------------------
    def _boundaries(
        self,
        dones: Any,
        next_done: Any,
        terminated: Any,
        truncated: Any,
        shape: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e = shape[1]
        layout = "[num_steps, num_envs]"
        gym = terminated is not None or truncated is not None
        if dones is not None and gym:
            raise ValueError(
                "dones, terminated/truncated: expected either CleanRL dones or gymnasium "
                "terminated+truncated, got both"
            )
        if gym and (terminated is None or truncated is None):
            missing = "truncated" if truncated is None else "terminated"
            raise ValueError(f"{missing}: expected both terminated and truncated, got only one")
        if dones is None and not gym:
            raise ValueError("dones: expected dones or terminated+truncated, got neither")
        if gym and next_done is not None:
            raise ValueError(
                "next_done: only used with CleanRL dones; gymnasium flags already say whether "
                "the last step ended an episode"
            )
        nd = np.zeros(e, dtype=bool)
        if next_done is not None:
            nd = _flags("next_done", next_done, (e,), "[num_envs]")
        if gym:
            term = _flags("terminated", terminated, shape, layout)
            tr = _flags("truncated", truncated, shape, layout)
            ends = term | tr
            trunc = tr & ~term  # terminated wins when both are set
            resets = np.zeros(shape, dtype=bool)
            if self.autoreset == "next_step":
                resets[1:] = ends[:-1]
            return ends, resets, trunc
        d = _flags("dones", dones, shape, layout)
        ends = np.zeros(shape, dtype=bool)
        resets = np.zeros(shape, dtype=bool)
        if self.autoreset == "same_step":
            ends[:-1] = d[1:]
            ends[-1] = nd
        else:
            # dones[t] marks step t as the reset step after an episode that ended at t - 1.
            resets = d.copy()
            ends[:-1] = d[1:]
            ends[-1] = nd
        return ends, resets, np.zeros(shape, dtype=bool)

    @staticmethod
    def _check_step_data(step_data: dict[str, Any], shape: tuple[int, int]) -> dict[str, Any]:
        libs = set()
        for name, x in step_data.items():
            if not hasattr(x, "shape") or not hasattr(x, "dtype"):
                raise TypeError(
                    f"{name}: expected an array of shape [num_steps, num_envs, ...], got "
                    f"{type(x).__name__}"
                )
            if x.ndim < 2 or tuple(x.shape[:2]) != shape:
                raise ValueError(
                    f"{name}: expected shape [num_steps, num_envs, ...] = {shape} + (...), got "
                    f"{tuple(x.shape)}"
                )
            libs.add(array_api_compat.array_namespace(x).__name__)
        if len(libs) > 1:
            raise TypeError(
                f"step_data: expected arrays of one library, got {sorted(libs)} "
                f"({', '.join(step_data)})"
            )
        return dict(step_data)

    # -- assembly ------------------------------------------------------------------------------
    def _assemble(
        self,
        r: np.ndarray,
        ends: np.ndarray,
        resets: np.ndarray,
        trunc: np.ndarray,
        data: dict[str, Any],
        carry: _Carry,
        rewards: Any,
    ) -> Trajectories:
        s, e = r.shape
        if set(carry.steps) != set(data):
            raise ValueError(
                f"step_data: expected the same fields as the carried rollout "
                f"({sorted(carry.steps)}), got {sorted(data)}"
            )
        nc = int(carry.lens.sum())
        c_off = np.concatenate([[0], np.cumsum(carry.lens)[:-1]]).astype(np.int64)
        # Pool = carried steps, then this rollout env-major: step (t, e) sits at nc + e*S + t.
        pool_r = np.concatenate([carry.rewards, r.T.reshape(-1).astype(np.float64)])
        keep, seg, tail = [], [], []
        lengths, env_ids, truncs, carried, rets = [], [], [], [], []
        headless = np.zeros(e, dtype=bool)
        m = 0
        for env in range(e):
            t_valid = np.flatnonzero(~resets[:, env])
            seq = np.concatenate(
                [np.arange(c_off[env], c_off[env] + carry.lens[env]), nc + env * s + t_valid]
            ).astype(np.int64)
            endf = np.concatenate([np.zeros(carry.lens[env], bool), ends[t_valid, env]])
            trf = np.concatenate([np.zeros(carry.lens[env], bool), trunc[t_valid, env]])
            ep = np.cumsum(endf) - endf  # episode number of each step (its end step included)
            n_done = int(endf.sum())
            done_mask = ep < n_done
            first = 1 if (carry.headless[env] and n_done > 0) else 0
            if carry.headless[env] and n_done == 0:
                headless[env] = True  # still inside the episode whose head was dropped
            sel = done_mask & (ep >= first)
            idx = seq[sel]
            eps = ep[sel] - first
            n_new = n_done - first
            if n_new > 0:
                keep.append(idx)
                seg.append(eps + m)
                cnt = np.bincount(eps, minlength=n_new)
                lengths.append(cnt)
                rets.append(np.bincount(eps, weights=pool_r[idx], minlength=n_new))
                env_ids.append(np.full(n_new, env))
                truncs.append(trf[endf][first:])
                carried.append(np.bincount(eps, weights=idx < nc, minlength=n_new))
                m += n_new
            if self.incomplete == "carry":
                tail.append(seq[~done_mask])
            else:
                tail.append(seq[:0])
                if (~done_mask).any() and not headless[env]:
                    headless[env] = True
        idx_all = np.concatenate(keep) if keep else np.zeros(0, np.int64)
        seg_all = np.concatenate(seg).astype(np.int64) if seg else np.zeros(0, np.int64)
        lengths_a = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)
        tail_all = np.concatenate(tail).astype(np.int64)

        pools = {k: _pool(carry.steps[k], v) for k, v in data.items()}
        steps = {k: _take(v, idx_all) for k, v in pools.items()}
        pending = ends[-1].copy() if self.autoreset == "next_step" else np.zeros(e, bool)
        self._carry = _Carry(
            steps={k: _take(v, tail_all) for k, v in pools.items()},
            rewards=pool_r[tail_all],
            lens=np.array([len(t) for t in tail], dtype=np.int64),
            pending_reset=pending,
            headless=headless,
        )
        t_max = int(lengths_a.max()) if m else 0
        starts = np.concatenate([[0], np.cumsum(lengths_a)[:-1]]).astype(np.int64)
        j = np.arange(t_max, dtype=np.int64)
        mask = j[None, :] < lengths_a[:, None]
        index = np.where(mask, starts[:, None] + j[None, :], 0)

        ref = next(iter(data.values()), rewards)
        returns = np.concatenate(rets) if rets else np.zeros(0)
        fields = {
            "segment_ids": seg_all,
            "returns": returns.astype(r.dtype if r.dtype.kind == "f" else np.float64),
            "lengths": lengths_a,
            "env_ids": np.concatenate(env_ids).astype(np.int64) if env_ids else np.zeros(0, int),
            "truncated": np.concatenate(truncs).astype(bool) if truncs else np.zeros(0, bool),
            "carried_steps": (
                np.concatenate(carried).astype(np.int64) if carried else np.zeros(0, np.int64)
            ),
            "index": index,
            "mask": mask,
        }
        if not array_api_compat.is_numpy_array(ref):
            xp = array_api_compat.array_namespace(ref)
            dev = array_api_compat.device(ref)
            fields = {k: xp.asarray(v, device=dev) for k, v in fields.items()}
        return Trajectories(steps=steps, **fields)


def _empty_carry(data: dict[str, Any], e: int) -> _Carry:
    steps = {}
    for k, v in data.items():
        xp = array_api_compat.array_namespace(v)
        steps[k] = xp.zeros((0, *v.shape[2:]), dtype=v.dtype, device=array_api_compat.device(v))
    return _Carry(
        steps=steps,
        rewards=np.zeros(0),
        lens=np.zeros(e, dtype=np.int64),
        pending_reset=np.zeros(e, dtype=bool),
        headless=np.zeros(e, dtype=bool),
    )


def _pool(carried: Array, x: Array) -> Array:
    """Carried ``[Nc, ...]`` followed by ``x [S, E, ...]`` flattened env-major to ``[E*S, ...]``."""
    xp = array_api_compat.array_namespace(x)
    if array_api_compat.array_namespace(carried) is not xp:
        raise TypeError(
            "step_data: expected the same library as the carried rollout, got a different one"
        )
    s, e = x.shape[:2]
    axes = (1, 0, *range(2, x.ndim))
    flat = xp.reshape(xp.permute_dims(x, axes), (e * s, *x.shape[2:]))
    if tuple(carried.shape[1:]) != tuple(x.shape[2:]):
        raise ValueError(
            f"step_data: expected trailing shape {tuple(carried.shape[1:])} as in the carried "
            f"rollout, got {tuple(x.shape[2:])}"
        )
    if carried.shape[0] == 0:
        return flat
    return xp.concat([xp.astype(carried, flat.dtype), flat], axis=0)


def _take(x: Array, idx: np.ndarray) -> Array:
    xp = array_api_compat.array_namespace(x)
    return xp.take(x, xp.asarray(idx, device=array_api_compat.device(x)), axis=0)


def rollout_to_trajectories(
    rewards: Array,
    *,
    dones: Array | None = None,
    next_done: Array | None = None,
    terminated: Array | None = None,
    truncated: Array | None = None,
    autoreset: str = "same_step",
    **step_data: Array,
) -> Trajectories:
    """One-shot conversion of a single buffer that starts at an episode start for every env.

    Episodes still running at the end are dropped (there is no next rollout to complete them);
    in a training loop use :class:`TrajectoryBuilder`, which carries them over. Arguments as in
    :meth:`TrajectoryBuilder.build`.

    Example:
      >>> import numpy as np
      >>> from haepo_adapters.cleanrl import rollout_to_trajectories
      >>> term = np.array([[0], [1], [0], [0]])
      >>> tr = rollout_to_trajectories(np.ones((4, 1)), terminated=term,
      ...                              truncated=np.zeros((4, 1)), autoreset="next_step",
      ...                              logprobs=np.full((4, 1), -0.5))
      >>> tr.returns.tolist(), tr.steps["logprobs"].tolist()
      ([2.0], [-0.5, -0.5])
    """
    builder = TrajectoryBuilder(autoreset=autoreset, incomplete="drop")
    return builder.build(
        rewards,
        dones=dones,
        next_done=next_done,
        terminated=terminated,
        truncated=truncated,
        **step_data,
    )
