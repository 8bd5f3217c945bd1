"""``HAEPOConfig``: ``GRPOConfig`` plus the HAEPO fields, checked at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import GRPOConfig

from haepo_core import KL_ESTIMATORS, NORMALIZATIONS

from ._groups import check_group_layout

__all__ = ["KL_REFERENCES", "HAEPOConfig"]

KL_REFERENCES = ("previous", "initial")


@dataclass
class HAEPOConfig(GRPOConfig):
    r"""Configuration of :class:`HAEPOTrainer`: every ``GRPOConfig`` field plus the HAEPO ones.

    HAEPO fields:
      haepo_temperature: ``tau > 0`` of the Plackett-Luce softmax over the completions' log-
        likelihoods ``L_k``. Named apart from GRPOConfig's ``temperature``, which stays the
        *sampling* temperature of generation.
      length_normalize: divide each ``L_k`` by the completion's token count before the softmax.
        Default ``True``: raw sums of long completions differ by many nats and the softmax
        collapses onto one completion (ESS ~ 1); docs/trl.md has the measurement.
      normalize_returns: ``"zscore"`` (default), ``"center"`` or ``"none"``, inside each group
        of ``num_generations`` completions. Replaces GRPO's ``scale_rewards`` (ignored).
      normalize_eps: ``> 0``, guards the group std of the rewards.
      kl_coef: ``beta >= 0`` of the KL penalty (HAEPO's; GRPO's ``beta`` must stay 0 and is
        set for you under ``kl_reference="initial"``).
      kl_reference: ``"previous"`` (default): KL to the policy that sampled the batch, i.e.
        TRL's ``old_per_token_logps`` (0 with zero gradient while training is on-policy,
        ``num_iterations == 1`` and ``steps_per_generation <= gradient_accumulation_steps``);
        ``"initial"``: KL to the frozen initial model, which TRL loads as its reference model.
      kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (default) per-token KL estimate.

    Reused GRPO fields: ``entropy_coef`` (the entropy bonus ``lambda``, on TRL's per-token
    entropies), ``num_generations`` (the group size), ``mask_truncated_completions``.
    Ignored GRPO fields (the PPO-style clipped surrogate is replaced): ``loss_type``,
    ``epsilon``, ``epsilon_high``, ``delta``, ``importance_sampling_level``, ``scale_rewards``,
    ``multi_objective_aggregation`` (HAEPO normalizes the weighted sum of the rewards).
    Refused: ``use_adaptive_entropy``, ``top_entropy_quantile < 1``,
    ``off_policy_mask_threshold`` (they act inside GRPO's loss), a non-zero ``beta``
    other than the one set by ``kl_reference="initial"``, and a ``per_device_train_batch_size``
    that is not a multiple of ``num_generations`` (every micro-batch must hold whole groups).
    """

    haepo_temperature: float = field(
        default=1.0,
        metadata={"help": "Temperature tau > 0 of HAEPO's softmax over log-likelihoods."},
    )
    length_normalize: bool = field(
        default=True,
        metadata={"help": "Divide each completion's log-likelihood by its token count."},
    )
    normalize_returns: str = field(
        default="zscore",
        metadata={"help": "Group reward normalization: 'zscore', 'center' or 'none'."},
    )
    normalize_eps: float = field(
        default=1e-8, metadata={"help": "Guards the group std of the rewards (> 0)."}
    )
    kl_coef: float = field(default=0.0, metadata={"help": "HAEPO KL coefficient beta >= 0."})
    kl_reference: str = field(
        default="previous",
        metadata={"help": "KL to the 'previous' (sampling) policy or the 'initial' model."},
    )
    kl_estimator: str = field(
        default="k3", metadata={"help": "Per-token KL estimator: 'k1', 'k2' or 'k3'."}
    )

    def __post_init__(self) -> None:
        self._check_haepo_fields()
        if self.kl_reference == "initial":
            if self.beta not in (0.0, self.kl_coef):
                raise ValueError(
                    f"beta: HAEPO takes its KL coefficient from kl_coef (beta is set to it under "
                    f"kl_reference='initial'); expected 0.0 or kl_coef = {self.kl_coef}, "
                    f"got {self.beta}"
                )
            # GRPOTrainer loads its reference model (the initial weights) iff beta != 0.
            self.beta = self.kl_coef
        elif self.beta != 0.0:
            raise ValueError(
                f"beta: expected 0.0 (HAEPO's KL coefficient is kl_coef; set "
                f"kl_reference='initial' for a KL to the initial model), got {self.beta}"
            )
        if self.use_adaptive_entropy:
            raise ValueError(
                "use_adaptive_entropy: expected False, got True (the adaptive controller lives "
                "inside GRPO's loss; HAEPO uses a fixed entropy_coef)"
            )
        if self.top_entropy_quantile != 1.0:
            raise ValueError(
                f"top_entropy_quantile: expected 1.0 (HAEPO scores whole completions, not "
                f"high-entropy tokens), got {self.top_entropy_quantile}"
            )
        if self.off_policy_mask_threshold is not None:
            raise ValueError(
                f"off_policy_mask_threshold: expected None (not part of HAEPO), got "
                f"{self.off_policy_mask_threshold}"
            )
        # Before GRPOConfig's own checks, whose message (generation batch divisible by
        # num_generations) does not tell that HAEPO needs more: whole groups per micro-batch.
        check_group_layout(self.per_device_train_batch_size, self.num_generations)
        super().__post_init__()

    def _check_haepo_fields(self) -> None:
        def real(name: str, value: object, ok: bool, want: str) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok:
                raise ValueError(f"{name}: expected {want}, got {value!r}")

        t = self.haepo_temperature
        real(
            "haepo_temperature",
            t,
            isinstance(t, (int, float)) and math.isfinite(t) and t > 0,
            "a finite number > 0",
        )
        e = self.normalize_eps
        real("normalize_eps", e, isinstance(e, (int, float)) and e > 0, "a number > 0")
        k = self.kl_coef
        real(
            "kl_coef",
            k,
            isinstance(k, (int, float)) and math.isfinite(k) and k >= 0,
            "a finite number >= 0",
        )
        c = self.entropy_coef
        real(
            "entropy_coef",
            c,
            isinstance(c, (int, float)) and math.isfinite(c) and c >= 0,
            "a finite number >= 0",
        )
        if not isinstance(self.length_normalize, bool):
            raise TypeError(
                f"length_normalize: expected a bool, got {type(self.length_normalize).__name__}"
            )
        for name, value, allowed in (
            ("normalize_returns", self.normalize_returns, NORMALIZATIONS),
            ("kl_reference", self.kl_reference, KL_REFERENCES),
            ("kl_estimator", self.kl_estimator, KL_ESTIMATORS),
        ):
            if value not in allowed:
                raise ValueError(
                    f"{name}: expected one of {', '.join(map(repr, allowed))}, got {value!r}"
                )
