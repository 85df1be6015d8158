"""The log importers on synthetic logs of every format they read, and their refusals."""

import json

import numpy as np
import pytest

from llm_bridge.cli import main as llm_main
from llm_bridge.integrations.importers import (
    KeyMap,
    import_skyrl,
    import_tensorboard,
    import_trl,
    import_verl,
    import_wandb,
)
from llm_bridge.integrations.log_formats import LogFormat, detect_format
from softmax_theory.law import series_from_run
from softmax_theory.runlog import read_run

ESC = "\x1b"
RAY = f"{ESC}[2m{ESC}[36m(main_task pid=926049){ESC}[0m "


def _verl_line(step: int, entropy: float, score: float, **extra: str) -> str:
    parts = [
        f"step:{step}",
        "timing/gen:20.251",
        "critic/lr(1e-4):0.100",
        f"actor/entropy_loss:{entropy:.3f}",
        "actor/pg_loss:-0.003",
        "actor/lr(1e-4):0.010",
        f"critic/score/mean:{score:.3f}",
    ] + [f"{k}:{v}" for k, v in extra.items()]
    return " - ".join(parts)


def test_console_log_of_an_old_verl_with_ansi_codes_ray_prefix_and_dumps(tmp_path):
    lines = [
        "commit:",
        "50ac7252f97cf39997344237bca74162b2dc6d79",
        "bash run.sh \"trainer.logger=['console'] data.train_batch_size=256\"",
        f"{RAY}{{'actor_rollout_ref': {{'actor': {{'clip_ratio': 0.2,",
        f"{RAY}" + _verl_line(0, 0.450, 0.004),
        f"{RAY}[prompt] Natalia sold clips to 48 of her friends in April: step:3 of her plan",
        f"{RAY}[response] 48 + 24 = 72 #### 72",
        f"{RAY}[score] 1.0",
        f"{RAY}" + _verl_line(1, 0.452, 0.010),
        f"{RAY}" + _verl_line(2, 0.427, 0.020, **{"val/test_score/openai/gsm8k": "0.125"}),
        f"{RAY}\"Final validation metrics: {{'test_score/openai/gsm8k': 0.5}}\"",
    ]
    path = tmp_path / "train.txt"  # the name says nothing; the content does
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(path) == (LogFormat.CONSOLE, path)
    result = import_verl(path, tmp_path / "run")
    assert result.keys["entropy"] == "actor/entropy_loss"  # older verl's name for the entropy
    assert result.keys["val_reward"] == "val/test_score/openai/gsm8k"
    run = read_run(result.out)
    assert run.steps == (
        # actor/lr(1e-4):0.010 is the learning rate in units of 1e-4: 1e-6
        {"step": 0, "entropy": 0.45, "reward": 0.004, "lr": 1e-6},
        {"step": 1, "entropy": 0.452, "reward": 0.01, "lr": 1e-6},
        {"step": 2, "entropy": 0.427, "reward": 0.02, "lr": 1e-6, "val_reward": 0.125},
    )


def test_console_log_of_a_newer_verl_with_two_data_sources_and_a_validation_only_end(tmp_path):
    def line(step: int, h: str, r: float) -> str:
        return (
            f"step:{step} - actor/entropy:np.float64({h}) - critic/score/mean:{r} - "
            f"val-core/openai/gsm8k/reward/mean@1:{r / 2} - val-core/math/reward/mean@1:{r / 4}"
        )

    text = "```\npython3 -m verl.trainer.main_ppo data.train_batch_size=1024\n```\n"
    text += "\n".join(line(s, f"0.{9 - s}", 0.1 * s) for s in range(1, 4))
    text += "\nstep:4 - val-core/openai/gsm8k/reward/mean@1:0.7 - val-core/math/reward/mean@1:0.3\n"
    path = tmp_path / "log"
    path.write_text(text)
    result = import_verl(path, tmp_path / "a")
    # the first data source in name order, and the output says so
    assert result.keys["val_reward"] == "val-core/math/reward/mean@1"
    assert any("--val-key chooses" in n and "val-core/openai" in n for n in result.notes)
    run = read_run(result.out)
    assert [s["step"] for s in run.steps] == [1, 2, 3, 4]
    assert run.steps[0]["entropy"] == 0.8  # np.float64(0.8) unwrapped
    assert run.steps[-1] == {"step": 4, "val_reward": 0.3}  # validation-only line kept
    chosen = import_verl(path, tmp_path / "b", KeyMap(val="val-core/openai/gsm8k/*"))
    assert read_run(chosen.out).steps[-1] == {"step": 4, "val_reward": 0.7}


