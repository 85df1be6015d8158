"""Reporters: what a run sends to TensorBoard, W&B and trackio comes back equal to its run log."""

import sys

import pytest

from llm_bridge.integrations.importers import import_tensorboard, import_wandb
from llm_bridge.reporters import (
    ReportTarget,
    open_reporters,
    parse_report_to,
    trl_report_to,
)
from softmax_theory.inputs import MissingExtra
from softmax_theory.runlog import RunWriter, read_run

CONFIG = {"lr": 1e-3, "policy_loss": {"loss_mode": "vanilla"}}


def _records():
    """Three steps as our trainer writes them: the probe's keys, a string, an int, validation
    on some steps only, values not exact in float32."""
    out = []
    for k in range(3):
        rec = {
            "step": k,
            "lr": 1e-6 * (k + 1),
            "algo": "grpo/vanilla",
            "entropy": 0.9 - 0.1 * k,
            "reward": 0.1 * k,
            "entropy_after": 0.89 - 0.1 * k,
            "delta_entropy": -0.01 / (k + 1),
            "pred_lemma1": -0.011 / (k + 1),
            "attr/pos_high": -0.003 * k,
            "probe/tokens": 128 + k,
        }
        if k % 2 == 0:
            rec["val_reward"] = 0.3 + 0.1 * k
        out.append(rec)
    return out


def _report(tmp_path, targets):
    """Write the records to a run directory and report them, as both engines will."""
    run_dir = tmp_path / "run"
    reporters = open_reporters(targets, run_dir, CONFIG)
    with RunWriter(run_dir, CONFIG) as writer:
        for rec in _records():
            writer.write(rec)
            reporters.log(rec, rec["step"])
    reporters.close()
    return run_dir, reporters


def _numbers_only(steps):
    return [{k: v for k, v in s.items() if not isinstance(v, str)} for s in steps]


def test_parse_report_to():
    assert parse_report_to("tensorboard,wandb") == (ReportTarget.TENSORBOARD, ReportTarget.WANDB)
    assert parse_report_to(" trackio , trackio ") == (ReportTarget.TRACKIO,)
    assert parse_report_to("none") == ()
    assert parse_report_to(["wandb"]) == (ReportTarget.WANDB,)
    with pytest.raises(ValueError, match="report_to: 'mlflow' is not one of none, tensorboard"):
        parse_report_to("tensorboard,mlflow")
    with pytest.raises(ValueError, match="report_to: 'none' cannot be combined"):
        parse_report_to("none,wandb")
    with pytest.raises(ValueError, match="report_to: .* empty name"):
        parse_report_to("tensorboard,")
    assert trl_report_to(parse_report_to("wandb,tensorboard")) == ["wandb", "tensorboard"]
    assert trl_report_to(()) == ["none"]


def test_no_target_reports_nothing(tmp_path):
    run_dir, reporters = _report(tmp_path, parse_report_to("none"))
    assert reporters.reporters == []
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "steps.jsonl"]


def test_tensorboard_round_trip_gives_the_run_log(tmp_path):
    pytest.importorskip("tensorboard")
    run_dir, _ = _report(tmp_path, (ReportTarget.TENSORBOARD,))
    result = import_tensorboard(run_dir / "tensorboard", tmp_path / "back")
    assert result.profile == "run log"
    # every numeric key under its own name, to the last bit; algo (a string) is not reported
    assert _numbers_only(read_run(result.out).steps) == _numbers_only(read_run(run_dir).steps)


def test_wandb_offline_round_trip_gives_the_run_log(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir, reporters = _report(tmp_path, (ReportTarget.WANDB,))
    wandb_run = reporters.reporters[0].run_dir
    assert wandb_run.parent == run_dir / "wandb" and wandb_run.name.startswith("offline-run-")
    result = import_wandb(wandb_run, tmp_path / "back")
    assert result.format.value == "wandb-run"
    assert _numbers_only(read_run(result.out).steps) == _numbers_only(read_run(run_dir).steps)


def test_trackio_round_trip_gives_the_run_log(tmp_path, monkeypatch):
    if "trackio" not in sys.modules:  # trackio fixes its store at import: keep it in tmp_path
        monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio-store"))
    trackio = pytest.importorskip("trackio")
    run_dir, reporters = _report(tmp_path, (ReportTarget.TRACKIO,))
    tk = reporters.reporters[0]
    logs = trackio.SQLiteStorage.get_logs(tk.project, tk.name)
    back = [{k: v for k, v in row.items() if k != "timestamp"} for row in logs]
    expected = _numbers_only(read_run(run_dir).steps)
    assert back == [{k: float(v) if k != "step" else v for k, v in s.items()} for s in expected]


def test_a_missing_library_is_one_line_naming_report_to_and_pip(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(MissingExtra, match="report_to: wandb needs .* pip install wandb"):
        open_reporters((ReportTarget.WANDB,), tmp_path / "run", CONFIG)


def test_a_non_finite_value_is_refused_by_name(tmp_path):
    reporters = open_reporters((), tmp_path, CONFIG)
    with pytest.raises(ValueError, match="record: entropy is nan"):
        reporters.log({"step": 0, "entropy": float("nan")}, 0)
