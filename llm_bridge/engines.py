"""The one entry above both engines: ``train`` reads ``cfg.engine`` and runs our trainer
(``llm_bridge.trainer``) or the TRL engine (``llm_bridge.integrations.trl``) on the same run
directory (``llm_bridge.run_dir``). Neither engine imports this module, so the import graph has
no circle."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_bridge.config import RESUME_FREE, Engine, TrainConfig, resolve_device
from llm_bridge.tasks import Task, dataset_task, synthetic_task


def load_task(cfg: TrainConfig, log: Callable[[str], None] = lambda _: None) -> Task:
    """The task a config names: its dataset file (its fields and answer rule), else its
    synthetic task."""
    if cfg.dataset:
        return dataset_task(
            cfg.dataset,
            seed=cfg.task_seed,
            reward=cfg.dataset_reward,
            prompt_key=cfg.prompt_key,
            answer_key=cfg.answer_key,
            answer_format=cfg.answer_format,
            log=log,
        )
    # the task's own seed, not the run's: the held-out prompts of every run seed are those the
    # model was not pre-trained on (pretrain-tiny draws the task at seed 0)
    return synthetic_task(cfg.task, seed=cfg.task_seed, terms=cfg.terms)


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = lambda _: None,
    task: Task | None = None,
) -> Path:
    """Run GRPO with ``cfg.engine`` and write the run directory ``out``; returns its path.
    ``task`` overrides ``cfg.task``/``cfg.dataset`` (e.g. a task with a custom reward)."""
    task = load_task(cfg, log) if task is None else task  # a bad dataset fails first
    if cfg.engine is Engine.TRL:
        from llm_bridge.integrations.trl import train_with_trl

        return train_with_trl(cfg, out, task, resume=resume, progress=progress, log=log)
    from llm_bridge.trainer import ProbedGRPOTrainer

    trainer = ProbedGRPOTrainer(cfg, out, task, resume=resume, log=log)
    trainer.train(progress)
    return Path(out)


__all__ = ["RESUME_FREE", "load_task", "resolve_device", "train"]
