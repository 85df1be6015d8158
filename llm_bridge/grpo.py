"""GRPO for a causal language model on one machine, with the per-step entropy probe.

Each step: sample P prompts, G responses each (the rollout backend, temperature 1 by default),
score them, compute advantages (the registry shared with ``softmax_theory``), take
``epochs × mini_batches`` optimiser updates on the policy loss (``llm_bridge.losses``), then probe
the step on its own tokens (``llm_bridge.probe``). Every step appends one record to the run log
(``steps.jsonl``, flushed); checkpoints (``save_pretrained`` + optimiser and generator state) let
``resume`` continue a killed run without losing or repeating a step.
"""

from __future__ import annotations

import enum
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_bridge.losses import (
    COV_SELECTORS,
    AggMode,
    LossInputs,
    agg_loss,
    compute_policy_loss,
)
from llm_bridge.probe import jvp_logits, probe_stats
from llm_bridge.rollout import BackendName, Rollouts, make_backend
from llm_bridge.tasks import Task, dataset_task, score, synthetic_task
from llm_bridge.tiny import load_model
from llm_bridge.token_stats import entropy_and_logprobs, token_covariance
from softmax_theory.algorithms import (
    ADVANTAGES,
    AdvantageEstimator,
    CovScope,
    PolicyLossConfig,
    adaptive_entropy_coef,
)
from softmax_theory.dynamics import top_covariance_means
from softmax_theory.registry import parse_choice
from softmax_theory.runlog import STEPS_FILE, RunWriter, read_run, to_jsonable

CHECKPOINT_DIR = "checkpoint"
TOKENS_DIR = "tokens"


class OptimizerName(str, enum.Enum):
    ADAM = "adam"
    SGD = "sgd"


