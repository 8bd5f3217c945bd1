"""Benchmarks of the PyTorch backend: time and peak memory ratios, measured side by side.

Usage::

    python benchmarks/bench_torch.py            # the full shapes (several minutes on 2 cores)
    python benchmarks/bench_torch.py --quick    # small shapes: a smoke run of the script, its
                                                # ratios are not the targets
    python benchmarks/bench_torch.py --only hidden logits --repeats 5 --plot out.png

Time: every variant of a workload runs in this process, interleaved (rep 1 of each variant,
then rep 2...), after one warm-up; the median is reported and ratios are taken against the
reference variant of the same run. Memory: each variant runs once more in a *fresh* child
process; its peak extra memory is ``ru_maxrss`` after one loss+backward minus the resident
size once the inputs exist. ``MALLOC_MMAP_THRESHOLD_`` is set (the script re-executes itself
if needed) so large blocks go straight to mmap and are returned on free: memory glibc would
otherwise keep around does not count, and every variant pays its page faults in the timings.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MMAP_THRESHOLD = "65536"

FULL = {
    "hidden": dict(M=8, T=256, V=32000, H=512, G=4),
    "logits": dict(M=8, T=256, V=32000, G=4),
    "policy": dict(M=1024, T=512, G=8),
    "packed": dict(M=256, T=4096, G=8),
    "flat": dict(M=4, V=32000, H=512, G=4, Ts=(512, 4096)),
}
QUICK = {
    "hidden": dict(M=4, T=64, V=8000, H=128, G=2),
    "logits": dict(M=4, T=64, V=8000, G=2),
    "policy": dict(M=128, T=128, G=8),
    "packed": dict(M=64, T=1024, G=8),
    # chunk below the smallest row count, so both sizes really run at the same fixed chunk
    "flat": dict(M=2, V=8000, H=128, G=2, Ts=(128, 1024), chunk=64),
}
# (reference variant, {variant: (memory target, time target)}) -- targets are ratios to the
# reference; None = reported only.
TARGETS: dict[str, tuple[str, dict[str, tuple[float | None, float | None]]]] = {
    "hidden": ("naive", {"haepo": (0.10, 1.0), "liger": (None, None), "trl": (None, None)}),
    "logits": ("naive", {"haepo": (0.40, 1.1)}),
    "policy": ("grpo_trl", {"haepo": (None, 1.0)}),
    "packed": ("padded", {"packed": (None, 1 / 1.5)}),
}
NOTES = {
    "liger": "computes less: per-token clipped loss + k3 KL of the taken token; no entropy, "
    "no exact KL",
    "trl": "computes less: logp + entropy (TRL kernel) + k3 KL estimator, no exact KL; "
    "2 passes (policy, reference)",
}


def _reexec_with_malloc_env() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _rss_now() -> int:
    return _status_kib("VmRSS")


def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS, so that the
    peak of importing torch and building the inputs does not mask the step's own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    try:
        return _status_kib("VmHWM")
    except (OSError, RuntimeError):  # no procfs: ru_maxrss (KiB on Linux), never reset
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(case: str, variant: str, params: dict[str, Any]) -> None:
    """Fresh process: warm the code path up on a tiny problem, build the inputs, run once."""
    sys.path.insert(0, str(HERE))
    import _torch_cases as C

    setup, variants = C.CASES[case]
    step = variants[variant]
    tiny = {k: (min(v, 16) if isinstance(v, int) and k != "G" else v) for k, v in params.items()}
    tiny["G"] = min(params.get("G", 1), tiny.get("M", 1))
    step(setup(tiny))
    gc.collect()
    state = setup(params)
    gc.collect()
    reset = _reset_peak()
    base, before = _rss_now(), _peak()
    step(state)
    peak = _peak()
    print(json.dumps({"extra": peak - base, "base": base, "peak_before": before, "reset": reset}))


def _measure_memory(case: str, variant: str, params: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", case, variant, json.dumps(params)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["peak_before"] > res["base"] + (64 << 20):
        res["warning"] = "setup peaked above the baseline; extra may be understated"
    return res


def _time_variants(case: str, params: dict[str, Any], repeats: int, bar: Any) -> dict[str, float]:
    sys.path.insert(0, str(HERE))
    import _torch_cases as C

    setup, variants = C.CASES[case]
    state = setup(params)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for step in variants.values():  # warm-up (imports, lazy init, allocator)
        step(state)
    names = list(variants)
    for rep in range(repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            gc.collect()
            t0 = time.perf_counter()
            variants[name](state)
            times[name].append(time.perf_counter() - t0)
            bar.update(1)
    del state
    gc.collect()
    return {k: statistics.median(v) for k, v in times.items()}


def _mb(x: float) -> str:
    return f"{x / 2**20:8.1f}"


def _verdict(value: float | None, target: float | None, *, higher_is_better: bool = False) -> str:
    if target is None or value is None:
        return ""
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "NOT met"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions per variant")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=["hidden", "logits", "policy", "packed", "flat"],
        help="run only these workloads",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the child-process memory runs")
    ap.add_argument("--json", type=Path, help="write the raw results here")
    ap.add_argument("--plot", type=Path, help="write a PNG of the ratios here")
    ap.add_argument(
        "--child", nargs=3, metavar=("CASE", "VARIANT", "PARAMS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], json.loads(args.child[2]))
        return 0
    _reexec_with_malloc_env()

    import torch
    from tqdm import tqdm

    cfg = QUICK if args.quick else FULL
    todo = args.only or ["hidden", "logits", "policy", "packed", "flat"]
    print(
        f"# bench_torch: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores, {'quick' if args.quick else 'full'} shapes, "
        f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_')}"
    )
    sys.path.insert(0, str(HERE))
    import _torch_cases as C

    results: dict[str, Any] = {}
    n_steps = sum(len(C.CASES[c][1]) * args.repeats for c in todo if c in C.CASES)
    n_steps += 0 if args.no_memory else sum(len(C.CASES[c][1]) for c in todo if c in C.CASES)
    n_steps += len(cfg["flat"]["Ts"]) if "flat" in todo and not args.no_memory else 0
    with tqdm(total=n_steps, desc="bench_torch", file=sys.stderr) as bar:
        for case in [c for c in todo if c in C.CASES]:
            params = cfg[case]
            times = _time_variants(case, params, args.repeats, bar)
            mem = {}
            if not args.no_memory:
                for v in C.CASES[case][1]:
                    mem[v] = _measure_memory(case, v, params)
                    bar.update(1)
            results[case] = {"params": params, "time": times, "memory": mem}
        if "flat" in todo and not args.no_memory:
            p = cfg["flat"]
            flat = {}
            for t in p["Ts"]:
                params = {k: v for k, v in p.items() if k != "Ts"} | {"T": t}
                params.setdefault("chunk", None)
                flat[t] = _measure_memory("hidden", "haepo", params)
                # d hidden is a gradient buffer that grows with T by nature: report beyond it.
                flat[t]["d_hidden"] = p["M"] * t * p["H"] * 4
                bar.update(1)
            results["flat"] = {"params": p, "memory": flat}

    lines = _report(results)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if args.plot:
        _plot(results, args.plot)
    return 0


def _report(results: dict[str, Any]) -> list[str]:
    out = []
    for case, (ref, targets) in TARGETS.items():
        if case not in results:
            continue
        r = results[case]
        out.append("")
        out.append(f"### {case}: {r['params']} (reference: {ref})")
        out.append("")
        out.append(
            "| variant | time s | time / ref | target | peak extra MiB | mem / ref | target |"
        )
        out.append("|---|---:|---:|---|---:|---:|---|")
        t_ref = r["time"][ref]
        m_ref = r["memory"].get(ref, {}).get("extra")
        for v, t in r["time"].items():
            mem = r["memory"].get(v, {})
            extra = mem.get("extra")
            tr = t / t_ref
            mr = None if (extra is None or not m_ref) else extra / m_ref
            mt, tt = targets.get(v, (None, None))
            t_target = "" if tt is None else f"<= {tt:.2f} ({_verdict(tr, tt)})"
            m_target = "" if mt is None else f"<= {mt:.2f} ({_verdict(mr, mt)})"
            mem_s = _mb(extra) if extra is not None else mem.get("error", "-")
            mr_s = "-" if mr is None else f"{mr:.3f}"
            out.append(f"| {v} | {t:.3f} | {tr:.3f} | {t_target} | {mem_s} | {mr_s} | {m_target} |")
        if case == "packed":
            speed = t_ref / r["time"]["packed"]
            out.append("")
            out.append(
                f"packed speed-up over padded: {speed:.2f}x (target >= 1.5x: "
                f"{_verdict(speed, 1.5, higher_is_better=True)})"
            )
        for v in r["time"]:
            if v in NOTES:
                out.append(f"- {v}: {NOTES[v]}")
    if "flat" in results:
        f = results["flat"]["memory"]
        ts = sorted(f)
        out.append("")
        out.append(f"### memory vs T (from-hidden, fixed chunk): {results['flat']['params']}")
        out.append("")
        out.append("| T | peak extra MiB | d hidden MiB | extra beyond d hidden MiB |")
        out.append("|---:|---:|---:|---:|")
        for t in ts:
            e = f[t].get("extra")
            if e is None:
                out.append(f"| {t} | {f[t].get('error')} | | |")
                continue
            out.append(
                f"| {t} | {_mb(e)} | {_mb(f[t]['d_hidden'])} | {_mb(e - f[t]['d_hidden'])} |"
            )
        if all("extra" in f[t] for t in ts):
            lo, hi = (f[t]["extra"] - f[t]["d_hidden"] for t in (ts[0], ts[-1]))
            ratio = hi / lo
            out.append("")
            out.append(
                f"T={ts[-1]} / T={ts[0]} beyond d hidden: {ratio:.2f}x "
                f"(target <= 1.3x: {_verdict(ratio, 1.3)})"
            )
    return out


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, t_ratio, m_ratio = [], [], []
    for case, (ref, _) in TARGETS.items():
        if case not in results:
            continue
        r = results[case]
        m_ref = r["memory"].get(ref, {}).get("extra")
        for v, t in r["time"].items():
            if v == ref:
                continue
            labels.append(f"{case}\n{v}")
            t_ratio.append(t / r["time"][ref])
            extra = r["memory"].get(v, {}).get("extra")
            m_ratio.append(extra / m_ref if extra and m_ref else 0.0)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4))
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], t_ratio, width=0.4, label="time / reference")
    ax.bar([i + 0.2 for i in x], m_ratio, width=0.4, label="peak extra memory / reference")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("ratio (lower is better)")
    ax.set_title("haepo_backends.torch vs references (CPU, measured side by side)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
