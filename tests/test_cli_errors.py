"""A user's mistake gets one line naming the argument and the problem, exit code 2, and no
traceback, in both command lines."""

import json

import pytest

from llm_bridge.cli import main as llm_main
from softmax_theory.cli import main as st_main


def _expect_one_line(result, *names):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    return path


@pytest.fixture
def run_dir(tmp_path):
    """A run directory written by the simulator."""
    from softmax_theory import AlgoConfig, EnvConfig, SimConfig, make_env, simulate

    out = tmp_path / "run"
    simulate(
        make_env(EnvConfig(name="bandit", actions=4)),
        SimConfig(steps=5, algo=AlgoConfig(algo="npg")),
        out=out,
    )
    return out


ST_CASES = {
    "simulate --out a file": (
        lambda p, f, r: ["simulate", "--steps", "2", "--out", f],
        ("--out", "is a file"),
    ),
    "simulate --out an existing run": (
        lambda p, f, r: ["simulate", "--steps", "2", "--out", r],
        ("out:", "simulate has no resume"),
    ),
    "check --json a directory": (
        lambda p, f, r: ["check", "--json", p],
        ("--json", "is a directory"),
    ),
    "sweep --lrs empty": (lambda p, f, r: ["sweep", "--lrs", "", "--steps", "2"], ("lr:",)),
    "sweep a negative lr": (lambda p, f, r: ["sweep", "--lr", "0.1,-1", "--steps", "2"], ("lr:",)),
    "sweep --seeds 0": (lambda p, f, r: ["sweep", "--seeds", "0", "--steps", "2"], ("seeds",)),
    "sweep an unknown algorithm": (lambda p, f, r: ["sweep", "--algos", "pg,ppo"], ("ppo",)),
    "sweep --resume without --out": (lambda p, f, r: ["sweep", "--resume"], ("resume", "--out")),
    "a number that is not": (lambda p, f, r: ["simulate", "--steps", "x"], ("--steps",)),
    "an unknown option": (lambda p, f, r: ["simulate", "--stepz", "3"], ("--stepz",)),
    "a setting the loss does not read": (
        lambda p, f, r: ["simulate", "--loss", "kl_cov", "--clip-ratio-low", "0.3"],
        ("--clip-ratio-low", "kl_cov"),
    ),
    "fit a missing run": (lambda p, f, r: ["fit", p / "missing"], ("RUNS",)),
    "fit a CSV without the column": (
        lambda p, f, r: ["fit", f.with_suffix(".csv")],
        ("reward-col",),
    ),
}


@pytest.mark.parametrize("case", list(ST_CASES))
def test_softmax_theory_user_errors(case, tmp_path, a_file, run_dir, cli):
    args, names = ST_CASES[case]
    (tmp_path / "a_file.csv").write_text("step,entropy\n0,1.0\n")
    _expect_one_line(cli(st_main, args(tmp_path, a_file, run_dir)), *names)


def test_a_broken_config_json_is_one_line(run_dir, cli):
    (run_dir / "config.json").write_text('{"env": "bandit-4",\n  "steps": 5,,\n}')
    _expect_one_line(cli(st_main, ["fit", run_dir]), "config.json", "line 2")
    _expect_one_line(cli(llm_main, ["compare", run_dir]), "config.json", "line 2")


def test_unwritable_outputs_are_named_before_any_work(a_file, cli):
    """A directory that cannot be created (its parent is a file: even root cannot) is refused
    before the work starts, not after minutes of pre-training."""
    _expect_one_line(cli(st_main, ["check", "--json", a_file / "c.json"]), "--json", "is a file")
    result = cli(llm_main, ["pretrain-tiny", "--out", a_file / "m", "--steps", "100000"])
    _expect_one_line(result, "--out", "cannot create")


def test_llm_bridge_user_errors(tmp_path, a_file, run_dir, tiny_model, cli):
    _expect_one_line(cli(llm_main, ["compare", run_dir, "--out", a_file]), "--out", "is a file")
    _expect_one_line(
        cli(llm_main, ["train", "--model", tiny_model, "--out", tmp_path / "r", "--lr", "-1"]), "lr"
    )
    _expect_one_line(cli(llm_main, ["train", "--out", tmp_path / "r2"]), "model")
    # a bad line of a dataset is named by its line number in the file
    data = tmp_path / "d.jsonl"
    lines = [json.dumps({"prompt": "1+1=", "answer": "2"})] * 11 + ["{not json"]
    data.write_text("\n".join(lines[:5] + [""] + lines[5:]))
    _expect_one_line(
        cli(
            llm_main, ["train", "--model", tiny_model, "--dataset", data, "--out", tmp_path / "r3"]
        ),
        "d.jsonl line 13",
    )
    # a prompt the tokenizer cannot encode would train at reward 0: refused, naming it
    words = tmp_path / "w.jsonl"
    words.write_text(
        "\n".join(
            json.dumps({"prompt": f"what is {i}+1?", "answer": str(i + 1)}) for i in range(20)
        )
    )
    _expect_one_line(
        cli(
            llm_main,
            [
                "train",
                "--model",
                tiny_model,
                "--dataset",
                words,
                "--dataset-reward",
                "exact",
                "--out",
                tmp_path / "r4",
            ],
        ),
        "cannot encode",
    )


def test_importers_refuse_what_they_cannot_read(tmp_path, cli):
    no_reward = tmp_path / "m.jsonl"
    no_reward.write_text(
        "\n".join(json.dumps({"step": i, "actor/entropy": 1.0 - i / 10}) for i in range(3))
    )
    _expect_one_line(
        cli(llm_main, ["import", "verl", no_reward, "--out", tmp_path / "a"]),
        "reward-key",
        "critic/score/mean",
    )
    bad_cell = tmp_path / "m.csv"
    bad_cell.write_text("step,actor/entropy,critic/score/mean\n1,0.9,0.1\n2,abc,0.2\n")
    _expect_one_line(
        cli(llm_main, ["import", "verl", bad_cell, "--out", tmp_path / "b"]),
        "m.csv line 3",
        "actor/entropy",
    )
    broken = tmp_path / "t.json"
    broken.write_text('{"log_history": [\n{"step": 1,}\n]}')
    _expect_one_line(
        cli(llm_main, ["import", "trl", broken, "--out", tmp_path / "c"]), "t.json", "line 2"
    )
