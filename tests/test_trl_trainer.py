"""HAEPOTrainer on a tiny offline Llama (character-level tokenizer, saved to a tmp folder).

No hub access: HF_HUB_OFFLINE=1 is set before transformers is imported, and the model and
tokenizer are built locally and passed by path.
"""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from haepo_adapters.trl import (  # noqa: E402
    HAEPOConfig,
    HAEPOTrainer,
    check_trl_version,
    save_char_level_model,
)
from transformers import AutoTokenizer  # noqa: E402
from trl import GRPOConfig  # noqa: E402

from haepo_core import haepo_loss  # noqa: E402

G = 4
PROMPTS = ["ab>", "cd>", "ac>", "bd>", "da>", "bc>"]
HAEPO_KEYS = (
    "haepo/policy_loss",
    "haepo/ess",
    "haepo/ess_min",
    "haepo/ess_fraction",
    "haepo/max_weight",
    "haepo/entropy",
    "haepo/weighted_return",
)


def reward_a(completions: list[str], **_: object) -> list[float]:
    return [c.count("a") + 0.25 * len(c) for c in completions]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return str(save_char_level_model(tmp_path_factory.mktemp("tiny"), "abcd>", seed=0))


@pytest.fixture(scope="module")
def dataset():
    return Dataset.from_dict({"prompt": PROMPTS * 4})


def _config(tmp_path, **kw) -> HAEPOConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=G,
        num_generations=G,
        max_completion_length=6,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    base.update(kw)
    return HAEPOConfig(**base)


def _trainer(model_dir, dataset, tmp_path, reward=reward_a, **kw) -> HAEPOTrainer:
    trainer = HAEPOTrainer(
        model=model_dir, reward_funcs=reward, args=_config(tmp_path, **kw), train_dataset=dataset
    )
    trainer.model.train()
    return trainer


