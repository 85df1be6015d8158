"""Torn and corrupt files of the language-model half, each checked where it is read, and the
write order of a step's row and its checkpoint in both engines.

A resume ends with every step 0 … N−1 in the log once: a torn last line whose step is run again
is cut and said; a checkpoint that is not whole, or past the first step the log lacks, is said,
moved aside, and the one before it (or step 0) used. Anything else is refused in one line
naming the file (and line), exit 2 on the command line, no traceback."""

import shutil

import numpy as np
import pytest

from llm_bridge import ProbedGRPOTrainer, TrainConfig, train
from llm_bridge.checkpoint import TrainState
from llm_bridge.cli import main as llm_main
from llm_bridge.run_dir import (
    CHECKPOINT_COMPLETE,
    CHECKPOINT_DIR,
    COV_TABLES_FILE,
    SKIPPED_PREFIX,
    TOKENS_DIR,
    TRL_DIR,
    first_unlogged_step,
    read_cov_tables,
    read_tokens,
    truncate_run,
)
from llm_bridge.tasks import synthetic_task
from softmax_theory import EnvConfig, SimConfig, make_env, simulate
from softmax_theory.runlog import STEPS_FILE, read_run
from tests.one_line import expect_one_line

TASK = synthetic_task("addition", n_train=200, n_test=16)
ENGINES = ["ours", "trl"]


class Killed(BaseException):
    """A kill at a chosen point: nothing after it runs, not even ``except Exception``."""


def _cfg(model, engine="ours", **kw):
    base = dict(
        model=str(model),
        steps=3,
        prompts_per_step=2,
        group_size=2,
        val_every=0,
        probe=False,
        checkpoint_every=1,
        lr=1e-3,
        warmup_steps=0,
        save_final=False,
        engine=engine,
    )
    return TrainConfig(**{**base, **kw})


def _engine(engine):
    if engine == "trl":
        pytest.importorskip("trl")
    return engine


def _steps(out):
    """The logged steps, read as every reader reads them (a repeated step is refused)."""
    return [r["step"] for r in read_run(out).steps]


