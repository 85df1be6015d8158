"""What an LM run directory holds and how it resumes; both engines write through this module.

::

    OUT/
      config.json              the settings (``softmax_theory.runlog.RunWriter``)
      steps.jsonl              one record per GRPO step, appended and fsynced as the step ends
      cov_tables.jsonl         Table 1 (top-covariance means) on the listed steps: every valid
                               token of the step's batch, at θ_old
      tokens/step_NNNNNN.npz   the probe's per-token arrays (``response`` included) on every
                               ``token_steps_every``-th probed step
      checkpoint/              our engine's latest whole checkpoint (``COMPLETE`` written last)
      trl/checkpoint-N/        the TRL engine's checkpoints, in TRL's own layout
      final/                   the trained model (``save_pretrained``)

A run resumed from a checkpoint recomputes the steps after it from the same state, so their
records, tables and token files are dropped first (``truncate_run``). Every rewrite of a file is
atomic (a temporary file, then ``os.replace``): a kill mid-write leaves the old file whole.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from llm_bridge.config import Engine
from llm_bridge.reporters import ReportTarget, open_reporters
from softmax_theory.runlog import (
    STEPS_FILE,
    RunWriter,
    atomic_write_text,
    check_resumable,
    to_jsonable,
    truncate_steps,
)
from softmax_theory.stats import top_covariance_means

CHECKPOINT_DIR = "checkpoint"
# Written last into a checkpoint folder: a folder without it is not whole.
CHECKPOINT_COMPLETE = "COMPLETE"
TOKENS_DIR = "tokens"
COV_TABLES_FILE = "cov_tables.jsonl"
TRL_DIR = "trl"
FINAL_DIR = "final"


def holds_run(out: Path) -> bool:
    """Whether ``out`` already holds a run's records (so a new run there would splice two)."""
    steps = out / STEPS_FILE
    return steps.exists() and steps.stat().st_size > 0


def check_resume(
    out: Path, config: dict[str, Any], free: Iterable[str], log: Callable[[str], None]
) -> None:
    """Refuse a resume that changes a setting outside ``free``; say which free ones changed."""
    for line in check_resumable(out, config, frozenset(free)):
        log(f"resume: changed a setting that does not change results: {line}")


def truncate_run(out: Path, first_step: int) -> None:
    """Drop the records, covariance tables and token files of steps ≥ ``first_step``."""
    truncate_steps(out, first_step)
    tables = out / COV_TABLES_FILE
    if tables.exists():
        kept = [t for t in tables.read_text().splitlines() if json.loads(t)["step"] < first_step]
        atomic_write_text(tables, "".join(t + "\n" for t in kept))
    for path in (out / TOKENS_DIR).glob("step_*.npz"):
        if int(path.stem.split("_")[1]) >= first_step:
            path.unlink()


