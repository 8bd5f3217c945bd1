"""``HAEPOConfig``: ``GRPOConfig`` plus the HAEPO fields, checked at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import GRPOConfig

from haepo_core import KL_ESTIMATORS, NORMALIZATIONS

from ._groups import check_group_layout

__all__ = ["GRPO_FIELDS_REPLACED", "KL_ESTIMATORS_TRL", "KL_REFERENCES", "HAEPOConfig"]

KL_REFERENCES = ("previous", "initial")
#: ``kl_estimator`` values: the core's per-token estimators on TRL's log-probs, or ``"exact"``:
#: the full-vocabulary KL from the policy's and the reference's last hidden states and LM heads.
KL_ESTIMATORS_TRL = (*KL_ESTIMATORS, "exact")

#: GRPOConfig fields that act only inside GRPO's loss (or TRL's importance-sampling corrections),
#: which HAEPO replaces: ``field -> (default, what HAEPO does instead)``. A non-default value is
#: refused with a ``ValueError`` naming the field, so no setting is silently ignored.
GRPO_FIELDS_REPLACED: dict[str, tuple[object, str]] = {
    "loss_type": ("dapo", "HAEPO's listwise loss replaces every GRPO loss formulation"),
    "epsilon": (0.2, "HAEPO has no clipped ratio; its softmax weights are self-normalized"),
    "epsilon_high": (None, "HAEPO has no clipped ratio"),
    "delta": (None, "HAEPO has no clipped ratio"),
    "sapo_temperature_neg": (1.05, "the sapo loss is not used; haepo_temperature is HAEPO's"),
    "sapo_temperature_pos": (1.0, "the sapo loss is not used; haepo_temperature is HAEPO's"),
    "vespo_k_pos": (2.0, "the vespo loss is not used"),
    "vespo_lambda_pos": (3.0, "the vespo loss is not used"),
    "vespo_k_neg": (3.0, "the vespo loss is not used"),
    "vespo_lambda_neg": (2.0, "the vespo loss is not used"),
    "importance_sampling_level": (
        "token",
        "HAEPO weighs whole completions by the softmax of their log-likelihoods, not by ratios",
    ),
    "scale_rewards": ("group", "rewards are normalized per group by normalize_returns"),
    "multi_objective_aggregation": (
        "sum_then_normalize",
        "HAEPO normalizes the weighted sum of the rewards inside each group (normalize_returns)",
    ),
    "top_entropy_quantile": (1.0, "HAEPO scores whole completions, not high-entropy tokens"),
    "use_adaptive_entropy": (False, "HAEPO uses the fixed entropy_coef"),
    "entropy_coef_min": (0.0, "adaptive entropy control is not used; entropy_coef is fixed"),
    "entropy_coef_max": (1.0, "adaptive entropy control is not used; entropy_coef is fixed"),
    "entropy_coef_delta": (0.005, "adaptive entropy control is not used; entropy_coef is fixed"),
    "entropy_target": (0.2, "adaptive entropy control is not used; entropy_coef is fixed"),
    "off_policy_mask_threshold": (None, "HAEPO masks no sequence by its off-policy ratio"),
    "vllm_importance_sampling_mode": (
        "sequence_mask",
        "HAEPO applies no vLLM importance-sampling correction",
    ),
    "vllm_importance_sampling_clip_max": (
        3.0,
        "HAEPO applies no vLLM importance-sampling correction",
    ),
    "vllm_importance_sampling_clip_min": (
        None,
        "HAEPO applies no vLLM importance-sampling correction",
    ),
    "vllm_importance_sampling_cap": (None, "HAEPO applies no vLLM importance-sampling correction"),
    "use_bias_correction_kl": (
        True,
        "HAEPO's KL is a plain token mean, never multiplied by an importance-sampling ratio",
    ),
}


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
      kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (default): per-token KL estimate on TRL's
        log-probs; or ``"exact"``: the KL over the whole vocabulary, from the last hidden states
        and LM heads of the policy and the reference through
        ``haepo_backends.torch.haepo_loss_from_hidden`` (no ``[B, T, V]`` logits).

    Reused GRPO fields: ``entropy_coef`` (the entropy bonus ``lambda``, on the per-token
    entropies), ``num_generations`` (the group size, ``>= 2``), ``temperature`` (sampling, and
    the temperature of the log-probs), ``num_iterations``, ``steps_per_generation``,
    ``mask_truncated_completions``, ``sync_ref_model`` (moves the ``"initial"`` reference).
    Any batch layout GRPO accepts is accepted: a group may span micro-batches and processes
    (see docs/trl.md for the exact split-group gradient), except that with
    ``steps_per_generation > gradient_accumulation_steps`` each optimizer step must hold whole
    groups (``per_device_train_batch_size * gradient_accumulation_steps`` a multiple of
    ``num_generations``).
    ``beta`` is HAEPO's to set: it must stay 0.0 (or equal ``kl_coef`` under
    ``kl_reference="initial"``, where it is set for you so that TRL loads its reference model).
    Every field of :data:`GRPO_FIELDS_REPLACED` (GRPO's loss, clipping, reward scaling, entropy
    control and importance-sampling settings) is refused at a non-default value, with a message
    saying what HAEPO does instead. Under ``use_vllm=True``, ``vllm_importance_sampling_correction``
    must be set to ``False``: HAEPO has no importance-sampling correction for vLLM's sampler.
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
        default="k3",
        metadata={"help": "KL estimator: 'k1', 'k2', 'k3' (per token) or 'exact' (full vocab)."},
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
        self._check_grpo_fields()
        # Before GRPOConfig's own checks, whose message (generation batch divisible by
        # num_generations) does not tell that HAEPO needs more: whole groups per micro-batch.
        super().__post_init__()
        check_group_layout(
            self.per_device_train_batch_size,
            self.num_generations,
            self.gradient_accumulation_steps,
            self.steps_per_generation,
        )

    def _check_grpo_fields(self) -> None:
        for name, (default, instead) in GRPO_FIELDS_REPLACED.items():
            value = getattr(self, name)
            if name == "scale_rewards" and value is True:  # GRPOConfig's alias of "group"
                continue
            if value != default:
                raise ValueError(
                    f"{name}: HAEPO does not use this GRPO setting ({instead}); expected the "
                    f"default {default!r}, got {value!r}"
                )
        if self.use_vllm and self.vllm_importance_sampling_correction:
            raise ValueError(
                "vllm_importance_sampling_correction: HAEPO has no importance-sampling correction "
                "for vLLM's sampler (its weights are a softmax over the trainer's own "
                "log-likelihoods); expected False with use_vllm=True, got True. Set it to False "
                "to train on vLLM's completions uncorrected."
            )

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
        real(
            "normalize_eps",
            e,
            isinstance(e, (int, float)) and math.isfinite(e) and e > 0,
            "a finite number > 0",
        )
        n = self.num_generations
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(
                f"num_generations: expected an int >= 2 (HAEPO's softmax compares the "
                f"completions of one prompt; a group of one gets no gradient), got {n!r}"
            )
        ne = self.num_generations_eval
        if ne is not None and (isinstance(ne, bool) or not isinstance(ne, int) or ne < 1):
            raise ValueError(f"num_generations_eval: expected None or an int >= 1, got {ne!r}")
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
            ("kl_estimator", self.kl_estimator, KL_ESTIMATORS_TRL),
        ):
            if value not in allowed:
                raise ValueError(
                    f"{name}: expected one of {', '.join(map(repr, allowed))}, got {value!r}"
                )
