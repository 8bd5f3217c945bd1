"""HAEPOTrainer memory per micro-batch, measured side by side in one run (CPU or CUDA).

Two studies, each configuration in a fresh subprocess (so one peak cannot hide another):

- ``split``: peak memory of one training micro-batch (step preparation, forward, HAEPO loss,
  backward) as ``num_generations`` grows. "whole" keeps a group in one micro-batch
  (``per_device_train_batch_size = num_generations``, what HAEPO required before split groups);
  "split" keeps ``per_device_train_batch_size = 4`` and spreads the group over
  ``num_generations / 4`` accumulation steps (the split-group gradient).
- ``exact``: the KL to the initial model at V = 32k on a tiny model: TRL's fused-head
  log-probs with the ``k3`` estimator vs ``kl_estimator="exact"`` (last hidden states and LM
  heads through ``haepo_backends.torch.haepo_loss_from_hidden``), plus the same exact loss on
  materialized ``[B, T, V]`` logits (``haepo_core.haepo_loss_from_logits``) for scale.

Completions are synthetic (random tokens, fixed seed), so no generation runs; the
measurement starts once the batch (and the reference's outputs) exist. Memory: CUDA's peak
allocated bytes when a GPU is present, else the growth of the process's peak RSS over its
resident size just before the micro-batch (``ru_maxrss``), i.e. what the micro-batch added.

Usage: ``python -P benchmarks/bench_trl.py [--only split exact] [--out FILE.json]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _model_dir(folder: str, vocab: int, hidden: int, layers: int, max_length: int) -> str:
    import torch
    from haepo_adapters.trl import save_char_level_model
    from transformers import LlamaConfig, LlamaForCausalLM

    save_char_level_model(folder, "abcd>")  # the tokenizer (ids < vocab)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_length,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from haepo_adapters.trl import HAEPOConfig, HAEPOTrainer

    from haepo_core import haepo_loss_from_logits

    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    g, per_device, t, v = cfg["G"], cfg["per_device"], cfg["T"], cfg["V"]
    rows = cfg.get("rows", g)
    folder = _model_dir(tempfile.mkdtemp(), v, cfg["hidden"], cfg["layers"], t + 16)
    kl = cfg.get("kl")
    args = HAEPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=rows // per_device,
        num_generations=g,
        max_completion_length=t,
        report_to=[],
        bf16=False,
        use_cpu=not cuda,
        save_strategy="no",
        disable_tqdm=True,
        entropy_coef=0.01,
        kl_coef=0.1 if kl else 0.0,
        kl_reference="initial",
        kl_estimator="exact" if kl == "naive" else (kl or "k3"),
    )
    trainer = HAEPOTrainer(
        model=folder,
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["ab>"] * 4}),
    )
    trainer.model.train()
    dev = trainer.accelerator.device
    gen = torch.Generator().manual_seed(0)
    p = 8
    batch = {
        "prompt_ids": torch.randint(3, v, (rows, p), generator=gen).to(dev),
        "prompt_mask": torch.ones(rows, p, dtype=torch.long, device=dev),
        "completion_ids": torch.randint(3, v, (rows, t), generator=gen).to(dev),
        "completion_mask": torch.ones(rows, t, dtype=torch.long, device=dev),
        "haepo_rewards": torch.randn(rows, generator=gen).to(dev),
        "haepo_group_ids": (torch.arange(rows) // g).to(dev),
        "haepo_rows": torch.arange(rows, device=dev),
    }
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    att = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    if kl == "k3":
        with torch.no_grad():
            batch["ref_per_token_logps"] = torch.cat(
                [
                    trainer._get_per_token_logps_and_entropies(
                        trainer.ref_model, ids[i : i + per_device], att[i : i + per_device], t
                    )[0]
                    for i in range(0, rows, per_device)
                ]
            )
    elif kl in ("exact", "naive"):
        batch["haepo_ref_hidden"] = trainer._reference_hidden(batch)
    micro = trainer._split_generation_batch(batch)
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base, peak_before = _rss_now(), _peak_rss()
    start = time.perf_counter()
    if kl == "naive":
        mb = micro[0]
        n = mb["completion_ids"].size(1)
        mids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], dim=1)
        matt = torch.cat([mb["prompt_mask"], mb["completion_mask"]], dim=1)
        logits = trainer.model(input_ids=mids, attention_mask=matt).logits[:, -n - 1 : -1]
        with torch.no_grad():
            ref_logits = trainer.ref_model(input_ids=mids, attention_mask=matt).logits
            ref_logits = ref_logits[:, -n - 1 : -1]
        out = haepo_loss_from_logits(
            logits,
            mb["completion_ids"],
            mb["haepo_rewards"],
            mb["completion_mask"].bool(),
            ref_logits=ref_logits,
            group_ids=mb["haepo_group_ids"],
            entropy_coef=0.01,
            kl_coef=0.1,
            length_normalize=True,
        )
        out.loss.backward()
    else:
        trainer._prepare_window(micro[: rows // per_device], fresh=False)
        trainer.compute_loss(trainer.model, micro[0]).backward()
    seconds = time.perf_counter() - start
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        hidden_by_earlier_peak = False
    else:
        peak_after = _peak_rss()
        peak = peak_after - base
        hidden_by_earlier_peak = peak_after <= peak_before
    return {
        **cfg,
        "peak_mb": peak / 2**20,
        "seconds": seconds,
        "device": "cuda" if cuda else "cpu",
        "split": trainer._haepo_split,
        "hidden_by_earlier_peak": hidden_by_earlier_peak,
    }


def _spawn(cfg: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-P", __file__, "--worker", json.dumps(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def split_study() -> list[dict[str, Any]]:
    results = []
    base = dict(T=384, V=256, hidden=256, layers=2)
    print("split: peak MB of one micro-batch vs num_generations")
    print(f"{'G':>4} {'whole (B=G)':>12} {'split (B=4)':>12} {'whole/split':>12}")
    for g in (4, 8, 16, 32):
        whole = _spawn({**base, "G": g, "per_device": g})
        split = _spawn({**base, "G": g, "per_device": 4})
        results += [whole, split]
        ratio = whole["peak_mb"] / max(split["peak_mb"], 1e-9)
        print(f"{g:>4} {whole['peak_mb']:>12.1f} {split['peak_mb']:>12.1f} {ratio:>12.2f}")
    return results


def exact_study() -> list[dict[str, Any]]:
    base = dict(T=256, V=32000, hidden=64, layers=2, G=4, per_device=8, rows=8)
    rows = [_spawn({**base, "kl": k}) for k in ("k3", "exact", "naive")]
    k3 = rows[0]["peak_mb"]
    print("exact: peak MB of one micro-batch (B=8, T=256, V=32000), KL to the initial model")
    for r, name in zip(
        rows, ("k3 (TRL fused log-probs)", "exact (fused from hidden)", "exact on [B,T,V] logits")
    ):
        ratio = r["peak_mb"] / max(k3, 1e-9)
        print(f"  {name:<28} {r['peak_mb']:>9.1f} MB  {ratio:>6.2f}x k3  {r['seconds']:.2f} s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=["split", "exact"], default=None)
    parser.add_argument("--out", default=None, help="write the raw results as JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker is not None:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    studies = a.only or ["split", "exact"]
    results: dict[str, Any] = {}
    if "split" in studies:
        results["split"] = split_study()
    if "exact" in studies:
        results["exact"] = exact_study()
    flagged = [r for rs in results.values() for r in rs if r["hidden_by_earlier_peak"]]
    if flagged:
        print(f"warning: {len(flagged)} CPU figure(s) below an earlier peak of their process")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
