"""``HAEPOTrainer``: TRL's ``GRPOTrainer`` with the HAEPO objective in place of GRPO's loss.

Generation, reward functions, tools, vLLM, logging and checkpointing are TRL's. Four methods
change:

- ``_calculate_rewards`` keeps the raw rewards of the generation batch (GRPO keeps only its
  advantages); ``_generate_and_score_completions`` attaches each row's weighted reward and group
  label (``haepo_rewards``, ``haepo_group_ids``).
- ``_prepare_inputs`` shuffles whole groups instead of rows before splitting the generation
  batch into ``steps_per_generation`` micro-batches, so no group is cut in two.
- ``_compute_loss`` feeds TRL's per-token log-probs, entropies, masks and rewards to
  ``haepo_core.haepo_loss``, scales it for gradient accumulation and logs HAEPO's diagnostics.
"""

from __future__ import annotations

from typing import Any

import torch
import trl
from trl import GRPOTrainer
from trl.trainer.utils import (
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

from haepo_core import kl_estimate

from ._config import HAEPOConfig
from ._groups import check_group_layout, check_whole_groups, shuffle_groups
from ._loss import group_ids_for, haepo_step_loss
from ._version import check_trl_version

__all__ = ["HAEPOTrainer"]

_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


class HAEPOTrainer(GRPOTrainer):
    """Train a causal LM with HAEPO through TRL: swap ``GRPOTrainer``/``GRPOConfig`` for
    ``HAEPOTrainer``/``HAEPOConfig``; every other argument is ``GRPOTrainer``'s.

    Each prompt's ``num_generations`` completions form one HAEPO group. Per micro-batch the loss
    is ``haepo_core.haepo_loss`` on TRL's per-token log-probs with ``L_k`` summed over the
    completion mask (times the tool mask), rewards normalized inside each group, the entropy
    bonus on TRL's per-token entropies and the KL to the reference chosen by
    ``args.kl_reference``. Logged metrics (TRL's ``self._metrics``, hence every logger):
    ``haepo/policy_loss``, ``haepo/ess``, ``haepo/ess_min``, ``haepo/ess_fraction``
    (ESS / num_generations), ``haepo/max_weight``, ``haepo/entropy``, ``haepo/kl``,
    ``haepo/weighted_return``, plus TRL's usual ``entropy`` and ``kl``.

    Raises:
      ImportError: the installed TRL is outside 1.16.x.
      TypeError: ``args`` is not a :class:`HAEPOConfig`.
      ValueError: an evaluation batch would split groups.
    """

    _tag_names = ["trl", "haepo"]  # noqa: RUF012 (class attribute mirrored from GRPOTrainer)
    _name = "HAEPO"

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: HAEPOConfig | None = None,
        **kwargs: Any,
    ) -> None:
        check_trl_version(trl.__version__)
        if args is None:
            name = model if isinstance(model, str) else type(model).__name__
            args = HAEPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-HAEPO")
        if not isinstance(args, HAEPOConfig):
            raise TypeError(
                f"args: expected a HAEPOConfig (GRPOConfig plus the HAEPO fields), got "
                f"{type(args).__name__}"
            )
        if kwargs.get("eval_dataset") is not None:
            check_group_layout(
                args.per_device_eval_batch_size,
                args.num_generations_eval or args.num_generations,
                name="per_device_eval_batch_size",
            )
        self._haepo_rewards_per_func: torch.Tensor | None = None
        super().__init__(model, reward_funcs, args, **kwargs)

    # -- rewards and group labels ---------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # type: ignore[no-untyped-def]
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        self._haepo_rewards_per_func = rewards_per_func  # gathered over all processes
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):  # type: ignore[no-untyped-def]
        output = super()._generate_and_score_completions(inputs)
        rpf = self._haepo_rewards_per_func
        self._haepo_rewards_per_func = None
        if rpf is None:
            raise RuntimeError("HAEPOTrainer: the rewards of the generation batch were not seen")
        mode = "train" if self.model.training else "eval"
        g = self.num_generations if mode == "train" else self.num_generations_eval
        weights = self.reward_weights.to(rpf.device)
        rewards = (rpf * weights.unsqueeze(0)).nansum(dim=1)
        # A completion every reward function declined (None -> NaN) gets its group's mean
        # reward: it then carries no signal, like GRPO's zeroed advantage.
        unscorable = torch.isnan(rpf).all(dim=1)
        if bool(unscorable.any()):
            grouped = rewards.masked_fill(unscorable, float("nan")).view(-1, g)
            mean = torch.nanmean(grouped, dim=1, keepdim=True).nan_to_num(0.0)
            rewards = torch.where(unscorable.view(-1, g), mean, grouped).reshape(-1)
        n_local = output["completion_ids"].shape[0]
        lo = self.accelerator.process_index * n_local
        groups = group_ids_for(rewards.shape[0], g, rewards.device)
        output["haepo_rewards"] = rewards[lo : lo + n_local]
        output["haepo_group_ids"] = groups[lo : lo + n_local]
        return output

    # -- batching -------------------------------------------------------------------------
    def _split_generation_batch(self, generation_batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Shuffle whole groups, then split into ``steps_per_generation`` micro-batches."""
        batch = split_pixel_values_by_grid(generation_batch)
        batch = shuffle_groups(batch, self.num_generations)
        chunks = split_tensor_dict(batch, self.args.steps_per_generation)
        return [unsplit_pixel_values_by_grid(chunk) for chunk in chunks]

    def _prepare_inputs(self, generation_batch):  # type: ignore[no-untyped-def]
        # Same buffering as GRPOTrainer._prepare_inputs; only the shuffle differs (rows ->
        # whole groups), so a group never straddles two micro-batches.
        if not self.model.training:
            return self._generate_and_score_completions(generation_batch)
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            generation_batch = self._generate_and_score_completions(generation_batch)
            self._buffered_inputs = self._split_generation_batch(generation_batch)
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    # -- loss -----------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):  # type: ignore[no-untyped-def]
        args: HAEPOConfig = self.args  # type: ignore[assignment]
        mode = "train" if self.model.training else "eval"
        g = self.num_generations if mode == "train" else self.num_generations_eval
        check_whole_groups(inputs["haepo_group_ids"], g)

        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask
        if "tool_mask" in inputs:  # tool outputs are not the policy's tokens: not scored
            mask = completion_mask * inputs["tool_mask"]
        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{k: inputs.get(k) for k in _FORWARD_KEYS},
        )

        ref = None
        if args.kl_coef > 0:
            if args.kl_reference == "initial":
                ref = inputs["ref_per_token_logps"]
            else:
                # TRL stores old_per_token_logps only when the policy may have moved since
                # sampling; otherwise the sampling policy *is* the current one (KL = 0, grad 0).
                ref = inputs.get("old_per_token_logps")
                ref = per_token_logps.detach() if ref is None else ref

        # Gradient accumulation. TRL disables Trainer's own loss scaling, so the loss returned
        # here must already be the share of one micro-batch in the accumulation window:
        # - policy term: the core averages over the micro-batch's groups and every micro-batch
        #   holds per_device_train_batch_size / num_generations of them, so dividing by the
        #   accumulation steps gives the mean over all groups of the window;
        # - entropy and KL: token means over the *window*, so the core's micro-batch token mean
        #   is rescaled by (tokens here) / (tokens per micro-batch in the window), from TRL's
        #   num_items_in_batch (all loss tokens of the generation batch, all processes).
        # DDP then averages over processes, which holds equal shares. Tested against one big
        # step in tests/test_trl_trainer.py.
        valid = mask.bool()
        if mode == "train":
            accum = self.current_gradient_accumulation_steps
            per_micro = (
                float(inputs["num_items_in_batch"])
                / self.accelerator.num_processes
                / args.steps_per_generation
            )
            reg_scale = float(valid.sum()) / max(per_micro, 1.0)
        else:
            accum, reg_scale = 1, 1.0

        # The core computes in float32 but casts its outputs back to the input dtype; under
        # bf16 training the scalar loss would then keep ~3 significant digits. Upcasting the
        # [B, T] log-probs first (cheap next to the forward pass) keeps the loss in float32.
        out = haepo_step_loss(
            per_token_logps.float(),
            valid,
            inputs["haepo_rewards"],
            inputs["haepo_group_ids"],
            entropies=entropies.float() if args.entropy_coef > 0 else None,
            ref_per_token_logps=ref,
            entropy_coef=args.entropy_coef * reg_scale,
            kl_coef=args.kl_coef * reg_scale,
            kl_estimator=args.kl_estimator,
            normalize_returns=args.normalize_returns,
            temperature=args.haepo_temperature,
            length_normalize=args.length_normalize,
            eps=args.normalize_eps,
        )
        loss = out.loss / accum
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accum
            self._metrics[mode]["aux_loss"].append(
                self.accelerator.gather_for_metrics(aux_loss).mean().item()
            )
        self._log_haepo(mode, out.stats, entropies, ref, per_token_logps, valid, g)
        return loss

    def _log_haepo(self, mode, stats, entropies, ref, logps, valid, g):  # type: ignore[no-untyped-def]
        """Append the micro-batch's diagnostics to TRL's metrics (averaged over processes)."""
        if not bool(valid.any()):
            return
        gather = self.accelerator.gather
        names = ("policy_loss", "ess", "max_weight", "weighted_return")
        local = torch.stack([stats[k].float() for k in names])
        mean = gather(local[None]).float().nanmean(dim=0).tolist()
        metrics = self._metrics[mode]
        for k, v in zip(names, mean):
            metrics[f"haepo/{k}"].append(v)
        metrics["haepo/ess_fraction"].append(mean[1] / g)
        metrics["haepo/ess_min"].append(gather(stats["ess_min"].float()[None]).min().item())

        # Token means over all processes (TRL's convention for "entropy" and "kl").
        zero = torch.zeros((), dtype=torch.float32, device=logps.device)
        sums = [torch.where(valid, entropies.detach().float(), zero).sum(), valid.float().sum()]
        if ref is not None:
            steps = kl_estimate(logps.detach(), ref.detach(), self.args.kl_estimator)
            sums.append(torch.where(valid, steps.float(), zero).sum())
        totals = self.accelerator.reduce(torch.stack(sums), reduction="sum")
        n = totals[1].clamp(min=1.0)
        metrics["haepo/entropy"].append((totals[0] / n).item())
        metrics["entropy"].append((totals[0] / n).item())
        kl = (totals[2] / n).item() if ref is not None else 0.0
        metrics["haepo/kl"].append(kl)
        if ref is not None:
            metrics["kl"].append(kl)
