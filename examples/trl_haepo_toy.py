"""Train a tiny character-level LM from scratch with HAEPO (or GRPO) through TRL, on CPU.

Task (verifiable, reward function below): the prompt is a short string over ``abcd`` followed
by ``>``; the completion should be the string reversed (``"abc>"`` -> ``"cba"``). The reward
is the fraction of target characters in the right place, minus 0.25 per character beyond
the target length. A random model scores about 0.1.

Usage::

    python examples/trl_haepo_toy.py                      # HAEPO, 100 steps, PNG in runs/
    python examples/trl_haepo_toy.py --algo grpo          # the same run with TRL's GRPO
    python examples/trl_haepo_toy.py --compare            # both, one plot (docs/img/...)
    python examples/trl_haepo_toy.py --ess-sweep          # ESS vs completion length (docs)

Everything runs offline (``HF_HUB_OFFLINE=1``): the model and tokenizer are built locally.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ALPHABET = "abcd"
PROMPT_LEN = 3


def reverse_reward(completions: list[str], target: list[str], **_: object) -> list[float]:
    """Fraction of target characters in place, minus 0.25 per extra character."""
    out = []
    for completion, want in zip(completions, target):
        hits = sum(a == b for a, b in zip(completion, want))
        extra = max(0, len(completion) - len(want))
        out.append(hits / len(want) - 0.25 * extra)
    return out


def make_dataset(n_rows: int, seed: int):  # type: ignore[no-untyped-def]
    import itertools
    import random

    from datasets import Dataset

    words = ["".join(p) for p in itertools.product(ALPHABET, repeat=PROMPT_LEN)]
    rng = random.Random(seed)
    rows = [rng.choice(words) for _ in range(n_rows)]
    return Dataset.from_dict({"prompt": [w + ">" for w in rows], "target": [w[::-1] for w in rows]})


def train(algo: str, steps: int, seed: int, workdir: Path, args_ns: argparse.Namespace) -> dict:
    import torch
    from haepo_adapters.trl import HAEPOConfig, HAEPOTrainer, save_char_level_model
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(seed)
    torch.set_num_threads(args_ns.threads)
    model_dir = save_char_level_model(
        workdir / "model", ALPHABET + ">", hidden_size=64, num_layers=2, num_heads=4, seed=seed
    )
    common = dict(
        output_dir=str(workdir / f"out-{algo}"),
        per_device_train_batch_size=args_ns.prompts * args_ns.generations,
        num_generations=args_ns.generations,
        max_completion_length=PROMPT_LEN + 1,
        max_steps=steps,
        learning_rate=args_ns.lr,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        seed=seed,
        disable_tqdm=False,  # TRL's progress bar
        entropy_coef=args_ns.entropy_coef,
    )
    if algo == "haepo":
        config = HAEPOConfig(
            **common,
            haepo_temperature=args_ns.haepo_temperature,
            length_normalize=not args_ns.no_length_normalize,
        )
        trainer_cls = HAEPOTrainer
    else:
        config = GRPOConfig(**common)
        trainer_cls = GRPOTrainer

    history: list[dict] = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            if logs and "reward" in logs:
                history.append({"step": state.global_step, "time": time.time() - t0, **logs})

    trainer = trainer_cls(
        model=str(model_dir),
        reward_funcs=reverse_reward,
        args=config,
        train_dataset=make_dataset(steps * args_ns.prompts + 64, seed),
        callbacks=[Record()],
    )
    t0 = time.time()
    trainer.train()
    return {"algo": algo, "seconds": time.time() - t0, "history": history}


def smooth(values: list[float], k: int = 10) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        acc = acc[-k:]
        out.append(sum(acc) / len(acc))
    return out


def summary(run: dict) -> str:
    r = [h["reward"] for h in run["history"]]
    k = max(1, len(r) // 10)
    line = (
        f"{run['algo']}: {len(r)} steps in {run['seconds']:.0f} s, mean reward first {k} steps "
        f"{sum(r[:k]) / k:.3f} -> last {k} steps {sum(r[-k:]) / k:.3f}"
    )
    ess = [h["haepo/ess"] for h in run["history"] if "haepo/ess" in h]
    if ess:
        line += f"; ESS first {ess[0]:.2f} / mean {sum(ess) / len(ess):.2f} / last {ess[-1]:.2f}"
    return line


def plot_runs(runs: list[dict], png: Path, generations: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        steps = [h["step"] for h in run["history"]]
        rewards = [h["reward"] for h in run["history"]]
        label = f"{run['algo'].upper()} (10-step mean; {run['seconds']:.0f} s)"
        (line,) = axes[0].plot(steps, smooth(rewards), label=label)
        axes[0].plot(steps, rewards, alpha=0.25, color=line.get_color())
        ess = [h.get("haepo/ess") for h in run["history"]]
        if any(e is not None for e in ess):
            axes[1].plot(steps, ess, label=f"{run['algo'].upper()} ESS (mean over groups)")
    axes[0].set(xlabel="optimizer step", ylabel="mean reward", title="Reverse-a-string toy task")
    axes[0].legend()
    axes[1].axhline(generations, ls="--", c="grey", label=f"group size {generations}")
    axes[1].set(xlabel="optimizer step", ylabel="ESS", title="HAEPO effective sample size")
    axes[1].set_ylim(0, generations + 0.5)
    axes[1].legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"saved {png}")


def ess_sweep(args_ns: argparse.Namespace, workdir: Path) -> None:
    """ESS of HAEPO's group softmax vs completion length, for each (length_normalize, tau).

    Completions are sampled from a random tiny LM with a large init std, so its next-token
    distributions are peaked and uneven (its per-token entropy is printed; LLMs sit around
    0.3-2 nats/token). The length is fixed by banning EOS, so L_k sums exactly T tokens.
    """
    import torch
    from haepo_adapters.trl import save_char_level_model
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    from haepo_core import effective_sample_size, plackett_luce_weights

    torch.manual_seed(args_ns.seed)
    torch.set_num_threads(args_ns.threads)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    lengths = args_ns.sweep_lengths
    path = save_char_level_model(
        workdir / "sweep-model",
        alphabet,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        max_length=max(lengths) + 8,
        initializer_range=args_ns.sweep_init,
        seed=args_ns.seed,
    )
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    g, n_groups = args_ns.generations, args_ns.sweep_groups
    settings = [(False, 1.0), (False, 10.0), (True, 1.0), (True, 0.1)]
    rows = []
    for t in tqdm(lengths, desc="ESS sweep (lengths)"):
        prompts = torch.randint(3, 3 + len(alphabet), (n_groups, 4)).repeat_interleave(g, 0)
        with torch.no_grad():
            seq = model.generate(
                prompts,
                attention_mask=torch.ones_like(prompts),
                do_sample=True,
                max_new_tokens=t,
                min_new_tokens=t,
                pad_token_id=0,
                bad_words_ids=[[1], [2], [0]],
            )
            logits = model(seq).logits[:, prompts.shape[1] - 1 : -1].float()
            logp_all = torch.log_softmax(logits, -1)
            tok = seq[:, prompts.shape[1] :]
            logp = logp_all.gather(-1, tok[..., None])[..., 0]
            ent = -(logp_all.exp() * logp_all).sum(-1).mean().item()
        total = logp.sum(1)
        gid = torch.arange(total.shape[0]) // g
        spread = total.view(n_groups, g).std(1).mean().item()
        row = {"length": t, "entropy_per_token": ent, "std_L_within_group": spread}
        for ln, tau in settings:
            L = total / t if ln else total
            w = plackett_luce_weights(L, gid, temperature=tau)
            row[f"ess(ln={ln},tau={tau})"] = float(effective_sample_size(w, gid))
        rows.append(row)
    header = ["T", "H/token", "std L_k"] + [f"ESS ln={ln} tau={tau:g}" for ln, tau in settings]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [
            str(r["length"]),
            f"{r['entropy_per_token']:.2f}",
            f"{r['std_L_within_group']:.1f}",
        ]
        cells += [f"{r[f'ess(ln={ln},tau={tau})']:.2f}" for ln, tau in settings]
        print("| " + " | ".join(cells) + " |")
    if args_ns.sweep_png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for ln, tau in settings:
            ax.plot(
                lengths,
                [r[f"ess(ln={ln},tau={tau})"] for r in rows],
                marker="o",
                label=f"length_normalize={ln}, tau={tau:g}",
            )
        ax.set_xscale("log", base=2)
        ax.set(xlabel="completion length T (tokens)", ylabel=f"mean ESS (group of {g})")
        ax.set_ylim(0, g + 0.5)
        ax.set_title("HAEPO weight collapse vs completion length")
        ax.legend(fontsize=8)
        fig.tight_layout()
        Path(args_ns.sweep_png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args_ns.sweep_png, dpi=110)
        print(f"saved {args_ns.sweep_png}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--algo", choices=["haepo", "grpo"], default="haepo")
    p.add_argument("--compare", action="store_true", help="run HAEPO then GRPO, one plot")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--generations", type=int, default=8, help="completions per prompt (group)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--entropy-coef", type=float, default=0.0)
    p.add_argument("--haepo-temperature", type=float, default=1.0)
    p.add_argument(
        "--no-length-normalize", action="store_true", help="HAEPO on raw sums of log-probs"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--png", default="runs/trl_toy_reward.png", help="reward-curve plot")
    p.add_argument("--json", default=None, help="also save the logged curves as JSON")
    p.add_argument("--ess-sweep", action="store_true", help="measure ESS vs completion length")
    p.add_argument("--sweep-groups", type=int, default=16)
    p.add_argument("--sweep-init", type=float, default=0.5, help="init std of the sweep model")
    p.add_argument(
        "--sweep-lengths",
        type=int,
        nargs="+",
        default=[16, 64, 256, 1024],
        help="completion lengths (1024 takes ~10 min on 2 CPU cores)",
    )
    p.add_argument("--sweep-png", default="runs/trl_ess_vs_length.png")
    args_ns = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args_ns.ess_sweep:
            ess_sweep(args_ns, workdir)
            return
        algos = ["haepo", "grpo"] if args_ns.compare else [args_ns.algo]
        runs = [train(a, args_ns.steps, args_ns.seed, workdir, args_ns) for a in algos]
    for run in runs:
        print(summary(run))
    plot_runs(runs, Path(args_ns.png), args_ns.generations)
    if args_ns.json:
        Path(args_ns.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args_ns.json).write_text(json.dumps(runs))


if __name__ == "__main__":
    main()
