"""Sample efficiency: HAEPO vs PPO on CartPole-v1 and Pendulum-v1, several seeds, same budget.

    python benchmarks/sample_efficiency.py                    # full run (long: start it early)
    python benchmarks/sample_efficiency.py --seeds 1 2 --budget 20000   # quick look
    python benchmarks/sample_efficiency.py --report-only      # re-make table/plot from saved runs

Runs the single-file scripts of ``examples/cleanrl/`` (``haepo_*.py`` and ``ppo_*.py``, each
at its own defaults, the same env-step budget) for every seed, in ``--workers`` processes (2 by
default: the project's machines have 2 cores). Each finished run is saved as JSON under
``--out`` so an interrupted benchmark resumes where it stopped. Prints, per task and method,
the median and IQR over seeds of

- steps to reach a 20-episode moving-average return of 475 (CartPole only; runs that never
  reach it count as +inf, i.e. "not reached"),
- the mean return of the last 20 episodes at the budget,
- wall time (all runs share the same machine and load, so compare methods, not absolute time),

plus HAEPO's diagnostics over training (ESS, ESS / #episodes, max weight, entropy, KL; median
over seeds of per-phase medians), an ablation on CartPole without length normalization
(temperature 1 and 50), and writes one plot (``--plot``) with every method's median curve and
IQR band. ``--markdown`` writes the tables as Markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from haepo_adapters.cleanrl import moving_average

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "cleanrl"
WINDOW = 20
THRESHOLD = 475.0

# (task, method) -> (script, overrides). The ablation variants differ from "haepo" only there.
VARIANTS: dict[str, tuple[str, str, dict[str, object]]] = {
    "cartpole/haepo": ("CartPole-v1", "haepo_cartpole.py", {}),
    "cartpole/ppo": ("CartPole-v1", "ppo_cartpole.py", {}),
    "pendulum/haepo": ("Pendulum-v1", "haepo_pendulum.py", {}),
    "pendulum/ppo": ("Pendulum-v1", "ppo_pendulum.py", {}),
    "cartpole/haepo-no-lennorm-tau1": (
        "CartPole-v1",
        "haepo_cartpole.py",
        {"length_normalize": False, "temperature": 1.0},
    ),
    "cartpole/haepo-no-lennorm-tau50": (
        "CartPole-v1",
        "haepo_cartpole.py",
        {"length_normalize": False, "temperature": 50.0},
    ),
}
MAIN = ["cartpole/haepo", "cartpole/ppo", "pendulum/haepo", "pendulum/ppo"]
ABLATION = ["cartpole/haepo-no-lennorm-tau1", "cartpole/haepo-no-lennorm-tau50"]
DIAG_KEYS = ["ess", "ess_frac", "max_weight", "entropy", "kl"]


def load_script(name: str) -> object:
    """Import an example script by path (they are single files, not a package)."""
    mod_name = f"_cleanrl_example_{Path(name).stem}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def steps_to_threshold(steps: np.ndarray, returns: np.ndarray) -> float:
    """First env step at which the 20-episode moving average reaches 475 (inf if never)."""
    ma = moving_average(returns, WINDOW)
    ok = (ma >= THRESHOLD) & (np.arange(len(ma)) >= WINDOW - 1)
    idx = np.flatnonzero(ok)
    return float(steps[idx[0]]) if len(idx) else float("inf")


def run_one(job: tuple[str, int, int, str]) -> dict[str, object]:
    variant, seed, budget, out = job
    os.environ["OMP_NUM_THREADS"] = "1"
    _, script, overrides = VARIANTS[variant]
    mod = load_script(script)
    args = mod.Args(  # type: ignore[attr-defined]
        seed=seed,
        total_timesteps=budget,
        progress=False,
        plot=False,
        out_dir=str(Path(out) / "runs"),
        **overrides,
    )
    res = mod.train(args)  # type: ignore[attr-defined]
    ep = np.asarray(res["episodes"])
    record = {
        "variant": variant,
        "seed": seed,
        "budget": budget,
        "steps": ep[:, 0].tolist(),
        "returns": ep[:, 1].tolist(),
        "wall_time": res["wall_time"],
        "updates": res["updates"],
        "hyperparameters": {k: v for k, v in vars(args).items() if k not in ("out_dir",)},
    }
    path = Path(out) / f"{variant.replace('/', '__')}__seed{seed}__{budget}.json"
    path.write_text(json.dumps(record))
    return record


def summarize(records: list[dict[str, object]], variant: str) -> dict[str, object]:
    recs = [r for r in records if r["variant"] == variant]
    if not recs:
        return {}
    reach = np.array(
        [steps_to_threshold(np.array(r["steps"]), np.array(r["returns"])) for r in recs]
    )
    final = np.array([np.mean(r["returns"][-WINDOW:]) for r in recs])
    wall = np.array([r["wall_time"] for r in recs])
    return {
        "n": len(recs),
        "reach": reach,
        "final": final,
        "wall": wall,
        "hyper": recs[0]["hyperparameters"],
    }


def diagnostics(records: list[dict[str, object]], variant: str) -> dict[str, list[float]]:
    """Median over seeds of the per-third medians of HAEPO's per-update stats."""
    out: dict[str, list[list[float]]] = {k: [] for k in DIAG_KEYS}
    for r in records:
        if r["variant"] != variant:
            continue
        ups = [u for u in r["updates"] if "ess" in u]
        if len(ups) < 3:
            continue
        for u in ups:
            u["ess_frac"] = u["ess"] / max(u["episodes"], 1)
        thirds = np.array_split(np.arange(len(ups)), 3)
        for k in DIAG_KEYS:
            out[k].append([float(np.median([ups[i][k] for i in part])) for part in thirds])
    return {k: np.median(np.array(v), axis=0).tolist() for k, v in out.items() if v}


