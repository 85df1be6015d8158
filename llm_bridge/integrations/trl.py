"""Our losses and entropy probe inside TRL's GRPOTrainer (extra ``trl``).

``CovGRPOTrainer`` replaces only the policy-loss part of ``GRPOTrainer._compute_loss``: it asks
TRL for the per-token log-probs and entropies (``_get_per_token_logps_and_entropies``), reads
TRL's ``advantages``, ``old_per_token_logps`` and ``ref_per_token_logps``, and applies our loss
registry with a ``PolicyLossConfig``; generation, rewards, advantages, distributed training and
logging stay TRL's. ``EntropyProbeCallback`` measures each optimiser step on the last
micro-batch's tokens (full-vocabulary entropy before and after the step, Lemma 1, the covariance
estimators) and appends to our run directory, so ``llm-bridge compare`` reads TRL runs unchanged.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

try:
    from transformers import TrainerCallback
    from trl import GRPOTrainer
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the TRL integration needs TRL: pip install 'entropy-mechanism[trl]'"
    ) from err

from llm_bridge.losses import AggMode, LossInputs, agg_loss, compute_policy_loss
from llm_bridge.probe import probe_stats
from llm_bridge.token_stats import entropy_and_logprobs
from softmax_theory.algorithms import PolicyLossConfig
from softmax_theory.registry import parse_choice
from softmax_theory.runlog import RunWriter, to_jsonable

PROBE_DIR = "entropy_probe"


class CovGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with the policy loss taken from ``llm_bridge.losses``.

    Args (beyond GRPOTrainer's):
      loss_config: the loss and the controls (Clip-Cov, KL-Cov, …); TRL's ``beta`` still adds
        its own reference KL when set, and TRL's entropy options are left as TRL handles them.
      agg: aggregation of the per-token loss (``token-mean`` is TRL's ``dapo``).
      probe_dir: where to write our run directory; ``OUTPUT_DIR/entropy_probe`` by default;
        ``None`` disables the probe.
    """

    def __init__(
        self,
        *args: Any,
        loss_config: PolicyLossConfig | None = None,
        agg: str | AggMode = AggMode.TOKEN_MEAN,
        probe_dir: str | os.PathLike | None = "",
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config or PolicyLossConfig()
        if self.beta != 0.0 and self.loss_config.kl_ref_coef == 0.0:
            # keep TRL's reference KL working: its β and its k3 estimator through our loss
            self.loss_config = replace(
                self.loss_config, kl_ref_coef=self.beta, kl_ref_estimator="k3"
            )
        self.agg = parse_choice(AggMode, agg, "agg")
        self.cov_generator = torch.Generator().manual_seed(self.args.seed)
        self.probe_batch: dict[str, torch.Tensor] | None = None
        if probe_dir is not None:
            path = Path(probe_dir) if probe_dir else Path(self.args.output_dir) / PROBE_DIR
            self.add_callback(EntropyProbeCallback(self, path))

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, compute_entropy=True
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
            response_mask=completion_mask,
            entropy=entropies,
            ref_log_prob=inputs.get("ref_per_token_logps"),
        )
        out = compute_policy_loss(inp, self.loss_config, generator=self.cov_generator)
        loss = agg_loss(out.per_token_loss, completion_mask, self.agg)
        mode = "train" if model.training else "eval"
        if mode == "train":
            # TRL turns off the Trainer's own scaling for gradient accumulation; so do we
            loss = loss / self.current_gradient_accumulation_steps
            self.probe_batch = {
                "input_ids": input_ids.detach(),
                "attention_mask": attention_mask.detach(),
                "completion_ids": completion_ids.detach(),
                "completion_mask": completion_mask.detach(),
                "advantages": advantages.detach(),
                "n_prompt": prompt_ids.size(1),
            }
        for key, value in out.metrics.items():
            self._metrics[mode][key].append(float(value))
        # TRL's own entropy metric, so its log_history keeps the key its users read
        mask = completion_mask.bool()
        self._metrics[mode]["entropy"].append(float(entropies.detach()[mask].mean()))
        return loss