def _write_events(log_dir, tags_by_step, stepless=None):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))
    for tag, value in (stepless or {}).items():
        writer.add_scalar(tag, value)  # no global_step: the event has no step field
    for step, tags in tags_by_step.items():
        for tag, value in tags.items():
            writer.add_scalar(tag, value, global_step=step)
    writer.close()


def test_tensorboard_event_file_and_folder_with_a_stepless_validation(tmp_path):
    val = "val-core/openai/gsm8k/reward/mean@1"
    steps = {
        s: {"actor/entropy": 0.5 - 0.125 * s, "critic/score/mean": 0.25 * s, "timing_s/gen": 3.0}
        for s in (1, 2, 3)
    }
    steps[2][val] = 0.5
    _write_events(tmp_path / "tb", steps, stepless={val: 0.25})
    (file,) = list((tmp_path / "tb").iterdir())
    renamed = tmp_path / "metrics.bin"  # content, not name
    file.rename(renamed)
    result = import_verl(renamed, tmp_path / "run")
    assert result.format is LogFormat.TENSORBOARD
    run = read_run(result.out)
    assert run.steps == (
        {"step": 0, "val_reward": 0.25},
        {"step": 1, "entropy": 0.375, "reward": 0.25},
        {"step": 2, "entropy": 0.25, "reward": 0.5, "val_reward": 0.5},
        {"step": 3, "entropy": 0.125, "reward": 0.75},
    )
    # a folder of event files (a resumed run writes a second file)
    folder = tmp_path / "logs"
    folder.mkdir()
    renamed.rename(folder / file.name)
    _write_events(folder / "resumed", {4: {"actor/entropy": 0.0625, "critic/score/mean": 1.0}})
    steps_read = read_run(import_tensorboard(folder, tmp_path / "run2").out).steps
    assert [s["step"] for s in steps_read] == [0, 1, 2, 3, 4]
    assert steps_read[-1] == {"step": 4, "entropy": 0.0625, "reward": 1.0}


def test_trl_report_to_tensorboard_stream(tmp_path):
    # transformers' TensorBoardCallback writes TRL's log with train/ and eval/ prefixes (values
    # exact in the float32 that SummaryWriter stores)
    steps = {
        1: {"train/entropy": 0.75, "train/reward": 0.25, "train/learning_rate": 2**-20},
        2: {"train/entropy": 0.5, "train/reward": 0.5, "eval/reward": 0.375},
    }
    _write_events(tmp_path / "runs", steps)
    result = import_tensorboard(tmp_path / "runs", tmp_path / "run")
    assert result.profile == "trl"
    assert read_run(result.out).steps == (
        {"step": 1, "entropy": 0.75, "reward": 0.25, "lr": 2**-20},
        {"step": 2, "entropy": 0.5, "reward": 0.5, "val_reward": 0.375},
    )
    named = import_tensorboard(
        tmp_path / "runs", tmp_path / "b", KeyMap(reward="train/learning_rate")
    )
    assert read_run(named.out).steps[0]["reward"] == 2**-20


