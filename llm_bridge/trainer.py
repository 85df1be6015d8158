"""GRPO for a causal language model on one machine, with the per-step entropy probe.

Each step: sample P prompts, G responses each (the rollout backend, at temperature T), score them,
compute advantages (the registry shared with ``softmax_theory``), take ``epochs × mini_batches``
optimiser updates on the policy loss (``llm_bridge.losses``), then probe the step on its own
tokens (``llm_bridge.probe``). Every pass over the batch (old log-probs and entropy, reference
log-probs, the update, the probe) streams micro-batches of ``micro_batch_size`` responses, so
full-vocabulary tensors exist for at most one chunk at a time. Every step appends one record to
the run log (``steps.jsonl``, flushed); checkpoints (``save_pretrained`` + optimiser and generator
state) let ``resume`` continue a killed run without losing or repeating a step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_bridge.checkpoint import Checkpointer, TrainState
from llm_bridge.config import RESUME_FREE, OptimizerName, TrainConfig, resolve_device, warmup_factor
from llm_bridge.forward import head_spec, stream_entropy_logp
from llm_bridge.interrupts import deferred_interrupts, interrupted_message
from llm_bridge.losses import truncated_is_weights
from llm_bridge.memory import (
    ModelShape,
    StepMemory,
    available_memory,
    check_step_fits,
    estimate_step_memory,
)
from llm_bridge.mismatch import rollout_mismatch
from llm_bridge.models import check_run_inputs, load_config, load_model, load_tokenizer
from llm_bridge.probe import (
    measure_tokens,
    parameter_delta,
    probe_record,
    probe_rows,
    snapshot,
    stream_own_entropy_term,
    token_arrays,
)
from llm_bridge.reporters import parse_report_to
from llm_bridge.rollout import (
    PromptFormat,
    Rollouts,
    generate_in_calls,
    make_backend,
)
from llm_bridge.run_dir import (
    FINAL_DIR,
    RunDirectory,
    check_resume,
    recorded_config,
    recover_checkpoint,
)
from llm_bridge.tasks import Task, check_encodable, epoch_order, response_budget, score
from llm_bridge.token_stats import token_covariance
from llm_bridge.update import StepBatch, UpdateResult, rollout_stats, update
from softmax_theory.group_advantages import compute_advantages
from softmax_theory.policy import COV_LOSSES, adaptive_entropy_coef
from softmax_theory.stats import pass_at_k


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
        if not cfg.model:
            raise ValueError("model: give a local Hugging Face causal-LM folder (--model)")
        self.cfg, self.out, self.log, self.task = cfg, Path(out), log, task
        self.device = resolve_device(cfg.device)
        if cfg.val_k is not None and self.task.max_reward is None:
            raise ValueError(
                "val_k: the task's largest reward is unknown, so no sample can be called right"
            )
        self.prompt_format = PromptFormat(cfg.chat_template, cfg.max_prompt_tokens)
        load_config(cfg.model)  # a folder that is not a causal LM is named before anything else
        self.run_config = {
            "trainer": "llm_bridge.trainer",
            **recorded_config(cfg, task, load_tokenizer(cfg.model)),
        }
        if resume:  # refuse before the model is loaded or anything is written
            check_resume(self.out, self.run_config, RESUME_FREE, log)
        # bf16 weights on CUDA; the probe's statistics are computed in fp32/fp64 regardless
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        ckpt = recover_checkpoint(self.out) if resume else None
        self.model, self.tokenizer = load_model(ckpt or cfg.model, self.device, dtype)
        self.ref_model = None
        if cfg.policy_loss.needs_reference:
            self.ref_model, _ = load_model(cfg.model, self.device, dtype)
            self.ref_model.eval().requires_grad_(False)
        check_encodable(self.task, self.tokenizer)
        self.max_new_tokens = response_budget(task, cfg.max_new_tokens)
        self.prompt_length = check_run_inputs(
            cfg, task, self.model, self.tokenizer, self.prompt_format, self.max_new_tokens, log
        )
        self.backend = make_backend(
            cfg.backend, self.model, self.tokenizer, cfg.model, self.prompt_format
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
        self._check_memory()
        self.checkpointer = Checkpointer(
            self.out, self.model, self.tokenizer, self.opt, self.schedule, self.gen
        )
        if ckpt is not None:
            self.state = self.checkpointer.load(ckpt)
            log(f"resume: continuing at step {self.state.step}")
        elif resume:
            log("resume: no checkpoint yet; starting again at step 0")
        self.run_dir = RunDirectory(
            self.out,
            self.run_config,
            resume_from=self.state.step if resume else None,
            report_to=parse_report_to(cfg.report_to),
        )
        self._checkpoints_written = 0
        self._said_empty = False  # a step without valid tokens is said once

    def step_memory(self) -> StepMemory:
        """The estimated peak memory of one step with these settings (``llm_bridge.memory``)."""
        cfg = self.cfg
        return estimate_step_memory(
            ModelShape.of(self.model),
            responses=cfg.responses_per_step,
            micro_batch=cfg.micro_batch_size or cfg.mini_batch_responses,
            generate_batch=cfg.generate_batch_size,
            prompt_length=self.prompt_length,
            response_length=self.max_new_tokens,
            adam=cfg.optimizer is OptimizerName.ADAM,
            probe=cfg.probe,
            jvp=cfg.probe_jvp,
            reference=self.ref_model is not None,
            fused_head=head_spec(self.model) is not None,
            eager_attention=self.model.config._attn_implementation == "eager",
        )

    def _check_memory(self) -> None:
        """Refuse, before the first step, a step that cannot fit in the memory there is."""
        need = self.step_memory()
        check_step_fits(need, available_memory(self.device), self.cfg.micro_batch_size is not None)

    def save_checkpoint(self) -> Path:
        """The latest checkpoint, replacing the previous one whole; its size is said once."""
        first = self._checkpoints_written == 0
        self._checkpoints_written += 1
        return self.checkpointer.save(self.state, self.log if first else None)

    # -- one step ------------------------------------------------------------------------------

    def _sample_prompts(self, n: int) -> list:
        """A dataset's prompts are drawn without replacement within an epoch (each epoch its
        own seeded order, so a resumed run draws the same); a synthetic task, which stands for
        an endless supply of problems, draws with replacement from the run's generator."""
        train = self.task.train
        if self.task.dataset is None:
            idx = torch.randint(0, len(train), (n,), generator=self.gen).tolist()
            return [train[i] for i in idx]
        first = self.state.step * n
        return [train[i] for i in epoch_order(len(train), self.cfg.seed, range(first, first + n))]

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """``val_reward``: the mean reward over n samples per held-out prompt (one without
        ``val_k``); with ``val_k`` = K also ``val_pass@K``, the unbiased pass@K estimate per
        prompt (a sample is right when it earns the task's largest reward), averaged. Its
        randomness is its own (seeded by the run's seed and the step), so how often a run
        validates never changes its training."""
        cfg = self.cfg
        examples = self.task.test[: cfg.val_prompts]
        n = cfg.val_n
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.state.step + 1)
        roll = self._generate([e.prompt for e in examples], n, gen)
        rewards = score(self.task, roll.texts, [e.answer for e in examples for _ in range(n)])
        out = {"val_reward": float(rewards.mean())}
        if cfg.val_k is not None:
            right = (rewards >= self.task.max_reward).reshape(len(examples), n).sum(-1)
            out[f"val_pass@{cfg.val_k}"] = float(
                np.mean([pass_at_k(n, int(c), cfg.val_k) for c in right])
            )
        return out

    def rollout(self) -> StepBatch:
        """Sample the step's responses and compute what every later pass reads."""
        cfg = self.cfg
        examples = self._sample_prompts(cfg.prompts_per_step)
        self.model.eval()
        roll = self._generate([e.prompt for e in examples], cfg.group_size, self.gen)
        return self.score_rollouts(roll, [e.answer for e in examples])

    def _generate(self, prompts: list[str], n: int, gen: torch.Generator) -> Rollouts:
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

    def score_rollouts(self, roll: Rollouts, answers: list[str]) -> StepBatch:
        """Rewards, advantages, and the old (and reference) log-probs and entropy of ``roll``."""
        cfg = self.cfg
        rewards = score(self.task, roll.texts, [a for a in answers for _ in range(cfg.group_size)])
        group = np.repeat(np.arange(len(answers)), cfg.group_size)
        adv_resp = compute_advantages(cfg.advantage, rewards, group, cfg.w_reinforce_lambda)
        stats = rollout_stats(roll, adv_resp)
        if cfg.mask_truncated and roll.truncated is not None:
            # TRL's mask_truncated_completions: a response cut at the budget leaves the loss
            # (and every per-token statistic of the step) entirely
            keep = (~roll.truncated).to(roll.response_mask.dtype)[:, None]
            roll = replace(roll, response_mask=roll.response_mask * keep)
        mask = roll.response_mask
        adv = torch.tensor(adv_resp, dtype=torch.float32, device=self.device)[:, None] * mask
        micro, t = cfg.micro_batch_size, cfg.temperature
        entropy, old_logp = stream_entropy_logp(self.model, roll, micro, t)
        ref_logp = None
        if self.ref_model is not None:
            ref_logp = stream_entropy_logp(self.ref_model, roll, micro, t)[1]
        # the sampler's log-probs where the backend reports them (vLLM); HF generation samples
        # from the trainer's own model, so there the sampler is π_old by construction
        sampler = roll.sampler_logp if roll.sampler_logp is not None else old_logp
        if mask.any():
            stats.update(rollout_mismatch(old_logp, sampler, mask))
        return StepBatch(
            roll,
            rewards,
            group,
            adv,
            entropy,
            old_logp,
            ref_logp,
            sampler_logp=sampler,
            stats=stats,
        )

    def step(self) -> dict[str, Any]:
        cfg, k = self.cfg, self.state.step
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        batch = self.rollout()
        t_roll = time.perf_counter()
        record: dict[str, Any] = {
            "step": k,
            "lr": self.opt.param_groups[0]["lr"],  # of the step's first update
            "algo": f"grpo/{cfg.policy_loss.loss_mode.value}",
        }
        if cfg.val_every and k % cfg.val_every == 0:
            record.update(self.validate())
        if not batch.mask.any():
            return self._step_without_tokens(batch, record)
        mask = batch.mask.bool()
        h_batch = float(batch.entropy[mask].double().mean())
        record.update(entropy=h_batch, reward=float(batch.rewards.mean()), **batch.stats)
        self.state.entropy_coeff, coeff_now = adaptive_entropy_coef(
            self.state.entropy_coeff, h_batch, cfg.policy_loss
        )
        probing = cfg.probe and k % cfg.probe_every == 0
        lc = cfg.policy_loss
        if lc.loss_mode in COV_LOSSES and (lc.needs_score or probing):
            score_t = stream_own_entropy_term(
                self.model, batch.roll, cfg.micro_batch_size, cfg.temperature
            )
            batch = replace(batch, score=score_t)
        params_before = snapshot(self.model) if probing else None
        result = self.update(batch, coeff_now, forecast=probing and cfg.probe_jvp)
        record.update(result.metrics)
        t_update = time.perf_counter()
        if probing:
            record.update(self._probe(batch, params_before, result))
        record.update(
            {
                "time/rollout_s": t_roll - t0,
                "time/update_s": t_update - t_roll,
                "time/probe_s": time.perf_counter() - t_update,
                "actor/entropy_coeff": coeff_now,
            }
        )
        if self.device.type == "cuda":  # the step's own peak (reset at its start)
            record["memory/gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if k in cfg.cov_table_steps:
            cov = token_covariance(batch.old_logp, batch.advantages, batch.mask)[mask]
            self.run_dir.write_cov_table(k, cov.double().cpu().numpy())
        return self._end_step(record)

    def _end_step(self, record: dict[str, Any]) -> dict[str, Any]:
        """Log the step's record, move on, and checkpoint every ``checkpoint_every`` steps."""
        self.run_dir.write_step(record)
        self.state.step += 1
        if self.cfg.checkpoint_every and self.state.step % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()
        return record

    def _step_without_tokens(self, batch: StepBatch, record: dict[str, Any]) -> dict[str, Any]:
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
        record.update(reward=float(batch.rewards.mean()), **batch.stats)
        for _ in range(self.cfg.updates_per_step):
            self.schedule.step()
        return self._end_step(record)

    def update(
        self, batch: StepBatch, entropy_coeff: float, forecast: bool = False
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
            forecast=forecast,
        )

    # -- the probe -----------------------------------------------------------------------------

    def _probe(
        self, batch: StepBatch, params_before: dict[str, torch.Tensor], result: UpdateResult
    ) -> dict[str, Any]:
        cfg, k = self.cfg, self.state.step
        delta = None
        if cfg.probe_jvp:
            # one update: Δθ was known before the step (the optimiser's forecast)
            delta = parameter_delta(self.model, params_before, result.forecast)
        n_rows = batch.roll.input_ids.shape[0]
        carried = {"sampler_logp": batch.sampler_logp}
        lc = cfg.policy_loss
        if lc.rollout_is is not None:
            carried["is_capped"] = truncated_is_weights(
                batch.old_logp,
                batch.sampler_logp,
                batch.mask,
                lc.rollout_is,
                lc.rollout_is_threshold,
            )[1]
        tokens = measure_tokens(
            self.model,
            batch.roll,
            batch.advantages,
            torch.as_tensor(batch.group),
            params_before,
            delta,
            rows=probe_rows(cfg.seed, k, n_rows, cfg.probe_responses),
            micro_batch_size=cfg.micro_batch_size,
            temperature=cfg.temperature,
            clipped=result.clipped,
            carried=carried,
        )
        record = probe_record(tokens)
        record["probe/updates"] = result.n_updates
        if cfg.token_steps_every and k % cfg.token_steps_every == 0:
            self.run_dir.write_tokens(k, token_arrays(tokens))
        return record

    def train(self, progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Run the remaining steps. An interrupt (Ctrl-C, SIGTERM) lets the current step finish,
        writes a checkpoint and raises KeyboardInterrupt naming it; a second one stops at once."""
        with deferred_interrupts(self.log) as interrupted:
            try:
                while self.state.step < self.cfg.steps:
                    record = self.step()
                    if progress is not None:
                        progress(record)
                    if interrupted() and self.state.step < self.cfg.steps:
                        self.save_checkpoint()
                        raise KeyboardInterrupt(interrupted_message(self.out, self.state.step - 1))
                if self.cfg.checkpoint_every:
                    self.save_checkpoint()
                if self.cfg.save_final:
                    self.model.save_pretrained(self.out / FINAL_DIR)
                    self.tokenizer.save_pretrained(self.out / FINAL_DIR)
            finally:
                self.run_dir.close()


__all__ = ["ProbedGRPOTrainer"]
