"""HAEPO for Hugging Face TRL: ``HAEPOTrainer`` / ``HAEPOConfig`` (TRL 1.16.x).

Switch from GRPO by changing the class names::

    from haepo_adapters.trl import HAEPOConfig, HAEPOTrainer

    args = HAEPOConfig(output_dir="out", num_generations=8, per_device_train_batch_size=8)
    trainer = HAEPOTrainer(model="path/or/id", reward_funcs=reward_fn, args=args,
                           train_dataset=dataset)

For custom loops, :func:`haepo_loss_from_token_logps` takes TRL-style tensors. The supported TRL
range is checked on import (``ImportError`` outside it); see docs/trl.md.
"""

from ._version import SUPPORTED_TRL, check_trl_version

check_trl_version()

from ._config import GRPO_FIELDS_REPLACED, HAEPOConfig  # noqa: E402 (after the version check)
from ._loss import haepo_loss_from_token_logps  # noqa: E402
from ._toy import save_char_level_model  # noqa: E402
from ._trainer import HAEPOTrainer  # noqa: E402

__all__ = [
    "GRPO_FIELDS_REPLACED",
    "SUPPORTED_TRL",
    "HAEPOConfig",
    "HAEPOTrainer",
    "check_trl_version",
    "haepo_loss_from_token_logps",
    "save_char_level_model",
]
