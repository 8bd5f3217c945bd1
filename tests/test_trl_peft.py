"""HAEPOTrainer with a LoRA ``peft_config``: the KL reference is the base model with the adapter
disabled, only the LoRA weights train, the loss matches the core on full logits (exact KL and
``k3``), and the trained adapter saves, reloads and carries a HAEPO model card. Also: the
sampling policy as the exact-KL reference, split groups, a model passed already wrapped, and the
refusal of a PEFT-wrapped LM head.

Offline: a tiny character-level Llama saved to a tmp folder, HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch = pytest.importorskip("torch")
pytest.importorskip("trl")
peft = pytest.importorskip("peft")

from datasets import Dataset  # noqa: E402
from haepo_adapters.trl import HAEPOConfig, HAEPOTrainer, save_char_level_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from haepo_core import haepo_loss_from_logits  # noqa: E402

G = 4
SAMPLING_TEMPERATURE = 0.8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def reward(completions: list[str], **_: object) -> list[float]:
    return [c.count("c") + 0.2 * len(c) for c in completions]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return str(
        save_char_level_model(tmp_path_factory.mktemp("tiny"), "abcd>", seed=3, hidden_size=16)
    )


@pytest.fixture(scope="module")
def base(model_dir):
    """The untouched base model, loaded on its own: what the reference must be."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    return model


def _lora() -> peft.LoraConfig:
    return peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS)


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
        kl_reference="initial",
        kl_coef=0.3,
        entropy_coef=0.05,
        haepo_temperature=0.9,
        temperature=SAMPLING_TEMPERATURE,
    )
    base.update(kw)
    ds = Dataset.from_dict({"prompt": ["ab>", "cd>", "ac>", "bd>"] * 2})
    trainer = HAEPOTrainer(
        model=model_dir,
        reward_funcs=reward,
        args=HAEPOConfig(**base),
        train_dataset=ds,
        peft_config=_lora(),
    )
    trainer.model.train()
    return trainer


