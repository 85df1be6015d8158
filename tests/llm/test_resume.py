"""Interrupted work: resume before the first checkpoint, from a whole checkpoint.tmp, after
Ctrl-C, and with other settings (refused, naming each, touching nothing)."""

import hashlib
import os
import shutil
import signal

import pytest

from llm_bridge import ProbedGRPOTrainer, TrainConfig, train
from llm_bridge.run_dir import CHECKPOINT_DIR
from llm_bridge.tasks import synthetic_task
from softmax_theory.policy import PolicyLossConfig
from softmax_theory.runlog import read_run

TIME_KEYS = {"time/rollout_s", "time/update_s", "time/probe_s"}
TASK = synthetic_task("addition", n_train=200, n_test=16)


def _cfg(model, **kw):
    base = dict(
        model=str(model),
        steps=4,
        prompts_per_step=2,
        group_size=4,
        val_every=0,
        checkpoint_every=2,
        lr=1e-3,
        warmup_steps=0,
        probe_jvp=False,
    )
    return TrainConfig(**{**base, **kw})


def _same_records(a, b):
    assert [s["step"] for s in a] == [s["step"] for s in b]
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x.keys() - TIME_KEYS:
            if isinstance(x[key], float):
                assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), key
            else:
                assert x[key] == y[key], key


def _kill_after(trainer, n_steps):
    """A run killed (SIGKILL: no chance to clean up) after logging n_steps steps."""
    for _ in range(n_steps):
        trainer.step()
    trainer.run_dir.close()


def test_resume_before_the_first_checkpoint_restarts_cleanly(tiny_model, tmp_path):
    cfg = _cfg(tiny_model, checkpoint_every=25)
    train(cfg, tmp_path / "full", task=TASK)
    _kill_after(ProbedGRPOTrainer(cfg, tmp_path / "killed", task=TASK), 2)
    assert not (tmp_path / "killed" / CHECKPOINT_DIR).exists()
    messages = []
    train(cfg, tmp_path / "killed", resume=True, task=TASK, log=messages.append)
    assert any("starting again at step 0" in m for m in messages)
    _same_records(read_run(tmp_path / "full").steps, read_run(tmp_path / "killed").steps)


def test_a_whole_checkpoint_tmp_is_used(tiny_model, tmp_path):
    """Killed between removing the old checkpoint and renaming the new one into place."""
    cfg = _cfg(tiny_model)
    train(cfg, tmp_path / "full", task=TASK)
    _kill_after(ProbedGRPOTrainer(cfg, tmp_path / "killed", task=TASK), 3)
    ckpt = tmp_path / "killed" / CHECKPOINT_DIR
    ckpt.rename(ckpt.with_name(CHECKPOINT_DIR + ".tmp"))
    messages = []
    train(cfg, tmp_path / "killed", resume=True, task=TASK, log=messages.append)
    assert any("continuing at step 2" in m for m in messages)
    _same_records(read_run(tmp_path / "full").steps, read_run(tmp_path / "killed").steps)


def test_ctrl_c_finishes_the_step_writes_a_checkpoint_and_resumes(tiny_model, tmp_path):
    cfg = _cfg(tiny_model, checkpoint_every=25)
    train(cfg, tmp_path / "full", task=TASK)

    def interrupt_at_step_1(record):
        if record["step"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="checkpoint written after step 1"):
        train(cfg, tmp_path / "run", task=TASK, progress=interrupt_at_step_1)
    assert [s["step"] for s in read_run(tmp_path / "run").steps] == [0, 1]
    train(cfg, tmp_path / "run", resume=True, task=TASK)
    _same_records(read_run(tmp_path / "full").steps, read_run(tmp_path / "run").steps)


def _digest(directory):
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_resume_with_other_settings_is_refused_by_name_and_touches_nothing(tiny_model, tmp_path):
    cfg = _cfg(tiny_model)
    _kill_after(ProbedGRPOTrainer(cfg, tmp_path / "run", task=TASK), 3)
    before = _digest(tmp_path / "run")
    other = _cfg(tiny_model, lr=0.01, policy_loss=PolicyLossConfig(loss_mode="kl_cov"))
    with pytest.raises(ValueError, match="resume:") as err:
        train(other, tmp_path / "run", resume=True, task=TASK)
    for name in ("lr 0.001 → 0.01", "loss_mode vanilla → kl_cov", "kl_cov_ratio"):
        assert name in str(err.value)
    assert _digest(tmp_path / "run") == before
    # settings that do not change results may differ, and are reported
    messages = []
    train(_cfg(tiny_model, steps=5), tmp_path / "run", resume=True, task=TASK, log=messages.append)
    assert any("steps 4 → 5" in m for m in messages)
    assert [s["step"] for s in read_run(tmp_path / "run").steps] == [0, 1, 2, 3, 4]
    shutil.rmtree(tmp_path / "run")
