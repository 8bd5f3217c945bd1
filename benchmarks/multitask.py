"""Multi-task benchmark: HAEPO vs PPO (CleanRL's defaults) on five gymnasium tasks, many seeds.

    python benchmarks/multitask.py --tasks cartpole acrobot --seeds 1-10 --workers 2
    python benchmarks/multitask.py --tasks lunarlander --seeds 1-3 --budget 500000
    python benchmarks/multitask.py --tasks cartpole --methods haepo --set target_kl=0 \\
        adaptive_lr=false --label haepo-no-trust-region  # an ablation: options changed
    python benchmarks/multitask.py --report-only       # CSV/PNG/table from the saved runs
    python benchmarks/multitask.py --smoke             # a few thousand steps: seconds (CI)

Each run is one of the single-file scripts of ``examples/cleanrl/`` at its own defaults, with
``--env-id`` and the task's env-step budget: ``haepo_cartpole.py`` / ``ppo_cartpole.py`` (the
port of CleanRL's ``ppo.py``) for discrete actions, ``haepo_pendulum.py`` /
``ppo_pendulum.py`` (the port of ``ppo_continuous_action.py``) for continuous ones. Runs go to
``--workers`` processes, each single-threaded; every finished run is saved as JSON under
``--out`` so an interrupted benchmark resumes where it stopped (a run is keyed by task, label,
seed and budget).

Writes ``--out``/``multitask.csv`` (one row per run: final and best MA20, steps to the task's
threshold, collapse flag, HAEPO's minimum entropy and median ESS) and ``--out``/``<task>.png``
(median MA20 over seeds with a min-max band, one line per method), with the evaluation also
``--out``/``<task>_eval.png`` (each run's final against its best policy on the fixed starts),
and prints a table of medians (``--markdown`` writes it as Markdown).

MA20 is the mean return of the last 20 finished episodes; "best" and "steps to threshold" use
full 20-episode windows only. A run *collapsed* when its final MA20 ends below half-way between
the task's floor (the return of a failing policy: 0 on CartPole and InvertedPendulum, -500 on
Acrobot) and its own best MA20.

With ``--eval-episodes N`` (default 20; 0: off) every run also evaluates two policies on the
same N fixed start states (``haepo_adapters.cleanrl.evaluate_policy``: the same starts for
every run, seed and method): the final policy, and the policy of the update at which the
training MA20 was highest. ``eval_final`` and ``eval_best`` are their mean returns, and
``eval_collapsed`` flags a run whose final policy scores below half-way between the floor and
its best policy's score, on those same starts. Unlike the MA20 rule, this does not depend on
which start states the last training episodes happened to get.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from haepo_adapters.cleanrl import moving_average

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "cleanrl"
WINDOW = 20


@dataclass(frozen=True)
class Task:
    env_id: str
    budget: int
    threshold: float  # "solved" level for steps-to-threshold
    floor: float  # return of a failing policy (for the collapse flag)
    action: str  # "discrete" or "continuous"


TASKS: dict[str, Task] = {
    "cartpole": Task("CartPole-v1", 100_000, 475.0, 0.0, "discrete"),
    "acrobot": Task("Acrobot-v1", 100_000, -100.0, -500.0, "discrete"),
    "lunarlander": Task("LunarLander-v3", 500_000, 200.0, -200.0, "discrete"),
    "invertedpendulum": Task("InvertedPendulum-v5", 200_000, 950.0, 0.0, "continuous"),
    "pendulum": Task("Pendulum-v1", 200_000, -200.0, -1500.0, "continuous"),
}
SCRIPTS = {
    ("haepo", "discrete"): "haepo_cartpole.py",
    ("ppo", "discrete"): "ppo_cartpole.py",
    ("haepo", "continuous"): "haepo_pendulum.py",
    ("ppo", "continuous"): "ppo_pendulum.py",
}
METHODS = ("haepo", "ppo")


def load_script(name: str) -> object:
    mod_name = f"_multitask_{Path(name).stem}"
    if mod_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(mod_name, EXAMPLES / name)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod  # dataclasses need the module registered
        spec.loader.exec_module(mod)
    return sys.modules[mod_name]


def parse_value(text: str) -> object:
    """``--set`` values: bool, int, float, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_seeds(items: list[str]) -> list[int]:
    seeds: list[int] = []
    for it in items:
        lo, _, hi = it.partition("-")
        try:
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            raise ValueError(f"--seeds: expected ints or ranges like 1-10, got {it!r}") from None
    if not seeds:
        raise ValueError("--seeds: expected at least one seed")
    return seeds


