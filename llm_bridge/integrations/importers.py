"""Import other trainers' logs as run directories (``config.json`` + ``steps.jsonl``).

- TRL: ``trainer_state.json``'s ``log_history`` (``entropy``, ``reward``, ``eval_reward``,
  ``learning_rate``; TRL's ``step`` is 1-based and counts optimiser steps).
- verl: metrics exported as CSV or JSON lines, one row per step (``actor/entropy``,
  ``critic/score/mean``, ``val-core/…`` keys); every key can be overridden.
Only measured values are written: a row without a key leaves it absent.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softmax_theory.runlog import RunWriter, parse_json_line, read_json


@dataclass(frozen=True)
class KeyMap:
    """Which source key feeds each run-log key; ``val`` may be a prefix ending in ``/``."""

    step: str
    entropy: str
    reward: str
    val: str | None
    lr: str | None


TRL_KEYS = KeyMap(
    step="step", entropy="entropy", reward="reward", val="eval_reward", lr="learning_rate"
)
VERL_KEYS = KeyMap(
    step="step", entropy="actor/entropy", reward="critic/score/mean", val="val-core/", lr="actor/lr"
)


def _number(value: Any, where: str, key: str) -> float | None:
    """A cell as a number: None when empty (not measured at that step); a non-numeric or
    non-finite cell is refused, naming the file, the line and the key."""
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key} is {value!r}, not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{where}: {key} is {value!r}; a run log holds finite numbers only")
    return x


def _val_value(row: dict[str, Any], key: str | None, where: str) -> float | None:
    if key is None:
        return None
    if not key.endswith("/"):
        return _number(row.get(key), where, key)
    # a prefix: the first reward/accuracy metric under it (verl names them per data source)
    for k in sorted(row):
        if k.startswith(key) and ("reward" in k or "acc" in k):
            value = _number(row[k], where, k)
            if value is not None:
                return value
    return None


def rows_to_run(
    rows: list[tuple[str, dict[str, Any]]],
    keys: KeyMap,
    out: str | os.PathLike,
    source: str,
    step_offset: int = 0,
) -> Path:
    """Merge rows by step (train and eval logs arrive as separate rows) and write the run.

    ``rows`` are (where, row) pairs, ``where`` naming the file and line for errors. Entropy and
    reward must each appear in some row: a run without them cannot be compared or fitted.
    """
    merged: dict[int, dict[str, Any]] = {}
    for where, row in rows:
        step = _number(row.get(keys.step), where, keys.step)
        if step is None:
            continue
        rec = merged.setdefault(int(step) + step_offset, {})
        for name, key in (("entropy", keys.entropy), ("reward", keys.reward), ("lr", keys.lr)):
            value = _number(row.get(key), where, key) if key else None
            if value is not None:
                rec[name] = value
        val = _val_value(row, keys.val, where)
        if val is not None:
            rec["val_reward"] = val
    if not merged:
        raise ValueError(f"step-key: no row of {source} has the step key {keys.step!r}")
    seen = sorted({k for _, row in rows for k in row})
    for flag, name, key in (
        ("entropy-key", "entropy", keys.entropy),
        ("reward-key", "reward", keys.reward),
    ):
        if not any(name in r for r in merged.values()):
            raise ValueError(
                f"{flag}: no row of {source} has {key!r} (keys: {', '.join(seen[:20])}"
                + (", …" if len(seen) > 20 else "")
                + ")"
            )
    with RunWriter(out, {"imported_from": source, "keys": keys.__dict__}) as writer:
        for step in sorted(merged):
            if merged[step]:
                writer.write({"step": step, **merged[step]})
    return Path(out)


def import_trl(
    trainer_state: str | os.PathLike, out: str | os.PathLike, keys: KeyMap = TRL_KEYS
) -> Path:
    """A TRL ``trainer_state.json`` → a run directory (steps made 0-based)."""
    path = Path(trainer_state)
    if path.is_dir():
        path = path / "trainer_state.json"
    if not path.exists():
        raise FileNotFoundError(f"TRAINER_STATE: {path} does not exist")
    state = read_json(path)
    if not isinstance(state, dict) or "log_history" not in state:
        raise ValueError(f"TRAINER_STATE: {path} has no log_history")
    rows = [(f"{path} log_history[{i}]", r) for i, r in enumerate(state["log_history"])]
    return rows_to_run(rows, keys, out, str(path), step_offset=-1)


def import_verl(
    metrics: str | os.PathLike, out: str | os.PathLike, keys: KeyMap = VERL_KEYS
) -> Path:
    """verl metrics (CSV with a header, or JSON lines) → a run directory."""
    path = Path(metrics)
    if not path.exists():
        raise FileNotFoundError(f"METRICS: {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        # line numbers count the header as line 1
        rows = [
            (f"{path} line {i + 2}", r) for i, r in enumerate(csv.DictReader(text.splitlines()))
        ]
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                r = parse_json_line(line, f"{path} line {i}")
                # verl's file logger nests the metrics: {"step": k, "data": {...}}
                if isinstance(r.get("data"), dict):
                    r = {"step": r.get("step"), **r["data"]}
                rows.append((f"{path} line {i}", r))
    return rows_to_run(rows, keys, out, str(path))
