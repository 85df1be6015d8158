"""`llm-bridge`: pre-train the tiny model, train with GRPO and probes, compare runs."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from llm_bridge.config import Engine, TrainConfig
from llm_bridge.tiny import TinyConfig
from softmax_theory.cli_options import (
    INTERRUPT_EXIT,
    build_config,
    check_out_dir,
    config_options,
    run_cli,
)
from softmax_theory.control import ControlConfig
from softmax_theory.inputs import SettingError
from softmax_theory.law import LawConfig
from softmax_theory.policy import PolicyLossConfig
from softmax_theory.runlog import read_json

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, rich_markup_mode=None)
console = Console()  # the terminal's own width (rich detects it)

TRAIN_RENAME = {"PolicyLossConfig.loss_mode": "loss"}


@app.callback()
def main_callback() -> None:
    """The entropy mechanism on language-model tokens (Cui et al. 2025)."""


PresetOption = Annotated[
    str | None,
    typer.Option(
        help="start from a named preset's settings (testbed: docs/regime.md); "
        "a flag given beside it wins"
    ),
]


def preset_settings(name: str | None, part: str) -> dict[str, Any] | None:
    """The settings preset ``name`` gives the command's config (``part``: pretrain or train);
    an unknown name is refused naming ``--preset``."""
    if name is None:
        return None
    from llm_bridge.testbed import get_preset

    try:
        preset = get_preset(name)
    except SettingError as err:
        raise SettingError("--preset", err.problem) from None
    if part == "pretrain":
        return {f.name: getattr(preset.pretrain, f.name) for f in fields(preset.pretrain)}
    return preset.train_settings()


def _holds_pretrained(out: Path, config: dict[str, Any]) -> bool:
    """Whether ``out`` holds a whole pre-trained model of ``config``: its ``pretrain.json``
    records that config, and its weights and tokenizer files are whole (``file_checks``). A
    summary or file that does not read is said: the model is then trained again."""
    from llm_bridge.file_checks import folder_fault
    from llm_bridge.models import TOKENIZER_JSON, WEIGHT_FILES

    try:
        summary = read_json(out / "pretrain.json")
        if not isinstance(summary, dict):
            raise ValueError(f"{out / 'pretrain.json'}: expected a JSON object")
    except ValueError as err:
        console.print(f"pretrain-tiny: {err}; training the model again")
        return False
    if summary.get("config") != config:
        return False
    fault = folder_fault(out, WEIGHT_FILES + TOKENIZER_JSON)
    if fault is not None:
        console.print(f"pretrain-tiny: {fault}; training the model again")
    return fault is None


@app.command("pretrain-tiny")
@config_options(TinyConfig)
def pretrain_tiny(
    out: Annotated[Path, typer.Option(help="folder for the model (save_pretrained)")],
    force: Annotated[bool, typer.Option(help="retrain even if OUT holds this config")] = False,
    preset: PresetOption = None,
    **options: Any,
) -> None:
    """Build a tiny Llama model and pre-train it on a synthetic task; cached by config."""
    from llm_bridge.tiny import pretrain_tiny as run_pretrain

    cfg = build_config(TinyConfig, options, base=preset_settings(preset, "pretrain"))
    check_out_dir(out, "--out")  # before minutes of training, not after
    if not force and (out / "pretrain.json").exists() and _holds_pretrained(out, asdict(cfg)):
        console.print(f"{out} already holds this pre-trained model (use --force to redo)")
        return
    summary = run_pretrain(cfg, out, log=console.print)
    console.print(f"{summary['parameters']:,} parameters, {summary['seconds']:.1f} s; wrote {out}")


@app.command()
@config_options(TrainConfig, PolicyLossConfig, ControlConfig, rename=TRAIN_RENAME)
def train(
    out: Annotated[Path, typer.Option(help="run directory")],
    resume: Annotated[bool, typer.Option(help="continue a killed run from its checkpoint")] = False,
    preset: PresetOption = None,
    **options: Any,
) -> None:
    """GRPO with per-step entropy probes; writes config.json and steps.jsonl to OUT."""
    from llm_bridge.engines import train as run_train

    loss_cfg = build_config(PolicyLossConfig, options, TRAIN_RENAME)
    control_cfg = build_config(ControlConfig, options, TRAIN_RENAME)
    base = preset_settings(preset, "train")
    cfg = build_config(
        TrainConfig, options, TRAIN_RENAME, base=base, policy_loss=loss_cfg, control=control_cfg
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(
            f"{cfg.engine.value}/{cfg.policy_loss.loss_mode.value}", total=cfg.steps, stats=""
        )

        def on_step(rec: dict[str, Any]) -> None:
            progress.update(task, completed=rec["step"] + 1, stats=progress_line(rec))

        try:
            run_train(cfg, out, resume=resume, progress=on_step, log=console.print)
        except KeyboardInterrupt as err:
            # typer turns an interrupt into a bare exit 130: say first what was written
            progress.stop()
            print(str(err) or "interrupted", file=sys.stderr)
            raise typer.Exit(INTERRUPT_EXIT) from None
    console.print(f"wrote {out}")
    if cfg.engine is Engine.TRL:
        # Everything is written and TRL's trainer has ended its trackers and process group. At
        # interpreter teardown a native thread left by the TRL stack sometimes aborts the process
        # ("terminate called without an active exception"), which a launcher reports as a failed
        # rank; leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def progress_line(rec: dict[str, Any]) -> str:
    """A step's record in a few words; a key the step did not measure is left out."""
    parts = [
        f"{label} {rec[key]:{fmt}}"
        for key, label, fmt in (
            ("reward", "reward", ".3f"),
            ("entropy", "H", ".4f"),
            ("val_reward", "val", ".3f"),
            ("delta_entropy", "ΔH", "+.2e"),
        )
        if isinstance(rec.get(key), int | float)
    ]
    if rec.get("adv/nonzero_frac") == 0:  # every advantage 0: this step learnt nothing
        parts.append("no signal")
    return "  ".join(parts)


