"""A user's mistake gets one line naming the argument and the problem, exit code 2, and no
traceback, in both command lines."""

import inspect
import json
import math
import sys
import types
import typing

import pytest

import llm_bridge.compare
import llm_bridge.tiny
import softmax_theory.cli
import softmax_theory.dynamics
import softmax_theory.sweep
from llm_bridge.cli import TRAIN_RENAME
from llm_bridge.cli import app as llm_app
from llm_bridge.cli import main as llm_main
from llm_bridge.config import TrainConfig
from llm_bridge.tiny import TinyConfig
from softmax_theory.algorithms import AlgoConfig
from softmax_theory.checks import CheckConfig
from softmax_theory.cli import SIM_EXCLUDE, SIM_RENAME
from softmax_theory.cli import app as st_app
from softmax_theory.cli import main as st_main
from softmax_theory.cli_options import option_flag
from softmax_theory.control import ControlConfig
from softmax_theory.dynamics import SimConfig
from softmax_theory.envs import EnvConfig
from softmax_theory.inputs import Domain, numeric_fields
from softmax_theory.law import LawConfig
from softmax_theory.policy import LOSS_KNOBS, LOSS_SPECIFIC, PolicyLossConfig
from softmax_theory.sweep import SweepGrid
from tests.one_line import expect_one_line


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
    expect_one_line(cli(st_main, args(tmp_path, a_file, run_dir)), *names)


def test_a_broken_config_json_is_one_line(run_dir, cli):
    (run_dir / "config.json").write_text('{"env": "bandit-4",\n  "steps": 5,,\n}')
    expect_one_line(cli(st_main, ["fit", run_dir]), "config.json", "line 2")
    expect_one_line(cli(llm_main, ["compare", run_dir]), "config.json", "line 2")


def test_unwritable_outputs_are_named_before_any_work(a_file, cli):
    """A directory that cannot be created (its parent is a file: even root cannot) is refused
    before the work starts, not after minutes of pre-training."""
    expect_one_line(cli(st_main, ["check", "--json", a_file / "c.json"]), "--json", "is a file")
    result = cli(llm_main, ["pretrain-tiny", "--out", a_file / "m", "--steps", "100000"])
    expect_one_line(result, "--out", "cannot create")


