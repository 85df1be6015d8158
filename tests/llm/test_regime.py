"""The regime testbed's pieces: label noise in the pre-training, and compare's summary.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llm_bridge import TrainConfig
from llm_bridge.compare import FIG2_POINT, compare_runs, progress_shares
from llm_bridge.tasks import synthetic_task
from llm_bridge.testbed import TESTBED
from llm_bridge.tiny import TinyConfig, noisy_answer, noisy_running_sums
from softmax_theory.cli_options import build_config
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


def test_carried_noise_keeps_every_written_sum_the_last_one_plus_its_term():
    task = synthetic_task("running-sum", terms=13)
    gen = torch.Generator().manual_seed(0)
    off, first = [], []
    for ex in task.train[:400]:
        assert noisy_running_sums(ex.prompt, 0.0, gen) == ex.answer
        written = noisy_running_sums(ex.prompt, 0.1, gen).split(",")
        assert all(len(x) == 4 and x.isdigit() for x in written)
        terms = [int(x) for x in ex.prompt.rstrip("=").split("+")]
        before = [0] + [int(x) for x in written[:-1]]
        # each written sum differs from (the one written before it + its term) only by its own
        # digits' noise: 0.1 · 0.9 of them (a redrawn digit stays itself one time in ten)
        for b, t, w in zip(before, terms, written, strict=True):
            off += [a != c for a, c in zip(f"{(b + t) % 10_000:04d}", w, strict=True)]
        first.append(written[0] != ex.answer.split(",")[0])
    assert abs(np.mean(off) - 0.09) < 0.01
    # the first sum is corrupted with probability 1 − (1 − 0.09)⁴ ≈ 0.31
    assert abs(np.mean(first) - 0.314) < 0.07


def test_carried_noise_is_refused_where_it_does_nothing():
    TinyConfig(task="running-sum", label_noise=0.1, noise_carries=True)
    with pytest.raises(SettingError, match="noise_carries"):
        TinyConfig(noise_carries=True)  # addition has no history to carry
    with pytest.raises(SettingError, match="noise_carries"):
        TinyConfig(task="running-sum", label_noise=0.0, noise_carries=True)


def test_label_noise_domain():
    TinyConfig(label_noise=0.0)  # both bounds are allowed
    TinyConfig(label_noise=1.0)
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


# The testbed is defined once, in the package (llm_bridge.testbed.TESTBED); `--preset testbed`
# gives its settings to both commands, and a flag given beside it wins.


def test_preset_gives_its_settings_and_a_flag_beside_it_wins():
    from llm_bridge.cli import preset_settings
    from llm_bridge.tiny import TinyConfig as Tiny

    pre = Tiny(**preset_settings("testbed", "pretrain"))
    assert pre == TESTBED.pretrain and pre.label_noise == 0.3
    base = preset_settings("testbed", "train")
    cfg = build_config(TrainConfig, {"model": "m", "lr": 1e-3}, base=base)
    assert cfg.lr == 1e-3  # the flag
    assert (cfg.steps, cfg.prompts_per_step, cfg.val_every) == (300, 32, 10)  # the preset
    assert cfg.task == TESTBED.pretrain.task


def test_the_defaults_are_the_testbed():
    """What a user types first, with no flags, is the testbed: the model the mechanism shows on
    and the run that shows it."""
    assert TinyConfig() == TESTBED.pretrain
    assert TrainConfig(model="m") == TESTBED.train_config("m")


@pytest.mark.slow
def test_the_first_commands_with_no_flags_learn(cli, tmp_path):
    """``pretrain-tiny`` and ``train`` with every default (the run cut to 60 steps, the only
    flag): most groups carry signal, reward rises and entropy falls."""
    from llm_bridge.cli import main
    from softmax_theory import read_run

    assert cli(main, ["pretrain-tiny", "--out", tmp_path / "m"]).exit_code == 0
    run = ["train", "--model", tmp_path / "m", "--out", tmp_path / "r", "--steps", "60"]
    assert cli(main, run).exit_code == 0
    steps = read_run(tmp_path / "r").steps
    signal = np.mean([s["adv/nonzero_frac"] for s in steps])
    first, last = steps[:10], steps[-10:]
    reward_gain = np.mean([s["reward"] for s in last]) - np.mean([s["reward"] for s in first])
    entropy_drop = 1 - np.mean([s["entropy"] for s in last]) / np.mean(
        [s["entropy"] for s in first]
    )
    assert signal > 0.5, signal
    assert reward_gain >= 0.2, reward_gain
    assert entropy_drop >= 0.2, entropy_drop


def test_unknown_preset_is_one_line_exit_2(cli, tmp_path):
    from llm_bridge.cli import main

    commands = (
        ["pretrain-tiny", "--out", tmp_path / "m"],
        ["train", "--model", "x", "--out", tmp_path / "r"],
    )
    for cmd in commands:
        bad = cli(main, [*cmd, "--preset", "nope"])
        assert bad.exit_code == 2, bad.output
        assert "--preset" in bad.output and "testbed" in bad.output
        assert "Traceback" not in bad.output


@pytest.mark.slow
def test_the_testbed_reaches_the_regime(tmp_path):
    """Seed 0 of the testbed, pre-trained from nothing, meets every target of the regime
    (entropy drop, the early shares, saturation, the law's R² on ≥ 30 points, the time)."""
    from llm_bridge import pretrain_tiny, train_or_reuse
    from llm_bridge.compare import compare_run, run_summary
    from softmax_theory import read_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain_tiny(TESTBED.pretrain, tmp_path / "model", log=lambda _: None)
        cfg = TESTBED.train_config(
            str(tmp_path / "model"),
            seed=0,
            probe=False,
            checkpoint_every=0,
            save_final=False,
            val_prompts=256,
            val_k=8,
        )
        seconds = train_or_reuse(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    run = read_run(tmp_path / "run")
    summary = run_summary(compare_run(run, n_boot=200, rng=np.random.default_rng(0)), run)
    checks = TESTBED.targets.checks(summary, seconds)
    assert all(checks.values()), checks


def test_every_preset_builds_its_run_and_running_sum_carries_its_terms():
    """Each preset's pre-training and run are valid configs; the running-sum preset's run reads
    the terms its model was pre-trained on (its responses are 5·terms tokens with EOS)."""
    from llm_bridge.cli import preset_settings
    from llm_bridge.testbed import PRESETS, RUNNING_SUM

    for name, preset in PRESETS.items():
        cfg = build_config(TrainConfig, {"model": "m"}, base=preset_settings(name, "train"))
        assert cfg == preset.train_config("m")
        assert (cfg.task, cfg.terms) == (preset.pretrain.task, preset.pretrain.terms)
    run = RUNNING_SUM.train_config("m")
    assert run.task == "running-sum" and 5 * run.terms >= 64  # responses of ≥ 64 tokens
    # the update holds every response: the paper's ratios select several tokens and more
    tokens = run.responses_per_step * 5 * run.terms // run.mini_batches
    assert tokens > 10_000
