"""What every benchmark shares: writing its section of docs/benchmarks.md."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, table: str) -> None:
    """Put ``table`` (which starts with its ``<!-- name -->`` marker line) into ``path``,
    replacing the section with the same marker; sections run from a marker to the next."""
    marker = table.splitlines()[0]
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head, *sections = re.split(r"(?m)^(?=<!-- )", text)
    sections = [s for s in sections if s.splitlines()[0] != marker] + [table]
    sections.sort(key=lambda s: s.splitlines()[0])
    path.write_text(head.rstrip("\n") + "\n\n" + "\n".join(s.rstrip("\n") + "\n" for s in sections))