class RunDirectory:
    """The run directory of one LM run: its step records and side files.

    ``resume_from``: the first step a resumed run recomputes (the records of that step and
    later are dropped); None for a new run, which refuses a directory that holds one.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        config: Any,
        resume_from: int | None = None,
        report_to: Iterable[ReportTarget] = (),
    ):
        self.out = Path(out)
        if resume_from is not None:
            truncate_run(self.out, resume_from)
        self.writer = RunWriter(self.out, config, resume=resume_from is not None)
        # every record also goes to the trackers chosen with report_to, under its own keys
        self.reporters = open_reporters(report_to, self.out, to_jsonable(config))

    def write_step(self, record: dict[str, Any]) -> None:
        self.writer.write(record)
        self.reporters.log(record, record["step"])

    def write_cov_table(self, step: int, cov: np.ndarray) -> None:
        """Table 1 of the step: ``cov`` is the paper's token covariance of every valid token."""
        table = {"step": step, "n_tokens": int(cov.size), **top_covariance_means(cov)}
        with open(self.out / COV_TABLES_FILE, "a") as f:
            f.write(json.dumps(table) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_tokens(self, step: int, arrays: dict[str, np.ndarray]) -> None:
        """The probe's per-token arrays of one step (float64, [n_tokens]; ``response`` indexes
        the step's responses)."""
        d = self.out / TOKENS_DIR
        d.mkdir(exist_ok=True)
        final = d / f"step_{step:06d}.npz"
        tmp = d / f"step_{step:06d}.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, final)

    def close(self) -> None:
        self.writer.close()
        self.reporters.close()


# -- checkpoints -------------------------------------------------------------------------------


def write_checkpoint(out: Path, save: Callable[[Path], None], step: int) -> Path:
    """Write a whole checkpoint: ``save(folder)`` fills ``checkpoint.tmp``, ``COMPLETE`` marks it
    whole, and only then does it replace the previous one. A kill between the last two moves
    leaves a whole ``checkpoint.tmp``, which ``recover_checkpoint`` puts in place."""
    tmp = out / (CHECKPOINT_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    (tmp / CHECKPOINT_COMPLETE).write_text(f"{step}\n")
    final = out / CHECKPOINT_DIR
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def recover_checkpoint(out: Path) -> Path | None:
    """The newest whole checkpoint of our engine in ``out``, or None. A whole
    ``checkpoint.tmp`` (a kill after it was written, before it was moved) is moved into place
    first, so this may rename folders."""
    final, tmp = out / CHECKPOINT_DIR, out / (CHECKPOINT_DIR + ".tmp")
    if (tmp / CHECKPOINT_COMPLETE).exists():
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    return final if (final / CHECKPOINT_COMPLETE).exists() else None


def latest_trl_checkpoint(out: Path) -> tuple[Path, int] | None:
    """The TRL engine's newest checkpoint folder and its global (optimiser) step, or None."""
    ckpts = [
        p
        for p in (out / TRL_DIR).glob("checkpoint-*")
        if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").exists()
    ]
    if not ckpts:
        return None
    newest = max(ckpts, key=lambda p: int(p.name.split("-")[1]))
    return newest, int(json.loads((newest / "trainer_state.json").read_text())["global_step"])


def find_checkpoint(out: Path, engine: Engine, updates_per_step: int) -> tuple[Path, int] | None:
    """The newest whole checkpoint in ``out`` of the engine that wrote it, and the GRPO step
    a resume from it runs first; None when there is none. Ours writes that step into its
    ``COMPLETE`` mark; TRL's records its optimiser step (``updates_per_step`` a GRPO step)."""
    if engine is Engine.TRL:
        latest = latest_trl_checkpoint(out)
        return None if latest is None else (latest[0], latest[1] // updates_per_step)
    folder = recover_checkpoint(out)
    if folder is None:
        return None
    return folder, int((folder / CHECKPOINT_COMPLETE).read_text().split()[0])


def checkpoint_size(folder: Path) -> int:
    """Bytes on disk of a checkpoint folder."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def checkpoint_note(folder: Path, last_step: int) -> str:
    """The line both engines say once, at their first checkpoint: its size and place."""
    return (
        f"checkpoint after step {last_step}: {checkpoint_size(folder) / 2**20:.1f} MiB in {folder}"
    )


__all__ = [
    "CHECKPOINT_COMPLETE",
    "CHECKPOINT_DIR",
    "COV_TABLES_FILE",
    "FINAL_DIR",
    "TOKENS_DIR",
    "TRL_DIR",
    "RunDirectory",
    "check_resume",
    "checkpoint_note",
    "checkpoint_size",
    "find_checkpoint",
    "holds_run",
    "latest_trl_checkpoint",
    "recorded_config",
    "recover_checkpoint",
    "truncate_run",
    "write_checkpoint",
]


def recorded_config(cfg, task, tokenizer, prompt_format) -> dict[str, Any]:
    """What ``config.json`` records for an LM run, in both engines: the settings; for a dataset
    run the dataset (file, fields, answer rule) in place of the synthetic task's name; the task's
    largest reward (the law's ceiling check); and the first training prompt as the model reads
    it (after the chat template and any cut, ``prompt_format``), so a user can see what the
    model saw."""
    from llm_bridge.rollout import rendered_example

    config = to_jsonable(cfg)
    if task.dataset is not None:
        config.pop("task", None)
        config.pop("terms", None)
        config["dataset_source"] = to_jsonable(task.dataset)
    config["reward_max"] = task.max_reward
    seen = rendered_example(tokenizer, task.train[0].prompt, prompt_format)
    config["rendered_prompt"] = seen["text"]
    config["rendered_prompt_tokens"] = seen["tokens"]
    return config
