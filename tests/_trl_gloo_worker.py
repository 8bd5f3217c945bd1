"""Worker of ``test_trl_multiprocess_gloo.py``: one SGD step of HAEPOTrainer, saved to a file.

Run as ``python -P -m _trl_gloo_worker MODEL_DIR OUT WORLD`` with ``tests/`` (never the repo
root) on ``PYTHONPATH`` and the usual ``RANK``/``WORLD_SIZE``/``MASTER_*`` variables; the test
also imports :func:`run` to make the single-process reference step in its own process.

TRL seeds each process's sampler differently, so completions come from :func:`rollout`, a
deterministic function of the prompt and of the row's global index: the 1-process and the
2-process runs then train on the very same completions.
"""

from __future__ import annotations

import os
import sys

import torch

ALPHABET = "abcd>"
PROMPTS = ["ab>", "cd>", "ac>", "bd>", "da>", "bc>"]


def reward(completions, **_):  # type: ignore[no-untyped-def]
    return [c.count("a") - 0.5 * c.count("d") + 0.1 * len(c) for c in completions]


def rollout(prompts, trainer):  # type: ignore[no-untyped-def]
    """Completions fixed by (global row, prompt): 1-6 characters then <eos>."""
    tok = trainer.processing_class
    first = trainer.accelerator.process_index * len(prompts)
    prompt_ids, completion_ids = [], []
    for i, prompt in enumerate(prompts):
        gen = torch.Generator().manual_seed(1000 * (first + i) + sum(map(ord, prompt)))
        n = int(torch.randint(1, 7, (1,), generator=gen))
        ids = (3 + torch.randint(0, len(ALPHABET), (n,), generator=gen)).tolist()
        prompt_ids.append(tok(prompt)["input_ids"])
        completion_ids.append([*ids, tok.eos_token_id])
    logprobs = [[0.0] * len(c) for c in completion_ids]
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}


def run(model_dir: str, out: str, per_device: int, accum: int) -> dict[str, torch.Tensor]:
    """One SGD step; returns the parameter update (after - before) by name."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    from datasets import Dataset
    from haepo_adapters.trl import HAEPOConfig, HAEPOTrainer

    args = HAEPOConfig(
        output_dir=out,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accum,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        entropy_coef=0.05,
        haepo_temperature=0.8,
    )
    trainer = HAEPOTrainer(
        model=model_dir,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
        rollout_func=rollout,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    update = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}
    logs = [h for h in trainer.state.log_history if "haepo/ess" in h]
    return {"update": update, "logs": logs, "split": trainer._haepo_split}


if __name__ == "__main__":
    torch.set_num_threads(1)
    model_dir, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    # 2 processes x 3 rows x 2 micro-batches = 12 rows = 3 groups of 4; group 1 has rows on
    # both processes, and every micro-batch of 3 rows cuts a group.
    result = run(model_dir, os.path.join(out, f"run{rank}"), per_device=3, accum=2)
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a clean exit: no gloo thread left running
