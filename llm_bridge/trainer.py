"""GRPO for a causal language model on one machine, with the per-step entropy probe.

Each step: sample P prompts, G responses each (the rollout backend, at temperature T), score them
and compute advantages (``llm_bridge.scoring``), take ``epochs × mini_batches`` optimiser updates
on the policy loss (``llm_bridge.update``), probed on the step's own tokens
(``llm_bridge.probe.StepProbe``), and write the step's record (``llm_bridge.step_record``).
Every pass over the batch (old log-probs and entropy, reference log-probs, the update, the
probe) streams micro-batches of ``micro_batch_size`` responses, so full-vocabulary tensors exist
for at most one chunk at a time. The run's setup, checks and resume are the TRL engine's too
(``llm_bridge.run_setup``); checkpoints (``save_pretrained`` + optimiser and generator state)
let ``resume`` continue a killed run without losing or repeating a step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from llm_bridge.checkpoint import Checkpointer, TrainState
from llm_bridge.config import RESUME_FREE, OptimizerName, TrainConfig, warmup_factor
from llm_bridge.control import EntropyController
from llm_bridge.forward import head_spec
from llm_bridge.interrupts import deferred_interrupts, interrupted_message
from llm_bridge.memory import (
    ModelShape,
    StepMemory,
    available_memory,
    check_step_fits,
    estimate_step_memory,
)
from llm_bridge.models import load_weights
from llm_bridge.probe import StepProbe, carried_values, stream_own_entropy_term
from llm_bridge.rollout import Rollouts, generate_in_calls, make_backend
from llm_bridge.run_dir import FINAL_DIR
from llm_bridge.run_setup import prepare_run
from llm_bridge.scoring import sample_prompts, score_rollouts, validate
from llm_bridge.step_record import covariance_tokens, finish_step, step_record, step_times
from llm_bridge.tasks import Task
from llm_bridge.update import StepBatch, UpdateResult, update
from softmax_theory.control import Actuator, ControlConfig, Controller
from softmax_theory.policy import COV_LOSSES, adaptive_entropy_coef
from softmax_theory.runlog import read_run

# Called after each step with its record; True ends the run after that step, with a checkpoint.
StopHook = Callable[[dict[str, Any]], bool]


def control_gradients(cfg: ControlConfig) -> int:
    """The parameter-sized gradients a controller keeps (``memory.estimate_step_memory``)."""
    if cfg.entropy_control is not Controller.PREDICTIVE:
        return 0
    return 2 if cfg.control_actuator is Actuator.PPO_KL_COEF else 1


class ProbedGRPOTrainer:
    """GRPO with per-step entropy probes; see the module docstring."""

    def __init__(
        self,
        cfg: TrainConfig,
        out: str | os.PathLike,
        task: Task,
        resume: bool = False,
        log: Callable[[str], None] = lambda _: None,
    ):
        """``task``: the prompts and the reward (``llm_bridge.engines.load_task(cfg)`` reads
        ``cfg.task``/``cfg.dataset``; a task of one's own, e.g. with a custom reward, works too)."""
        setup = prepare_run(
            cfg,
            out,
            task,
            resume=resume,
            log=log,
            resume_free=RESUME_FREE,
            engine_config=lambda recorded: {"trainer": "llm_bridge.trainer", **recorded},
        )
        self.cfg, self.out, self.log, self.task = cfg, setup.out, log, task
        self.device, self.model, self.tokenizer = setup.device, setup.model, setup.tokenizer
        self.max_new_tokens, self.prompt_length = setup.budget, setup.prompt_length
        self.ref_model = None
        if cfg.policy_loss.needs_reference:
            self.ref_model = load_weights(cfg.model, self.device, self.model.dtype)
            self.ref_model.eval().requires_grad_(False)
        self.backend = make_backend(
            cfg.backend, self.model, self.tokenizer, cfg.model, setup.prompt_format
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = (
            torch.optim.Adam(params, lr=cfg.lr)
            if cfg.optimizer is OptimizerName.ADAM
            else torch.optim.SGD(params, lr=cfg.lr)
        )
        warmup = cfg.warmup_steps * cfg.updates_per_step
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda u: warmup_factor(u, warmup)
        )
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.state = TrainState(step=0, entropy_coeff=cfg.policy_loss.entropy_coeff)
        check_step_fits(
            self.step_memory(), available_memory(self.device), cfg.micro_batch_size is not None
        )
        self.checkpointer = Checkpointer(
            self.out, self.model, self.tokenizer, self.opt, self.schedule, self.gen
        )
        if setup.checkpoint is not None:
            self.state = self.checkpointer.load(setup.checkpoint, setup.start_step)
        self.probe = StepProbe(
            self.model,
            jvp=cfg.probe_jvp,
            micro_batch_size=cfg.micro_batch_size,
            temperature=cfg.temperature,
            seed=cfg.seed,
            probe_responses=cfg.probe_responses,
        )
        # the controller's pre-hook is registered before the probe's, which then forecasts the
        # update with the coefficient the controller chose
        self.control = None
        if cfg.control.on:
            self.control = EntropyController(
                self.model,
                self.opt,
                cfg.control,
                cfg.steps,
                self.model.get_output_embeddings().weight.shape[0],
                cfg.updates_per_step,
            )
        self.run_dir = setup.open_run_directory()
        if self.control is not None and self.state.step > 0:
            self.control.resume(read_run(self.out).steps)
        self._checkpoints_written = 0
        self._said_empty = False  # a step without valid tokens is said once

    def step_memory(self) -> StepMemory:
        """The estimated peak memory of one step with these settings (``llm_bridge.memory``)."""
        cfg = self.cfg
        return estimate_step_memory(
            ModelShape.of(self.model),
            responses=cfg.responses_per_step,
            micro_batch=cfg.micro_batch_size or cfg.mini_batch_responses,
            mini_batch=cfg.mini_batch_responses,
            generate_batch=cfg.generate_batch_size,
            prompt_length=self.prompt_length,
            response_length=self.max_new_tokens,
            adam=cfg.optimizer is OptimizerName.ADAM,
            probe=cfg.probe,
            jvp=cfg.probe_jvp,
            probe_responses=cfg.probe_responses,
            reference=self.ref_model is not None,
            fused_head=head_spec(self.model) is not None,
            eager_attention=self.model.config._attn_implementation == "eager",
            control=control_gradients(cfg.control),
        )

    def save_checkpoint(self) -> Path:
        """The latest checkpoint, replacing the previous one whole; its size is said once."""
        first = self._checkpoints_written == 0
        self._checkpoints_written += 1
        return self.checkpointer.save(self.state, self.log if first else None)

    # -- one step ------------------------------------------------------------------------------

    def generate(self, prompts: list, n: int, gen: torch.Generator) -> Rollouts:
        """n responses per prompt, ``generate_batch_size`` responses per generate call."""
        cfg = self.cfg
        return generate_in_calls(
            self.backend,
            prompts,
            n,
            self.max_new_tokens,
            cfg.temperature,
            gen,
            self.tokenizer.pad_token_id,
            cfg.generate_batch_size,
        )

    def validate(self) -> dict[str, float]:
        return validate(self.task, self.cfg, self.state.step, self.generate)

    def rollout(self) -> StepBatch:
        """Sample the step's responses and compute what every later pass reads."""
        cfg = self.cfg
        examples = sample_prompts(
            self.task, cfg.prompts_per_step, self.state.step, cfg.seed, self.gen
        )
        self.model.eval()
        roll = self.generate([e.prompt for e in examples], cfg.group_size, self.gen)
        return score_rollouts(
            self.task, cfg, roll, [e.answer for e in examples], self.model, self.ref_model
        )

    def step(self) -> dict[str, Any]:
        cfg, k = self.cfg, self.state.step
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        lr = self.opt.param_groups[0]["lr"]  # of the step's first update
        t0 = time.perf_counter()
        batch = self.rollout()
        t_roll = time.perf_counter()
        head = {"step": k, "lr": lr, "algo": f"grpo/{cfg.policy_loss.loss_mode.value}"}
        validation = self.validate() if cfg.val_every and k % cfg.val_every == 0 else None
        reward = float(batch.rewards.mean())
        if not batch.mask.any():
            record = step_record(**head, reward=reward, rollout=batch.stats, validation=validation)
            return self._step_without_tokens(record)
        mask = batch.mask.bool()
        h_batch = float(batch.entropy[mask].double().mean())
        self.state.entropy_coeff, coeff_now = adaptive_entropy_coef(
            self.state.entropy_coeff, h_batch, cfg.policy_loss
        )
        steering: dict[str, Any] = {"entropy_coeff": coeff_now}
        if self.control is not None:
            self.control.begin(k, h_batch)
            steering = {"entropy_coeff": coeff_now, **self.control.loss_settings()}
            coeff_now = steering["entropy_coeff"]
        probing = cfg.probe and k % cfg.probe_every == 0
        lc = cfg.policy_loss
        if lc.loss_mode in COV_LOSSES and (lc.needs_score or probing):
            score_t = stream_own_entropy_term(
                self.model, batch.roll, cfg.micro_batch_size, cfg.temperature
            )
            batch = replace(batch, score=score_t)
        if probing:
            self.probe.begin(self.opt)
        result = self.update(batch, **steering)
        t_update = time.perf_counter()
        probed = tokens = None
        if probing:
            carried = carried_values(lc, batch.old_logp, batch.roll.sampler_logp, batch.mask)
            probed, tokens = self.probe.finish(
                k, batch.roll, batch.advantages, batch.group, carried, result.clipped
            )
        extra = {}
        if self.control is not None:
            extra.update(self.control.finish())
            if not self.control.kl:
                coeff_now = extra["control/coef"]
        if self.device.type == "cuda":  # the step's own peak (reset at its start)
            extra["memory/gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        record = step_record(
            **head,
            validation=validation,
            entropy=h_batch,
            reward=reward,
            rollout=batch.stats,
            update=result.metrics,
            probe=probed,
            times=step_times(t0, t_roll, t_update, time.perf_counter()),
            entropy_coeff=coeff_now,
            extra=extra,
        )
        cov = None
        if k in cfg.cov_table_steps:
            valid = batch.old_logp[mask].double().cpu().numpy()
            cov = covariance_tokens(valid, batch.advantages[mask].double().cpu().numpy())
        return self._end_step(record, tokens, cov)

    def _end_step(self, record: dict[str, Any], tokens=None, cov=None) -> dict[str, Any]:
        """Log the step's record and files, move on, and checkpoint every ``checkpoint_every``
        steps."""
        finish_step(self.run_dir, record, tokens, cov, self.cfg.token_steps_every)
        self.state.step += 1
        if self.cfg.checkpoint_every and self.state.step % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()
        return record

    def _step_without_tokens(self, record: dict[str, Any]) -> dict[str, Any]:
        """A step all of whose responses ``mask_truncated`` left out (every one ran to the
        budget): nothing to learn from or measure. Its record holds the rollout's keys only
        (entropy and the probe's are absent: not measured); the schedule still advances, so the
        learning rate stays on its course; said once per run."""
        if not self._said_empty:
            self._said_empty = True
            self.log(
                f"step {self.state.step}: every response ran to the {self.max_new_tokens}-token "
                "budget and mask_truncated leaves them all out: no update on such steps (raise "
                "--max-new-tokens)"
            )
        for _ in range(self.cfg.updates_per_step):
            self.schedule.step()
        return self._end_step(record)

    def update(
        self,
        batch: StepBatch,
        entropy_coeff: float,
        kl_coef: float | None = None,
        actuator_term: Callable[[torch.Tensor], None] | None = None,
    ) -> UpdateResult:
        """The step's optimiser updates (``llm_bridge.update.update``)."""
        return update(
            self.model,
            self.opt,
            self.schedule,
            batch,
            self.cfg,
            entropy_coeff,
            self.gen,
            self.max_new_tokens,
            None if self.control is None else self.control.entropy_term,
            kl_coef,
            actuator_term,
        )

    def train(
        self,
        progress: Callable[[dict[str, Any]], None] | None = None,
        stop: StopHook | None = None,
    ) -> None:
        """Run the remaining steps. An interrupt (Ctrl-C, SIGTERM) lets the current step finish,
        writes a checkpoint and raises KeyboardInterrupt naming it; a second one stops at once.
        ``stop`` ends the run early after a step it returns True for (checkpointed, without the
        final model)."""
        with deferred_interrupts(self.log) as interrupted:
            try:
                while self.state.step < self.cfg.steps:
                    record = self.step()
                    if progress is not None:
                        progress(record)
                    if interrupted() and self.state.step < self.cfg.steps:
                        self.save_checkpoint()
                        raise KeyboardInterrupt(interrupted_message(self.out, self.state.step - 1))
                    if stop is not None and stop(record):
                        if self.cfg.checkpoint_every:
                            self.save_checkpoint()
                        return
                if self.cfg.checkpoint_every:
                    self.save_checkpoint()
                if self.cfg.save_final:
                    self.model.save_pretrained(self.out / FINAL_DIR)
                    self.tokenizer.save_pretrained(self.out / FINAL_DIR)
            finally:
                self.run_dir.close()


__all__ = ["ProbedGRPOTrainer", "StopHook"]
