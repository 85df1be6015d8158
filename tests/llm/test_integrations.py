"""TRL integration and the importers of TRL and verl logs."""

import csv
import json

import pytest

from llm_bridge.integrations.importers import KeyMap, import_trl, import_verl
from softmax_theory.runlog import read_run


def test_import_verl_csv_and_jsonl(tmp_path):
    rows = [
        {
            "step": 1,
            "actor/entropy": 0.9,
            "critic/score/mean": 0.2,
            "val-core/openai/gsm8k/reward/mean@1": 0.25,
        },
        {"step": 2, "actor/entropy": 0.8, "critic/score/mean": 0.3},
        {
            "step": 3,
            "actor/entropy": 0.7,
            "critic/score/mean": 0.4,
            "val-core/openai/gsm8k/reward/mean@1": 0.35,
        },
    ]
    path = tmp_path / "metrics.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    run = read_run(import_verl(path, tmp_path / "a").out)
    assert [s["step"] for s in run.steps] == [1, 2, 3]
    assert run.steps[0] == {"step": 1, "entropy": 0.9, "reward": 0.2, "val_reward": 0.25}
    assert "val_reward" not in run.steps[1]  # not measured: absent, not zero
    # verl's file logger nests metrics under "data"
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("\n".join(json.dumps({"step": r["step"], "data": r}) for r in rows))
    assert read_run(import_verl(jsonl, tmp_path / "b").out).steps == run.steps
    keys = KeyMap(val="val-core/openai/gsm8k/reward/mean@1")
    assert read_run(import_verl(path, tmp_path / "c", keys).out).steps[2]["val_reward"] == 0.35
    with pytest.raises(ValueError, match="--entropy-key: .* has no 'H'"):
        import_verl(path, tmp_path / "d", KeyMap(entropy="H"))


def test_import_trl_log_history(tmp_path):
    state = {
        "log_history": [
            {"step": 1, "entropy": 0.5, "reward": 0.1, "learning_rate": 1e-6, "loss": 0.0},
            {"step": 2, "entropy": 0.4, "reward": 0.2, "learning_rate": 1e-6},
            {"step": 2, "eval_reward": 0.3, "eval_loss": 0.1},
            {"step": 2, "train_runtime": 10.0},
        ]
    }
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    run = read_run(import_trl(tmp_path, tmp_path / "run").out)
    # the evaluation after update 2 measured the policy GRPO step 2 samples from
    assert run.steps == (
        {"step": 0, "entropy": 0.5, "reward": 0.1, "lr": 1e-6},
        {"step": 1, "entropy": 0.4, "reward": 0.2, "lr": 1e-6},
        {"step": 2, "val_reward": 0.3},
    )


@pytest.mark.parametrize("loss", ["vanilla", "clip_higher", "clip_cov", "kl_cov"])
def test_trl_engine_runs_our_losses_and_writes_the_probe(tiny_model, tmp_path, loss):
    pytest.importorskip("trl")
    from llm_bridge import TrainConfig, train
    from softmax_theory.policy import PolicyLossConfig

    ratios = {"clip_cov": {"clip_cov_ratio": 0.05}, "kl_cov": {"kl_cov_ratio": 0.05}}
    cfg = TrainConfig(
        model=str(tiny_model),
        steps=2,
        prompts_per_step=4,
        group_size=4,
        checkpoint_every=0,
        val_every=1,
        val_prompts=2,
        policy_loss=PolicyLossConfig(loss_mode=loss, **ratios.get(loss, {})),
        engine="trl",
    )
    out = train(cfg, tmp_path / "run")
    run = read_run(out)
    assert [s["step"] for s in run.steps] == [0, 1]  # GRPO steps, 2 optimiser updates each
    for rec in run.steps:
        for key in ("entropy", "entropy_after", "delta_entropy", "pred_lemma1", "pred_jvp"):
            assert key in rec
        assert rec["algo"] == f"trl-grpo/{loss}"
        assert rec["probe/updates"] == 2
        assert "val_reward" in rec
    assert run.config["engine"] == "trl" and run.config["policy_loss"]["loss_mode"] == loss
    log = json.loads((out / "trl" / "trainer_state.json").read_text())["log_history"]
    assert any("probe/delta_entropy" in r for r in log)  # the probe in TRL's own log stream
    # the TRL log imports as a run too
    # the TRL log imports as a run too, on the engine's own GRPO-step axis (2 updates a step,
    # read from the run's config.json)
    result = import_trl(out / "trl", tmp_path / "imported")
    assert any("2 optimiser updates per GRPO step" in note for note in result.notes)
    imported = {s["step"]: s for s in read_run(result.out).steps}
    assert [k for k, s in imported.items() if "entropy" in s] == [0, 1]
    for rec in run.steps:
        assert imported[rec["step"]]["val_reward"] == pytest.approx(rec["val_reward"])
        assert imported[rec["step"]]["reward"] == pytest.approx(rec["reward"])


def test_trl_engine_resumes_from_its_checkpoint_and_refuses_other_settings(tiny_model, tmp_path):
    pytest.importorskip("trl")
    from llm_bridge import TrainConfig, train

    base = dict(
        model=str(tiny_model),
        prompts_per_step=2,
        group_size=4,
        checkpoint_every=1,
        val_every=0,
        engine="trl",
    )
    out = tmp_path / "run"
    said = []
    train(TrainConfig(steps=2, **base), out, log=said.append)
    assert sum(m.startswith("checkpoint after step 0:") and "MiB" in m for m in said) == 1
    with pytest.raises(ValueError, match="resume:.*lr 0.0002 → 0.01"):
        train(TrainConfig(steps=3, lr=0.01, **base), out, resume=True)
    messages = []
    train(TrainConfig(steps=3, **base), out, resume=True, log=messages.append)
    assert any("steps 2 → 3" in m for m in messages)
    assert [s["step"] for s in read_run(out).steps] == [0, 1, 2]


def test_warmup_is_one_schedule_in_both_engines(tiny_model, tmp_path):
    """warmup_steps = 2 with two updates per step: the steps' first updates run at 1/4, 3/4
    and 1 of the learning rate in our trainer and in the TRL engine alike."""
    pytest.importorskip("trl")
    from llm_bridge import TrainConfig, train

    base = dict(
        model=str(tiny_model),
        steps=3,
        prompts_per_step=2,
        group_size=4,
        warmup_steps=2,
        lr=1e-3,
        checkpoint_every=0,
        val_every=0,
        probe_jvp=False,
    )
    for engine in ("ours", "trl"):
        out = train(TrainConfig(engine=engine, **base), tmp_path / engine)
        assert [s["lr"] for s in read_run(out).steps] == pytest.approx([2.5e-4, 7.5e-4, 1e-3])
