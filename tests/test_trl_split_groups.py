"""Groups larger than a micro-batch: the split-group gradient equals the whole-group gradient.

Unit level (float64, 1e-10 relative): the per-micro-batch losses ``sum_k c_k L_k`` plus token
means over the step's token count, accumulated over shuffled micro-batches, give the gradient
of ``haepo_core.haepo_loss`` on the whole batch. End to end: ``per_device_train_batch_size=4,
gradient_accumulation_steps=4, num_generations=8`` makes the same SGD update as one micro-batch
of 16 on the same completions.
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
from haepo_adapters.trl._split import (  # noqa: E402
    completion_log_likelihood,
    split_micro_batch_loss,
    window_coefficients,
)

from haepo_core import haepo_loss  # noqa: E402

M, T, G = 16, 7, 8


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64
    mask = torch.rand(M, T, generator=gen) > 0.35
    mask[:, 0] = True
    mask[5] = False  # a completion without a scored token (mask_truncated_completions)
    logp = -2 * torch.rand(M, T, generator=gen, dtype=dt)
    logp[~mask] = float("nan")  # padding never leaks
    return {
        "logp": logp,
        "entropy": torch.rand(M, T, generator=gen, dtype=dt),
        "ref": -2 * torch.rand(M, T, generator=gen, dtype=dt),
        "rewards": torch.randn(M, generator=gen, dtype=dt),
        "groups": torch.arange(M) // G,
        "mask": mask,
    }


@pytest.mark.parametrize("length_normalize", [True, False])
@pytest.mark.parametrize("estimator", ["k3", "k2"])
def test_split_micro_batches_accumulate_the_whole_group_gradient_float64(
    length_normalize, estimator
) -> None:
    d = _problem()
    kw = dict(
        temperature=0.7, normalize_returns="zscore", eps=1e-8, length_normalize=length_normalize
    )
    coefs = dict(entropy_coef=0.05, kl_coef=0.2)
    keep = d["mask"].any(dim=1)
    clean = torch.where(d["mask"], d["logp"], torch.zeros(()))

    # Reference: the whole-group loss over the rows that have a scored token.
    lp = clean[keep].clone().requires_grad_()
    ent = d["entropy"][keep].clone().requires_grad_()
    whole = haepo_loss(
        lp,
        d["rewards"][keep],
        d["mask"][keep],
        group_ids=d["groups"][keep],
        entropy=ent,
        ref_logp=d["ref"][keep],
        kl_estimator=estimator,
        **coefs,
        **kw,
    )
    whole.loss.backward()
    want_lp = torch.zeros(M, T, dtype=torch.float64).index_copy(0, keep.nonzero()[:, 0], lp.grad)
    want_ent = torch.zeros(M, T, dtype=torch.float64).index_copy(0, keep.nonzero()[:, 0], ent.grad)

    # Split: L_k of every row first (no grad), c_k = dJ/dL_k, then 4 micro-batches of 4
    # shuffled rows (each group spread over all of them).
    lk = completion_log_likelihood(d["logp"], d["mask"], length_normalize)
    coef, out = window_coefficients(
        lk,
        d["rewards"],
        d["groups"],
        keep,
        normalize_returns="zscore",
        temperature=0.7,
        eps=1e-8,
    )
    torch.testing.assert_close(out.stats["policy_loss"], whole.stats["policy_loss"])
    assert float(coef[5]) == 0.0
    logp = d["logp"].clone().requires_grad_()
    entropy = d["entropy"].clone().requires_grad_()
    n_tokens = float(d["mask"].sum())
    perm = torch.randperm(M, generator=torch.Generator().manual_seed(3))
    for rows in perm.view(4, 4):
        split_micro_batch_loss(
            logp[rows],
            d["mask"][rows],
            coef[rows],
            length_normalize=length_normalize,
            num_tokens=n_tokens,
            entropies=entropy[rows],
            ref_per_token_logps=d["ref"][rows],
            kl_estimator=estimator,
            **coefs,
        ).backward()
    got_lp = torch.where(d["mask"], logp.grad, torch.zeros(()))
    assert torch.isfinite(logp.grad).all()
    for got, want in ((got_lp, want_lp), (entropy.grad, want_ent)):
        err = (got - want).abs().max() / want.abs().max()
        assert err < 1e-10, float(err)
    assert want_lp.abs().max() > 0


def test_micro_batches_span_groups_in_the_unit_problem() -> None:
    # The shuffle above really splits groups: each group has rows in several micro-batches.
    perm = torch.randperm(M, generator=torch.Generator().manual_seed(3))
    groups = (torch.arange(M) // G)[perm].view(4, 4)
    assert all(groups[i].unique().numel() == 2 for i in range(4))


# -- end to end ---------------------------------------------------------------------------


def reward_len(completions: list[str], **_: object) -> list[float]:
    return [c.count("a") - 0.5 * c.count("b") + 0.1 * len(c) for c in completions]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return str(save_char_level_model(tmp_path_factory.mktemp("tiny"), "abcd>", seed=1))


def _run(model_dir, tmp_path, train=True, **kw):
    seen: list[torch.Tensor] = []

    class Spy(HAEPOTrainer):
        def _generate_and_score_completions(self, inputs):  # type: ignore[no-untyped-def]
            out = super()._generate_and_score_completions(inputs)
            seen.append(out["completion_ids"].clone())
            return out

    kw = {"max_steps": 1, **kw}
    args = HAEPOConfig(
        output_dir=str(tmp_path),
        num_generations=G,
        max_completion_length=6,
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
        kl_coef=0.1,
        kl_reference="initial",
        haepo_temperature=0.8,
        **kw,
    )
    ds = Dataset.from_dict({"prompt": ["ab>", "cd>", "ac>", "bd>"] * 2})
    trainer = Spy(model=model_dir, reward_funcs=reward_len, args=args, train_dataset=ds)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    if not train:
        trainer.model.train()
        return trainer, seen, None, None
    trainer.train()
    update = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}
    logs = [h for h in trainer.state.log_history if "haepo/ess" in h]
    return trainer, seen, update, logs


@pytest.mark.parametrize(
    ("kl_estimator", "iterations"),
    # iterations=2: the first step takes L_k from TRL's old_per_token_logps (computed at
    # generation by the same policy), the second re-computes them after the update.
    [("k3", 1), ("exact", 1), ("k3", 2)],
)
def test_split_group_step_equals_one_whole_micro_batch_sgd_update(
    model_dir, tmp_path, kl_estimator, iterations
) -> None:
    kw = dict(kl_estimator=kl_estimator, num_iterations=iterations, max_steps=iterations)
    split, seen_s, upd_s, logs_s = _run(
        model_dir,
        tmp_path / "split",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        **kw,
    )
    whole, seen_w, upd_w, logs_w = _run(
        model_dir,
        tmp_path / "whole",
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        **kw,
    )
    assert split._haepo_split and not whole._haepo_split
    # Identical completions: one generation batch of 16 (2 prompts x 8) in both runs.
    assert len(seen_s) == len(seen_w) == 1
    torch.testing.assert_close(seen_s[0], seen_w[0], rtol=0, atol=0)
    compared = 0
    for name, u in upd_w.items():
        torch.testing.assert_close(upd_s[name], u, rtol=1e-4, atol=1e-7, msg=name)
        compared += bool(u.abs().sum() > 0)
    assert compared > 0
    # Same whole-step diagnostics and logged loss, step by step.
    assert len(logs_s) == len(logs_w) == iterations
    for hs, hw in zip(logs_s, logs_w):
        for key in ("loss", "haepo/policy_loss", "haepo/ess", "haepo/ess_min", "haepo/entropy"):
            assert hs[key] == pytest.approx(hw[key], rel=1e-4, abs=1e-6), key
        assert hs["haepo/kl"] == pytest.approx(hw["haepo/kl"], rel=1e-3, abs=1e-7)


def test_step_preparation_reuses_old_log_probs_and_skips_for_whole_groups(model_dir, tmp_path):
    # The split-group cost: one no-grad forward per micro-batch of the step, unless TRL's
    # old_per_token_logps were computed by the same policy at this step's generation; none at
    # all when micro-batches hold whole groups.
    def count_forwards(trainer, micro, fresh):
        calls = []
        original = trainer._get_per_token_logps_and_entropies

        def spy(*args, **kwargs):
            calls.append(torch.is_grad_enabled())
            return original(*args, **kwargs)

        trainer._get_per_token_logps_and_entropies = spy
        trainer._prepare_window(micro, fresh=fresh)
        trainer._get_per_token_logps_and_entropies = original
        assert not any(calls)  # every preparation forward runs without gradient
        return len(calls)

    rows = [{"prompt": p} for p in ("ab>", "cd>") for _ in range(G)]
    kw = dict(per_device_train_batch_size=4, gradient_accumulation_steps=4, num_iterations=2)
    split, _, _, _ = _run(model_dir, tmp_path / "s", train=False, **kw)
    batch = split._generate_and_score_completions(rows)
    assert "old_per_token_logps" in batch  # num_iterations=2: TRL computes them
    micro = split._split_generation_batch(batch)
    assert count_forwards(split, micro, fresh=True) == 0
    fresh_coef = torch.cat([mb["haepo_coef"] for mb in micro])
    assert count_forwards(split, micro, fresh=False) == 4
    # Same policy: the forward's L_k give the same coefficients as TRL's log-probs.
    torch.testing.assert_close(torch.cat([mb["haepo_coef"] for mb in micro]), fresh_coef)
    whole, _, _, _ = _run(model_dir, tmp_path / "w", max_steps=0, per_device_train_batch_size=16)
    batch = whole._generate_and_score_completions(rows)
    assert count_forwards(whole, whole._split_generation_batch(batch), fresh=False) == 0
