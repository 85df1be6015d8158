"""One run setup for both engines (``llm_bridge.run_setup``): each refusal of a bad run reaches
our engine and the TRL engine with the same line, before any training, and the command line
prints it as one line with exit code 2."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llm_bridge import TrainConfig, train
from llm_bridge.tasks import Example, synthetic_task

ENGINES = ("ours", "trl")


def small(model, engine: str, **settings) -> TrainConfig:
    base = dict(
        steps=1,
        prompts_per_step=2,
        group_size=2,
        val_every=0,
        checkpoint_every=0,
        save_final=False,
        probe=False,
    )
    return TrainConfig(model=str(model), engine=engine, **{**base, **settings})


def refusal(cfg: TrainConfig, out, task=None, resume: bool = False) -> str:
    """The line ``train`` refuses ``cfg`` with (it must refuse)."""
    with pytest.raises((ValueError, FileExistsError, FileNotFoundError, OSError)) as err:
        train(cfg, out, task=task, resume=resume)
    line = str(err.value)
    assert "\n" not in line.strip(), line
    return line


def both(make, tmp_path) -> dict[str, str]:
    """Each engine's refusal line; ``make(engine, out)`` → the ``refusal`` arguments."""
    pytest.importorskip("trl")
    lines = {}
    for engine in ENGINES:
        out = tmp_path / engine
        lines[engine] = refusal(*make(engine, out)).replace(str(out), "OUT")
    return lines


def test_no_model_is_refused_alike(tmp_path):
    lines = both(lambda e, out: (small("", e), out), tmp_path)
    assert lines["ours"] == lines["trl"] and lines["ours"].startswith("model:")


def test_val_k_without_a_largest_reward_is_refused_alike(tmp_path, tiny_model):
    task = replace(synthetic_task("addition"), max_reward=None)
    lines = both(lambda e, out: (small(tiny_model, e, val_every=1, val_k=2), out, task), tmp_path)
    assert lines["ours"] == lines["trl"] and lines["ours"].startswith("val_k:")


def test_a_folder_that_is_not_a_causal_lm_is_refused_alike(tmp_path):
    (tmp_path / "empty").mkdir()
    lines = both(lambda e, out: (small(tmp_path / "empty", e), out), tmp_path)
    assert lines["ours"] == lines["trl"] and "empty" in lines["ours"]


def test_an_unencodable_task_is_refused_alike(tmp_path, tiny_model):
    task = synthetic_task("addition")
    task = replace(task, train=(Example("12é+3=", "0015"), *task.train[1:]))
    lines = both(lambda e, out: (small(tiny_model, e), out, task), tmp_path)
    assert lines["ours"] == lines["trl"] and "é" in lines["ours"]


def test_a_folder_holding_a_run_is_refused_alike(tmp_path, tiny_model):
    pytest.importorskip("trl")
    done = tmp_path / "done"
    train(small(tiny_model, "ours"), done)
    lines = {e: refusal(small(tiny_model, e), done) for e in ENGINES}
    assert lines["ours"] == lines["trl"] and "already holds a run" in lines["ours"]


def test_a_resume_that_changes_a_setting_is_refused_alike(tmp_path, tiny_model):
    pytest.importorskip("trl")
    lines = {}
    for engine in ENGINES:
        out = tmp_path / engine
        train(small(tiny_model, engine, steps=2), out, stop=lambda _: True)
        changed = small(tiny_model, engine, steps=2, lr=1e-3)
        lines[engine] = refusal(changed, out, resume=True).replace(str(out), "OUT")
    assert lines["ours"] == lines["trl"] and "lr" in lines["ours"]


@pytest.mark.parametrize("engine", ENGINES)
def test_the_command_line_prints_the_refusal_as_one_line_exit_2(cli, tmp_path, engine):
    if engine == "trl":
        pytest.importorskip("trl")
    from llm_bridge.cli import main

    (tmp_path / "empty").mkdir()
    res = cli(main, ["train", "--model", tmp_path / "empty", "--engine", engine, "--out", tmp_path])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1