def quartiles(x: np.ndarray) -> tuple[float, float, float]:
    q = np.percentile(x, [25, 50, 75], method="linear") if len(x) else [np.nan] * 3
    return float(q[1]), float(q[0]), float(q[2])


def fmt_steps(x: float) -> str:
    return "not reached" if not np.isfinite(x) else f"{x / 1000:.1f}k"


def table(records: list[dict[str, object]], variants: list[str]) -> list[str]:
    lines = [
        "| task / method | seeds | steps to MA20 >= 475: median [IQR] (reached) "
        "| last-20 return: median [IQR] | wall time s: median [IQR] |",
        "|---|---|---|---|---|",
    ]
    for v in variants:
        s = summarize(records, v)
        if not s:
            continue
        if v.startswith("cartpole"):
            m, lo, hi = quartiles(s["reach"])
            reached = int(np.isfinite(s["reach"]).sum())
            reach = f"{fmt_steps(m)} [{fmt_steps(lo)}, {fmt_steps(hi)}] ({reached}/{s['n']})"
        else:
            reach = "n/a"
        fm, flo, fhi = quartiles(s["final"])
        wm, wlo, whi = quartiles(s["wall"])
        lines.append(
            f"| {v} | {s['n']} | {reach} | {fm:.1f} [{flo:.1f}, {fhi:.1f}] "
            f"| {wm:.0f} [{wlo:.0f}, {whi:.0f}] |"
        )
    return lines


