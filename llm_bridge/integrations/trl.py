"""Our losses, advantages and entropy probe inside TRL's GRPOTrainer (extra ``trl``).

``CovGRPOTrainer`` keeps TRL's generation, rewards, distribution and logging, and replaces what a
setting of ours defines:

- the advantages: our registry (``softmax_theory.group_advantages``) on TRL's gathered rewards;
- the policy loss: ``llm_bridge.losses.compute_policy_loss`` and ``agg_loss``, with the
  normalisers that make every ``loss_agg_mode`` mean what it means in our trainer (token-mean:
  TRL's ``num_items_in_batch`` rule), and TRL's features kept: the tool mask, the off-policy
  sequence mask, vLLM's importance-sampling correction and the MoE auxiliary loss;
- the probe: ``EntropyProbeCallback`` measures each generation batch (one of our steps) with the
  same streaming code as our trainer (``llm_bridge.probe``), gathers every rank's tokens, writes
  one record per step from rank 0, and puts the record into TRL's own log stream as ``probe/…``.

TRL settings that our loss replaces are refused when changed, naming what to set instead;
``train_with_trl`` maps a ``TrainConfig`` onto ``GRPOConfig`` and refuses the fields TRL cannot
honour, with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softmax_theory.inputs import MissingExtra

try:
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise MissingExtra("engine: trl needs TRL: pip install 'entropy-mechanism[trl]'") from err

from llm_bridge.losses import LossInputs, agg_loss, compute_policy_loss
from llm_bridge.probe import (
    gather_tokens,
    measure_tokens,
    parameter_delta,
    probe_record,
    snapshot,
)
from llm_bridge.rollout import Rollouts
from softmax_theory.group_advantages import (
    AdvantageEstimator,
    check_w_reinforce_lambda,
    compute_advantages,
)
from softmax_theory.policy import CovScope, PolicyLossConfig
from softmax_theory.registry import parse_choice
from softmax_theory.runlog import (
    CONFIG_FILE,
    STEPS_FILE,
    RunWriter,
    check_resumable,
    to_jsonable,
    truncate_steps,
)
from softmax_theory.stats import top_covariance_means

PROBE_DIR = "entropy_probe"
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
TOKENS_DIR = "tokens"

# GRPOConfig fields whose job our PolicyLossConfig and advantage estimator do: changing one would
# be ignored, so it is refused with the setting to use instead.
REPLACED_BY_OURS = {
    "loss_type": "loss_agg_mode (token-mean is TRL's dapo)",
    "epsilon": "clip_ratio_low",
    "epsilon_high": "clip_ratio_high",
    "delta": "clip_ratio_c",
    "top_entropy_quantile": "top_entropy_ratio",
    "entropy_coef": "entropy_coeff",
    "use_adaptive_entropy": "entropy_target (not available in the TRL engine)",
    "importance_sampling_level": "loss_mode",
    "scale_rewards": "advantage",
    "multi_objective_aggregation": "advantage (rewards are summed, then estimated)",
    "use_bias_correction_kl": "kl_loss_coef and kl_loss_type",
}


def refuse_replaced_settings(args: GRPOConfig, allowed: frozenset[str] = frozenset()) -> None:
    """Raise naming the first GRPOConfig field of ``REPLACED_BY_OURS`` changed from its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    for name, instead in REPLACED_BY_OURS.items():
        if name not in allowed and getattr(args, name) != defaults[name]:
            raise ValueError(
                f"{name}: the TRL engine uses our loss and advantages; set {instead} instead"
            )


def refuse_unsupported_controls(policy_loss: PolicyLossConfig) -> None:
    """Refuse, by name, the controls the TRL engine cannot run as our trainer does: each reads
    something TRL's loss never sees (the whole step's batch, a pre-pass over it, or the
    reference log-probs TRL computes only for its own KL)."""
    if policy_loss.cov_scope is CovScope.GLOBAL:
        raise ValueError(
            "cov_scope: global selects once over the whole step's batch, which TRL's loss never "
            "sees at once; use cov_scope micro, or --engine ours"
        )
    if policy_loss.needs_score:
        raise ValueError(
            "cov_selector: the oracle needs a pre-pass over the step's tokens that TRL does not "
            "make; use --engine ours"
        )
    if policy_loss.needs_reference and policy_loss.kl_loss_coef == 0:
        raise ValueError(
            f"loss_mode: {policy_loss.loss_mode.value} reads the reference log-probs, which TRL "
            "computes only for a KL penalty (beta > 0); use --engine ours"
        )


class CovGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with our advantages, policy loss and (optionally) entropy probe.

    Args (beyond GRPOTrainer's):
      policy_loss: the loss and the controls. A KL penalty (``kl_loss_coef`` > 0) needs TRL's
        reference model: set ``GRPOConfig.beta`` to the same value.
      advantage: the advantage estimator, applied to TRL's gathered rewards.
      w_reinforce_lambda: λ of the ``w_reinforce`` estimator.
      probe_dir: our run directory (``config.json`` + ``steps.jsonl``); None disables the probe.
      probe_every, probe_responses, probe_jvp, micro_batch_size, token_steps_every,
      cov_table_steps: as in ``TrainConfig``.
      run_config: what ``config.json`` records (the TrainConfig when called by the CLI).
      resume_step: the global step of the TRL checkpoint being resumed; the run directory keeps
        the records of the steps before it.
      progress: called with each step's record on the main process.
    """

    def __init__(
        self,
        *args: Any,
        policy_loss: PolicyLossConfig | None = None,
        advantage: str | AdvantageEstimator = AdvantageEstimator.GRPO,
        w_reinforce_lambda: float | None = None,
        probe_dir: str | os.PathLike | None = None,
        probe_every: int = 1,
        probe_responses: int | None = None,
        probe_jvp: bool = True,
        micro_batch_size: int | None = None,
        token_steps_every: int = 0,
        cov_table_steps: tuple[int, ...] = (0,),
        run_config: dict[str, Any] | None = None,
        resume_step: int | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
        **kwargs: Any,
    ):
        self.policy_loss = policy_loss or PolicyLossConfig()
        self.advantage = parse_choice(AdvantageEstimator, advantage, "advantage")
        check_w_reinforce_lambda(self.advantage, w_reinforce_lambda)
        self.w_reinforce_lambda = w_reinforce_lambda
        refuse_unsupported_controls(self.policy_loss)
        args_ = kwargs.get("args")
        if args_ is not None:
            refuse_replaced_settings(args_)
            if args_.beta != self.policy_loss.kl_loss_coef:
                raise ValueError(
                    f"beta: the TRL engine adds our KL term; set GRPOConfig.beta to kl_loss_coef "
                    f"({self.policy_loss.kl_loss_coef}) so that TRL loads the reference model"
                )
        if self.policy_loss.entropy_target is not None:
            raise ValueError(
                "entropy_target: the adaptive coefficient is set from the whole step's entropy "
                "before the update, which TRL's loss does not see; use a fixed entropy_coeff"
            )
        super().__init__(*args, **kwargs)
        self.cov_generator = torch.Generator().manual_seed(self.args.seed)
        self.updates_per_step = (
            self.args.steps_per_generation // self.args.gradient_accumulation_steps
        ) * self.num_iterations
        self._refuse_unhonoured_scope()
        self._rewards: torch.Tensor | None = None
        self.probe_pending: dict[str, Any] | None = None
        self.probe_callback: EntropyProbeCallback | None = None
        if probe_dir is not None:
            self.probe_callback = EntropyProbeCallback(
                self,
                Path(probe_dir),
                ProbeOptions(
                    every=probe_every,
                    responses=probe_responses,
                    jvp=probe_jvp,
                    micro_batch_size=micro_batch_size,
                    token_steps_every=token_steps_every,
                    cov_table_steps=tuple(cov_table_steps),
                ),
                run_config or {},
                resume_step,
                progress,
            )
            self.add_callback(self.probe_callback)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Our warm-up (``warmup_factor``: linear from 1/W, as our trainer; TRL's own starts at
        0) over ``args.warmup_steps`` optimiser updates, then constant."""
        from llm_bridge.config import warmup_factor

        if self.lr_scheduler is None:
            warmup = self.args.warmup_steps
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, lambda u: warmup_factor(u, warmup)
            )
        return self.lr_scheduler

    def _refuse_unhonoured_scope(self) -> None:
        lc = self.policy_loss
        if lc.cov_scope is CovScope.MINI and (
            self.args.gradient_accumulation_steps > 1 or self.accelerator.num_processes > 1
        ):
            raise ValueError(
                "cov_scope: mini selects over the optimiser mini-batch, which TRL splits into "
                "micro-batches and processes; use cov_scope micro or one micro-batch per update"
            )

    # -- advantages ----------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        self._rewards = rewards_per_func  # gathered over processes: [N_global, n_funcs]
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
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
        if self.model.training and self.probe_callback is not None:
            self.probe_callback.on_generation(out, total, group[local])
        return out

    # -- the loss ------------------------------------------------------------------------------

    def _normalisers(self, inputs) -> dict[str, Any]:
        """agg_loss's normalisers for one micro-batch, so that the accumulated and data-parallel
        gradient is the one of the optimiser step's loss in our trainer's sense."""
        args, n_proc = self.args, self.accelerator.num_processes
        ga = self.current_gradient_accumulation_steps if self.model.training else 1
        spg = args.steps_per_generation if self.model.training else 1
        mask = inputs["completion_mask"]
        return {
            "dp_size": n_proc,
            # TRL's num_items_in_batch spans the generation batch: ÷ optimiser steps per generation
            "batch_num_tokens": inputs["num_items_in_batch"].clamp(min=1.0) * ga / spg,
            "global_batch_size": mask.shape[0] * ga * n_proc,
            "loss_scale_factor": self.policy_loss.loss_scale_factor
            or float(args.max_completion_length),
        }

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = (
            completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        )
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
        )
        out = compute_policy_loss(inp, self.policy_loss, generator=self.cov_generator)
        per_token = out.per_token_loss
        if self.off_policy_mask_threshold is not None:  # TRL's sequence mask (DeepSeek-V3.2)
            per_token = per_token * self.get_off_policy_mask(
                advantages=advantages,
                per_token_logps=logps,
                sampling_per_token_logps=inputs.get("sampling_per_token_logps", old),
                mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold,
            )
        if self.use_vllm and self.vllm_importance_sampling_correction:
            per_token = per_token * inputs["importance_sampling_ratio"]
        loss = agg_loss(
            per_token, mask, self.policy_loss.loss_agg_mode, **self._normalisers(inputs)
        )
        mode = "train" if self.model.training else "eval"
        if self.aux_loss_enabled:
            ga = self.current_gradient_accumulation_steps if mode == "train" else 1
            loss = loss + self.router_aux_loss_coef * aux_loss / ga
        for key, value in out.metrics.items():
            self._metrics[mode][key].append(float(value))
        # TRL's own entropy metric, so its log keeps the key its users read
        self._metrics[mode]["entropy"].append(float(entropies.detach()[mask.bool()].mean()))
        return loss


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
    every: int = 1
    responses: int | None = None
    jvp: bool = True
    micro_batch_size: int | None = None
    token_steps_every: int = 0
    cov_table_steps: tuple[int, ...] = (0,)


