"""HAEPO on a toy problem with nothing but NumPy: a tabular softmax policy on a short corridor.

The agent starts in cell 0 of a corridor of ``--cells`` cells and has ``--horizon`` steps; each
step it moves left or right; the return is the farthest cell it reached (normalized to [0, 1]).
Trajectories are sampled in groups of ``--group-size`` per update; the gradient of the HAEPO loss
with respect to each step's log-prob comes from ``haepo_core.haepo_grad`` (closed form, no
autodiff) and is chained through the softmax by hand:
``d logp(a|s) / d theta[s] = onehot(a) - pi(.|s)``.

Run: ``python examples/toy_softmax.py`` (about a second). It prints the mean return, the ESS and
the loss as it learns.
"""

from __future__ import annotations

import argparse

import numpy as np
from tqdm import trange

from haepo_core import haepo_grad


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def rollout(theta: np.ndarray, n: int, horizon: int, rng: np.random.Generator):
    """Sample ``n`` trajectories; returns states, actions, logp ``[n, horizon]`` and returns."""
    cells = theta.shape[0]
    states = np.zeros((n, horizon), dtype=np.int64)
    actions = np.zeros((n, horizon), dtype=np.int64)
    pos = np.zeros(n, dtype=np.int64)
    best = np.zeros(n, dtype=np.int64)
    for t in range(horizon):
        states[:, t] = pos
        probs = softmax(theta[pos])
        actions[:, t] = (rng.random(n) < probs[:, 1]).astype(np.int64)
        pos = np.clip(pos + 2 * actions[:, t] - 1, 0, cells - 1)
        best = np.maximum(best, pos)
    logp = np.log(softmax(theta[states]))
    logp = np.take_along_axis(logp, actions[..., None], axis=-1)[..., 0]
    return states, actions, logp, best / (cells - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=12)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--groups", type=int, default=8, help="groups per update")
    parser.add_argument("--group-size", type=int, default=8, help="trajectories per group")
    parser.add_argument("--updates", type=int, default=150)
    parser.add_argument("--lr", type=float, default=2.0)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--entropy-coef", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    theta = np.zeros((args.cells, 2))
    n = args.groups * args.group_size
    group_ids = np.repeat(np.arange(args.groups), args.group_size)
    bar = trange(args.updates, desc="HAEPO toy", unit="update")
    first = None
    for update in bar:
        states, actions, logp, returns = rollout(theta, n, args.horizon, rng)
        probs = softmax(theta[states])  # [n, T, 2]
        entropy = -(probs * np.log(probs)).sum(-1)
        out, grads = haepo_grad(
            logp,
            returns,
            group_ids=group_ids,
            entropy=entropy,
            entropy_coef=args.entropy_coef,
            temperature=args.temperature,
        )
        # chain rule through the tabular softmax
        onehot = np.eye(2)[actions]
        d_theta_steps = grads["logp"][..., None] * (onehot - probs)
        logpi = np.log(probs)
        d_ent = probs * (-(logpi + entropy[..., None]))  # dH/dtheta for each step
        d_theta_steps += grads["entropy"][..., None] * d_ent
        d_theta = np.zeros_like(theta)
        np.add.at(d_theta, states, d_theta_steps)
        theta -= args.lr * d_theta
        mean_return = float(returns.mean())
        first = mean_return if first is None else first
        bar.set_postfix(
            ret=f"{mean_return:.3f}",
            ess=f"{float(out.stats['ess']):.2f}",
            loss=f"{float(out.loss):+.3f}",
        )
        if update % 25 == 0 or update == args.updates - 1:
            bar.write(
                f"update {update:4d}  mean return {mean_return:.3f}  "
                f"ESS {float(out.stats['ess']):.2f}/{args.group_size}  loss {float(out.loss):+.4f}"
            )
    print(f"mean return: first update {first:.3f} -> last update {mean_return:.3f}")


if __name__ == "__main__":
    main()
