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
from softmax_theory.law import (
    N_BOOT,
    PAPER_FIT_FRACTION,
    LawReport,
    law_report,
    series_from_csv,
    series_from_run,
)
from softmax_theory.runlog import read_run

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


def _interval(lo_hi: tuple[float, float]) -> str:
    return f"[{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]"


def print_law_reports(reports: list[LawReport], fit_fraction: float) -> None:
    table = Table(title="R = −a·exp(H) + b")
    for col in (
        "run",
        "n",
        "a",
        "a 95%",
        "b",
        "b 95%",
        "ceiling b−a",
        "ceiling 95%",
        "R²",
        "RMSE",
        f"forecast RMSE (fit {fit_fraction:g})",
        "final error",
    ):
        table.add_column(col, justify="right")
    for rep in reports:
        f, ci, fc = rep.fit, rep.interval, rep.forecast
        table.add_row(
            rep.series.name,
            str(f.n),
            f"{f.a:.4g}",
            _interval(ci.a),
            f"{f.b:.4g}",
            _interval(ci.b),
            f"{f.ceiling:.4g}",
            _interval(ci.ceiling),
            "n/a" if f.r2 is None else f"{f.r2:.3f}",
            f"{f.rmse:.3g}",
            "n/a" if fc is None else f"{fc.rmse:.3g}",
            "n/a" if fc is None else f"{fc.final_error:+.3g}",
        )
    console.print(table)
    for rep in reports:
        if not rep.fit.holds:
            console.print(
                f"[yellow]{rep.series.name}: the best fit has a = 0 — reward does not rise as "
                "entropy falls, so the law does not hold for this run[/]"
            )
        if rep.forecast_error is not None:
            console.print(f"[yellow]{rep.series.name}: no forecast: {rep.forecast_error}[/]")


@app.command()
def fit(
    runs: Annotated[list[Path], typer.Argument(help="run directories, or CSV files")],
    fit_fraction: Annotated[
        float, typer.Option(help="share of points (in step order) the forecast is fitted on")
    ] = PAPER_FIT_FRACTION,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for the intervals")] = N_BOOT,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap")] = 0,
    entropy_col: Annotated[str, typer.Option(help="CSV: the entropy column")] = "entropy",
    reward_col: Annotated[str, typer.Option(help="CSV: the reward column")] = "reward",
    step_col: Annotated[str, typer.Option(help="CSV: the step column, if any")] = "step",
    out: Annotated[Path | None, typer.Option(help="directory for law.png and law.json")] = None,
) -> None:
    """Fit the entropy–performance law to runs; print a, b, the ceiling and the forecast error."""
    import numpy as np

    rng = np.random.default_rng(seed)
    reports = []
    for path in runs:
        try:
            series = (
                series_from_csv(path, entropy_col, reward_col, step_col)
                if path.suffix.lower() == ".csv"
                else series_from_run(read_run(path))
            )
            reports.append(law_report(series, fit_fraction, n_boot, rng))
        except (ValueError, FileNotFoundError) as err:
            raise typer.BadParameter(f"{path}: {err}", param_hint="RUNS") from None
    print_law_reports(reports, fit_fraction)
    if out is not None:
        from softmax_theory.plots import plot_law

        out.mkdir(parents=True, exist_ok=True)
        fig, _ = plot_law(reports)
        fig.savefig(out / "law.png", dpi=120)
        (out / "law.json").write_text(json.dumps([_law_dict(r) for r in reports], indent=2))
        console.print(f"wrote {out / 'law.png'} and {out / 'law.json'}")


def _law_dict(rep: LawReport) -> dict[str, Any]:
    f, fc = rep.fit, rep.forecast
    return {
        "run": rep.series.name,
        "reward_key": rep.series.reward_key,
        "n": f.n,
        "a": f.a,
        "b": f.b,
        "ceiling": f.ceiling,
        "holds": f.holds,
        "r2": f.r2,
        "rmse": f.rmse,
        "interval": dataclasses.asdict(rep.interval),
        "forecast": None
        if fc is None
        else {"n_fit": fc.n_fit, "rmse": fc.rmse, "final_error": fc.final_error},
        "forecast_error": rep.forecast_error,
    }
