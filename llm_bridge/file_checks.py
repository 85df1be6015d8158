"""Whether a saved file is whole, by its own format's check, before a loader reads it.

A kill, a full disk or a bad copy leaves a file cut short or overwritten; a loader then fails
deep inside (a ``SafetensorError``, a miniz error) or, worse, reads on. Each kind is checked by
the format's own reader:

- ``*.safetensors``: safetensors opens its header, which must cover the whole file;
- a torch file (``*.pt``, ``*.pth``, ``*.bin`` saved as torch's zip archive): ``zipfile`` finds
  its directory and checks every member's CRC;
- ``*.json``: it parses as UTF-8 JSON.

Other files (a sentencepiece model, a torch file in the legacy format) are left to their loader.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
ZIP_MAGIC = b"PK"


def file_fault(path: Path) -> str | None:
    """Why ``path`` is not whole by its format's check (see the module docstring), or None."""
    if path.suffix == ".safetensors":
        return safetensors_fault(path)
    if path.suffix in TORCH_SUFFIXES:
        return torch_zip_fault(path)
    if path.suffix == ".json":
        return json_fault(path)
    return None


def safetensors_fault(path: Path) -> str | None:
    """safetensors' own reason a file is not whole (its header unreadable, or its data not
    covering the file), or None."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt"):
            return None
    except SafetensorError as err:
        return f"not a whole safetensors file ({err})"


def torch_zip_fault(path: Path) -> str | None:
    """Why a torch zip archive is not whole (no central directory: cut short; a member whose
    CRC fails: overwritten), or None; a file in the legacy format is not checked."""
    with path.open("rb") as f:
        if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"not a whole torch file ({err})"
    return None if bad is None else f"not a whole torch file ({bad} fails its CRC check)"


def json_fault(path: Path) -> str | None:
    """Why a JSON file does not parse (with the line), or None."""
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        return f"not valid JSON (line {err.lineno}: {err.msg})"
    except UnicodeDecodeError as err:
        return f"not UTF-8 text (byte {err.start})"
    return None


def folder_fault(folder: Path, patterns: tuple[str, ...] = ("*",)) -> str | None:
    """The first file directly in ``folder`` (matching one of ``patterns``) that is not whole,
    as 'FILE: why', or None when every one is."""
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    for path in files:
        fault = file_fault(path)
        if fault is not None:
            return f"{path}: {fault}"
    return None


__all__ = ["file_fault", "folder_fault", "json_fault", "safetensors_fault", "torch_zip_fault"]
