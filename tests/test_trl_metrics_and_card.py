"""Honest diagnostics: whole-step ``haepo/ess_min``, HAEPO columns in the completions table, and
a model card that names HAEPO and cites its paper."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from haepo_adapters.trl import HAEPOConfig, HAEPOTrainer, save_char_level_model  # noqa: E402

from haepo_core import normalize_returns  # noqa: E402

G = 4


def reward(completions: list[str], **_: object) -> list[float]:
    return [c.count("b") + 0.3 * len(c) for c in completions]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return str(
        save_char_level_model(
            tmp_path_factory.mktemp("tiny"), "abcd>", seed=4, initializer_range=0.3
        )
    )


def _trainer(model_dir, tmp_path, **kw) -> HAEPOTrainer:
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=G,
        num_generations=G,
        gradient_accumulation_steps=2,
        max_completion_length=6,
        max_steps=1,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        length_normalize=False,  # spread the weights: ESS differs between groups
    )
    base.update(kw)
    ds = Dataset.from_dict({"prompt": ["ab>", "cd>", "ac>", "bd>"] * 2})
    return HAEPOTrainer(
        model=model_dir, reward_funcs=reward, args=HAEPOConfig(**base), train_dataset=ds
    )


def test_ess_min_is_the_minimum_over_every_micro_batch_of_the_step(model_dir, tmp_path):
    trainer = _trainer(model_dir, tmp_path)
    seen = []
    original = trainer._whole_group_loss

    def spy(*args, **kwargs):
        loss, stats = original(*args, **kwargs)
        seen.append((float(stats["ess_min"]), float(stats["ess"])))
        return loss, stats

    trainer._whole_group_loss = spy
    trainer.train()
    (h,) = [h for h in trainer.state.log_history if "haepo/ess" in h]
    assert len(seen) == 2  # two micro-batches, one group each
    assert seen[0][0] != pytest.approx(seen[1][0], rel=1e-3), "groups need different ESS"
    assert h["haepo/ess_min"] == pytest.approx(min(s[0] for s in seen), rel=1e-6)
    assert h["haepo/ess"] == pytest.approx(sum(s[1] for s in seen) / 2, rel=1e-6)


def test_log_takes_the_minimum_of_ess_min_over_the_logging_interval(model_dir, tmp_path):
    trainer = _trainer(model_dir, tmp_path)
    trainer.model.train()
    trainer._metrics["train"]["haepo/ess_min"] = [3.0, 1.5, 2.0]
    trainer._metrics["train"]["haepo/ess"] = [3.0, 2.0, 2.5]
    trainer.log({})
    last = trainer.state.log_history[-1]
    assert last["haepo/ess_min"] == 1.5 and last["haepo/ess"] == 2.5


def test_completions_table_shows_haepo_weights_and_normalized_returns(model_dir, tmp_path):
    pd = pytest.importorskip("pandas")
    trainer = _trainer(model_dir, tmp_path, log_completions=True)
    trainer.train()
    table = pd.read_parquet(tmp_path / "completions" / "completions_00001.parquet")
    assert len(table) == 2 * G
    rewards = torch.tensor(table["reward"].tolist(), dtype=torch.float64)
    groups = torch.arange(2 * G) // G
    want = normalize_returns(rewards, groups, method="zscore", eps=1e-8)
    torch.testing.assert_close(torch.tensor(table["advantage"].tolist(), dtype=torch.float64), want)
    w = torch.tensor(table["haepo_weight"].tolist(), dtype=torch.float64)
    assert torch.isfinite(w).all() and (w > 0).all()
    torch.testing.assert_close(w.view(-1, G).sum(dim=1), torch.ones(2, dtype=torch.float64))


def test_model_card_names_haepo_and_cites_its_paper(model_dir, tmp_path):
    trainer = _trainer(model_dir, tmp_path)
    trainer.create_model_card(model_name="tiny-haepo")
    card = (tmp_path / "README.md").read_text()
    assert "HAEPO" in card and "2508.18884" in card
    assert "History-Aggregated Exploratory Policy Optimization" in card
    assert "DeepSeekMath" not in card and "2402.03300" not in card
