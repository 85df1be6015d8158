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
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softmax_theory.inputs import MissingExtra

try:
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise MissingExtra("engine: trl needs TRL: pip install 'entropy-mechanism[trl]'") from err

from llm_bridge.forward import stream_entropy_logp
from llm_bridge.interrupts import deferred_interrupts, interrupted_message
from llm_bridge.losses import LossInputs, agg_loss, compute_policy_loss, truncated_is_weights
from llm_bridge.mismatch import rollout_mismatch, trl_importance_sampling_args
from llm_bridge.probe import (
    ProbeTokens,
    gather_tokens,
    measure_tokens,
    parameter_delta,
    probe_record,
    probe_rows,
    snapshot,
    token_arrays,
)
from llm_bridge.reporters import parse_report_to, trl_report_to
from llm_bridge.rollout import (
    PromptFormat,
    Rollouts,
    plain_sampling,
    sampling_config,
    stop_token_ids,
    trl_prompt,
)
from llm_bridge.run_dir import (
    FINAL_DIR,
    TRL_DIR,
    RunDirectory,
    check_resume,
    checkpoint_note,
    holds_run,
    latest_trl_checkpoint,
    recorded_config,
)
from softmax_theory.group_advantages import (
    AdvantageEstimator,
    check_w_reinforce_lambda,
    compute_advantages,
)
from softmax_theory.policy import CovScope, PolicyLossConfig
from softmax_theory.registry import parse_choice
from softmax_theory.runlog import CONFIG_FILE, to_jsonable
from softmax_theory.token_stats import token_covariance

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


def _train_default(name: str) -> Any:
    """A TrainConfig field's default: the one home of the probe's and the run log's defaults."""
    from llm_bridge.config import TrainConfig

    f = TrainConfig.__dataclass_fields__[name]
    return f.default


@dataclasses.dataclass
class ProbedGRPOConfig(GRPOConfig):
    """``GRPOConfig`` with the settings of ours that TRL lacks: our run directory (one row per
    GRPO step, whatever the probe settings) and the entropy probe. Their defaults are
    ``TrainConfig``'s (read from it, so each has one home)."""

    run_dir: str | None = dataclasses.field(
        default=None,
        metadata={"help": "our run directory (config.json, steps.jsonl); None: no run log"},
    )
    # the trackers our run log also reports to (TRL's own metrics go to ``report_to``)
    report_to_ours: tuple[str, ...] = ()
    probe: bool = dataclasses.field(default=_train_default("probe"))
    probe_every: int = dataclasses.field(default=_train_default("probe_every"))
    probe_responses: int | None = dataclasses.field(default=_train_default("probe_responses"))
    probe_jvp: bool = dataclasses.field(default=_train_default("probe_jvp"))
    # responses per forward pass of the probe and the covariance table (None: a whole batch)
    probe_micro_batch_size: int | None = dataclasses.field(
        default=_train_default("micro_batch_size")
    )
    token_steps_every: int = dataclasses.field(default=_train_default("token_steps_every"))
    cov_table_steps: tuple[int, ...] = dataclasses.field(default=_train_default("cov_table_steps"))


class CovGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with our advantages, policy loss, run log and (optionally) entropy
    probe.

    Args (beyond GRPOTrainer's):
      policy_loss: the loss and the controls. A KL penalty (``kl_loss_coef`` > 0) needs TRL's
        reference model: set ``GRPOConfig.beta`` to the same value.
      advantage: the advantage estimator, applied to TRL's gathered rewards.
      w_reinforce_lambda: λ of the ``w_reinforce`` estimator.
      run_config: what ``config.json`` records (the TrainConfig when called by the CLI).
      resume_step: the global step of the TRL checkpoint being resumed; the run directory keeps
        the records of the steps before it.
      progress: called with each step's record on the main process.
    With ``args`` a ``ProbedGRPOConfig`` whose ``run_dir`` is set, every GRPO step (generation
    batch) gets one row in that run directory, and the probe adds its keys on probed steps.
    """

    def __init__(
        self,
        *args: Any,
        policy_loss: PolicyLossConfig | None = None,
        advantage: str | AdvantageEstimator = AdvantageEstimator.GRPO,
        w_reinforce_lambda: float | None = None,
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
        if self.use_vllm and self.vllm_mode == "colocate":
            self._sync_through_reload()
        self.cov_generator = torch.Generator().manual_seed(self.args.seed)
        self.updates_per_step = (
            self.args.steps_per_generation // self.args.gradient_accumulation_steps
        ) * self.num_iterations
        self._refuse_unhonoured_scope()
        self._rewards: torch.Tensor | None = None
        # the step's loss metrics, token-weighted over its updates (StepMeans)
        self.step_means = StepMeans()
        # keys the run log hands to TRL's own log stream at the step's last update
        self.log_extras: dict[str, float] = {}
        self.rollout_seconds = 0.0
        self.run_log: RunLogCallback | None = None
        run_dir = getattr(self.args, "run_dir", None)
        if run_dir is not None:
            probe = EntropyProbe(self) if self.args.probe else None
            self.run_log = RunLogCallback(
                self, Path(run_dir), probe, run_config or {}, resume_step, progress
            )
            self.add_callback(self.run_log)

    def _sync_through_reload(self) -> None:
        """On vLLM's CPU build TRL's colocate weight sync fails (it calls the engine model's
        ``load_weights`` on layers the CPU build has packed for its kernels: "'Parameter'
        object has no attribute 'weight_loader'"); there the engine takes the policy's weights
        through vLLM's in-place reload, as our backend does (``vllm_engine.load_policy_weights``).
        On CUDA TRL's own sync stays."""
        from llm_bridge.vllm_engine import load_policy_weights, vllm_platform

        if vllm_platform() != "cpu":
            return
        generation = self.vllm_generation

        def sync_weights() -> None:
            load_policy_weights(generation.llm, self.accelerator.unwrap_model(self.model))

        generation.sync_weights = sync_weights

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
        t0 = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        self.rollout_seconds = time.perf_counter() - t0
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
        if self.model.training and self.run_log is not None:
            self.run_log.on_generation(out, total, group[local], adv)
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
        # the sampler–trainer correction is ours (rollout_is, in compute_policy_loss, on the
        # policy term only); TRL's importance_sampling_ratio is left unapplied
        loss = agg_loss(
            per_token, mask, self.policy_loss.loss_agg_mode, **self._normalisers(inputs)
        )
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

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log, with the run log's keys (``probe/…``) at a step's last update."""
        if self.log_extras and self.model.training:
            logs = {**logs, **self.log_extras}
            self.log_extras = {}
        super().log(logs, start_time)


class StepMeans:
    """The loss metrics of one GRPO step, token-weighted over all its updates and micro-batches
    (as our trainer weighs them), and the sum of its micro-batch losses."""

    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, float], float]] = []
        self.loss = 0.0

    def add(self, metrics: dict[str, float], n_tokens: float, loss: float) -> None:
        self.parts.append((metrics, n_tokens))
        self.loss += loss

    def pop(self, updates: int, num_processes: int) -> dict[str, float]:
        """The step's means over every process (``token_weighted_means`` of every micro-batch,
        an all-reduce when there are several), and ``actor/pg_loss``, the mean mini-batch loss;
        then start the next step."""
        keys = sorted({k for metrics, _ in self.parts for k in metrics})
        sums = [sum(m[k] * n for m, n in self.parts if k in m) for k in keys]
        weights = [sum(n for m, n in self.parts if k in m) for k in keys]
        packed = torch.tensor(sums + weights + [self.loss], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(packed)
        values = packed.tolist()
        sums, weights, loss = values[: len(keys)], values[len(keys) : -1], values[-1]
        self.__init__()
        # token_weighted_means' reduction (Σ n·m / Σ n over the parts that carry a key), taken
        # over every process's sums
        means = {k: s / w for k, s, w in zip(keys, sums, weights, strict=True) if w > 0}
        if not means:
            return {}
        # each process's micro-batch loss is its share of the mini-batch loss × processes
        means["actor/pg_loss"] = loss / num_processes / updates
        return means


def _all_sum(values: list[float]) -> list[float]:
    packed = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(packed)
    return packed.tolist()


def _all_concat(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process's arrays, concatenated in rank order (identity with one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return arrays
    every: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, arrays)
    return {k: np.concatenate([part[k] for part in every]) for k in arrays}


class EntropyProbe:
    """The probe of one GRPO step in the TRL engine: at generation it keeps the batch and θ_old
    (the parameters before the batch's first update); after the batch's last update it streams
    the micro-batches (``measure_tokens``) and gathers every rank's tokens."""

    def __init__(self, trainer: CovGRPOTrainer):
        self.trainer = trainer
        self.pending: dict[str, Any] | None = None

    def begin(
        self,
        out: dict[str, Any],
        mask: torch.Tensor,
        group: np.ndarray,
        carried: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if out.get("pixel_values") is not None:
            raise ValueError(
                "probe: the probe reads text batches only; set probe=False for multimodal training"
            )
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        self.pending = {
            "roll": Rollouts.from_ids(
                out["prompt_ids"], out["prompt_mask"], out["completion_ids"], mask
            ),
            "advantages": out["advantages"][:, None].float() * mask,
            "group": torch.as_tensor(group),
            "params_before": snapshot(model),
            "carried": carried or {},
        }

    def measure(self, step: int) -> tuple[dict[str, Any], ProbeTokens]:
        pending, self.pending = self.pending, None
        args = self.trainer.args
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        was_training = model.training
        model.eval()
        params_before, roll = pending["params_before"], pending["roll"]
        # Δθ is the change the step's updates made (the probe runs after them)
        delta = parameter_delta(model, params_before) if args.probe_jvp else None
        tokens = measure_tokens(
            model,
            roll,
            pending["advantages"],
            pending["group"],
            params_before,
            delta,
            rows=probe_rows(args.seed, step, roll.input_ids.shape[0], args.probe_responses),
            micro_batch_size=args.probe_micro_batch_size,
            temperature=self.trainer.temperature,
            carried=pending["carried"],
        )
        model.train(was_training)
        tokens = gather_tokens(tokens)
        if "sampler_logp" not in tokens.values:  # the trainer sampled: the sampler is π_old
            tokens.values["sampler_logp"] = tokens.values["logp"]
        record = probe_record(tokens)
        record["entropy"] = float(tokens.values["entropy"].mean())  # θ_old, probed tokens
        record["probe/updates"] = self.trainer.updates_per_step
        return record, tokens


class RunLogCallback(TrainerCallback):
    """Our run directory for the TRL engine: one row per GRPO step (generation batch), with
    ``step``, ``reward``, ``lr``, ``entropy``, ``response_length``, the ``actor/*`` metrics and
    the step's times; the probe adds its keys on probed steps, the covariance table and token
    files are written as in our engine (``llm_bridge.run_dir``). An interrupt (``interrupted``
    returns True) ends training after the current step, with a checkpoint."""

    def __init__(
        self,
        trainer: CovGRPOTrainer,
        out: Path,
        probe: EntropyProbe | None,
        run_config: dict[str, Any],
        resume_step: int | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.trainer, self.out, self.probe = trainer, out, probe
        self.run_config, self.resume_step, self.progress = run_config, resume_step, progress
        self.run_dir: RunDirectory | None = None
        self.head: dict[str, Any] | None = None
        self.cov: np.ndarray | None = None
        self.val_reward: float | None = None  # measured before the next step's first update
        self.interrupted: Callable[[], bool] = lambda: False
        # the tokens that end a response (a response without one was cut at the budget)
        self.stop_ids: tuple[int, ...] = ()
        self.log: Callable[[str], None] = lambda _: None
        self._said_size = False  # a checkpoint's size is said once
        self.stopped_after: int | None = None

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
        resume_from = None
        if self.resume_step is not None and holds_run(self.out):
            resume_from = self.resume_step // t.updates_per_step
        self.run_dir = RunDirectory(
            self.out, config, resume_from=resume_from, report_to=args.report_to_ours
        )

    def on_generation(
        self, out: dict[str, Any], rewards: np.ndarray, group: np.ndarray, adv_all: np.ndarray
    ) -> None:
        """Called by the trainer with each training generation batch, before its updates;
        ``rewards`` and ``adv_all`` (the advantages) are every process's, ``group`` this
        process's responses' prompt groups."""
        t, args = self.trainer, self.trainer.args
        k = self.step_index()
        mask = out["completion_mask"]
        if "tool_mask" in out:
            mask = mask * out["tool_mask"]
        ids = out["completion_ids"]
        truncated = ~torch.isin(ids, torch.tensor(self.stop_ids, device=ids.device)).any(dim=1)
        # a truncated response has the whole budget, also where mask_truncated zeroed its mask
        lengths = torch.where(truncated, ids.shape[1], out["completion_mask"].sum(dim=1))
        length_sum, n_truncated, n_responses, n_valid = _all_sum(
            [float(lengths.sum()), float(truncated.sum()), float(ids.shape[0]), float(mask.sum())]
        )
        # the learning rate of the step's first update, as our trainer records it
        self.head = {
            "step": k,
            "reward": float(rewards.mean()),
            "lr": self._lr(),
            "response_length": length_sum / n_responses,
            "response/clip_frac": n_truncated / n_responses,
            "adv/nonzero_frac": float(np.mean(np.asarray(adv_all) != 0)),
            "time/rollout_s": t.rollout_seconds,
        }
        old = out.get("old_per_token_logps")
        sampler = out.get("sampling_per_token_logps")
        sampled_by_trainer = old is None or sampler is None
        if sampled_by_trainer:  # TRL's generation samples from π_old itself: no mismatch
            old = sampler = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        valid = mask.bool()
        flat = _all_concat(
            {
                "old": old[valid].double().cpu().numpy(),
                "sampler": sampler[valid].double().cpu().numpy(),
            }
        )
        if flat["old"].size:  # none when mask_truncated left every response out
            self.head.update(
                rollout_mismatch(
                    torch.from_numpy(flat["old"])[None],
                    torch.from_numpy(flat["sampler"])[None],
                    torch.ones(1, flat["old"].size),
                )
            )
        if n_valid == 0:  # mask_truncated left every response out: nothing to measure
            self.t_generated = time.perf_counter()
            return
        if self.probe is not None and k % args.probe_every == 0:
            # the probe's θ_old log-probs are the sampler's where the trainer sampled
            carried = {} if sampled_by_trainer else {"sampler_logp": sampler.float() * mask}
            lc = t.policy_loss
            if lc.rollout_is is not None:
                carried["is_capped"] = truncated_is_weights(
                    old, sampler, mask, lc.rollout_is, lc.rollout_is_threshold
                )[1]
            self.probe.begin(out, mask, group, carried)
        if k in args.cov_table_steps:
            self.cov = self._whole_batch_cov(out, mask)
        self.t_generated = time.perf_counter()

    def _whole_batch_cov(self, out: dict[str, Any], mask: torch.Tensor) -> np.ndarray:
        """The paper's token covariance over every valid token of the step, every process's, at
        θ_old: TRL's old log-probs where it computed them, else a pass before the first update
        (the model is still at θ_old then)."""
        old = out.get("old_per_token_logps")
        if old is None:
            model = self.trainer.accelerator.unwrap_model(self.trainer.model)
            roll = Rollouts.from_ids(
                out["prompt_ids"], out["prompt_mask"], out["completion_ids"], mask
            )
            old = stream_entropy_logp(
                model, roll, self.trainer.args.probe_micro_batch_size, self.trainer.temperature
            )[1]
        valid = mask.bool()
        adv = out["advantages"][:, None].expand_as(old)
        flat = _all_concat(
            {
                "logp": old[valid].double().cpu().numpy(),
                "advantage": adv[valid].double().cpu().numpy(),
            }
        )
        return token_covariance(flat["logp"], flat["advantage"], np.ones(flat["logp"].shape))

    def _lr(self) -> float:
        opt = self.trainer.optimizer
        return (
            float(opt.param_groups[0]["lr"]) if opt is not None else self.trainer.args.learning_rate
        )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_reward" in metrics:
            self.val_reward = float(metrics["eval_reward"])

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        if self.head is None or state.global_step % t.updates_per_step:
            return
        head, self.head = self.head, None
        k = head["step"]
        record: dict[str, Any] = {
            "step": k,
            "lr": head["lr"],
            "algo": f"trl-grpo/{t.policy_loss.loss_mode.value}",
            "reward": head["reward"],
            "response_length": head["response_length"],
            "response/clip_frac": head["response/clip_frac"],
            "adv/nonzero_frac": head["adv/nonzero_frac"],
            **{k: v for k, v in head.items() if k.startswith("rollout/")},
        }
        if self.val_reward is not None:
            record["val_reward"], self.val_reward = self.val_reward, None
        # TRL's own entropy (token mean over the step's updates); the probe's replaces it
        record.update(t.step_means.pop(t.updates_per_step, t.accelerator.num_processes))
        t_update = time.perf_counter()
        if self.probe is not None and self.probe.pending is not None:
            probed, tokens = self.probe.measure(k)
            record.update(probed)
            every = args.token_steps_every
            if self.is_main and every and k % every == 0:
                self.run_dir.write_tokens(k, token_arrays(tokens))
        record.update(
            {
                "time/rollout_s": head["time/rollout_s"],
                "time/update_s": t_update - self.t_generated,
                "time/probe_s": time.perf_counter() - t_update,
                "actor/entropy_coeff": t.policy_loss.entropy_coeff,
            }
        )
        if self.cov is not None:
            if self.is_main:
                self.run_dir.write_cov_table(k, self.cov)
            self.cov = None
        # into TRL's own log stream (and its report_to) as probe/…
        t.log_extras = {
            f"probe/{key}": float(value)
            for key, value in record.items()
            if key not in ("step", "algo") and isinstance(value, int | float)
        }
        if self.is_main:
            self.run_dir.write_step(record)
            if self.progress is not None:
                self.progress(record)
        if self.interrupted() and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_after = k

    def on_save(self, args, state, control, **kwargs):
        """Say the size of the first checkpoint TRL writes (the latest one is kept)."""
        if self._said_size or not self.is_main:
            return
        latest = latest_trl_checkpoint(self.out)
        if latest is not None:
            self._said_size = True
            self.log(checkpoint_note(latest[0], latest[1] // self.trainer.updates_per_step - 1))

    def on_train_end(self, args, state, control, **kwargs):
        if self.run_dir is not None:
            self.run_dir.close()


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


def trl_dataset(examples, tokenizer, fmt: PromptFormat | None = None):
    """Examples as TRL wants them: ``prompt`` such that TRL reads the tokens our rollouts read
    (``trl_prompt``: the conversation when the chat template renders it, else the raw text) and
    ``answer``."""
    from datasets import Dataset

    fmt = PromptFormat() if fmt is None else fmt
    return Dataset.from_dict(
        {
            "prompt": [trl_prompt(tokenizer, e.prompt, fmt) for e in examples],
            "answer": [e.answer for e in examples],
        }
    )


def trl_reward(task):
    """The task's reward over TRL's completions: texts, or (for a conversational dataset) the
    assistant message TRL wraps each one in."""

    def text(completion) -> str:
        return completion[-1]["content"] if isinstance(completion, list) else completion

    def reward(completions, answer, **_):
        return [task.reward(text(c), a) for c, a in zip(completions, answer, strict=True)]

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


def grpo_config(cfg, out: Path, task, num_processes: int) -> tuple[ProbedGRPOConfig, int]:
    """The GRPOConfig that honours ``cfg`` (see ``train_with_trl``), and the number of held-out
    prompts it validates on."""
    from llm_bridge.config import OptimizerName, resolve_device
    from llm_bridge.tasks import response_budget

    on_gpu = resolve_device(cfg.device).type == "cuda"
    updates = cfg.mini_batches * cfg.epochs
    val_prompts = min(cfg.val_prompts, len(task.test))
    return ProbedGRPOConfig(
        output_dir=str(out / TRL_DIR),
        **trl_batch_shape(cfg, num_processes),
        num_iterations=cfg.epochs,
        num_generations=cfg.group_size,
        max_completion_length=response_budget(task, cfg.max_new_tokens),
        mask_truncated_completions=cfg.mask_truncated,
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
        save_total_limit=1,  # the latest state only, as our engine
        report_to=trl_report_to(parse_report_to(cfg.report_to)),
        report_to_ours=parse_report_to(cfg.report_to),
        **trl_importance_sampling_args(cfg.policy_loss),
        seed=cfg.seed,
        use_cpu=not on_gpu,
        bf16=on_gpu,
        use_vllm=cfg.backend.value == "vllm",
        vllm_mode="colocate",  # the engine in the trainer's process, as our backend
        run_dir=str(out),
        probe=cfg.probe,
        probe_every=cfg.probe_every,
        probe_responses=cfg.probe_responses,
        probe_jvp=cfg.probe_jvp,
        probe_micro_batch_size=cfg.micro_batch_size,
        token_steps_every=cfg.token_steps_every,
        cov_table_steps=tuple(cfg.cov_table_steps),
    ), val_prompts


def train_with_trl(
    cfg,
    out: str | os.PathLike,
    task,
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Path:
    """``llm-bridge train --engine trl``: the same run through TRL's GRPOTrainer, into the same
    run directory (``llm_bridge.run_dir``); ``task`` as ``llm_bridge.engines.load_task`` gives.

    Every TrainConfig field is honoured or refused by name: ``group_size`` → ``num_generations``;
    the mini-batch and ``micro_batch_size`` → ``per_device_train_batch_size``, gradient
    accumulation and ``steps_per_generation``; ``epochs`` → ``num_iterations``; ``steps`` →
    ``max_steps`` × updates per step; ``advantage``, ``policy_loss`` → ours; validation → TRL's
    eval (``eval_on_start``, every ``val_every`` steps, on ``val_prompts`` held-out prompts,
    ``num_generations`` samples each); ``checkpoint_every`` → ``save_steps`` (the latest
    checkpoint kept); ``resume`` → ``resume_from_checkpoint``; ``device`` → ``use_cpu``;
    ``backend vllm`` → ``use_vllm``; the probe and run-log settings → ``ProbedGRPOConfig``.
    Our warm-up (``warmup_steps`` GRPO steps, linear from 1/W), then a constant learning rate;
    Adam (``adamw_torch``, no weight decay) or SGD; no gradient clipping. An interrupt finishes
    the current GRPO step, writes a TRL checkpoint and raises KeyboardInterrupt naming it.
    """
    from llm_bridge.config import RESUME_FREE
    from llm_bridge.models import check_run_inputs, load_config, load_model, load_tokenizer

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
    if cfg.backend.value == "vllm":
        from llm_bridge.vllm_engine import engine_environment, vllm_platform

        # one line when vLLM is missing (vllm_platform says how to get it); the engine in
        # process, with the CPU build's settings, before TRL builds it
        for key, value in engine_environment(vllm_platform()).items():
            os.environ.setdefault(key, value)
    out = Path(out)
    # torchrun and accelerate launch set WORLD_SIZE; accelerate's state is left for the Trainer
    # to create, with the device settings of GRPOConfig
    n_proc = int(os.environ.get("WORLD_SIZE", "1"))
    args, val_prompts = grpo_config(cfg, out, task, n_proc)
    checkpoint, resume_step = None, None
    load_config(cfg.model)  # a folder that is not a causal LM is named before anything else
    recorded = recorded_config(cfg, task, load_tokenizer(cfg.model))
    if resume and (out / CONFIG_FILE).exists():
        config = run_dir_config(recorded, args, n_proc, cfg.policy_loss, cfg.advantage)
        check_resume(out, config, RESUME_FREE | {"max_steps"}, log)
    if resume:
        latest = latest_trl_checkpoint(out)
        if latest is not None:
            checkpoint, resume_step = str(latest[0]), latest[1]
            log(f"resume: continuing at step {resume_step // (cfg.updates_per_step)}")
        else:
            resume_step = 0  # killed before its first checkpoint: start again from step 0
            log("resume: no checkpoint yet; starting again at step 0")
    elif holds_run(out):
        raise FileExistsError(f"out: {out} already holds a run; choose a new directory or resume")
    model, tokenizer = load_model(cfg.model)
    fmt = PromptFormat(cfg.chat_template, cfg.max_prompt_tokens)
    budget = args.max_completion_length
    check_run_inputs(cfg, task, model, tokenizer, fmt, budget, log)
    # TRL's sampling, like ours, is softmax(z/T) ending at the model's stop tokens: TRL reads its
    # stop ids from model.generation_config and leaves unset settings to the model's own, so the
    # plain config stands in for the model's while TRL is built and trains
    stops = stop_token_ids(model.generation_config, tokenizer)
    with plain_sampling(
        model, sampling_config(cfg.temperature, budget, stops, tokenizer.pad_token_id)
    ):
        trainer = CovGRPOTrainer(
            model=model,
            reward_funcs=trl_reward(task),
            args=args,
            train_dataset=trl_dataset(task.train, tokenizer, fmt),
            eval_dataset=trl_dataset(task.test[:val_prompts], tokenizer, fmt)
            if cfg.val_every
            else None,
            processing_class=tokenizer,
            policy_loss=cfg.policy_loss,
            advantage=cfg.advantage,
            w_reinforce_lambda=cfg.w_reinforce_lambda,
            run_config=recorded,
            resume_step=resume_step,
            progress=progress,
        )
        trainer.run_log.stop_ids = stops
        trainer.run_log.log = log
        if progress is not None:  # our progress line only: TRL's bars and printed log dicts go
            trainer.remove_callback(ProgressCallback)
            trainer.remove_callback(PrinterCallback)
        with deferred_interrupts(log) as interrupted:
            trainer.run_log.interrupted = interrupted
            trainer.train(resume_from_checkpoint=checkpoint)
    stopped_after = trainer.run_log.stopped_after
    if stopped_after is None and cfg.save_final:
        trainer.save_model(str(out / FINAL_DIR))
    if trainer.accelerator.is_main_process:
        trainer.state.save_to_json(str(out / TRL_DIR / "trainer_state.json"))
    trainer.accelerator.end_training()  # trackers finished, process group destroyed
    if stopped_after is not None:
        raise KeyboardInterrupt(interrupted_message(out, stopped_after))
    return out


__all__ = [
    "CovGRPOTrainer",
    "EntropyProbe",
    "ProbedGRPOConfig",
    "RunLogCallback",
    "StepMeans",
    "grpo_config",
    "train_with_trl",
    "trl_dataset",
    "trl_reward",
]
