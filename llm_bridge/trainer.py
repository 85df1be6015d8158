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

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_bridge.config import Device, OptimizerName, TrainConfig, warmup_factor
from llm_bridge.forward import head_spec, micro_slices, stream_token_stats, token_stats
from llm_bridge.losses import (
    COV_SELECTORS,
    LossInputs,
    agg_loss,
    compute_policy_loss,
    select_cov_tokens,
)
from llm_bridge.memory import (
    ModelShape,
    StepMemory,
    available_memory,
    check_step_fits,
    estimate_step_memory,
)
from llm_bridge.models import load_model
from llm_bridge.probe import (
    measure_tokens,
    optimizer_update,
    parameter_delta,
    probe_record,
    snapshot,
    stream_own_entropy_term,
)
from llm_bridge.rollout import Rollouts, generate_in_calls, make_backend
from llm_bridge.tasks import Task, check_encodable, dataset_task, score, synthetic_task
from llm_bridge.token_stats import token_covariance
from softmax_theory.group_advantages import compute_advantages
from softmax_theory.policy import COV_LOSSES, CovScope, adaptive_entropy_coef
from softmax_theory.runlog import RunWriter, check_resumable, to_jsonable, truncate_steps
from softmax_theory.stats import pass_at_k, top_covariance_means

CHECKPOINT_DIR = "checkpoint"
# Written last into a checkpoint folder: a folder without it is not whole.
CHECKPOINT_COMPLETE = "COMPLETE"
TOKENS_DIR = "tokens"
COV_TABLES_FILE = "cov_tables.jsonl"
# Settings a resumed run may change: none of them changes what training computes (the
# micro-batch size changes only the fp32 reduction order).
RESUME_FREE = frozenset(
    {
        "steps",
        "checkpoint_every",
        "val_every",
        "val_prompts",
        "val_k",
        "val_samples",
        "probe",
        "probe_jvp",
        "probe_every",
        "probe_responses",
        "token_steps_every",
        "cov_table_steps",
        "micro_batch_size",
    }
)


def resolve_device(device: Device) -> torch.device:
    if device is Device.CUDA and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for, but no CUDA device is available")
    if device is Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.value)


def find_checkpoint(out: Path) -> Path | None:
    """The newest whole checkpoint in ``out``: ``checkpoint.tmp`` when a run was killed after
    writing it whole but before moving it into place (it is then moved), else ``checkpoint``."""
    final, tmp = out / CHECKPOINT_DIR, out / (CHECKPOINT_DIR + ".tmp")
    if (tmp / CHECKPOINT_COMPLETE).exists():
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    return final if (final / CHECKPOINT_COMPLETE).exists() else None


def load_task(cfg: TrainConfig) -> Task:
    if cfg.dataset:
        return dataset_task(cfg.dataset, seed=cfg.seed, reward=cfg.dataset_reward)
    return synthetic_task(cfg.task, seed=cfg.seed, terms=cfg.terms)


@dataclass
class TrainState:
    step: int
    alpha: float  # adaptive entropy coefficient carried between steps


@dataclass(frozen=True)
class StepBatch:
    """A step's rollouts and what every pass over them reads; tensors [B, R] unless noted."""

    roll: Rollouts
    rewards: np.ndarray  # [B]
    group: np.ndarray  # [B] prompt index of each response
    advantages: torch.Tensor  # per token (the response's advantage on its valid tokens)
    entropy: torch.Tensor  # H(π_old(·|s_t)), nats
    old_logp: torch.Tensor  # log π_old(y_t|s_t)
    ref_logp: torch.Tensor | None  # log π_ref(y_t|s_t), when a KL penalty needs it
    # the token's own-update entropy term at θ_old (``own_entropy_term``), when a covariance
    # loss selects by it (the oracle) or measures its selection against it (probed steps)
    score: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        return self.roll.response_mask


@dataclass(frozen=True)
class UpdateResult:
    metrics: dict[str, float]
    n_updates: int
    forecast: dict[int, torch.Tensor] | None  # Δθ of the first update, known before it
    clipped: torch.Tensor  # [B, R] bool: clipped at some update of the step


