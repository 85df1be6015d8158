"""One run's setup, the same for both engines: every check of the settings and the data, the
model folder read once (its config, tokenizer and weights), the resume, and the run directory
with its trackers. ``prepare_run`` does it in one order, so a check added here reaches both
engines with the same line:

1. the settings alone: a model folder given, a known largest reward for ``val_k``, and the
   engine's own refusals (``refuse``: the TRL engine's ``refuse_for_trl``);
2. the folder's config and tokenizer (``llm_bridge.models``), the task's text against the
   tokenizer (``tasks.check_encodable``), the recorded config (``run_dir.recorded_config``);
3. the run directory: a new run refuses one that holds a run; a resume refuses changed
   settings (``run_dir.check_resume``) and finds where to continue (``run_dir.resume_point``:
   the newest whole checkpoint not past the first step the log lacks, or step 0);
4. the weights (from the checkpoint in our engine; TRL restores its own), then the prompts
   against the model's positions and the sampling notes (``models.check_run_inputs``).

Nothing is written before ``open_run_directory``, which the engine calls once its own checks
(our memory guard) have passed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llm_bridge.config import Engine, TrainConfig, resolve_device
from llm_bridge.models import check_run_inputs, load_config, load_tokenizer, load_weights
from llm_bridge.reporters import ReportTarget, parse_report_to
from llm_bridge.rollout import PromptFormat
from llm_bridge.run_dir import (
    RunDirectory,
    check_resume,
    holds_run,
    recorded_config,
    resume_point,
)
from llm_bridge.tasks import Task, check_encodable, response_budget


@dataclass(frozen=True)
class RunSetup:
    """What both engines start from. ``model`` holds the checkpoint's weights in our engine
    and the folder's in the TRL engine (whose Trainer restores the checkpoint itself);
    ``start_step`` is the first step to run (0 for a new run or a resume without a
    checkpoint); ``checkpoint`` the folder a resume continues from."""

    cfg: TrainConfig
    out: Path
    task: Task
    device: torch.device
    model: Any
    tokenizer: Any
    prompt_format: PromptFormat
    run_config: dict[str, Any]
    budget: int  # response tokens, EOS included
    prompt_length: int  # the longest prompt, in tokens
    report_to: tuple[ReportTarget, ...]
    resume: bool
    checkpoint: Path | None
    start_step: int

    def open_run_directory(self) -> RunDirectory:
        """The run directory, opened for writing: a resume drops the records from
        ``start_step`` on (they are recomputed)."""
        return RunDirectory(
            self.out,
            self.run_config,
            resume_from=self.start_step if self.resume else None,
            report_to=self.report_to,
        )


def prepare_run(
    cfg: TrainConfig,
    out: str | os.PathLike,
    task: Task,
    *,
    resume: bool,
    log: Callable[[str], None],
    resume_free: Iterable[str],
    engine_config: Callable[[dict[str, Any]], dict[str, Any]] = dict,
    refuse: Callable[[TrainConfig], None] = lambda _: None,
) -> RunSetup:
    """Check, load and resume one run (see the module docstring).

    Args:
      resume_free: the settings a resume may change (``config.RESUME_FREE`` and the engine's).
      engine_config: the recorded config → what the engine's ``config.json`` records.
      refuse: the engine's refusals of settings it cannot honour, before anything is read.
    """
    if not cfg.model:
        raise ValueError("model: give a local Hugging Face causal-LM folder (--model)")
    if cfg.val_k is not None and task.max_reward is None:
        raise ValueError(
            "val_k: the task's largest reward is unknown, so no sample can be called right"
        )
    refuse(cfg)
    report_to = parse_report_to(cfg.report_to)
    out = Path(out)
    device = resolve_device(cfg.device)
    load_config(cfg.model)  # a folder that is not a causal LM is named before anything else
    tokenizer = load_tokenizer(cfg.model)
    check_encodable(task, tokenizer)
    fmt = PromptFormat(cfg.chat_template, cfg.max_prompt_tokens)
    run_config = engine_config(recorded_config(cfg, task, tokenizer, fmt))
    checkpoint, start_step = None, 0
    if resume:
        check_resume(out, run_config, resume_free, log)
        checkpoint, start_step = resume_point(
            out, cfg.engine, cfg.updates_per_step, cfg.cov_table_steps, log
        )
    elif holds_run(out):
        raise FileExistsError(f"out: {out} already holds a run; choose a new directory or resume")
    if cfg.engine is Engine.OURS:
        # bf16 weights on CUDA (the probe's statistics are fp32/fp64 regardless), from the
        # checkpoint when there is one
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = load_weights(checkpoint or cfg.model, device, dtype)
    else:  # TRL places the model and casts it (bf16 on GPU), and restores its checkpoint
        model = load_weights(cfg.model)
    budget = response_budget(task, cfg.max_new_tokens)
    prompt_length = check_run_inputs(cfg, task, model, tokenizer, fmt, budget, log)
    return RunSetup(
        cfg=cfg,
        out=out,
        task=task,
        device=device,
        model=model,
        tokenizer=tokenizer,
        prompt_format=fmt,
        run_config=run_config,
        budget=budget,
        prompt_length=prompt_length,
        report_to=report_to,
        resume=resume,
        checkpoint=checkpoint,
        start_step=start_step,
    )


__all__ = ["RunSetup", "prepare_run"]