def test_wandb_ui_csv_export_and_history_jsonl(tmp_path):
    export = tmp_path / "export.csv"
    export.write_text(
        "Step,grpo-1 - actor/entropy,grpo-1 - actor/entropy__MIN,grpo-1 - actor/entropy__MAX,"
        "grpo-1 - critic/score/mean\n"
        "1,0.5,0.4,0.6,0.25\n"
        "2,0.25,0.2,0.3,0.5\n"
    )
    run = read_run(import_wandb(export, tmp_path / "a").out)
    assert run.steps == (
        {"step": 1, "entropy": 0.5, "reward": 0.25},
        {"step": 2, "entropy": 0.25, "reward": 0.5},
    )
    two = tmp_path / "two.csv"
    two.write_text(
        "Step,a - actor/entropy,a - critic/score/mean,b - actor/entropy\n1,0.5,0.2,0.4\n"
    )
    with pytest.raises(ValueError, match="--run: .* 2 runs \\(a, b\\)"):
        import_wandb(two, tmp_path / "b")
    assert read_run(import_wandb(two, tmp_path / "c", run="a").out).steps[0]["entropy"] == 0.5
    # an offline run folder's files/wandb-history.jsonl, W&B's _step as the axis
    history = tmp_path / "offline-run-1" / "files" / "wandb-history.jsonl"
    history.parent.mkdir(parents=True)
    history.write_text(
        "\n".join(
            json.dumps({"_step": s, "_runtime": 1.5 * s, "entropy": 1 - s / 4, "reward": s / 4})
            for s in range(3)
        )
    )
    steps = read_run(import_wandb(history.parent.parent, tmp_path / "d").out).steps
    assert steps[2] == {"step": 2, "entropy": 0.5, "reward": 0.5}  # no _runtime carried


def _trl_state(folder, log_history):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": log_history}))


def test_import_trl_puts_optimiser_steps_on_the_grpo_step_axis(tmp_path, cli):
    # 4 updates per GRPO step: steps_per_generation 4 // accumulation 2 × 2 iterations
    trl = {"steps_per_generation": 4, "gradient_accumulation_steps": 2, "num_iterations": 2}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"engine": "trl", "trl": trl}))
    history = [{"step": 0, "eval_reward": 0.125}]  # the evaluation on start
    for g in range(1, 9):
        history.append({"step": g, "entropy": 1 - g / 16, "reward": g / 16})
        if g % 4 == 0:
            history.append({"step": g, "eval_reward": g / 32})
    _trl_state(tmp_path / "run" / "trl", history)
    result = import_trl(tmp_path / "run" / "trl", tmp_path / "imported")
    assert any("4 optimiser updates per GRPO step" in n for n in result.notes)
    steps = read_run(result.out).steps
    # updates 1–4 are GRPO step 0, measured first at update 1; the eval after update 4
    # measured the policy step 1 samples from
    assert steps == (
        {"step": 0, "entropy": 1 - 1 / 16, "reward": 1 / 16, "val_reward": 0.125},
        {"step": 1, "entropy": 1 - 5 / 16, "reward": 5 / 16, "val_reward": 0.125},
        {"step": 2, "val_reward": 0.25},
    )
    # without a run directory: --updates-per-step, default 1, said in the output
    _trl_state(tmp_path / "bare", history)
    res = cli(llm_main, ["import", "trl", tmp_path / "bare", "--out", tmp_path / "b"])
    assert res.exit_code == 0 and "assumed; --updates-per-step sets it" in res.stdout
    assert [s["step"] for s in read_run(tmp_path / "b").steps] == list(range(9))
    res = cli(
        llm_main,
        ["import", "trl", tmp_path / "bare", "--out", tmp_path / "c", "--updates-per-step", "4"],
    )
    assert res.exit_code == 0, res.stderr
    assert [s["step"] for s in read_run(tmp_path / "c").steps] == [0, 1, 2]
    res = cli(
        llm_main,
        ["import", "trl", tmp_path / "run" / "trl", "--out", tmp_path / "d"]
        + ["--updates-per-step", "2"],
    )
    assert res.exit_code == 2 and "--updates-per-step" in res.stderr and "says 4" in res.stderr


