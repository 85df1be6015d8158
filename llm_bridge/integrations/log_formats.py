"""Read the logs other trainers write, told apart by their content (never the file name).

Each reader returns rows: ``(where, row)`` pairs, ``where`` naming the file and line (or event)
for error messages, ``row`` a flat ``{key: value}`` of one logged step. Values are kept as the
log holds them (strings for text formats); ``importers`` converts the keys it takes.

- ``console``: verl's console logger, lines of ``step:N - key:value - …``, with or without
  ANSI colour codes and a Ray actor prefix, anything else between them (a regular expression).
- ``tensorboard``: TFRecord event files (``SummaryWriter``), a file or a folder of them
  (TensorBoard's own reader).
- ``jsonl``: one JSON object a line (verl's file logger nests them under ``data``; W&B's
  ``wandb-history.jsonl``).
- ``csv``: a header line, one row a step (a W&B UI export prefixes columns with the run name).
- ``wandb-run``: W&B's binary run file ``run-<id>.wandb`` as an offline run writes it (its
  records decoded with W&B's own ``Record`` protobuf).
- ``trainer_state``: TRL's ``trainer_state.json`` (one JSON object with a ``log_history``).
- ``trl-console``, ``skyrl-console``, ``openrlhf-console``: those trainers' console output,
  Python dicts among progress bars and other lines, told apart here and read by their own
  importers (``console_logs``).
"""

from __future__ import annotations

import csv
import enum
import json
import re
import struct
from pathlib import Path
from typing import Any

from llm_bridge.integrations import console_logs

Rows = list[tuple[str, dict[str, Any]]]

# Every TensorBoard event file opens with the event {file_version: "brain.Event:2"}, inside a
# TFRecord frame (8-byte length, 4-byte CRC, data), so the marker sits in the first bytes.
TB_MARKER = b"brain.Event:"
TB_HEAD_BYTES = 64
# W&B's run file: a 7-byte header ":W&B", magic 0xBEE1, version 0, then LevelDB-log blocks.
WANDB_HEADER = struct.Struct("<4sHB")
WANDB_IDENT, WANDB_MAGIC = b":W&B", 0xBEE1
WANDB_BLOCK = 32768
WANDB_RECORD = struct.Struct("<IHB")  # crc32c, length, type
WANDB_FULL, WANDB_FIRST, WANDB_MIDDLE, WANDB_LAST = 1, 2, 3, 4

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# A step line: "step:N - key:value" anywhere in the line (after a Ray tag, a timestamp, …); at
# least one key:value pair, so that prose mentioning "step:3" is not taken for one.
STEP_LINE = re.compile(r"(?:^|[\s)\]])step:(\d+) - (\S.*)$")
# Newer verl prints numpy scalars by their repr: "actor/entropy:np.float64(0.329)".
NUMPY_REPR = re.compile(r"^np\.\w+\((.*)\)$")


class LogFormat(str, enum.Enum):
    """A log format this tool reads."""

    CONSOLE = "console"
    TENSORBOARD = "tensorboard"
    JSONL = "jsonl"
    CSV = "csv"
    WANDB_RUN = "wandb-run"
    TRL_STATE = "trainer_state"  # TRL's trainer_state.json, read by its own importer
    TRL_CONSOLE = "trl-console"
    SKYRL_CONSOLE = "skyrl-console"
    OPENRLHF_CONSOLE = "openrlhf-console"


