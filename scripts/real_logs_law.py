"""The entropy–performance law on public logs of real verl runs: the table in docs/law.md.

Each log is imported with ``llm_bridge.integrations.importers.import_verl`` and fitted the way
``softmax-theory fit RUN`` fits a run directory: validation reward against the entropy logged
at the validation steps (``softmax_theory.law.series_from_run``), the fit on every point, and
the forecast fitted on the first 15% of points in step order.

    python scripts/real_logs_law.py [--fixtures ../shared/fixtures/real-logs] [--out docs/law.md]
"""

from __future__ import annotations

import argparse
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_bridge.integrations.importers import import_verl
from softmax_theory.law import PAPER_FIT_FRACTION, law_report, series_from_run
from softmax_theory.runlog import read_run

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / ".." / "shared" / "fixtures" / "real-logs"
BEGIN, END = "<!-- real_logs_law -->", "<!-- /real_logs_law -->"
N_BOOT = 1000


@dataclass(frozen=True)
class Source:
    """Where a fixture comes from (its folder's SOURCES.md)."""

    prefix: str  # the fixture's file name starts with it
    short: str
    source: str  # repository @ commit : path
    model: str


SOURCES = (
    Source(
        "1_",
        "Qwen2.5-0.5B-…-0.538.log",
        "a public verl-data repository, branch experiments @ f07af3291bd1 : "
        "gsm8k/Qwen2.5-0.5B-bsz256_2-prompt512-resp256-0.538.log",
        "Qwen2.5-0.5B-Instruct, PPO, GSM8K (console)",
    ),
    Source(
        "2_",
        "ppo_run_deepseek7b_llm.log",
        "a public verl_training_log repository @ deb1507ca074 : gsm8k/ppo_run_deepseek7b_llm.log",
        "deepseek-llm-7b-chat, PPO, GSM8K (console)",
    ),
    Source(
        "3_",
        "gsm8k_qwen2_7b_base/events…",
        "volcengine/verl (pull request 2854) @ 35cee0caba9f : "
        "recipe/async_reward_agent/assets/tensorboard/gsm8k_qwen2_7b_base/",
        "Qwen2-7B-Instruct, GRPO (Megatron), GSM8K (TensorBoard)",
    ),
    Source(
        "4_",
        "q7b_fsdp_base/events…",
        "volcengine/verl (pull request 2854) @ 35cee0caba9f : "
        "recipe/async_reward_agent/assets/tensorboard/q7b_fsdp_base/",
        "Qwen2-7B-Instruct, GRPO (FSDP2), GSM8K (TensorBoard)",
    ),
)


def law_rows(fixtures: Path, work: Path) -> list[str]:
    """One markdown row per fixture found."""
    rows = []
    rng = np.random.default_rng(0)
    for src in SOURCES:
        matches = sorted(fixtures.glob(f"{src.prefix}*"))
        if not matches:
            continue
        result = import_verl(matches[0], work / src.prefix)
        series = series_from_run(read_run(result.out))
        report = law_report(series, PAPER_FIT_FRACTION, N_BOOT, rng)
        fit = report.fit
        forecast = (
            f"{report.forecast.rmse:.3f} (fit on {report.forecast.n_fit})"
            if report.forecast is not None
            else f"— ({report.forecast_error})"
        )
        r2 = "—" if fit.r2 is None else f"{fit.r2:.2f}"
        rows.append(
            f"| `{src.short}` | {src.source} | {src.model} | {fit.n} ({series.reward_key} ← "
            f"`{result.keys.get('val_reward', result.keys['reward'])}`) | {fit.a:.4f} | "
            f"{fit.b:.4f} | {fit.ceiling:.3f} | {r2} | {forecast} |"
        )
    return rows


def section(rows: list[str]) -> str:
    return "\n".join(
        [
            BEGIN,
            "## The law on public logs of real verl runs",
            "",
            "Written by `python scripts/real_logs_law.py` (do not edit by hand). Each log is read "
            "with `llm-bridge import verl` and fitted as `softmax-theory fit` fits a run "
            "directory: validation reward against the entropy logged at the same step, every "
            "point for a, b, the ceiling b − a and R²; the forecast fits the first 15% of points "
            "and gives the RMSE on the rest. Entropy is verl's token mean (`actor/entropy`, "
            "older `actor/entropy_loss`), validation its mean test score. The runs are PPO and "
            "GRPO on GSM8K, 105 to 1,120 steps, with their own settings (not the paper's); the "
            "numbers are as the fit gives them, nothing tuned.",
            "",
            "The same on a run of yours: `llm-bridge import verl LOG --out RUN` (a console log, "
            "an event file or folder, JSON lines, CSV: the format is read from the content; "
            "`--val-key` picks a data source), `llm-bridge import tensorboard` or `import wandb` "
            "for other trainers' event files and W&B histories, `llm-bridge import trl` for "
            "TRL's `trainer_state.json`; then `softmax-theory fit RUN`.",
            "",
            "| file | source (repository @ commit : path) | model, algorithm, task | points | a "
            "| b | ceiling b − a | R² | 15% forecast RMSE |",
            "|---|---|---|---:|---:|---:|---:|---:|---|",
            *rows,
            END,
        ]
    )


def write_section(path: Path, text: str) -> None:
    """Replace the marked section of ``path``, or append it."""
    doc = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    doc = pattern.sub(lambda _: text, doc) if pattern.search(doc) else doc.rstrip() + "\n\n" + text
    path.write_text(doc.rstrip() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to update")
    args = parser.parse_args()
    if not args.fixtures.is_dir():
        raise SystemExit(f"--fixtures: {args.fixtures} is not a folder")
    with tempfile.TemporaryDirectory() as work:
        rows = law_rows(args.fixtures, Path(work))
    if not rows:
        raise SystemExit(f"--fixtures: {args.fixtures} holds none of the known logs")
    text = section(rows)
    print(text)
    if args.out is not None:
        write_section(args.out, text)


if __name__ == "__main__":
    main()