@app.command()
@config_options(LawConfig)
def compare(
    runs: Annotated[list[Path], typer.Argument(help="run directories")],
    out: Annotated[Path | None, typer.Option(help="directory for report.md and figures")] = None,
    reward_key: Annotated[
        str | None,
        typer.Option(
            help="the reward the law fits, e.g. val_pass@8 "
            "(default: val_reward where there are enough points, else reward)"
        ),
    ] = None,
    **options: Any,
) -> None:
    """Hold each run's measured entropy change against the predictions; fit the law; split
    the predicted ΔH by token class."""
    from llm_bridge.compare import compare_runs, render_report

    law = build_config(LawConfig, options)
    if out is not None:
        check_out_dir(out, "--out")
    reports = compare_runs(
        runs,
        out,
        fit_fraction=law.fit_fraction,
        n_boot=law.n_boot,
        seed=law.seed,
        reward_key=reward_key,
    )
    console.print(render_report(reports))
    if out is not None:
        console.print(f"wrote {out}/report.md and figures")


import_app = typer.Typer(
    no_args_is_help=True, help="Import another trainer's logs as a run.", rich_markup_mode=None
)
app.add_typer(import_app, name="import")


# Options every log importer shares: the source key of each run-log key.
StepKey = Annotated[str | None, typer.Option(help="step key (default: the trainer's own)")]
EntropyKey = Annotated[
    str | None, typer.Option(help="entropy key or tag (default: actor/entropy, entropy, …)")
]
RewardKey = Annotated[
    str | None, typer.Option(help="training reward key or tag (default: critic/score/mean, …)")
]
ValKey = Annotated[
    str | None,
    typer.Option(
        help="validation key or tag, or a glob such as 'val-core/*/reward/mean@1' "
        "(default: the first data source, said in the output)"
    ),
]
LrKey = Annotated[str | None, typer.Option(help="learning-rate key or tag")]
Out = Annotated[Path, typer.Option(help="run directory to write")]


def _say(text: str) -> None:
    """Print as is: paths and keys hold brackets that rich would read as markup."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _keys(
    step: str | None, entropy: str | None, reward: str | None, val: str | None, lr: str | None
):
    from llm_bridge.integrations.importers import KeyMap

    return KeyMap(step=step, entropy=entropy, reward=reward, val=val, lr=lr)


@import_app.command("trl")
def import_trl_cmd(
    path: Annotated[
        Path,
        typer.Argument(
            help="trainer_state.json (any name; or its folder), or TRL's console output"
        ),
    ],
    out: Out,
    updates_per_step: Annotated[
        int | None,
        typer.Option(
            help="optimiser updates per GRPO step (default: from <run>/config.json when the "
            "log sits in <run>/trl/, else 1)"
        ),
    ] = None,
    logging_steps: Annotated[
        int | None,
        typer.Option(
            help="the run's logging_steps, for console output (default: the progress bar's "
            "counter beside each dict, else their order)"
        ),
    ] = None,
) -> None:
    """TRL's log_history or console output (entropy, reward, eval_reward, learning_rate) → a
    run directory, with TRL's optimiser steps put on the GRPO-step axis."""
    from llm_bridge.integrations.importers import import_trl

    _say(import_trl(path, out, updates_per_step, logging_steps).describe())