def event_files(folder: Path) -> list[Path]:
    """The TensorBoard event files under ``folder`` (any depth), in name order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and _is_event_file(p))


def _is_event_file(path: Path) -> bool:
    with path.open("rb") as f:
        return TB_MARKER in f.read(TB_HEAD_BYTES)


def _wandb_run_file(folder: Path) -> Path | None:
    files = sorted(folder.glob("run-*.wandb"))
    return files[-1] if files else None


def detect_format(path: Path) -> tuple[LogFormat, Path]:
    """The format of ``path`` from its content, and the file to read (a W&B run folder → its
    ``run-*.wandb`` or ``files/wandb-history.jsonl``; a folder of event files stays a folder).

    Raises a one-line ``ValueError`` naming the file for anything else: an empty file, a binary
    file of another kind, text with no step lines, JSON objects, CSV header or events.
    """
    if not path.exists():
        raise FileNotFoundError(f"PATH: {path} does not exist")
    if path.is_dir():
        if event_files(path):
            return LogFormat.TENSORBOARD, path
        run_file = _wandb_run_file(path)
        if run_file is not None:
            return LogFormat.WANDB_RUN, run_file
        history = path / "files" / "wandb-history.jsonl"
        if history.exists():
            return LogFormat.JSONL, history
        raise ValueError(
            f"PATH: {path} is a folder with no TensorBoard event file and no W&B run file"
        )
    with path.open("rb") as f:
        head = f.read(TB_HEAD_BYTES)
    if not head:
        raise ValueError(f"PATH: {path} is empty")
    if TB_MARKER in head:
        return LogFormat.TENSORBOARD, path
    if head.startswith(WANDB_IDENT):
        return LogFormat.WANDB_RUN, path
    text = read_text(path)
    fmt = text_format(text)
    if fmt is None:
        raise ValueError(
            f"PATH: {path} has no step lines ('step:N - key:value'), metric dicts "
            "({'loss': …}), JSON lines, CSV header or TensorBoard events"
        )
    return fmt, path


def text_format(text: str) -> LogFormat | None:
    """The format of a text log, or None. Python dicts (``{'…``) are never JSON lines
    (``{"…``), and a whole-file JSON object with a ``log_history`` is TRL's state."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.startswith("{") and is_trainer_state(text):
        return LogFormat.TRL_STATE
    if console_logs.is_openrlhf_console(text):
        return LogFormat.OPENRLHF_CONSOLE
    if console_logs.is_skyrl_console(text):
        return LogFormat.SKYRL_CONSOLE
    if first.startswith("{") and not first.startswith("{'"):
        return LogFormat.JSONL
    if any(STEP_LINE.search(ANSI.sub("", line)) for line in text.splitlines()):
        return LogFormat.CONSOLE
    if console_logs.is_trl_console(text):
        return LogFormat.TRL_CONSOLE
    if "," in first:
        return LogFormat.CSV
    return None


def is_trainer_state(text: str) -> bool:
    try:
        state = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(state, dict) and "log_history" in state


def read_text(path: Path) -> str:
    """A text log; a binary file of another kind is refused in one line."""
    data = path.read_bytes()
    if b"\x00" in data[:4096]:
        raise ValueError(f"PATH: {path} is a binary file, not a log this tool reads")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"PATH: {path} is neither UTF-8 text nor a TensorBoard or W&B file (byte {err.start})"
        ) from None


def _console_value(raw: str) -> str:
    m = NUMPY_REPR.match(raw)
    return m.group(1) if m else raw


def read_console(path: Path) -> Rows:
    """verl's console lines ``step:N - key:value - …`` → one row per line (a step printed on two
    lines, such as a validation-only last line, gives two rows; the importer merges them).

    Keys may hold parentheses (``actor/lr(1e-4)``) or colons; the value is what follows the
    last colon of each `` - ``-separated part.
    """
    rows: Rows = []
    for i, line in enumerate(read_text(path).splitlines(), start=1):
        m = STEP_LINE.search(ANSI.sub("", line))
        if m is None:
            continue
        row: dict[str, Any] = {"step": m.group(1)}
        for part in m.group(2).rstrip().split(" - "):
            key, sep, value = part.rpartition(":")
            if sep and key:
                row[key.strip()] = _console_value(value.strip())
        rows.append((f"{path} line {i}", row))
    return rows


def read_jsonl(path: Path) -> Rows:
    """JSON lines, one object per logged step; verl's file logger nests the metrics as
    ``{"step": k, "data": {...}}``."""
    rows: Rows = []
    for i, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {i}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if isinstance(row.get("data"), dict):
            row = {"step": row.get("step"), **row["data"]}
        rows.append((where, row))
    return rows


def read_csv(path: Path) -> Rows:
    """A CSV file with a header (fields quoted or not, a final newline or none); line numbers
    count the header as line 1. A row with more or fewer fields than the header — a torn
    write — is refused naming its line."""
    reader = csv.reader(read_text(path).splitlines())
    header = next(reader, [])
    rows: Rows = []
    for i, fields in enumerate(reader, start=2):
        if not fields:
            continue
        if len(fields) != len(header):
            raise ValueError(
                f"{path} line {i}: {len(fields)} fields where the header has {len(header)} "
                "(a row cut short?)"
            )
        rows.append((f"{path} line {i}", dict(zip(header, fields, strict=True))))
    return rows


def read_tensorboard(path: Path) -> Rows:
    """Scalar events of an event file, or of every event file under a folder → one row per step
    and file, ``{"step": step, tag: value, …}``. An event without a step field is step 0 (the
    protobuf default); a tag logged twice at one step keeps its last value. Non-scalar summaries
    (histograms, images, text) are skipped."""
    # TensorBoard's reader without its migration of legacy events (3.6× faster on a 63-tag
    # file); both kinds of scalar are read here: float32 simple_value and 0-d tensors
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.util import tensor_util

    files = event_files(path) if path.is_dir() else [path]
    rows: Rows = []
    for file in files:
        by_step: dict[int, dict[str, Any]] = {}
        try:
            for event in LegacyEventFileLoader(str(file)).Load():
                for value in event.summary.value:
                    kind = value.WhichOneof("value")
                    if kind == "simple_value":
                        x = float(value.simple_value)
                    elif kind == "tensor":
                        array = tensor_util.make_ndarray(value.tensor)
                        if array.size != 1 or array.dtype.kind not in "fiub":
                            continue  # text, images, histograms as tensors
                        x = float(array.reshape(-1)[0])
                    else:
                        continue  # legacy histograms, images, audio
                    by_step.setdefault(int(event.step), {"step": int(event.step)})[value.tag] = x
        except Exception as err:  # a truncated or corrupt record: TensorBoard's reader says what
            raise ValueError(f"PATH: {file} is not a readable event file ({err})") from None
        rows.extend((f"{file} step {s}", by_step[s]) for s in sorted(by_step))
    return rows


def _wandb_records(path: Path) -> list[bytes]:
    """The payloads of W&B's run file: a LevelDB log (32 KiB blocks; records of a 7-byte header
    — CRC, length, type — and data; a record cut by a block end continues as FIRST/MIDDLE/LAST)
    after W&B's 7-byte file header. W&B ships no Python reader for it since its Go core."""
    data = path.read_bytes()
    if len(data) < WANDB_HEADER.size:
        raise ValueError(f"PATH: {path} is cut short (no W&B header)")
    ident, magic, _version = WANDB_HEADER.unpack_from(data)
    if ident != WANDB_IDENT or magic != WANDB_MAGIC:
        raise ValueError(f"PATH: {path} is not a W&B run file")
    out: list[bytes] = []
    pending = b""
    pos = WANDB_HEADER.size
    while pos + WANDB_RECORD.size <= len(data):
        left_in_block = WANDB_BLOCK - pos % WANDB_BLOCK
        if left_in_block < WANDB_RECORD.size:  # block trailer: zero padding
            pos += left_in_block
            continue
        _crc, length, kind = WANDB_RECORD.unpack_from(data, pos)
        pos += WANDB_RECORD.size
        if kind == 0 and length == 0:  # zero padding to the block end
            pos += left_in_block - WANDB_RECORD.size
            continue
        chunk = data[pos : pos + length]
        if len(chunk) < length:
            break  # a run killed mid-write: keep what is whole
        pos += length
        if kind == WANDB_FULL:
            out.append(chunk)
        elif kind == WANDB_FIRST:
            pending = chunk
        elif kind == WANDB_MIDDLE:
            pending += chunk
        elif kind == WANDB_LAST:
            out.append(pending + chunk)
            pending = b""
        else:
            raise ValueError(f"PATH: {path} has a record of unknown type {kind} at byte {pos}")
    return out


def read_wandb_run(path: Path) -> Rows:
    """The history rows of a W&B run file (an offline run's ``run-<id>.wandb``):
    ``{"_step": step, key: value, …}``, nested keys joined with ``/``."""
    from wandb.proto import wandb_internal_pb2

    rows: Rows = []
    for i, payload in enumerate(_wandb_records(path)):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        if record.history.HasField("step") and "_step" not in row:
            row["_step"] = record.history.step.num
        rows.append((f"{path} record {i}", row))
    return rows


READERS = {
    LogFormat.CONSOLE: read_console,
    LogFormat.TENSORBOARD: read_tensorboard,
    LogFormat.JSONL: read_jsonl,
    LogFormat.CSV: read_csv,
    LogFormat.WANDB_RUN: read_wandb_run,
}


def read_log(path: Path, formats: tuple[LogFormat, ...]) -> tuple[LogFormat, Rows]:
    """Detect the format of ``path`` and read it; a format outside ``formats`` (the ones the
    command takes) is refused, naming both."""
    fmt, file = detect_format(path)
    if fmt not in formats:
        raise ValueError(
            f"PATH: {path} is a {fmt.value} log; this command reads "
            + ", ".join(f.value for f in formats)
        )
    rows = READERS[fmt](file)
    if not rows:
        raise ValueError(f"PATH: {path} ({fmt.value}) holds no logged step")
    return fmt, rows
