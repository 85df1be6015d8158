"""A grid of simulations (algorithm × step size × seed), written as it goes.

With an output directory, each finished cell is a run directory of its own (``runs/<cell>``,
the run-log contract) and a row appended to ``sweep.csv``, so an interrupted sweep keeps every
finished cell and ``resume`` runs only the missing ones. PG and NPG are exact (they sample
nothing), so they run once per step size whatever the number of seeds.

A resume reads back only what is whole: a torn last row of ``sweep.csv`` (a kill mid-append) and
a finished cell whose run directory does not read back whole (a torn or corrupt ``steps.jsonl``,
fewer steps than the sweep's) run again, each said in one line, their rows dropped first; any
other fault of ``sweep.csv`` is refused naming the file and line.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from softmax_theory.algorithms import Algo
from softmax_theory.dynamics import SimConfig, simulate
from softmax_theory.envs import EnvConfig, make_env
from softmax_theory.inputs import Domain, SettingError, check_domains
from softmax_theory.runlog import (
    CONFIG_FILE,
    STEPS_FILE,
    atomic_write_text,
    check_resumable,
    read_config,
    read_run,
    to_jsonable,
)
from softmax_theory.stats import correlation, relative_errors

SWEEP_FILE = "sweep.csv"
RUNS_DIR = "runs"
# Algorithms whose step is exact: their runs do not depend on the seed.
EXACT_ALGOS = frozenset({Algo.PG, Algo.NPG})
# The grid may grow on resume (more algorithms, step sizes or seeds): finished cells keep.
SWEEP_FREE = frozenset({"algos", "lrs", "seeds"})
CURVE_KEYS = ("entropy", "reward", "delta_within", "pred_lemma1")

Curves = dict[str, np.ndarray]
Cell = tuple[str, float, int]  # (algo, η, seed)
Log = Callable[[str], None]


@dataclass(frozen=True)
class SweepGrid:
    """The grid of a sweep; the only home of its defaults and domains."""

    algos: tuple[str, ...] = field(
        default=("pg", "npg", "grpo"),
        metadata={"help": "comma-separated algorithms", "flags": ("--algo", "--algos")},
    )
    lrs: tuple[float, ...] = field(
        default=(0.01, 0.1, 1.0),
        metadata={
            "help": "comma-separated step sizes η",
            "domain": Domain(gt=0, min_len=1),
            "flags": ("--lr", "--lrs"),
        },
    )
    seeds: int = field(
        default=1,
        metadata={
            "help": "sampling seeds per cell, from --seed on (pg and npg are exact: one)",
            "domain": Domain(ge=1),
        },
    )

    def __post_init__(self) -> None:
        check_domains(self)
        valid = [a.value for a in Algo]
        unknown = [a for a in self.algos if a not in valid]
        if unknown or not self.algos:
            raise SettingError(
                "algos", f"{', '.join(unknown) or 'none'} given; choose from {', '.join(valid)}"
            )


@dataclass(frozen=True)
class SweepRow:
    """One run of the grid, summarised over its steps."""

    algo: str
    lr: float
    seed: int
    median_rel_error: float | None  # of pred_lemma1 against the within-state ΔH, over steps
    median_abs_error: float  # … absolute, over every step
    rel_error_steps: int  # steps where ΔH or the prediction exceeds the float resolution
    correlation: float | None  # of pred_lemma1 against the measured total ΔH, over steps
    correlation_within: float | None  # … against the within-state part
    initial_entropy: float
    final_entropy: float
    initial_reward: float
    final_reward: float


def cell_name(algo: str, lr: float, seed: int) -> str:
    return f"{algo}_lr{lr:g}_seed{seed}"


def summarise(records: Sequence[dict[str, Any]], cell: Cell) -> SweepRow:
    """A run's row from its records: errors of Lemma 1 against the within-state ΔH (relative
    only where either side exceeds the float64 resolution of the entropies involved)."""
    pred = np.array([r["pred_lemma1"] for r in records])
    within = np.array([r["delta_within"] for r in records])
    total = np.array([r["delta_entropy"] for r in records])
    h = np.array([r["entropy"] for r in records] + [records[-1]["entropy_after"]])
    rel = relative_errors(within, pred, h[:-1])
    algo, lr, seed = cell
    return SweepRow(
        algo=algo,
        lr=lr,
        seed=seed,
        median_rel_error=float(np.nanmedian(rel)) if np.isfinite(rel).any() else None,
        median_abs_error=float(np.median(np.abs(pred - within))),
        rel_error_steps=int(np.isfinite(rel).sum()),
        correlation=correlation(total, pred),
        correlation_within=correlation(within, pred),
        initial_entropy=float(h[0]),
        final_entropy=float(h[-1]),
        initial_reward=float(records[0]["reward"]),
        final_reward=float(records[-1]["reward"]),
    )


def sweep_cells(algos: Sequence[str], lrs: Sequence[float], seeds: Sequence[int]) -> list[Cell]:
    """The grid; exact algorithms get the first seed only."""
    if not algos:
        raise ValueError("algo: give at least one algorithm")
    if not lrs:
        raise ValueError("lr: give at least one step size")
    if not seeds:
        raise ValueError("seeds: need at least 1")
    cells = []
    for a in algos:
        algo = Algo(a)
        for lr in lrs:
            for seed in seeds[:1] if algo in EXACT_ALGOS else seeds:
                cells.append((algo.value, float(lr), int(seed)))
    return cells


ROW_FIELDS = tuple(f.name for f in dataclasses.fields(SweepRow))


def _parse_row(fields: list[str]) -> SweepRow:
    """One row of sweep.csv, its fields in ``ROW_FIELDS`` order; a ValueError saying what does
    not read."""
    if len(fields) != len(ROW_FIELDS):
        raise ValueError(f"{len(fields)} fields, not {len(ROW_FIELDS)}")
    kinds = {f.name: f.type for f in dataclasses.fields(SweepRow)}
    values: dict[str, Any] = {}
    for name, text in zip(ROW_FIELDS, fields, strict=True):
        kind = kinds[name]
        if text == "":
            values[name] = None
        elif "int" in kind:
            values[name] = int(text)
        elif "float" in kind:
            values[name] = float(text)
        else:
            values[name] = text
    return SweepRow(**values)


def _read_rows(path: Path) -> tuple[dict[Cell, SweepRow], int | None]:
    """The finished rows of a sweep.csv by cell, and the number of a torn last line or None.
    The last line is torn when the file does not end with a newline (a kill mid-append: a
    number cut short may still read) or when it does not read; its cell is unfinished. Any
    other line that does not read is refused naming the file and line."""
    if not path.exists():
        return {}, None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    lines = text.splitlines()
    last = max((i for i, line in enumerate(lines, start=1) if line.strip()), default=0)
    rows: dict[Cell, SweepRow] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if number == last and not text.endswith("\n"):
            return rows, number
        fields = next(csv.reader([line]))
        try:
            if number == 1:
                if tuple(fields) != ROW_FIELDS:
                    raise ValueError(f"the header is not sweep.csv's ({', '.join(ROW_FIELDS)})")
                continue
            row = _parse_row(fields)
        except (ValueError, TypeError) as err:
            if number == last:
                return rows, number
            raise ValueError(f"{path} line {number}: {err}") from None
        rows[(row.algo, row.lr, row.seed)] = row
    return rows, None


def _write_rows(path: Path, rows: Sequence[SweepRow]) -> None:
    """Replace sweep.csv by ``rows`` (atomically: a kill keeps the old table)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(ROW_FIELDS))
    writer.writeheader()
    for row in rows:
        writer.writerow(dataclasses.asdict(row))
    atomic_write_text(path, text.getvalue())


