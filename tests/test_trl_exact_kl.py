"""``kl_estimator="exact"``: entropy and KL over the whole vocabulary from the last hidden
states and LM heads (``haepo_backends.torch.haepo_loss_from_hidden``), checked against the core
on materialized logits, for the initial model and the sampling policy as the reference.
"""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from haepo_adapters.trl import HAEPOConfig, HAEPOTrainer, save_char_level_model  # noqa: E402

from haepo_core import haepo_loss_from_logits  # noqa: E402

G = 4


def reward(completions: list[str], **_: object) -> list[float]:
    return [c.count("c") + 0.2 * len(c) for c in completions]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return str(
        save_char_level_model(tmp_path_factory.mktemp("tiny"), "abcd>", seed=3, hidden_size=16)
    )


def _trainer(model_dir, tmp_path, **kw) -> HAEPOTrainer:
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2 * G,
        num_generations=G,
        max_completion_length=6,
        max_steps=2,
        learning_rate=5e-2,
        logging_steps=1,
        report_to=[],
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        kl_estimator="exact",
        kl_coef=0.3,
        entropy_coef=0.05,
        haepo_temperature=0.9,
        temperature=0.8,  # sampling temperature: the log-probs are of logits / 0.8
    )
    base.update(kw)
    ds = Dataset.from_dict({"prompt": ["ab>", "cd>", "ac>", "bd>"] * 2})
    trainer = HAEPOTrainer(
        model=model_dir, reward_funcs=reward, args=HAEPOConfig(**base), train_dataset=ds
    )
    trainer.model.train()
    return trainer


def _logits(model, batch, n):
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    att = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    return model(input_ids=ids, attention_mask=att).logits[:, -n - 1 : -1]


def test_exact_kl_to_the_initial_model_matches_the_core_on_full_logits(model_dir, tmp_path):
    trainer = _trainer(model_dir, tmp_path, kl_reference="initial")
    assert trainer.ref_model is not None
    with torch.no_grad():  # move the policy away from the initial model: KL > 0
        gen = torch.Generator().manual_seed(0)
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    rows = [{"prompt": p} for p in ("ab>", "cd>") for _ in range(G)]
    batch = trainer._generate_and_score_completions(rows)
    assert "ref_per_token_logps" not in batch  # TRL's log-prob pass for the reference skipped
    assert batch["haepo_ref_hidden"].shape[:2] == batch["completion_ids"].shape
    trainer._prepare_window([batch], fresh=False)
    loss = trainer.compute_loss(trainer.model, batch)

    n = batch["completion_ids"].size(1)
    mask = batch["completion_mask"].bool()
    logits = _logits(trainer.model, batch, n) / 0.8
    with torch.no_grad():
        ref_logits = _logits(trainer.ref_model, batch, n) / 0.8
    core = haepo_loss_from_logits(
        logits,
        batch["completion_ids"].masked_fill(~mask, 0),
        batch["haepo_rewards"],
        mask,
        ref_logits=ref_logits,
        group_ids=batch["haepo_group_ids"],
        entropy_coef=0.05,
        kl_coef=0.3,
        temperature=0.9,
        length_normalize=True,
    )
    assert float(core.stats["kl"]) > 1e-4
    torch.testing.assert_close(loss, core.loss, rtol=1e-5, atol=1e-6)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad(core.loss, params, allow_unused=True)
    for a, b in zip(ours, want):
        if b is None:
            continue
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    metrics = trainer._metrics["train"]
    assert metrics["haepo/kl"][-1] == pytest.approx(float(core.stats["kl"]), rel=1e-4)


def test_exact_kl_to_the_sampling_policy_grows_when_a_batch_is_reused(model_dir, tmp_path):
    # num_iterations=2: the second pass runs on an updated policy; the reference is the policy
    # that sampled (its hidden states and a copy of its LM head, kept at generation).
    trainer = _trainer(model_dir, tmp_path, kl_reference="previous", num_iterations=2)
    trainer.train()
    kls = [h["haepo/kl"] for h in trainer.state.log_history if "haepo/kl" in h]
    assert len(kls) == 2
    assert abs(kls[0]) < 1e-6 and kls[1] > 1e-6


def test_exact_kl_on_policy_previous_is_skipped_and_not_logged(model_dir, tmp_path):
    with pytest.warns(UserWarning, match="identically 0"):
        trainer = _trainer(model_dir, tmp_path, kl_reference="previous", max_steps=1)
    trainer.train()
    (h,) = [h for h in trainer.state.log_history if "haepo/ess" in h]
    assert "haepo/kl" not in h and h["haepo/entropy"] > 0


def test_exact_kl_refuses_a_model_whose_logits_are_not_a_plain_linear_head(tmp_path):
    import json

    folder = save_char_level_model(tmp_path / "capped", "abcd>", seed=0)
    config = json.loads((folder / "config.json").read_text())
    config["final_logit_softcapping"] = 30.0  # logits = 30 tanh(h W^T / 30): not linear
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"kl_estimator: 'exact' needs logits = hidden @ W\.T"):
        _trainer(str(folder), tmp_path / "out", kl_reference="initial")