@import_app.command("verl")
def import_verl_cmd(
    path: Annotated[
        Path, typer.Argument(help="verl console log, TensorBoard event file or folder, JSONL, CSV")
    ],
    out: Out,
    step_key: StepKey = None,
    entropy_key: EntropyKey = None,
    reward_key: RewardKey = None,
    val_key: ValKey = None,
    lr_key: LrKey = None,
) -> None:
    """A verl log (format told from its content) → a run directory."""
    from llm_bridge.integrations.importers import import_verl

    keys = _keys(step_key, entropy_key, reward_key, val_key, lr_key)
    _say(import_verl(path, out, keys).describe())


@import_app.command("tensorboard")
def import_tensorboard_cmd(
    path: Annotated[Path, typer.Argument(help="an event file, or a folder of them")],
    out: Out,
    step_key: StepKey = None,
    entropy_key: EntropyKey = None,
    reward_key: RewardKey = None,
    val_key: ValKey = None,
    lr_key: LrKey = None,
) -> None:
    """Any trainer's TensorBoard scalars (this tool's, verl's, TRL's report_to) → a run."""
    from llm_bridge.integrations.importers import import_tensorboard

    keys = _keys(step_key, entropy_key, reward_key, val_key, lr_key)
    _say(import_tensorboard(path, out, keys).describe())


@import_app.command("wandb")
def import_wandb_cmd(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="W&B history: the UI's CSV exports (one chart per file, or a folder of "
            "them, merged on Step), wandb-history.jsonl, or an offline run (its folder or "
            "run-<id>.wandb)"
        ),
    ],
    out: Out,
    run: Annotated[str | None, typer.Option(help="the run of a CSV export of several")] = None,
    step_key: StepKey = None,
    entropy_key: EntropyKey = None,
    reward_key: RewardKey = None,
    val_key: ValKey = None,
    lr_key: LrKey = None,
) -> None:
    """A W&B history (this tool's, verl's, TRL's report_to) → a run directory."""
    from llm_bridge.integrations.importers import import_wandb

    keys = _keys(step_key, entropy_key, reward_key, val_key, lr_key)
    _say(import_wandb(paths, out, keys, run).describe())


@import_app.command("skyrl")
def import_skyrl_cmd(
    path: Annotated[Path, typer.Argument(help="SkyRL's console output (loguru lines)")],
    out: Out,
    step_key: StepKey = None,
    entropy_key: EntropyKey = None,
    reward_key: RewardKey = None,
    val_key: ValKey = None,
    lr_key: LrKey = None,
) -> None:
    """SkyRL's console output (policy_entropy, avg_raw_rewards; a step per status line) → a
    run directory."""
    from llm_bridge.integrations.importers import import_skyrl

    keys = _keys(step_key, entropy_key, reward_key, val_key, lr_key)
    _say(import_skyrl(path, out, keys).describe())


@import_app.command("openrlhf")
def import_openrlhf_cmd(
    path: Annotated[Path, typer.Argument(help="OpenRLHF's console output")],
    out: Out,
    step_key: StepKey = None,
    entropy_key: EntropyKey = None,
    reward_key: RewardKey = None,
    val_key: ValKey = None,
    lr_key: LrKey = None,
) -> None:
    """OpenRLHF's console output ('Global step N: {…}' and evaluation lines; entropy_loss,
    reward, eval_<source>_pass1) → a run directory."""
    from llm_bridge.integrations.importers import import_openrlhf

    keys = _keys(step_key, entropy_key, reward_key, val_key, lr_key)
    _say(import_openrlhf(path, out, keys).describe())


def main(argv: list[str] | None = None) -> None:
    """The ``llm-bridge`` entry point."""
    run_cli(app, argv)


if __name__ == "__main__":
    main()
