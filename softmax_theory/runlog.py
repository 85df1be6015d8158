"""The run log both halves share: a directory with ``config.json`` and ``steps.jsonl``.

One JSON object per step, appended and flushed when the step ends, so a killed run loses
nothing already written. Keys a run cannot measure are absent, never a made-up zero. The keys
both halves write and what each means in each world: ``docs/architecture.md``, "The run-log
contract". A file that is rewritten rather than appended (``config.json``, a truncated
``steps.jsonl``, the covariance tables) is replaced whole by ``atomic_write_text``, so a kill
mid-write leaves the old file or the new one, never half of either.

Reading back trusts nothing: every line of ``steps.jsonl`` must be a JSON object with an
integer ``step`` after the line before's, and ``config.json`` a JSON object. The one fault an
append can leave, a torn last line, is set apart (``read_step_lines``): a resume cuts it, since it
re-runs that step, and every other reader (``read_run``: ``fit``, ``compare``) refuses it by file
and line, as it refuses any other fault.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
STEPS_FILE = "steps.jsonl"

TMP_SUFFIX = ".tmp"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace the file ``path`` by ``text`` (UTF-8) atomically: write ``<path>.tmp``, fsync it,
    ``os.replace`` it over ``path`` and fsync the directory. A failure or a kill at any point
    leaves ``path`` as it was (or, once replaced, whole and new); the temporary file of a
    failed write is removed."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # the rename itself survives a crash once the folder syncs
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def to_jsonable(value: Any) -> Any:
    """JSON-safe: dataclasses to dicts, enums to values, numpy scalars to Python; a NaN or inf
    is refused rather than written."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        value = value.value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"run log: refusing to write a non-finite value ({value})")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