def _rows(dataset, n_prompts: int) -> list[dict]:
    return [dataset[i] for i in range(n_prompts) for _ in range(G)]


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_trains_offline_for_two_steps_with_accumulation_and_logs_haepo_metrics(
    model_dir, dataset, tmp_path
) -> None:
    trainer = _trainer(
        model_dir, dataset, tmp_path, gradient_accumulation_steps=2, entropy_coef=0.01
    )
    before = _params(trainer.model)
    trainer.train()
    steps = [h for h in trainer.state.log_history if "haepo/ess" in h]
    assert len(steps) == 2
    for h in steps:
        for k in HAEPO_KEYS:
            assert k in h and torch.isfinite(torch.tensor(h[k])), k
        assert 1.0 - 1e-5 <= h["haepo/ess_min"] <= h["haepo/ess"] <= G + 1e-5
        assert 1.0 / G - 1e-6 <= h["haepo/max_weight"] <= 1.0
        assert h["haepo/entropy"] > 0 and h["entropy"] == h["haepo/entropy"]
        assert "clip_ratio/region_mean" not in h  # GRPO's loss did not run
        assert "haepo/kl" not in h and "kl" not in h  # no KL computed, none logged
    after = _params(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_loss_and_gradient_match_the_core_on_captured_step_tensors(
    model_dir, dataset, tmp_path
) -> None:
    trainer = _trainer(
        model_dir,
        dataset,
        tmp_path,
        per_device_train_batch_size=2 * G,
        entropy_coef=0.05,
        kl_coef=0.1,
        haepo_temperature=0.7,
    )
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._generate_and_score_completions(_rows(dataset, 2))
    b, t = inputs["completion_ids"].shape
    gen = torch.Generator().manual_seed(1)
    inputs["old_per_token_logps"] = -3 * torch.rand(b, t, generator=gen)  # the KL reference
    trainer._prepare_window([inputs], fresh=False)  # the step is this one micro-batch

    # Rewards are the raw reward-function outputs, not GRPO's advantages.
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = tok.batch_decode(inputs["completion_ids"], skip_special_tokens=True)
    rewards = torch.tensor(reward_a(texts))
    torch.testing.assert_close(inputs["haepo_rewards"], rewards)
    assert not torch.allclose(inputs["advantages"], rewards)

    captured = {}
    original = trainer._get_per_token_logps_and_entropies

    def capture(*args, **kwargs):
        logps, ents, aux = original(*args, **kwargs)
        captured.update(logps=logps, ents=ents)
        return logps, ents, aux

    trainer._get_per_token_logps_and_entropies = capture
    loss = trainer.compute_loss(trainer.model, inputs)
    logps, ents = captured["logps"], captured["ents"]
    core = haepo_loss(
        logps,
        rewards,
        inputs["completion_mask"].bool(),
        group_ids=torch.arange(b) // G,
        entropy=ents,
        ref_logp=inputs["old_per_token_logps"],
        entropy_coef=0.05,
        kl_coef=0.1,
        temperature=0.7,
        length_normalize=True,
    )
    torch.testing.assert_close(loss, core.loss)
    ours = torch.autograd.grad(loss, (logps, ents), retain_graph=True)
    theirs = torch.autograd.grad(core.loss, (logps, ents), retain_graph=True)
    for a, c in zip(ours, theirs):
        torch.testing.assert_close(a, c)
    assert ours[0].abs().sum() > 0 and ours[1].abs().sum() > 0
    # ... and so the same gradient on the model's parameters.
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    g_ours = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    g_core = torch.autograd.grad(core.loss, params, allow_unused=True)
    for a, c in zip(g_ours, g_core):
        if a is None or c is None:
            assert a is None and c is None
        else:
            torch.testing.assert_close(a, c)


def test_two_accumulation_steps_give_the_gradient_of_one_big_step(
    model_dir, dataset, tmp_path
) -> None:
    reg = dict(entropy_coef=0.05, kl_coef=0.2)
    small = _trainer(
        model_dir, dataset, tmp_path / "a", gradient_accumulation_steps=2, max_steps=1, **reg
    )
    big = _trainer(
        model_dir, dataset, tmp_path / "b", per_device_train_batch_size=2 * G, max_steps=1, **reg
    )
    batch = small._generate_and_score_completions(_rows(dataset, 2))
    b, t = batch["completion_ids"].shape
    batch["old_per_token_logps"] = -3 * torch.rand(b, t, generator=torch.Generator().manual_seed(2))
    micro = small._split_generation_batch(batch)
    assert len(micro) == 2
    tokens = [int(mb["completion_mask"].sum()) for mb in micro]
    assert tokens[0] != tokens[1], "unequal token counts make the token-mean check meaningful"

    small.current_gradient_accumulation_steps = 2
    small._prepare_window(micro, fresh=False)
    for mb in micro:
        small.compute_loss(small.model, mb).backward()
    big.current_gradient_accumulation_steps = 1
    big._prepare_window([batch], fresh=False)
    big.compute_loss(big.model, batch).backward()

    compared = 0
    for (name, p), (_, q) in zip(small.model.named_parameters(), big.model.named_parameters()):
        if p.grad is None:
            assert q.grad is None
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
        compared += p.grad.abs().sum() > 0
    assert compared > 0


def test_micro_batches_hold_whole_groups_and_a_split_group_is_refused(
    model_dir, dataset, tmp_path
) -> None:
    trainer = _trainer(model_dir, dataset, tmp_path, gradient_accumulation_steps=3)
    assert trainer.args.steps_per_generation == 3
    rows = _rows(dataset, 3)
    seen = []
    for step in range(3):
        trainer._step = step
        mb = trainer._prepare_inputs(rows)
        ids = mb["haepo_group_ids"]
        assert torch.all(ids == ids[0]) and ids.numel() == G
        seen.append(int(ids[0]))
    assert sorted(seen) == [0, 1, 2]

    # A micro-batch holding half of two groups (TRL's row shuffle can make one) is refused.
    batch = trainer._generate_and_score_completions(_rows(dataset, 2))
    half = {k: (v[2:6] if torch.is_tensor(v) and v.ndim else v) for k, v in batch.items()}
    trainer.current_gradient_accumulation_steps = 1
    trainer._prepare_window([half], fresh=False)
    with pytest.raises(RuntimeError, match="does not hold whole groups"):
        trainer.compute_loss(trainer.model, half)


def test_kl_reference_initial_penalizes_drift_from_the_initial_model(
    model_dir, dataset, tmp_path
) -> None:
    trainer = _trainer(
        model_dir, dataset, tmp_path, kl_coef=0.5, kl_reference="initial", max_steps=3
    )
    assert trainer.args.beta == 0.5 and trainer.ref_model is not None
    trainer.train()
    kls = [h["haepo/kl"] for h in trainer.state.log_history if "haepo/kl" in h]
    assert len(kls) == 3
    assert abs(kls[0]) < 1e-5  # first step: the policy is the initial model
    assert kls[-1] > 1e-4  # after updates it has drifted, and the KL sees it


def test_unscorable_completions_get_their_group_mean_reward(model_dir, dataset, tmp_path) -> None:
    def sometimes_none(completions, **_):
        return [None if i % G == 0 else float(i) for i in range(len(completions))]

    trainer = _trainer(model_dir, dataset, tmp_path, reward=sometimes_none)
    out = trainer._generate_and_score_completions(_rows(dataset, 2))
    r = out["haepo_rewards"].view(-1, G)
    torch.testing.assert_close(r[:, 0], r[:, 1:].mean(dim=1))
    torch.testing.assert_close(out["haepo_group_ids"], torch.arange(2 * G) // G)


def test_check_trl_version_accepts_only_1_16() -> None:
    assert check_trl_version() == trl.__version__
    check_trl_version("1.16.0")
    check_trl_version("1.16.7")
    for bad in ("1.15.2", "1.17.0", "2.0.0", "0.19.1"):
        with pytest.raises(ImportError, match=r"supports TRL >=1.16.0,<1.17 \(1.16.x\)"):
            check_trl_version(bad)
    with pytest.raises(ImportError, match="PEP 440"):
        check_trl_version("not-a-version")
    with pytest.raises(TypeError, match="version"):
        check_trl_version(1.16)  # type: ignore[arg-type]


def test_unsupported_trl_can_be_forced_with_a_warning(monkeypatch) -> None:
    monkeypatch.setenv("HAEPO_TRL_ALLOW_UNSUPPORTED", "1")
    with pytest.warns(RuntimeWarning, match="supports TRL"):
        check_trl_version("1.17.0")


def test_trainer_refuses_an_unsupported_trl_at_construction(
    monkeypatch, model_dir, dataset, tmp_path
) -> None:
    args = _config(tmp_path)
    monkeypatch.setattr(trl, "__version__", "1.18.0")
    with pytest.raises(ImportError, match=r"found trl 1\.18\.0"):
        HAEPOTrainer(model=model_dir, reward_funcs=reward_a, args=args, train_dataset=dataset)


def test_trainer_requires_a_haepo_config(model_dir, dataset, tmp_path) -> None:
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[])
    with pytest.raises(TypeError, match="args: expected a HAEPOConfig"):
        HAEPOTrainer(model=model_dir, reward_funcs=reward_a, args=args, train_dataset=dataset)


def test_eval_batches_must_hold_whole_groups(model_dir, dataset, tmp_path) -> None:
    args = _config(tmp_path, per_device_eval_batch_size=6, num_generations_eval=4)
    with pytest.raises(ValueError, match="per_device_eval_batch_size: HAEPO evaluates"):
        HAEPOTrainer(
            model=model_dir,
            reward_funcs=reward_a,
            args=args,
            train_dataset=dataset,
            eval_dataset=dataset,
        )


@pytest.mark.parametrize(
    ("field", "value", "exc", "match"),
    [
        ("haepo_temperature", 0.0, ValueError, "haepo_temperature: expected a finite number > 0"),
        ("haepo_temperature", float("inf"), ValueError, "haepo_temperature"),
        ("length_normalize", 1, TypeError, "length_normalize: expected a bool"),
        ("normalize_returns", "batch", ValueError, "normalize_returns: expected one of"),
        ("normalize_eps", 0.0, ValueError, "normalize_eps"),
        ("kl_coef", -0.1, ValueError, "kl_coef: expected a finite number >= 0"),
        ("kl_reference", "ref", ValueError, "kl_reference: expected one of 'previous'"),
        ("kl_estimator", "k4", ValueError, "kl_estimator"),
        ("entropy_coef", -1.0, ValueError, "entropy_coef"),
        ("beta", 0.04, ValueError, "beta: expected 0.0"),
        ("use_adaptive_entropy", True, ValueError, "use_adaptive_entropy"),
        ("top_entropy_quantile", 0.2, ValueError, "top_entropy_quantile"),
        ("off_policy_mask_threshold", 0.5, ValueError, "off_policy_mask_threshold"),
        ("num_generations", 0, ValueError, "num_generations: expected an int >= 2"),
        ("num_generations", 1, ValueError, "num_generations: expected an int >= 2"),
        ("normalize_eps", float("inf"), ValueError, "normalize_eps: expected a finite number"),
        ("normalize_eps", float("nan"), ValueError, "normalize_eps: expected a finite number"),
        ("normalize_eps", -1e-3, ValueError, "normalize_eps: expected a finite number > 0"),
    ],
)
def test_config_rejects_bad_fields_with_a_clear_error(tmp_path, field, value, exc, match) -> None:
    with pytest.raises(exc, match=match):
        _config(tmp_path, **{field: value})


def test_config_defaults_and_initial_reference_sets_beta(tmp_path) -> None:
    cfg = _config(tmp_path)
    assert cfg.length_normalize is True and cfg.haepo_temperature == 1.0
    assert cfg.kl_reference == "previous" and cfg.beta == 0.0
    cfg = _config(tmp_path, kl_coef=0.3, kl_reference="initial")
    assert cfg.beta == 0.3
    with pytest.raises(ValueError, match="beta: HAEPO takes its KL coefficient from kl_coef"):
        _config(tmp_path, kl_coef=0.3, kl_reference="initial", beta=0.1)


def test_kl_to_previous_policy_is_zero_while_on_policy(model_dir, dataset, tmp_path) -> None:
    # num_iterations=1, steps_per_generation == accumulation: the sampling policy is the
    # current one, TRL stores no old_per_token_logps, and the KL term changes nothing.
    with_kl = _trainer(model_dir, dataset, tmp_path / "kl", kl_coef=0.5)
    without = _trainer(model_dir, dataset, tmp_path / "nokl")
    inputs = with_kl._generate_and_score_completions(_rows(dataset, 1))
    assert "old_per_token_logps" not in inputs
    losses, grads = [], []
    for trainer in (with_kl, without):
        trainer.current_gradient_accumulation_steps = 1
        trainer._prepare_window([inputs], fresh=False)
        loss = trainer.compute_loss(trainer.model, inputs)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(trainer.model.parameters())[:3]))
    torch.testing.assert_close(losses[0], losses[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    # Nothing was measured, so nothing is logged (not a fake 0).
    assert "haepo/kl" not in with_kl._metrics["train"]
    assert with_kl._metrics["train"]["haepo/entropy"]


def test_kl_to_previous_policy_acts_when_a_batch_is_reused(model_dir, dataset, tmp_path) -> None:
    # num_iterations=2: the second pass over a generation batch runs on an updated policy, and
    # the KL to the sampling policy (TRL's old_per_token_logps) becomes positive.
    trainer = _trainer(model_dir, dataset, tmp_path, kl_coef=0.5, num_iterations=2)
    trainer.train()
    kls = [h["haepo/kl"] for h in trainer.state.log_history if "haepo/kl" in h]
    assert len(kls) == 2
    assert abs(kls[0]) < 1e-6 and kls[1] > 1e-5