def test_cli_says_the_format_and_keys_taken(tmp_path, cli):
    path = tmp_path / "log"
    path.write_text(_verl_line(1, 0.5, 0.25) + "\n" + _verl_line(2, 0.4, 0.5) + "\n")
    res = cli(llm_main, ["import", "verl", path, "--out", tmp_path / "run"])
    assert res.exit_code == 0, res.stderr
    assert "console log (verl keys)" in res.stdout
    assert (
        "entropy ← actor/entropy_loss" in res.stdout and "reward ← critic/score/mean" in res.stdout
    )
    assert "no validation key" in res.stdout


def _one_line(res, *names):
    assert res.exit_code == 2, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
        (b"\xfe\xff\x01\x02 not utf-8", "neither UTF-8"),
        (b"INFO starting\nloaded 3 shards\nstep:3 of the plan\n", "no step lines"),
    ],
)
def test_bad_input_gets_one_line_naming_the_file(tmp_path, cli, content, why):
    path = tmp_path / "bad.log"
    path.write_bytes(content)
    for command in ("verl", "tensorboard", "wandb"):
        res = cli(llm_main, ["import", command, path, "--out", tmp_path / command])
        _one_line(res, "bad.log")
    _one_line(cli(llm_main, ["import", "verl", path, "--out", tmp_path / "v"]), why)


def test_absent_keys_and_tags_list_what_was_found(tmp_path, cli):
    path = tmp_path / "log"
    path.write_text("step:1 - actor/entropy:0.5 - critic/rewards/mean:0.2\n")
    _one_line(
        cli(llm_main, ["import", "verl", path, "--out", tmp_path / "a"]),
        "--reward-key",
        "critic/score/mean",
        "keys found: actor/entropy, critic/rewards/mean, step",
    )
    _one_line(
        cli(
            llm_main,
            ["import", "verl", path, "--out", tmp_path / "b", "--val-key", "val/x"]
            + ["--reward-key", "critic/rewards/mean"],
        ),
        "--val-key",
        "'val/x'",
        "keys found",
    )
    _write_events(tmp_path / "tb", {1: {"loss": 0.5}})
    _one_line(
        cli(llm_main, ["import", "tensorboard", tmp_path / "tb", "--out", tmp_path / "c"]),
        "--entropy-key",
        "keys found: loss, step",
    )
    # a console log handed to the TensorBoard importer
    _one_line(
        cli(llm_main, ["import", "tensorboard", path, "--out", tmp_path / "d"]),
        "is a console log",
        "reads tensorboard",
    )


# --- Console output of TRL, SkyRL and OpenRLHF; W&B charts exported one per file ----------


def _trl_dict(loss: float, reward: float, entropy: float, epoch: float) -> str:
    return (
        f"{{'loss': {loss}, 'grad_norm': 0.5, 'learning_rate': 1e-06, 'reward': {reward}, "
        f"'reward_std': 0.25, 'entropy': {entropy}, 'epoch': {epoch}}}"
    )


def _bar(n: int, total: int = 6) -> str:
    return f"\r {100 * n // total:3d}%|#         | {n}/{total} [00:0{n}<00:10,  1.50s/it]"


