"""The simulator: run log contract, determinism, collapse, controls, tables, CLI."""

import json

import numpy as np
import pytest

from softmax_theory.algorithms import AlgoConfig
from softmax_theory.cli import main
from softmax_theory.dynamics import SimConfig, simulate
from softmax_theory.envs import EnvConfig, make_env
from softmax_theory.policy import PolicyLossConfig
from softmax_theory.runlog import read_run

CONTEXTUAL = make_env(EnvConfig(name="contextual"))


def _grpo(steps=150, lr=0.5, seed=0, **loss):
    return SimConfig(
        steps=steps,
        lr=lr,
        seed=seed,
        algo=AlgoConfig(algo="grpo", policy_loss=PolicyLossConfig(**loss)),
    )


def test_run_directory_follows_the_contract(tmp_path):
    res = simulate(CONTEXTUAL, _grpo(steps=5), out=tmp_path / "run")
    run = read_run(tmp_path / "run")
    assert run.config["env"] == "contextual-32x16"
    assert run.config["algo"]["policy_loss"]["loss_mode"] == "vanilla"
    assert [s["step"] for s in run.steps] == list(range(5))
    for rec in run.steps:
        for key in (
            "entropy",
            "reward",
            "entropy_after",
            "delta_entropy",
            "pred_lemma1",
            "pred_pg",
            "pred_npg",
            "cov_mean",
            "lr",
            "algo",
        ):
            assert key in rec
        assert rec["delta_entropy"] == pytest.approx(rec["entropy_after"] - rec["entropy"])
        assert rec["delta_entropy"] == pytest.approx(rec["delta_within"] + rec["delta_shift"])
    # the next step starts where the last one ended
    for a, b in zip(run.steps, run.steps[1:], strict=False):
        assert b["entropy"] == pytest.approx(a["entropy_after"])
    assert res.final_entropy == pytest.approx(run.steps[-1]["entropy_after"])


def test_exact_algorithms_record_no_sampled_covariance():
    res = simulate(CONTEXTUAL, SimConfig(steps=3, algo=AlgoConfig(algo="npg")))
    assert all("cov_mean" not in r for r in res.records)


def test_fixed_seed_gives_an_identical_run():
    a = simulate(CONTEXTUAL, _grpo(steps=20, seed=3, loss_mode="clip_cov", clip_cov_ratio=0.05))
    b = simulate(CONTEXTUAL, _grpo(steps=20, seed=3, loss_mode="clip_cov", clip_cov_ratio=0.05))
    assert a.records == b.records
    c = simulate(CONTEXTUAL, _grpo(steps=20, seed=4))
    assert a.records != c.records


def test_lemma1_tracks_every_step_at_a_small_step_size():
    for algo in ("pg", "npg", "grpo", "reinforce"):
        env = make_env(EnvConfig(name="tree"))
        res = simulate(env, SimConfig(steps=40, lr=0.05, algo=AlgoConfig(algo=algo)))
        within, pred = res.series("delta_within"), res.series("pred_lemma1")
        assert np.corrcoef(within, pred)[0, 1] > 0.999, algo
        # in the MDP the state distribution moves too: measured total ≠ within
        assert np.abs(res.series("delta_shift")).max() > 0


@pytest.mark.parametrize("algo,lr", [("pg", 5.0), ("npg", 0.5), ("grpo", 0.5)])
def test_without_control_entropy_collapses_while_reward_rises(algo, lr):
    res = simulate(CONTEXTUAL, SimConfig(steps=300, lr=lr, algo=AlgoConfig(algo=algo)))
    h, r = res.series("entropy"), res.series("reward")
    assert res.final_entropy < 0.6 * h[0]
    assert res.final_reward > r[0] + 0.3
    # saturation: the last third gains far less than the first third
    third = len(r) // 3
    assert r[-1] - r[-third] < 0.5 * (r[third] - r[0])


def test_cov_controls_keep_entropy_higher_than_vanilla():
    def final_h(**loss):
        return np.mean(
            [simulate(CONTEXTUAL, _grpo(steps=200, seed=s, **loss)).final_entropy for s in range(3)]
        )

    vanilla = final_h()
    assert final_h(loss_mode="clip_cov", clip_cov_ratio=0.1) > vanilla + 0.1
    assert final_h(loss_mode="kl_cov", kl_cov_ratio=0.1) > vanilla + 0.05


def test_cov_table_and_fig8_view():
    cfg = SimConfig(steps=3, lr=0.5, algo=AlgoConfig(algo="grpo"), cov_table_steps=(0,))
    res = simulate(CONTEXTUAL, cfg)
    (t,) = res.cov_tables
    means = list(t.top_means.values())
    assert means == sorted(means, reverse=True)  # top groups have larger mean covariance
    assert t.n_tokens == 32 * 8
    assert len(t.prompt_accuracy) == len(t.prompt_cov) == 32


def test_cli_simulate_and_sweep(tmp_path, cli):
    result = cli(
        main,
        [
            "simulate",
            "--env",
            "bandit",
            "--actions",
            "8",
            "--algo",
            "grpo",
            "--steps",
            "10",
            "--loss",
            "kl_cov",
            "--kl-cov-ratio",
            "0.1",
            "--cov-table",
            "0",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "cov_tables.json").exists()
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["algo"]["policy_loss"]["kl_cov_ratio"] == 0.1
    result = cli(
        main,
        [
            "sweep",
            "--env",
            "tree",
            "--vocab",
            "3",
            "--horizon",
            "2",
            "--algos",
            "pg,grpo",
            "--lrs",
            "0.1,1",
            "--steps",
            "10",
            "--seeds",
            "2",
            "--out",
            str(tmp_path / "sweep"),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    # pg is exact (it samples nothing): one run per η; grpo: one per η and seed
    assert len(lines) == 1 + 2 + 2 * 2
    assert {line.split(",")[2] for line in lines[1:]} == {"0", "1"}  # the real seeds
    assert (tmp_path / "sweep" / "config.json").exists()
    assert len(list((tmp_path / "sweep" / "runs").iterdir())) == 6
    for fig in ("curves.png", "delta_scatter.png", "error_vs_lr.png"):
        assert (tmp_path / "sweep" / fig).stat().st_size > 1000


def test_cli_names_bad_options(cli):
    result = cli(main, ["simulate", "--lr", "-1"])
    assert result.exit_code != 0 and "lr" in result.output
    result = cli(main, ["sweep", "--algos", "pg,ppo"])
    assert result.exit_code != 0 and "ppo" in result.output


def test_top_covariance_means_by_hand():
    from softmax_theory.stats import top_covariance_means

    top = top_covariance_means(np.arange(10.0))  # 0 … 9, order does not matter
    assert top == {
        "top 0.02%": 9.0,
        "top 0.2%": 9.0,
        "top 2%": 9.0,
        "top 20%": 8.5,
        "top 50%": 7.0,
        "all": 4.5,
    }
