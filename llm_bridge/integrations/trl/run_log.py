"""Our run directory for the TRL engine, as a TRL callback: one record per GRPO step
(generation batch), built by ``llm_bridge.step_record`` from what TRL measured, with the probe
(``llm_bridge.probe.StepProbe``) on probed steps.

A GRPO step is ``updates_per_step`` optimiser steps of TRL. At the first one's
``on_step_begin`` (θ_old: TRL generates inside it, after this event) the probe begins; at the
last one's ``on_step_end`` the callback reads the trainer's generation batch
(``RegistryLossTrainer.generation``) and loss metrics, finishes the probe, and writes the
record from rank 0. Its keys also go into TRL's own log stream as ``probe/…`` (``on_log``), so
``report_to`` shows them beside TRL's metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from llm_bridge.forward import stream_entropy_logp
from llm_bridge.integrations.trl.distributed import all_concat
from llm_bridge.integrations.trl.trainer import GenerationBatch, RegistryLossTrainer
from llm_bridge.probe import StepProbe, carried_values, snapshot
from llm_bridge.rollout import Rollouts
from llm_bridge.run_dir import RunDirectory, checkpoint_note, latest_trl_checkpoint
from llm_bridge.step_record import (
    covariance_tokens,
    finish_step,
    rollout_keys,
    step_record,
    step_times,
)


class RunLogCallback(TrainerCallback):
    """One row per GRPO step in ``run_dir`` (None on ranks other than 0, which measure but do
    not write). ``stop`` (a record → True) and ``interrupted`` (→ True) end training after the
    current step, with a checkpoint; ``stopped_after`` then names that step."""

    def __init__(
        self,
        trainer: RegistryLossTrainer,
        run_dir: RunDirectory | None,
        probe: StepProbe | None,
        *,
        probe_every: int,
        cov_table_steps: tuple[int, ...],
        token_steps_every: int,
        micro_batch_size: int | None,
        stop_ids: tuple[int, ...],
        progress: Callable[[dict[str, Any]], None] | None = None,
        stop: Callable[[dict[str, Any]], bool] | None = None,
        log: Callable[[str], None] = lambda _: None,
    ):
        self.trainer, self.run_dir, self.probe = trainer, run_dir, probe
        self.probe_every, self.cov_table_steps = probe_every, cov_table_steps
        self.token_steps_every, self.micro_batch_size = token_steps_every, micro_batch_size
        # the tokens that end a response (a response without one was cut at the budget)
        self.stop_ids = stop_ids
        self.progress, self.stop, self.log = progress, stop, log
        self.interrupted: Callable[[], bool] = lambda: False
        self.stopped_after: int | None = None
        self.val_reward: float | None = None  # measured before the next step's first update
        self._lr = 0.0
        self._params_before = None  # θ_old, for a covariance table without the probe
        self._to_log: dict[str, float] | None = None
        self._said_size = False  # a checkpoint's size is said once

    @property
    def updates(self) -> int:
        return self.trainer.updates_per_step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step % self.updates:  # not a GRPO step's first update
            return
        k = state.global_step // self.updates
        optimizer = self.trainer.optimizer
        self._lr = float(optimizer.param_groups[0]["lr"])  # of the step's first update
        if self.probe is not None and k % self.probe_every == 0:
            self.probe.begin(optimizer)
        elif k in self.cov_table_steps:
            self._params_before = snapshot(self.probe_model)

    @property
    def probe_model(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.updates:  # not a GRPO step's last update
            return
        t, gen = self.trainer, self.trainer.generation
        k = state.global_step // self.updates - 1
        mask = gen.mask
        valid = mask.bool()
        old, sampler = gen.out.get("old_per_token_logps"), gen.out.get("sampling_per_token_logps")
        sampled_by_trainer = old is None or sampler is None
        if sampled_by_trainer:  # TRL's generation samples from π_old itself: no mismatch
            sampler = None
        trainer_logp = torch.zeros(mask.shape, device=mask.device) if old is None else old
        flat = all_concat(
            {
                "lengths": self._lengths(gen),
                "truncated": self._truncated(gen),
                "trainer": trainer_logp[valid].double().cpu().numpy(),
                "sampler": (trainer_logp if sampler is None else sampler)[valid]
                .double()
                .cpu()
                .numpy(),
            }
        )
        rollout = rollout_keys(
            flat["lengths"],
            flat["truncated"],
            gen.advantages,
            torch.from_numpy(flat["trainer"]),
            torch.from_numpy(flat["sampler"]),
        )
        update = t.step_means.pop(self.updates, t.accelerator.num_processes)
        # TRL's own entropy (token mean over the step's updates); the probe's replaces it
        entropy = update.pop("entropy", None)
        probed = tokens = cov = None
        t_update = time.perf_counter()
        probing = self.probe is not None and self.probe.pending
        if k in self.cov_table_steps and flat["trainer"].size:
            theta_old = self.probe.params_before if probing else self._params_before
            cov = self._covariance(gen, old, theta_old)
        self._params_before = None
        if probing:
            if flat["trainer"].size == 0:  # mask_truncated left every response out
                self.probe.cancel()
            else:
                lc = t.policy_loss
                probed, tokens = self.probe.finish(
                    k,
                    self._rollouts(gen),
                    gen.out["advantages"][:, None].float() * mask,
                    gen.group,
                    carried_values(lc, trainer_logp, sampler, mask),
                )
                entropy = float(tokens.values["entropy"].mean())  # θ_old, probed tokens
        extra, coef = {}, t.policy_loss.entropy_coeff
        if t.entropy_controller is not None:
            if not probed and t.entropy_controller_entropy is not None:
                entropy = t.entropy_controller_entropy  # θ_old, the whole generation batch
            extra = t.entropy_controller.finish()
            if not t.entropy_controller.kl:
                coef = t.entropy_coef = extra["control/coef"]  # TRL's own coefficient
                t._metrics["train"]["entropy_coef"].append(coef)
        record = step_record(
            step=k,
            lr=self._lr,
            algo=f"trl-grpo/{t.policy_loss.loss_mode.value}",
            validation=self._take_validation(),
            entropy=entropy,
            reward=float(np.mean(gen.rewards)),
            rollout=rollout,
            update=update,
            probe=probed,
            times=step_times(
                gen.finished - gen.seconds, gen.finished, t_update, time.perf_counter()
            ),
            entropy_coeff=coef,
            extra=extra,
        )
        self._to_log = {
            f"probe/{key}": float(value)
            for key, value in record.items()
            if key not in ("step", "algo") and isinstance(value, int | float)
        }
        if self.run_dir is not None:
            finish_step(self.run_dir, record, tokens, cov, self.token_steps_every)
            if self.progress is not None:
                self.progress(record)
        stopping = self.stop is not None and self.stop(record)
        if (self.interrupted() or stopping) and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
            if not stopping:
                self.stopped_after = k

    # -- what the step's record reads ----------------------------------------------------------

    def _truncated(self, gen: GenerationBatch) -> np.ndarray:
        ids = gen.out["completion_ids"]
        stops = torch.tensor(self.stop_ids, device=ids.device)
        return (~torch.isin(ids, stops).any(dim=1)).cpu().numpy()

    def _lengths(self, gen: GenerationBatch) -> np.ndarray:
        """Each response's tokens; one cut at the budget has the whole budget, also where
        ``mask_truncated`` zeroed its mask."""
        ids = gen.out["completion_ids"]
        truncated = torch.from_numpy(self._truncated(gen)).to(ids.device)
        lengths = torch.where(truncated, ids.shape[1], gen.out["completion_mask"].sum(dim=1))
        return lengths.double().cpu().numpy()

    def _rollouts(self, gen: GenerationBatch) -> Rollouts:
        out = gen.out
        if out.get("pixel_values") is not None:
            raise ValueError(
                "probe: the probe reads text batches only; set probe=False for multimodal training"
            )
        return Rollouts.from_ids(
            out["prompt_ids"], out["prompt_mask"], out["completion_ids"], gen.mask
        )

    def _covariance(self, gen: GenerationBatch, old: torch.Tensor | None, theta_old) -> np.ndarray:
        """The paper's token covariance over every valid token of the step, every process's, at
        θ_old: TRL's old log-probs where it computed them, else a pass at ``theta_old``, the
        parameters kept before the step's first update."""
        mask = gen.mask
        if old is None:
            old = stream_entropy_logp(
                self.probe_model,
                self._rollouts(gen),
                self.micro_batch_size,
                self.trainer.temperature,
                params=theta_old,
            )[1]
        valid = mask.bool()
        adv = gen.out["advantages"][:, None].expand_as(old)
        flat = all_concat(
            {
                "logp": old[valid].double().cpu().numpy(),
                "advantage": adv[valid].double().cpu().numpy(),
            }
        )
        return covariance_tokens(flat["logp"], flat["advantage"])

    def _take_validation(self) -> dict[str, float] | None:
        if self.val_reward is None:
            return None
        value, self.val_reward = self.val_reward, None
        return {"val_reward": value}

    # -- TRL's other events --------------------------------------------------------------------

    def on_log(self, args, state, control, logs=None, **kwargs):
        """The step's record into the training log TRL writes right after the step's last
        update (its log history and the trackers that read ``logs`` after this callback)."""
        if self._to_log is None or logs is None or any(k.startswith("eval_") for k in logs):
            return
        logs.update(self._to_log)
        if state.log_history:
            state.log_history[-1].update(self._to_log)
        self._to_log = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_reward" in metrics:
            self.val_reward = float(metrics["eval_reward"])

    def on_save(self, args, state, control, **kwargs):
        """Say the size of the first checkpoint TRL writes (the latest one is kept)."""
        if self._said_size or self.run_dir is None:
            return
        latest = latest_trl_checkpoint(self.run_dir.out)
        if latest is not None:
            self._said_size = True
            self.log(checkpoint_note(latest[0], latest[1] // self.updates - 1))

    def on_train_end(self, args, state, control, **kwargs):
        if self.run_dir is not None:
            self.run_dir.close()


__all__ = ["RunLogCallback"]