def test_llm_bridge_user_errors(tmp_path, a_file, run_dir, tiny_model, cli):
    expect_one_line(cli(llm_main, ["compare", run_dir, "--out", a_file]), "--out", "is a file")
    expect_one_line(
        cli(llm_main, ["train", "--model", tiny_model, "--out", tmp_path / "r", "--lr", "-1"]), "lr"
    )
    expect_one_line(cli(llm_main, ["train", "--out", tmp_path / "r2"]), "model")
    # a bad line of a dataset is named by its line number in the file
    data = tmp_path / "d.jsonl"
    lines = [json.dumps({"prompt": "1+1=", "answer": "2"})] * 11 + ["{not json"]
    data.write_text("\n".join(lines[:5] + [""] + lines[5:]))
    expect_one_line(
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
    expect_one_line(
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
    expect_one_line(
        cli(llm_main, ["import", "verl", no_reward, "--out", tmp_path / "a"]),
        "reward-key",
        "critic/score/mean",
    )
    bad_cell = tmp_path / "m.csv"
    bad_cell.write_text("step,actor/entropy,critic/score/mean\n1,0.9,0.1\n2,abc,0.2\n")
    expect_one_line(
        cli(llm_main, ["import", "verl", bad_cell, "--out", tmp_path / "b"]),
        "m.csv line 3",
        "actor/entropy",
    )
    broken = tmp_path / "t.json"
    broken.write_text('{"log_history": [\n{"step": 1,}\n]}')
    expect_one_line(
        cli(llm_main, ["import", "trl", broken, "--out", tmp_path / "c"]), "t.json", "line 2"
    )


# ---------------------------------------------------------------------------------------------
# Every numeric setting of every command: a value just outside its domain is one line naming
# the flag, exit 2; the value on the boundary is accepted by the config.
# ---------------------------------------------------------------------------------------------


def _outside(domain: Domain, integer: bool) -> list:
    """Values just outside ``domain``: one step past each bound, and NaN for a real number."""
    out: list = []
    if domain.ge is not None:
        out.append(domain.ge - 1 if integer else math.nextafter(domain.ge, -math.inf))
    if domain.gt is not None:
        out.append(domain.gt)
    if domain.le is not None:
        out.append(domain.le + 1 if integer else math.nextafter(domain.le, math.inf))
    if domain.lt is not None:
        out.append(domain.lt)
    if not integer:
        out.append(math.nan)
    return out


def _inside(domain: Domain, integer: bool) -> list:
    """Values on (or, for an open bound, one step inside) each bound of ``domain``."""
    out: list = []
    if domain.ge is not None:
        out.append(int(domain.ge) if integer else domain.ge)
    if domain.gt is not None:
        out.append(int(domain.gt) + 1 if integer else math.nextafter(domain.gt, math.inf))
    if domain.le is not None:
        out.append(int(domain.le) if integer else domain.le)
    if domain.lt is not None:
        out.append(int(domain.lt) - 1 if integer else math.nextafter(domain.lt, -math.inf))
    return out


def _tuple_values(domain, integer: bool, pick) -> list[tuple]:
    """Tuples for a tuple field: each position (or the one shared domain) at ``pick``'s values,
    the others inside; for ``_outside`` also one value too few."""
    if isinstance(domain, tuple):
        base = [_inside(d, integer)[0] for d in domain]
        return [
            tuple(base[:i] + [v] + base[i + 1 :])
            for i, d in enumerate(domain)
            for v in pick(d, integer)
        ]
    fill = [_inside(domain, integer)[0]] * max(domain.min_len - 1, 0)
    values = [tuple(fill + [v]) for v in pick(domain, integer)]
    if pick is _outside and domain.min_len > 0:
        values.append(tuple(fill))  # one value too few
    return values


def _cli_text(value) -> str:
    if isinstance(value, tuple):
        return ",".join(_cli_text(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


# (command, entry point, leading arguments, config classes, rename, excluded parameters). The
# arguments that follow the command are what it needs to parse; the config is checked first.
COMMANDS = (
    ("check", st_main, [], (CheckConfig,), {}, frozenset()),
    (
        "simulate",
        st_main,
        [],
        (EnvConfig, SimConfig, AlgoConfig, PolicyLossConfig, ControlConfig),
        SIM_RENAME,
        SIM_EXCLUDE,
    ),
    (
        "sweep",
        st_main,
        [],
        (SweepGrid, EnvConfig, SimConfig, AlgoConfig, PolicyLossConfig),
        SIM_RENAME,
        SIM_EXCLUDE | {"algo", "lr"},
    ),
    ("fit", st_main, ["missing_run"], (LawConfig,), {}, frozenset()),
    ("pretrain-tiny", llm_main, ["--out", "{tmp}/tiny"], (TinyConfig,), {}, frozenset()),
    (
        "train",
        llm_main,
        ["--out", "{tmp}/run"],
        (TrainConfig, PolicyLossConfig, ControlConfig),
        TRAIN_RENAME,
        frozenset(),
    ),
    ("compare", llm_main, ["missing_run"], (LawConfig,), {}, frozenset()),
)


def _numeric_flags(rename, exclude, classes):
    """(class, field, integer, tuple, flag) for every numeric field a command offers."""
    for cls in classes:
        for f, _, integer, is_tuple in numeric_fields(cls):
            name = rename.get(f"{cls.__name__}.{f.name}", rename.get(f.name, f.name))
            if name not in exclude:
                yield cls, f, integer, is_tuple, option_flag(cls, f.name, rename)


OUTSIDE_CASES = [
    pytest.param(command, main, lead, flag, value, id=f"{command} {flag} {_cli_text(value)}")
    for command, main, lead, classes, rename, exclude in COMMANDS
    for cls, f, integer, is_tuple, flag in _numeric_flags(rename, exclude, classes)
    for value in (
        _tuple_values(f.metadata["domain"], integer, _outside)
        if is_tuple
        else _outside(f.metadata["domain"], integer)
    )
]


@pytest.fixture
def no_work(monkeypatch):
    """Whatever a command would start after its checks fails the test loudly: no model is
    loaded, nothing is trained or compared."""

    def started(*args, **kwargs):
        raise AssertionError("the command started work: the domain check did not refuse")

    stub = types.ModuleType("llm_bridge.trainer")
    stub.train = started
    monkeypatch.setitem(sys.modules, "llm_bridge.trainer", stub)
    monkeypatch.setattr(llm_bridge.tiny, "pretrain_tiny", started)
    monkeypatch.setattr(llm_bridge.compare, "compare_runs", started)
    monkeypatch.setattr(softmax_theory.cli, "law_report", started)
    monkeypatch.setattr(softmax_theory.dynamics, "simulate", started)
    monkeypatch.setattr(softmax_theory.sweep, "run_sweep", started)
    monkeypatch.setattr(softmax_theory.cli, "run_checks", started)


@pytest.mark.parametrize(("command", "main", "lead", "flag", "value"), OUTSIDE_CASES)
def test_a_value_outside_its_domain_names_the_flag(
    command, main, lead, flag, value, tmp_path, cli, no_work
):
    args = [command, *(a.format(tmp=tmp_path) for a in lead), flag, _cli_text(value)]
    result = cli(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}: "), result.output
    assert "Traceback" not in result.output


# Settings another setting must accompany for the boundary value to be accepted: the loss that
# reads a loss-specific knob, the control a control's detail needs, a divisor, a task.
def _context(cls: type, name: str) -> dict:
    if cls is PolicyLossConfig:
        if name in LOSS_SPECIFIC:
            return {"loss_mode": next(m for m, knobs in LOSS_KNOBS.items() if name in knobs)}
        return {
            "entropy_delta": {"entropy_target": 1.0},
            "entropy_adv_kappa": {"entropy_adv_alpha": 0.1},
            "loss_scale_factor": {"loss_agg_mode": "token-sum-norm"},
            "rollout_is_threshold": {"rollout_is": "token"},
        }.get(name, {})
    if name == "w_reinforce_lambda":
        return {"advantage": "w_reinforce"}
    if name == "terms":
        return {"task": "running-sum"}
    return {
        (TrainConfig, "val_samples"): {"val_k": 1},
        (TrainConfig, "prompts_per_step"): {"mini_batches": 1},
        (TrainConfig, "generate_batch_size"): {"group_size": 2},
        (TinyConfig, "hidden_size"): {"heads": 1},
    }.get((cls, name), {})


# Fields with no bound on either side: a large finite value on the side their partner allows.
UNBOUNDED = {"clip_cov_lb": -1e300, "clip_cov_ub": 1e300}

CONFIGS = (
    CheckConfig,
    EnvConfig,
    SimConfig,
    AlgoConfig,
    PolicyLossConfig,
    SweepGrid,
    LawConfig,
    TrainConfig,
    TinyConfig,
)

INSIDE_CASES = [
    pytest.param(cls, f.name, value, id=f"{cls.__name__}.{f.name}={_cli_text(value)}")
    for cls in CONFIGS
    for f, _, integer, is_tuple in numeric_fields(cls)
    for value in (
        _tuple_values(f.metadata["domain"], integer, _inside)
        if is_tuple
        else _inside(f.metadata["domain"], integer) or [UNBOUNDED[f.name]]
    )
]


@pytest.mark.parametrize(("cls", "name", "value"), INSIDE_CASES)
def test_the_boundary_of_a_domain_is_accepted(cls, name, value):
    config = cls(**_context(cls, name), **{name: value})
    assert getattr(config, name) == value


def _is_number(annotation) -> bool:
    """int or float, bare, optional or inside ``Annotated`` (bool is no number here)."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else None
    return annotation in (int, float)


def test_every_command_and_numeric_field_is_walked():
    """The walk above covers every command that builds a config and every numeric option of
    each (a plain typer option that is a number would escape the domains); every config class
    behind them declares a domain for each numeric field."""
    walked = {c[0]: c for c in COMMANDS}
    seen = set()
    for app in (st_app, llm_app):
        for info in app.registered_commands:
            name = info.name or info.callback.__name__.replace("_", "-")
            seen.add(name)
            assert name in walked, name
            _, _, _, classes, rename, exclude = walked[name]
            flags = {flag for *_, flag in _numeric_flags(rename, exclude, classes)}
            for param in inspect.signature(info.callback).parameters.values():
                if _is_number(param.annotation):
                    assert "--" + param.name.replace("_", "-") in flags, (name, param.name)
    assert seen == set(walked)
    for cls in CONFIGS:
        for f, *_ in numeric_fields(cls):
            assert "domain" in f.metadata, f"{cls.__name__}.{f.name}"


def test_cross_field_rules_name_the_flag(tmp_path, cli, no_work):
    """Rules between settings live beside the domains and are refused before any work."""
    expect_one_line(cli(st_main, ["check", "--bandit-actions", "1"]), "--bandit-actions", "≥ 2")
    expect_one_line(cli(st_main, ["fit", "x", "--fit-fraction", "1.5"]), "--fit-fraction")
    expect_one_line(
        cli(llm_main, ["train", "--out", tmp_path / "r", "--val-prompts", "0", "--val-every", "1"]),
        "--val-prompts",
    )
    expect_one_line(
        cli(llm_main, ["train", "--out", tmp_path / "r", "--mini-batches", "3"]),
        "--mini-batches",
        "prompts_per_step",
    )
    expect_one_line(cli(st_main, ["simulate", "--steps", "5", "--cov-table", "5"]), "--cov-table")
    expect_one_line(
        cli(llm_main, ["pretrain-tiny", "--out", tmp_path / "m", "--heads", "3"]), "--heads"
    )
