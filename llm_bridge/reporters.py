"""Stream a run's steps to experiment trackers: TensorBoard, W&B, trackio (``--report-to``).

The run directory stays the record (``config.json`` + ``steps.jsonl``); a reporter sends each
step's numbers as well, every key under its run-log name (``entropy``, ``pred_lemma1``,
``attr/pos_high``, ``probe/tokens``, …) at the run's step, so what a tracker shows is what the
run log holds, and ``llm-bridge import tensorboard`` / ``import wandb`` read it back. Values
that are not numbers (``algo``) are skipped.

- ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` → ``RUN/tensorboard/``.
- ``wandb``: ``wandb`` → ``RUN/wandb/<run>/`` (``WANDB_MODE=offline`` works without an account).
- ``trackio``: ``trackio``'s local SQLite store → ``$TRACKIO_DIR``, else ``RUN/trackio/``.

``open_reporters(parse_report_to("tensorboard,wandb"), run_dir, config)`` gives one reporter
for all; ``trl_report_to`` gives the names for ``GRPOConfig.report_to``.
"""

from __future__ import annotations

import enum
import importlib
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from softmax_theory.inputs import MissingExtra
from softmax_theory.registry import parse_choice

# The project a W&B or trackio run lands in unless WANDB_PROJECT / the config says otherwise.
PROJECT = "entropy-mechanism"


class ReportTarget(str, enum.Enum):
    """Where a run reports its steps besides its run directory (``--report-to``)."""

    NONE = "none"
    TENSORBOARD = "tensorboard"
    WANDB = "wandb"
    TRACKIO = "trackio"


