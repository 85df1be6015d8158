"""Import other trainers' logs as run directories (``config.json`` + ``steps.jsonl``).

- TRL: ``trainer_state.json``'s ``log_history`` (``entropy``, ``reward``, ``eval_reward``,
  ``learning_rate``; TRL's ``step`` is 1-based and counts optimiser steps).
- verl: metrics exported as CSV or JSON lines, one row per step (``actor/entropy``,
  ``critic/score/mean``, ``val-core/…`` keys); every key can be overridden.
Only measured values are written: a row without a key leaves it absent.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softmax_theory.runlog import RunWriter


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


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _val_value(row: dict[str, Any], key: str | None) -> float | None:
    if key is None:
        return None
    if not key.endswith("/"):
        return _number(row.get(key))
    # a prefix: the first reward/accuracy metric under it (verl names them per data source)
    for k in sorted(row):
        if k.startswith(key) and ("reward" in k or "acc" in k) and _number(row[k]) is not None:
            return _number(row[k])
    return None


def rows_to_run(
    rows: list[dict[str, Any]],
    keys: KeyMap,
    out: str | os.PathLike,
    source: str,
    step_offset: int = 0,
) -> Path:
    """Merge rows by step (train and eval logs arrive as separate rows) and write the run."""
    merged: dict[int, dict[str, Any]] = {}
    for row in rows:
        step = _number(row.get(keys.step))
        if step is None:
            continue
        rec = merged.setdefault(int(step) + step_offset, {})
        for name, key in (("entropy", keys.entropy), ("reward", keys.reward), ("lr", keys.lr)):
            value = _number(row.get(key)) if key else None
            if value is not None:
                rec[name] = value
        val = _val_value(row, keys.val)
        if val is not None:
            rec["val_reward"] = val
    if not merged:
        raise ValueError(f"{source}: no row has the step key {keys.step!r}")
    if not any("entropy" in r for r in merged.values()):
        raise ValueError(f"{source}: no row has the entropy key {keys.entropy!r}")
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
    state = json.loads(path.read_text())
    if "log_history" not in state:
        raise ValueError(f"trl: {path} has no log_history")
    return rows_to_run(state["log_history"], keys, out, f"trl:{path.name}", step_offset=-1)


def import_verl(
    metrics: str | os.PathLike, out: str | os.PathLike, keys: KeyMap = VERL_KEYS
) -> Path:
    """verl metrics (CSV with a header, or JSON lines) → a run directory."""
    path = Path(metrics)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        # verl's file logger nests the metrics: {"step": k, "data": {...}}
        rows = [
            {"step": r.get("step"), **r["data"]} if isinstance(r.get("data"), dict) else r
            for r in rows
        ]
    return rows_to_run(rows, keys, out, f"verl:{path.name}")
