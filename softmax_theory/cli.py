"""`softmax-theory`: the command line.

Each command builds a config from its options and calls one library function. A user's
mistake ends with one line, ``error: <argument>: <problem>``, and exit code 2.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from softmax_theory.algorithms import AlgoConfig
from softmax_theory.checks import CheckConfig, CheckReport, run_checks
from softmax_theory.cli_options import (
    build_config,
    check_out_dir,
    check_out_file,
    config_options,
    run_cli,
)
from softmax_theory.control import ControlConfig
from softmax_theory.dynamics import SimConfig
from softmax_theory.envs import EnvConfig
from softmax_theory.law import (
    LawConfig,
    LawReport,
    law_report,
    series_from_csv,
    series_from_run,
)
from softmax_theory.policy import PolicyLossConfig
from softmax_theory.runlog import STEPS_FILE, atomic_write_text, read_run
from softmax_theory.stats import correlation
from softmax_theory.sweep import SweepGrid

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, rich_markup_mode=None)
# Wide enough for the tables even when the output is a pipe or a log file (rich assumes 80).
console = Console(width=140)


@app.callback()
def main_callback() -> None:
    """Exact entropy dynamics of tabular softmax policies (Cui et al. 2025)."""


def _fmt(x: float | None, spec: str = ".2e") -> str:
    return "n/a" if x is None else format(x, spec)


# ---------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------


CHECK_COLUMNS = (
    "env",
    "lr",
    "median rel err",
    "p90 rel err",
    "judged rel.",
    "|err| ≤ 2|S₂|",
    "corr",
    "slope",
    "bounds",
    "shift share",
    "ok",
)


def print_check_report(report: CheckReport) -> None:
    for claim in dict.fromkeys(row.claim for row in report.rows):
        table = Table(title=f"{claim}: predicted vs exact ΔH")
        for col in CHECK_COLUMNS:
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
                "—" if row.judged_relative is None else str(row.judged_relative),
                _fmt(row.abs_bound_share, ".0%"),
                _fmt(row.correlation, ".5f"),
                f"{row.slope:.3f}",
                bound,
                f"{row.shift_share:.3f}",
                "[green]yes[/]" if row.passed else "[red]NO[/]",
            )
        console.print(table)
    console.print(
        "judged rel.: instances where the first-order term dominates the second-order term S₂ "
        "enough for the relative bound to apply; |err| ≤ 2|S₂|: share of instances within the "
        "absolute bound the theory gives (docs/theory.md §5)."
    )


@app.command()
@config_options(CheckConfig)
def check(
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the table as JSON to this file")
    ] = None,
    **options: Any,
) -> None:
    """Check Lemma 1, Theorems 1–2 and the second-order term; exit 1 if a tolerance is missed."""
    config = build_config(CheckConfig, options)
    if json_out is not None:
        check_out_file(json_out, "--json")
    report = run_checks(config)
    print_check_report(report)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(report.to_dict(), indent=2))
        console.print(f"wrote {json_out}")
    failed = [r for r in report.rows if not r.passed]
    if failed:
        console.print(f"[red]{len(failed)} of {len(report.rows)} checks missed their tolerance[/]")
        raise typer.Exit(code=1)
    console.print(f"[green]all {len(report.rows)} checks within the tolerance the theory gives[/]")


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------


def _interval(lo_hi: tuple[float, float]) -> str:
    return f"[{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]"


LAW_COLUMNS = (
    "run",
    "reward key",
    "n",
    "a",
    "a 95%",
    "b",
    "b 95%",
    "ceiling b−a",
    "ceiling 95%",
    "R²",
    "RMSE",
    "forecast RMSE",
    "final error",
)


def print_law_reports(reports: list[LawReport], fit_fraction: float) -> None:
    table = Table(title=f"R = −a·exp(H) + b (forecast: fit on the first {fit_fraction:g})")
    for col in LAW_COLUMNS:
        table.add_column(col, justify="right")
    for rep in reports:
        f, ci, fc = rep.fit, rep.interval, rep.forecast
        table.add_row(
            rep.series.name,
            rep.series.reward_key,
            str(f.n),
            f"{f.a:.4g}",
            _interval(ci.a),
            f"{f.b:.4g}",
            _interval(ci.b),
            f"{f.ceiling:.4g}",
            _interval(ci.ceiling),
            _fmt(f.r2, ".3f"),
            f"{f.rmse:.3g}",
            "n/a" if fc is None else f"{fc.rmse:.3g}",
            "n/a" if fc is None else f"{fc.final_error:+.3g}",
        )
    console.print(table)
    for rep in reports:
        name = rep.series.name
        console.print(f"{name}: reward key {rep.series.reward_key} ({rep.fit.n} points)")
        if rep.series.note:
            console.print(f"[yellow]{name}: {rep.series.note}[/]")
        if not rep.fit.holds:
            console.print(
                f"[yellow]{name}: the best fit has a = 0 — reward does not rise as entropy "
                "falls, so the law does not hold for this run[/]"
            )
        if rep.forecast_error is not None:
            console.print(f"[yellow]{name}: no forecast: {rep.forecast_error}[/]")
        for warning in rep.warnings:
            console.print(f"[yellow]{name}: {warning}[/]")


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
        "note": rep.series.note,
        "warnings": list(rep.warnings),
    }


@app.command()
@config_options(LawConfig)
def fit(
    runs: Annotated[list[Path], typer.Argument(help="run directories, or CSV files")],
    entropy_col: Annotated[str, typer.Option(help="CSV: the entropy column")] = "entropy",
    reward_col: Annotated[
        str | None,
        typer.Option(
            help="CSV column or run-log key of the reward (default: CSV 'reward'; run "
            "directories: val_reward where there are at least 3 points, else reward)"
        ),
    ] = None,
    step_col: Annotated[str, typer.Option(help="CSV: the step column, if any")] = "step",
    out: Annotated[Path | None, typer.Option(help="directory for law.png and law.json")] = None,
    **options: Any,
) -> None:
    """Fit the entropy–performance law to runs; print a, b, the ceiling and the forecast error."""
    cfg = build_config(LawConfig, options)
    if out is not None:
        check_out_dir(out, "--out")
    rng = np.random.default_rng(cfg.seed)
    reports = []
    for path in runs:
        try:
            series = (
                series_from_csv(path, entropy_col, reward_col or "reward", step_col)
                if path.suffix.lower() == ".csv"
                else series_from_run(read_run(path), reward_col)
            )
            reports.append(law_report(series, cfg.fit_fraction, cfg.n_boot, rng))
        except (ValueError, FileNotFoundError) as err:
            message = str(err)
            raise ValueError(
                f"RUNS: {message if str(path) in message else f'{path}: {message}'}"
            ) from None
    print_law_reports(reports, cfg.fit_fraction)
    if out is not None:
        from softmax_theory.plots import plot_law

        fig, _ = plot_law(reports)
        fig.savefig(out / "law.png", dpi=120)
        atomic_write_text(out / "law.json", json.dumps([_law_dict(r) for r in reports], indent=2))
        console.print(f"wrote {out / 'law.png'} and {out / 'law.json'}")


# ---------------------------------------------------------------------------------------------
# simulate and sweep
# ---------------------------------------------------------------------------------------------

# Field names that collide across the configs, or read badly as flags.
SIM_RENAME = {
    "EnvConfig.name": "env",
    "EnvConfig.seed": "env_seed",
    "AlgoConfig.policy_loss": "policy_loss",  # nested; never a flag
    "AlgoConfig.control": "control",  # nested; never a flag
    "PolicyLossConfig.loss_mode": "loss",
    "SimConfig.cov_table_steps": "cov_table",
}
# Settings that mean nothing in the tabular world: a GRPO step there is one batch, so every
# selection scope is the same.
SIM_EXCLUDE = frozenset({"cov_scope"})


def _sim_configs(options: dict[str, Any]) -> tuple[EnvConfig, SimConfig]:
    env_cfg = build_config(EnvConfig, options, SIM_RENAME)
    loss_cfg = build_config(PolicyLossConfig, options, SIM_RENAME)
    control_cfg = build_config(ControlConfig, options, SIM_RENAME)
    algo_cfg = build_config(
        AlgoConfig, options, SIM_RENAME, policy_loss=loss_cfg, control=control_cfg
    )
    sim_cfg = build_config(SimConfig, options, SIM_RENAME, algo=algo_cfg)
    return env_cfg, sim_cfg


SUMMARY_COLUMNS = (
    "steps",
    "H start → end",
    "J start → end",
    "median rel err (Lemma 1)",
    "median |err|",
    "corr ΔH vs Lemma 1",
    "corr within vs Lemma 1",
)


@app.command()
@config_options(
    EnvConfig,
    SimConfig,
    AlgoConfig,
    PolicyLossConfig,
    ControlConfig,
    rename=SIM_RENAME,
    exclude=SIM_EXCLUDE,
)
def simulate(
    out: Annotated[
        Path | None, typer.Option(help="run directory to write (a new one: no resume)")
    ] = None,
    **options: Any,
) -> None:
    """Run one algorithm on one environment; print the run's summary and write its run log."""
    from softmax_theory.dynamics import simulate as run_simulation
    from softmax_theory.envs import make_env
    from softmax_theory.sweep import summarise

    env_cfg, sim_cfg = _sim_configs(options)
    if out is not None:
        check_out_dir(out, "--out")
        if (out / STEPS_FILE).exists():
            raise FileExistsError(
                f"out: {out} already holds a run, and simulate has no resume (a tabular run "
                "takes seconds): choose a new directory"
            )
    env = make_env(env_cfg)
    result = run_simulation(env, sim_cfg, out=out)
    cell = (sim_cfg.algo.algo.value, sim_cfg.lr, sim_cfg.seed)
    row = summarise(result.records, cell)
    table = Table(title=f"{sim_cfg.algo.algo.value} on {env.name}, η = {sim_cfg.lr:g}")
    for col in SUMMARY_COLUMNS:
        table.add_column(col, justify="right")
    table.add_row(
        str(sim_cfg.steps),
        f"{row.initial_entropy:.4f} → {row.final_entropy:.4f}",
        f"{row.initial_reward:.4f} → {row.final_reward:.4f}",
        _fmt(row.median_rel_error),
        _fmt(row.median_abs_error),
        _fmt(row.correlation, ".4f"),
        _fmt(row.correlation_within, ".4f"),
    )
    console.print(table)
    for t in result.cov_tables:
        print_cov_table(t)
    if out is not None:
        console.print(f"wrote {out}")