class EntropyProbeCallback(TrainerCallback):
    """Probe each generation batch (one GRPO step) after its last optimiser update.

    At generation the trainer hands over the batch and θ_old (the parameters before this
    batch's first update); after the batch's last update, the probe streams its micro-batches
    (``measure_tokens``), gathers every rank's tokens, and rank 0 writes the step's record.
    """

    def __init__(
        self,
        trainer: CovGRPOTrainer,
        out: Path,
        options: ProbeOptions,
        run_config: dict[str, Any],
        resume_step: int | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.trainer, self.out, self.options = trainer, out, options
        self.run_config, self.resume_step, self.progress = run_config, resume_step, progress
        self.writer: RunWriter | None = None
        self.val_reward: float | None = None  # measured before the next step's first update

    @property
    def is_main(self) -> bool:
        return self.trainer.accelerator.is_main_process

    def step_index(self) -> int:
        return self.trainer.state.global_step // self.trainer.updates_per_step

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.is_main:
            return
        t = self.trainer
        config = run_dir_config(
            self.run_config, args, t.accelerator.num_processes, t.policy_loss, t.advantage
        )
        resuming = self.resume_step is not None and (self.out / STEPS_FILE).exists()
        if resuming:  # drop records of steps after the checkpoint TRL resumes from
            truncate_steps(self.out, self.resume_step // self.trainer.updates_per_step)
        self.writer = RunWriter(self.out, config, resume=resuming)

    def on_generation(self, out: dict[str, Any], rewards: np.ndarray, group: np.ndarray) -> None:
        """Called by the trainer with each training generation batch, before its updates."""
        k = self.step_index()
        # the learning rate of the step's first update, as our trainer records it
        head = {"step": k, "reward": float(rewards.mean()), "lr": self._lr()}
        if k % self.options.every:
            self.trainer.probe_pending = head
            return
        if out.get("pixel_values") is not None:
            raise ValueError(
                "probe: the probe reads text batches only; pass probe_dir=None for multimodal "
                "training"
            )
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        mask = out["completion_mask"]
        if "tool_mask" in out:
            mask = mask * out["tool_mask"]
        self.trainer.probe_pending = {
            **head,
            "roll": Rollouts.from_ids(
                out["prompt_ids"], out["prompt_mask"], out["completion_ids"], mask
            ),
            "advantages": out["advantages"][:, None].float() * mask,
            "group": torch.as_tensor(group),
            "params_before": snapshot(model),
        }

    def _lr(self) -> float:
        opt = self.trainer.optimizer
        return (
            float(opt.param_groups[0]["lr"]) if opt is not None else self.trainer.args.learning_rate
        )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_reward" in metrics:
            self.val_reward = float(metrics["eval_reward"])

    def on_step_end(self, args, state, control, **kwargs):
        pending = self.trainer.probe_pending
        if pending is None or state.global_step % self.trainer.updates_per_step:
            return
        self.trainer.probe_pending = None
        record: dict[str, Any] = {
            "step": pending["step"],
            "lr": pending["lr"],
            "algo": f"trl-grpo/{self.trainer.policy_loss.loss_mode.value}",
            "reward": pending["reward"],
        }
        if self.val_reward is not None:
            record["val_reward"], self.val_reward = self.val_reward, None
        if "roll" in pending:
            record.update(self._measure(pending))
        metrics = self.trainer._metrics["train"]
        for key, value in record.items():
            if key not in ("step", "algo") and isinstance(value, int | float):
                metrics[f"probe/{key}"].append(float(value))
        if self.is_main:
            self.writer.write(record)
            if self.progress is not None:
                self.progress(record)

    def _rows(self, n_rows: int, step: int) -> torch.Tensor | None:
        n = self.options.responses
        if n is None or n >= n_rows:
            return None
        gen = torch.Generator().manual_seed(self.trainer.args.seed * 1_000_033 + step)
        return torch.randperm(n_rows, generator=gen)[:n].sort().values

    def _measure(self, pending: dict[str, Any]) -> dict[str, Any]:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        was_training = model.training
        model.eval()
        params_before = pending["params_before"]
        roll = pending["roll"]
        delta = parameter_delta(model, params_before) if self.options.jvp else None
        tokens = measure_tokens(
            model,
            roll,
            pending["advantages"],
            pending["group"],
            params_before,
            delta,
            rows=self._rows(roll.input_ids.shape[0], pending["step"]),
            micro_batch_size=self.options.micro_batch_size,
            temperature=self.trainer.temperature,
        )
        model.train(was_training)
        tokens = gather_tokens(tokens)
        record = probe_record(tokens)
        record["entropy"] = float(tokens.values["entropy"].mean())
        record["probe/updates"] = self.trainer.updates_per_step
        k = pending["step"]
        if self.is_main and k in self.options.cov_table_steps:
            v = tokens.values
            cov = (v["logp"] - v["logp"].mean()) * (v["advantage"] - v["advantage"].mean())
            table = {"step": k, "n_tokens": tokens.n_tokens, **top_covariance_means(cov.numpy())}
            with open(self.out / "cov_tables.jsonl", "a") as f:
                f.write(json.dumps(table) + "\n")
        every = self.options.token_steps_every
        if self.is_main and every and k % every == 0:
            d = self.out / TOKENS_DIR
            d.mkdir(exist_ok=True)
            arrays = {key: v.numpy() for key, v in tokens.values.items()}
            np.savez_compressed(d / f"step_{k:06d}.npz", response=tokens.response.numpy(), **arrays)
        return record

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            self.writer.close()


def run_dir_config(
    run_config: dict[str, Any],
    args: GRPOConfig,
    num_processes: int,
    policy_loss: PolicyLossConfig,
    advantage: AdvantageEstimator,
) -> dict[str, Any]:
    """What the run directory's config.json records for a TRL-engine run."""
    return {
        **run_config,
        "engine": "trl",
        "trl": {
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "steps_per_generation": args.steps_per_generation,
            "num_iterations": args.num_iterations,
            "num_processes": num_processes,
            "max_steps": args.max_steps,
        },
        "policy_loss": to_jsonable(policy_loss),
        "advantage": AdvantageEstimator(advantage).value,
    }


def trl_dataset(examples, tokenizer):
    """Examples as TRL wants them: ``prompt`` (BOS + prompt text, the way our rollouts encode
    it) and ``answer``."""
    from datasets import Dataset

    bos = tokenizer.bos_token or ""
    return Dataset.from_dict(
        {"prompt": [bos + e.prompt for e in examples], "answer": [e.answer for e in examples]}
    )


def trl_reward(task):
    """The task's reward over TRL's completions."""

    def reward(completions, answer, **_):
        return [task.reward(c, a) for c, a in zip(completions, answer, strict=True)]

    reward.__name__ = f"{task.name}_reward"
    return reward


def trl_batch_shape(cfg, num_processes: int) -> dict[str, int]:
    """GRPOConfig's batch settings for a TrainConfig: per_device_train_batch_size = the
    micro-batch, gradient accumulation = micro-batches per mini-batch and process,
    steps_per_generation = micro-batches per generation batch and process."""
    mini = cfg.mini_batch_responses
    micro = cfg.micro_batch_size or mini // num_processes
    if mini % (micro * num_processes):
        raise ValueError(
            f"micro_batch_size: {micro} × {num_processes} process(es) must divide the "
            f"mini-batch of {mini} responses for the TRL engine"
        )
    accumulation = mini // (micro * num_processes)
    return {
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": accumulation,
        "steps_per_generation": accumulation * cfg.mini_batches,
    }


def grpo_config(cfg, out: Path, task, num_processes: int) -> tuple[GRPOConfig, int]:
    """The GRPOConfig that honours ``cfg`` (see ``train_with_trl``), and the number of held-out
    prompts it validates on."""
    from llm_bridge.config import Device, OptimizerName

    if cfg.device is Device.CUDA and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for, but no CUDA device is available")
    on_gpu = torch.cuda.is_available() and cfg.device is not Device.CPU
    updates = cfg.mini_batches * cfg.epochs
    val_prompts = min(cfg.val_prompts, len(task.test))
    return GRPOConfig(
        output_dir=str(out / "trl"),
        **trl_batch_shape(cfg, num_processes),
        num_iterations=cfg.epochs,
        num_generations=cfg.group_size,
        max_completion_length=task.max_answer_chars + 1,
        temperature=cfg.temperature,
        top_k=0,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_steps * updates,  # our schedule: CovGRPOTrainer.create_scheduler
        optim="sgd" if cfg.optimizer is OptimizerName.SGD else "adamw_torch",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping, as our trainer
        max_steps=cfg.steps * updates,
        beta=cfg.policy_loss.kl_loss_coef,
        logging_steps=1,
        eval_strategy="steps" if cfg.val_every else "no",
        eval_steps=max(1, cfg.val_every * updates),
        eval_on_start=bool(cfg.val_every),
        per_device_eval_batch_size=cfg.group_size,
        save_strategy="steps" if cfg.checkpoint_every else "no",
        save_steps=max(1, cfg.checkpoint_every * updates),
        report_to="none",
        seed=cfg.seed,
        use_cpu=not on_gpu,
        bf16=on_gpu,
        use_vllm=cfg.backend.value == "vllm",
    ), val_prompts


def train_with_trl(
    cfg,
    out: str | os.PathLike,
    resume: bool = False,
    task=None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Path:
    """``llm-bridge train --engine trl``: the same run through TRL's GRPOTrainer.

    Every TrainConfig field is honoured: ``group_size`` → ``num_generations``; the mini-batch and
    ``micro_batch_size`` → ``per_device_train_batch_size``, gradient accumulation and
    ``steps_per_generation``; ``epochs`` → ``num_iterations``; ``steps`` → ``max_steps`` × updates
    per step; ``advantage``, ``policy_loss`` → ours; validation → TRL's eval (``eval_on_start``,
    every ``val_every`` steps, on ``val_prompts`` held-out prompts, ``num_generations`` samples
    each); ``checkpoint_every`` → ``save_steps``; ``resume`` → ``resume_from_checkpoint``;
    ``device`` → ``use_cpu``; ``backend vllm`` → ``use_vllm``; the probe settings → our probe
    callback. Constant learning rate, Adam (``adamw_torch``, no weight decay) or SGD, no gradient
    clipping. The probe's ``step`` counts GRPO steps (generation batches), as ours.
    """
    from llm_bridge.models import load_model
    from llm_bridge.trainer import RESUME_FREE, load_task

    if cfg.val_k is not None:
        raise ValueError(
            "val_k: TRL's evaluation reports the mean reward only; use --engine ours for pass@K"
        )
    if cfg.generate_batch_size is not None:
        raise ValueError(
            "generate_batch_size: TRL generates a process's whole generation batch in one call; "
            "use --engine ours, or more processes"
        )
    refuse_unsupported_controls(cfg.policy_loss)
    task = task or load_task(cfg)
    out = Path(out)
    model, tokenizer = load_model(cfg.model)
    # torchrun and accelerate launch set WORLD_SIZE; accelerate's state is left for the Trainer
    # to create, with the device settings of GRPOConfig
    n_proc = int(os.environ.get("WORLD_SIZE", "1"))
    args, val_prompts = grpo_config(cfg, out, task, n_proc)
    checkpoint, resume_step = None, None
    if resume and (out / CONFIG_FILE).exists():
        config = run_dir_config(to_jsonable(cfg), args, n_proc, cfg.policy_loss, cfg.advantage)
        for line in check_resumable(out, config, RESUME_FREE | {"max_steps"}):
            log(f"resume: changed a setting that does not change results: {line}")
    if resume:
        ckpts = sorted((out / "trl").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if ckpts:
            checkpoint = str(ckpts[-1])
            resume_step = json.loads((ckpts[-1] / "trainer_state.json").read_text())["global_step"]
        else:
            resume_step = 0  # killed before its first checkpoint: start again from step 0
    elif (out / STEPS_FILE).exists() and (out / STEPS_FILE).stat().st_size > 0:
        raise FileExistsError(f"out: {out} already holds a run; choose a new directory or resume")
    trainer = CovGRPOTrainer(
        model=model,
        reward_funcs=trl_reward(task),
        args=args,
        train_dataset=trl_dataset(task.train, tokenizer),
        eval_dataset=trl_dataset(task.test[:val_prompts], tokenizer) if cfg.val_every else None,
        processing_class=tokenizer,
        policy_loss=cfg.policy_loss,
        advantage=cfg.advantage,
        w_reinforce_lambda=cfg.w_reinforce_lambda,
        probe_dir=out if cfg.probe else None,
        probe_every=cfg.probe_every,
        probe_responses=cfg.probe_responses,
        probe_jvp=cfg.probe_jvp,
        micro_batch_size=cfg.micro_batch_size,
        token_steps_every=cfg.token_steps_every,
        cov_table_steps=cfg.cov_table_steps,
        run_config=to_jsonable(cfg),
        resume_step=resume_step,
        progress=progress,
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(out / "final"))
    if trainer.accelerator.is_main_process:
        trainer.state.save_to_json(str(out / "trl" / "trainer_state.json"))
    trainer.accelerator.end_training()  # trackers finished, process group destroyed
    return out


__all__ = [
    "CovGRPOTrainer",
    "EntropyProbeCallback",
    "ProbeOptions",
    "grpo_config",
    "train_with_trl",
    "trl_dataset",
    "trl_reward",
]