def _tear(path):
    """Cut the file in the middle of its last line, as a kill mid-append leaves it."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: start + (len(data) - start) // 2])


def _halve(path):
    """Keep the first half of a file, as a copy or a save cut short leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path, at=0.5):
    """Overwrite one byte inside the file (a bad copy that keeps its size)."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


# -- the measured case: a finished run whose last row is torn -----------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_a_torn_last_row_is_run_again_on_resume(tiny_model, tmp_path, engine):
    """The checkpoint is at the last step, after the torn row: it would leave that step out for
    good, so it is passed over (and moved aside) and the run starts again, saying so."""
    out = tmp_path / "run"
    train(_cfg(tiny_model, _engine(engine)), out, task=TASK)
    _tear(out / STEPS_FILE)
    said = []
    train(_cfg(tiny_model, engine, steps=4), out, resume=True, task=TASK, log=said.append)
    assert _steps(out) == [0, 1, 2, 3]
    assert any("steps.jsonl line 3 is torn" in m and "step 2 runs again" in m for m in said)
    assert any("lacks step 2" in m and SKIPPED_PREFIX in m for m in said), said
    assert any("no usable checkpoint; starting again at step 0" in m for m in said)


def _log(out, steps, tail=""):
    out.mkdir()
    rows = "".join(f'{{"step": {k}, "reward": 0.5}}\n' for k in steps)
    (out / STEPS_FILE).write_text(rows + tail)


def test_the_first_unlogged_step_is_where_the_log_first_lacks_one(tmp_path):
    """The log the old resume left (steps 0…18, 20, 21): a resume must run 19 again."""
    said = []
    _log(tmp_path / "gap", [*range(19), 20, 21])
    assert first_unlogged_step(tmp_path / "gap", (), said.append) == 19
    assert said == [
        f"resume: {tmp_path / 'gap' / STEPS_FILE} lacks step 19: it and every later step run again"
    ]
    _log(tmp_path / "torn", range(3), '{"step": 3, "rew')
    assert first_unlogged_step(tmp_path / "torn", (), said.append) == 3
    assert "line 4 is torn (cut short mid-write): cut away; step 3 runs again" in said[-1]
    _log(tmp_path / "twice", [0, 1, 1, 2])
    with pytest.raises(ValueError, match="steps.jsonl line 3: step 1 comes after step 1"):
        first_unlogged_step(tmp_path / "twice", ())


# -- write order: a kill between a step's row and its checkpoint --------------------------------


def test_ours_killed_after_a_row_before_its_checkpoint_loses_no_step(
    tiny_model, tmp_path, monkeypatch
):
    import llm_bridge.checkpoint as checkpoint

    write = checkpoint.write_checkpoint

    def killed_at_step_3(out, save, step):
        if step == 3:  # the checkpoint after row 2
            raise Killed
        return write(out, save, step)

    monkeypatch.setattr(checkpoint, "write_checkpoint", killed_at_step_3)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(_cfg(tiny_model, steps=4), out, task=TASK)
    monkeypatch.undo()
    assert _steps(out) == [0, 1, 2]
    said = []
    train(_cfg(tiny_model, steps=4), out, resume=True, task=TASK, log=said.append)
    assert "resume: continuing at step 2" in said
    assert _steps(out) == [0, 1, 2, 3]


def test_ours_killed_after_a_checkpoint_before_its_row_loses_no_step(tiny_model, tmp_path):
    """The other order: the checkpoint after step 2 is written, the row of step 2 is not."""
    out = tmp_path / "run"
    trainer = ProbedGRPOTrainer(_cfg(tiny_model, steps=4), out, task=TASK)
    write_step = trainer.run_dir.write_step

    def checkpoint_first(record):
        if record["step"] == 2:
            trainer.checkpointer.save(TrainState(3, trainer.state.entropy_coeff))
            raise Killed
        write_step(record)

    trainer.run_dir.write_step = checkpoint_first
    with pytest.raises(Killed):
        trainer.train()
    assert _steps(out) == [0, 1]
    said = []
    train(_cfg(tiny_model, steps=4), out, resume=True, task=TASK, log=said.append)
    assert any("holds the state after step 2" in m and "lacks step 2" in m for m in said), said
    assert _steps(out) == [0, 1, 2, 3]


def test_trl_killed_after_a_row_before_its_checkpoint_loses_no_step(
    tiny_model, tmp_path, monkeypatch
):
    pytest.importorskip("trl")
    from llm_bridge.integrations.trl.trainer import RegistryLossTrainer

    save = RegistryLossTrainer._save_checkpoint

    def killed_after_row_2(self, model, trial):
        if self.state.global_step == 3 * self.updates_per_step:
            raise Killed
        return save(self, model, trial)

    monkeypatch.setattr(RegistryLossTrainer, "_save_checkpoint", killed_after_row_2)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(_cfg(tiny_model, "trl", steps=4), out, task=TASK)
    monkeypatch.undo()
    assert _steps(out) == [0, 1, 2]
    said = []
    train(_cfg(tiny_model, "trl", steps=4), out, resume=True, task=TASK, log=said.append)
    assert "resume: continuing at step 2" in said
    assert _steps(out) == [0, 1, 2, 3]


def test_trl_killed_after_a_checkpoint_before_its_row_loses_no_step(
    tiny_model, tmp_path, monkeypatch
):
    pytest.importorskip("trl")
    from llm_bridge.integrations.trl.run_log import RunLogCallback

    on_step_end = RunLogCallback.on_step_end

    def checkpoint_first(self, args, state, control, **kwargs):
        if state.global_step == 3 * self.updates:  # the end of step 2, before its row
            self.trainer._save_checkpoint(self.trainer.model, None)
            raise Killed
        return on_step_end(self, args, state, control, **kwargs)

    monkeypatch.setattr(RunLogCallback, "on_step_end", checkpoint_first)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(_cfg(tiny_model, "trl", steps=4), out, task=TASK)
    monkeypatch.undo()
    assert _steps(out) == [0, 1]
    said = []
    train(_cfg(tiny_model, "trl", steps=4), out, resume=True, task=TASK, log=said.append)
    assert any("holds the state after step 2" in m and "lacks step 2" in m for m in said), said
    assert _steps(out) == [0, 1, 2, 3]


# -- checkpoints that are not whole ------------------------------------------------------------


OUR_DAMAGE = {
    "weights torn": ("model.safetensors", _halve),
    "weights overwritten": ("model.safetensors", lambda p: p.write_bytes(b"\0" * 64)),
    "state overwritten": ("trainer.pt", _flip),
    "state torn": ("trainer.pt", _halve),
    "mark corrupt": (CHECKPOINT_COMPLETE, lambda p: p.write_bytes(b"\xff\x00")),
    "config torn": ("config.json", _halve),
}


@pytest.mark.parametrize("damage", list(OUR_DAMAGE))
def test_our_checkpoint_that_is_not_whole_is_named_and_the_run_restarts(
    tiny_model, tmp_path, damage
):
    out = tmp_path / "run"
    train(_cfg(tiny_model, steps=2), out, task=TASK)
    name, spoil = OUR_DAMAGE[damage]
    spoil(out / CHECKPOINT_DIR / name)
    said = []
    train(_cfg(tiny_model, steps=3), out, resume=True, task=TASK, log=said.append)
    assert any(name in m and "not used (moved to" in m for m in said), said
    assert "resume: no usable checkpoint; starting again at step 0" in said
    assert (out / (SKIPPED_PREFIX + CHECKPOINT_DIR) / name).exists()
    assert _steps(out) == [0, 1, 2]


def test_a_corrupt_checkpoint_tmp_falls_back_to_the_checkpoint_before_it(tiny_model, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_model, steps=2), out, task=TASK)
    tmp = out / (CHECKPOINT_DIR + ".tmp")
    shutil.copytree(out / CHECKPOINT_DIR, tmp)
    _halve(tmp / "model.safetensors")
    said = []
    train(_cfg(tiny_model, steps=3), out, resume=True, task=TASK, log=said.append)
    assert any("checkpoint.tmp/model.safetensors: not a whole safetensors file" in m for m in said)
    assert "resume: continuing at step 2" in said
    assert _steps(out) == [0, 1, 2]


def test_a_checkpoint_tmp_cut_short_is_said_and_not_used(tiny_model, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_model, steps=2), out, task=TASK)
    (out / (CHECKPOINT_DIR + ".tmp")).mkdir()  # a save killed before its COMPLETE mark
    said = []
    train(_cfg(tiny_model, steps=3), out, resume=True, task=TASK, log=said.append)
    assert any("no COMPLETE mark (a checkpoint cut short): not used" in m for m in said), said
    assert "resume: continuing at step 2" in said
    assert _steps(out) == [0, 1, 2]


@pytest.mark.parametrize("name", ["trainer_state.json", "optimizer.pt", "model.safetensors"])
def test_a_trl_checkpoint_that_is_not_whole_is_named_and_the_run_restarts(
    tiny_model, tmp_path, name
):
    pytest.importorskip("trl")
    out = tmp_path / "run"
    train(_cfg(tiny_model, "trl", steps=2), out, task=TASK)
    (folder,) = (out / TRL_DIR).glob("checkpoint-*")
    _halve(folder / name)
    said = []
    train(_cfg(tiny_model, "trl", steps=3), out, resume=True, task=TASK, log=said.append)
    assert any(name in m and "not used (moved to" in m for m in said), said
    assert "resume: no usable checkpoint; starting again at step 0" in said
    assert (out / TRL_DIR / (SKIPPED_PREFIX + folder.name)).exists()
    assert _steps(out) == [0, 1, 2]


# -- covariance tables and token files ---------------------------------------------------------


def _killed_after(model, out, n_steps, **kw):
    """A run killed (no chance to clean up) after n_steps steps, checkpointed after each."""
    trainer = ProbedGRPOTrainer(_cfg(model, **kw), out, task=TASK)
    for _ in range(n_steps):
        trainer.step()
    trainer.run_dir.close()


def test_a_torn_last_covariance_table_is_cut_and_its_step_run_again(tiny_model, tmp_path):
    out = tmp_path / "run"
    _killed_after(tiny_model, out, 2, cov_table_steps=(0, 1, 2))
    with open(out / COV_TABLES_FILE, "a") as f:
        f.write('{"step": 2, "n_tok')  # killed while writing step 2's table, before its row
    with pytest.raises(ValueError, match="cov_tables.jsonl line 3 is torn"):
        read_cov_tables(out)
    said = []
    cfg = _cfg(tiny_model, cov_table_steps=(0, 1, 2))
    train(cfg, out, resume=True, task=TASK, log=said.append)
    assert any("cov_tables.jsonl line 3 is torn" in m and "step 2 runs again" in m for m in said)
    assert "resume: continuing at step 2" in said
    assert [t["step"] for t in read_cov_tables(out)] == [0, 1, 2]
    assert _steps(out) == [0, 1, 2]


def test_a_torn_covariance_table_before_the_checkpoint_runs_its_step_again(tiny_model, tmp_path):
    """A bad copy tore the table of step 1, whose row is whole: the checkpoint after step 1 is
    past it, so the run starts again rather than lose the table."""
    out = tmp_path / "run"
    _killed_after(tiny_model, out, 2, cov_table_steps=(0, 1))
    _tear(out / COV_TABLES_FILE)
    said = []
    train(_cfg(tiny_model, cov_table_steps=(0, 1)), out, resume=True, task=TASK, log=said.append)
    assert any("step 1 runs again" in m for m in said), said
    assert "resume: no usable checkpoint; starting again at step 0" in said
    assert [t["step"] for t in read_cov_tables(out)] == [0, 1]
    assert _steps(out) == [0, 1, 2]


def test_a_corrupt_covariance_table_or_row_refuses_the_resume_by_line(tiny_model, tmp_path, cli):
    model = str(tiny_model)
    flags = ["--model", model, "--steps", "2", "--prompts-per-step", "2", "--group-size", "2"]
    flags += ["--val-every", "0", "--no-probe", "--checkpoint-every", "1"]
    flags += ["--cov-table-steps", "0,1", "--no-save-final"]
    out = tmp_path / "run"
    assert cli(llm_main, ["train", *flags, "--out", out]).exit_code == 0
    tables = out / COV_TABLES_FILE
    good = tables.read_text()
    tables.write_text("not json\n" + good.split("\n", 1)[1])
    expect_one_line(
        cli(llm_main, ["train", *flags, "--out", out, "--resume"]), "cov_tables.jsonl line 1"
    )
    tables.write_text(good)
    steps = out / STEPS_FILE
    steps.write_text(steps.read_text().replace('"step": 0', '"step": 7', 1))
    expect_one_line(
        cli(llm_main, ["train", *flags, "--out", out, "--resume"]), "steps.jsonl line 2"
    )
    (out / "config.json").write_text('{"model": "x",\n "st')
    expect_one_line(
        cli(llm_main, ["train", *flags, "--out", out, "--resume"]), "config.json", "line 2"
    )


def _token_files(out):
    (out / TOKENS_DIR).mkdir(parents=True)
    for step in range(3):
        np.savez_compressed(out / TOKENS_DIR / f"step_{step:06d}.npz", entropy=np.arange(50.0))


@pytest.mark.parametrize("spoil", [_halve, _flip], ids=["torn", "overwritten"])
def test_a_token_file_that_is_not_whole_is_named(tmp_path, spoil):
    _token_files(tmp_path)
    assert read_tokens(tmp_path, 0)["entropy"].tolist() == list(range(50))
    spoil(tmp_path / TOKENS_DIR / "step_000001.npz")
    with pytest.raises(ValueError, match="step_000001.npz: not a whole token file"):
        read_tokens(tmp_path, 1)
    with pytest.raises(FileNotFoundError, match="step 9"):
        read_tokens(tmp_path, 9)


def test_truncation_removes_a_half_written_token_file(tmp_path):
    """A kill inside write_tokens leaves step_N.tmp.npz; a resume once failed on its name."""
    _token_files(tmp_path)
    (tmp_path / TOKENS_DIR / "step_000003.tmp.npz").write_bytes(b"PK\x03\x04half")
    (tmp_path / TOKENS_DIR / "step_notes.npz").write_bytes(b"mine")  # not ours: kept
    truncate_run(tmp_path, 2)
    names = sorted(p.name for p in (tmp_path / TOKENS_DIR).iterdir())
    assert names == ["step_000000.npz", "step_000001.npz", "step_notes.npz"]


# -- model folders -----------------------------------------------------------------------------


MODEL_DAMAGE = {
    "weights torn": ("model.safetensors", _halve),
    "weights overwritten": ("model.safetensors", lambda p: p.write_bytes(b"garbage" * 9)),
    "generation config torn": ("generation_config.json", _halve),
    "tokenizer torn": ("tokenizer.json", _halve),
}


@pytest.mark.parametrize("damage", list(MODEL_DAMAGE))
def test_a_model_folder_with_a_file_not_whole_is_refused_naming_it(
    tiny_model, tmp_path, cli, damage
):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    name, spoil = MODEL_DAMAGE[damage]
    spoil(model / name)
    result = cli(llm_main, ["train", "--model", model, "--out", tmp_path / "r", "--steps", "1"])
    expect_one_line(result, "model:", str(model / name))


def test_pretrain_tiny_trains_again_over_a_torn_summary_or_weights(tmp_path, cli):
    out = tmp_path / "tiny"
    args = ["pretrain-tiny", "--out", out, "--steps", "2", "--warmup", "1"]

    def says(*texts):  # the console wraps long lines anywhere: compared without spaces
        result = cli(llm_main, args)
        assert result.exit_code == 0, result.output
        for text in texts:
            assert text.replace(" ", "") in "".join(result.output.split()), result.output

    says()
    says("already holds this pre-trained model")
    _halve(out / "pretrain.json")
    says("pretrain.json: not valid JSON", "training the model again")
    _halve(out / "model.safetensors")
    says("model.safetensors: not a whole safetensors file", "training the model again")
    says("already holds this pre-trained model")


# -- compare and imported logs -----------------------------------------------------------------


def test_compare_names_a_torn_line_rather_than_read_past_it(tmp_path, cli):
    run = tmp_path / "run"
    simulate(make_env(EnvConfig(name="bandit", actions=4)), SimConfig(steps=5), out=run)
    _tear(run / STEPS_FILE)
    expect_one_line(cli(llm_main, ["compare", run]), "steps.jsonl line 5 is torn")


@pytest.mark.parametrize(
    "importer, name, text, where",
    [
        (
            "verl",
            "log.jsonl",
            '{"step": 1, "actor/entropy": 0.9, "critic/score/mean": 0.1}\n{"step": 2, "act',
            "log.jsonl line 2",
        ),
        ("trl", "trainer_state.json", '{"log_history": [{"step": 1, "entr', "trainer_state.json"),
    ],
)
def test_imported_logs_name_a_torn_line(tmp_path, cli, importer, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    expect_one_line(cli(llm_main, ["import", importer, path, "--out", tmp_path / "out"]), where)
    assert not (tmp_path / "out" / STEPS_FILE).exists()
