"""Rollout buffer -> trajectories (haepo_adapters.cleanrl.TrajectoryBuilder): edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from haepo_adapters.cleanrl import TrajectoryBuilder, rollout_to_trajectories

torch = pytest.importorskip("torch")


def tag(s: int, e: int, offset: int = 0) -> np.ndarray:
    """obs[t, env] = 1000 * env + t + offset: tells exactly which step landed where."""
    t = np.arange(s)[:, None] + offset
    return (1000 * np.arange(e)[None, :] + t).astype(np.float64)[:, :, None]


def episodes_of(tr) -> list[tuple[int, list[int], float]]:
    """(env, [obs tags], return) per trajectory, from the packed layout."""
    obs = np.asarray(tr.steps["obs"])[:, 0]
    seg = np.asarray(tr.segment_ids)
    return [
        (int(tr.env_ids[k]), obs[seg == k].astype(int).tolist(), float(tr.returns[k]))
        for k in range(tr.num_trajectories)
    ]


def reference_split(rewards, ends, resets):
    """Brute force: walk each env's steps in order, cut after each end, skip reset steps."""
    out = []
    s, e = rewards.shape
    for env in range(e):
        cur: list[int] = []
        for t in range(s):
            if resets[t, env]:
                continue
            cur.append(t)
            if ends[t, env]:
                out.append((env, cur, float(rewards[cur, env].sum())))
                cur = []
    return out


def test_envs_finishing_at_different_steps_never_mix():
    # env 0 ends at steps 1 and 3, env 1 at step 2, env 2 never.
    dones = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])  # CleanRL: obs[t] starts new
    rewards = np.arange(12, dtype=np.float64).reshape(4, 3)
    tr = rollout_to_trajectories(rewards, dones=dones, next_done=np.array([1, 0, 0]), obs=tag(4, 3))
    assert episodes_of(tr) == [
        (0, [0, 1], 0.0 + 3.0),
        (0, [2, 3], 6.0 + 9.0),
        (1, [1000, 1001, 1002], 1.0 + 4.0 + 7.0),
    ]
    assert tr.lengths.tolist() == [2, 2, 3]
    assert tr.segment_ids.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert tr.mask.tolist() == [[True, True, False], [True, True, False], [True, True, True]]


def test_episode_spanning_rollout_boundary_is_carried_over():
    b = TrajectoryBuilder()  # incomplete="carry" is the default
    r1 = np.ones((3, 2))
    tr1 = b.build(r1, dones=np.zeros((3, 2)), next_done=np.array([0, 1]), obs=tag(3, 2))
    assert episodes_of(tr1) == [(1, [1000, 1001, 1002], 3.0)]
    assert b.carried_steps == 3  # env 0's unfinished episode
    r2 = np.full((2, 2), 2.0)
    tr2 = b.build(
        r2, dones=np.array([[0, 1], [0, 0]]), next_done=np.array([1, 0]), obs=tag(2, 2, 10)
    )
    # env 0: 3 carried steps (obs 0..2) + 2 new (obs 10, 11); env 1 still running.
    assert episodes_of(tr2) == [(0, [0, 1, 2, 10, 11], 3.0 + 4.0)]
    assert tr2.carried_steps.tolist() == [3]
    assert b.carried_steps == 2


def test_drop_policy_drops_the_tail_and_its_headless_continuation():
    b = TrajectoryBuilder(incomplete="drop")
    tr1 = b.build(np.ones((3, 1)), dones=np.zeros((3, 1)), obs=tag(3, 1))
    assert tr1.num_trajectories == 0 and b.carried_steps == 0
    # The episode ends at step 0 of rollout 2: its head was dropped, so it must not appear.
    tr2 = b.build(
        np.ones((3, 1)),
        dones=np.array([[0], [1], [0]]),
        next_done=np.array([1]),
        obs=tag(3, 1, 10),
    )
    assert episodes_of(tr2) == [(0, [11, 12], 2.0)]


def test_buffer_with_no_completed_episode():
    b = TrajectoryBuilder()
    tr = b.build(np.ones((4, 2)), dones=np.zeros((4, 2)), obs=tag(4, 2))
    assert tr.num_trajectories == 0 and tr.num_steps == 0
    assert tr.mask.shape == (0, 0) and tr.steps["obs"].shape == (0, 1)
    assert tr.pad(tr.steps["obs"]).shape == (0, 0, 1)
    assert b.carried_steps == 8  # nothing lost
    tr2 = b.build(np.ones((1, 2)), dones=np.zeros((1, 2)), next_done=np.ones(2), obs=tag(1, 2, 4))
    assert [x[2] for x in episodes_of(tr2)] == [5.0, 5.0]


