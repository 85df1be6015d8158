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

Every file is checked as it is read back. A resume (``resume_point``) ends with every step in
the log once: it starts at or before the first step the log lacks (a torn last line of
``steps.jsonl`` or ``cov_tables.jsonl`` is cut away and its step run again, said in one line),
from the newest checkpoint that is whole (``file_checks``) and not past that step; each one
passed over is said and moved aside (``skipped-…``), and with none left the run restarts at
step 0. So a kill between a step's row and its checkpoint, in either order, loses no step. Any
other fault is refused in one line naming the file and line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from llm_bridge.config import Engine
from llm_bridge.file_checks import folder_fault
from llm_bridge.reporters import ReportTarget, open_reporters
from softmax_theory.runlog import (
    STEPS_FILE,
    RunWriter,
    atomic_write_text,
    check_resumable,
    read_json,
    read_step_lines,
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
TRL_STATE_FILE = "trainer_state.json"
# A checkpoint a resume passed over (not whole, or past the log) is moved to this prefix + its name.
SKIPPED_PREFIX = "skipped-"
TOKEN_FILE = re.compile(r"step_(\d+)\.npz")


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
    """Drop the records, covariance tables and token files of steps ≥ ``first_step``, a torn last
    line of either log with them (``resume_point`` has said so), and any token file a kill left
    half-written (``step_N.tmp.npz``)."""
    truncate_steps(out, first_step)
    tables = out / COV_TABLES_FILE
    if tables.exists():
        kept = [t for t in read_step_lines(tables).records if t["step"] < first_step]
        atomic_write_text(tables, "".join(json.dumps(t) + "\n" for t in kept))
    for path in (out / TOKENS_DIR).glob("step_*.npz"):
        step = token_file_step(path)
        if step is None and path.name.endswith(".tmp.npz"):
            path.unlink()  # written by write_tokens, never moved into place
        elif step is not None and step >= first_step:
            path.unlink()


def token_file_step(path: Path) -> int | None:
    """The step of a token file named ``step_NNNNNN.npz``; None for any other name."""
    match = TOKEN_FILE.fullmatch(path.name)
    return None if match is None else int(match.group(1))


def read_cov_tables(out: Path) -> tuple[dict[str, Any], ...]:
    """A run's covariance tables (``cov_tables.jsonl``), each line checked; a torn or corrupt
    line is refused naming the file and line (``read_step_lines``)."""
    path = out / COV_TABLES_FILE
    return read_step_lines(path).whole() if path.exists() else ()


def read_tokens(out: Path, step: int) -> dict[str, np.ndarray]:
    """The probe's per-token arrays of one step; a token file that is not whole (cut short, or
    a member failing zipfile's CRC check as numpy reads it) is refused naming it."""
    path = out / TOKENS_DIR / f"step_{step:06d}.npz"
    if not path.exists():
        raise FileNotFoundError(f"tokens: {out} has no token file for step {step} ({path.name})")
    try:
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: not a whole token file ({err})") from None


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
    leaves a whole ``checkpoint.tmp``, which ``find_checkpoint`` puts in place."""
    tmp = out / (CHECKPOINT_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    (tmp / CHECKPOINT_COMPLETE).write_text(f"{step}\n")
    final = out / CHECKPOINT_DIR
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def our_checkpoints(out: Path) -> list[Path]:
    """Our engine's checkpoint folders in ``out``, newest first: ``checkpoint.tmp`` (newer when
    it exists: a kill after it was written, before it was moved into place), then
    ``checkpoint``."""
    return [p for p in (out / (CHECKPOINT_DIR + ".tmp"), out / CHECKPOINT_DIR) if p.is_dir()]


def trl_checkpoints(out: Path) -> list[Path]:
    """The TRL engine's checkpoint folders (``trl/checkpoint-N``), newest (largest N) first."""
    numbered = [p for p in (out / TRL_DIR).glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return sorted(numbered, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def our_checkpoint_step(folder: Path) -> int:
    """The GRPO step a resume from our checkpoint ``folder`` runs first, from its ``COMPLETE``
    mark; a ValueError naming the mark when it is missing (a save cut short) or not a step."""
    mark = folder / CHECKPOINT_COMPLETE
    if not mark.exists():
        raise ValueError(f"{folder} has no {CHECKPOINT_COMPLETE} mark (a checkpoint cut short)")
    words = mark.read_bytes().split()
    if len(words) != 1 or not words[0].isdigit():
        raise ValueError(f"{mark}: holds {mark.read_bytes()[:40]!r}, not a step")
    return int(words[0])


def trl_global_step(folder: Path) -> int:
    """The optimiser step of a TRL checkpoint, from its ``trainer_state.json``; a ValueError
    naming the file when it is missing (a save cut short), not whole or without the step."""
    path = folder / TRL_STATE_FILE
    if not path.exists():
        raise ValueError(f"{folder} has no {TRL_STATE_FILE} (a checkpoint cut short)")
    state = read_json(path)
    step = state.get("global_step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
        raise ValueError(f"{path}: 'global_step' is {step!r}, not a step")
    return step


def latest_trl_checkpoint(out: Path) -> tuple[Path, int] | None:
    """The TRL engine's newest whole-looking checkpoint folder (one with its
    ``trainer_state.json``) and its global (optimiser) step, or None."""
    for folder in trl_checkpoints(out):
        if (folder / TRL_STATE_FILE).exists():
            return folder, trl_global_step(folder)
    return None


def checkpoint_step(folder: Path, engine: Engine, updates_per_step: int) -> int:
    """The GRPO step a resume from ``folder`` runs first. Ours writes that step into its
    ``COMPLETE`` mark; TRL's records its optimiser step (``updates_per_step`` a GRPO step)."""
    if engine is Engine.TRL:
        return trl_global_step(folder) // updates_per_step
    return our_checkpoint_step(folder)


def checkpoint_fault(
    folder: Path, engine: Engine, updates_per_step: int, first_unlogged: int | None
) -> tuple[int | None, str | None]:
    """(the step a resume from ``folder`` runs first, why it cannot: None when it can). It
    cannot when its step does not read, when a file in it is not whole
    (``file_checks.folder_fault``), or when its step is past ``first_unlogged``, the first step
    the log lacks, which a resume from it would leave out for good."""
    try:
        step = checkpoint_step(folder, engine, updates_per_step)
    except ValueError as err:
        return None, str(err)
    if first_unlogged is not None and step > first_unlogged:
        return step, (
            f"{folder} holds the state after step {step - 1}, but {STEPS_FILE} lacks step "
            f"{first_unlogged}, which a resume from it would leave out"
        )
    return step, folder_fault(folder)


def set_aside(folder: Path) -> Path:
    """Move a checkpoint a resume passed over to ``skipped-<name>`` beside it (replacing an
    older one), where neither engine looks for checkpoints nor TRL's rotation deletes."""
    aside = folder.with_name(SKIPPED_PREFIX + folder.name)
    shutil.rmtree(aside, ignore_errors=True)
    folder.rename(aside)
    return aside


def find_checkpoint(
    out: Path,
    engine: Engine,
    updates_per_step: int,
    first_unlogged: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[Path, int] | None:
    """The newest checkpoint in ``out`` a resume can continue from, and the GRPO step it runs
    first; None when there is none. Each one passed over (``checkpoint_fault``) is said in one
    line; a whole one past the log, or one with a file that is not whole, is moved aside
    (``set_aside``); one cut short (no mark) is left for the engine's next save to replace. A
    whole ``checkpoint.tmp`` is moved into place, replacing ``checkpoint``."""
    folders = trl_checkpoints(out) if engine is Engine.TRL else our_checkpoints(out)
    for folder in folders:
        step, why = checkpoint_fault(folder, engine, updates_per_step, first_unlogged)
        if why is None and step is not None:
            return _into_place(folder, out), step
        mark = TRL_STATE_FILE if engine is Engine.TRL else CHECKPOINT_COMPLETE
        if not (folder / mark).exists():
            log(f"resume: {why}: not used")
        else:
            log(f"resume: {why}: not used (moved to {set_aside(folder)})")
    return None


def _into_place(folder: Path, out: Path) -> Path:
    """Our ``checkpoint.tmp`` moved over ``checkpoint``; any other folder as it is."""
    final = out / CHECKPOINT_DIR
    if folder.name != CHECKPOINT_DIR + ".tmp":
        return folder
    shutil.rmtree(final, ignore_errors=True)
    folder.rename(final)
    return final


def first_unlogged_step(
    out: Path, cov_table_steps: Iterable[int], log: Callable[[str], None] = lambda _: None
) -> int:
    """The first step a resume must run again for the log to hold every step once: the first
    step ``steps.jsonl`` lacks (its records are 0, 1, 2, …), or the step of a torn last
    covariance table (the next of ``cov_table_steps`` after the last whole one), whichever comes
    first. A torn last line, or a step missing, is said in one line: the truncation cuts it
    and the step runs again. Any other fault of either file is refused by file and line."""
    first = 0
    steps_path = out / STEPS_FILE
    if steps_path.exists():
        lines = read_step_lines(steps_path)
        logged = [r["step"] for r in lines.records]
        first = next((i for i, step in enumerate(logged) if step != i), len(logged))
        if first < len(logged):
            log(f"resume: {steps_path} lacks step {first}: it and every later step run again")
        if lines.torn_line is not None:
            log(
                f"resume: {steps_path} line {lines.torn_line} is torn (cut short mid-write): "
                f"cut away; step {first} runs again"
            )
    tables = out / COV_TABLES_FILE
    if tables.exists():
        lines = read_step_lines(tables)
        if lines.torn_line is not None:
            last = lines.records[-1]["step"] if lines.records else -1
            step = min((s for s in cov_table_steps if s > last), default=last + 1)
            first = min(first, step)
            log(
                f"resume: {tables} line {lines.torn_line} is torn (cut short mid-write): "
                f"cut away; step {step} runs again"
            )
    return first


def resume_point(
    out: Path,
    engine: Engine,
    updates_per_step: int,
    cov_table_steps: Iterable[int],
    log: Callable[[str], None],
) -> tuple[Path | None, int]:
    """Where a resume of the run in ``out`` continues: (the checkpoint folder, the first step
    to run), or (None, 0) to start again at step 0; said in one line either way. The step is at
    or before the first step the log lacks (``first_unlogged_step``), so the resumed log holds
    every step once."""
    first_unlogged = first_unlogged_step(out, cov_table_steps, log)
    had_any = bool(trl_checkpoints(out) if engine is Engine.TRL else our_checkpoints(out))
    found = find_checkpoint(out, engine, updates_per_step, first_unlogged, log)
    if found is None:
        what = "no usable checkpoint" if had_any else "no checkpoint yet"
        log(f"resume: {what}; starting again at step 0")
        return None, 0
    log(f"resume: continuing at step {found[1]}")
    return found


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
    "SKIPPED_PREFIX",
    "TOKENS_DIR",
    "TRL_DIR",
    "TRL_STATE_FILE",
    "RunDirectory",
    "check_resume",
    "checkpoint_fault",
    "checkpoint_note",
    "checkpoint_size",
    "checkpoint_step",
    "find_checkpoint",
    "first_unlogged_step",
    "holds_run",
    "latest_trl_checkpoint",
    "our_checkpoint_step",
    "our_checkpoints",
    "read_cov_tables",
    "read_tokens",
    "recorded_config",
    "resume_point",
    "set_aside",
    "token_file_step",
    "trl_checkpoints",
    "trl_global_step",
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