def completion_logits(model, batch: dict[str, Any], temperature: float) -> torch.Tensor:
    """Logits (÷ temperature, as TRL samples) that predict the completion tokens: [B, T, V]."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    t = batch["completion_ids"].size(1)
    return out.logits[:, -t - 1 : -1].float() / temperature


class EntropyProbeCallback(TrainerCallback):
    """Probe each optimiser step on the last micro-batch it trained on.

    ``on_step_begin`` cannot see the batch (TRL generates it inside the step), so the trainer
    keeps the last micro-batch it computed a loss on, and this callback runs one forward on it
    just before the optimiser step and one just after: two extra forwards per step.
    """

    def __init__(self, trainer: CovGRPOTrainer, out: Path):
        self.trainer, self.out = trainer, out
        self.writer: RunWriter | None = None
        self.before: tuple[dict[str, Any], torch.Tensor, float] | None = None

    def _writer(self) -> RunWriter:
        if self.writer is None:
            args = self.trainer.args
            config = {
                "trainer": "trl.GRPOTrainer",
                "loss": to_jsonable(self.trainer.loss_config),
                "agg": self.trainer.agg.value,
                "learning_rate": args.learning_rate,
                "num_generations": args.num_generations,
                "seed": args.seed,
            }
            self.writer = RunWriter(self.out, config)
        return self.writer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        batch = self.trainer.probe_batch
        if batch is None:
            return
        # the last micro-batch's gradients are in, the parameters have not moved yet
        with torch.no_grad():
            logits = completion_logits(self.trainer.model, batch, self.trainer.temperature)
        self.before = (batch, logits, float(self.trainer.optimizer.param_groups[0]["lr"]))

    def on_step_end(self, args, state, control, **kwargs):
        if self.before is None:
            return
        batch, logits_before, lr = self.before
        self.before = None
        model = self.trainer.model
        with torch.no_grad():
            logits_after = completion_logits(model, batch, self.trainer.temperature)
        tokens, mask = batch["completion_ids"], batch["completion_mask"]
        entropy, logp = entropy_and_logprobs(logits_before, tokens)
        n_gen = self.trainer.num_generations
        group = torch.arange(tokens.size(0)) // n_gen
        record, _ = probe_stats(
            logits_before,
            logits_after,
            None,
            tokens,
            logp,
            entropy,
            batch["advantages"],
            mask,
            group,
        )
        metrics = self.trainer._metrics["train"]
        rec: dict[str, Any] = {
            "step": state.global_step - 1,
            "entropy": float(entropy[mask.bool()].mean()),
            "lr": lr,
            "algo": f"trl-grpo/{self.trainer.loss_config.loss.value}",
        }
        if metrics.get("reward"):
            rec["reward"] = float(metrics["reward"][-1])
        rec.update(record)
        self._writer().write(rec)

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            self.writer.close()


def trl_dataset(task, tokenizer):
    """A task as TRL wants it: a dataset of ``prompt`` (BOS + prompt text, the way our
    rollouts encode it) and ``answer``, and a reward function over TRL's completions."""
    from datasets import Dataset

    bos = tokenizer.bos_token or ""
    data = Dataset.from_dict(
        {"prompt": [bos + e.prompt for e in task.train], "answer": [e.answer for e in task.train]}
    )

    def reward(completions, answer, **_):
        return [task.reward(c, a) for c, a in zip(completions, answer, strict=True)]

    return data, reward


def train_with_trl(cfg, out: str | os.PathLike, task=None) -> Path:
    """``llm-bridge train --engine trl``: the same run through TRL's GRPOTrainer.

    Mapping of ``TrainConfig`` to ``GRPOConfig``: ``group_size`` → ``num_generations``;
    ``mini_batches`` → ``steps_per_generation`` (optimiser updates per generation batch);
    ``micro_batches`` → ``gradient_accumulation_steps``; ``epochs`` → ``num_iterations``;
    ``steps`` → ``max_steps`` × updates per step; constant learning rate; Adam (``adamw_torch``
    with no weight decay) or SGD. TRL logs optimiser steps, so the probe's ``step`` counts
    optimiser updates. Validation is TRL's business here (``eval_*`` keys in its
    ``trainer_state.json``; ``llm-bridge import trl`` reads them).
    """
    from trl import GRPOConfig

    from llm_bridge.grpo import OptimizerName, load_task
    from llm_bridge.tiny import load_model

    task = task or load_task(cfg)
    model, tokenizer = load_model(cfg.model)
    data, reward = trl_dataset(task, tokenizer)

    updates = cfg.mini_batches * cfg.epochs
    per_device = cfg.prompts_per_step * cfg.group_size // (cfg.mini_batches * cfg.micro_batches)
    out = Path(out)
    args = GRPOConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=cfg.micro_batches,
        steps_per_generation=cfg.mini_batches,
        num_iterations=cfg.epochs,
        num_generations=cfg.group_size,
        max_completion_length=task.max_answer_chars + 1,
        temperature=cfg.temperature,
        top_k=0,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="sgd" if cfg.optimizer is OptimizerName.SGD else "adamw_torch",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping, as our trainer
        max_steps=cfg.steps * updates,
        beta=0.0,
        logging_steps=1,
        save_strategy="steps" if cfg.checkpoint_every else "no",
        save_steps=max(1, cfg.checkpoint_every * updates),
        report_to="none",
        seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
    )
    trainer = CovGRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        loss_config=cfg.loss,
        agg=cfg.agg,
        probe_dir=out if cfg.probe else None,
    )
    trainer.train()
    trainer.state.save_to_json(str(out / "trl" / "trainer_state.json"))
    return out