def test_trl_console_dict_after_a_bar_on_its_line_evaluations_and_the_summary(tmp_path, cli):
    # nohup … > run.log: bars redrawn with \r; a dict printed right after a bar, on its line;
    # a model-loading bar first; an evaluation (its own bar); the end-of-run summary
    text = "\rLoading checkpoint shards: 100%|##########| 2/2 [00:01<00:00,  1.9it/s]\n"
    text += _bar(0) + _bar(1) + _bar(2) + _trl_dict(0.1, 0.25, 0.75, 0.33) + "\n"
    text += _bar(3) + _bar(4) + "\n" + _trl_dict(0.2, 0.5, 0.5, 0.67) + "\n"
    text += "\r 50%|#####     | 1/2 [00:00<00:00]\r100%|##########| 2/2 [00:01<00:00]\n"
    text += "{'eval_loss': 0.3, 'eval_reward': 0.625, 'eval_runtime': 1.5, 'epoch': 0.67}\n"
    text += _bar(5) + _bar(6) + _trl_dict(0.3, 0.75, 0.25, 1.0) + "\n"
    text += "{'train_runtime': 12.5, 'train_samples_per_second': 3.2, 'train_loss': 0.2, "
    text += "'epoch': 1.0}\n" + _bar(6) + "\n"
    path = tmp_path / "run.log"
    path.write_text(text)
    res = cli(llm_main, ["import", "trl", path, "--out", tmp_path / "run"])
    assert res.exit_code == 0, res.stderr
    assert "steps: from the progress bar's N/6 counter" in res.stdout
    assert read_run(tmp_path / "run").steps == (
        {"step": 1, "entropy": 0.75, "reward": 0.25, "lr": 1e-06},
        # the evaluation after optimiser step 4 measured the policy GRPO step 4 samples from
        {"step": 3, "entropy": 0.5, "reward": 0.5, "lr": 1e-06},
        {"step": 4, "val_reward": 0.625},
        {"step": 5, "entropy": 0.25, "reward": 0.75, "lr": 1e-06},
    )


def test_trl_console_without_a_bar_takes_the_order_or_logging_steps(tmp_path, cli):
    path = tmp_path / "pasted.txt"
    path.write_text("\n".join(_trl_dict(0.1, r / 4, 1 - r / 4, r / 3) for r in (1, 2, 3)))
    res = cli(llm_main, ["import", "trl", path, "--out", tmp_path / "a"])
    assert res.exit_code == 0, res.stderr
    assert "steps: the order of the metric dicts" in res.stdout
    assert [s["step"] for s in read_run(tmp_path / "a").steps] == [0, 1, 2]
    res = cli(llm_main, ["import", "trl", path, "--out", tmp_path / "b", "--logging-steps", "4"])
    assert res.exit_code == 0 and "--logging-steps 4" in res.stdout
    # optimiser steps 4, 8, 12 → GRPO steps 3, 7, 11; 4 updates a step → 0, 1, 2
    assert [s["step"] for s in read_run(tmp_path / "b").steps] == [3, 7, 11]
    args = ["--logging-steps", "4", "--updates-per-step", "4"]
    cli(llm_main, ["import", "trl", path, "--out", tmp_path / "c", *args])
    assert [s["step"] for s in read_run(tmp_path / "c").steps] == [0, 1, 2]


def test_trainer_state_is_told_by_content_not_name(tmp_path, cli):
    state = {"log_history": [{"step": 1, "entropy": 0.5, "reward": 0.25}]}
    path = tmp_path / "history.txt"
    path.write_text(json.dumps(state, indent=2))
    res = cli(llm_main, ["import", "trl", path, "--out", tmp_path / "run"])
    assert res.exit_code == 0 and "trainer_state log" in res.stdout
    assert read_run(tmp_path / "run").steps == ({"step": 0, "entropy": 0.5, "reward": 0.25},)
    res = cli(llm_main, ["import", "trl", path, "--out", tmp_path / "b", "--logging-steps", "2"])
    _one_line(res, "--logging-steps", "history.txt")


def _skyrl_line(function: str, line: int, msg: str) -> str:
    return (
        f"{ESC}[36m(skyrl_entrypoint pid=7){ESC}[0m {ESC}[32m2025-11-02 10:00:00.000{ESC}[0m | "
        f"{ESC}[1mINFO    {ESC}[0m | {ESC}[36mskyrl.train.trainer{ESC}[0m:{function}:{line} - {msg}"
    )