def _move_lora(model, scale: float = 0.3) -> None:
    """Push every LoRA weight away from its initialization (lora_B starts at 0: the adapted
    model equals the base until B moves)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(scale * torch.randn(p.shape, generator=gen))


def _ids(batch):
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    att = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    return ids, att, batch["completion_ids"].size(1)


def _logits(model, batch):
    ids, att, n = _ids(batch)
    return model(input_ids=ids, attention_mask=att).logits[:, -n - 1 : -1] / SAMPLING_TEMPERATURE


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_peft_exact_kl_reference_is_the_adapter_disabled_base_and_matches_the_core(
    model_dir, base, tmp_path
):
    trainer = _trainer(model_dir, tmp_path)
    assert isinstance(trainer.model, peft.PeftModel)
    assert trainer.ref_model is None  # the reference is the base under the adapter
    _move_lora(trainer.model)
    rows = [{"prompt": p} for p in ("ab>", "cd>") for _ in range(G)]
    batch = trainer._generate_and_score_completions(rows)
    assert "ref_per_token_logps" not in batch  # TRL's reference log-prob pass skipped

    # (a) The reference hidden states and LM head are the separately loaded base model's.
    ids, att, n = _ids(batch)
    with torch.no_grad():
        want = base.model(input_ids=ids, attention_mask=att).last_hidden_state[:, -n - 1 : -1]
        adapted = trainer.model(input_ids=ids, attention_mask=att, haepo_hidden=True)
    want = want / SAMPLING_TEMPERATURE
    torch.testing.assert_close(batch["haepo_ref_hidden"], want, rtol=1e-5, atol=1e-6)
    # ... which the adapted policy (run after the reference pass: the adapter is active again)
    # is not, so the comparison above tells them apart.
    assert (adapted[:, -n - 1 : -1] / SAMPLING_TEMPERATURE - want).abs().max() > 1e-2
    ref_w, ref_b = trainer._haepo_ref_head
    torch.testing.assert_close(ref_w, base.lm_head.weight)
    assert ref_b is None

    # (c) Loss, KL and LoRA gradients equal the core's on full logits of the adapted policy and
    # the base model, on the same completions.
    trainer._prepare_window([batch], fresh=False)
    loss = trainer.compute_loss(trainer.model, batch)
    mask = batch["completion_mask"].bool()
    logits = _logits(trainer.model, batch)
    with torch.no_grad():
        ref_logits = _logits(base, batch)
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
    assert float(core.stats["kl"]) > 1e-3
    torch.testing.assert_close(loss, core.loss, rtol=1e-5, atol=1e-6)
    assert trainer._metrics["train"]["haepo/kl"][-1] == pytest.approx(
        float(core.stats["kl"]), rel=1e-4
    )
    names, params = zip(*[(k, p) for k, p in trainer.model.named_parameters() if p.requires_grad])
    assert names and all("lora_" in k for k in names)
    ours = torch.autograd.grad(loss, params)
    want_grads = torch.autograd.grad(core.loss, params)
    for name, a, b in zip(names, ours, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert sum(float(a.abs().sum()) for a in ours) > 0


def test_peft_exact_kl_trains_only_lora_weights_from_zero_kl_and_saves_a_haepo_adapter(
    model_dir, base, tmp_path
):
    out = tmp_path / "run"
    trainer = _trainer(model_dir, out, save_strategy="steps", save_steps=2)
    before = _params(trainer.model)
    trainer.train()

    # (a) lora_B starts at 0, so the policy is the base at step 0: KL 0; then it moves.
    kls = [h["haepo/kl"] for h in trainer.state.log_history if "haepo/kl" in h]
    assert len(kls) == 2
    assert abs(kls[0]) < 1e-6 and kls[1] > 1e-5

    # (b) Only LoRA weights change; every base weight is bit-identical to the saved base.
    after = _params(trainer.model)
    lora = [k for k in before if "lora_" in k]
    frozen = [k for k in before if "lora_" not in k]
    assert lora and frozen
    assert all(not torch.equal(before[k], after[k]) for k in lora)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    base_state = base.state_dict()
    for k in frozen:
        key = k.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert torch.equal(after[k], base_state[key]), k

    # (d) The checkpoint is an adapter (not a merged model) that reloads to the same policy,
    # and the model card names HAEPO and cites its paper.
    ckpt = out / "checkpoint-2"
    assert (ckpt / "adapter_config.json").is_file()
    assert (ckpt / "adapter_model.safetensors").is_file()
    assert not (ckpt / "model.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "HAEPO" in card and "2508.18884" in card
    final = out / "final"
    trainer.save_model(str(final))
    fresh = AutoModelForCausalLM.from_pretrained(model_dir)
    loaded = peft.PeftModel.from_pretrained(fresh, str(final))
    loaded.eval()
    trainer.model.eval()
    ids = torch.tensor([[2, 3, 4, 7, 5, 6, 3]])
    att = torch.ones_like(ids)
    with torch.no_grad():
        got = loaded(input_ids=ids, attention_mask=att).logits
        want = trainer.model(input_ids=ids, attention_mask=att).logits
        with loaded.disable_adapter():
            plain = loaded(input_ids=ids, attention_mask=att).logits
        base_logits = base(input_ids=ids, attention_mask=att).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain, base_logits, rtol=1e-5, atol=1e-6)
    assert (got - base_logits).abs().max() > 1e-4
    from_ckpt = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), str(ckpt)
    )
    with torch.no_grad():
        torch.testing.assert_close(
            from_ckpt(input_ids=ids, attention_mask=att).logits, want, rtol=1e-5, atol=1e-6
        )


def test_peft_k3_reference_logps_are_the_base_models_and_one_step_trains_lora(
    model_dir, base, tmp_path
):
    trainer = _trainer(model_dir, tmp_path, kl_estimator="k3", max_steps=1)
    _move_lora(trainer.model)
    rows = [{"prompt": p} for p in ("ac>", "bd>") for _ in range(G)]
    batch = trainer._generate_and_score_completions(rows)
    assert "haepo_ref_hidden" not in batch
    mask = batch["completion_mask"].bool()
    actions = batch["completion_ids"].masked_fill(~mask, 0)
    with torch.no_grad():
        ref_logp = torch.log_softmax(_logits(base, batch), dim=-1)
    ref_logp = ref_logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(
        batch["ref_per_token_logps"][mask], ref_logp[mask], rtol=1e-5, atol=1e-5
    )

    trainer._prepare_window([batch], fresh=False)
    loss = trainer.compute_loss(trainer.model, batch)
    core = haepo_loss_from_logits(
        _logits(trainer.model, batch),
        actions,
        batch["haepo_rewards"],
        mask,
        ref_logp=ref_logp,
        group_ids=batch["haepo_group_ids"],
        entropy_coef=0.05,
        kl_coef=0.3,
        kl_estimator="k3",
        temperature=0.9,
        length_normalize=True,
    )
    assert float(core.stats["kl"]) > 1e-3
    torch.testing.assert_close(loss, core.loss, rtol=1e-5, atol=1e-5)

    before = _params(trainer.model)
    trainer.train()
    (h,) = [h for h in trainer.state.log_history if "haepo/kl" in h]
    assert h["haepo/kl"] > 1e-3  # the moved adapter against the base
    after = _params(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_" in k)
    assert all(torch.equal(before[k], after[k]) for k in before if "lora_" not in k)


def test_peft_model_passed_wrapped_keeps_its_initial_adapter_as_the_exact_kl_reference(
    model_dir, base, tmp_path
):
    # A PeftModel whose adapter is not the identity (as when re-training a trained adapter):
    # TRL freezes a copy of it as the "ref" adapter, and the initial model is base + that copy.
    wrapped = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,  # random A and B: the adapted model differs from the base
        ),
    )
    config = HAEPOConfig(
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
        kl_reference="initial",
        kl_coef=0.3,
        temperature=SAMPLING_TEMPERATURE,
    )
    ds = Dataset.from_dict({"prompt": ["ab>", "cd>", "ac>", "bd>"] * 2})
    trainer = HAEPOTrainer(model=wrapped, reward_funcs=reward, args=config, train_dataset=ds)
    trainer.model.train()
    assert set(trainer.model.peft_config) == {"default", "ref"}
    rows = [{"prompt": p} for p in ("ab>", "cd>") for _ in range(G)]
    batch = trainer._generate_and_score_completions(rows)
    ids, att, n = _ids(batch)
    with torch.no_grad():
        initial = trainer.model(input_ids=ids, attention_mask=att, haepo_hidden=True)
        plain = base.model(input_ids=ids, attention_mask=att).last_hidden_state
    initial = initial[:, -n - 1 : -1] / SAMPLING_TEMPERATURE
    plain = plain[:, -n - 1 : -1] / SAMPLING_TEMPERATURE
    torch.testing.assert_close(batch["haepo_ref_hidden"], initial, rtol=1e-5, atol=1e-6)
    assert (batch["haepo_ref_hidden"] - plain).abs().max() > 1e-2
    assert trainer.model.active_adapter == "default"

    before = _params(trainer.model)
    trainer.train()
    kls = [h["haepo/kl"] for h in trainer.state.log_history if "haepo/kl" in h]
    assert len(kls) == 2 and abs(kls[0]) < 1e-6 and kls[1] > 1e-5
    after = _params(trainer.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".default." in k for k in changed)
    assert all(not torch.equal(before[k], after[k]) for k in before if ".lora_B.default." in k)


@pytest.mark.parametrize(
    ("lora", "match"),
    [
        # TRL's own check: an adapter on lm_head would never be trained by the fused head.
        (dict(target_modules=["q_proj", "lm_head"]), "Applying a PEFT adapter to `lm_head`"),
        # A trained copy of lm_head: the exact KL reads a plain nn.Linear head only.
        (
            dict(target_modules=["q_proj"], modules_to_save=["lm_head"]),
            r"kl_estimator: 'exact' .* got ModulesToSaveWrapper .* modules_to_save",
        ),
    ],
)
def test_peft_exact_kl_refuses_a_peft_wrapped_lm_head(model_dir, tmp_path, lora, match):
    ds = Dataset.from_dict({"prompt": ["ab>", "cd>"]})
    config = HAEPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=G,
        num_generations=G,
        report_to=[],
        use_cpu=True,
        bf16=False,
        kl_estimator="exact",
        kl_coef=0.3,
    )
    with pytest.raises(ValueError, match=match):
        HAEPOTrainer(
            model=model_dir,
            reward_funcs=reward,
            args=config,
            train_dataset=ds,
            peft_config=peft.LoraConfig(r=4, **lora),
        )


def test_peft_exact_kl_to_the_sampling_policy_grows_when_a_batch_is_reused(model_dir, tmp_path):
    # num_iterations=2: the second pass sees an updated adapter; the reference is the adapted
    # policy that sampled (hidden states at generation, the frozen base LM head).
    trainer = _trainer(model_dir, tmp_path, kl_reference="previous", num_iterations=2)
    trainer.train()
    kls = [h["haepo/kl"] for h in trainer.state.log_history if "haepo/kl" in h]
    assert len(kls) == 2
    assert abs(kls[0]) < 1e-6 and kls[1] > 1e-5


def test_peft_exact_kl_split_groups_make_the_update_of_whole_groups(model_dir, tmp_path):
    # A group of 4 over micro-batches of 2 (split-group gradient) against whole groups in one
    # micro-batch of 8: the same completions (same seed) and, with SGD, the same LoRA update.
    # The adapter is moved first so that the KL term and its gradient are not zero.
    def run(folder, **kw):
        trainer = _trainer(model_dir, tmp_path / folder, optim="sgd", max_steps=1, **kw)
        _move_lora(trainer.model)
        before = _params(trainer.model)
        trainer.train()
        return trainer, before, _params(trainer.model)

    whole, w0, w1 = run("whole")
    split, s0, s1 = run("split", per_device_train_batch_size=2, gradient_accumulation_steps=4)
    assert split._haepo_split and not whole._haepo_split
    (hw,) = [h for h in whole.state.log_history if "haepo/kl" in h]
    (hs,) = [h for h in split.state.log_history if "haepo/kl" in h]
    assert hw["haepo/kl"] > 1e-3
    assert hs["haepo/kl"] == pytest.approx(hw["haepo/kl"], rel=1e-4)
    assert hs["loss"] == pytest.approx(hw["loss"], rel=1e-4, abs=1e-6)
    lora = [k for k in w0 if "lora_" in k]
    for k in lora:
        torch.testing.assert_close(s0[k], w0[k])
        torch.testing.assert_close(s1[k] - s0[k], w1[k] - w0[k], rtol=1e-4, atol=1e-7, msg=k)
    assert max(float((w1[k] - w0[k]).abs().max()) for k in lora) > 1e-4
