"""The regime testbed's pieces: label noise in the pre-training, and compare's summary.json."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_bridge import TrainConfig
from llm_bridge.compare import FIG2_POINT, compare_runs, progress_shares
from llm_bridge.tiny import TinyConfig, noisy_answer
from softmax_theory.inputs import SettingError
from softmax_theory.law import fit_entropy_law, forecast_entropy_law
from softmax_theory.runlog import RunWriter


def test_noisy_answer_keeps_format_and_flips_the_asked_share():
    gen = torch.Generator().manual_seed(0)
    assert noisy_answer("0123,4567", 0.0, gen) == "0123,4567"
    answers = [noisy_answer("0123,4567", 0.5, gen) for _ in range(2000)]
    assert all(len(a) == 9 and a[4] == "," and a.replace(",", "").isdigit() for a in answers)
    changed = np.mean([a != "0123,4567"[i] for s in answers for i, a in enumerate(s) if i != 4])
    # a flipped digit is redrawn uniformly, so it stays itself one time in ten: 0.5 · 0.9
    assert abs(changed - 0.45) < 0.02
    assert all(noisy_answer("9", 1.0, gen) in "0123456789" for _ in range(10))


def test_label_noise_domain():
    assert TinyConfig().label_noise == 0.0
    with pytest.raises(SettingError, match="label_noise"):
        TinyConfig(label_noise=1.5)


def _write_run(path, entropy, reward, val_every=3):
    with RunWriter(path, {"trainer": "test"}) as w:
        for k, (h, r) in enumerate(zip(entropy, reward, strict=True)):
            rec = {"step": k, "entropy": h, "reward": r}
            if k % val_every == 0:
                rec["val_reward"] = r + 0.01 * np.sin(k)
            w.write(rec)


def test_summary_json_has_one_entry_per_run_with_the_reports_numbers(tmp_path):
    steps = np.arange(90)
    entropy = 0.05 + 0.9 * np.exp(-steps / 8)  # falls fast, then flat
    reward = 0.95 - 0.5 * np.exp(-steps / 8)
    _write_run(tmp_path / "fast", entropy, reward)
    _write_run(tmp_path / "slow", 1 - steps / 200, steps / 200)
    reports = compare_runs([tmp_path / "fast", tmp_path / "slow"], tmp_path / "cmp", n_boot=20)
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert [e["name"] for e in summary["runs"]] == [r.name for r in reports]
    fast, slow = summary["runs"]
    assert fast["steps"] == 90
    assert fast["entropy_start"] == pytest.approx(entropy[0])
    assert fast["entropy_end"] == pytest.approx(entropy[-1])
    assert fast["entropy_drop"] > 0.75 and slow["entropy_drop"] < 0.5
    # the law on the validation points, and its 15% forecast, as the law module computes them
    val_h, val_r = entropy[::3], reward[::3] + 0.01 * np.sin(steps[::3])
    fit, fc = fit_entropy_law(val_h, val_r), forecast_entropy_law(val_h, val_r)
    law = fast["law"]
    assert fast["reward_key"] == "val_reward" and law["n"] == 30
    assert law["a"] == pytest.approx(fit.a) and law["r2"] == pytest.approx(fit.r2)
    assert law["forecast_rmse"] == pytest.approx(fc.rmse)
    assert law["final_error"] == pytest.approx(fc.final_error)
    assert fast["reward_start"] == pytest.approx(val_r[0])
    assert fast["reward_end"] == pytest.approx(val_r[-1])
    # the Fig. 2 shares at a third of the steps: progress_shares' definition
    assert fast["fig2"]["at"] == pytest.approx(1 / 3) == FIG2_POINT
    assert fast["fig2"]["entropy"] == pytest.approx(progress_shares(entropy)[FIG2_POINT])
    assert fast["fig2"]["reward"] == pytest.approx(progress_shares(reward)[FIG2_POINT])
    assert fast["fig2"]["reward"] > 0.7 > slow["fig2"]["reward"]
    assert fast["reward_last_third"] < 0.1 < slow["reward_last_third"]


def test_summary_json_says_why_there_is_no_law(tmp_path):
    _write_run(tmp_path / "flat", [0.5] * 6, [0.1 * k for k in range(6)])
    compare_runs([tmp_path / "flat"], tmp_path / "cmp", n_boot=20)
    (entry,) = json.loads((tmp_path / "cmp" / "summary.json").read_text())["runs"]
    assert "constant" in entry["law"]["error"] and "a" not in entry["law"]
    assert entry["entropy_drop"] == pytest.approx(0.0)


def test_cli_label_noise_out_of_range_is_one_line_exit_2(cli, tmp_path):
    from llm_bridge.cli import main

    bad = cli(main, ["pretrain-tiny", "--out", tmp_path / "m", "--label-noise", "1.5"])
    assert bad.exit_code == 2 and "label" in bad.output and "Traceback" not in bad.output


# The testbed is defined once, in scripts/regime_findings.py (its WINNER); the demo's Makefile
# flags must train the same run (the demo only validates on fewer samples, to fit its budget).
ROOT = Path(__file__).resolve().parents[2]
TRAINING_FLAGS = ("temperature", "prompts_per_step", "lr", "warmup_steps", "steps", "val_every")


def _regime_script():
    spec = importlib.util.spec_from_file_location(
        "regime_findings", ROOT / "scripts" / "regime_findings.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)  # sets one thread, for its own runs
    finally:
        torch.set_num_threads(threads)
    return module


def _make_variable(name: str) -> dict[str, str]:
    """A Makefile variable's ``--flag value`` pairs, continuation lines joined."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"{name} :=")]
    words = shlex.split(line.split(":=", 1)[1])
    return {
        w[2:].replace("-", "_"): nxt
        for w, nxt in zip(words, words[1:] + [""], strict=True)
        if w.startswith("--") and not nxt.startswith("--")
    }


def test_the_demo_trains_the_testbed_of_the_script():
    rf = _regime_script()
    cand = rf.candidate(rf.WINNER)
    model = rf.MODELS[cand.model]
    pretrain = _make_variable("TESTBED_PRETRAIN")
    assert {k: float(v) for k, v in pretrain.items()} == {
        k: float(getattr(model, k)) for k in pretrain
    }
    assert set(pretrain) >= {"steps", "lr", "warmup", "label_noise"}
    demo = _make_variable("DEMO_TRAIN")
    want = {**rf.SEARCH_BASE, **cand.settings}
    defaults = {f: getattr(TrainConfig(model="m"), f) for f in TRAINING_FLAGS}
    for flag in TRAINING_FLAGS:
        assert float(demo[flag]) == float(want.get(flag, defaults[flag])), flag


@pytest.mark.slow
def test_the_testbed_reaches_the_regime(tmp_path):
    """Seed 0 of the testbed, pre-trained from nothing, meets every target of the regime
    (entropy drop, the early shares, saturation, the law's R² on ≥ 30 points, the time)."""
    rf = _regime_script()
    cand = rf.candidate(rf.WINNER)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = rf.run_config(cand, tmp_path, seed=0, **rf.SEED_EXTRA)
        seconds = rf.train_once(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    checks = rf.regime_checks(rf.summarize(tmp_path / "run"), seconds)
    assert all(checks.values()), checks