def print_cov_table(t: Any) -> None:
    table = Table(title=f"token covariance at step {t.step} ({t.n_tokens} tokens; paper Table 1)")
    for col in t.top_means:
        table.add_column(col, justify="right")
    table.add_row(*(f"{v:.4g}" for v in t.top_means.values()))
    console.print(table)
    if t.prompt_accuracy:
        acc, cov = np.array(t.prompt_accuracy), np.array(t.prompt_cov)
        console.print(
            f"per prompt (paper Fig. 8): corr(accuracy, exact Cov(log π, A)) = "
            f"{_fmt(correlation(acc, cov), '.4f')} over {acc.size} prompts"
        )


def _sweep_table(rows: list, env_name: str, steps: int, seeds: int) -> Table:
    table = Table(title=f"sweep on {env_name}, {steps} steps, {seeds} seed(s)")
    for col in (
        "algo",
        "lr",
        "runs",
        "median rel err (Lemma 1)",
        "median |err|",
        "final H",
        "final J",
    ):
        table.add_column(col, justify="right")
    for key in dict.fromkeys((r.algo, r.lr) for r in rows):
        sel = [r for r in rows if (r.algo, r.lr) == key]

        def med(field: str, sel=sel) -> float | None:
            vals = [getattr(r, field) for r in sel if getattr(r, field) is not None]
            return float(np.median(vals)) if vals else None

        table.add_row(
            key[0],
            f"{key[1]:g}",
            str(len(sel)),
            _fmt(med("median_rel_error")),
            _fmt(med("median_abs_error")),
            _fmt(med("final_entropy"), ".4f"),
            _fmt(med("final_reward"), ".4f"),
        )
    return table


