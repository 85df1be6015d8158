"""The importers on logs of TRL, SkyRL, OpenRLHF and W&B chart exports in the layouts those tools
write (tests/fixtures/import_logs/, sources in its SOURCES.md). Each test reads the fixture with
a parse of its own — a regular expression, ``ast.literal_eval``, the csv module — and holds the
imported run to it."""

import ast
import csv
import re
from pathlib import Path

import numpy as np
import pytest

from llm_bridge.cli import main as llm_main
from llm_bridge.integrations.importers import import_trl, import_wandb
from llm_bridge.integrations.log_formats import LogFormat, detect_format
from softmax_theory.law import PAPER_FIT_FRACTION, law_report, series_from_run
from softmax_theory.runlog import read_run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "import_logs"
TRL_LOG = FIXTURES / "trl_console_qwen2.5-vl-3b_grpo.log"
SKYRL_LOG = FIXTURES / "skyrl_console_gsm8k.log"
OPENRLHF_LOG = FIXTURES / "openrlhf_console_gsm8k.log"
WANDB_CHARTS = FIXTURES / "wandb_charts"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _raw(path: Path) -> str:
    return path.read_bytes().decode("utf-8")  # keep tqdm's \r (read_text turns it into \n)


def _series(run, key):
    return [(s["step"], s[key]) for s in run.steps if key in s]


def _trl_dicts_by_bar() -> list[tuple[int, dict]]:
    """(the training bar's last N/29790 counter before it, the dict) for every metric dict."""
    found, last = [], None
    for piece in re.split(r"[\r\n]", _raw(TRL_LOG)):
        bars = re.findall(r"\| *(\d+)/29790 \[", piece)
        last = int(bars[-1]) if bars else last
        if "{'loss'" in piece:
            found.append((last, ast.literal_eval(piece[piece.index("{") :].strip())))
    return found


def test_trl_console_output_steps_from_the_progress_bar(tmp_path, cli):
    expected = _trl_dicts_by_bar()
    assert len(expected) == 49 and expected[0][0] == 10 and expected[-1][0] == 490
    assert detect_format(TRL_LOG) == (LogFormat.TRL_CONSOLE, TRL_LOG)
    res = cli(llm_main, ["import", "trl", TRL_LOG, "--out", tmp_path / "run"])
    assert res.exit_code == 0, res.stderr
    assert "steps: from the progress bar's N/29790 counter" in res.stdout
    run = read_run(tmp_path / "run")
    # the dict after optimiser step g is GRPO step g − 1 (one update a step), as import trl
    # puts trainer_state.json's log_history
    assert _series(run, "entropy") == [(g - 1, d["entropy"]) for g, d in expected]
    assert _series(run, "reward") == [(g - 1, d["reward"]) for g, d in expected]
    assert _series(run, "lr") == [(g - 1, d["learning_rate"]) for g, d in expected]


def test_trl_console_logging_steps_overrides_the_bar(tmp_path):
    result = import_trl(TRL_LOG, tmp_path / "a", logging_steps=10)
    assert any(n.startswith("steps: from --logging-steps 10") for n in result.notes)
    by_bar = read_run(import_trl(TRL_LOG, tmp_path / "b").out).steps
    assert read_run(result.out).steps == by_bar  # the run logged every 10 steps: they agree
    five = read_run(import_trl(TRL_LOG, tmp_path / "c", logging_steps=5).out)
    assert [s for s, _ in _series(five, "entropy")][:3] == [4, 9, 14]


