"""One optimizer step of HAEPOTrainer against GRPOTrainer at equal shapes, side by side.

Both trainers get the same randomly initialised Llama-style model (the shape of a 0.5B Qwen2:
hidden 896, 24 layers, vocabulary 151,936; bf16 on CUDA), the same prompts, ``num_generations``
completions per prompt, and synthetic completions of exactly ``T`` tokens (random ids, no EOS):
generation is replaced by a draw of random ids in both, so a step measures what differs, the
log-probs, the loss and its backward. Time per step (median of the timed steps after a
warm-up step) and peak memory allocated during a step (CUDA) are printed as a table and their
ratios HAEPO / GRPO, each pair measured in this process, one after the other.

Usage::

    python -P benchmarks/bench_trl_step.py                # CUDA: T = 1024 and 4096
    python -P benchmarks/bench_trl_step.py --smoke        # tiny model on CPU, seconds
    python -P benchmarks/bench_trl_step.py --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

FULL = dict(vocab=151936, hidden=896, inter=4864, layers=24, heads=14, kv=2)
SMOKE = dict(vocab=512, hidden=64, inter=128, layers=2, heads=4, kv=2)


def _tokenizer(folder: str, vocab: int) -> Any:
    """A local word-level tokenizer whose ids stay below ``vocab`` (nothing from a hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<eos>": 1, "<bos>": 2}
    words.update({f"w{i}": i + 3 for i in range(min(vocab, 512) - 3)})
    tok = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )
    fast.save_pretrained(folder)
    return fast


def _model(folder: str, shape: dict[str, int], max_len: int) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    _tokenizer(folder, shape["vocab"])
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["inter"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv"],
        max_position_embeddings=max_len,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _synthetic(cls: type, length: int, vocab: int) -> type:
    """``cls`` whose generation draws ``length`` random ids (>= 3: no EOS, no padding)."""

    class Synthetic(cls):  # type: ignore[misc, valid-type]
        def _generate_single_turn(
            self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
        ):
            gen = torch.Generator().manual_seed(self.state.global_step)
            ids = torch.randint(3, vocab, (len(prompt_ids), length), generator=gen)
            return ids.tolist(), None

    return Synthetic


def _timed_steps(
    trainer_cls: type, config_cls: type, fields: dict[str, Any], model: str, steps: int, cuda: bool
) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import TrainerCallback

    times: list[float] = []
    peaks: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.base = torch.cuda.memory_allocated()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
                peaks.append(torch.cuda.max_memory_allocated() - self.base)
            times.append(time.perf_counter() - self.t0)

    args = config_cls(
        output_dir=tempfile.mkdtemp(),
        max_steps=steps + 1,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1000,
        bf16=cuda,
        use_cpu=not cuda,
        seed=0,
        **fields,
    )
    trainer = trainer_cls(
        model=model,
        reward_funcs=lambda completions, **_: [float(len(c) % 3) for c in completions],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["w1 w2 w3"] * 64}),
        callbacks=[Clock()],
    )
    trainer.train()
    del trainer
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    timed = times[1:] or times  # the first step pays compilation and allocator warm-up
    return {
        "step_s": statistics.median(timed),
        "steps": len(timed),
        "peak_mib": (max(peaks[1:] or peaks) / 2**20) if peaks else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU (a test of the script)")
    ap.add_argument("--lengths", type=int, nargs="+", default=None, help="completion lengths T")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--json", type=Path, help="write the results here (after each length)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    from haepo_adapters.trl import HAEPOConfig, HAEPOTrainer
    from trl import GRPOConfig, GRPOTrainer

    cuda = torch.cuda.is_available() and not args.smoke
    shape = SMOKE if args.smoke else FULL
    lengths = args.lengths or ([16] if args.smoke else [1024, 4096])
    g = 4 if args.smoke else 8
    folder = _model(tempfile.mkdtemp(), shape, max(lengths) + 64)
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"# bench_trl_step: {device}, model {shape}, G = {g}, batch {g} completions")
    print("| T | trainer | step s | peak MiB | time / GRPO | memory / GRPO |")
    print("|---:|---|---:|---:|---:|---:|")
    results: list[dict[str, Any]] = []
    common = dict(
        per_device_train_batch_size=g,
        num_generations=g,
        gradient_accumulation_steps=1,
        gradient_checkpointing=cuda,
    )
    for t in lengths:
        common["max_completion_length"] = t
        rows = {
            "GRPO": _timed_steps(
                _synthetic(GRPOTrainer, t, shape["vocab"]),
                GRPOConfig,
                {**common, "beta": 0.0},
                folder,
                args.steps,
                cuda,
            ),
            "HAEPO": _timed_steps(
                _synthetic(HAEPOTrainer, t, shape["vocab"]),
                HAEPOConfig,
                {**common, "kl_coef": 0.0, "entropy_coef": 0.0},
                folder,
                args.steps,
                cuda,
            ),
        }
        ref = rows["GRPO"]
        for name, r in rows.items():
            tr = r["step_s"] / ref["step_s"]
            mr = r["peak_mib"] / ref["peak_mib"] if r["peak_mib"] and ref["peak_mib"] else None
            mem = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            print(
                f"| {t} | {name} | {r['step_s']:.3f} | {mem} | {tr:.3f} | "
                f"{'-' if mr is None else f'{mr:.3f}'} |",
                flush=True,
            )
            results.append({"T": t, "trainer": name, "device": device, **r})
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
