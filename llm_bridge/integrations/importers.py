"""Import other trainers' logs as run directories (``config.json`` + ``steps.jsonl``).

- verl: console logs, TensorBoard event files, the JSON-lines file logger, CSV
  (``import_verl``). Key names changed across verl versions: the mean token entropy is
  ``actor/entropy`` (older runs: ``actor/entropy_loss``, which is the entropy, not a loss term),
  validation ``val-core/<source>/reward/mean@1`` (older: ``val/test_score/<source>``).
- Any trainer's TensorBoard event files (``import_tensorboard``) and W&B history
  (``import_wandb``: the UI's CSV export, ``wandb-history.jsonl``, an offline run's
  ``run-<id>.wandb``). TRL's ``report_to`` streams arrive this way (tags ``train/entropy``,
  ``train/reward``, ``eval/reward``); so does a run this tool reported, every key by its name.
- TRL: ``trainer_state.json``'s ``log_history`` or the console output (``import_trl``), put
  on the GRPO-step axis; SkyRL's and OpenRLHF's console output (``import_skyrl``,
  ``import_openrlhf``). W&B chart exports of one panel per CSV are merged on ``Step``.
- A reward that is a validation metric (``val-core/…/acc/mean@1``, ``eval_…``) becomes
  ``val_reward`` on its own steps, so that ``fit`` and ``compare`` use it as the paper does.

The format comes from the content (``log_formats.detect_format``), the keys from a table of
known names per trainer (``PROFILES``) unless the user names them. Only measured values are
written: a step without a key leaves it absent.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_bridge.integrations import console_logs
from llm_bridge.integrations.log_formats import (
    LogFormat,
    Rows,
    detect_format,
    read_log,
    read_text,
    text_format,
)
from softmax_theory.runlog import STEPS_FILE, RunWriter, read_json, to_jsonable

# How many of the keys found an error message lists.
KEYS_LISTED = 30
# verl's old console keys carry their unit: "actor/lr(1e-4):0.010" is lr / 1e-4.
SCALED_KEY = re.compile(r"\((\d+(?:\.\d*)?(?:e[+-]?\d+)?)\)$", re.IGNORECASE)
# A key that names a validation metric whatever the trainer: val/…, val-core/…, eval_…, test/…
VALIDATION_NAME = re.compile(r"^(?:val|eval|test)(?:[-_/]|$)")
# How many files of a merged W&B export a message names before "…"
FILES_LISTED = 4


@dataclass(frozen=True)
class KeyMap:
    """The user's choice of source key for each run-log key; None lets the profile choose.

    ``val`` may be a glob pattern (``val-core/*/reward/mean@1``); with several matches the
    first in name order is taken, and the import says so.
    """

    step: str | None = None
    entropy: str | None = None
    reward: str | None = None
    val: str | None = None
    lr: str | None = None


@dataclass(frozen=True)
class Profile:
    """The key names one trainer writes, each a list of candidates in order of preference
    (``val``: glob patterns, one per data source)."""

    name: str
    step: tuple[str, ...]
    entropy: tuple[str, ...]
    reward: tuple[str, ...]
    val: tuple[str, ...]
    lr: tuple[str, ...]
    carry_all: bool = False  # every numeric key goes into the run log under its own name


VERL = Profile(
    name="verl",
    step=("step", "_step", "Step", "global_step", "training/global_step"),
    entropy=("actor/entropy", "actor/entropy_loss"),
    reward=("critic/score/mean",),
    val=("val-core/*/reward/mean@*", "val-core/*/acc/mean@*", "val/test_score/*"),
    lr=("actor/lr", "actor/lr(1e-4)"),
)
# TRL through transformers' report_to callbacks: "train/" and "eval/" prefixes, optimiser steps
TRL_STREAM = Profile(
    name="trl",
    step=("train/global_step", "step", "Step", "_step"),
    entropy=("train/entropy",),
    reward=("train/reward",),
    val=("eval/reward",),
    lr=("train/learning_rate",),
)
# What this tool's own reporters write: the run-log keys under their own names
RUN_LOG = Profile(
    name="run log",
    step=("step", "_step", "Step"),
    entropy=("entropy",),
    reward=("reward",),
    val=("val_reward",),
    lr=("lr",),
    carry_all=True,
)
TRL_STATE = Profile(
    name="trl",
    step=("step",),
    entropy=("entropy",),
    reward=("reward",),
    val=("eval_reward",),
    lr=("learning_rate",),
)
# SkyRL's console: the worker's status dict and the trainer's reward lines
SKYRL = Profile(
    name="skyrl",
    step=("step",),
    entropy=("policy_entropy",),
    reward=("reward/avg_raw_reward", "avg_raw_rewards", "avg_final_rewards"),
    val=(),
    lr=("policy_lr",),
)
# OpenRLHF's console: "entropy_loss" is the mean token entropy (logged with --entropy_loss_coef)
OPENRLHF = Profile(
    name="openrlhf",
    step=("step",),
    entropy=("entropy_loss",),
    reward=("reward", "rollout/reward_mean"),
    val=("eval_*_pass1", "eval_*_pass*"),
    lr=("actor_lr",),
)
PROFILES = (RUN_LOG, VERL, TRL_STREAM)

VERL_FORMATS = (LogFormat.CONSOLE, LogFormat.TENSORBOARD, LogFormat.JSONL, LogFormat.CSV)
TENSORBOARD_FORMATS = (LogFormat.TENSORBOARD,)
WANDB_FORMATS = (LogFormat.CSV, LogFormat.JSONL, LogFormat.WANDB_RUN)
# W&B's own bookkeeping columns (_step, _runtime, _timestamp, _wandb) are never a metric
WANDB_INTERNAL = "_"


@dataclass(frozen=True)
class ImportResult:
    """What an import read and wrote: for the command line to say."""

    out: Path
    source: Path | str  # a file or folder, or the files of a merged W&B export
    format: LogFormat
    profile: str
    keys: dict[str, str]  # run-log key → the source key it came from
    steps: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        taken = ", ".join(f"{k} ← {v}" for k, v in self.keys.items())
        lines = [f"{self.source}: {self.format.value} log ({self.profile} keys); {taken}"]
        lines += list(self.notes)
        lines.append(f"wrote {self.steps} steps to {self.out}")
        return "\n".join(lines)


def _number(value: Any, where: str, key: str) -> float | None:
    """A cell as a number: None when empty (not measured at that step); a non-numeric or
    non-finite cell is refused, naming the file, the line and the key."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return float(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key} is {value!r}, not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{where}: {key} is {value!r}; a run log holds finite numbers only")
    return x


def _keys_found(seen: list[str]) -> str:
    shown = ", ".join(seen[:KEYS_LISTED])
    return shown + (f", … ({len(seen)} in all)" if len(seen) > KEYS_LISTED else "")


@dataclass(frozen=True)
class ChosenKeys:
    """The source keys an import takes, and what a reader must be told about the choice.
    ``reward`` is None where the run's only reward is a validation metric (``val``)."""

    profile: Profile
    step: str
    entropy: str
    reward: str | None
    val: str | None
    lr: str | None
    notes: tuple[str, ...]


def _first_present(candidates: tuple[str, ...], seen: set[str]) -> str | None:
    return next((c for c in candidates if c in seen), None)


def _val_matches(patterns: tuple[str, ...], seen: list[str]) -> list[str]:
    """Keys matching the first pattern that matches any (one per data source), in name order."""
    for pattern in patterns:
        hits = [k for k in seen if fnmatch.fnmatchcase(k, pattern)]
        if hits:
            return hits
    return []


def is_validation_key(key: str, profile: Profile) -> bool:
    """Whether ``key`` names a validation metric: one of the profile's validation patterns,
    or a name that opens with val, eval or test."""
    return bool(VALIDATION_NAME.match(key)) or any(
        fnmatch.fnmatchcase(key, pattern) for pattern in profile.val
    )


def _matches(profile: Profile, keys: KeyMap, seen_list: list[str]) -> bool:
    """The log holds the profile's entropy and a reward: a training one or a validation one."""
    seen = set(seen_list)
    has_entropy = keys.entropy or _first_present(profile.entropy, seen)
    has_reward = (
        keys.reward
        or keys.val
        or _first_present(profile.reward, seen)
        or _val_matches(profile.val, seen_list)
    )
    return bool(has_entropy and has_reward)


def _no_profile(
    profiles: tuple[Profile, ...], keys: KeyMap, seen: set[str], source: Path | str, found: str
) -> ValueError:
    """The refusal of a log that matches no profile: its entropy is missing, else its reward."""
    has_entropy = keys.entropy or any(_first_present(p.entropy, seen) for p in profiles)
    flag, wanted = ("--reward-key", {c for p in profiles for c in p.reward})
    if not has_entropy:
        flag, wanted = ("--entropy-key", {c for p in profiles for c in p.entropy})
    return ValueError(f"{flag}: {source} has none of {', '.join(sorted(wanted))} {found}")


def _validation_keys(
    profile: Profile, keys: KeyMap, seen_list: list[str], source: Path | str, found: str
) -> list[str]:
    """The validation keys the user's glob or the profile's patterns match, in name order."""
    if keys.val is None:
        return _val_matches(profile.val, seen_list)
    vals = [k for k in seen_list if fnmatch.fnmatchcase(k, keys.val)]
    if not vals:
        raise ValueError(f"--val-key: {source} has no key matching {keys.val!r} {found}")
    return vals


def choose_keys(
    rows: Rows, profiles: tuple[Profile, ...], keys: KeyMap, source: Path | str
) -> ChosenKeys:
    """The profile whose entropy and reward keys the log holds (the first, in order), and the
    keys taken, the user's choices first. A key the user names that the log lacks, or a log
    that matches no profile, is refused naming the flag and listing the keys found.

    A reward the user names that is a validation metric (``val-core/…/acc/mean@1``) is taken
    as ``val_reward``, on the steps it was measured at; so is the validation key of a log
    that has no training reward."""
    seen_list = sorted({k for _, row in rows for k in row})
    seen = set(seen_list)
    found = f"(keys found: {_keys_found(seen_list)})"
    for flag, key in (
        ("--step-key", keys.step),
        ("--entropy-key", keys.entropy),
        ("--reward-key", keys.reward),
    ):
        if key is not None and key not in seen:
            raise ValueError(f"{flag}: {source} has no {key!r} {found}")
    profile = next((p for p in profiles if _matches(p, keys, seen_list)), None)
    if profile is None:
        raise _no_profile(profiles, keys, seen, source, found)
    entropy = keys.entropy or _first_present(profile.entropy, seen)
    assert entropy is not None  # _matches found it
    step = keys.step or _first_present(profile.step, seen)
    if step is None:
        raise ValueError(f"--step-key: {source} has none of {', '.join(profile.step)} {found}")
    reward = keys.reward or _first_present(profile.reward, seen)
    vals = _validation_keys(profile, keys, seen_list, source, found)
    notes: list[str] = []
    if keys.reward is not None and keys.val is None and is_validation_key(keys.reward, profile):
        vals, reward = [keys.reward], None
        notes.append(
            f"val_reward ← {keys.reward}: a validation metric, imported on the steps it was "
            "measured at (not as the training reward)"
        )
    val = vals[0] if vals else None
    if len(vals) > 1:
        how = f"--val-key matches {len(vals)}" if keys.val else f"{len(vals)} data sources"
        notes.append(
            f"val_reward: took {val}, the first of {how} ({', '.join(vals)}); --val-key chooses"
        )
    if val is None:
        notes.append("no validation key: the run has no val_reward")
    elif reward is None and keys.reward is None:
        notes.append(
            f"no training reward ({', '.join(profile.reward)}): the run's reward is val_reward"
        )
    return ChosenKeys(
        profile=profile,
        step=step,
        entropy=entropy,
        reward=reward,
        val=val,
        lr=keys.lr or _first_present(profile.lr, seen),
        notes=tuple(notes),
    )


def _unit(key: str) -> float:
    """The unit a key's name carries: ``actor/lr(1e-4)`` holds lr in units of 1e-4."""
    m = SCALED_KEY.search(key)
    return float(m.group(1)) if m else 1.0


def _step_index(value: Any, where: str, key: str) -> int | None:
    x = _number(value, where, key)
    if x is None:
        return None
    if x != int(x) or x < 0:
        raise ValueError(f"{where}: {key} is {value!r}, not a step index (0, 1, 2, …)")
    return int(x)


def run_keys(chosen: ChosenKeys) -> dict[str, str]:
    """Run-log key → the source key it is read from."""
    mapping = {"entropy": chosen.entropy}
    for name, key in (("reward", chosen.reward), ("val_reward", chosen.val), ("lr", chosen.lr)):
        if key is not None:
            mapping[name] = key
    return mapping


def merge_by_step(
    rows: Rows, chosen: ChosenKeys, mapping: dict[str, str], step_of=None
) -> dict[int, dict[str, Any]]:
    """The rows' values merged by step (train and validation often arrive as separate rows).
    A key met twice at one step keeps its first value: TRL logs each update of a GRPO step,
    and the first one measured the policy the step sampled from."""
    taken = set(mapping.values()) | {chosen.step}
    merged: dict[int, dict[str, Any]] = {}
    for where, row in rows:
        step = _step_index(row.get(chosen.step), where, chosen.step)
        if step is None:
            continue
        if step_of is not None:
            step = step_of(row, step)
        rec = merged.setdefault(step, {})
        for name, key in mapping.items():
            value = _number(row.get(key), where, key)
            if value is not None:
                # ÷ 1e4 gives 1e-6 exactly where × 1e-4 gives 1.0000000000000002e-06
                rec.setdefault(name, value / (1 / _unit(key)))
        if chosen.profile.carry_all:
            _carry_rest(row, where, taken, rec)
    return merged


def _carry_rest(row: dict[str, Any], where: str, taken: set[str], rec: dict[str, Any]) -> None:
    """Every other numeric key of the row under its own name (this tool's own runs)."""
    for key, raw in row.items():
        if key in taken or key.startswith(WANDB_INTERNAL) or key in rec:
            continue
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            value = _number(raw, where, key)
            if value is not None:
                rec[key] = value


def _step_span(records: list[dict[str, Any]], name: str) -> str:
    steps = [r["step"] for r in records if name in r]
    if not steps:
        return "no step"
    return f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}–{steps[-1]}"


def check_measured(
    records: list[dict[str, Any]], mapping: dict[str, str], source: Path | str
) -> None:
    """Refuse a run the law cannot be fitted on: no value of the entropy or of the reward
    taken, or no step that measured entropy and a reward (training or validation) both, as
    when W&B charts exported separately cover different steps."""
    for flag, name in (("--entropy-key", "entropy"), ("--reward-key", "reward")):
        if name in mapping and not any(name in r for r in records):
            raise ValueError(f"{flag}: no step of {source} has a value of {mapping[name]!r}")
    if "reward" not in mapping and not any("val_reward" in r for r in records):
        raise ValueError(f"--val-key: no step of {source} has a value of {mapping['val_reward']!r}")
    rewards = [n for n in ("reward", "val_reward") if n in mapping]
    if any("entropy" in r and any(n in r for n in rewards) for r in records):
        return
    spans = "; ".join(
        f"{name} ← {mapping[name]}: {_step_span(records, name)}" for name in ["entropy", *rewards]
    )
    raise ValueError(
        f"{source}: no step has both entropy and a reward, their steps do not overlap ({spans})"
    )


def rows_to_run(
    rows: Rows,
    chosen: ChosenKeys,
    out: str | os.PathLike,
    source: Path | str,
    fmt: LogFormat,
    step_of=None,
    notes: tuple[str, ...] = (),
) -> ImportResult:
    """Merge rows by step and write the run. ``step_of(row, step)`` maps a source step to the
    run's step (default: the same)."""
    mapping = run_keys(chosen)
    merged = merge_by_step(rows, chosen, mapping, step_of)
    records = [{"step": step, **merged[step]} for step in sorted(merged) if merged[step]]
    check_measured(records, mapping, source)
    config = {
        "imported_from": str(source),
        "format": fmt.value,
        "profile": chosen.profile.name,
        "keys": {"step": chosen.step} | mapping,
    }
    write_run(out, config, records)
    return ImportResult(
        out=Path(out),
        source=source,
        format=fmt,
        profile=chosen.profile.name,
        keys=config["keys"],
        steps=len(records),
        notes=chosen.notes + notes,
    )


def write_run(
    out: str | os.PathLike, config: dict[str, Any], records: list[dict[str, Any]]
) -> None:
    """Write a finished run at once: ``RunWriter`` makes the directory, refuses one that holds a
    run and writes ``config.json``; the steps then go in one write and one fsync. (``RunWriter``
    fsyncs each step, as a live run must; for a log read whole, 1,120 fsyncs took 4 s on a
    busy disk where the reading took 0.1 s.)"""
    lines = "".join(json.dumps(to_jsonable(r)) + "\n" for r in records)  # refuses NaN / inf
    with RunWriter(out, config):
        pass
    with (Path(out) / STEPS_FILE).open("w", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


def import_verl(
    path: str | os.PathLike, out: str | os.PathLike, keys: KeyMap = KeyMap()
) -> ImportResult:
    """A verl log — console, TensorBoard event file or folder, JSON lines or CSV — → a run
    directory. Steps stay verl's global steps."""
    source = Path(path)
    fmt, rows = read_log(source, VERL_FORMATS)
    return rows_to_run(rows, choose_keys(rows, (VERL,), keys, source), out, source, fmt)


def import_tensorboard(
    path: str | os.PathLike, out: str | os.PathLike, keys: KeyMap = KeyMap()
) -> ImportResult:
    """Any trainer's TensorBoard event file, or a folder of them, → a run directory: this
    tool's own tags (every run-log key), verl's or TRL's, or the tags the user names."""
    source = Path(path)
    fmt, rows = read_log(source, TENSORBOARD_FORMATS)
    return rows_to_run(rows, choose_keys(rows, PROFILES, keys, source), out, source, fmt)


def wandb_runs(rows: Rows) -> set[str]:
    """The run names of a W&B UI export's columns ``<run> - <key>`` (none for a plain CSV)."""
    return {k.split(" - ", 1)[0] for _, row in rows for k in row if " - " in k}


def pick_run(runs_by_file: dict[Path, set[str]], run: str | None, label: str) -> str | None:
    """The run to import: ``run``, which each file that names runs must hold, else the only
    run of all the files; several and no ``run`` are refused, listing them."""
    every = sorted(set().union(*runs_by_file.values()))
    if run is None:
        if len(every) > 1:
            raise ValueError(
                f"--run: {label} holds {len(every)} runs ({', '.join(every)}); choose one"
            )
        return every[0] if every else None
    for file, runs in runs_by_file.items():
        if runs and run not in runs:
            raise ValueError(f"--run: {file} has no run {run!r} (runs: {', '.join(sorted(runs))})")
    return run


def plain_keys(rows: Rows, run: str | None) -> Rows:
    """The W&B UI's export names columns ``<run> - <key>``, with ``__MIN``/``__MAX`` companions
    for smoothed charts: keep ``run``'s columns under their plain key, and the plain columns
    (``Step``)."""
    if run is None:
        return rows
    head = f"{run} - "
    out: Rows = []
    for where, row in rows:
        plain = {k: v for k, v in row.items() if " - " not in k}
        for k, v in row.items():
            if k.startswith(head) and not k.endswith(("__MIN", "__MAX")):
                plain[k[len(head) :]] = v
        out.append((where, plain))
    return out


def csv_exports(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.csv") if p.is_file())


def wandb_files(paths: list[Path]) -> list[Path]:
    """Each path as given, but a folder that is neither a W&B run nor TensorBoard's → the CSV
    exports it holds (one chart per file, as the W&B UI exports them)."""
    files: list[Path] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        try:
            detect_format(path)
            files.append(path)
        except ValueError:
            found = csv_exports(path)
            if not found:
                raise ValueError(
                    f"PATH: {path} is a folder with no W&B run file, history or CSV export"
                ) from None
            files.extend(found)
    return files


def files_label(files: list[Path]) -> str:
    shown = ", ".join(str(f) for f in files[:FILES_LISTED])
    return shown + (f", … ({len(files)} files)" if len(files) > FILES_LISTED else "")


def read_wandb(files: list[Path], run: str | None) -> tuple[LogFormat, Rows, str]:
    """The rows of one W&B history, or of several CSV exports merged (``rows_to_run``
    merges them on their step); the format, and a label naming the files."""
    label = files_label(files)
    read = [(file, *read_log(file, WANDB_FORMATS)) for file in files]
    not_csv = [(file, fmt) for file, fmt, _ in read if fmt is not LogFormat.CSV]
    if not_csv and len(files) > 1:
        file, fmt = not_csv[0]
        raise ValueError(
            f"PATH: {file} is a {fmt.value} log; several files are merged only when each is a "
            "CSV export"
        )
    if not_csv:
        if run is not None:
            raise ValueError(
                f"--run: {label} is a single run ({not_csv[0][1].value}); --run is for CSV exports"
            )
        return not_csv[0][1], read[0][2], label
    chosen = pick_run({file: wandb_runs(rows) for file, _, rows in read}, run, label)
    rows = [row for _, _, file_rows in read for row in plain_keys(file_rows, chosen)]
    return LogFormat.CSV, rows, label


def import_wandb(
    path: str | os.PathLike | list[str | os.PathLike],
    out: str | os.PathLike,
    keys: KeyMap = KeyMap(),
    run: str | None = None,
) -> ImportResult:
    """A W&B history — the UI's CSV export (one file, several, or a folder of them: one chart
    per file, merged on ``Step``), ``wandb-history.jsonl``, or an offline run's
    ``run-<id>.wandb`` (the file or its run folder) — → a run directory. ``run`` picks one run
    of an export that holds several."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    files = wandb_files([Path(p) for p in paths])
    fmt, rows, label = read_wandb(files, run)
    source = files[0] if len(files) == 1 else label
    return rows_to_run(rows, choose_keys(rows, PROFILES, keys, source), out, source, fmt)


def trl_updates_per_step(trl: dict[str, Any]) -> int:
    """Optimiser updates per GRPO step (generation batch) of a TRL run:
    ``steps_per_generation // gradient_accumulation_steps × num_iterations``."""
    try:
        spg = int(trl["steps_per_generation"])
        accumulation = int(trl["gradient_accumulation_steps"])
        iterations = int(trl["num_iterations"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"config.json: the 'trl' block lacks a setting ({err})") from None
    updates = spg // accumulation * iterations
    if updates < 1:
        raise ValueError(f"config.json: the 'trl' block gives {updates} updates per step")
    return updates


def trl_log_file(path: str | os.PathLike) -> Path:
    """The TRL log a path names: a folder's ``trainer_state.json``, else the file itself."""
    file = Path(path)
    if file.is_dir():
        file = file / "trainer_state.json"
    if not file.is_file():
        raise FileNotFoundError(f"PATH: {file} does not exist")
    return file


def updates_per_grpo_step(path: Path, updates_per_step: int | None) -> tuple[int, str]:
    """Optimiser updates per GRPO step: from ``<run>/config.json``'s ``trl`` block when the log
    sits in ``<run>/trl/`` (the TRL engine's layout), else ``updates_per_step``, else 1; and
    the line that says which."""
    if updates_per_step is not None and updates_per_step < 1:
        raise ValueError(f"--updates-per-step: must be at least 1, got {updates_per_step}")
    config_path = path.parent.parent / "config.json"
    run_config = read_json(config_path) if path.parent.name == "trl" else None
    trl_block = run_config.get("trl") if isinstance(run_config, dict) else None
    if isinstance(trl_block, dict):
        u = trl_updates_per_step(trl_block)
        if updates_per_step is not None and updates_per_step != u:
            raise ValueError(
                f"--updates-per-step: {config_path} says {u} updates per step, not "
                f"{updates_per_step}"
            )
        return u, f"{u} optimiser updates per GRPO step, from {config_path}"
    u = updates_per_step or 1
    return u, f"{u} optimiser update(s) per GRPO step" + (
        "" if updates_per_step else " (assumed; --updates-per-step sets it)"
    )


def trl_rows(path: Path, logging_steps: int | None) -> tuple[LogFormat, Rows, tuple[str, ...]]:
    """TRL's rows ``{"step": optimiser step, …}``, told from the content: ``trainer_state.json``
    (its ``log_history``; the file may have any name) or the console output (steps inferred,
    said in the note)."""
    if logging_steps is not None and logging_steps < 1:
        raise ValueError(f"--logging-steps: must be at least 1, got {logging_steps}")
    text = read_text(path)
    fmt = text_format(text)
    if fmt is LogFormat.TRL_STATE:
        if logging_steps is not None:
            raise ValueError(
                f"--logging-steps: {path} is a trainer_state.json; its steps are its own"
            )
        history = json.loads(text)["log_history"]
        return fmt, [(f"{path} log_history[{i}]", r) for i, r in enumerate(history)], ()
    dicts = console_logs.read_trl_console(path, text) if fmt is LogFormat.TRL_CONSOLE else []
    if not dicts and text.lstrip().startswith("{"):  # a JSON file, torn or corrupt: say where
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"PATH: {path} line {err.lineno}: not valid JSON ({err.msg})"
            ) from None
    if not dicts:
        raise ValueError(
            f"PATH: {path} is neither a trainer_state.json nor TRL's console output: it holds "
            "no metric dict ({'loss': …})"
        )
    rows, how = console_logs.trl_steps(dicts, logging_steps)
    return LogFormat.TRL_CONSOLE, rows, (how,)


def import_trl(
    path: str | os.PathLike,
    out: str | os.PathLike,
    updates_per_step: int | None = None,
    logging_steps: int | None = None,
) -> ImportResult:
    """A TRL log — ``trainer_state.json`` (or its folder) or the console output of a run
    (``nohup … > run.log``) — → a run directory on the GRPO-step axis.

    TRL's steps count optimiser updates (the console prints none: ``logging_steps``, the
    progress bar or the order of the dicts gives them); a GRPO step (one generation batch)
    takes u of them (``updates_per_grpo_step``). A training entry logged after update g
    (1-based) belongs to GRPO step (g − 1) // u; an evaluation at update g measured the policy
    before GRPO step g // u, so the evaluation on start (g = 0) is step 0 — the TRL engine's
    own run log pairs them the same way.
    """
    file = trl_log_file(path)
    fmt, rows, how = trl_rows(file, logging_steps)
    u, said = updates_per_grpo_step(file, updates_per_step)

    def grpo_step(row: dict[str, Any], g: int) -> int:
        if any(k.startswith("eval_") for k in row):
            return g // u
        return max(g - 1, 0) // u

    chosen = choose_keys(rows, (TRL_STATE,), KeyMap(), file)
    return rows_to_run(rows, chosen, out, file, fmt, step_of=grpo_step, notes=(*how, said))


def console_log_text(path: str | os.PathLike) -> tuple[Path, str]:
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"PATH: {source} is not a file")
    return source, read_text(source)


def import_skyrl(
    path: str | os.PathLike, out: str | os.PathLike, keys: KeyMap = KeyMap()
) -> ImportResult:
    """SkyRL's console output → a run directory: each status line
    (``skyrl_train.trainer:train:N - {'policy_entropy': …}``) is a step, in order from 1, with
    the reward printed before it (``avg_raw_rewards: X`` and the like)."""
    source, text = console_log_text(path)
    rows = console_logs.read_skyrl_console(source, text)
    if not rows:
        raise ValueError(
            f"PATH: {source} has no SkyRL status line "
            "('… skyrl_train.trainer:train:N - {'policy_entropy': …}')"
        )
    chosen = choose_keys(rows, (SKYRL,), keys, source)
    how = "steps: the order of the status lines (SkyRL prints no step number), from 1"
    return rows_to_run(rows, chosen, out, source, LogFormat.SKYRL_CONSOLE, notes=(how,))


def import_openrlhf(
    path: str | os.PathLike, out: str | os.PathLike, keys: KeyMap = KeyMap()
) -> ImportResult:
    """OpenRLHF's console output → a run directory: ``✨ Global step N: {…}`` lines (entropy
    ``entropy_loss``, logged when the run sets an entropy coefficient; reward ``reward``) and
    the evaluations (``eval_<source>_pass1`` → val_reward), each at its step."""
    source, text = console_log_text(path)
    rows = console_logs.read_openrlhf_console(source, text)
    if not rows:
        raise ValueError(f"PATH: {source} has no OpenRLHF step line ('✨ Global step N: {{…}}')")
    chosen = choose_keys(rows, (OPENRLHF,), keys, source)
    return rows_to_run(rows, chosen, out, source, LogFormat.OPENRLHF_CONSOLE)
