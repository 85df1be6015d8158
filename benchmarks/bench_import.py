"""Import speed: a 2 MB verl console log and a 63-tag TensorBoard event file, goal ≤ 2 s each.

Synthetic logs shaped like verl's (a console line of 63 keys behind ANSI codes and a Ray tag,
sample dumps between step lines; an event file of 63 scalar tags a step), plus the public
fixtures when the folder beside the checkout has them. The time is the whole import: detect the
format, read, write the run directory. "first" is the first import in the process (TensorBoard's
reader is imported then); "best" the best of the repeats.

    python benchmarks/bench_import.py [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

from llm_bridge.integrations.importers import import_verl  # noqa: E402

MARKER = "<!-- bench_import -->"
GOAL_S = 2.0
CONSOLE_BYTES = 2 * 1024 * 1024
TAGS = 63
TB_STEPS = 200
REAL_LOGS = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "real-logs"
RAY = "\x1b[2m\x1b[36m(main_task pid=926049)\x1b[0m "


def _tags() -> list[str]:
    fixed = ["actor/entropy", "critic/score/mean", "actor/lr", "actor/pg_loss"]
    return fixed + [f"timing_s/part_{i}" for i in range(TAGS - len(fixed))]


def write_console_log(path: Path, rng: np.random.Generator) -> int:
    """verl-shaped console lines until the file reaches CONSOLE_BYTES; returns the steps."""
    tags = _tags()
    lines, size, step = [], 0, 0
    while size < CONSOLE_BYTES:
        values = rng.random(len(tags))
        pairs = zip(tags, values, strict=True)
        line = RAY + f"step:{step} - " + " - ".join(f"{t}:{v:.3f}" for t, v in pairs)
        if step % 10 == 9:
            line += f" - val/test_score/openai/gsm8k:{values[0]:.3f}"
        dump = [RAY + "[prompt] How many eggs? step:3 of the recipe", RAY + "[score] 1.0"]
        for text in (line, *dump):
            lines.append(text)
            size += len(text.encode()) + 1
        step += 1
    path.write_text("\n".join(lines) + "\n")
    return step


def write_event_file(folder: Path, rng: np.random.Generator) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    for step in range(TB_STEPS):
        for tag, value in zip(_tags(), rng.random(TAGS), strict=True):
            writer.add_scalar(tag, float(value), global_step=step)
    writer.close()
    (path,) = folder.iterdir()
    return path


def time_import(path: Path, work: Path, repeats: int) -> tuple[float, float, int]:
    """(first, best) seconds of ``import_verl(path)`` and the steps written."""
    times, steps = [], 0
    for i in range(repeats):
        start = time.perf_counter()
        steps = import_verl(path, work / f"{path.name}-{i}").steps
        times.append(time.perf_counter() - start)
    return times[0], min(times), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to update")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the event file first: its first import pays for importing TensorBoard's reader
        inputs = [("synthetic event file, 63 tags", write_event_file(work / "tb", rng))]
        console = work / "console.log"
        write_console_log(console, rng)
        inputs.append(("synthetic console log, 63 keys a line", console))
        for fixture in sorted(REAL_LOGS.glob("[0-9]_*")) if REAL_LOGS.is_dir() else []:
            short = fixture.name.split("__")[-1][:32]
            inputs.append((f"public fixture {fixture.name[0]}, `{short}…`", fixture))
        for name, path in inputs:
            first, best, steps = time_import(path, work, args.repeats)
            size = path.stat().st_size / 2**20
            goal = "met" if first <= GOAL_S else "**missed**"
            rows.append(f"| {name} | {size:.2f} | {steps} | {first:.2f} | {best:.2f} | {goal} |")
    lines = [
        MARKER,
        "### Importing logs (`llm-bridge import verl`)",
        "",
        f"Goal: ≤ {GOAL_S:g} s to import a 2 MB console log or a 63-tag event file (detect, "
        "read, write the run directory). `first`: the first import in the process, TensorBoard's "
        f"reader imported then; `best`: best of {args.repeats}. "
        "`make bench` (`python benchmarks/bench_import.py`).",
        "",
        "| log | MiB | steps | first (s) | best (s) | goal |",
        "|---|---:|---:|---:|---:|---|",
        *rows,
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        write_section(args.out, table)


if __name__ == "__main__":
    main()