def _append_row(path: Path, row: SweepRow) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROW_FIELDS))
        if new:
            writer.writeheader()
        writer.writerow(dataclasses.asdict(row))
        f.flush()
        os.fsync(f.fileno())


def cell_fault(run_dir: Path, steps: int) -> str | None:
    """Why a finished cell's run directory does not read back whole (``read_run``'s refusal,
    or steps other than 0 … ``steps`` − 1), or None."""
    try:
        run = read_run(run_dir)
    except (ValueError, FileNotFoundError) as err:
        return str(err)
    if [r["step"] for r in run.steps] != list(range(steps)):
        return f"{run_dir / STEPS_FILE} holds {len(run.steps)} of the cell's {steps} steps"
    return None


def _drop_unreadable(
    out: Path, done: dict[Cell, SweepRow], cells: Sequence[Cell], steps: int, log: Log
) -> dict[Cell, SweepRow]:
    """``done`` without the cells of the grid whose run directory is not whole (``cell_fault``):
    each is said and runs again, its row first dropped from sweep.csv."""
    bad = []
    for cell in cells:
        if cell in done:
            why = cell_fault(out / RUNS_DIR / cell_name(*cell), steps)
            if why is not None:
                log(f"sweep: {why}: cell {cell_name(*cell)} runs again")
                bad.append(cell)
    if not bad:
        return done
    kept = {c: row for c, row in done.items() if c not in bad}
    _write_rows(out / SWEEP_FILE, list(kept.values()))
    return kept


