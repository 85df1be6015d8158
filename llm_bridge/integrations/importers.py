"""Import other trainers' logs as run directories (``config.json`` + ``steps.jsonl``).

- verl: console logs, TensorBoard event files, the JSON-lines file logger, CSV
  (``import_verl``). Key names changed across verl versions: the mean token entropy is
  ``actor/entropy`` (older runs: ``actor/entropy_loss``, which is the entropy, not a loss term),
  validation ``val-core/<source>/reward/mean@1`` (older: ``val/test_score/<source>``).
- Any trainer's TensorBoard event files (``import_tensorboard``) and W&B history
  (``import_wandb``: the UI's CSV export, ``wandb-history.jsonl``, an offline run's
  ``run-<id>.wandb``). TRL's ``report_to`` streams arrive this way (tags ``train/entropy``,
  ``train/reward``, ``eval/reward``); so does a run this tool reported, every key by its name.
- TRL: ``trainer_state.json``'s ``log_history`` (``import_trl``), put on the GRPO-step axis.

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

from llm_bridge.integrations.log_formats import LogFormat, Rows, read_log
from softmax_theory.runlog import STEPS_FILE, RunWriter, read_json, to_jsonable

# How many of the keys found an error message lists.
KEYS_LISTED = 30
# verl's old console keys carry their unit: "actor/lr(1e-4):0.010" is lr / 1e-4.
SCALED_KEY = re.compile(r"\((\d+(?:\.\d*)?(?:e[+-]?\d+)?)\)$", re.IGNORECASE)


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
    source: Path
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
    """The source keys an import takes, and what a reader must be told about the choice."""

    profile: Profile
    step: str
    entropy: str
    reward: str
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


def choose_keys(
    rows: Rows, profiles: tuple[Profile, ...], keys: KeyMap, source: Path
) -> ChosenKeys:
    """The profile whose entropy and reward keys the log holds (the first, in order), and the
    keys taken, the user's choices first. A key the user names that the log lacks, or a log
    that matches no profile, is refused naming the flag and listing the keys found."""
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
    profile = next(
        (
            p
            for p in profiles
            if (keys.entropy or _first_present(p.entropy, seen))
            and (keys.reward or _first_present(p.reward, seen))
        ),
        None,
    )
    if profile is None:
        has_entropy = keys.entropy or any(_first_present(p.entropy, seen) for p in profiles)
        flag, wanted = (
            ("--reward-key", {c for p in profiles for c in p.reward})
            if has_entropy
            else ("--entropy-key", {c for p in profiles for c in p.entropy})
        )
        raise ValueError(f"{flag}: {source} has none of {', '.join(sorted(wanted))} {found}")
    step = keys.step or _first_present(profile.step, seen)
    if step is None:
        raise ValueError(f"--step-key: {source} has none of {', '.join(profile.step)} {found}")
    notes: list[str] = []
    if keys.val is not None:
        vals = [k for k in seen_list if fnmatch.fnmatchcase(k, keys.val)]
        if not vals:
            raise ValueError(f"--val-key: {source} has no key matching {keys.val!r} {found}")
    else:
        vals = _val_matches(profile.val, seen_list)
    val = vals[0] if vals else None
    if len(vals) > 1:
        how = f"--val-key matches {len(vals)}" if keys.val else f"{len(vals)} data sources"
        notes.append(
            f"val_reward: took {val}, the first of {how} ({', '.join(vals)}); --val-key chooses"
        )
    if val is None:
        notes.append("no validation key: the run has no val_reward")
    lr = keys.lr or _first_present(profile.lr, seen)
    return ChosenKeys(
        profile=profile,
        step=step,
        entropy=keys.entropy or _first_present(profile.entropy, seen),  # type: ignore[arg-type]
        reward=keys.reward or _first_present(profile.reward, seen),  # type: ignore[arg-type]
        val=val,
        lr=lr,
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


def rows_to_run(
    rows: Rows,
    chosen: ChosenKeys,
    out: str | os.PathLike,
    source: Path,
    fmt: LogFormat,
    step_of=None,
    notes: tuple[str, ...] = (),
) -> ImportResult:
    """Merge rows by step (train and validation often arrive as separate rows) and write the
    run. ``step_of(row, step)`` maps a source step to the run's step (default: the same).

    A key met twice at one step keeps its first value: TRL logs each update of a GRPO step,
    and the first one measured the policy the step sampled from.
    """
    mapping = {"entropy": chosen.entropy, "reward": chosen.reward}
    if chosen.val is not None:
        mapping["val_reward"] = chosen.val
    if chosen.lr is not None:
        mapping["lr"] = chosen.lr
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
            for key, raw in row.items():
                if key in taken or key.startswith(WANDB_INTERNAL) or key in rec:
                    continue
                if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                    value = _number(raw, where, key)
                    if value is not None:
                        rec[key] = value
    for flag, name in (("--entropy-key", "entropy"), ("--reward-key", "reward")):
        if not any(name in r for r in merged.values()):
            raise ValueError(f"{flag}: no step of {source} has a value of {mapping[name]!r}")
    config = {
        "imported_from": str(source),
        "format": fmt.value,
        "profile": chosen.profile.name,
        "keys": {"step": chosen.step} | mapping,
    }
    records = [{"step": step, **merged[step]} for step in sorted(merged) if merged[step]]
    write_run(out, config, records)
    n = len(records)
    return ImportResult(
        out=Path(out),
        source=source,
        format=fmt,
        profile=chosen.profile.name,
        keys=config["keys"],
        steps=n,
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


def _wandb_csv_rows(rows: Rows, run: str | None, source: Path) -> Rows:
    """The W&B UI's CSV export names columns ``<run> - <key>`` (with ``__MIN``/``__MAX``
    companions for smoothed charts): keep one run's columns under their plain key."""
    columns = {k for _, row in rows for k in row}
    prefixed = {k.split(" - ", 1)[0] for k in columns if " - " in k}
    if not prefixed:
        return rows
    if run is None:
        if len(prefixed) > 1:
            raise ValueError(
                f"--run: {source} holds {len(prefixed)} runs ({', '.join(sorted(prefixed))}); "
                "choose one"
            )
        run = next(iter(prefixed))
    elif run not in prefixed:
        raise ValueError(
            f"--run: {source} has no run {run!r} (runs: {', '.join(sorted(prefixed))})"
        )
    head = f"{run} - "
    out: Rows = []
    for where, row in rows:
        plain = {k: v for k, v in row.items() if " - " not in k}
        for k, v in row.items():
            if k.startswith(head) and not k.endswith(("__MIN", "__MAX")):
                plain[k[len(head) :]] = v
        out.append((where, plain))
    return out