class Device(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class TrainConfig:
    """One GRPO run; the only home of its defaults (the loss's are in PolicyLossConfig)."""

    model: str = field(default="", metadata={"help": "local Hugging Face causal-LM folder"})
    task: str = field(
        default="addition", metadata={"help": "synthetic task (addition, multiplication)"}
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "local JSONL/parquet with prompt and answer (overrides task)"},
    )
    dataset_reward: str = field(default="math", metadata={"help": "dataset reward: math or exact"})
    steps: int = field(default=120, metadata={"help": "GRPO steps"})
    prompts_per_step: int = field(default=64, metadata={"help": "prompts P per step"})
    group_size: int = field(default=8, metadata={"help": "responses G per prompt"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    optimizer: OptimizerName = field(default=OptimizerName.ADAM, metadata={"help": "adam or sgd"})
    lr: float = field(default=5e-4, metadata={"help": "learning rate"})
    epochs: int = field(default=1, metadata={"help": "PPO epochs over each step's batch"})
    mini_batches: int = field(
        default=2, metadata={"help": "optimiser updates per epoch (KL-Cov acts from the 2nd)"}
    )
    micro_batches: int = field(default=1, metadata={"help": "gradient-accumulation splits"})
    advantage: AdvantageEstimator = field(
        default=AdvantageEstimator.GRPO, metadata={"help": "advantage estimator"}
    )
    agg: AggMode = field(default=AggMode.TOKEN_MEAN, metadata={"help": "loss aggregation"})
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    val_every: int = field(default=10, metadata={"help": "steps between validation (0: never)"})
    val_prompts: int = field(default=128, metadata={"help": "held-out prompts per validation"})
    probe: bool = field(default=True, metadata={"help": "measure ΔH and the predictions each step"})
    probe_jvp: bool = field(default=True, metadata={"help": "also the JVP forecast (pred_jvp)"})
    token_steps_every: int = field(
        default=0, metadata={"help": "save per-token probe arrays every k steps (0: never)"}
    )
    cov_table_steps: tuple[int, ...] = field(
        default=(0,), metadata={"help": "steps at which to write the covariance table"}
    )
    checkpoint_every: int = field(default=25, metadata={"help": "steps between checkpoints"})
    seed: int = field(default=0, metadata={"help": "seed of prompts, sampling and selection"})
    device: Device = field(default=Device.AUTO, metadata={"help": "auto, cpu or cuda"})
    backend: BackendName = field(default=BackendName.HF, metadata={"help": "rollout backend"})

    def __post_init__(self) -> None:
        for name, enum_cls in (
            ("optimizer", OptimizerName),
            ("advantage", AdvantageEstimator),
            ("agg", AggMode),
            ("device", Device),
            ("backend", BackendName),
        ):
            object.__setattr__(self, name, parse_choice(enum_cls, getattr(self, name), name))
        for name in ("steps", "prompts_per_step", "epochs", "mini_batches", "micro_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be ≥ 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size: GRPO needs at least 2 responses, got {self.group_size}")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise ValueError(f"lr: must be a finite number > 0, got {self.lr}")
        if self.temperature <= 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if self.prompts_per_step % self.mini_batches:
            raise ValueError(
                f"mini_batches: {self.mini_batches} must divide prompts_per_step "
                f"{self.prompts_per_step}"
            )


def resolve_device(device: Device) -> torch.device:
    if device is Device.CUDA and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for, but no CUDA device is available")
    if device is Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.value)


def load_task(cfg: TrainConfig) -> Task:
    if cfg.dataset:
        return dataset_task(cfg.dataset, seed=cfg.seed, reward=cfg.dataset_reward)
    return synthetic_task(cfg.task, seed=cfg.seed)


# ---------------------------------------------------------------------------------------------
# Forward passes on the response positions
# ---------------------------------------------------------------------------------------------


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generation uses them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def response_logits(
    call: Callable[..., Any], roll: Rollouts, rows: slice = slice(None)
) -> torch.Tensor:
    """Logits that predict each response token: [b, R, V] (in the model's dtype)."""
    ids, mask = roll.input_ids[rows], roll.attention_mask[rows]
    out = call(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    p = roll.prompt_length
    return out.logits[:, p - 1 : -1]  # position t predicts token t + 1


def optimizer_update(opt: torch.optim.Optimizer) -> dict[int, torch.Tensor]:
    """The parameter change Δθ that ``opt.step()`` is about to make, from the current gradients
    and optimiser state (SGD without momentum; Adam/AdamW), computed before the step.

    A test checks it against the change the step then makes.
    """
    out = {}
    for group in opt.param_groups:
        lr = group["lr"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad.detach()
            if isinstance(opt, torch.optim.SGD):
                if group.get("momentum", 0) or group.get("weight_decay", 0):
                    raise ValueError("optimizer: the forecast supports plain SGD only")
                out[id(p)] = -lr * g
                continue
            if not isinstance(opt, torch.optim.Adam | torch.optim.AdamW):
                raise ValueError(f"optimizer: no update forecast for {type(opt).__name__}")
            beta1, beta2 = group["betas"]
            state = opt.state.get(p, {})
            step = int(state.get("step", 0)) + 1
            m = beta1 * state.get("exp_avg", torch.zeros_like(g)) + (1 - beta1) * g
            v = beta2 * state.get("exp_avg_sq", torch.zeros_like(g)) + (1 - beta2) * g * g
            denom = (v / (1 - beta2**step)).sqrt() + group["eps"]
            delta = -lr * (m / (1 - beta1**step)) / denom
            if group.get("weight_decay", 0):
                decay = -lr * group["weight_decay"] * p.detach()
                if isinstance(opt, torch.optim.AdamW):
                    delta = delta + decay
                else:
                    raise ValueError("optimizer: the forecast supports Adam without weight decay")
            out[id(p)] = delta
    return out


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    step: int
    alpha: float  # adaptive entropy coefficient carried between steps


class GRPOTrainer:
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
        # bf16 weights on CUDA; the probe's statistics are computed in fp32/fp64 regardless
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        ckpt = self.out / CHECKPOINT_DIR
        resuming = resume and (ckpt / "trainer.pt").exists()
        self.model, self.tokenizer = load_model(ckpt if resuming else cfg.model, self.device, dtype)
        self.ref_model = None
        if cfg.loss.kl_ref_coef > 0:
            self.ref_model, _ = load_model(cfg.model, self.device, dtype)
            self.ref_model.eval().requires_grad_(False)
        self.task = load_task(cfg) if task is None else task
        self.backend = make_backend(cfg.backend, self.model, self.tokenizer, cfg.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = (
            torch.optim.Adam(params, lr=cfg.lr)
            if cfg.optimizer is OptimizerName.ADAM
            else torch.optim.SGD(params, lr=cfg.lr)
        )
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.state = TrainState(step=0, alpha=cfg.loss.entropy_coef)
        self.max_new_tokens = self.task.max_answer_chars + 1  # the answer and EOS
        config = {"trainer": "llm_bridge.grpo", **to_jsonable(cfg)}
        if resuming:
            self._load_checkpoint(ckpt)
        elif resume:
            log("no checkpoint to resume from; starting at step 0")
        self.writer = RunWriter(self.out, config, resume=resuming)

    # -- checkpoints ---------------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        tmp = self.out / (CHECKPOINT_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        torch.save(
            {
                "optimizer": self.opt.state_dict(),
                "generator": self.gen.get_state(),
                "step": self.state.step,
                "alpha": self.state.alpha,
            },
            tmp / "trainer.pt",
        )
        final = self.out / CHECKPOINT_DIR
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # the previous checkpoint is replaced only once the new one is whole

    def _load_checkpoint(self, ckpt: Path) -> None:
        state = torch.load(ckpt / "trainer.pt", weights_only=False)
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self.state = TrainState(step=state["step"], alpha=state["alpha"])
        # steps logged after the checkpoint are recomputed from the same state: drop them
        steps_path = self.out / STEPS_FILE
        kept = [s for s in read_run(self.out).steps if s["step"] < self.state.step]
        steps_path.write_text("".join(json.dumps(s) + "\n" for s in kept))
        self.log(f"resumed at step {self.state.step}")

    # -- one step ------------------------------------------------------------------------------

    def _sample_prompts(self, n: int) -> list:
        idx = torch.randint(0, len(self.task.train), (n,), generator=self.gen).tolist()
        return [self.task.train[i] for i in idx]

    @torch.no_grad()
    def validate(self) -> float:
        """Mean reward of one sample per held-out prompt. Its randomness is its own (seeded by
        the run's seed and the step), so how often a run validates never changes its training."""
        examples = self.task.test[: self.cfg.val_prompts]
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.state.step + 1)
        roll = self.backend.generate(
            [e.prompt for e in examples], 1, self.max_new_tokens, self.cfg.temperature, gen
        )
        return float(score(self.task, roll.texts, [e.answer for e in examples]).mean())

    def _loss_inputs(self, roll, rows, adv, old_logp, ref_logp) -> tuple[LossInputs, torch.Tensor]:
        logits = response_logits(self.model, roll, rows).float()  # (b, R, V)
        tokens = roll.response_ids[rows]
        logp_all = torch.log_softmax(logits, dim=-1)  # autograd path; [b, R, V]
        logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        mask = roll.response_mask[rows]
        return LossInputs(
            log_prob=logp,
            old_log_prob=old_logp[rows],
            advantages=adv[rows],
            response_mask=mask,
            entropy=entropy,
            ref_log_prob=None if ref_logp is None else ref_logp[rows],
        ), mask

    def step(self) -> dict[str, Any]:
        cfg, k = self.cfg, self.state.step
        t0 = time.perf_counter()
        examples = self._sample_prompts(cfg.prompts_per_step)
        self.model.eval()
        roll = self.backend.generate(
            [e.prompt for e in examples],
            cfg.group_size,
            self.max_new_tokens,
            cfg.temperature,
            self.gen,
        )
        answers = [e.answer for e in examples for _ in range(cfg.group_size)]
        rewards = score(self.task, roll.texts, answers)  # (B,)
        group = np.repeat(np.arange(cfg.prompts_per_step), cfg.group_size)
        adv_resp = ADVANTAGES[cfg.advantage](rewards, group)
        mask = roll.response_mask
        adv = torch.tensor(adv_resp, dtype=torch.float32, device=self.device)[:, None] * mask
        t_roll = time.perf_counter()

        record: dict[str, Any] = {"step": k, "lr": cfg.lr, "algo": f"grpo/{cfg.loss.loss.value}"}
        if cfg.val_every and k % cfg.val_every == 0:
            record["val_reward"] = self.validate()
        with torch.no_grad():
            logits_before = response_logits(self.model, roll).float()  # (B, R, V)
            entropy, old_logp = entropy_and_logprobs(logits_before, roll.response_ids)
            ref_logp = None
            if self.ref_model is not None:
                ref_logits = response_logits(self.ref_model, roll).float()
                _, ref_logp = entropy_and_logprobs(ref_logits, roll.response_ids)
        h_batch = float(entropy[mask.bool()].mean())
        record.update(
            entropy=h_batch,
            reward=float(rewards.mean()),
            response_length=float(mask.sum(-1).float().mean()),
        )
        self.state.alpha, alpha_now = adaptive_entropy_coef(self.state.alpha, h_batch, cfg.loss)

        params_before = (
            {n: p.detach().clone() for n, p in self.model.named_parameters()}
            if cfg.probe and cfg.probe_jvp
            else None
        )
        metrics = self._update(roll, adv, old_logp, ref_logp, alpha_now, k)
        record.update(metrics)
        t_update = time.perf_counter()

        per_token = None
        if cfg.probe:
            record_probe, per_token = self._probe(
                roll, logits_before, entropy, old_logp, adv, group, params_before
            )
            record.update(record_probe)
        record.update(
            {
                "time/rollout_s": t_roll - t0,
                "time/update_s": t_update - t_roll,
                "time/probe_s": time.perf_counter() - t_update,
                "actor/entropy_coef": alpha_now,
            }
        )
        if k in cfg.cov_table_steps:
            self._write_cov_table(k, old_logp, adv, mask)
        if per_token is not None and cfg.token_steps_every and k % cfg.token_steps_every == 0:
            self._write_tokens(k, per_token)
        self.writer.write(record)
        self.state.step += 1
        if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
            self._save_checkpoint()
        return record

    def _update(self, roll, adv, old_logp, ref_logp, alpha, step) -> dict[str, float]:
        """epochs × mini_batches optimiser updates; micro-batches accumulate gradients."""
        cfg = self.cfg
        self.model.train()
        n_resp = roll.input_ids.shape[0]
        per_mini = n_resp // cfg.mini_batches
        totals: dict[str, float] = {}
        count = 0
        self.n_updates = 0
        self.update_forecast: dict[int, torch.Tensor] | None = None
        for _ in range(cfg.epochs):
            for mb in range(cfg.mini_batches):
                rows = slice(mb * per_mini, (mb + 1) * per_mini)
                selected = None
                if cfg.loss.cov_scope is CovScope.MINI and cfg.loss.loss in COV_SELECTORS:
                    with torch.no_grad():
                        inp, _ = self._loss_inputs(roll, rows, adv, old_logp, ref_logp)
                    selected = COV_SELECTORS[cfg.loss.loss](inp, cfg.loss, generator=self.gen)
                self.opt.zero_grad(set_to_none=True)
                micro = np.array_split(np.arange(rows.start, rows.stop), cfg.micro_batches)
                n_valid = float(roll.response_mask[rows].sum())
                for idx in micro:
                    if idx.size == 0:
                        continue
                    sub = slice(int(idx[0]), int(idx[-1]) + 1)
                    inp, mask = self._loss_inputs(roll, sub, adv, old_logp, ref_logp)
                    sel = (
                        None
                        if selected is None
                        else selected[sub.start - rows.start : sub.stop - rows.start]
                    )
                    out = compute_policy_loss(
                        inp, cfg.loss, entropy_coef=alpha, generator=self.gen, selected=sel
                    )
                    if cfg.agg is AggMode.TOKEN_MEAN:
                        # token-mean over the whole mini-batch, whatever the micro split
                        loss = (out.per_token_loss * mask).sum() / n_valid
                    else:
                        loss = agg_loss(out.per_token_loss, mask, cfg.agg) * (idx.size / per_mini)
                    loss.backward()
                    for key, val in out.metrics.items():
                        totals[key] = totals.get(key, 0.0) + float(val)
                    totals["actor/pg_loss"] = totals.get("actor/pg_loss", 0.0) + float(
                        loss.detach()
                    )
                    count += 1
                if self.n_updates == 0:
                    self.update_forecast = optimizer_update(self.opt)
                self.opt.step()
                self.n_updates += 1
        self.model.eval()
        return {key: val / count for key, val in totals.items()}

    def _probe(self, roll, logits_before, entropy, old_logp, adv, group, params_before):
        with torch.no_grad():
            logits_after = response_logits(self.model, roll).float()
        logits_jvp = None
        if params_before is not None:
            names = dict(self.model.named_parameters())
            if self.n_updates == 1:
                # one update: Δθ was known before the step (optimizer_update)
                delta = {
                    n: self.update_forecast[id(p)]
                    for n, p in names.items()
                    if id(p) in self.update_forecast
                }
            else:
                delta = {n: names[n].detach() - params_before[n] for n in params_before}
            delta = {n: delta.get(n, torch.zeros_like(v)) for n, v in params_before.items()}

            def logits_fn(p):
                return response_logits(
                    lambda **kw: torch.func.functional_call(self.model, p, (), kw), roll
                ).float()

            # forward-mode AD is not implemented for fused SDPA kernels: eager attention for
            # the JVP only, so training and generation keep the model's own attention
            attn = self.model.config._attn_implementation
            self.model.set_attn_implementation("eager")
            try:
                logits_jvp = jvp_logits(logits_fn, params_before, delta)
            finally:
                self.model.set_attn_implementation(attn)
        record, per_token = probe_stats(
            logits_before,
            logits_after,
            logits_jvp,
            roll.response_ids,
            old_logp,
            entropy,
            adv,
            roll.response_mask,
            torch.as_tensor(group),
        )
        record["probe/updates"] = self.n_updates
        return record, per_token

    def _write_cov_table(self, step: int, logp, adv, mask) -> None:
        cov = token_covariance(logp, adv, mask)[mask.bool()].double().cpu().numpy()
        table = {"step": step, "n_tokens": int(cov.size), **top_covariance_means(cov)}
        with open(self.out / "cov_tables.jsonl", "a") as f:
            f.write(json.dumps(table) + "\n")

    def _write_tokens(self, step: int, per_token: dict[str, torch.Tensor]) -> None:
        d = self.out / TOKENS_DIR
        d.mkdir(exist_ok=True)
        np.savez_compressed(
            d / f"step_{step:06d}.npz",
            **{k: v.detach().cpu().double().numpy() for k, v in per_token.items()},
        )

    def train(self, progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        try:
            while self.state.step < self.cfg.steps:
                record = self.step()
                if progress is not None:
                    progress(record)
            if self.cfg.checkpoint_every:
                self._save_checkpoint()
            self.model.save_pretrained(self.out / "final")
            self.tokenizer.save_pretrained(self.out / "final")
        finally:
            self.writer.close()


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = lambda _: None,
    task: Task | None = None,
) -> Path:
    """Run GRPO and write the run directory ``out``; returns its path."""
    trainer = GRPOTrainer(cfg, out, resume=resume, log=log, task=task)
    trainer.train(progress)
    return Path(out)