def run_key(task: str, label: str, seed: int, budget: int) -> str:
    return f"{task}__{label}__s{seed}__{budget}"


def run_metrics(steps: np.ndarray, returns: np.ndarray, task: Task) -> dict[str, float]:
    """Final / best MA20, steps to the threshold (inf if never), collapse flag."""
    if len(returns) == 0:
        nan = float("nan")
        return dict(final_ma20=nan, best_ma20=nan, steps_to_threshold=float("inf"), collapsed=1)
    ma = moving_average(returns, WINDOW)
    full = ma[WINDOW - 1 :] if len(ma) >= WINDOW else ma[-1:]
    full_steps = steps[WINDOW - 1 :] if len(ma) >= WINDOW else steps[-1:]
    final, best = float(ma[-1]), float(np.max(full))
    hit = np.flatnonzero(full >= task.threshold)
    to_thr = float(full_steps[hit[0]]) if len(hit) else float("inf")
    collapsed = best > task.floor and (final - task.floor) < 0.5 * (best - task.floor)
    return dict(
        final_ma20=final, best_ma20=best, steps_to_threshold=to_thr, collapsed=int(collapsed)
    )


def run_one(job: dict[str, object]) -> dict[str, object]:
    """One training run in this (single-threaded) process; returns a JSON-able record."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    task = TASKS[str(job["task"])]
    mod = load_script(SCRIPTS[(str(job["method"]), task.action)])
    overrides = dict(job["overrides"])  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        args = mod.Args(  # type: ignore[attr-defined]
            seed=int(job["seed"]),  # type: ignore[arg-type]
            env_id=task.env_id,
            total_timesteps=int(job["budget"]),  # type: ignore[arg-type]
            progress=False,
            plot=False,
            out_dir=tmp,
            eval_episodes=int(job.get("eval_episodes", 0)),  # type: ignore[call-overload]
            **overrides,
        )
        t0 = time.time()
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = mod.train(args)  # type: ignore[attr-defined]
        wall = time.time() - t0
    ep = np.asarray(res["episodes"], dtype=np.float64).reshape(-1, 3)
    ups = [u for u in res["updates"] if "ess" in u]
    return {
        **{k: job[k] for k in ("key", "task", "method", "label", "seed", "budget", "overrides")},
        "env_id": task.env_id,
        "steps": ep[:, 0].tolist(),
        "returns": ep[:, 1].tolist(),
        "wall_s": wall,
        "updates": [
            {k: u[k] for k in ("global_step", "entropy", "ess", "episodes") if k in u} for u in ups
        ],
        "warnings": sorted(
            {str(w.message) for w in caught if w.category.__name__ == "CollapseWarning"}
        ),
        "collapse_events": [list(e) for e in res.get("collapse_events", [])],
        **{k: np.asarray(res[k]).tolist() for k in ("eval_final", "eval_best") if k in res},
    }


def eval_metrics(rec: dict[str, object], task: Task) -> dict[str, object]:
    """Mean evaluation return of the final and the best policy, and the collapse flag on them
    (empty strings for a run made without evaluation)."""
    if "eval_final" not in rec:
        return dict(eval_final="", eval_best="", eval_collapsed="")
    final = float(np.mean(rec["eval_final"]))  # type: ignore[arg-type]
    best = float(np.mean(rec["eval_best"]))  # type: ignore[arg-type]
    collapsed = best > task.floor and (final - task.floor) < 0.5 * (best - task.floor)
    return dict(eval_final=final, eval_best=best, eval_collapsed=int(collapsed))


def summarize(rec: dict[str, object]) -> dict[str, object]:
    task = TASKS[str(rec["task"])]
    m = run_metrics(np.asarray(rec["steps"]), np.asarray(rec["returns"]), task)
    ups = rec["updates"]
    ent = [u["entropy"] for u in ups]  # type: ignore[union-attr]
    essf = [u["ess"] / u["episodes"] for u in ups]  # type: ignore[union-attr]
    return {
        "task": rec["task"],
        "env_id": rec["env_id"],
        "method": rec["label"],
        "seed": rec["seed"],
        "budget": rec["budget"],
        **m,
        **eval_metrics(rec, task),
        "threshold": task.threshold,
        "episodes": len(rec["returns"]),  # type: ignore[arg-type]
        "min_entropy": float(np.min(ent)) if ent else "",
        "median_ess_fraction": float(np.median(essf)) if essf else "",
        "entropy_warned": int(any(e[1] == "entropy" for e in rec["collapse_events"])),  # type: ignore[union-attr,index]
        "equal_returns_warned": int(
            any(e[1] == "equal_returns" for e in rec["collapse_events"])  # type: ignore[union-attr,index]
        ),
        "wall_s": round(float(rec["wall_s"]), 1),  # type: ignore[arg-type]
    }


def write_csv(rows: list[dict[str, object]], path: Path) -> None:
    keys = list(rows[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def curve_on_grid(rec: dict[str, object], grid: np.ndarray) -> np.ndarray:
    steps, rets = np.asarray(rec["steps"]), np.asarray(rec["returns"])
    if len(rets) == 0:
        return np.full(len(grid), np.nan)
    ma = moving_average(rets, WINDOW)
    idx = np.searchsorted(steps, grid, side="right") - 1
    return np.where(idx >= 0, ma[np.clip(idx, 0, None)], np.nan)


def plot_task(records: list[dict[str, object]], task_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = TASKS[task_name]
    recs = [r for r in records if r["task"] == task_name]
    budget = max(int(r["budget"]) for r in recs)  # type: ignore[arg-type]
    grid = np.linspace(budget / 200, budget, 200)
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
    for i, label in enumerate(sorted({str(r["label"]) for r in recs})):
        cur = np.array([curve_on_grid(r, grid) for r in recs if r["label"] == label])
        seeds = len(cur)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(cur, axis=0)
                lo, hi = np.nanmin(cur, axis=0), np.nanmax(cur, axis=0)
        ax.plot(grid, med, lw=2, color=f"C{i}", label=f"{label} (median, {seeds} seeds)")
        ax.fill_between(grid, lo, hi, color=f"C{i}", alpha=0.15, lw=0)
    ax.axhline(task.threshold, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"{WINDOW}-episode moving-average return")
    ax.set_title(f"{task.env_id}: median and min-max over seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_eval(rows: list[dict[str, object]], task_name: str, path: Path) -> bool:
    """Each evaluated run as a point: its best policy's score (x) against its final policy's
    (y), on the same fixed starts; runs flagged by the MA20 rule are ringed. Points below the
    dashed line (half-way from the floor to x) are collapses by the evaluation. Returns
    whether there was anything to plot."""
    ev = [r for r in rows if r["task"] == task_name and r["eval_final"] != ""]
    if not ev:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = TASKS[task_name]
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    vals = [float(r[k]) for r in ev for k in ("eval_best", "eval_final")]  # type: ignore[arg-type]
    lo, hi = min(vals), max(vals)
    pad = 0.05 * (hi - lo or 1.0)
    grid = np.linspace(lo - pad, hi + pad, 2)
    ax.plot(grid, grid, color="grey", lw=0.8, label="final = best")
    ax.plot(grid, task.floor + 0.5 * (grid - task.floor), color="r", lw=0.8, ls="--",
            label="collapse line (half-way to the floor)")  # fmt: skip
    for i, label in enumerate(sorted({str(r["method"]) for r in ev})):
        g = [r for r in ev if r["method"] == label]
        x = [float(r["eval_best"]) for r in g]  # type: ignore[arg-type]
        y = [float(r["eval_final"]) for r in g]  # type: ignore[arg-type]
        ax.scatter(x, y, s=22, color=f"C{i}", label=f"{label} ({len(g)} runs)", zorder=3)
        flagged = [(a, b) for a, b, r in zip(x, y, g) if int(r["collapsed"])]  # type: ignore[call-overload]
        if flagged:
            fx, fy = zip(*flagged)
            ax.scatter(fx, fy, s=90, facecolors="none", edgecolors=f"C{i}", lw=1.2, zorder=3)
    ax.plot([], [], "o", mfc="none", mec="k", label="flagged by the MA20 rule")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("policy at its best MA20: mean return on the fixed starts")
    ax.set_ylabel("final policy: mean return on the same starts")
    ax.set_title(f"{task.env_id}: final vs best policy, evaluated")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def fmt(x: float) -> str:
    return "not reached" if not np.isfinite(x) else f"{x / 1000:.1f}k"


def table(rows: list[dict[str, object]], markdown: bool) -> list[str]:
    head = [
        "task", "method", "seeds", "budget", "final MA20 median [min, max]", "best MA20 median",
        "steps to threshold median (reached)", "collapsed",
    ]  # fmt: skip
    evaluated = any(r["eval_final"] != "" for r in rows)
    if evaluated:
        head += ["eval final median [min, max]", "eval best median", "collapsed (eval)"]
    lines = []
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = sorted({(str(r["task"]), str(r["method"]), int(r["budget"])) for r in rows})  # type: ignore[arg-type]
    for task, method, budget in groups:
        g = [r for r in rows if (r["task"], r["method"], r["budget"]) == (task, method, budget)]
        fin = np.array([r["final_ma20"] for r in g], dtype=float)
        best = np.array([r["best_ma20"] for r in g], dtype=float)
        thr = np.array([r["steps_to_threshold"] for r in g], dtype=float)
        reached = int(np.sum(np.isfinite(thr)))
        cells = [
            TASKS[task].env_id,
            method,
            ",".join(str(r["seed"]) for r in sorted(g, key=lambda r: int(r["seed"]))),  # type: ignore[arg-type]
            f"{budget // 1000}k",
            f"{np.median(fin):.1f} [{np.min(fin):.1f}, {np.max(fin):.1f}]",
            f"{np.median(best):.1f}",
            f"{fmt(float(np.median(thr)))} ({reached}/{len(g)} >= {TASKS[task].threshold:g})",
            f"{sum(int(r['collapsed']) for r in g)}/{len(g)}",  # type: ignore[call-overload]
        ]
        if evaluated:
            ev = [r for r in g if r["eval_final"] != ""]
            if ev:
                ef = np.array([r["eval_final"] for r in ev], dtype=float)
                eb = np.array([r["eval_best"] for r in ev], dtype=float)
                n = f" of {len(ev)}" if len(ev) < len(g) else ""
                cells += [
                    f"{np.median(ef):.1f} [{np.min(ef):.1f}, {np.max(ef):.1f}]{n}",
                    f"{np.median(eb):.1f}",
                    f"{sum(int(r['eval_collapsed']) for r in ev)}/{len(ev)}",  # type: ignore[call-overload]
                ]
            else:
                cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |" if markdown else "  ".join(cells))
    return lines


@contextlib.contextmanager
def _runner(workers: int) -> Iterator[Callable[..., Iterable[dict[str, object]]]]:
    """``imap`` over the jobs: in this process for one worker (no start-up cost: the smoke
    test), else a pool of fresh single-threaded processes (spawned: no forked torch state)."""
    if workers == 1:
        yield map
        return
    with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
        yield pool.imap_unordered


def done(path: Path, eval_episodes: int) -> bool:
    """A saved run counts as done unless an evaluation is asked for and it has none."""
    if not path.exists():
        return False
    return eval_episodes == 0 or "eval_final" in json.loads(path.read_text())


def load_records(out: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", default=["1-10"], help="ints or ranges, e.g. 1-10 12")
    p.add_argument("--budget", type=int, default=None, help="env steps (default: per task)")
    p.add_argument("--workers", type=int, default=2, help="parallel single-threaded processes")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override an option of the HAEPO scripts (for ablations; use with --label)",
    )
    p.add_argument("--label", default=None, help="method name of the HAEPO runs in the outputs")
    p.add_argument(
        "--eval-episodes",
        type=int,
        default=20,
        help="evaluate the final and the best policy of each run on this many fixed start "
        "states, the same for every run (0: off)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "multitask")
    p.add_argument("--report-only", action="store_true", help="only re-make the outputs")
    p.add_argument(
        "--smoke", action="store_true", help="at most 2 seeds x 3000 steps: a quick check"
    )
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error(f"--workers: expected an int >= 1, got {a.workers}")
    if a.eval_episodes < 0:
        p.error(f"--eval-episodes: expected an int >= 0, got {a.eval_episodes}")
    if a.budget is not None and a.budget < 1:
        p.error(f"--budget: expected an int >= 1, got {a.budget}")
    try:
        seeds = parse_seeds(a.seeds)
    except ValueError as e:
        p.error(str(e))
    overrides: dict[str, object] = {}
    for item in a.set:
        key, sep, val = item.partition("=")
        if not sep or not key:
            p.error(f"--set: expected KEY=VALUE, got {item!r}")
        overrides[key.replace("-", "_")] = parse_value(val)
    if a.smoke:
        seeds, a.budget = seeds[:2], a.budget or 3000
        a.eval_episodes = min(a.eval_episodes, 2)
    label = a.label or ("haepo" + "".join(f"[{k}={v}]" for k, v in overrides.items()))
    (a.out / "runs").mkdir(parents=True, exist_ok=True)

    jobs = []
    for task in a.tasks:
        budget = a.budget or TASKS[task].budget
        for method in a.methods:
            lab = label if method == "haepo" else method
            for seed in seeds:
                key = run_key(task, lab, seed, budget)
                if a.report_only or done(a.out / "runs" / f"{key}.json", a.eval_episodes):
                    continue
                ov = overrides if method == "haepo" else {}
                jobs.append(dict(task=task, method=method, label=lab, seed=seed, budget=budget,
                                 overrides=ov, key=key, eval_episodes=a.eval_episodes))  # fmt: skip
    if jobs:
        from tqdm.auto import tqdm

        # Longest tasks first so the workers finish together; each run is single-threaded.
        jobs.sort(key=lambda j: -int(j["budget"]))  # type: ignore[arg-type]
        bar = tqdm(total=len(jobs), unit="run", desc="multitask")
        with _runner(min(a.workers, len(jobs))) as imap:
            for rec in imap(run_one, jobs):
                key = str(rec["key"])
                (a.out / "runs" / f"{key}.json").write_text(json.dumps(rec))
                fin = summarize(rec)["final_ma20"]
                bar.set_postfix_str(f"{key} final MA20 {fin:.1f}")
                bar.update(1)
        bar.close()

    records = load_records(a.out)
    if not a.report_only:  # report what this command asked for (plus other labels, same runs)
        records = [r for r in records if r["task"] in a.tasks and int(r["seed"]) in seeds]  # type: ignore[arg-type]
    if not records:
        print("no finished runs")
        return 1
    rows = sorted(
        (summarize(r) for r in records),
        key=lambda r: (r["task"], r["method"], r["budget"], r["seed"]),  # type: ignore[arg-type,return-value]
    )
    write_csv(rows, a.out / "multitask.csv")
    for task in sorted({str(r["task"]) for r in records}):
        plot_task(records, task, a.out / f"{task}.png")
        plot_eval(rows, task, a.out / f"{task}_eval.png")
    lines = table(rows, markdown=False)
    print("\n".join(lines))
    if a.markdown is not None:
        a.markdown.write_text("\n".join(table(rows, markdown=True)) + "\n")
    print(f"wrote {a.out / 'multitask.csv'} and {len({r['task'] for r in records})} PNG(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