def import_wandb(
    path: str | os.PathLike,
    out: str | os.PathLike,
    keys: KeyMap = KeyMap(),
    run: str | None = None,
) -> ImportResult:
    """A W&B history — the UI's CSV export, ``wandb-history.jsonl``, or an offline run's
    ``run-<id>.wandb`` (the file or its run folder) — → a run directory. ``run`` picks one run
    of a CSV export that holds several."""
    source = Path(path)
    fmt, rows = read_log(source, WANDB_FORMATS)
    if fmt is LogFormat.CSV:
        rows = _wandb_csv_rows(rows, run, source)
    elif run is not None:
        raise ValueError(f"--run: {source} is a single run ({fmt.value}); --run is for CSV exports")
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


def import_trl(
    trainer_state: str | os.PathLike,
    out: str | os.PathLike,
    updates_per_step: int | None = None,
) -> ImportResult:
    """A TRL ``trainer_state.json`` → a run directory on the GRPO-step axis.

    TRL's ``step`` counts optimiser updates; a GRPO step (one generation batch) takes
    ``updates_per_step`` of them: read from ``<run>/config.json``'s ``trl`` block when the
    state sits in ``<run>/trl/`` (the TRL engine's layout), else ``updates_per_step``, else 1.
    A training entry logged after update g (1-based) belongs to GRPO step (g − 1) // u; an
    evaluation at update g measured the policy before GRPO step g // u, so the evaluation on
    start (g = 0) is step 0 — the TRL engine's own run log pairs them the same way.
    """
    path = Path(trainer_state)
    if path.is_dir():
        path = path / "trainer_state.json"
    if not path.exists():
        raise FileNotFoundError(f"TRAINER_STATE: {path} does not exist")
    state = read_json(path)
    if not isinstance(state, dict) or "log_history" not in state:
        raise ValueError(f"TRAINER_STATE: {path} has no log_history")
    config_path = path.parent.parent / "config.json"
    run_config = read_json(config_path) if path.parent.name == "trl" else None
    trl_block = run_config.get("trl") if isinstance(run_config, dict) else None
    if updates_per_step is not None and updates_per_step < 1:
        raise ValueError(f"--updates-per-step: must be at least 1, got {updates_per_step}")
    if isinstance(trl_block, dict):
        u = trl_updates_per_step(trl_block)
        if updates_per_step is not None and updates_per_step != u:
            raise ValueError(
                f"--updates-per-step: {config_path} says {u} updates per step, not "
                f"{updates_per_step}"
            )
        said = f"{u} optimiser updates per GRPO step, from {config_path}"
    else:
        u = updates_per_step or 1
        said = f"{u} optimiser update(s) per GRPO step" + (
            "" if updates_per_step else " (assumed; --updates-per-step sets it)"
        )
    rows = [(f"{path} log_history[{i}]", r) for i, r in enumerate(state["log_history"])]

    def grpo_step(row: dict[str, Any], g: int) -> int:
        if any(k.startswith("eval_") for k in row):
            return g // u
        return max(g - 1, 0) // u

    chosen = choose_keys(rows, (TRL_STATE,), KeyMap(), path)
    return rows_to_run(
        rows, chosen, out, path, LogFormat.TRL_STATE, step_of=grpo_step, notes=(said,)
    )