@app.command()
@config_options(
    SweepGrid,
    EnvConfig,
    SimConfig,
    AlgoConfig,
    PolicyLossConfig,
    rename=SIM_RENAME,
    exclude=SIM_EXCLUDE | {"algo", "lr"},
)
def sweep(
    out: Annotated[
        Path | None,
        typer.Option(help="directory for config.json, sweep.csv, runs/ and the figures"),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="continue the sweep in --out, running only missing cells")
    ] = False,
    **options: Any,
) -> None:
    """Run the grid algo × η × seed; each finished cell is written at once (a run directory and
    a row of sweep.csv), so an interrupted sweep keeps its work and --resume finishes it."""
    from rich.progress import Progress

    from softmax_theory.sweep import run_sweep

    grid = build_config(SweepGrid, options)
    algos, lrs, seeds = list(grid.algos), list(grid.lrs), grid.seeds
    env_cfg, base = _sim_configs(options)
    for x in lrs:  # every cell is valid before anything is written
        dataclasses.replace(base, lr=x)
    if resume and out is None:
        raise ValueError("resume: give the sweep's directory with --out")
    if out is not None:
        check_out_dir(out, "--out")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("simulating")
        rows, curves = run_sweep(
            env_cfg,
            algos,
            lrs,
            seeds,
            base,
            out=out,
            resume=resume,
            on_run=lambda cell, old: progress.advance(task),
            log=console.print,
        )
    console.print(_sweep_table(rows, env_cfg.name.value, base.steps, seeds))
    if any(a in ("pg", "npg") for a in algos) and seeds > 1:
        console.print("pg and npg are exact (they sample nothing): one run per η")
    if out is not None:
        from softmax_theory.plots import plot_delta_scatter, plot_error_vs_lr, plot_sweep_curves

        for name, (fig, _) in {
            "curves.png": plot_sweep_curves(curves),
            "delta_scatter.png": plot_delta_scatter(curves),
            "error_vs_lr.png": plot_error_vs_lr(rows),
        }.items():
            fig.savefig(out / name, dpi=110)
        console.print(f"wrote {out}/sweep.csv, {out}/runs and figures")


def main(argv: list[str] | None = None) -> None:
    """The ``softmax-theory`` entry point."""
    run_cli(app, argv)


if __name__ == "__main__":
    main()