class Reporter(Protocol):
    """Receives each step's record as the run log writes it."""

    def log(self, record: dict[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


def numeric_items(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers under their own keys, without ``step`` (the axis): strings such as
    ``algo``, booleans and None are skipped."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool)
    }


def _require(module: str, target: ReportTarget) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise MissingExtra(
            f"report_to: {target.value} needs the {package} package; pip install {package}"
        ) from None


class TensorBoardReporter:
    """Scalars to ``run_dir/tensorboard/``, one tag per run-log key, flushed each step."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        _require("tensorboard", ReportTarget.TENSORBOARD)
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = run_dir / "tensorboard"
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, record: dict[str, Any], step: int) -> None:
        for key, value in numeric_items(record).items():
            # a float64 tensor, not the legacy float32 simple_value: read back, the value is
            # the run log's to the last bit
            self._writer.add_scalar(
                key, value, global_step=step, new_style=True, double_precision=True
            )
        self._writer.flush()  # a killed run keeps what it reported

    def close(self) -> None:
        self._writer.close()


class WandbReporter:
    """A W&B run under ``run_dir/wandb/``; ``WANDB_MODE`` (``offline``, ``disabled``) is W&B's
    own setting and is honoured as set.

    The step goes in as the ``step`` key, W&B's x-axis for every key (``define_metric``), not as
    W&B's internal ``_step``: a TRL trainer reporting to the same run logs rows of its own, and
    W&B drops rows whose ``_step`` goes backwards.
    """

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        wandb = _require("wandb", ReportTarget.WANDB)
        try:
            self._run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", PROJECT),
                name=run_dir.name,
                dir=str(run_dir),
                config=config,
                reinit="create_new",
                settings=wandb.Settings(console="off", silent=True),
            )
        except wandb.errors.UsageError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"report_to: wandb could not start a run ({first}); WANDB_MODE=offline logs "
                "without an account"
            ) from None
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")

    @property
    def run_dir(self) -> Path:
        """W&B's folder of this run (``…/wandb/offline-run-…`` or ``…/run-…``)."""
        return Path(self._run.dir).parent

    def log(self, record: dict[str, Any], step: int) -> None:
        self._run.log({**numeric_items(record), "step": step})

    def close(self) -> None:
        self._run.finish()


class TrackioReporter:
    """A trackio run named after the run directory. trackio keeps every project in one local
    store, fixed when it is first imported: ``TRACKIO_DIR`` when the user set it, else this
    tool points it at ``run_dir/trackio/`` (so the first run of a process decides)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        if "trackio" not in sys.modules:
            os.environ.setdefault("TRACKIO_DIR", str(run_dir / "trackio"))
        trackio = _require("trackio", ReportTarget.TRACKIO)
        self.project = str(config.get("project", PROJECT))
        self.name = run_dir.name
        self._run = trackio.init(
            project=self.project,
            name=self.name,
            config=config,
            auto_log_cpu=False,
            auto_log_gpu=False,
            embed=False,
        )

    @property
    def store(self) -> Path:
        """The SQLite file trackio writes this project to."""
        from trackio import SQLiteStorage

        return SQLiteStorage.get_project_db_path(self.project)

    def log(self, record: dict[str, Any], step: int) -> None:
        self._run.log(numeric_items(record), step=step)

    def close(self) -> None:
        self._run.finish()


REPORTERS: dict[ReportTarget, Callable[[Path, dict[str, Any]], Reporter]] = {
    ReportTarget.TENSORBOARD: TensorBoardReporter,
    ReportTarget.WANDB: WandbReporter,
    ReportTarget.TRACKIO: TrackioReporter,
}


def parse_report_to(value: str | Iterable[str]) -> tuple[ReportTarget, ...]:
    """``"tensorboard,wandb"`` (or a list of names) → the targets, in order, each once;
    ``"none"`` → (). A name that is not a target, or ``none`` beside others, is refused naming
    ``report_to``."""
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names]
    if not names or any(not n for n in names):
        raise ValueError(f"report_to: {value!r} holds an empty name; e.g. 'tensorboard,wandb'")
    targets = [parse_choice(ReportTarget, n, "report_to") for n in names]
    if ReportTarget.NONE in targets:
        if len(set(targets)) > 1:
            raise ValueError(f"report_to: 'none' cannot be combined with others ({value!r})")
        return ()
    return tuple(dict.fromkeys(targets))


def trl_report_to(targets: Iterable[ReportTarget]) -> list[str]:
    """The value of ``GRPOConfig.report_to`` for these targets: transformers' integration names
    are ours (``tensorboard``, ``wandb``, ``trackio``); no target is ``["none"]``."""
    names = [ReportTarget(t).value for t in targets if ReportTarget(t) is not ReportTarget.NONE]
    return names or [ReportTarget.NONE.value]


class Reporters:
    """Several reporters as one: each step goes to all; closing closes all, even when one of
    them fails (the first failure is raised after)."""

    def __init__(self, reporters: list[Reporter]):
        self.reporters = reporters

    def log(self, record: dict[str, Any], step: int) -> None:
        check_finite_record(record)
        for reporter in self.reporters:
            reporter.log(record, step)

    def close(self) -> None:
        errors = []
        for reporter in self.reporters:
            try:
                reporter.close()
            except Exception as err:  # close the others before reporting it
                errors.append(err)
        if errors:
            raise errors[0]

    def __enter__(self) -> Reporters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_reporters(
    targets: Iterable[ReportTarget], run_dir: str | os.PathLike, config: dict[str, Any]
) -> Reporters:
    """One reporter for every target, writing under ``run_dir`` (``tensorboard/``,
    ``wandb/``, …); none is a reporter that does nothing. If one cannot start (a missing
    library: a one-line error naming ``report_to`` and the pip command), those already open
    are closed."""
    path = Path(run_dir)
    opened: list[Reporter] = []
    try:
        for target in targets:
            target = ReportTarget(target)
            if target is not ReportTarget.NONE:
                opened.append(REPORTERS[target](path, config))
    except BaseException:
        Reporters(opened).close()
        raise
    return Reporters(opened)


def check_finite_record(record: dict[str, Any]) -> None:
    """Refuse a record with a non-finite number, naming its key (the run log refuses them too,
    so a tracker never shows a value the run log lacks)."""
    for key, value in numeric_items(record).items():
        if not math.isfinite(value):
            raise ValueError(f"record: {key} is {value}; a run log holds finite numbers only")
