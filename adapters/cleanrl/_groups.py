"""HAEPO group labels from each episode's start: the episodes of one start form one group.

With grouped starts (GRPO's prompt groups carried over to RL: several envs replay one seeded
start state), each episode is ranked only against the other episodes from the same start, so
the start's share of the return cancels in the group's z-scored returns. An episode that is
the only one of its start in a batch (its group-mates finished in another batch, which is
common once episodes differ in length) would form a group of one: its z-scored return is 0 and
it gives no policy gradient at all. Such episodes are pooled instead and ranked against each
other, as ungrouped episodes are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._episodes import _as_numpy

__all__ = ["start_groups"]


def start_groups(starts: Any, *, min_size: int = 2) -> np.ndarray:
    r"""Group labels ``[M]`` for :func:`haepo_trajectory_loss`: one group per start.

    .. math::

        g_k = \begin{cases} \text{rank of } s_k \text{ among the batch's starts}
        & \text{if } |\{j : s_j = s_k\}| \ge \texttt{min\_size} \\
        \text{one shared pool label} & \text{otherwise} \end{cases}

    Episodes whose start ``s_k`` has at least ``min_size`` episodes in the batch form one
    group per start. The others (a start alone in the batch, by default) are pooled into one
    group and ranked against each other: alone in its group an episode's z-scored return is
    exactly 0 and it adds nothing to the policy gradient. Labels are ``0 .. G-1``, the pool
    (when there is one) first.

    Args:
      starts: ``[M]`` integer start key of each episode (NumPy, torch or JAX; episodes with
        equal keys started from the same state).
      min_size: ``int >= 1``; starts with fewer episodes than this in the batch are pooled.
        ``1`` never pools (one group per start, whatever its size).

    Returns:
      ``[M]`` int64 NumPy group labels.

    Raises:
      TypeError: ``starts`` not an integer array, or ``min_size`` not an int.
      ValueError: ``starts`` not 1-D or empty, or ``min_size < 1``.

    Example:
      >>> import numpy as np
      >>> from haepo_adapters.cleanrl import start_groups
      >>> start_groups(np.array([7, 7, 3, 9, 7, 5])).tolist()  # 3, 9, 5 alone: pooled
      [1, 1, 0, 0, 1, 0]
      >>> start_groups(np.array([7, 7, 3, 9]), min_size=1).tolist()
      [1, 1, 0, 2]
    """
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)):
        raise TypeError(f"min_size: expected an int >= 1, got {type(min_size).__name__}")
    if min_size < 1:
        raise ValueError(f"min_size: expected an int >= 1, got {min_size!r}")
    keys = _as_numpy("starts", starts)
    if keys.dtype.kind not in "iu":
        raise TypeError(f"starts: expected an integer dtype (start keys), got {keys.dtype}")
    if keys.ndim != 1 or keys.shape[0] == 0:
        raise ValueError(f"starts: expected shape [M] with M >= 1, got {keys.shape}")
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    pooled = counts[inverse] < min_size
    if not pooled.any():
        return inverse
    # The pool takes label -1 before relabelling, so it becomes 0 and the others 1 .. G-1.
    relabelled = np.unique(np.where(pooled, -1, inverse), return_inverse=True)[1]
    return relabelled.reshape(-1).astype(np.int64)
