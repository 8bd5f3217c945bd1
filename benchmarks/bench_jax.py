"""Benchmarks for the JAX backend (``haepo_backends.jax``), ratios measured side by side.

1. From hidden states with entropy and exact KL (M=8, T=256, V=32000, H=512, float32, CPU,
   groups of 4): the fused, chunked ``haepo_loss_from_hidden`` against a naive
   ``jit(value_and_grad)`` that materializes the logits and the reference logits. Each variant
   runs in a fresh subprocess (so peaks do not mix) with ``MALLOC_MMAP_THRESHOLD_`` set (freed
   memory kept by glibc does not count). The subprocess first runs the same step on a tiny
   problem, as ``bench_torch.py`` does, so that the runtime's one-time set-up (thread pools,
   GEMM packing buffers) is not counted as the step's memory. Then the kernel high-water mark
   is reset once the full inputs exist and the step is compiled, and the peak extra RSS is the
   high-water mark minus the RSS at the reset. The same step measured as the first run of a
   fresh process (no warm-up) is reported beside it. Compile time is reported apart from the
   steady state. The time ratio that decides the target comes from one more subprocess,
   with the allocator's defaults, that times naive and fused alternately.
2. Memory flat in T: the fused path at a fixed chunk for growing T; the extra memory beyond the
   ``d hidden`` gradient buffer (which grows with T by nature) should stay flat.
3. Steady-state policy term from per-step log-probs (M=1024, T=512, groups of 8): the jitted
   JAX ``haepo_loss`` loss + gradient against the torch backend's ``haepo_loss`` + backward
   (or the core on torch tensors when the torch backend does not import), in one run.

Usage: ``python benchmarks/bench_jax.py [--quick] [--plot out.png]``.
Besides the peak RSS, each compiled step reports XLA's own count of its temporaries
(``memory_analysis().temp_size_in_bytes``), exact and independent of the allocator.
Targets: (1) peak extra memory <= 0.06x naive at <= 1.0x its time; (2) flat in T;
(3) <= 1.2x the torch backend's time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# The memory workers' environment. MALLOC_MMAP_THRESHOLD_ makes glibc mmap every block of
# 64 KB or more and unmap it on free, so the resident set shows what is live; but it also
# makes every such allocation fault its pages in afresh, which slows the fused path's many
# small blocks (about 1.6x on this box) far more than the naive path's few large ones. So the
# timing workers run with the allocator's defaults (TIMING_ENV), as a user's process does.
WORKER_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",  # large buffers are mmapped, so free() returns them
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # no up-front pool (matters on accelerators)
    "XLA_PYTHON_CLIENT_ALLOCATOR": "platform",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}
TIMING_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> float:
    """Reset the peak-RSS mark (Linux >= 4.0) and return the current RSS in MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def _timed(compiled, args: tuple, reps: int) -> tuple[float, float, float]:
    """``(steady_s, peak_extra_mb, loss)``: peak RSS above the RSS before the first run.

    Each run's outputs are dropped before the next run starts: holding them would count two
    sets of gradient buffers in the peak."""
    import jax

    base = _reset_peak()
    out = jax.block_until_ready(compiled(*args))  # warm-up run, counted in the peak
    loss = float(out[0])
    del out
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))  # the outputs are freed as soon as it returns
        times.append(time.perf_counter() - t0)
    return statistics.median(times), _status_mb("VmHWM") - base, loss


def _xla_temp_mb(compiled) -> float:
    """XLA's own figure for the compiled step's temporaries (scratch beyond inputs/outputs):
    exact and independent of the allocator and the machine's load."""
    try:
        return compiled.memory_analysis().temp_size_in_bytes / 2**20
    except Exception:  # some backends/versions do not report it
        return float("nan")


# --------------------------------------------------------------------------------------------
# Worker: one variant of the from-hidden benchmark in this (fresh) process
# --------------------------------------------------------------------------------------------