class ProbedGRPOTrainer:
    """GRPO with per-step entropy probes; see the module docstring."""

    def __init__(
        self,
        cfg: TrainConfig,
        out: str | os.PathLike,
        resume: bool = False,
        log: Callable[[str], None] = lambda _: None,
        task: Task | None = None,
    ):
        """``task`` overrides ``cfg.task``/``cfg.dataset`` (e.g. a task with a custom reward)."""
        if not cfg.model:
            raise ValueError("model: give a local Hugging Face causal-LM folder (--model)")
        self.cfg, self.out, self.log = cfg, Path(out), log
        self.device = resolve_device(cfg.device)
        self.task = load_task(cfg) if task is None else task  # a bad dataset fails first
        if cfg.val_k is not None and self.task.max_reward is None:
            raise ValueError(
                "val_k: the task's largest reward is unknown, so no sample can be called right"
            )
        # reward_max: for the law's warnings (a ceiling above it is not reachable)
        self.run_config = {
            "trainer": "llm_bridge.trainer",
            **to_jsonable(cfg),
            "reward_max": self.task.max_reward,
        }
        if resume:  # refuse before the model is loaded or anything is written
            for line in check_resumable(self.out, self.run_config, RESUME_FREE):
                log(f"resume: changed a setting that does not change results: {line}")
        # bf16 weights on CUDA; the probe's statistics are computed in fp32/fp64 regardless
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        ckpt = find_checkpoint(self.out) if resume else None
        self.model, self.tokenizer = load_model(ckpt or cfg.model, self.device, dtype)
        self.ref_model = None
        if cfg.policy_loss.needs_reference:
            self.ref_model, _ = load_model(cfg.model, self.device, dtype)
            self.ref_model.eval().requires_grad_(False)
        check_encodable(self.task, self.tokenizer)
        self.backend = make_backend(cfg.backend, self.model, self.tokenizer, cfg.model)
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
        self.state = TrainState(step=0, alpha=cfg.policy_loss.entropy_coeff)
        self.max_new_tokens = self.task.max_answer_chars + 1  # the answer and EOS
        self._check_memory()
        if ckpt is not None:
            self._load_checkpoint(ckpt)
        elif resume:
            log("resume: no checkpoint yet; starting again at step 0")
        if resume:
            self._drop_records_from(self.state.step)
        self.writer = RunWriter(self.out, self.run_config, resume=resume)

    def step_memory(self) -> StepMemory:
        """The estimated peak memory of one step with these settings (``llm_bridge.memory``)."""
        cfg = self.cfg
        prompts = self.task.train[:2000] + self.task.test[: cfg.val_prompts]
        prompt_length = 1 + max(
            len(self.tokenizer.encode(e.prompt, add_special_tokens=False)) for e in prompts
        )
        return estimate_step_memory(
            ModelShape.of(self.model),
            responses=cfg.responses_per_step,
            micro_batch=cfg.micro_batch_size or cfg.mini_batch_responses,
            generate_batch=cfg.generate_batch_size,
            prompt_length=prompt_length,
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

    # -- checkpoints ---------------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        tmp = self.out / (CHECKPOINT_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        torch.save(
            {
                "optimizer": self.opt.state_dict(),
                "schedule": self.schedule.state_dict(),
                "generator": self.gen.get_state(),
                "step": self.state.step,
                "alpha": self.state.alpha,
            },
            tmp / "trainer.pt",
        )
        (tmp / CHECKPOINT_COMPLETE).write_text(f"{self.state.step}\n")
        final = self.out / CHECKPOINT_DIR
        # the previous checkpoint is replaced only once the new one is whole; a kill between
        # the two lines leaves a whole checkpoint.tmp, which find_checkpoint moves into place
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)

    def _load_checkpoint(self, ckpt: Path) -> None:
        state = torch.load(ckpt / "trainer.pt", weights_only=False)
        self.opt.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.gen.set_state(state["generator"])
        self.state = TrainState(step=state["step"], alpha=state["alpha"])
        self.log(f"resume: continuing at step {self.state.step}")

    def _drop_records_from(self, step: int) -> None:
        """Steps logged after the checkpoint are recomputed from the same state: drop their
        records, covariance tables and token files."""
        truncate_steps(self.out, step)
        tables = self.out / COV_TABLES_FILE
        if tables.exists():
            kept = [t for t in tables.read_text().splitlines() if json.loads(t)["step"] < step]
            tables.write_text("".join(t + "\n" for t in kept))
        for path in (self.out / TOKENS_DIR).glob("step_*.npz"):
            if int(path.stem.split("_")[1]) >= step:
                path.unlink()

    # -- one step ------------------------------------------------------------------------------

    def _sample_prompts(self, n: int) -> list:
        idx = torch.randint(0, len(self.task.train), (n,), generator=self.gen).tolist()
        return [self.task.train[i] for i in idx]

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
        mask = roll.response_mask
        adv = torch.tensor(adv_resp, dtype=torch.float32, device=self.device)[:, None] * mask
        micro, t = cfg.micro_batch_size, cfg.temperature
        entropy, old_logp = stream_token_stats(self.model, roll, micro, t)
        ref_logp = None
        if self.ref_model is not None:
            ref_logp = stream_token_stats(self.ref_model, roll, micro, t)[1]
        return StepBatch(roll, rewards, group, adv, entropy, old_logp, ref_logp)

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
        mask = batch.mask.bool()
        h_batch = float(batch.entropy[mask].double().mean())
        record.update(
            entropy=h_batch,
            reward=float(batch.rewards.mean()),
            response_length=float(batch.mask.sum(-1).float().mean()),
        )
        self.state.alpha, alpha_now = adaptive_entropy_coef(
            self.state.alpha, h_batch, cfg.policy_loss
        )
        probing = cfg.probe and k % cfg.probe_every == 0
        lc = cfg.policy_loss
        if lc.loss_mode in COV_LOSSES and (lc.needs_score or probing):
            score_t = stream_own_entropy_term(
                self.model, batch.roll, cfg.micro_batch_size, cfg.temperature
            )
            batch = replace(batch, score=score_t)
        params_before = snapshot(self.model) if probing else None
        update = self.update(batch, alpha_now)
        record.update(update.metrics)
        t_update = time.perf_counter()
        if probing:
            record.update(self._probe(batch, params_before, update))
        record.update(
            {
                "time/rollout_s": t_roll - t0,
                "time/update_s": t_update - t_roll,
                "time/probe_s": time.perf_counter() - t_update,
                "actor/entropy_coeff": alpha_now,
            }
        )
        if self.device.type == "cuda":  # the step's own peak (reset at its start)
            record["memory/gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if k in cfg.cov_table_steps:
            self._write_cov_table(k, batch)
        self.writer.write(record)
        self.state.step += 1
        if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
            self._save_checkpoint()
        return record

    # -- the update ----------------------------------------------------------------------------

    def _loss_inputs(self, batch: StepBatch, rows: slice, grad: bool) -> LossInputs:
        """The loss's inputs on ``rows``; with ``grad`` log π and H carry the graph."""
        with torch.set_grad_enabled(grad):
            entropy, logp = token_stats(self.model, batch.roll, rows, self.cfg.temperature)
        return LossInputs(
            log_prob=logp,
            old_log_prob=batch.old_logp[rows],
            advantages=batch.advantages[rows],
            response_mask=batch.mask[rows],
            entropy=entropy,
            ref_log_prob=None if batch.ref_logp is None else batch.ref_logp[rows],
            score=None if batch.score is None else batch.score[rows],
        )

    def _select_global(self, batch: StepBatch) -> torch.Tensor | None:
        """Clip-Cov/KL-Cov tokens chosen once per step over the whole batch at θ_old
        (cov_scope = global), or None for the other scopes."""
        lc = self.cfg.policy_loss
        if lc.cov_scope is not CovScope.GLOBAL or lc.loss_mode not in COV_SELECTORS:
            return None
        inp = LossInputs(
            batch.old_logp, batch.old_logp, batch.advantages, batch.mask, score=batch.score
        )
        return select_cov_tokens(inp, lc, generator=self.gen)

    def _select_over(self, batch: StepBatch, rows: slice) -> torch.Tensor | None:
        """Clip-Cov/KL-Cov tokens chosen over the whole mini-batch (cov_scope = mini)."""
        lc = self.cfg.policy_loss
        if lc.cov_scope is not CovScope.MINI or lc.loss_mode not in COV_SELECTORS:
            return None
        parts = [
            self._loss_inputs(batch, slice(rows.start + s.start, rows.start + s.stop), False)
            for s in micro_slices(rows.stop - rows.start, self.cfg.micro_batch_size)
        ]
        inp = LossInputs(
            *(torch.cat([getattr(p, f) for p in parts]) for f in ("log_prob", "old_log_prob")),
            advantages=batch.advantages[rows],
            response_mask=batch.mask[rows],
            score=None if batch.score is None else batch.score[rows],
        )
        return select_cov_tokens(inp, lc, generator=self.gen)

    def _mini_batch_loss(
        self,
        batch: StepBatch,
        rows: slice,
        alpha: float,
        totals: dict[str, float],
        clipped: torch.Tensor | None = None,
        selected_step: torch.Tensor | None = None,
    ) -> float:
        """Accumulate the gradient of one mini-batch's loss over its micro-batches.

        The aggregation's normalisers are the mini-batch's, not the micro-batch's, so the sum of
        the micro-batch losses is the mini-batch loss whatever the split. token-mean divides by
        the step's valid tokens ÷ the number of mini-batches: TRL's ``num_items_in_batch`` rule,
        under which every token of a step weighs the same in each of its updates.
        """
        cfg, lc = self.cfg, self.cfg.policy_loss
        selected = self._select_over(batch, rows)
        if selected_step is not None:
            selected = selected_step[rows]
        mask = batch.mask[rows]
        norms = {
            "batch_num_tokens": float(batch.mask.sum()) / cfg.mini_batches,
            "global_batch_size": float((mask.sum(-1) > 0).sum()),
            "loss_scale_factor": lc.loss_scale_factor or float(self.max_new_tokens),
        }
        total = 0.0
        for sl in micro_slices(rows.stop - rows.start, cfg.micro_batch_size):
            sub = slice(rows.start + sl.start, rows.start + sl.stop)
            out = compute_policy_loss(
                self._loss_inputs(batch, sub, True),
                lc,
                entropy_coeff=alpha,
                generator=self.gen,
                selected=None if selected is None else selected[sl],
            )
            loss = agg_loss(out.per_token_loss, batch.mask[sub], lc.loss_agg_mode, **norms)
            loss.backward()
            if out.clipped is not None and clipped is not None:
                clipped[sub] |= out.clipped.to(clipped.device)
            total += float(loss.detach())
            # metrics are token means: weigh each micro-batch's by its tokens, so that the
            # update's metrics do not depend on how it was split
            n_tokens = float(batch.mask[sub].sum())
            for key, val in out.metrics.items():
                totals[key] = totals.get(key, 0.0) + float(val) * n_tokens
            totals["_tokens"] = totals.get("_tokens", 0.0) + n_tokens
        return total

    def update(self, batch: StepBatch, alpha: float) -> UpdateResult:
        """epochs × mini_batches optimiser updates; micro-batches accumulate gradients."""
        cfg = self.cfg
        self.model.train()
        per_mini = cfg.mini_batch_responses
        totals: dict[str, float] = {}
        losses, forecast, n_updates = [], None, 0
        clipped = torch.zeros(batch.mask.shape, dtype=torch.bool, device=batch.mask.device)
        selected_step = self._select_global(batch)
        for _ in range(cfg.epochs):
            for mb in range(cfg.mini_batches):
                self.opt.zero_grad(set_to_none=True)
                rows = slice(mb * per_mini, (mb + 1) * per_mini)
                losses.append(
                    self._mini_batch_loss(batch, rows, alpha, totals, clipped, selected_step)
                )
                if n_updates == 0 and cfg.probe and cfg.probe_jvp:
                    forecast = optimizer_update(self.opt)
                self.opt.step()
                self.schedule.step()
                n_updates += 1
        self.model.eval()
        n_tokens = totals.pop("_tokens")
        metrics = {key: val / n_tokens for key, val in totals.items()}
        metrics["actor/pg_loss"] = float(np.mean(losses))
        # a loss without a clip clips nothing: clipped stays all False
        return UpdateResult(metrics, n_updates, forecast if n_updates == 1 else None, clipped)

    # -- the probe -----------------------------------------------------------------------------

    def _probe_rows(self, n_rows: int) -> torch.Tensor | None:
        """A seeded random subset of the step's responses (its own generator, so probing never
        changes training), or None for all of them."""
        n = self.cfg.probe_responses
        if n is None or n >= n_rows:
            return None
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_033 + self.state.step)
        return torch.randperm(n_rows, generator=gen)[:n].sort().values

    def _probe(
        self, batch: StepBatch, params_before: dict[str, torch.Tensor], update: UpdateResult
    ) -> dict[str, Any]:
        cfg = self.cfg
        delta = None
        if cfg.probe_jvp:
            # one update: Δθ was known before the step (the optimiser's forecast)
            delta = parameter_delta(self.model, params_before, update.forecast)
        tokens = measure_tokens(
            self.model,
            batch.roll,
            batch.advantages,
            torch.as_tensor(batch.group),
            params_before,
            delta,
            rows=self._probe_rows(batch.roll.input_ids.shape[0]),
            micro_batch_size=cfg.micro_batch_size,
            temperature=cfg.temperature,
            clipped=update.clipped,
        )
        record = probe_record(tokens)
        record["probe/updates"] = update.n_updates
        k = self.state.step
        if cfg.token_steps_every and k % cfg.token_steps_every == 0:
            self._write_tokens(k, tokens.values)
        return record

    def _write_cov_table(self, step: int, batch: StepBatch) -> None:
        mask = batch.mask
        cov = token_covariance(batch.old_logp, batch.advantages, mask)[mask.bool()]
        cov = cov.double().cpu().numpy()
        table = {"step": step, "n_tokens": int(cov.size), **top_covariance_means(cov)}
        with open(self.out / COV_TABLES_FILE, "a") as f:
            f.write(json.dumps(table) + "\n")

    def _write_tokens(self, step: int, per_token: dict[str, torch.Tensor]) -> None:
        d = self.out / TOKENS_DIR
        d.mkdir(exist_ok=True)
        np.savez_compressed(
            d / f"step_{step:06d}.npz",
            **{k: v.detach().cpu().double().numpy() for k, v in per_token.items()},
        )

    def train(self, progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Run the remaining steps. An interrupt (Ctrl-C, SIGTERM) lets the current step finish,
        writes a checkpoint and raises KeyboardInterrupt; a second one stops at once."""
        with _deferred_interrupts(self.log) as interrupted:
            try:
                while self.state.step < self.cfg.steps:
                    record = self.step()
                    if progress is not None:
                        progress(record)
                    if interrupted():
                        self._save_checkpoint()
                        raise KeyboardInterrupt(
                            f"interrupted: checkpoint written after step {self.state.step - 1}; "
                            "continue with --resume"
                        )
                if self.cfg.checkpoint_every:
                    self._save_checkpoint()
                self.model.save_pretrained(self.out / "final")
                self.tokenizer.save_pretrained(self.out / "final")
            finally:
                self.writer.close()


@contextmanager
def _deferred_interrupts(log: Callable[[str], None]):
    """Within: the first SIGINT/SIGTERM only raises a flag (the caller checks it between steps);
    a second one interrupts at once. Outside the main thread, nothing is deferred."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def on_signal(signum, frame):
        if flag["set"]:
            raise KeyboardInterrupt("interrupted twice: stopped without a checkpoint")
        flag["set"] = True
        log("interrupt: finishing this step, then writing a checkpoint (again to stop at once)")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: flag["set"]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = lambda _: None,
    task: Task | None = None,
) -> Path:
    """Run GRPO with ``cfg.engine`` and write the run directory ``out``; returns its path."""
    if cfg.engine.value == "trl":
        from llm_bridge.integrations.trl import train_with_trl

        return train_with_trl(cfg, out, resume=resume, task=task, progress=progress, log=log)
    trainer = ProbedGRPOTrainer(cfg, out, resume=resume, log=log, task=task)
    trainer.train(progress)
    return Path(out)
