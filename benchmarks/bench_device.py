"""Device benchmark of the torch backend's lean paths: time and peak memory, side by side.

Usage::

    python benchmarks/bench_device.py                 # CUDA: bf16 and fp32, V = 32k and 152k,
                                                      # T up to 8k (the device check)
    python benchmarks/bench_device.py --smoke         # tiny shapes on CPU, a few seconds
    python benchmarks/bench_device.py --budget-s 200 --json out.json

Workloads (inputs and the naive steps come from ``_torch_cases.py``, as in ``bench_torch.py``):

- ``hidden``: from hidden states (fused LM head), entropy + exact KL to a reference head.
  Variants: ``naive`` (materialized logits, log_softmax, autograd), ``haepo`` (the lean
  path, ``kernel="torch"``), ``haepo_triton`` (``kernel="triton"``, when the backend has the
  keyword and triton can run), ``liger`` (Liger-Kernel's fused-linear GRPO loss, compiled with
  torch.compile on CUDA; it computes less: per-token clipped objective and the k3 KL of the
  taken token, no entropy, no exact KL).
- ``logits``: from materialized logits, entropy + exact KL. Variants ``naive``, ``haepo``,
  ``haepo_triton`` and, on CUDA, ``liger_triton`` (Liger's Triton GRPO loss from logits; it
  computes less, as above, over the first T-1 positions: its logits are laid out [B, L+1, V]).

Time: every variant of a configuration runs in this process, interleaved, after a warm-up
(which also pays torch.compile and Triton compilation); the median is reported with its ratio
to ``naive`` and to the Liger variant of the same run. Memory (CUDA): peak allocated during one
step minus the allocation before it (inputs and parameters excluded, gradients included). On
CPU the memory columns are empty: ``bench_torch.py`` measures CPU memory in child processes.
A configuration or variant that runs out of device memory is reported as OOM; ``--budget-s``
stops starting new configurations once the budget is spent (those left are listed).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _torch_cases as C  # noqa: E402  (a sibling module, as bench_torch.py imports it)

ENT, BETA = C.ENT, C.BETA
Step = Callable[[dict[str, Any]], None]

# (workload, M, T, V, H): H = 2048 for the hidden workload; logits keep T lower, as their
# input alone is [M, T, V]. T = 8192 with M = 2 at V = 152k: one float32 [M*T, V] tensor is
# 9.3 GiB and the naive step keeps six to nine of them (reported as OOM where they do not fit).
DEVICE_CONFIGS = [  # most telling first: a spent --budget-s drops the later ones
    ("hidden", 2, 8192, 151936, 2048),
    ("hidden", 2, 8192, 32000, 2048),
    ("hidden", 8, 1024, 151936, 2048),
    ("logits", 2, 2048, 151936, 0),
    ("hidden", 8, 1024, 32000, 2048),
    ("logits", 4, 2048, 32000, 0),
]
SMOKE_CONFIGS = [("hidden", 4, 16, 257, 32), ("logits", 4, 16, 257, 0)]
# Targets of the first device run: memory <= 0.1x naive; faster than compiled Liger.
MEM_TARGET = 0.10


def _has_kernel_keyword() -> bool:
    import haepo_backends.torch as H

    return all(
        "kernel" in inspect.signature(f).parameters
        for f in (H.haepo_loss_from_hidden, H.haepo_loss_from_logits)
    )


def _triton_ok(device: torch.device) -> bool:
    try:
        from haepo_backends.torch import _triton
    except ImportError:
        return False
    return _triton.available(device) and not _triton.interpreted()


def _move(state: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The CPU float32 inputs of ``_torch_cases`` on ``device``, activations, heads and logits
    in ``dtype`` (leaves that required grad still do; integers and returns keep their dtype)."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            # Activations, heads and logits take the dtype under test; returns stay float32.
            cast = v.is_floating_point() and k != "returns"
            w = v.detach().to(device, dtype if cast else v.dtype)
            out[k] = w.requires_grad_(v.requires_grad)
        else:
            out[k] = v
    return out


def _advantages(s: dict[str, Any]) -> torch.Tensor:
    r, g = s["returns"].float(), s["group_ids"]
    n = int(g.max()) + 1
    mean = torch.zeros(n, device=r.device).index_add(0, g, r) / torch.bincount(g, minlength=n)
    return r - mean[g]


def _hidden_haepo(kernel: str | None) -> Step:
    from haepo_backends.torch import haepo_loss_from_hidden

    extra = {} if kernel is None else {"kernel": kernel}

    def step(s: dict[str, Any]) -> None:
        C._zero_grads(s)
        out = haepo_loss_from_hidden(
            s["hidden"], s["weight"], s["actions"], s["returns"], bias=s["bias"],
            ref_hidden=s["ref_hidden"], ref_weight=s["ref_weight"], group_ids=s["group_ids"],
            entropy_coef=ENT, kl_coef=BETA, chunk_size=s["chunk"], **extra,
        )  # fmt: skip
        out.loss.backward()

    return step


def _logits_haepo(kernel: str | None) -> Step:
    from haepo_backends.torch import haepo_loss_from_logits

    extra = {} if kernel is None else {"kernel": kernel}

    def step(s: dict[str, Any]) -> None:
        C._zero_grads(s)
        out = haepo_loss_from_logits(
            s["logits"], s["actions"], s["returns"], ref_logits=s["ref_logits"],
            group_ids=s["group_ids"], entropy_coef=ENT, kl_coef=BETA, chunk_size=s["chunk"],
            **extra,
        )  # fmt: skip
        out.loss.backward()

    return step


def _hidden_liger(compiled: bool) -> Step:
    def step(s: dict[str, Any]) -> None:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        C._zero_grads(s)
        if "liger" not in s:
            s["liger"] = LigerFusedLinearGRPOLoss(beta=BETA, compiled=compiled, use_ref_model=True)
        out = s["liger"](
            s["hidden"], s["weight"], s["actions"], torch.ones_like(s["actions"]),
            _advantages(s), bias=s["bias"], ref_input=s["ref_hidden"],
            ref_weight=s["ref_weight"],
        )  # fmt: skip
        (out[0] if isinstance(out, tuple) else out).backward()

    return step


def _logits_liger(s: dict[str, Any]) -> None:
    """Liger's Triton GRPO loss from logits (CUDA only). Its logits are laid out [B, L+1, V]
    (the last position predicts nothing), so it scores the first T-1 positions of the same
    [M, T, V] logits; the reference log-prob of the taken token it needs is computed here
    without grad from the reference logits, as part of the step."""
    from liger_kernel.transformers.grpo_loss import triton_grpo_loss

    C._zero_grads(s)
    ids = s["actions"][:, :-1].contiguous()
    with torch.no_grad():
        ref_logp = torch.log_softmax(s["ref_logits"][:, :-1].float(), -1)
        ref_logp = ref_logp.gather(-1, ids[..., None])[..., 0].contiguous()
    adv = _advantages(s)
    out = triton_grpo_loss(
        s["logits"], None, ref_logp, ids, adv, torch.ones(ids.shape, device=adv.device),
        temperature=1.0, beta=BETA, inplace=False, reduce=True,
    )  # fmt: skip
    (out[0] if isinstance(out, tuple) else out).backward()


def _variants(workload: str, device: torch.device, smoke: bool) -> dict[str, Step | str]:
    """Variant name -> step, or -> the reason it is skipped."""
    kernel_kw = _has_kernel_keyword()
    triton_ok = _triton_ok(device)
    skip_triton = (
        "the backend has no kernel= keyword"
        if not kernel_kw
        else "triton cannot run on this device"
        if not triton_ok
        else None
    )
    if workload == "hidden":
        v: dict[str, Step | str] = {
            "naive": C.hidden_naive,
            "haepo": _hidden_haepo("torch" if kernel_kw else None),
            "haepo_triton": skip_triton or _hidden_haepo("triton"),
            "liger": _hidden_liger(compiled=device.type == "cuda" and not smoke),
        }
    else:
        v = {
            "naive": C.logits_naive,
            "haepo": _logits_haepo("torch" if kernel_kw else None),
            "haepo_triton": skip_triton or _logits_haepo("triton"),
            "liger_triton": _logits_liger if device.type == "cuda" else "needs CUDA",
        }
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        for k in ("liger", "liger_triton"):
            if k in v:
                v[k] = "liger-kernel is not installed"
    return v


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _run_config(
    workload: str, m: int, t: int, v: int, h: int, dtype: torch.dtype, device: torch.device,
    repeats: int, smoke: bool,
) -> dict[str, Any]:  # fmt: skip
    params = {"M": m, "T": t, "V": v, "G": 2, "chunk": None} | ({"H": h} if h else {})
    setup = C.hidden_setup if workload == "hidden" else C.logits_setup
    state = _move(setup(params), device, dtype)
    variants = _variants(workload, device, smoke)
    res: dict[str, Any] = {"time": {}, "memory": {}, "skipped": {}}
    steps: dict[str, Step] = {}
    for name, step in variants.items():
        if isinstance(step, str):
            res["skipped"][name] = step
            continue
        try:  # warm-up: compilation, lazy init, allocator
            step(state)
            _sync(device)
            steps[name] = step
        except Exception as e:  # a variant that cannot run at this size is reported, not fatal
            res["skipped"][name] = "OOM" if _is_oom(e) else f"{type(e).__name__}: {e}"[:160]
            C._zero_grads(state)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    times: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for rep in range(repeats):
        for name in names[rep % max(len(names), 1) :] + names[: rep % max(len(names), 1)]:
            gc.collect()
            _sync(device)
            t0 = time.perf_counter()
            steps[name](state)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    res["time"] = {k: statistics.median(x) for k, x in times.items()}
    if device.type == "cuda":
        for name, step in steps.items():
            C._zero_grads(state)
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            step(state)
            _sync(device)
            res["memory"][name] = torch.cuda.max_memory_allocated(device) - base
    del state
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _report(key: str, res: dict[str, Any], verdicts: bool) -> list[str]:
    """The table of one configuration; ``verdicts``: add the GPU targets' verdicts (CUDA,
    full shapes only: they are not targets for CPU or smoke runs)."""
    tm, mem = res["time"], res["memory"]
    t_ref, m_ref = tm.get("naive"), mem.get("naive")
    liger = next((k for k in ("liger", "liger_triton") if k in tm), None)
    out = ["", f"### {key}", ""]
    out.append("| variant | time ms | / naive | / liger | peak MiB | mem / naive |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for name, t in tm.items():
        tr = t / t_ref if t_ref else None
        lr = t / tm[liger] if liger else None
        mb = mem.get(name)
        mr = mb / m_ref if (mb is not None and m_ref) else None
        mb_s = "-" if mb is None else f"{mb / 2**20:.1f}"
        out.append(
            f"| {name} | {t * 1e3:.2f} | {_fmt_ratio(tr)} | {_fmt_ratio(lr)} | {mb_s} | "
            f"{_fmt_ratio(mr)} |"
        )
    for name, why in res["skipped"].items():
        out.append(f"| {name} | skipped: {why} | | | | |")
    for name in ("haepo", "haepo_triton") if verdicts else ():
        if name not in tm:
            continue
        lines = []
        if name in mem and m_ref:
            r = mem[name] / m_ref
            lines.append(f"memory {r:.3f}x naive (target <= {MEM_TARGET}: "
                            f"{'met' if r <= MEM_TARGET else 'NOT met'})")  # fmt: skip
        if liger:
            r = tm[name] / tm[liger]
            lines.append(f"time {r:.3f}x {liger} (target < 1: {'met' if r < 1 else 'NOT met'})")
        if lines:
            out.append(f"- {name}: " + "; ".join(lines))
    return out


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (a test of the script)")
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["bf16", "fp32"])
    ap.add_argument("--only", nargs="+", choices=["hidden", "logits"], help="these workloads")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions per variant")
    ap.add_argument("--budget-s", type=float, default=None, help="start no configuration after")
    ap.add_argument("--json", type=Path, help="write the raw results here (after each config)")
    ap.add_argument("--plot", type=Path, help="write a PNG of the ratios to naive here")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    configs = SMOKE_CONFIGS if args.smoke else DEVICE_CONFIGS
    configs = [c for c in configs if not args.only or c[0] in args.only]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"# bench_device: torch {torch.__version__}, device {name}, "
        f"{'smoke' if args.smoke else 'full'} shapes, dtypes {' '.join(args.dtypes)}, "
        f"kernel= keyword: {_has_kernel_keyword()}, triton on device: {_triton_ok(device)}"
    )
    start = time.perf_counter()
    results: dict[str, Any] = {}
    left: list[str] = []
    for workload, m, t, v, h in configs:
        for dt in args.dtypes:
            key = f"{workload} {dt} M={m} T={t} V={v}" + (f" H={h}" if h else "")
            if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                left.append(key)
                continue
            t0 = time.perf_counter()
            res = _run_config(workload, m, t, v, h, DTYPES[dt], device, args.repeats, args.smoke)
            res["wall_s"] = time.perf_counter() - t0
            results[key] = res
            verdicts = device.type == "cuda" and not args.smoke
            print("\n".join(_report(key, res, verdicts)), flush=True)
            if args.json:  # written as it goes: a run cut off at its limit keeps its figures
                args.json.write_text(json.dumps({"results": results, "not_run": []}, indent=2))
    if left:
        print(f"\nnot run (budget of {args.budget_s} s spent): " + "; ".join(left))
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "not_run": left}, indent=2))
    if args.plot and results:
        plot_ratios(results, args.plot, name)
    return 0


def plot_ratios(results: dict[str, Any], path: Path, device_name: str) -> None:
    """Time and peak memory of each variant over naive torch's, one group of bars a config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    variants = sorted({v for r in results.values() for v in r["time"] if v != "naive"})
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 1.6 * len(keys)), 7), sharex=True)
    width = 0.8 / max(len(variants), 1)
    for row, (ax, field) in enumerate(zip(axes, ("time", "memory"))):
        for i, var in enumerate(variants):
            ys = []
            for k in keys:
                got, ref = results[k][field].get(var), results[k][field].get("naive")
                ys.append(got / ref if got is not None and ref else float("nan"))
            xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(keys))]
            ax.bar(xs, ys, width, label=var)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylabel(f"{field} / naive")
        if row == 0:
            ax.legend(fontsize=8)
            ax.set_title(f"HAEPO lean paths on {device_name}: ratio to naive torch")
    axes[-1].set_xticks(range(len(keys)), [k.replace(" ", "\n", 2) for k in keys], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
