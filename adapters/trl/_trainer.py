"""``HAEPOTrainer``: TRL's ``GRPOTrainer`` with the HAEPO objective in place of GRPO's loss.

Generation, reward functions, tools, vLLM, logging and checkpointing are TRL's. What changes:

- ``_generate_and_score_completions`` keeps each row's weighted raw reward, its global group
  label and row number (``haepo_rewards``, ``haepo_group_ids``, ``haepo_rows``), and, for
  ``kl_estimator="exact"``, the reference's last hidden states (``haepo_ref_hidden``).
- ``_prepare_inputs`` shuffles whole groups (TRL shuffles rows) and, at the first micro-batch of
  every optimizer step, prepares the step: its global token count and, when a group spans
  micro-batches or processes, the split-group coefficients ``c_k = dJ/dL_k`` (see ``_split``).
- ``_compute_loss`` runs ``haepo_backends.torch``: ``haepo_loss`` on TRL's fused-head log-probs
  (whole groups), ``sum_k c_k L_k`` plus token-mean terms (split groups), or
  ``haepo_loss_from_hidden`` on the last hidden states and the LM head (exact KL).
- Metrics are whole-step values (``log`` takes the minimum of ``haepo/ess_min``); the completions
  table shows HAEPO's normalized returns and weights; the model card cites HAEPO.
"""

from __future__ import annotations

import functools
import math
import textwrap
import types
import warnings
from contextlib import nullcontext
from typing import Any

import torch
import trl
from haepo_backends.torch import haepo_loss_from_hidden
from trl import GRPOTrainer
from trl.trainer.utils import (
    shuffle_sequence_dict,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
    use_adapter,
)

from haepo_core import kl_estimate, normalize_returns

from ._config import HAEPOConfig
from ._groups import (
    check_eval_layout,
    check_group_layout,
    check_whole_groups,
    groups_fit_micro_batches,
    shuffle_groups,
)
from ._loss import group_ids_for, haepo_step_loss
from ._split import completion_log_likelihood, split_micro_batch_loss, window_coefficients
from ._version import check_trl_version

__all__ = ["HAEPOTrainer"]


def _config_options(args: HAEPOConfig) -> dict[str, Any]:
    """The loss keywords taken as they are from the config (coefficients are scaled per call;
    ``kl_estimator`` is the per-token path's, "exact" taking the from-hidden path)."""
    return dict(
        normalize_returns=args.normalize_returns,
        temperature=args.haepo_temperature,
        length_normalize=args.length_normalize,
        eps=args.normalize_eps,
    )


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

# Config attributes that rescale or cap logits; the exact-KL path projects hidden @ W.T + b only.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)

# Window metrics, accumulated over the micro-batches of an optimizer step, then reduced once.
_SUMS = ("policy_loss", "ess", "max_weight", "weighted_return", "groups", "entropy", "kl", "tokens")


def _add_hidden_forward(model: Any) -> None:
    """Let ``model(..., haepo_hidden=True)`` return the backbone's last hidden states.

    The call still goes through the (possibly DDP/PEFT-wrapped) model's ``forward``, so
    distributed hooks and adapters act as usual; the LM head is then applied by the fused
    HAEPO loss, never over all tokens at once. Without ``haepo_hidden`` the forward in place
    (TRL's fused LM head, or the original) runs unchanged.
    """
    inner = model.forward

    @functools.wraps(type(model).forward)
    def forward(self: Any, *args: Any, haepo_hidden: bool = False, **kwargs: Any) -> Any:
        if not haepo_hidden:
            return inner(*args, **kwargs)
        kwargs["use_cache"] = False
        return self.base_model(*args, **kwargs).last_hidden_state

    model.forward = types.MethodType(forward, model)