def test_skyrl_console_output_a_step_per_status_line(tmp_path, cli):
    statuses, rewards = [], []
    for line in _raw(SKYRL_LOG).split("\n"):
        plain = ANSI.sub("", line)
        if m := re.search(r"skyrl_train\.trainer:train:\d+ - (\{.*\})$", plain):
            statuses.append(ast.literal_eval(m.group(1)))
        if m := re.search(
            r":compute_advantages_and_returns:\d+ - avg_raw_rewards: ([-\d.e]+),", plain
        ):
            rewards.append(float(m.group(1)))
    assert len(statuses) == len(rewards) == 14
    res = cli(llm_main, ["import", "skyrl", SKYRL_LOG, "--out", tmp_path / "run"])
    assert res.exit_code == 0, res.stderr
    assert "steps: the order of the status lines" in res.stdout
    run = read_run(tmp_path / "run")
    assert _series(run, "entropy") == [(k, s["policy_entropy"]) for k, s in enumerate(statuses, 1)]
    assert _series(run, "reward") == list(enumerate(rewards, 1))
    assert detect_format(SKYRL_LOG)[0] is LogFormat.SKYRL_CONSOLE


def test_openrlhf_console_output_with_evaluations_on_their_own_steps(tmp_path, cli):
    text = _raw(OPENRLHF_LOG)
    steps = {
        int(s): ast.literal_eval(d) for s, d in re.findall(r"Global step (\d+): (\{.*\})", text)
    }
    evals = {
        int(s): ast.literal_eval(d)["eval_gsm8k_pass1"]
        for s, d in re.findall(r"global_step (\d+), eval_metrics: (\{.*\})", text)
    }
    assert len(steps) == 40 and sorted(evals) == list(range(5, 41, 5))
    res = cli(llm_main, ["import", "openrlhf", OPENRLHF_LOG, "--out", tmp_path / "run"])
    assert res.exit_code == 0, res.stderr
    run = read_run(tmp_path / "run")
    assert _series(run, "entropy") == [(s, d["entropy_loss"]) for s, d in sorted(steps.items())]
    assert _series(run, "reward") == [(s, d["reward"]) for s, d in sorted(steps.items())]
    assert _series(run, "val_reward") == sorted(evals.items())
    # the fit takes the validation reward once there are enough points (8 here)
    assert series_from_run(run).reward_key == "val_reward"


def _chart(path: Path) -> tuple[dict[int, float], list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        return {int(r[0]): float(r[1]) for r in reader if r[1] != ""}, header


def test_wandb_chart_exports_one_panel_a_file_merged_on_step(tmp_path, cli):
    entropy, h_head = _chart(WANDB_CHARTS / "wandb_export_train_entropy.csv")
    reward, r_head = _chart(WANDB_CHARTS / "wandb_export_train_reward.csv")
    assert h_head[1].endswith(" - train/entropy") and h_head[2].endswith("__MIN")
    assert not (WANDB_CHARTS / "wandb_export_train_reward.csv").read_bytes().endswith(b"\n")
    files = sorted(WANDB_CHARTS.glob("*.csv"))
    res = cli(llm_main, ["import", "wandb", *files, "--out", tmp_path / "files"])
    assert res.exit_code == 0, res.stderr
    run = read_run(tmp_path / "files")
    assert _series(run, "entropy") == sorted(entropy.items())
    assert _series(run, "reward") == sorted(reward.items())
    # the folder of them, the same run
    assert read_run(import_wandb(WANDB_CHARTS, tmp_path / "folder").out).steps == run.steps


def test_public_trl_run_fits_the_law_as_docs_law_md_says(tmp_path):
    # the row of docs/law.md's table of other trainers' public runs
    run = read_run(import_trl(TRL_LOG, tmp_path / "run").out)
    series = series_from_run(run)
    report = law_report(series, PAPER_FIT_FRACTION, 1000, np.random.default_rng(0))
    fit = report.fit
    assert (series.reward_key, fit.n) == ("reward", 49)
    assert (fit.a, fit.b, fit.ceiling) == pytest.approx((0.0251, 2.4683, 2.443), abs=5e-4)
    assert fit.r2 == pytest.approx(0.0, abs=5e-3)
    assert (report.forecast.rmse, report.forecast.n_fit) == (pytest.approx(1.054, abs=5e-4), 7)
