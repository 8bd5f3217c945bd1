"""start_groups: one HAEPO group per start, lone episodes pooled, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
from haepo_adapters.cleanrl import (
    StepTerms,
    rollout_to_trajectories,
    start_groups,
)


def _partition(labels: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(labels == g).tolist()) for g in np.unique(labels)}


def test_complete_groups_get_one_label_per_start():
    keys = np.array([5, 2, 5, 2, 9, 9])
    ids = start_groups(keys)
    assert ids.dtype == np.int64 and ids.shape == (6,)
    assert _partition(ids) == {frozenset({0, 2}), frozenset({1, 3}), frozenset({4, 5})}
    np.testing.assert_array_equal(ids, np.unique(keys, return_inverse=True)[1])


def test_lone_episodes_are_pooled_into_one_group_and_the_rest_keep_theirs():
    keys = np.array([7, 7, 3, 9, 7, 5, 4, 4])
    ids = start_groups(keys)
    assert _partition(ids) == {frozenset({0, 1, 4}), frozenset({6, 7}), frozenset({2, 3, 5})}
    assert sorted(np.unique(ids).tolist()) == [0, 1, 2]  # contiguous labels
    assert set(ids[[2, 3, 5]].tolist()) == {0}  # the pool comes first


def test_min_size_sets_which_starts_are_pooled():
    keys = np.array([1, 1, 2, 2, 2, 3])
    assert _partition(start_groups(keys, min_size=1)) == {
        frozenset({0, 1}),
        frozenset({2, 3, 4}),
        frozenset({5}),
    }
    assert _partition(start_groups(keys, min_size=3)) == {
        frozenset({0, 1, 5}),
        frozenset({2, 3, 4}),
    }
    assert _partition(start_groups(keys, min_size=4)) == {frozenset(range(6))}


def test_every_start_alone_gives_one_group_as_ungrouped():
    np.testing.assert_array_equal(start_groups(np.array([4, 8, 1])), [0, 0, 0])


def test_torch_keys_are_accepted():
    torch = pytest.importorskip("torch")
    ids = start_groups(torch.tensor([3, 3, 8], dtype=torch.int64))
    np.testing.assert_array_equal(ids, [1, 1, 0])


def test_a_lone_episode_gets_a_gradient_once_pooled():
    """Alone in its group an episode's z-scored return is 0; pooled, it is ranked."""
    torch = pytest.importorskip("torch")
    from haepo_adapters.cleanrl import haepo_trajectory_loss

    # four one-step episodes: two share start 0, the others are alone of starts 1 and 2
    term = np.ones((1, 4), bool)
    traj = rollout_to_trajectories(
        torch.tensor([[1.0, 3.0, 2.0, 5.0]], dtype=torch.float64),
        terminated=term,
        truncated=np.zeros_like(term),
        autoreset="same_step",
        obs=torch.zeros((1, 4, 1), dtype=torch.float64),
    )
    keys = np.array([0, 0, 1, 2])
    grads = {}
    for name, ids in (("per start", np.unique(keys, return_inverse=True)[1]),
                      ("pooled", start_groups(keys))):  # fmt: skip
        logp = torch.full((4,), -0.7, dtype=torch.float64, requires_grad=True)
        out = haepo_trajectory_loss(
            traj, StepTerms(logp, None, None), group_ids=torch.as_tensor(ids)
        )
        out.loss.backward()
        grads[name] = logp.grad.numpy()
    np.testing.assert_array_equal(grads["per start"][2:], 0.0)  # groups of one: no signal
    assert np.all(grads["pooled"][2:] != 0.0)
    assert np.sign(grads["pooled"][3]) == -np.sign(grads["pooled"][2])  # ranked: 5 above 2
    np.testing.assert_allclose(grads["pooled"][:2], grads["per start"][:2] * 3 / 2)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(starts=np.array([1.0, 2.0])), TypeError, r"starts: expected an integer dtype"),
        (dict(starts=np.array([[1, 2]])), ValueError, r"starts: expected shape \[M\]"),
        (dict(starts=np.array([], dtype=np.int64)), ValueError, r"M >= 1, got \(0,\)"),
        (dict(starts=[1, 2]), TypeError, r"starts: expected an array"),
        (dict(starts=np.array([1, 2]), min_size=0), ValueError, r"min_size: .*got 0"),
        (dict(starts=np.array([1, 2]), min_size=True), TypeError, r"min_size: .*got bool"),
        (dict(starts=np.array([1, 2]), min_size=2.0), TypeError, r"min_size: .*got float"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        start_groups(**kwargs)