def test_skyrl_console_of_a_newer_version_prefers_the_raw_reward(tmp_path):
    lines = []
    for h, raw, final in [(0.5, 0.25, 0.2), (0.4, 0.5, 0.45)]:
        lines.append(_skyrl_line("train", 380, "Example:"))
        lines.append("  Input: [{'content': 'What is 2 + 2?', 'role': 'user'}]")
        lines.append(
            _skyrl_line(
                "postprocess_generator_output",
                1117,
                f"reward/avg_pass_at_4: 1.0, reward/avg_raw_reward: {raw}, "
                "reward/mean_positive_reward: 1.0",
            )
        )
        lines.append(
            _skyrl_line(
                "compute_advantages_and_returns",
                1226,
                f"avg_final_rewards: {final}, avg_response_length: 12.5",
            )
        )
        status = {"policy_loss": -0.01, "policy_lr": 1e-06, "policy_entropy": np.float64(h)}
        lines.append(_skyrl_line("train", 497, repr(status)))
    path = tmp_path / "skyrl.log"
    path.write_text("\n".join(lines) + "\n")
    result = import_skyrl(path, tmp_path / "run")
    assert result.keys["reward"] == "reward/avg_raw_reward"
    assert read_run(result.out).steps == (
        {"step": 1, "entropy": 0.5, "reward": 0.25, "lr": 1e-06},
        {"step": 2, "entropy": 0.4, "reward": 0.5, "lr": 1e-06},
    )
    # the reward the user names instead
    chosen = import_skyrl(path, tmp_path / "b", KeyMap(reward="avg_final_rewards"))
    assert [s["reward"] for s in read_run(chosen.out).steps] == [0.2, 0.45]


def _wandb_chart(path, run: str, key: str, points: dict[int, float]) -> None:
    """A W&B chart export: every field quoted, __MIN/__MAX companions, no final newline."""
    col = f"{run} - {key}"
    lines = [f'"Step","{col}","{col}__MIN","{col}__MAX"']
    lines += [f'"{s}","{v}","{v}","{v}"' for s, v in points.items()]
    path.write_text("\n".join(lines))


def test_a_validation_metric_as_the_reward_is_val_reward_on_its_own_steps(tmp_path, cli):
    entropy = {s: 1 - s / 40 for s in range(1, 31)}
    val_key = "val-core/openai/gsm8k/acc/mean@1"
    val = {s: 0.25 + s / 80 for s in range(0, 31, 5)}
    _wandb_chart(tmp_path / "h.csv", "grpo", "actor/entropy", entropy)
    _wandb_chart(tmp_path / "v.csv", "grpo", val_key, val)
    files = [tmp_path / "h.csv", tmp_path / "v.csv"]
    # no training reward: the validation key is the run's reward, as val_reward
    res = cli(llm_main, ["import", "wandb", *files, "--out", tmp_path / "a"])
    assert res.exit_code == 0, res.stderr
    assert f"val_reward ← {val_key}" in res.stdout and "no training reward" in res.stdout
    run = read_run(tmp_path / "a")
    assert [(s["step"], s["val_reward"]) for s in run.steps if "val_reward" in s] == list(
        val.items()
    )
    assert not any("reward" in s for s in run.steps)
    series = series_from_run(run)  # what `softmax-theory fit` and `compare` fit
    assert series.reward_key == "val_reward" and list(series.steps) == [5, 10, 15, 20, 25, 30]
    # a validation key named as the reward is taken as val_reward too
    res = cli(
        llm_main,
        ["import", "wandb", *files, "--out", tmp_path / "b", "--reward-key", val_key],
    )
    assert res.exit_code == 0 and "a validation metric" in res.stdout
    assert read_run(tmp_path / "b").steps == run.steps


def test_wandb_exports_of_several_runs_need_run(tmp_path, cli):
    for name, key in (("h.csv", "actor/entropy"), ("r.csv", "critic/score/mean")):
        path = tmp_path / "export" / name
        path.parent.mkdir(exist_ok=True)
        col_a, col_b = f"a - {key}", f"b - {key}"
        path.write_text(f'"Step","{col_a}","{col_b}"\n"1","0.5","0.25"\n"2","0.4","0.5"')
    res = cli(llm_main, ["import", "wandb", tmp_path / "export", "--out", tmp_path / "x"])
    _one_line(res, "--run", "2 runs (a, b)", "h.csv")
    args = ["import", "wandb", tmp_path / "export", "--out", tmp_path / "y", "--run", "b"]
    assert cli(llm_main, args).exit_code == 0
    assert read_run(tmp_path / "y").steps[1] == {"step": 2, "entropy": 0.5, "reward": 0.5}
    args[-1] = "c"
    _one_line(cli(llm_main, args), "--run", "no run 'c'", "h.csv")


