"""HAEPO against PPO with RL Baselines3 Zoo's tuned hyperparameters, both trained by rl_zoo3.

    python benchmarks/zoo_compare.py                           # every task, seeds 1001-1010
    python benchmarks/zoo_compare.py --tasks CartPole-v1 Acrobot-v1 --seeds 1001 1002 1003
    python benchmarks/zoo_compare.py --report-only             # tables and plots from the CSV
    python benchmarks/zoo_compare.py --smoke                   # a few thousand steps (a test)

Both methods run through the zoo's own training entry point, one subprocess a run: PPO with
the hyperparameters of the installed ``rl_zoo3`` package (``hyperparams/ppo.yml``, read at run
time, never copied; the v5 MuJoCo tasks take the zoo's entry of the same task at an older
version: ``ZOO_KEYS``), HAEPO with ``haepo_adapters.sb3``'s ``hyperparams/haepo.yml``, at the
same budget. A run's row goes to ``runs/zoo_compare/results.csv`` as soon as it ends, so an
interrupted benchmark resumes where it stopped.

Reported per task and method: the final moving average of the last 20 training episodes
(from the zoo's Monitor files) and the deterministic return on 20 fixed start states (the
same starts as the CleanRL benchmark, ``haepo_adapters.cleanrl.EVAL_SEED``), as medians and as
interquartile means with 95% stratified-bootstrap confidence intervals, and the probability
that HAEPO improves on PPO (``rliable``). Plots: ``<task>_curves.png`` (median MA20 against
steps, min-max band) and ``profile.png`` (performance profiles of the evaluation, scores
normalized between a random policy and the zoo's published PPO score).

The evaluation seeds (1001-1010 by default) were chosen once, before any run, and no
hyperparameter of either method was tuned on them.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "zoo_compare"
FRESH_SEEDS = list(range(1001, 1011))
WINDOW = 20
EVAL_EPISODES = 20


@dataclass(frozen=True)
class Task:
    env_id: str
    budget: int
    reference: float  # the zoo's published PPO score (normalization of the profiles)
    zoo_key: str | None = None  # ppo.yml entry when the zoo has none for this version


TASKS = {
    t.env_id: t
    for t in (
        Task("CartPole-v1", 100_000, 500.0),
        Task("Acrobot-v1", 100_000, -73.5),
        Task("LunarLander-v3", 1_000_000, 242.1),
        Task("Pendulum-v1", 100_000, -172.0),
        Task("InvertedPendulum-v5", 1_000_000, 1000.0, zoo_key="InvertedPendulum-v2"),
        Task("Hopper-v5", 1_000_000, 2410.0, zoo_key="Hopper-v4"),
    )
}
METHODS = ("haepo", "ppo")
FIELDS = ["method", "task", "seed", "budget", "final_ma20", "eval_mean", "episodes", "wall_s"]


def zoo_hyperparams(method: str, task: Task) -> dict[str, Any]:
    """The method's entry for ``task``: the zoo's own for PPO, haepo.yml's for HAEPO."""
    import yaml

    if method == "ppo":
        text = resources.files("rl_zoo3").joinpath("hyperparams/ppo.yml").read_text()
    else:
        text = resources.files("haepo_adapters.sb3").joinpath("hyperparams/haepo.yml").read_text()
    table = yaml.safe_load(text)
    key = task.env_id if task.env_id in table else task.zoo_key
    if key not in table:
        raise KeyError(f"{method}: no hyperparameters for {task.env_id} in the zoo file")
    return dict(table[key])


def train_command(method: str, task: Task, seed: int, folder: Path, budget: int) -> list[str]:
    conf = folder / "hyperparams.yml"
    import yaml

    conf.write_text(yaml.safe_dump({task.env_id: zoo_hyperparams(method, task)}))
    entry = "rl_zoo3.train" if method == "ppo" else "haepo_adapters.sb3.zoo"
    return [
        sys.executable, "-P", "-m", entry, "--algo", method, "--env", task.env_id,
        "--seed", str(seed), "-n", str(budget), "-f", str(folder), "-conf", str(conf),
        "--eval-freq", "-1", "--save-freq", "-1", "--num-threads", "1", "--verbose", "0",
        "--log-interval", "-2",
    ]  # fmt: skip


