"""HAEPOConfig says no to every GRPOConfig setting it would otherwise ignore.

The refused fields are read from TRL 1.16's ``GRPOConfig`` itself: each field of
``GRPO_FIELDS_REPLACED`` must exist there with the default we compare against, and setting it
to anything else raises a ``ValueError`` that names it and says what HAEPO does instead.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
pytest.importorskip("torch")
pytest.importorskip("trl")

from haepo_adapters.trl import GRPO_FIELDS_REPLACED, HAEPOConfig
from trl import GRPOConfig

# A non-default value of each field, of the right type.
NON_DEFAULT = {
    "loss_type": "grpo",
    "epsilon": 0.3,
    "epsilon_high": 0.28,
    "delta": 1.5,
    "sapo_temperature_neg": 2.0,
    "sapo_temperature_pos": 2.0,
    "vespo_k_pos": 1.0,
    "vespo_lambda_pos": 1.0,
    "vespo_k_neg": 1.0,
    "vespo_lambda_neg": 1.0,
    "importance_sampling_level": "sequence",
    "scale_rewards": "batch",
    "multi_objective_aggregation": "normalize_then_sum",
    "top_entropy_quantile": 0.2,
    "use_adaptive_entropy": True,
    "entropy_coef_min": 0.01,
    "entropy_coef_max": 0.5,
    "entropy_coef_delta": 0.01,
    "entropy_target": 0.5,
    "off_policy_mask_threshold": 0.5,
    "vllm_importance_sampling_mode": "token_truncate",
    "vllm_importance_sampling_clip_max": 2.0,
    "vllm_importance_sampling_clip_min": 0.5,
    "vllm_importance_sampling_cap": 2.0,
    "use_bias_correction_kl": False,
}


def _cfg(tmp_path, **kw) -> HAEPOConfig:
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        report_to=[],
        use_cpu=True,
        bf16=False,
    )
    base.update(kw)
    return HAEPOConfig(**base)


def test_every_replaced_field_exists_in_grpo_config_with_that_default() -> None:
    fields = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    for name, (default, _) in GRPO_FIELDS_REPLACED.items():
        assert name in fields, name
        assert fields[name].default == default, name
    assert set(NON_DEFAULT) == set(GRPO_FIELDS_REPLACED)


def test_loss_only_grpo_fields_are_all_covered() -> None:
    # Fields documented in GRPOConfig as acting inside GRPO's loss or its IS corrections: a new
    # TRL field with one of these prefixes must be classified here, not silently ignored.
    prefixes = ("epsilon", "sapo_", "vespo_", "vllm_importance_sampling", "entropy_coef_")
    names = [f.name for f in dataclasses.fields(GRPOConfig) if f.name.startswith(prefixes)]
    missing = [
        n
        for n in names
        if n not in GRPO_FIELDS_REPLACED and n != "vllm_importance_sampling_correction"
    ]
    assert not missing, missing


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_non_default_grpo_field_is_refused_naming_it(tmp_path, name) -> None:
    instead = GRPO_FIELDS_REPLACED[name][1]
    with pytest.raises(ValueError, match=rf"^{name}: HAEPO does not use this GRPO setting") as e:
        _cfg(tmp_path, **{name: NON_DEFAULT[name]})
    assert instead in str(e.value)


def test_defaults_and_the_group_alias_are_accepted(tmp_path) -> None:
    cfg = _cfg(tmp_path, scale_rewards=True)
    assert cfg.loss_type == "dapo" and cfg.epsilon == 0.2


def test_vllm_importance_sampling_correction_is_refused_under_vllm(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"^vllm_importance_sampling_correction: HAEPO has no"):
        _cfg(tmp_path, use_vllm=True)


def test_layout_that_splits_a_group_across_optimizer_steps_is_refused(tmp_path) -> None:
    # 2 rows per micro-batch, 2 micro-batches per step: 4 rows per step, groups of 8.
    with pytest.raises(ValueError, match=r"^steps_per_generation: .* got steps_per_generation = 4"):
        _cfg(
            tmp_path,
            per_device_train_batch_size=2,
            num_generations=8,
            gradient_accumulation_steps=2,
            steps_per_generation=4,
        )
    # Groups spanning micro-batches inside one step are fine (the split-group gradient).
    _cfg(tmp_path, per_device_train_batch_size=2, num_generations=8, gradient_accumulation_steps=4)
    _cfg(
        tmp_path,
        per_device_train_batch_size=2,
        num_generations=4,
        gradient_accumulation_steps=2,
        steps_per_generation=4,
    )


def test_exact_kl_estimator_is_accepted(tmp_path) -> None:
    assert _cfg(tmp_path, kl_estimator="exact", kl_coef=0.1).kl_estimator == "exact"