def test_truncation_vs_termination():
    term = np.array([[0, 0], [1, 0], [0, 0], [0, 0]])
    trunc = np.array([[0, 0], [0, 1], [0, 0], [1, 0]])  # env 0 step 1: both set
    tr = rollout_to_trajectories(
        np.ones((4, 2)), terminated=term, truncated=trunc, autoreset="same_step", obs=tag(4, 2)
    )
    assert [(e, o) for e, o, _ in episodes_of(tr)] == [
        (0, [0, 1]),
        (0, [2, 3]),
        (1, [1000, 1001]),
    ]
    # Both end an episode; terminated wins when both are set.
    assert tr.truncated.tolist() == [False, True, True]


def test_next_step_autoreset_skips_the_reset_step_across_rollouts():
    # gymnasium 1.x NEXT_STEP: the step after a done is a reset step (reward 0 there by
    # contract; here 99 so a mix-up would show in the return).
    b = TrajectoryBuilder(autoreset="next_step")
    rew = np.array([[1.0], [1.0], [99.0], [1.0]])
    term = np.array([[0], [1], [0], [1]])  # ends at 1; step 2 is reset; 3 ends a 1-step ep.
    tr = b.build(rew, terminated=term, truncated=np.zeros((4, 1)), obs=tag(4, 1))
    assert episodes_of(tr) == [(0, [0, 1], 2.0), (0, [3], 1.0)]
    # The last step ended: step 0 of the next rollout is a reset step.
    tr2 = b.build(
        np.array([[99.0], [5.0], [5.0]]),
        terminated=np.array([[0], [0], [1]]),
        truncated=np.zeros((3, 1)),
        obs=tag(3, 1, 10),
    )
    assert episodes_of(tr2) == [(0, [11, 12], 10.0)]


def test_cleanrl_dones_next_step_equals_gymnasium_flags():
    rng = np.random.default_rng(0)
    s, e = 40, 3
    ends = rng.random((s, e)) < 0.15
    resets = np.zeros_like(ends)
    resets[1:] = ends[:-1]
    ends &= ~resets  # gymnasium never ends on a reset step
    resets = np.zeros_like(ends)
    resets[1:] = ends[:-1]
    rew = rng.normal(size=(s, e))
    gym_tr = rollout_to_trajectories(
        rew, terminated=ends, truncated=np.zeros_like(ends), autoreset="next_step", obs=tag(s, e)
    )
    dones = np.zeros_like(ends)  # CleanRL loop: dones[t] = next_done of step t - 1
    dones[1:] = ends[:-1]
    clean_tr = rollout_to_trajectories(
        rew, dones=dones, next_done=ends[-1], autoreset="next_step", obs=tag(s, e)
    )
    assert episodes_of(gym_tr) == episodes_of(clean_tr)
    assert episodes_of(gym_tr) == [
        (env, [1000 * env + t for t in ts], pytest.approx(r))
        for env, ts, r in reference_split(rew, ends, resets)
    ]


@pytest.mark.parametrize("autoreset", ["same_step", "next_step"])
def test_incremental_carry_equals_one_shot_on_the_concatenated_buffer(autoreset):
    rng = np.random.default_rng(1)
    s, e, chunks = 60, 4, [7, 1, 20, 32]
    ends = rng.random((s, e)) < 0.12
    if autoreset == "next_step":
        for t in range(1, s):
            ends[t] &= ~ends[t - 1]
    rew = rng.normal(size=(s, e))
    obs = tag(s, e)
    whole = rollout_to_trajectories(
        rew, terminated=ends, truncated=np.zeros_like(ends), autoreset=autoreset, obs=obs
    )
    b = TrajectoryBuilder(autoreset=autoreset)
    got, t0 = [], 0
    for c in chunks:
        tr = b.build(
            rew[t0 : t0 + c],
            terminated=ends[t0 : t0 + c],
            truncated=np.zeros((c, e), bool),
            obs=obs[t0 : t0 + c],
        )
        got += episodes_of(tr)
        t0 += c
    key = lambda x: (x[0], x[1][0])
    want = sorted(episodes_of(whole), key=key)
    assert sorted(got, key=key) == [(a, b_, pytest.approx(r)) for a, b_, r in want]