def _hidden_problem(variant: str, m: int, t: int, v: int, h: int, chunk: int | None):
    """``(loss_fn(hidden, weight), hidden, weight)`` for one variant of the from-hidden case."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from haepo_backends.jax import haepo_loss_from_hidden

    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(m, t, h)).astype(np.float32) * 0.05)
    weight = jnp.asarray(rng.normal(size=(v, h)).astype(np.float32) * 0.05)
    ref_hidden = hidden + jnp.asarray(rng.normal(size=(m, t, h)).astype(np.float32) * 0.01)
    actions = jnp.asarray(rng.integers(0, v, size=(m, t)).astype(np.int32))
    returns = jnp.asarray(rng.normal(size=m).astype(np.float32))
    group_ids = jnp.asarray(np.repeat(np.arange(m // 4 + (m % 4 > 0)), 4)[:m].astype(np.int32))
    num_groups = int(group_ids.max()) + 1
    jax.block_until_ready((hidden, weight, ref_hidden))
    coefs = dict(entropy_coef=0.01, kl_coef=0.1)

    if variant == "naive":

        def loss_fn(hd, w):
            # Materializes [M, T, V] logits and reference logits, as a plain JAX user would.
            logits = jnp.einsum("mth,vh->mtv", hd, w)
            ref = jax.lax.stop_gradient(jnp.einsum("mth,vh->mtv", ref_hidden, w))
            lsm = jax.nn.log_softmax(logits)
            p = jnp.exp(lsm)
            logp = jnp.take_along_axis(lsm, actions[..., None], axis=-1)[..., 0]
            ent = -jnp.sum(p * lsm, axis=-1)
            kl = jnp.sum(p * (lsm - jax.nn.log_softmax(ref)), axis=-1)
            big_l = jnp.sum(logp, axis=1)
            w_pl = jnp.exp(big_l - jax.ops.segment_max(big_l, group_ids, num_groups)[group_ids])
            w_pl = w_pl / jax.ops.segment_sum(w_pl, group_ids, num_groups)[group_ids]
            cnt = jax.ops.segment_sum(jnp.ones_like(returns), group_ids, num_groups)
            mean = jax.ops.segment_sum(returns, group_ids, num_groups) / cnt
            c = returns - mean[group_ids]
            std = jnp.sqrt(jax.ops.segment_sum(c * c, group_ids, num_groups) / cnt)
            r_norm = c / (std[group_ids] + 1e-8)
            policy = -jnp.sum(w_pl * r_norm) / num_groups
            return policy - coefs["entropy_coef"] * ent.mean() + coefs["kl_coef"] * kl.mean()

    else:

        def loss_fn(hd, w):
            return haepo_loss_from_hidden(
                hd,
                w,
                actions,
                returns,
                ref_hidden=ref_hidden,
                group_ids=group_ids,
                num_groups=num_groups,
                chunk_size=chunk,
                **coefs,
            ).loss

    return loss_fn, hidden, weight


def _hidden_worker(
    variant: str, m: int, t: int, v: int, h: int, chunk: int | None, reps: int, warm: bool
) -> dict:
    import jax

    if warm:
        # One step of the same variant on a tiny problem first: XLA's CPU runtime allocates its
        # thread pools and GEMM packing buffers on the first run in a process (about 8 MB here),
        # once for the process's lifetime. A training loop pays that once, not per step, so
        # it is kept out of the step's peak (bench_torch.py warms up the same way).
        tiny_fn, tiny_h, tiny_w = _hidden_problem(variant, 4, 8, min(v, 512), h, chunk)
        tiny = jax.jit(jax.value_and_grad(tiny_fn, argnums=(0, 1))).lower(tiny_h, tiny_w)
        jax.block_until_ready(tiny.compile()(tiny_h, tiny_w))
        del tiny_fn, tiny_h, tiny_w, tiny
    loss_fn, hidden, weight = _hidden_problem(variant, m, t, v, h, chunk)
    # Compile ahead of time, so compile time and compiler memory stay out of the steady state.
    t0 = time.perf_counter()
    step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1))).lower(hidden, weight).compile()
    compile_s = time.perf_counter() - t0
    steady, peak, loss = _timed(step, (hidden, weight), reps)
    return {
        "variant": variant,
        "warm": warm,
        "T": t,
        "chunk": chunk,
        "compile_s": compile_s,
        "steady_s": steady,
        "peak_extra_mb": peak,
        "xla_temp_mb": _xla_temp_mb(step),
        # the outputs a value_and_grad step must write: d hidden [M, T, H] and d weight [V, H]
        "outputs_mb": (m * t * h + v * h) * 4 / 2**20,
        "dhidden_mb": m * t * h * 4 / 2**20,
        "loss": loss,
    }


def _interleaved_worker(m: int, t: int, v: int, h: int, chunk: int | None, reps: int) -> dict:
    """Naive and fused timed alternately in one process: on a shared machine the load drifts,
    and alternating the two makes their ratio robust to it (memory is measured apart)."""
    import jax

    steps = {}
    for variant in ("naive", "fused"):
        loss_fn, hidden, weight = _hidden_problem(variant, m, t, v, h, chunk)
        steps[variant] = (
            jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1))).lower(hidden, weight).compile()
        )
        jax.block_until_ready(steps[variant](hidden, weight))
    times: dict[str, list[float]] = {"naive": [], "fused": []}
    for _ in range(reps):
        for variant, step in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(step(hidden, weight))
            times[variant].append(time.perf_counter() - t0)
    ratios = [f / n for f, n in zip(times["fused"], times["naive"])]
    return {
        "naive_s": times["naive"],
        "fused_s": times["fused"],
        "ratio_median": statistics.median(ratios),
    }


def _policy_worker(m: int, t: int, group: int, reps: int) -> dict:
    """Steady-state loss + gradient of the policy term, JAX (jit) and torch, same data."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from haepo_backends.jax import haepo_loss

    rng = np.random.default_rng(0)
    logp_np = (-rng.random((m, t)) * 3).astype(np.float32)
    lengths = rng.integers(t // 2, t + 1, size=m)
    mask_np = np.arange(t)[None, :] < lengths[:, None]
    ret_np = rng.normal(size=m).astype(np.float32)
    gid_np = np.repeat(np.arange(m // group), group).astype(np.int32)
    res = {}

    lp, mk, rt, gi = map(jnp.asarray, (logp_np, mask_np, ret_np, gid_np))

    def loss_fn(x):
        return haepo_loss(x, rt, mk, group_ids=gi, num_groups=m // group).loss

    t0 = time.perf_counter()
    step = jax.jit(jax.value_and_grad(loss_fn)).lower(lp).compile()
    res["jax_compile_s"] = time.perf_counter() - t0
    res["jax_steady_s"] = _timed(step, (lp,), reps)[0]

    try:
        import torch
    except ImportError:  # pragma: no cover
        res["torch_impl"] = "torch not installed"
        return res
    try:
        from haepo_backends.torch import haepo_loss as torch_loss

        res["torch_impl"] = "haepo_backends.torch.haepo_loss"
    except Exception as err:
        from haepo_core import haepo_loss as torch_loss

        res["torch_impl"] = f"haepo_core.haepo_loss on torch (torch backend: {err!r:.80})"
    tl = torch.from_numpy(logp_np).requires_grad_(True)
    tm, tr, tg = (torch.from_numpy(a) for a in (mask_np, ret_np, gid_np.astype(np.int64)))
    times = []
    for i in range(reps + 1):
        tl.grad = None
        t0 = time.perf_counter()
        torch_loss(tl, tr, tm, group_ids=tg).loss.backward()
        if i:
            times.append(time.perf_counter() - t0)
    res["torch_steady_s"] = statistics.median(times)
    res["torch_threads"] = torch.get_num_threads()
    return res


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _run_worker(args: list[str], worker_env: dict[str, str] = WORKER_ENV) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in WORKER_ENV}
    env.update(worker_env)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    parser.add_argument("--reps", type=int, default=None, help="timed repeats per variant")
    parser.add_argument(
        "--chunk", type=int, default=0, help="tokens per chunk (fused path); 0: the library default"
    )
    parser.add_argument("--plot", default=None, help="write a PNG of memory vs T here")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, *rest = args.worker
        if kind == "hidden":
            variant, m, t, v, h, chunk, reps, warm = rest
            out = _hidden_worker(
                variant, int(m), int(t), int(v), int(h), int(chunk) or None, int(reps), warm == "1"
            )
        elif kind == "interleaved":
            m, t, v, h, chunk, reps = map(int, rest)
            out = _interleaved_worker(m, t, v, h, chunk or None, reps)
        else:
            m, t, g, reps = map(int, rest)
            out = _policy_worker(m, t, g, reps)
        print(json.dumps(out))
        return 0

    from tqdm import tqdm

    quick = args.quick
    m, t, v, h = (8, 128, 8000, 256) if quick else (8, 256, 32000, 512)
    reps = args.reps or (2 if quick else 3)
    t_list = [t // 2, t, 2 * t, 4 * t]
    pm, pt = (256, 256) if quick else (1024, 512)

    jobs = [("hidden", "naive", m, t), ("hidden", "fused", m, t)]
    jobs += [("hidden", "fused", m, tt) for tt in t_list if tt != t]
    jobs += [("cold", "naive", m, t), ("cold", "fused", m, t)]
    results = []
    all_jobs = [*jobs, ("interleaved", "", m, t), ("policy", "", pm, pt)]
    for kind, variant, mm, tt in tqdm(all_jobs, desc="bench_jax"):
        if kind in ("hidden", "cold"):
            # The memory-vs-T and cold runs need one timed repeat only (their peak is what
            # matters).
            n_rep = reps if tt == t and kind == "hidden" else 1
            results.append(
                _run_worker(
                    [
                        "hidden",
                        variant,
                        str(mm),
                        str(tt),
                        str(v),
                        str(h),
                        str(args.chunk),
                        str(n_rep),
                        "1" if kind == "hidden" else "0",
                    ]
                )
            )
        elif kind == "interleaved":
            inter = _run_worker(
                ["interleaved", str(mm), str(tt), str(v), str(h), str(args.chunk), str(reps)],
                TIMING_ENV,
            )
        else:
            policy = _run_worker(["policy", str(pm), str(pt), "8", str(max(reps, 5))], TIMING_ENV)

    naive = results[0]
    fused = results[1]
    cold = {r["variant"]: r for r in results if not r["warm"]}
    chunk_txt = args.chunk or "library default"
    print(
        f"\nFrom hidden, entropy + exact KL: M={m}, T={t}, V={v}, H={h}, float32, "
        f"chunk={chunk_txt}, jit(value_and_grad), CPU"
    )
    print(
        "| variant | compile s | steady s (memory run) | peak extra RSS MB | "
        "XLA temporaries MB | time ratio (memory run) | RSS ratio | "
        "temporaries + outputs ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")

    def temp_out(r: dict) -> float:
        return r["xla_temp_mb"] + r["outputs_mb"]

    for r in (naive, fused):
        print(
            f"| {r['variant']} | {r['compile_s']:.2f} | {r['steady_s']:.3f} | "
            f"{r['peak_extra_mb']:.0f} | {r['xla_temp_mb']:.1f} | "
            f"{r['steady_s'] / naive['steady_s']:.2f} | "
            f"{r['peak_extra_mb'] / naive['peak_extra_mb']:.3f} | "
            f"{temp_out(r) / temp_out(naive):.3f} |"
        )
    print(f"loss naive {naive['loss']:.6f} vs fused {fused['loss']:.6f}")
    print(
        f"timed in one process with the allocator's defaults ({reps} alternating pairs): naive "
        f"{statistics.median(inter['naive_s']):.3f} s, fused "
        f"{statistics.median(inter['fused_s']):.3f} s, median ratio "
        f"{inter['ratio_median']:.2f}"
    )
    tm = inter["ratio_median"] <= 1.0
    mem = fused["peak_extra_mb"] / naive["peak_extra_mb"]
    print(
        f"targets: peak extra RSS <= 0.06x naive: {'met' if mem <= 0.06 else 'NOT met'} "
        f"({mem:.3f}x); time <= 1.0x naive (interleaved ratio): {'met' if tm else 'NOT met'}"
    )

    cold_ratio = cold["fused"]["peak_extra_mb"] / cold["naive"]["peak_extra_mb"]
    print(
        f"first step of a fresh process (runtime not warmed up): naive "
        f"{cold['naive']['peak_extra_mb']:.0f} MB, fused {cold['fused']['peak_extra_mb']:.0f} MB, "
        f"{cold_ratio:.3f}x (includes the runtime's one-time set-up)"
    )

    flat = sorted(
        [r for r in results if r["variant"] == "fused" and r["warm"]], key=lambda r: r["T"]
    )
    print(f"\nMemory vs T at chunk={chunk_txt} (fused; d hidden = M*T*H*4 bytes grows with T)")
    print(
        "| T | steady s | peak extra RSS MB | XLA temporaries MB | d hidden MB | "
        "RSS minus d hidden MB |"
    )
    print("|---|---|---|---|---|---|")
    for r in flat:
        print(
            f"| {r['T']} | {r['steady_s']:.3f} | {r['peak_extra_mb']:.0f} | "
            f"{r['xla_temp_mb']:.1f} | {r['dhidden_mb']:.0f} | "
            f"{r['peak_extra_mb'] - r['dhidden_mb']:.0f} |"
        )
    lo = flat[0]["peak_extra_mb"] - flat[0]["dhidden_mb"]
    hi = flat[-1]["peak_extra_mb"] - flat[-1]["dhidden_mb"]
    print(f"extra beyond d hidden, T={flat[-1]['T']} vs T={flat[0]['T']}: {hi / lo:.2f}x")
    t_lo, t_hi = flat[0]["xla_temp_mb"], flat[-1]["xla_temp_mb"]
    print(f"XLA temporaries, T={flat[-1]['T']} vs T={flat[0]['T']}: {t_hi / t_lo:.2f}x")

    print(f"\nPolicy term, loss + gradient, M={pm}, T={pt}, groups of 8, float32, steady state")
    print("| implementation | compile s | steady s | ratio to torch |")
    print("|---|---|---|---|")
    if "torch_steady_s" in policy:
        ts = policy["torch_steady_s"]
        print(
            f"| jax jit haepo_loss | {policy['jax_compile_s']:.2f} | "
            f"{policy['jax_steady_s'] * 1e3:.1f} ms | {policy['jax_steady_s'] / ts:.2f} |"
        )
        print(
            f"| {policy['torch_impl']} (eager, {policy['torch_threads']} threads) | - | "
            f"{ts * 1e3:.1f} ms | 1.00 |"
        )
        ok = policy["jax_steady_s"] / ts <= 1.2
        print(f"target <= 1.2x torch: {'met' if ok else 'NOT met'}")
    else:
        print(
            f"| jax jit haepo_loss | {policy['jax_compile_s']:.2f} | "
            f"{policy['jax_steady_s'] * 1e3:.1f} ms | - |  ({policy['torch_impl']})"
        )

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ts_ = [r["T"] for r in flat]
        ax.plot(ts_, [r["peak_extra_mb"] for r in flat], "o-", label="fused: peak extra")
        ax.plot(
            ts_,
            [r["peak_extra_mb"] - r["dhidden_mb"] for r in flat],
            "s--",
            label="fused: extra minus d hidden",
        )
        ax.axhline(naive["peak_extra_mb"], color="r", ls=":", label=f"naive at T={t}")
        ax.set_xlabel("T (tokens per sequence)")
        ax.set_ylabel("MB")
        ax.set_title(f"JAX from_hidden, M={m}, V={v}, H={h}, chunk={chunk_txt}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