def test_bad_console_and_chart_input_gets_one_line_naming_file_and_problem(tmp_path, cli):
    # a console log with no metric dicts
    log = tmp_path / "crashed.log"
    log.write_text(
        "\rLoading checkpoint shards: 100%|####| 2/2 [00:01<00:00]\nCUDA out of memory\n"
    )
    for command, what in (("trl", "no metric dict"), ("skyrl", "no SkyRL status line")):
        _one_line(
            cli(llm_main, ["import", command, log, "--out", tmp_path / command]),
            "crashed.log",
            what,
        )
    _one_line(
        cli(llm_main, ["import", "openrlhf", log, "--out", tmp_path / "o"]),
        "crashed.log",
        "Global step",
    )
    # a run killed while printing its last dict
    torn = tmp_path / "torn.log"
    torn.write_text(_trl_dict(0.1, 0.5, 0.5, 0.1) + "\n{'loss': 0.2, 'grad_norm': 0.4, 'rewa")
    _one_line(
        cli(llm_main, ["import", "trl", torn, "--out", tmp_path / "t"]),
        "torn.log line 2",
        "cut short",
    )
    # a NaN where a value is taken is refused, not written
    nan = tmp_path / "nan.log"
    nan.write_text(_trl_dict(0.1, 0.5, 0.5, 0.1) + "\n" + _trl_dict(0.1, "nan", 0.5, 0.2))
    _one_line(
        cli(llm_main, ["import", "trl", nan, "--out", tmp_path / "n"]), "nan.log line 2", "reward"
    )
    # chart exports whose Steps do not overlap
    _wandb_chart(tmp_path / "h.csv", "grpo", "actor/entropy", {1: 0.5, 2: 0.4})
    _wandb_chart(tmp_path / "r.csv", "grpo", "critic/score/mean", {10: 0.5, 11: 0.6})
    files = [tmp_path / "h.csv", tmp_path / "r.csv"]
    _one_line(
        cli(llm_main, ["import", "wandb", *files, "--out", tmp_path / "w"]),
        "h.csv",
        "r.csv",
        "do not overlap",
        "actor/entropy: steps 1–2",
        "critic/score/mean: steps 10–11",
    )
    # a key in none of the files
    _one_line(
        cli(llm_main, ["import", "wandb", *files, "--out", tmp_path / "k", "--entropy-key", "ent"]),
        "--entropy-key",
        "h.csv",
        "r.csv",
        "'ent'",
    )
    # a torn CSV row
    (tmp_path / "cut.csv").write_text('"Step","grpo - actor/entropy"\n"1","0.5"\n"2"')
    _one_line(
        cli(llm_main, ["import", "wandb", tmp_path / "cut.csv", "--out", tmp_path / "c"]),
        "cut.csv line 3",
    )
    # several files merge only as CSV exports
    (tmp_path / "h.jsonl").write_text('{"_step": 1, "entropy": 0.5, "reward": 0.5}\n')
    args = ["import", "wandb", tmp_path / "h.jsonl", tmp_path / "r.csv", "--out", tmp_path / "j"]
    _one_line(cli(llm_main, args), "h.jsonl", "each is a CSV export")


@pytest.mark.parametrize("command", ["trl", "skyrl", "openrlhf", "wandb"])
def test_import_help_fits_80_columns(cli, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "80")
    res = cli(llm_main, ["import", command, "--help"])
    assert res.exit_code == 0 and max(len(line) for line in res.stdout.splitlines()) <= 80