def test_packed_and_padded_layouts_agree_in_the_loss_and_gradient():
    from haepo_core import haepo_loss, haepo_loss_packed

    dones = np.array([[0, 0], [0, 1], [1, 0], [0, 0], [0, 1]])
    tr = rollout_to_trajectories(
        torch.arange(10.0).reshape(5, 2),
        dones=dones,
        next_done=torch.tensor([1, 1]),
        obs=torch.as_tensor(tag(5, 2)),
    )
    assert isinstance(tr.returns, torch.Tensor) and isinstance(tr.mask, torch.Tensor)
    logp = -torch.rand(
        tr.num_steps, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    logp.requires_grad_(True)
    packed = haepo_loss_packed(logp, tr.segment_ids, tr.returns)
    (g_packed,) = torch.autograd.grad(packed.loss, logp)
    padded_logp = tr.pad(logp, fill=float("nan"))  # padding must never leak
    padded = haepo_loss(padded_logp, tr.returns, tr.mask)
    (g_padded,) = torch.autograd.grad(padded.loss, logp)
    torch.testing.assert_close(packed.loss, padded.loss)
    torch.testing.assert_close(g_packed, g_padded)
    # pad() puts step j of trajectory k at [k, j].
    obs_pad = tr.pad(tr.steps["obs"])
    assert obs_pad.shape == (tr.num_trajectories, int(tr.lengths.max()), 1)
    assert obs_pad[0, :, 0].tolist() == [0.0, 1.0, 0.0]  # env 0, episode 1 (2 steps) + pad


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(rewards=np.ones(5), dones=np.zeros(5)), ValueError, "rewards: expected a 2-d"),
        (
            dict(rewards=np.ones((5, 2)), dones=np.zeros((5, 3))),
            ValueError,
            r"dones: expected shape",
        ),
        (
            dict(rewards=np.ones((5, 2)), dones=np.full((5, 2), 0.5)),
            ValueError,
            "dones: expected only 0/1",
        ),
        (
            dict(rewards=np.ones((5, 2)), dones=np.full((5, 2), "x")),
            TypeError,
            "dones: expected a bool",
        ),
        (
            dict(rewards=np.ones((5, 2), dtype=complex), dones=np.zeros((5, 2))),
            TypeError,
            "rewards: expected a real",
        ),
        (
            dict(rewards=np.full((5, 2), np.nan), dones=np.zeros((5, 2))),
            ValueError,
            "rewards: expected finite",
        ),
        (dict(rewards=[[1.0]], dones=np.zeros((1, 1))), TypeError, "rewards: expected an array"),
        (dict(rewards=np.ones((5, 2))), ValueError, "dones: expected dones or terminated"),
        (
            dict(rewards=np.ones((5, 2)), terminated=np.zeros((5, 2))),
            ValueError,
            "truncated: expected both",
        ),
        (
            dict(
                rewards=np.ones((5, 2)),
                dones=np.zeros((5, 2)),
                terminated=np.zeros((5, 2)),
                truncated=np.zeros((5, 2)),
            ),
            ValueError,
            "got both",
        ),
        (
            dict(rewards=np.ones((5, 2)), dones=np.zeros((5, 2)), next_done=np.zeros(3)),
            ValueError,
            r"next_done: expected shape \[num_envs\]",
        ),
        (
            dict(rewards=np.ones((5, 2)), terminated=np.zeros((5, 2)), truncated=np.zeros((4, 2))),
            ValueError,
            "truncated: expected shape",
        ),
        (
            dict(rewards=np.ones((5, 2)), dones=np.zeros((5, 2)), obs=np.zeros((5, 3, 4))),
            ValueError,
            r"obs: expected shape \[num_steps, num_envs, ...\]",
        ),
        (
            dict(rewards=np.ones((5, 2)), dones=np.zeros((5, 2)), obs=np.zeros(5)),
            ValueError,
            "obs: expected shape",
        ),
        (
            dict(rewards=np.ones((5, 2)), dones=np.zeros((5, 2)), obs=[1, 2]),
            TypeError,
            "obs: expected an array",
        ),
        (
            dict(
                rewards=np.ones((5, 2)),
                dones=np.zeros((5, 2)),
                obs=np.zeros((5, 2)),
                actions=torch.zeros(5, 2),
            ),
            TypeError,
            "step_data: expected arrays of one library",
        ),
    ],
)
def test_malformed_inputs_raise_naming_the_argument(kwargs, err, match):
    rewards = kwargs.pop("rewards")
    with pytest.raises(err, match=match):
        rollout_to_trajectories(rewards, **kwargs)


def test_builder_options_and_layout_changes_are_rejected():
    with pytest.raises(ValueError, match="autoreset: expected one of"):
        TrajectoryBuilder(autoreset="final_info")
    with pytest.raises(ValueError, match="incomplete: expected one of"):
        TrajectoryBuilder(incomplete="keep")
    b = TrajectoryBuilder()
    b.build(np.ones((2, 2)), dones=np.zeros((2, 2)), obs=np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="rewards: expected num_envs = 2"):
        b.build(np.ones((2, 3)), dones=np.zeros((2, 3)), obs=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="step_data: expected the same fields"):
        b.build(np.ones((2, 2)), dones=np.zeros((2, 2)), actions=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="step_data: expected trailing shape"):
        b.build(np.ones((2, 2)), dones=np.zeros((2, 2)), obs=np.zeros((2, 2, 4)))
    b.reset()
    assert b.carried_steps == 0
    tr = b.build(np.ones((2, 3)), dones=np.zeros((2, 3)), next_done=np.ones(3))
    assert tr.returns.tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match=r"x: expected a packed array of shape \[N, ...\]"):
        tr.pad(np.zeros(4))
