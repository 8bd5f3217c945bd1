"""HAEPOTrainer across 2 CPU processes (torch.distributed gloo).

1. Micro-batches that hold whole groups keep every group on one process.
2. A group that straddles the processes (and the micro-batches) gets the same SGD update as the
   whole batch on one process: the split-group gradient all-gathers one ``L_k`` a completion.

Slow (fresh interpreters import TRL): marked ``slow``. The default suite proves the batching
property on TRL's and Accelerate's samplers in tests/test_trl_groups_survive_batching.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

G = 4

WORKER = textwrap.dedent(
    """
    import json, os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    torch.set_num_threads(1)
    from datasets import Dataset
    from haepo_adapters.trl import HAEPOConfig, HAEPOTrainer

    model_dir, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    seen = []

    def reward(completions, prompts, **kw):
        return [float(p[0] == "a") + 0.1 * len(c) for p, c in zip(prompts, completions)]

    class Spy(HAEPOTrainer):
        def _compute_loss(self, model, inputs):
            seen.append({
                "groups": inputs["haepo_group_ids"].tolist(),
                "prompts": self.processing_class.batch_decode(
                    inputs["prompt_ids"], skip_special_tokens=True),
            })
            return super()._compute_loss(model, inputs)

    args = HAEPOConfig(
        output_dir=out + f"/run{rank}", per_device_train_batch_size=4, num_generations=4,
        gradient_accumulation_steps=2, max_completion_length=5, max_steps=2,
        learning_rate=1e-2, logging_steps=1, report_to=[], bf16=False, use_cpu=True,
        save_strategy="no", disable_tqdm=True, seed=0, entropy_coef=0.01,
    )
    ds = Dataset.from_dict({"prompt": ["ab>", "cd>", "ac>", "bd>", "da>", "bc>", "ca>", "db>"]})
    trainer = Spy(model=model_dir, reward_funcs=reward, args=args, train_dataset=ds)
    assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
    trainer.train()
    logs = [h for h in trainer.state.log_history if "haepo/ess" in h]
    with open(out + f"/rank{rank}.json", "w") as f:
        json.dump({"seen": seen, "logs": logs}, f)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a clean exit: no gloo thread left running
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TESTS = Path(__file__).parent


def _spawn(module_or_script: list[str], tmp_path, extra_env: dict[str, str] | None = None):
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            # both ranks are on this host: gloo on the loopback interface, whatever the
            # hostname resolves to
            GLOO_SOCKET_IFNAME="lo",
            HF_HUB_OFFLINE="1",
            OMP_NUM_THREADS="1",
            **(extra_env or {}),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, *module_or_script],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]


@pytest.mark.slow
def test_group_straddling_two_processes_gets_the_single_process_update(tmp_path) -> None:
    from haepo_adapters.trl import save_char_level_model

    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import _trl_gloo_worker as worker

    model_dir = str(save_char_level_model(tmp_path / "m", worker.ALPHABET, seed=2))
    pythonpath = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    _spawn(
        ["-P", "-m", "_trl_gloo_worker", model_dir, str(tmp_path)],
        tmp_path,
        {"PYTHONPATH": pythonpath},
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(r["split"] for r in ranks)
    # Reference: the same 12 completions as one micro-batch on one process.
    torch.set_num_threads(1)
    ref = worker.run(model_dir, str(tmp_path / "single"), per_device=12, accum=1)
    assert not ref["split"]
    compared = 0
    for name, want in ref["update"].items():
        for r in ranks:
            torch.testing.assert_close(r["update"][name], want, rtol=1e-4, atol=1e-7, msg=name)
        compared += bool(want.abs().sum() > 0)
    assert compared > 0
    for key in ("loss", "haepo/policy_loss", "haepo/ess", "haepo/ess_min", "haepo/entropy"):
        for r in ranks:
            assert r["logs"][0][key] == pytest.approx(ref["logs"][0][key], rel=1e-4), key


@pytest.mark.slow
def test_two_gloo_processes_train_with_whole_groups_on_each(tmp_path) -> None:
    from haepo_adapters.trl import save_char_level_model

    model_dir = save_char_level_model(tmp_path / "m", "abcd>")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    _spawn([str(script), str(model_dir), str(tmp_path)], tmp_path)

    all_groups: dict[int, set[int]] = {}
    for rank in range(2):
        data = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert len(data["seen"]) == 4  # 2 optimizer steps x 2 accumulation micro-batches
        for mb in data["seen"]:
            ids, prompts = mb["groups"], mb["prompts"]
            assert len(ids) == G and len(set(ids)) == 1  # one whole group per micro-batch
            assert len(set(prompts)) == 1  # ... and it is one prompt's completions
            all_groups.setdefault(ids[0], set()).add(rank)
        assert len(data["logs"]) == 2
        for h in data["logs"]:
            assert 1.0 <= h["haepo/ess"] <= G + 1e-5
    # Group labels are global: no label (group) was seen by both processes.
    assert all(len(ranks) == 1 for ranks in all_groups.values())