def _curves(records: Sequence[dict[str, Any]]) -> Curves:
    return {k: np.array([r[k] for r in records if k in r], dtype=np.float64) for k in CURVE_KEYS}


def sweep_config(
    env_config: EnvConfig, algos: Sequence[str], lrs: Sequence[float], seeds: int, base: SimConfig
) -> dict[str, Any]:
    """What a sweep directory's config.json records."""
    return {
        "env": to_jsonable(env_config),
        "base": to_jsonable(base),
        "algos": list(algos),
        "lrs": [float(x) for x in lrs],
        "seeds": seeds,
    }


def run_sweep(
    env_config: EnvConfig,
    algos: Sequence[str],
    lrs: Sequence[float],
    seeds: int,
    base: SimConfig,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    on_run: Callable[[Cell, bool], None] | None = None,
    log: Log = lambda _: None,
) -> tuple[list[SweepRow], dict[Cell, Curves]]:
    """Every cell of the grid on one environment; with ``out``, each is written when it ends.

    Args:
      seeds: seeds per cell (``base.seed`` … ``base.seed + seeds − 1``: the sampling seed).
      resume: continue the sweep in ``out``: its finished cells are read back, not rerun; the
        environment and the base settings must be the ones it was started with.
      on_run: called with each cell and whether it was read back (True) or run.
      log: the lines a resume says (a torn row, a cell that runs again).
    Returns:
      rows and curves (entropy, reward, ΔH within states, Lemma 1) by cell, in grid order.
    """
    if seeds < 1:
        raise ValueError(f"seeds: need at least 1, got {seeds}")
    cells = sweep_cells(algos, lrs, range(base.seed, base.seed + seeds))
    configs = {
        c: replace(base, lr=c[1], seed=c[2], algo=replace(base.algo, algo=c[0])) for c in cells
    }
    done: dict[Cell, SweepRow] = {}
    out_dir = None if out is None else Path(out)
    if out_dir is not None:
        config = sweep_config(env_config, algos, lrs, seeds, base)
        done = _open_sweep(out_dir, config, resume, log)
        done = _drop_unreadable(out_dir, done, cells, base.steps, log)
    env = make_env(env_config)
    rows, curves = [], {}
    for cell in cells:
        run_dir = None if out_dir is None else out_dir / RUNS_DIR / cell_name(*cell)
        if cell in done:
            rows.append(done[cell])
            curves[cell] = _curves(read_run(run_dir).steps)
        else:
            if run_dir is not None and run_dir.exists():  # a cell interrupted mid-run
                shutil.rmtree(run_dir)
            result = simulate(env, configs[cell], out=run_dir)
            rows.append(summarise(result.records, cell))
            curves[cell] = _curves(result.records)
            if out_dir is not None:
                _append_row(out_dir / SWEEP_FILE, rows[-1])
        if on_run is not None:
            on_run(cell, cell in done)
    return rows, curves


def _open_sweep(out: Path, config: dict[str, Any], resume: bool, log: Log) -> dict[Cell, SweepRow]:
    """Prepare ``out`` for a sweep; return its finished rows when resuming (a torn last row is
    said, and dropped from sweep.csv: its cell runs again)."""
    table = out / SWEEP_FILE
    if resume and (out / CONFIG_FILE).exists():
        check_resumable(out, config, SWEEP_FREE)
        finished, torn = _read_rows(table)
        if torn is not None:
            log(f"sweep: {table} line {torn} is torn (cut short mid-write): its cell runs again")
            _write_rows(table, list(finished.values()))
    elif table.exists() and table.stat().st_size > 0:
        raise FileExistsError(
            f"out: {out} already holds a sweep; choose a new directory or --resume"
        )
    else:
        finished = {}
    out.mkdir(parents=True, exist_ok=True)
    if (out / CONFIG_FILE).exists():
        config = {**read_config(out), **{k: config[k] for k in SWEEP_FREE}}
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return finished