def diag_table(records: list[dict[str, object]], variants: list[str]) -> list[str]:
    lines = [
        "| variant | phase | ESS | ESS / #episodes | max weight | entropy | KL |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        d = diagnostics(records, v)
        if not d:
            continue
        for i, phase in enumerate(["first third", "middle third", "last third"]):
            lines.append(
                f"| {v} | {phase} | {d['ess'][i]:.2f} | {d['ess_frac'][i]:.3f} "
                f"| {d['max_weight'][i]:.3f} | {d['entropy'][i]:.3f} | {d['kl'][i]:.4f} |"
            )
    return lines


def curves(records: list[dict[str, object]], variant: str, budget: int) -> tuple[np.ndarray, ...]:
    grid = np.linspace(0, budget, 101)[1:]
    ys = []
    for r in records:
        if r["variant"] != variant or not r["steps"]:
            continue
        steps, ma = np.array(r["steps"]), moving_average(np.array(r["returns"]), WINDOW)
        idx = np.searchsorted(steps, grid, side="right") - 1
        ys.append(np.where(idx >= 0, ma[np.maximum(idx, 0)], np.nan))
    y = np.array(ys)
    with warnings.catch_warnings():  # grid points before any seed's first episode are NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return grid, np.nanmedian(y, 0), np.nanpercentile(y, 25, 0), np.nanpercentile(y, 75, 0)


def plot(records: list[dict[str, object]], budget: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [("cartpole", "CartPole-v1"), ("pendulum", "Pendulum-v1")]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    styles = {
        "haepo": ("C0", "HAEPO"),
        "ppo": ("C1", "PPO"),
        "haepo-no-lennorm-tau1": ("C2", "HAEPO, no length norm, tau=1"),
        "haepo-no-lennorm-tau50": ("C3", "HAEPO, no length norm, tau=50"),
    }
    for ax, (task, title) in zip(axes, tasks):
        for method, (color, label) in styles.items():
            v = f"{task}/{method}"
            if not any(r["variant"] == v for r in records):
                continue
            x, med, lo, hi = curves(records, v, budget)
            n = sum(r["variant"] == v for r in records)
            ax.plot(x, med, color=color, lw=1.8, label=f"{label} ({n} seeds)")
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
        ax.set_title(f"{title}: 20-episode moving average")
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0].set_ylabel("return (median, IQR band)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_diagnostics(records: list[dict[str, object]], budget: int, path: Path) -> None:
    """HAEPO's ESS / #episodes, max weight and entropy over training, CartPole variants."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = {
        "cartpole/haepo": ("C0", "length-normalized (default)"),
        "cartpole/haepo-no-lennorm-tau1": ("C2", "no length norm, tau=1"),
        "cartpole/haepo-no-lennorm-tau50": ("C3", "no length norm, tau=50"),
    }
    panels = [("ess_frac", "ESS / #episodes"), ("max_weight", "max weight"), ("entropy", "entropy")]
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8), dpi=80)
    edges = np.linspace(0, budget, 11)
    mid = 0.5 * (edges[1:] + edges[:-1])
    for v, (color, label) in variants.items():
        recs = [r for r in records if r["variant"] == v]
        if not recs:
            continue
        for ax, (key, title) in zip(axes, panels):
            per_seed = []
            for r in recs:
                ups = [u for u in r["updates"] if "ess" in u]
                st = np.array([u["global_step"] for u in ups])
                if key == "ess_frac":
                    val = np.array([u["ess"] / max(u["episodes"], 1) for u in ups])
                else:
                    val = np.array([u[key] for u in ups])
                b = np.digitize(st, edges[1:-1])
                per_seed.append(
                    [np.median(val[b == i]) if (b == i).any() else np.nan for i in range(len(mid))]
                )
            ax.plot(mid, np.nanmedian(np.array(per_seed), 0), "o-", ms=3, color=color, label=label)
            ax.set_title(title)
            ax.set_xlabel("env steps")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("HAEPO diagnostics on CartPole-v1 (median over seeds, per 10k-step bin)", size=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def load_records(out: Path, budget: int) -> list[dict[str, object]]:
    recs = []
    for p in sorted(out.glob(f"*__{budget}.json")):
        recs.append(json.loads(p.read_text()))
    return recs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--budget", type=int, default=100_000, help="env steps per run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=MAIN + ABLATION, choices=list(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "runs" / "sample_efficiency"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "img" / "sample_efficiency.png"))
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if not args.report_only:
        done = {(r["variant"], r["seed"]) for r in load_records(out, args.budget)}
        # Task by task (main comparison first, ablation last), seeds inner: an interrupted
        # benchmark still holds complete comparisons for the tasks it finished.
        order = [v for v in VARIANTS if v in args.variants]

        def in_task(v: str, task: str) -> bool:
            return v in ABLATION if task == "ablation" else v not in ABLATION and v.startswith(task)

        jobs = [
            (v, s, args.budget, str(out))
            for task in ("cartpole", "pendulum", "ablation")
            for s in args.seeds
            for v in order
            if in_task(v, task) and (v, s) not in done
        ]
        from tqdm.auto import tqdm

        t0 = time.time()
        with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            bar = tqdm(total=len(jobs), unit="run", desc="sample efficiency")
            for rec in pool.imap_unordered(run_one, jobs):
                bar.update(1)
                bar.write(
                    f"{rec['variant']} seed {rec['seed']}: last-20 return "
                    f"{np.mean(rec['returns'][-WINDOW:]):.1f}, {rec['wall_time']:.0f} s"
                )
            bar.close()
        print(f"total wall time {time.time() - t0:.0f} s with {args.workers} workers")

    records = load_records(out, args.budget)
    variants = [v for v in args.variants if any(r["variant"] == v for r in records)]
    lines = [f"Budget: {args.budget} env steps per run.", ""]
    lines += table(records, variants)
    lines += ["", "HAEPO diagnostics over training (median over seeds of per-third medians):", ""]
    lines += diag_table(records, [v for v in variants if "haepo" in v])
    lines += ["", "Hyperparameters (each script's defaults unless the variant name says):", ""]
    for v in variants:
        hyper = summarize(records, v)["hyper"]
        skip = {"seed", "progress", "plot", "exp_name", "tensorboard", "torch_threads"}
        kv = ", ".join(f"{k}={val}" for k, val in hyper.items() if k not in skip)
        lines.append(f"- `{v}`: {kv}")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if records:
        plot(records, args.budget, Path(args.plot))
        diag_path = Path(args.plot).with_name(Path(args.plot).stem + "_diagnostics.png")
        if any("haepo" in r["variant"] for r in records):
            plot_diagnostics(records, args.budget, diag_path)
        print(f"plots: {args.plot}, {diag_path}")


if __name__ == "__main__":
    main()