class RunWriter:
    """Appends steps to ``DIR/steps.jsonl``; each line is flushed and fsynced as written."""

    def __init__(self, directory: str | os.PathLike, config: Any, resume: bool = False):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        steps = self.directory / STEPS_FILE
        if steps.exists() and steps.stat().st_size > 0 and not resume:
            raise FileExistsError(
                f"out: {self.directory} already holds a run; choose a new directory or resume"
            )
        atomic_write_text(
            self.directory / CONFIG_FILE, json.dumps(to_jsonable(config), indent=2) + "\n"
        )
        self._file = steps.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if "step" not in record:
            raise ValueError("record: every step needs its 'step' index")
        self._file.write(json.dumps(to_jsonable(record)) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def truncate_steps(directory: str | os.PathLike, first_step: int) -> int:
    """Keep only the records of steps before ``first_step`` (a run resumed from a checkpoint
    recomputes the later ones); returns how many records were dropped, a torn last line
    (``read_step_lines``) counted among them: it belongs to a step after the last whole one, so
    the caller that chose ``first_step`` says so. The file is replaced atomically: a kill
    mid-rewrite keeps the whole old log."""
    path = Path(directory) / STEPS_FILE
    if not path.exists():
        return 0
    lines = read_step_lines(path)
    kept = [s for s in lines.records if s["step"] < first_step]
    atomic_write_text(path, "".join(json.dumps(s) + "\n" for s in kept))
    return len(lines.records) - len(kept) + (lines.torn_line is not None)


@dataclass(frozen=True)
class RunLog:
    """A run read back: its config and its steps in order."""

    path: Path
    config: dict[str, Any]
    steps: tuple[dict[str, Any], ...]
    label: str | None = None  # how reports name the run (default: its folder's name)

    @property
    def name(self) -> str:
        return self.label or self.path.name

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of every step that measured ``key``."""
        pairs = [(s["step"], s[key]) for s in self.steps if key in s and s[key] is not None]
        return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def read_json(path: Path) -> Any:
    """A JSON file, or a ValueError naming the file and the line of the fault (a torn or
    corrupt copy: not JSON, or not UTF-8 text)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None


def parse_json_line(line: str, where: str) -> dict[str, Any]:
    """One JSON object of a JSON-lines file; ``where`` names the file and line for errors."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """A run directory's ``config.json`` ({} when it has none); one that is not a JSON object
    is refused naming the file (``read_json``)."""
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        return {}
    config = read_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


@dataclass(frozen=True)
class StepLines:
    """A JSON-lines file of one object per step, read and checked (``read_step_lines``).
    ``torn_line``: the number of a torn last line, which ``records`` leaves out."""

    path: Path
    records: tuple[dict[str, Any], ...]
    torn_line: int | None = None

    def whole(self) -> tuple[dict[str, Any], ...]:
        """The records, for a reader that will not re-run a torn line's step: a torn last line
        is refused, naming the file and line, rather than read past."""
        if self.torn_line is not None:
            raise ValueError(
                f"{self.path} line {self.torn_line} is torn (cut short mid-write, or a bad "
                "copy): resuming the run re-runs its step; or delete the line"
            )
        return self.records


def read_step_lines(path: Path) -> StepLines:
    """The records of a JSON-lines file of steps (``steps.jsonl``, ``cov_tables.jsonl``), each
    line checked: a JSON object whose integer ``step`` is greater than the line before's (blank
    lines are skipped). A last line that is not whole JSON -- what a kill or a full disk leaves
    mid-write; a cut object never parses -- is set apart as ``torn_line``, for the caller to cut
    (a resume that re-runs its step) or refuse (``StepLines.whole``). Any other fault is a
    ValueError naming the file and line."""
    lines = path.read_bytes().split(b"\n")
    last = max((i for i, line in enumerate(lines, start=1) if line.strip()), default=0)
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if number == last:
                return StepLines(path, tuple(records), torn_line=number)
            why = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8 text"
            raise ValueError(f"{path} line {number}: not valid JSON ({why})") from None
        previous = records[-1]["step"] if records else None
        records.append(checked_step(record, previous, f"{path} line {number}"))
    return StepLines(path, tuple(records))


def checked_step(record: Any, previous: int | None, where: str) -> dict[str, Any]:
    """``record`` when it is a JSON object with an integer ``step`` after ``previous``; else a
    ValueError that starts with ``where`` (the file and line)."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        raise ValueError(f"{where}: 'step' is {step!r}, not an integer")
    if previous is not None and step <= previous:
        raise ValueError(f"{where}: step {step} comes after step {previous}")
    return record


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def settings_diff(
    old: dict[str, Any], new: dict[str, Any], free: frozenset[str] = frozenset()
) -> tuple[list[str], list[str]]:
    """The settings that differ between two configs, as 'name old → new' lines, split into
    those that change results and those named in ``free`` (by their last dotted part), which
    do not (the number of steps, the checkpoint interval, …)."""
    a, b = _flatten(to_jsonable(old)), _flatten(to_jsonable(new))
    blocking, harmless = [], []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            line = f"{key} {a.get(key, '<unset>')} → {b.get(key, '<unset>')}"
            (harmless if key.rsplit(".", 1)[-1] in free else blocking).append(line)
    return blocking, harmless


def check_resumable(
    directory: str | os.PathLike, config: dict[str, Any], free: frozenset[str]
) -> list[str]:
    """Refuse to resume the run in ``directory`` with settings that change results, naming each
    (and touching nothing); return the harmless differences, for the caller to report."""
    blocking, harmless = settings_diff(read_config(directory), config, free)
    if blocking:
        raise ValueError(
            f"resume: {directory} was run with other settings ("
            + "; ".join(blocking)
            + "); resume it with its own settings, or choose a new directory"
        )
    return harmless


def distinct_labels(paths: list[str | os.PathLike]) -> list[str]:
    """Names for runs that tell them apart: the folder name, or as many trailing path parts as
    it takes when two folders share a name (a path given twice gets #2, #3, …)."""
    parts = [Path(p).resolve().parts for p in paths]
    labels = [str(Path(p)) for p in paths]
    for k in range(1, max((len(x) for x in parts), default=1) + 1):
        candidate = ["/".join(x[-k:]) for x in parts]
        if len(set(candidate)) == len(candidate):
            return candidate
        labels = candidate
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def read_run(directory: str | os.PathLike) -> RunLog:
    """Read a run directory, checked as it is read (``read_config``, ``read_step_lines``): a
    torn or corrupt line is refused in one line naming the file and line, never skipped."""
    path = Path(directory)
    steps_path = path / STEPS_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"run: {path} is not a run directory")
    if not steps_path.exists():
        raise FileNotFoundError(f"run: {path} has no {STEPS_FILE}")
    config = read_config(path)
    return RunLog(path=path, config=config, steps=read_step_lines(steps_path).whole())