class HAEPOTrainer(GRPOTrainer):
    """Train a causal LM with HAEPO through TRL: swap ``GRPOTrainer``/``GRPOConfig`` for
    ``HAEPOTrainer``/``HAEPOConfig``; every other argument is ``GRPOTrainer``'s.

    Each prompt's ``num_generations`` completions form one HAEPO group. The loss of an optimizer
    step is HAEPO's on all its groups (every micro-batch and process): ``L_k`` summed over the
    completion mask (times the tool mask), rewards normalized inside each group, the entropy
    bonus and the KL to ``args.kl_reference`` as token means over the step. A group may span
    micro-batches and processes; its gradient is then exact through the split-group
    coefficients (docs/trl.md). Logged metrics (whole-step values): ``haepo/policy_loss``,
    ``haepo/ess`` (mean over groups), ``haepo/ess_min`` (minimum over every group of the logged
    steps), ``haepo/ess_fraction`` (ESS / num_generations), ``haepo/max_weight``,
    ``haepo/weighted_return``, ``haepo/entropy`` and TRL's ``entropy``; ``haepo/kl`` and TRL's
    ``kl`` only when a KL is computed.

    Raises:
      ImportError: the installed TRL is outside 1.16.x.
      TypeError: ``args`` is not a :class:`HAEPOConfig`.
      ValueError: an evaluation batch would split groups; ``kl_estimator="exact"`` on a model
        whose logits are not a plain linear head of its last hidden states.
    """

    _tag_names = ["trl", "haepo"]  # noqa: RUF012 (class attribute mirrored from GRPOTrainer)
    _name = "HAEPO"
    _paper = {  # noqa: RUF012 (class attribute mirrored from GRPOTrainer; read by the model card)
        "title": "HAEPO: History-Aggregated Exploratory Policy Optimization",
        "id": "2508.18884",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{trivedi2025haepo,
                title        = {{HAEPO: History-Aggregated Exploratory Policy Optimization}},
                author       = {Gaurish Trivedi and Alakh Sharma and Kartikey Singh Bhandari
                                and Dhruv Kumar and Pratik Narang and Jagat Sesh Challa},
                year         = 2025,
                eprint       = {arXiv:2508.18884},
            }"""),
    }

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
            check_eval_layout(
                args.per_device_eval_batch_size, args.num_generations_eval or args.num_generations
            )
        check_group_layout(
            args.per_device_train_batch_size,
            args.num_generations,
            args.gradient_accumulation_steps,
            args.steps_per_generation,
        )
        self._haepo_rewards_per_func: torch.Tensor | None = None
        self._haepo_window: dict[str, Any] | None = None
        self._haepo_fresh = False
        self._haepo_ref_head: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._haepo_weight_log: torch.Tensor | None = None
        super().__init__(model, reward_funcs, args, **kwargs)
        self._haepo_split = not groups_fit_micro_batches(
            args.per_device_train_batch_size, args.num_generations
        )
        self._haepo_exact = args.kl_estimator == "exact"
        if self._haepo_exact:
            self._setup_exact_kl()
        on_policy = self.num_iterations == 1 and (
            args.steps_per_generation <= args.gradient_accumulation_steps
        )
        if args.kl_coef > 0 and args.kl_reference == "previous" and on_policy:
            warnings.warn(
                "kl_coef: with kl_reference='previous', num_iterations=1 and steps_per_generation "
                "<= gradient_accumulation_steps the sampling policy is the current one, so the KL "
                "term is identically 0 and is skipped (not logged); use kl_reference='initial' "
                "for a KL to the initial model",
                UserWarning,
                stacklevel=2,
            )
        if args.use_vllm:
            warnings.warn(
                "use_vllm: HAEPO trains on vLLM's completions without an importance-sampling "
                "correction; its weights and log-likelihoods are the trainer's own",
                UserWarning,
                stacklevel=2,
            )

    # -- exact KL through the fused LM head ----------------------------------------------
    def _policy_core(self) -> Any:
        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _setup_exact_kl(self) -> None:
        for target in (self._policy_core(), self.ref_model):
            if target is None:
                continue
            head = target.get_output_embeddings()
            text_config = target.config.get_text_config()
            transforms = [
                a for a in _LOGIT_TRANSFORMS if getattr(text_config, a, None) not in (None, 1.0)
            ]
            if not isinstance(head, torch.nn.Linear):
                raise ValueError(
                    f"kl_estimator: 'exact' projects the last hidden states through a plain "
                    f"linear LM head; got {type(head).__name__} (a PEFT-wrapped lm_head is not "
                    f"supported: leave lm_head out of the adapter's target_modules and "
                    f"modules_to_save)"
                )
            if transforms:
                raise ValueError(
                    f"kl_estimator: 'exact' needs logits = hidden @ W.T + b, but the model's "
                    f"config sets {', '.join(transforms)}; use 'k3'"
                )
            _add_hidden_forward(target)

    def _last_hidden(
        self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int, **kw: Any
    ) -> torch.Tensor:
        """``[B, n, H]`` last hidden states at the positions predicting the ``n`` completion
        tokens, divided by the sampling temperature (TRL scores ``logits / temperature``)."""
        extra = {k: v for k, v in kw.items() if v is not None}
        with self.accelerator.autocast():
            hidden = model(
                input_ids=input_ids, attention_mask=attention_mask, haepo_hidden=True, **extra
            )
        return hidden[:, -n - 1 : -1] / self.temperature

    def _head(self, model: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        head = model.get_output_embeddings()
        bias = None if head.bias is None else head.bias / self.temperature
        return head.weight, bias

    def _reference_hidden(self, output: dict[str, Any]) -> torch.Tensor | None:
        """The exact-KL reference's hidden states for the generation batch (no grad), or
        ``None`` when the reference is the current policy (KL identically 0)."""
        args: HAEPOConfig = self.args  # type: ignore[assignment]
        if args.kl_coef == 0:
            return None
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        n = output["completion_ids"].size(1)
        kw = {k: output.get(k) for k in ("token_type_ids", "mm_token_type_ids")}
        if args.kl_reference == "previous":
            if "old_per_token_logps" not in output:
                return None  # on-policy: the sampling policy is the current one
            weight, bias = self._head(self._policy_core())
            self._haepo_ref_head = (
                weight.detach().clone(),
                None if bias is None else bias.detach().clone(),
            )
            context = nullcontext()
            model = self.model
        elif self.ref_model is not None:
            weight, bias = self._head(self.ref_model)
            self._haepo_ref_head = (weight.detach(), None if bias is None else bias.detach())
            context, model = nullcontext(), self.ref_model
        else:  # PEFT: the initial model is the base with the adapter disabled
            unwrapped = self.accelerator.unwrap_model(self.model)
            name = "ref" if "ref" in unwrapped.peft_config else None
            context, model = use_adapter(unwrapped, adapter_name=name), self.model
            weight, bias = self._head(self._policy_core())
            self._haepo_ref_head = (weight.detach(), None if bias is None else bias.detach())
        step = self.args.per_device_train_batch_size
        parts = []
        with torch.no_grad(), context:
            for lo in range(0, ids.size(0), step):
                sl = slice(lo, lo + step)
                parts.append(
                    self._last_hidden(
                        model,
                        ids[sl],
                        mask[sl],
                        n,
                        **{k: v[sl] if v is not None else None for k, v in kw.items()},
                    )
                )
        return torch.cat(parts, dim=0)

    # -- rewards and group labels ---------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # type: ignore[no-untyped-def]
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        self._haepo_rewards_per_func = rewards_per_func  # gathered over all processes
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):  # type: ignore[no-untyped-def]
        args: HAEPOConfig = self.args  # type: ignore[assignment]
        skip_ref = self._haepo_exact and args.kl_reference == "initial"
        beta = self.beta
        if skip_ref:
            self.beta = 0.0  # the exact KL needs the reference's hidden states, not its log-probs
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self.beta = beta
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
        n_global = rewards.shape[0]
        lo = self.accelerator.process_index * n_local
        groups = group_ids_for(n_global, g, rewards.device)
        output["haepo_rewards"] = rewards[lo : lo + n_local]
        output["haepo_group_ids"] = groups[lo : lo + n_local]
        output["haepo_rows"] = torch.arange(lo, lo + n_local, device=rewards.device)
        # The completions table: HAEPO's normalized returns replace GRPO's advantages, and the
        # weights used in the update fill the "haepo_weight" column (see ``log``).
        r_norm = normalize_returns(
            rewards.double(), groups, method=args.normalize_returns, eps=args.normalize_eps
        )
        advantages = self._logs["advantages"]
        for _ in range(min(n_global, len(advantages))):
            advantages.pop()
        advantages.extend(r_norm.tolist())
        self._haepo_weight_log = torch.full((n_global,), float("nan"), dtype=torch.float64)
        if self._haepo_exact:
            ref_hidden = self._reference_hidden(output)
            if ref_hidden is not None:
                output["haepo_ref_hidden"] = ref_hidden
        return output

    # -- batching -------------------------------------------------------------------------
    def _split_generation_batch(self, generation_batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Shuffle whole groups, then split into ``steps_per_generation`` micro-batches.

        Block shuffling keeps each group's rows contiguous, so micro-batches hold whole groups
        when they can, and each optimizer step holds whole groups otherwise. When a group
        straddles processes (this process's rows are not whole groups) the step is the whole
        generation batch, and TRL's row shuffle is kept.
        """
        batch = split_pixel_values_by_grid(generation_batch)
        if generation_batch["completion_ids"].shape[0] % self.num_generations == 0:
            batch = shuffle_groups(batch, self.num_generations)
        else:
            batch = shuffle_sequence_dict(batch)
        chunks = split_tensor_dict(batch, self.args.steps_per_generation)
        return [unsplit_pixel_values_by_grid(chunk) for chunk in chunks]

    def _prepare_inputs(self, generation_batch):  # type: ignore[no-untyped-def]
        # Same buffering as GRPOTrainer._prepare_inputs; the shuffle moves whole groups, and the
        # first micro-batch of each optimizer step prepares the step (token count, c_k).
        if not self.model.training:
            return self._generate_and_score_completions(generation_batch)
        steps = self.args.steps_per_generation
        generate_every = steps * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            generation_batch = self._generate_and_score_completions(generation_batch)
            self._buffered_inputs = self._split_generation_batch(generation_batch)
            self._haepo_fresh = True
        i = self._step % steps
        accum = self.args.gradient_accumulation_steps
        if i % accum == 0 or self._haepo_window is None:
            start = i - i % accum
            window = self._buffered_inputs[start : start + accum]
            self._prepare_window(window, fresh=self._haepo_fresh and start == 0)
            self._haepo_fresh = False
        return self._buffered_inputs[i]

    def _valid(self, inputs: dict[str, Any]) -> torch.Tensor:
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:  # tool outputs are not the policy's tokens: not scored
            mask = mask * inputs["tool_mask"]
        return mask.bool()

    def _forward_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: inputs.get(k) for k in _FORWARD_KEYS}

    def _prepare_window(self, window: list[dict[str, Any]], *, fresh: bool) -> None:
        """Whole-step quantities, computed once before the step's first backward.

        Always: the step's global token count (token means) and group count (the policy
        term's mean over groups). When a group spans micro-batches or processes: every
        completion's ``L_k`` under the current policy, all-gathered, then ``c_k = dJ/dL_k``.
        ``L_k`` comes from TRL's ``old_per_token_logps`` when they were computed at generation
        by the current policy (``fresh``), else from a no-grad forward over the step's
        micro-batches (the split-group cost: one extra forward, no backward).
        """
        args: HAEPOConfig = self.args  # type: ignore[assignment]
        device = self.accelerator.device
        valids = [self._valid(mb) for mb in window]
        keeps = [v.any(dim=1) for v in valids]
        tokens = sum(float(v.sum()) for v in valids)
        state: dict[str, Any] = {
            "remaining": len(window),
            "micro_batches": len(window),
            "sums": torch.zeros(len(_SUMS), dtype=torch.float64, device=device),
            "ess_min": math.inf,
        }
        if not self._haepo_split:
            # Groups never span processes here: count each process's non-empty groups.
            groups = sum(
                int(torch.unique(mb["haepo_group_ids"][k]).numel()) for mb, k in zip(window, keeps)
            )
            totals = self.accelerator.reduce(
                torch.tensor([tokens, float(groups)], dtype=torch.float64, device=device), "sum"
            )
            # With steps_per_generation < gradient_accumulation_steps an optimizer step spans
            # several generation batches whose tokens are not known yet: each batch then gets
            # its share (len(window) / accumulation steps) of the step, its token and group
            # means taken over itself.
            share = len(window) / self.args.gradient_accumulation_steps
            state.update(num_tokens=float(totals[0]) / share, num_groups=float(totals[1]) / share)
            self._haepo_window = state
            return

        lks = []
        for mb, valid in zip(window, valids):
            logps = mb.get("old_per_token_logps") if fresh else None
            if logps is None:
                ids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], dim=1)
                att = torch.cat([mb["prompt_mask"], mb["completion_mask"]], dim=1)
                with torch.no_grad():
                    logps, _, _ = self._get_per_token_logps_and_entropies(
                        self.model,
                        ids,
                        att,
                        mb["completion_ids"].size(1),
                        **self._forward_kwargs(mb),
                    )
            lks.append(completion_log_likelihood(logps.double(), valid, args.length_normalize))
        local = torch.stack(
            [
                torch.cat(lks),
                torch.cat([mb["haepo_rewards"] for mb in window]).double(),
                torch.cat([mb["haepo_group_ids"] for mb in window]).double(),
                torch.cat(keeps).double(),
                torch.cat([mb["haepo_rows"] for mb in window]).double(),
            ],
            dim=1,
        )
        rows = self.accelerator.gather(local)  # [processes * rows, 5]: one L_k per completion
        tokens_all = float(
            self.accelerator.reduce(torch.tensor(tokens, dtype=torch.float64, device=device), "sum")
        )
        keep = rows[:, 3] > 0
        coef, out = window_coefficients(
            rows[:, 0],
            rows[:, 1],
            rows[:, 2].long(),
            keep,
            normalize_returns=args.normalize_returns,
            temperature=args.haepo_temperature,
            eps=args.normalize_eps,
        )
        n_local = local.shape[0]
        mine = coef[self.accelerator.process_index * n_local :][:n_local]
        offset = 0
        for mb in window:
            n = mb["haepo_rewards"].shape[0]
            mb["haepo_coef"] = mine[offset : offset + n]
            offset += n
        stats = out.stats
        state.update(
            num_tokens=tokens_all,
            policy_loss=float(stats["policy_loss"]),
            stats={k: float(stats[k]) for k in ("ess", "ess_min", "max_weight", "weighted_return")},
        )
        if self._haepo_weight_log is not None:
            kept_rows = rows[keep, 4].long().cpu()
            self._haepo_weight_log[kept_rows] = out.weights.detach().double().cpu()
        self._haepo_window = state

    # -- loss -----------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):  # type: ignore[no-untyped-def]
        args: HAEPOConfig = self.args  # type: ignore[assignment]
        mode = "train" if self.model.training else "eval"
        g = self.num_generations if mode == "train" else self.num_generations_eval
        split = mode == "train" and self._haepo_split
        if not split:
            check_whole_groups(inputs["haepo_group_ids"], g)
        valid = self._valid(inputs)
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        n = completion_ids.size(1)

        if mode == "train":
            window = self._haepo_window
            if window is None:
                raise RuntimeError("HAEPOTrainer: a training micro-batch came before its step")
            world = self.accelerator.num_processes
            n_tokens = max(window["num_tokens"], 1.0)
        else:
            window, world, n_tokens = None, 1, max(float(valid.sum()), 1.0)
        # Token-mean terms: this micro-batch's share of the step's global mean. DDP averages the
        # gradients over processes, hence the factor ``world`` on every term.
        reg_scale = world * float(valid.sum()) / n_tokens

        aux_loss = None
        if self._haepo_exact:
            loss, stats, entropy_sum, kl_sum, ref_known = self._exact_loss(
                model, inputs, input_ids, attention_mask, n, valid, split, world, n_tokens, window
            )
        else:
            per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                n,
                compute_entropy=True,
                compute_aux_loss=self.aux_loss_enabled,
                **self._forward_kwargs(inputs),
            )
            ref = self._kl_reference(inputs)
            ref_known = ref is not None
            logps = per_token_logps.float()
            ents = entropies.float()
            if split:
                policy = world * split_micro_batch_loss(
                    logps,
                    valid,
                    inputs["haepo_coef"],
                    length_normalize=args.length_normalize,
                    num_tokens=n_tokens,
                )
                regs = world * split_micro_batch_loss(
                    logps,
                    valid,
                    torch.zeros_like(inputs["haepo_coef"]),
                    length_normalize=args.length_normalize,
                    num_tokens=n_tokens,
                    entropies=ents,
                    ref_per_token_logps=ref,
                    entropy_coef=args.entropy_coef,
                    kl_coef=args.kl_coef,
                    kl_estimator=args.kl_estimator,
                )
                loss = self._split_value(policy, regs, window)
                stats = None
            else:
                loss, stats = self._whole_group_loss(
                    logps, valid, inputs, ents, ref, world, reg_scale, window
                )
            zero = torch.zeros((), dtype=torch.float32, device=logps.device)
            entropy_sum = torch.where(valid, ents.detach(), zero).sum()
            kl_sum = None
            if ref_known:
                steps = kl_estimate(logps.detach(), ref.float(), args.kl_estimator)
                kl_sum = torch.where(valid, steps, zero).sum()

        if self.aux_loss_enabled and aux_loss is not None:
            accum = window["micro_batches"] if window is not None else 1
            loss = loss + self.router_aux_loss_coef * aux_loss / accum
            self._metrics[mode]["aux_loss"].append(
                self.accelerator.gather_for_metrics(aux_loss).mean().item()
            )
        self._record(mode, window, stats, entropy_sum, kl_sum if ref_known else None, valid, g)
        return loss

    def _kl_reference(self, inputs: dict[str, Any]) -> torch.Tensor | None:
        """Reference log-probs of the per-token KL, or ``None`` when no KL is computed."""
        args: HAEPOConfig = self.args  # type: ignore[assignment]
        if args.kl_coef == 0:
            return None
        if args.kl_reference == "initial":
            return inputs["ref_per_token_logps"]
        # TRL stores old_per_token_logps only when the policy may have moved since sampling;
        # otherwise the sampling policy *is* the current one: KL = 0 with zero gradient, skipped.
        return inputs.get("old_per_token_logps")

    @staticmethod
    def _split_value(
        policy: torch.Tensor, regs: torch.Tensor, window: dict[str, Any]
    ) -> torch.Tensor:
        # ``sum_k c_k L_k`` has the right gradient but not the loss's value. Straight-through:
        # keep its gradient, report the step's policy loss spread evenly over the micro-batches
        # (so the logged "loss" is HAEPO's, as in the whole-group path). Pinned by the
        # split-vs-whole tests on values and gradients.
        share = window["policy_loss"] / window["micro_batches"]
        return policy - policy.detach() + share + regs

    def _whole_group_loss(  # type: ignore[no-untyped-def]
        self, logps, valid, inputs, ents, ref, world, reg_scale, window
    ):
        """Micro-batches hold whole groups: the backend's loss over them, rescaled so that the
        sum over the step's micro-batches and processes is the step's HAEPO loss."""
        args: HAEPOConfig = self.args  # type: ignore[assignment]
        keep = valid.any(dim=1)
        groups_here = int(torch.unique(inputs["haepo_group_ids"][keep]).numel())
        n_groups = window["num_groups"] if window is not None else float(max(groups_here, 1))
        # The backend averages the policy term over this micro-batch's groups; the step's loss
        # averages over all of them: scale by (groups here) / (groups in the step).
        p_scale = world * groups_here / max(n_groups, 1.0)
        r = reg_scale / p_scale if p_scale > 0 else 0.0
        out = haepo_step_loss(
            logps,
            valid,
            inputs["haepo_rewards"],
            inputs["haepo_group_ids"],
            entropies=ents if args.entropy_coef > 0 else None,
            ref_per_token_logps=None if ref is None else ref.float(),
            entropy_coef=args.entropy_coef * r,
            kl_coef=args.kl_coef * r if ref is not None else 0.0,
            kl_estimator=args.kl_estimator,
            **_config_options(args),
        )
        self._log_weights(inputs, out.weights, keep)
        stats = {k: out.stats[k] for k in out.stats.keys()}
        stats["groups"] = groups_here
        return out.loss * p_scale, stats

    def _exact_loss(  # type: ignore[no-untyped-def]
        self, model, inputs, input_ids, attention_mask, n, valid, split, world, n_tokens, window
    ):
        """Entropy and the exact KL from the last hidden states through the fused LM head."""
        args: HAEPOConfig = self.args  # type: ignore[assignment]
        kw = {k: inputs.get(k) for k in ("token_type_ids", "mm_token_type_ids")}
        hidden = self._last_hidden(model, input_ids, attention_mask, n, **kw)
        weight, bias = self._head(self._policy_core())
        ref_hidden = inputs.get("haepo_ref_hidden") if args.kl_coef > 0 else None
        ref_known = ref_hidden is not None
        ref_w, ref_b = self._haepo_ref_head if ref_known else (None, None)
        if args.cast_lm_head_to_fp32 or hidden.dtype != weight.dtype:
            hidden = hidden.to(weight.dtype)
            ref_hidden = None if ref_hidden is None else ref_hidden.to(weight.dtype)
        keep = valid.any(dim=1)
        reg_scale = world * float(valid.sum()) / n_tokens
        actions = inputs["completion_ids"].masked_fill(~valid, 0)
        common = dict(
            bias=bias,
            ref_hidden=ref_hidden,
            ref_weight=ref_w,
            ref_bias=ref_b,
            **_config_options(args),
        )
        if split:
            rows = torch.nonzero(keep, as_tuple=True)[0]
            # Each completion its own group: the policy term is then 0 with zero gradient,
            # and the call returns the entropy and KL token means plus differentiable L_k.
            out = (
                haepo_loss_from_hidden(
                    hidden[rows],
                    weight,
                    actions[rows],
                    inputs["haepo_rewards"][rows].float(),
                    valid[rows],
                    group_ids=torch.arange(rows.numel(), device=rows.device),
                    entropy_coef=args.entropy_coef * reg_scale,
                    kl_coef=args.kl_coef * reg_scale if ref_known else 0.0,
                    **{**common, "ref_hidden": None if ref_hidden is None else ref_hidden[rows]},
                )
                if rows.numel()
                else None
            )
            if out is None:
                loss = hidden.sum() * 0.0
                stats = None
                entropy_sum = kl_sum = torch.zeros((), device=hidden.device)
            else:
                coef = inputs["haepo_coef"][rows]
                policy = world * (coef.to(out.log_likelihood.dtype) * out.log_likelihood).sum()
                regs = out.loss - out.stats["policy_loss"]
                loss = self._split_value(policy, regs.float(), window)
                stats = None
                t = float(valid[rows].sum())
                entropy_sum = out.stats["entropy"].float() * t
                kl_sum = out.stats["kl"].float() * t
            return loss, stats, entropy_sum, kl_sum, ref_known

        groups_here = int(torch.unique(inputs["haepo_group_ids"][keep]).numel())
        n_groups = window["num_groups"] if window is not None else float(max(groups_here, 1))
        p_scale = world * groups_here / max(n_groups, 1.0)
        r = reg_scale / p_scale if p_scale > 0 else 0.0
        rows = torch.nonzero(keep, as_tuple=True)[0]
        if rows.numel() == 0:
            z = torch.zeros((), device=hidden.device)
            return hidden.sum() * 0.0, None, z, z, ref_known
        out = haepo_loss_from_hidden(
            hidden[rows],
            weight,
            actions[rows],
            inputs["haepo_rewards"][rows].float(),
            valid[rows],
            group_ids=inputs["haepo_group_ids"][rows],
            entropy_coef=args.entropy_coef * r,
            kl_coef=args.kl_coef * r if ref_known else 0.0,
            **{**common, "ref_hidden": None if ref_hidden is None else ref_hidden[rows]},
        )
        w = torch.zeros(keep.shape[0], dtype=out.weights.dtype, device=out.weights.device)
        self._log_weights(inputs, w.index_copy(0, rows, out.weights.detach()), keep)
        stats = {k: out.stats[k] for k in out.stats.keys()}
        stats["groups"] = groups_here
        t = float(valid.sum())
        return (
            out.loss * p_scale,
            stats,
            out.stats["entropy"].float() * t,
            out.stats["kl"].float() * t,
            ref_known,
        )

    # -- metrics --------------------------------------------------------------------------
    def _log_weights(
        self, inputs: dict[str, Any], weights: torch.Tensor, keep: torch.Tensor
    ) -> None:
        if not self.log_completions or self._haepo_weight_log is None or not self.model.training:
            return
        pairs = torch.stack([inputs["haepo_rows"].double(), weights.detach().double()], dim=1)
        pairs = self.accelerator.gather(pairs).cpu()  # dropped rows (keep False) have weight 0
        self._haepo_weight_log[pairs[:, 0].long()] = pairs[:, 1]

    def _record(self, mode, window, stats, entropy_sum, kl_sum, valid, g):  # type: ignore[no-untyped-def]
        """Accumulate the micro-batch's diagnostics; append whole-step values once per step."""
        zero = torch.zeros((), dtype=torch.float64, device=valid.device)
        local = torch.zeros(len(_SUMS), dtype=torch.float64, device=valid.device)
        if stats is not None:
            n = float(stats["groups"])
            for i, k in enumerate(("policy_loss", "ess", "max_weight", "weighted_return")):
                local[i] = float(stats[k]) * n
            local[4] = n
        local[5] = entropy_sum.double() if torch.is_tensor(entropy_sum) else zero
        local[6] = kl_sum.double() if kl_sum is not None else zero
        local[7] = float(valid.sum())
        ess_min = float(stats["ess_min"]) if stats is not None and stats["groups"] else math.inf
        if window is None:  # evaluation: one batch is the whole step
            self._flush(mode, local, ess_min, None, kl_sum is not None, g)
            return
        window["sums"] += local
        window["ess_min"] = min(window["ess_min"], ess_min)
        window["remaining"] -= 1
        if window["remaining"] == 0:
            self._flush(
                mode,
                window["sums"],
                window["ess_min"],
                window.get("stats"),
                kl_sum is not None,
                g,
                window.get("policy_loss"),
            )

    def _flush(self, mode, sums, ess_min, split_stats, kl_known, g, policy_loss=None):  # type: ignore[no-untyped-def]
        device = sums.device
        totals = self.accelerator.reduce(sums.clone(), reduction="sum")
        mins = self.accelerator.gather(torch.tensor([ess_min], dtype=torch.float64, device=device))
        metrics = self._metrics[mode]
        if split_stats is not None:
            values = dict(split_stats, policy_loss=policy_loss)
        else:
            groups = float(totals[4])
            if groups == 0:
                values = None
            else:
                values = {
                    "policy_loss": float(totals[0]) / groups,
                    "ess": float(totals[1]) / groups,
                    "max_weight": float(totals[2]) / groups,
                    "weighted_return": float(totals[3]) / groups,
                    "ess_min": float(mins.min()),
                }
        if values is not None:
            for k in ("policy_loss", "ess", "ess_min", "max_weight", "weighted_return"):
                metrics[f"haepo/{k}"].append(values[k])
            metrics["haepo/ess_fraction"].append(values["ess"] / g)
        tokens = max(float(totals[7]), 1.0)
        entropy = float(totals[5]) / tokens
        metrics["haepo/entropy"].append(entropy)
        metrics["entropy"].append(entropy)
        if kl_known:
            kl = float(totals[6]) / tokens
            metrics["haepo/kl"].append(kl)
            metrics["kl"].append(kl)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        # TRL averages every metric over the logging interval; a minimum must stay a minimum.
        if metrics.get("haepo/ess_min"):
            metrics["haepo/ess_min"] = [min(metrics["haepo/ess_min"])]
        if self.log_completions and self._haepo_weight_log is not None:
            column = self._logs["extra"]["haepo_weight"]
            column.clear()
            column.extend(self._haepo_weight_log.tolist()[-len(self._logs["prompt"]) :])
        super().log(logs, start_time)
