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

from softmax_theory.algorithms import AlgoConfig
from softmax_theory.checks import CheckConfig, CheckReport, run_checks
from softmax_theory.cli_options import build_config, config_options, parse_list
from softmax_theory.dynamics import EnvConfig, SimConfig
from softmax_theory.law import (
    N_BOOT,
    PAPER_FIT_FRACTION,
    LawReport,
    law_report,
    series_from_csv,
    series_from_run,
)
from softmax_theory.policy import PolicyLossConfig
from softmax_theory.registry import parse_choice
from softmax_theory.runlog import read_run
from softmax_theory.stats import correlation

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
# Wide enough for the tables even when the output is a pipe or a log file (rich assumes 80).
console = Console(width=140)


@app.callback()
def main() -> None:
    """Exact entropy dynamics of tabular softmax policies (Cui et al. 2025)."""


def _help(config_cls: type, name: str) -> str:
    return {f.name: f for f in dataclasses.fields(config_cls)}[name].metadata.get("help", "")


def _floats(text: str, name: str) -> tuple[float, ...]:
    return parse_list(text, float, name)


def _ints(text: str, name: str) -> tuple[int, ...]:
    return parse_list(text, int, name)


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


# ---------------------------------------------------------------------------------------------
# simulate and sweep
# ---------------------------------------------------------------------------------------------

# Field names that collide across the configs, or read badly as flags.
SIM_RENAME = {
    "EnvConfig.name": "env",
    "EnvConfig.seed": "env_seed",
    "AlgoConfig.policy_loss": "policy_loss",  # nested; never a flag
    "PolicyLossConfig.loss_mode": "loss",
    "SimConfig.cov_table_steps": "cov_table",
}


def _sim_configs(options: dict[str, Any]) -> tuple[EnvConfig, SimConfig]:
    env_cfg = build_config(EnvConfig, options, SIM_RENAME)
    loss_cfg = build_config(PolicyLossConfig, options, SIM_RENAME)
    algo_cfg = build_config(AlgoConfig, options, SIM_RENAME, policy_loss=loss_cfg)
    sim_cfg = build_config(SimConfig, options, SIM_RENAME, algo=algo_cfg)
    return env_cfg, sim_cfg


@app.command()
@config_options(EnvConfig, SimConfig, AlgoConfig, PolicyLossConfig, rename=SIM_RENAME)
def simulate(
    out: Annotated[Path | None, typer.Option(help="run directory to write")] = None,
    **options: Any,
) -> None:
    """Run one algorithm on one environment; print the run's summary and write its run log."""
    from softmax_theory.dynamics import make_env
    from softmax_theory.dynamics import simulate as run_simulation
    from softmax_theory.sweep import summarise

    env_cfg, sim_cfg = _sim_configs(options)
    env = make_env(env_cfg)
    result = run_simulation(env, sim_cfg, out=out)
    row = summarise(result, sim_cfg.seed)
    table = Table(title=f"{sim_cfg.algo.algo.value} on {env.name}, η = {sim_cfg.lr:g}")
    for col in (
        "steps",
        "H start → end",
        "J start → end",
        "median rel err (Lemma 1)",
        "corr ΔH vs Lemma 1",
        "corr within vs Lemma 1",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        str(sim_cfg.steps),
        f"{row.initial_entropy:.4f} → {row.final_entropy:.4f}",
        f"{row.initial_reward:.4f} → {row.final_reward:.4f}",
        "n/a" if row.median_rel_error is None else f"{row.median_rel_error:.2e}",
        _corr(row.correlation),
        _corr(row.correlation_within),
    )
    console.print(table)
    for t in result.cov_tables:
        print_cov_table(t)
    if out is not None:
        console.print(f"wrote {out}")


def _corr(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def print_cov_table(t: Any) -> None:
    table = Table(title=f"token covariance at step {t.step} ({t.n_tokens} tokens; paper Table 1)")
    for col in t.top_means:
        table.add_column(col, justify="right")
    table.add_row(*(f"{v:.4g}" for v in t.top_means.values()))
    console.print(table)
    if t.prompt_accuracy:
        import numpy as np

        acc, cov = np.array(t.prompt_accuracy), np.array(t.prompt_cov)
        console.print(
            f"per prompt (paper Fig. 8): corr(accuracy, exact Cov(log π, A)) = "
            f"{_corr(correlation(acc, cov))} over {acc.size} prompts"
        )


@app.command()
@config_options(EnvConfig, SimConfig, AlgoConfig, PolicyLossConfig, rename=SIM_RENAME)
def sweep(
    algos: Annotated[
        str, typer.Option("--algos", help="comma-separated algorithms")
    ] = "pg,npg,grpo",
    lrs: Annotated[str, typer.Option("--lrs", help="comma-separated step sizes")] = "0.01,0.1,1",
    seeds: Annotated[int, typer.Option(help="seeds per (algo, lr)")] = 1,
    out: Annotated[Path | None, typer.Option(help="directory for sweep.csv and figures")] = None,
    **options: Any,
) -> None:
    """Run the grid algo × lr × seed; print a table per (algo, lr); write sweep.csv and figures."""
    import csv

    import numpy as np
    from rich.progress import Progress

    from softmax_theory.algorithms import Algo
    from softmax_theory.sweep import run_sweep

    options.pop("algo", None)
    options.pop("lr", None)
    algo_list = [a.strip() for a in algos.split(",") if a.strip()]
    try:
        algo_list = [parse_choice(Algo, a, "algos").value for a in algo_list]
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    lr_list = _floats(lrs, "lrs")
    env_cfg, base = _sim_configs(options)
    total = len(algo_list) * len(lr_list) * seeds
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("simulating", total=total)
        rows, results = run_sweep(
            env_cfg, algo_list, lr_list, seeds, base, on_run=lambda: progress.advance(task)
        )
    table = Table(title=f"sweep on {env_cfg.name.value}, {base.steps} steps, {seeds} seed(s)")
    for col in (
        "algo",
        "lr",
        "median rel err (Lemma 1)",
        "corr ΔH vs Lemma 1",
        "final H",
        "final J",
    ):
        table.add_column(col, justify="right")

    def med(values: list) -> float:
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else float("nan")

    for a in algo_list:
        for lr in lr_list:
            sel = [r for r in rows if r.algo == a and r.lr == lr]
            err, corr = med([r.median_rel_error for r in sel]), med([r.correlation for r in sel])
            table.add_row(
                a,
                f"{lr:g}",
                "n/a" if np.isnan(err) else f"{err:.2e}",
                "n/a" if np.isnan(corr) else f"{corr:.4f}",
                f"{med([r.final_entropy for r in sel]):.4f}",
                f"{med([r.final_reward for r in sel]):.4f}",
            )
    console.print(table)
    if out is not None:
        from softmax_theory.plots import plot_delta_scatter, plot_error_vs_lr, plot_sweep_curves

        out.mkdir(parents=True, exist_ok=True)
        with open(out / "sweep.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[fl.name for fl in dataclasses.fields(rows[0])])
            writer.writeheader()
            writer.writerows(dataclasses.asdict(r) for r in rows)
        for name, (fig, _) in {
            "curves.png": plot_sweep_curves(results),
            "delta_scatter.png": plot_delta_scatter(results),
            "error_vs_lr.png": plot_error_vs_lr(rows),
        }.items():
            fig.savefig(out / name, dpi=110)
        console.print(f"wrote {out}/sweep.csv and figures")


if __name__ == "__main__":
    app()
