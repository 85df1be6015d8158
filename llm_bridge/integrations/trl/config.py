"""The TRL engine's settings: a ``TrainConfig`` translated to TRL's ``GRPOConfig``
(``grpo_args``; the settings of ours TRL lacks, the probe's and the run log's, stay in the
``TrainConfig`` that the run-log callback reads), what ``config.json`` records
(``run_dir_config``), and every setting the engine cannot honour, refused by name in one
function (``refuse_for_trl``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from trl import GRPOConfig

from llm_bridge.config import OptimizerName, TrainConfig, resolve_device
from llm_bridge.mismatch import trl_importance_sampling_args
from llm_bridge.reporters import parse_report_to, trl_report_to
from llm_bridge.run_dir import TRL_DIR
from llm_bridge.tasks import Task, response_budget
from softmax_theory.group_advantages import AdvantageEstimator
from softmax_theory.policy import CovScope, PolicyLossConfig
from softmax_theory.runlog import to_jsonable

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


def trl_batch_shape(cfg: TrainConfig, num_processes: int) -> dict[str, int]:
    """GRPOConfig's batch settings for a TrainConfig: per_device_train_batch_size = the
    micro-batch, gradient accumulation = micro-batches per mini-batch and process,
    steps_per_generation = micro-batches per generation batch and process."""
    mini = cfg.mini_batch_responses
    micro = cfg.micro_batch_size or mini // num_processes
    if micro == 0 or mini % (micro * num_processes):
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


def refuse_for_trl(
    policy_loss: PolicyLossConfig,
    num_processes: int,
    cfg: TrainConfig | None = None,
    args: GRPOConfig | None = None,
) -> None:
    """Refuse, by name and with what to do instead, every setting the TRL engine cannot run as
    our trainer does: of the ``TrainConfig`` (``cfg``, from ``llm-bridge train``), of the loss,
    and of a ``GRPOConfig`` a library caller built (``args``). TRL's prompts are checked where
    they are made (``data.trl_prompt``)."""
    if cfg is not None:
        if cfg.control.on and num_processes > 1:
            raise ValueError(
                "entropy_control: one process only in the TRL engine (the controller's entropy "
                "gradient is not reduced across processes); use one process, or --engine ours"
            )
        if cfg.val_k is not None:
            raise ValueError(
                "val_k: TRL's evaluation reports the mean reward only; use --engine ours for pass@K"
            )
        if cfg.generate_batch_size is not None:
            raise ValueError(
                "generate_batch_size: TRL generates a process's whole generation batch in one "
                "call; use --engine ours, or more processes"
            )
        accumulation = trl_batch_shape(cfg, num_processes)["gradient_accumulation_steps"]
    else:
        accumulation = 1 if args is None else args.gradient_accumulation_steps
    # the controls that read something TRL's loss never sees: the whole step's batch, a
    # pre-pass over it, or the reference log-probs TRL computes only for its own KL
    if policy_loss.cov_scope is CovScope.GLOBAL:
        raise ValueError(
            "cov_scope: global selects once over the whole step's batch, which TRL's loss never "
            "sees at once; use cov_scope micro, or --engine ours"
        )
    if policy_loss.cov_scope is CovScope.MINI and (accumulation > 1 or num_processes > 1):
        raise ValueError(
            "cov_scope: mini selects over the optimiser mini-batch, which TRL splits into "
            "micro-batches and processes; use cov_scope micro or one micro-batch per update"
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
    if policy_loss.entropy_target is not None:
        raise ValueError(
            "entropy_target: the adaptive coefficient is set from the whole step's entropy "
            "before the update, which TRL's loss does not see; use a fixed entropy_coeff"
        )
    if args is not None:
        defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
        for name, instead in REPLACED_BY_OURS.items():
            if getattr(args, name) != defaults[name]:
                raise ValueError(
                    f"{name}: the TRL engine uses our loss and advantages; set {instead} instead"
                )
        if args.beta != policy_loss.kl_loss_coef:
            raise ValueError(
                f"beta: the TRL engine adds our KL term; set GRPOConfig.beta to kl_loss_coef "
                f"({policy_loss.kl_loss_coef}) so that TRL loads the reference model"
            )


def grpo_args(
    cfg: TrainConfig, out: Path, task: Task, num_processes: int
) -> tuple[GRPOConfig, int]:
    """The GRPOConfig that honours ``cfg`` (``engine.train_with_trl`` lists the mapping), and
    the number of held-out prompts it validates on."""
    on_gpu = resolve_device(cfg.device).type == "cuda"
    updates = cfg.updates_per_step
    targets = parse_report_to(cfg.report_to)
    return GRPOConfig(
        output_dir=str(out / TRL_DIR),
        **trl_batch_shape(cfg, num_processes),
        num_iterations=cfg.epochs,
        num_generations=cfg.group_size,
        max_completion_length=response_budget(task, cfg.max_new_tokens),
        mask_truncated_completions=cfg.mask_truncated,
        temperature=cfg.temperature,
        top_k=0,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_steps * updates,  # our schedule: the trainer's create_scheduler
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
        save_total_limit=1,  # the latest state only, as our engine
        report_to=trl_report_to(targets),
        **trl_importance_sampling_args(cfg.policy_loss),
        seed=cfg.seed,
        use_cpu=not on_gpu,
        bf16=on_gpu,
        use_vllm=cfg.backend.value == "vllm",
        vllm_mode="colocate",  # the engine in the trainer's process, as our backend
    ), min(cfg.val_prompts, len(task.test))


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


__all__ = [
    "REPLACED_BY_OURS",
    "grpo_args",
    "refuse_for_trl",
    "run_dir_config",
    "trl_batch_shape",
]
