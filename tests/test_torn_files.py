"""Torn and corrupt files of the tabular half: every file read back is checked where it is read.
A torn last line a resume re-runs is cut and said; anything else is refused in one line naming
the file and line (exit 2 on the command line, no traceback); nothing is read past."""

import pytest

from softmax_theory import AlgoConfig, EnvConfig, SimConfig, make_env, simulate
from softmax_theory.cli import main as st_main
from softmax_theory.runlog import (
    STEPS_FILE,
    read_config,
    read_json,
    read_run,
    read_step_lines,
    truncate_steps,
)
from softmax_theory.sweep import RUNS_DIR, SWEEP_FILE, cell_name, run_sweep
from tests.one_line import expect_one_line

ENV = EnvConfig(name="bandit", actions=4)
BASE = SimConfig(steps=6, algo=AlgoConfig(algo="grpo"))


@pytest.fixture
def run(tmp_path):
    out = tmp_path / "run"
    simulate(make_env(ENV), SimConfig(steps=5, algo=AlgoConfig(algo="npg")), out=out)
    return out


def _tear(path):
    """Cut the file in the middle of its last line, as a kill mid-append leaves it."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: start + (len(data) - start) // 2])


# -- steps.jsonl ------------------------------------------------------------------------------


def test_a_torn_last_line_is_set_apart_and_refused_by_readers(run):
    _tear(run / STEPS_FILE)
    lines = read_step_lines(run / STEPS_FILE)
    assert [r["step"] for r in lines.records] == [0, 1, 2, 3] and lines.torn_line == 5
    with pytest.raises(ValueError, match=r"steps.jsonl line 5 is torn"):
        read_run(run)


def test_a_last_line_without_its_newline_but_whole_is_read(run):
    path = run / STEPS_FILE
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert [r["step"] for r in read_run(run).steps] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "line, why",
    [
        (b'{"step": 1, "entr', "not valid JSON"),
        (b"\xff\xfe garbage", "not UTF-8"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"entropy": 1.0}', "'step' is None"),
        (b'{"step": "1"}', "not an integer"),
        (b'{"step": 0}', "step 0 comes after step 0"),
    ],
)
def test_a_corrupt_line_is_refused_by_file_and_line(run, line, why):
    path = run / STEPS_FILE
    lines = path.read_bytes().splitlines()
    lines[1] = line
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match="steps.jsonl line 2") as err:
        read_run(run)
    assert why in str(err.value)


def test_truncation_cuts_a_torn_last_line(run):
    _tear(run / STEPS_FILE)
    assert truncate_steps(run, 3) == 2  # step 3 and the torn line
    assert [r["step"] for r in read_run(run).steps] == [0, 1, 2]


@pytest.mark.parametrize("how", ["torn", "corrupt"])
def test_fit_names_a_torn_or_corrupt_line_instead_of_reading_past_it(run, cli, how):
    path = run / STEPS_FILE
    if how == "torn":
        _tear(path)
        expect_one_line(cli(st_main, ["fit", run]), "RUNS", "steps.jsonl line 5 is torn")
    else:
        lines = path.read_text().splitlines()
        lines[2] = lines[2][:10]
        path.write_text("\n".join(lines) + "\n")
        expect_one_line(cli(st_main, ["fit", run]), "RUNS", "steps.jsonl line 3", "not valid JSON")


# -- config.json ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, why",
    [('{"env": "bandit-4",\n  "ste', "line 2"), ("\x00\xff", "not"), ("[1, 2]", "JSON object")],
)
def test_a_torn_or_corrupt_config_json_is_named(run, cli, text, why):
    (run / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match="config.json") as err:
        read_config(run)
    assert why in str(err.value)
    expect_one_line(cli(st_main, ["fit", run]), "config.json", why)


def test_read_json_names_a_file_that_is_not_text(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError, match=r"x.json: not UTF-8 text \(byte 7\)"):
        read_json(path)


# -- sweep cells and sweep.csv ----------------------------------------------------------------


def _sweep(out, **kw):
    return run_sweep(ENV, ["npg", "grpo"], [0.1, 1.0], 1, BASE, out=out, **kw)


def test_a_sweep_resume_reruns_a_torn_cell_and_says_so(tmp_path):
    full, _ = _sweep(tmp_path / "full")
    _sweep(tmp_path / "s")
    torn = tmp_path / "s" / RUNS_DIR / cell_name("grpo", 0.1, 0)
    _tear(torn / STEPS_FILE)
    said, read_back = [], []
    rows, curves = _sweep(
        tmp_path / "s",
        resume=True,
        log=said.append,
        on_run=lambda cell, old: read_back.append(old),
    )
    assert read_back == [True, True, False, True]
    assert len(said) == 1 and "line 6 is torn" in said[0]
    assert "grpo_lr0.1_seed0 runs again" in said[0]
    assert rows == full
    assert [r["step"] for r in read_run(torn).steps] == list(range(BASE.steps))
    csv_lines = (tmp_path / "s" / SWEEP_FILE).read_text().splitlines()
    assert len(csv_lines) == 1 + 4  # the torn cell's row replaced, not repeated


@pytest.mark.parametrize("damage", ["corrupt", "short", "missing"])
def test_a_sweep_resume_reruns_a_cell_that_does_not_read_back_whole(tmp_path, damage):
    _sweep(tmp_path / "s")
    cell = tmp_path / "s" / RUNS_DIR / cell_name("npg", 1.0, 0)
    steps = cell / STEPS_FILE
    if damage == "corrupt":
        steps.write_text(steps.read_text().replace('"step": 2', '"step": "two"'))
    elif damage == "short":
        steps.write_text("".join(steps.read_text().splitlines(keepends=True)[:3]))
    else:
        steps.unlink()
    said = []
    _sweep(tmp_path / "s", resume=True, log=said.append)
    assert len(said) == 1 and "npg_lr1_seed0 runs again" in said[0]
    assert [r["step"] for r in read_run(cell).steps] == list(range(BASE.steps))


def test_a_sweep_resume_reruns_the_cell_of_a_torn_last_row(tmp_path):
    full, _ = _sweep(tmp_path / "full")
    _sweep(tmp_path / "s")
    table = tmp_path / "s" / SWEEP_FILE
    text = table.read_text()
    table.write_text(text[: len(text) - 12])  # the last row, cut short: a number may still read
    said, read_back = [], []
    rows, _ = _sweep(
        tmp_path / "s", resume=True, log=said.append, on_run=lambda c, old: read_back.append(old)
    )
    assert read_back == [True, True, True, False]
    assert len(said) == 1 and "sweep.csv line 5 is torn" in said[0]
    assert rows == full
    assert table.read_text() == (tmp_path / "full" / SWEEP_FILE).read_text()


def test_a_corrupt_row_of_sweep_csv_is_refused_by_line(tmp_path, cli):
    _sweep(tmp_path / "s")
    table = tmp_path / "s" / SWEEP_FILE
    lines = table.read_text().splitlines(keepends=True)
    lines[2] = "npg,0.1,zero," + lines[2].split(",", 3)[3]
    table.write_text("".join(lines))
    with pytest.raises(ValueError, match="sweep.csv line 3"):
        _sweep(tmp_path / "s", resume=True)
    args = ["sweep", "--out", tmp_path / "s", "--resume", "--env", "bandit", "--actions", "4"]
    args += ["--algos", "npg,grpo", "--lrs", "0.1,1", "--steps", str(BASE.steps)]
    expect_one_line(cli(st_main, args), "sweep.csv line 3")


def test_a_torn_sweep_config_json_is_refused(tmp_path, cli):
    _sweep(tmp_path / "s")
    config = tmp_path / "s" / "config.json"
    config.write_text(config.read_text()[:30])
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        _sweep(tmp_path / "s", resume=True)
