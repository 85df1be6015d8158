"""The one entry above both engines: ``train`` reads ``cfg.engine`` and runs our trainer
(``llm_bridge.trainer``) or the TRL engine (``llm_bridge.integrations.trl``) on the same run
directory (``llm_bridge.run_dir``). Neither engine imports this module, so the import graph has
no circle."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llm_bridge.config import RESUME_FREE, Engine, TrainConfig, resolve_device
from llm_bridge.tasks import Task, dataset_task, synthetic_task
from softmax_theory.runlog import atomic_write_text, read_json, read_run, to_jsonable


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
    stop: Callable[[dict[str, Any]], bool] | None = None,
) -> Path:
    """Run GRPO with ``cfg.engine`` and write the run directory ``out``; returns its path.
    ``task`` overrides ``cfg.task``/``cfg.dataset`` (e.g. a task with a custom reward);
    ``stop`` ends the run after a step whose record it returns True for (both engines)."""
    task = load_task(cfg, log) if task is None else task  # a bad dataset fails first
    if cfg.engine is Engine.TRL:
        from llm_bridge.integrations.trl import train_with_trl

        return train_with_trl(cfg, out, task, resume=resume, progress=progress, log=log, stop=stop)
    from llm_bridge.trainer import ProbedGRPOTrainer

    trainer = ProbedGRPOTrainer(cfg, out, task, resume=resume, log=log)
    trainer.train(progress, stop=stop)
    return Path(out)


WALL_FILE = "wall.json"


def finished_run(cfg: TrainConfig, out: Path) -> bool:
    """Whether ``out`` holds a finished run of ``cfg``: every field of ``cfg`` recorded as
    given and all ``cfg.steps`` steps written. A run that does not read back whole (a torn or
    corrupt file, refused by ``read_run``) is not finished."""
    if not (out / "steps.jsonl").exists():
        return False
    try:
        run = read_run(out)
    except ValueError:
        return False
    same = all(run.config.get(k) == v for k, v in to_jsonable(cfg).items())
    return same and len(run.steps) == cfg.steps


@contextmanager
def taking_turns(out: Path, poll_s: float = 5.0) -> Iterator[None]:
    """Hold ``out``'s lock (``out.lock`` beside it, the holder's pid inside) for the block:
    processes sharing a run directory take turns on it; a dead holder's lock is taken over."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f"{out.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            break
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or 0), 0)
                time.sleep(poll_s)
            except (ProcessLookupError, ValueError, FileNotFoundError):
                lock.unlink(missing_ok=True)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def train_or_reuse(
    cfg: TrainConfig, out: str | os.PathLike, task: Task | None = None, poll_s: float = 5.0
) -> float | None:
    """Train ``cfg`` into ``out`` unless it holds a finished run of ``cfg`` (then reuse it);
    the run's wall seconds, from ``out/wall.json`` when reused (None if it has none). Processes
    sharing runs take turns on one through ``out.lock`` (a dead process's lock is taken over).
    A folder holding anything else (a torn run among them) is emptied first: this is for scripts
    that own ``out``."""
    out = Path(out)
    with taking_turns(out, poll_s):
        stamp = out / WALL_FILE
        if finished_run(cfg, out):
            return read_json(stamp)["seconds"] if stamp.exists() else None
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        train(cfg, out, task=task)
        seconds = time.perf_counter() - t0
        atomic_write_text(stamp, json.dumps({"seconds": seconds}))
        return seconds


__all__ = [
    "RESUME_FREE",
    "WALL_FILE",
    "finished_run",
    "load_task",
    "resolve_device",
    "taking_turns",
    "train",
    "train_or_reuse",
]
