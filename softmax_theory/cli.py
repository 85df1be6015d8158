"""`softmax-theory`: the command line.

Each command builds a config from its options and calls one library function.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from softmax_theory.checks import CheckConfig, CheckReport, run_checks

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
# Wide enough for the tables even when the output is a pipe or a log file (rich assumes 80).
console = Console(width=140)


@app.callback()
def main() -> None:
    """Exact entropy dynamics of tabular softmax policies (Cui et al. 2025)."""


def _help(config_cls: type, name: str) -> str:
    return {f.name: f for f in dataclasses.fields(config_cls)}[name].metadata.get("help", "")


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{name}: expected comma-separated numbers, got {text!r}"
        ) from None


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{name}: expected comma-separated integers, got {text!r}"
        ) from None


def _config(config_cls: type, **given: Any) -> Any:
    """Build a config from the options the user gave; the dataclass holds every default."""
    try:
        return config_cls(**{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def _fmt(x: float) -> str:
    return f"{x:.2e}"


def print_check_report(report: CheckReport) -> None:
    for claim in dict.fromkeys(row.claim for row in report.rows):
        table = Table(title=f"{claim}: predicted vs exact ΔH", show_lines=False)
        for col in (
            "env",
            "lr",
            "median rel err",
            "p90 rel err",
            "corr",
            "slope",
            "bounds",
            "shift share",
            "ok",
        ):
            table.add_column(col, justify="right")
        for row in (r for r in report.rows if r.claim == claim):
            lo, hi = row.slope_bounds
            bound = f"slope in [{lo}, {hi}]"
            if row.max_median_rel_error is not None:
                bound += f"; median <= {row.max_median_rel_error:g}"
            table.add_row(
                row.env,
                f"{row.lr:g}",
                _fmt(row.median_rel_error),
                _fmt(row.p90_rel_error),
                "n/a" if row.correlation is None else f"{row.correlation:.5f}",
                f"{row.slope:.3f}",
                bound,
                f"{row.shift_share:.3f}",
                "[green]yes[/]" if row.passed else "[red]NO[/]",
            )
        console.print(table)


@app.command()
def check(
    json_out: Annotated[Path | None, typer.Option("--json", help="write the table as JSON")] = None,
    lrs: Annotated[str | None, typer.Option(help=_help(CheckConfig, "lrs"))] = None,
    instances: Annotated[int | None, typer.Option(help=_help(CheckConfig, "instances"))] = None,
    logit_scales: Annotated[
        str | None, typer.Option(help=_help(CheckConfig, "logit_scales"))
    ] = None,
    bandit_actions: Annotated[
        str | None, typer.Option(help=_help(CheckConfig, "bandit_actions"))
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_help(CheckConfig, "seed"))] = None,
) -> None:
    """Check Lemma 1, Theorems 1–2 and the second-order term; exit 1 if a tolerance is missed."""
    config = _config(
        CheckConfig,
        lrs=None if lrs is None else _floats(lrs, "lrs"),
        instances=instances,
        logit_scales=None if logit_scales is None else _floats(logit_scales, "logit-scales"),
        bandit_actions=None if bandit_actions is None else _ints(bandit_actions, "bandit-actions"),
        seed=seed,
    )
    report = run_checks(config)
    print_check_report(report)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_dict(), indent=2))
        console.print(f"wrote {json_out}")
    failed = [r for r in report.rows if not r.passed]
    if failed:
        console.print(f"[red]{len(failed)} of {len(report.rows)} checks missed their tolerance[/]")
        raise typer.Exit(code=1)
    console.print(f"[green]all {len(report.rows)} checks within the tolerance the theory gives[/]")