def monitor_returns(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(returns, steps)`` of every finished training episode, in the order they ended."""
    rows = []
    for path in run_dir.glob("*.monitor.csv"):
        with path.open() as f:
            next(f)  # the Monitor's JSON header
            rows += [(float(r["t"]), float(r["r"]), int(r["l"])) for r in csv.DictReader(f)]
    rows.sort()
    returns = np.array([r for _, r, _ in rows])
    steps = np.cumsum([n for _, _, n in rows])
    return returns, steps


def evaluate(method: str, task: Task, run_dir: Path) -> float:
    """Mean deterministic return on the fixed start states (VecNormalize statistics frozen)."""
    import gymnasium as gym
    from haepo_adapters.cleanrl import EVAL_SEED
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    if method == "ppo":
        algo = PPO
    else:
        from haepo_adapters.sb3 import HAEPO as algo
    model = algo.load(run_dir / f"{task.env_id}.zip", device="cpu")
    stats = run_dir / task.env_id / "vecnormalize.pkl"
    norm = None
    if stats.exists():
        norm = VecNormalize.load(str(stats), DummyVecEnv([lambda: gym.make(task.env_id)]))
        norm.training, norm.norm_reward = False, False
    env = gym.make(task.env_id)
    totals = []
    for k in range(EVAL_EPISODES):
        obs, _ = env.reset(seed=EVAL_SEED + k)
        total, done = 0.0, False
        while not done:
            x = norm.normalize_obs(obs[None])[0] if norm is not None else obs
            action, _ = model.predict(x, deterministic=True)
            obs, reward, term, trunc, _ = env.step(action)
            total += float(reward)
            done = term or trunc
        totals.append(total)
    return float(np.mean(totals))


def done_runs(path: Path) -> set[tuple[str, str, int, int]]:
    if not path.exists():
        return set()
    with path.open() as f:
        return {
            (r["method"], r["task"], int(r["seed"]), int(r["budget"])) for r in csv.DictReader(f)
        }


def run_one(method: str, task: Task, seed: int, budget: int, out: Path) -> dict[str, Any]:
    import time

    folder = out / method / task.env_id / f"seed{seed}_{budget}"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    res = subprocess.run(
        train_command(method, task, seed, folder, budget),
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"{method} {task.env_id} seed {seed} failed:\n{res.stderr[-4000:]}")
    wall = time.perf_counter() - t0
    run_dir = max((folder / method).glob(f"{task.env_id}_*"), key=lambda p: p.stat().st_mtime)
    returns, _ = monitor_returns(run_dir)
    final = float(np.mean(returns[-WINDOW:])) if len(returns) else float("nan")
    return {
        "method": method, "task": task.env_id, "seed": seed, "budget": budget,
        "final_ma20": final, "eval_mean": evaluate(method, task, run_dir),
        "episodes": len(returns), "wall_s": round(wall, 1),
    }  # fmt: skip


def report(out: Path) -> None:
    """Medians, IQMs with 95% CIs, P(HAEPO > PPO) per task; curves and profiles as PNG."""
    path = out / "results.csv"
    if not path.exists():
        print("no results yet")
        return
    with path.open() as f:
        rows = list(csv.DictReader(f))
    try:
        from rliable import library as rly
        from rliable import metrics
    except ImportError:  # pragma: no cover - rliable is in the bench extra
        rly = None
    print("| task | budget | method | seeds | final MA20 median | IQM [95% CI] | eval median "
          "| eval IQM [95% CI] | P(HAEPO > PPO), eval |")  # fmt: skip
    print("|---|---:|---|---:|---:|---|---:|---|---:|")
    for task in TASKS:
        for budget in sorted({int(r["budget"]) for r in rows if r["task"] == task}):
            sel = {m: [r for r in rows if r["task"] == task and r["method"] == m
                       and int(r["budget"]) == budget] for m in METHODS}  # fmt: skip
            for m in METHODS:
                if not sel[m]:
                    continue
                fin = np.array([float(r["final_ma20"]) for r in sel[m]])
                ev = np.array([float(r["eval_mean"]) for r in sel[m]])
                ci_f = ci_e = ""
                if rly is not None and len(fin) >= 4:
                    ci_f = _iqm_ci(rly, metrics, fin)
                    ci_e = _iqm_ci(rly, metrics, ev)
                poi = ""
                if m == "haepo" and sel["ppo"] and rly is not None:
                    ppo = np.array([float(r["eval_mean"]) for r in sel["ppo"]])
                    poi = f"{_poi(rly, metrics, ev, ppo)}"
                print(f"| {task} | {budget} | {m} | {len(fin)} | {np.median(fin):.1f} | {ci_f} "
                      f"| {np.median(ev):.1f} | {ci_e} | {poi} |")  # fmt: skip
    _plots(out, rows)


def _iqm_ci(rly: Any, metrics: Any, x: np.ndarray) -> str:
    point, ci = rly.get_interval_estimates(
        {"m": x[:, None]}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=2000
    )
    return f"{point['m'][0]:.1f} [{ci['m'][0, 0]:.1f}, {ci['m'][1, 0]:.1f}]"


def _poi(rly: Any, metrics: Any, x: np.ndarray, y: np.ndarray) -> str:
    n = min(len(x), len(y))
    point, ci = rly.get_interval_estimates(
        {"p": (x[:n, None], y[:n, None])}, metrics.probability_of_improvement, reps=2000
    )
    return f"{float(np.squeeze(point['p'])):.2f} [{ci['p'][0].item():.2f}, {ci['p'][1].item():.2f}]"


def _plots(out: Path, rows: list[dict[str, str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for task in {r["task"] for r in rows}:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for m, color in zip(METHODS, ("tab:blue", "tab:orange")):
            curves = []
            for r in rows:
                if r["task"] != task or r["method"] != m:
                    continue
                folder = out / m / task / f"seed{r['seed']}_{r['budget']}" / m
                run_dir = max(folder.glob(f"{task}_*"), key=lambda p: p.stat().st_mtime)
                ret, steps = monitor_returns(run_dir)
                if len(ret) < WINDOW:
                    continue
                ma = np.convolve(ret, np.ones(WINDOW) / WINDOW, mode="valid")
                grid = np.linspace(steps[WINDOW - 1], steps[-1], 100)
                curves.append((grid, np.interp(grid, steps[WINDOW - 1 :], ma)))
            if not curves:
                continue
            grid = curves[0][0]
            ys = np.stack([np.interp(grid, g, y) for g, y in curves])
            ax.plot(grid, np.median(ys, 0), color=color, label=f"{m} ({len(ys)} seeds)")
            ax.fill_between(grid, ys.min(0), ys.max(0), color=color, alpha=0.2)
        ax.set_title(f"{task}: MA{WINDOW} of training returns (median, min-max)")
        ax.set_xlabel("environment steps")
        if ax.lines:
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{task}_curves.png", dpi=110)
        plt.close(fig)
    try:
        from rliable import library as rly
        from rliable import plot_utils
    except ImportError:  # pragma: no cover
        return
    tasks = [t for t in TASKS if all(any(r["task"] == t and r["method"] == m for r in rows)
                                     for m in METHODS)]  # fmt: skip
    if not tasks:
        return
    scores = {}
    for m in METHODS:
        per_task = []
        for t in tasks:
            ev = [float(r["eval_mean"]) for r in rows if r["task"] == t and r["method"] == m]
            lo, hi = RANDOM_SCORE.get(t, 0.0), TASKS[t].reference
            per_task.append((np.array(ev) - lo) / (hi - lo))
        n = min(len(x) for x in per_task)
        scores[m] = np.stack([x[:n] for x in per_task], axis=1)
    taus = np.linspace(0.0, 1.2, 61)
    dists, cis = rly.create_performance_profile(scores, taus)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    plot_utils.plot_performance_profiles(dists, taus, performance_profile_cis=cis, ax=ax,
                                         xlabel=r"normalized evaluation score $\tau$")  # fmt: skip
    ax.set_title(f"Performance profiles over {', '.join(tasks)}", fontsize=8)
    ax.legend(list(scores))
    fig.tight_layout()
    fig.savefig(out / "profile.png", dpi=110)
    plt.close(fig)


# Mean return of a uniformly random policy on the same 20 fixed starts (profiles' zero).
RANDOM_SCORE = {
    "CartPole-v1": 22.0,
    "Acrobot-v1": -500.0,
    "LunarLander-v3": -180.0,
    "Pendulum-v1": -1200.0,
    "InvertedPendulum-v5": 6.0,
    "Hopper-v5": 18.0,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=FRESH_SEEDS)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="3000 steps a run (a test of the script)")
    args = ap.parse_args(argv)
    from tqdm.auto import tqdm

    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.csv"
    if not args.report_only:
        done = done_runs(results)
        todo = [
            (m, TASKS[t], s, 3000 if args.smoke else TASKS[t].budget)
            for t in args.tasks for s in args.seeds for m in args.methods
        ]  # fmt: skip
        todo = [x for x in todo if (x[0], x[1].env_id, x[2], x[3]) not in done]
        bar = tqdm(todo, desc="zoo_compare", unit="run")
        for method, task, seed, budget in bar:
            bar.set_postfix_str(f"{method} {task.env_id} seed {seed}")
            row = run_one(method, task, seed, budget, args.out)
            new = not results.exists()
            with results.open("a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=FIELDS)
                if new:
                    w.writeheader()
                w.writerow(row)
    report(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
