"""TRL's GRPOTrainer with our advantages and policy loss, and nothing else of ours.

``RegistryLossTrainer`` keeps TRL's generation, rewards, distribution and logging, and replaces:

- the advantages: our registry (``softmax_theory.group_advantages``) on TRL's gathered rewards;
- the policy loss: any loss of our registry (``llm_bridge.losses.compute_policy_loss``) and
  ``agg_loss``, with the normalisers that make every ``loss_agg_mode`` mean what it means in
  our trainer (``update.loss_normalisers``), and TRL's features kept: the tool mask, the
  off-policy sequence mask and the MoE auxiliary loss;
- the schedule: our warm-up (``config.warmup_factor``);
- with ``control``, the entropy bonus: our controller (``llm_bridge.control.EntropyController``)
  sets it before each update from the step's entropy at θ_old (one forward over the generation
  batch, ours) and, for the predictive controller, from the forecast of the update; the
  coefficient it chose is TRL's own ``entropy_coef`` (logged under that name).

It keeps each training generation batch (``generation``: what the run log and the probe read,
``run_log.RunLogCallback``) and each update's loss metrics (``step_means``); it calls no
callback of ours.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from trl import GRPOTrainer

from llm_bridge.config import warmup_factor
from llm_bridge.control import EntropyController
from llm_bridge.forward import stream_entropy_logp
from llm_bridge.integrations.trl.config import refuse_for_trl
from llm_bridge.integrations.trl.distributed import StepMeans
from llm_bridge.losses import LossInputs, agg_loss
from llm_bridge.probe import unwrapped_optimizer
from llm_bridge.rollout import Rollouts
from llm_bridge.update import loss_normalisers, steered_loss
from softmax_theory.control import ControlConfig
from softmax_theory.group_advantages import (
    AdvantageEstimator,
    check_w_reinforce_lambda,
    compute_advantages,
)
from softmax_theory.policy import PolicyLossConfig
from softmax_theory.registry import parse_choice

# Inputs TRL passes to the model for vision-language batches; our loss passes them on too.
MULTIMODAL_KEYS = (
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


@dataclass(frozen=True)
class GenerationBatch:
    """One training generation batch (one GRPO step) as TRL scored it, with our advantages:
    ``out`` is TRL's dict (this process's responses); ``rewards`` and ``advantages`` [N_global]
    every process's, ``group`` [n_local] this process's prompt groups; ``seconds`` the time the
    generation and scoring took, ``finished`` when (``time.perf_counter``)."""

    out: dict[str, Any]
    rewards: np.ndarray
    advantages: np.ndarray
    group: np.ndarray
    seconds: float
    finished: float

    @property
    def mask(self) -> torch.Tensor:
        """[n_local, R] the tokens the loss reads (the tool mask applied)."""
        mask = self.out["completion_mask"]
        return mask * self.out["tool_mask"] if "tool_mask" in self.out else mask


class RegistryLossTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages and policy loss are ours (module docstring).

    Args (beyond GRPOTrainer's):
      policy_loss: the loss and the controls. A KL penalty (``kl_loss_coef`` > 0) needs TRL's
        reference model: set ``GRPOConfig.beta`` to the same value.
      advantage: the advantage estimator, applied to TRL's gathered rewards.
      w_reinforce_lambda: λ of the ``w_reinforce`` estimator.
      checked: the settings were refused already (``engine.train_with_trl`` does so before it
        loads the model); otherwise they are checked here (``config.refuse_for_trl``).
      control: an entropy controller's settings (one process only), run over ``control_steps``
        GRPO steps; ``control_records``: a resumed run's logged steps, its state's source.
    """

    def __init__(
        self,
        *args: Any,
        policy_loss: PolicyLossConfig | None = None,
        advantage: str | AdvantageEstimator = AdvantageEstimator.GRPO,
        w_reinforce_lambda: float | None = None,
        checked: bool = False,
        control: ControlConfig | None = None,
        control_steps: int = 0,
        control_records: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ):
        self.policy_loss = policy_loss or PolicyLossConfig()
        self.advantage = parse_choice(AdvantageEstimator, advantage, "advantage")
        check_w_reinforce_lambda(self.advantage, w_reinforce_lambda)
        self.w_reinforce_lambda = w_reinforce_lambda
        if not checked:
            # torchrun and accelerate launch set WORLD_SIZE before the Trainer starts them
            world = int(os.environ.get("WORLD_SIZE", "1"))
            refuse_for_trl(self.policy_loss, world, args=kwargs.get("args"))
        super().__init__(*args, **kwargs)
        self.cov_generator = torch.Generator().manual_seed(self.args.seed)
        self.updates_per_step = (
            self.args.steps_per_generation // self.args.gradient_accumulation_steps
        ) * self.num_iterations
        self._rewards: torch.Tensor | None = None
        self.generation: GenerationBatch | None = None  # the latest training generation batch
        self.step_means = StepMeans()  # the step's loss metrics, over its updates
        self.entropy_controller_config = control if control is not None and control.on else None
        self.entropy_controller_steps, self.entropy_controller_records = (
            control_steps,
            control_records or [],
        )
        self.entropy_controller: EntropyController | None = None  # built with the optimiser
        self.entropy_controller_entropy: float | None = None  # the step's entropy at θ_old

    def create_optimizer(self, model=None):
        """TRL's optimiser, and the entropy controller on it (its pre-hook then runs before
        each update, ahead of the probe's)."""
        opt = super().create_optimizer(model)
        if self.entropy_controller_config is not None and self.entropy_controller is None:
            policy = self.accelerator.unwrap_model(self.model)
            self.entropy_controller = EntropyController(
                policy,
                unwrapped_optimizer(opt),
                self.entropy_controller_config,
                self.entropy_controller_steps,
                policy.get_output_embeddings().weight.shape[0],
                self.updates_per_step,
            )
            self.entropy_controller.resume(self.entropy_controller_records)
        return opt

    def _begin_control(self, out) -> None:
        """The GRPO step's entropy at θ_old over its whole generation batch (the run log's
        ``entropy``), and the controller's start of the step."""
        mask = out["completion_mask"]
        if "tool_mask" in out:
            mask = mask * out["tool_mask"]
        roll = Rollouts.from_ids(out["prompt_ids"], out["prompt_mask"], out["completion_ids"], mask)
        policy = self.accelerator.unwrap_model(self.model)
        with torch.no_grad():
            entropy = stream_entropy_logp(
                policy, roll, self.args.per_device_train_batch_size, self.temperature
            )[0]
        valid = mask.bool()
        self.entropy_controller_entropy = (
            float(entropy[valid].double().mean()) if valid.any() else None
        )
        if self.entropy_controller_entropy is None:
            return
        k = self.state.global_step // self.updates_per_step
        self.entropy_controller.begin(k, self.entropy_controller_entropy)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Our warm-up (``warmup_factor``: linear from 1/W, as our trainer; TRL's own starts at
        0) over ``args.warmup_steps`` optimiser updates, then constant."""
        if self.lr_scheduler is None:
            warmup = self.args.warmup_steps
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, lambda u: warmup_factor(u, warmup)
            )
        return self.lr_scheduler

    # -- advantages ----------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        self._rewards = rewards_per_func  # gathered over processes: [N_global, n_funcs]
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        t0 = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        rewards = self._rewards.to(torch.float64)
        if torch.isnan(rewards).all(dim=1).any():
            raise ValueError(
                "reward: a completion has no reward (every reward function returned None); "
                "the advantage estimators need one per completion"
            )
        weights = self.reward_weights.to(rewards.device, torch.float64)
        total = (rewards * weights).nansum(dim=1).cpu().numpy()  # [N_global]
        group = np.arange(total.size) // self.num_generations
        adv = compute_advantages(self.advantage, total, group, self.w_reinforce_lambda)
        n_local = out["completion_ids"].shape[0]
        start = self.accelerator.process_index * n_local
        local = slice(start, start + n_local)
        out["advantages"] = torch.as_tensor(adv[local], dtype=torch.float32).to(
            out["completion_ids"].device
        )
        if self.model.training and self.entropy_controller is not None:
            self._begin_control(out)
        if self.model.training:
            now = time.perf_counter()
            self.generation = GenerationBatch(out, total, adv, group[local], now - t0, now)
        return out

    # -- the loss ------------------------------------------------------------------------------

    def _normalisers(self, inputs) -> dict[str, Any]:
        """agg_loss's normalisers for one micro-batch, so that the accumulated and data-parallel
        gradient is the one of the optimiser step's loss in our trainer's sense. TRL's
        ``num_items_in_batch`` counts the generation batch's tokens over every process."""
        args, n_proc = self.args, self.accelerator.num_processes
        training = self.model.training
        ga = self.current_gradient_accumulation_steps if training else 1
        spg = args.steps_per_generation if training else 1
        return loss_normalisers(
            float(inputs["num_items_in_batch"].clamp(min=1.0)),
            spg // ga,  # optimiser updates per pass over the generation batch
            float(inputs["completion_mask"].shape[0] * ga * n_proc),
            self.policy_loss.loss_scale_factor,
            args.max_completion_length,
            dp_size=n_proc,
        )

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = (
            completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        )
        if not mask.any():  # every completion masked (mask_truncated): nothing to learn from
            return (completion_ids.float() * 0).sum().requires_grad_()
        logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{k: inputs.get(k) for k in MULTIMODAL_KEYS},
        )
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        advantages = advantages.expand_as(logps).to(logps.dtype)
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        inp = LossInputs(
            log_prob=logps,
            old_log_prob=old,
            advantages=advantages,
            response_mask=mask,
            entropy=entropies,
            ref_log_prob=inputs.get("ref_per_token_logps"),
            # vLLM's log-probs of its samples; TRL's own generation samples from π_old
            sampler_log_prob=inputs.get("sampling_per_token_logps", old),
        )
        steer = (
            self.entropy_controller.loss_settings()
            if self.entropy_controller and self.model.training
            else {}
        )
        out, kl_part = steered_loss(inp, self.policy_loss, self.cov_generator, **steer)
        per_token = out.per_token_loss
        if self.off_policy_mask_threshold is not None:  # TRL's sequence mask (DeepSeek-V3.2)
            keep = self.get_off_policy_mask(
                advantages=advantages,
                per_token_logps=logps,
                sampling_per_token_logps=inputs.get("sampling_per_token_logps", old),
                mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold,
            )
            per_token = per_token * keep
            kl_part = None if kl_part is None else kl_part * keep  # the loss's own part
        # the sampler–trainer correction is ours (rollout_is, in compute_policy_loss, on the
        # policy term only); TRL's importance_sampling_ratio is left unapplied
        norms = self._normalisers(inputs)
        loss = agg_loss(per_token, mask, self.policy_loss.loss_agg_mode, **norms)
        if steer:  # the controller's gradients, before TRL's backward of the loss
            h_term = agg_loss(entropies, mask, self.policy_loss.loss_agg_mode, **norms)
            self.entropy_controller.entropy_term(h_term, entropies, mask)
        if kl_part is not None:
            steer["actuator_term"](agg_loss(kl_part, mask, self.policy_loss.loss_agg_mode, **norms))
        mode = "train" if self.model.training else "eval"
        if self.aux_loss_enabled:
            ga = self.current_gradient_accumulation_steps if mode == "train" else 1
            loss = loss + self.router_aux_loss_coef * aux_loss / ga
        metrics = {key: float(value) for key, value in out.metrics.items()}
        # TRL's own entropy metric, so its log keeps the key its users read
        metrics["entropy"] = float(entropies.detach()[mask.bool()].mean())
        for key, value in metrics.items():
            self._metrics[mode][key].append(value)
        if mode == "train":
            self.step_means.add(metrics, float(mask.sum()), float(loss.detach()))
        return loss


__all__ = ["GenerationBatch", "MULTIMODAL_KEYS", "RegistryLossTrainer"]
