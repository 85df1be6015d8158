"""The sweep writes each cell as it ends, keeps its work when interrupted, and resumes."""

import numpy as np
import pytest

from softmax_theory import AlgoConfig, EnvConfig, SimConfig
from softmax_theory.stats import relative_errors
from softmax_theory.sweep import run_sweep

ENV = EnvConfig(name="bandit", actions=6)
BASE = SimConfig(steps=15, algo=AlgoConfig(algo="grpo"))


def test_an_interrupted_sweep_keeps_its_cells_and_resume_finishes_it(tmp_path):
    full, _ = run_sweep(ENV, ["npg", "grpo"], [0.1, 1.0], 2, BASE, out=tmp_path / "full")
    calls = []

    def interrupt_after_three(cell, read_back):
        calls.append(cell)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(
            ENV,
            ["npg", "grpo"],
            [0.1, 1.0],
            2,
            BASE,
            out=tmp_path / "s",
            on_run=interrupt_after_three,
        )
    assert len((tmp_path / "s" / "sweep.csv").read_text().splitlines()) == 1 + 3
    resumed_cells = []
    rows, _ = run_sweep(
        ENV,
        ["npg", "grpo"],
        [0.1, 1.0],
        2,
        BASE,
        out=tmp_path / "s",
        resume=True,
        on_run=lambda cell, read_back: resumed_cells.append(read_back),
    )
    assert resumed_cells == [True] * 3 + [False] * 3
    assert rows == full
    with pytest.raises(FileExistsError, match="already holds a sweep"):
        run_sweep(ENV, ["npg"], [0.1], 1, BASE, out=tmp_path / "s")
    with pytest.raises(ValueError, match="resume:.*steps 15 → 20"):
        run_sweep(ENV, ["npg"], [0.1], 1, SimConfig(steps=20), out=tmp_path / "s", resume=True)


def test_relative_error_is_not_taken_between_numerical_zeros():
    # converged: ΔH and its prediction are both far below float64 resolution of H ≈ 1e-3
    rel = relative_errors(np.array([1e-84, 0.02]), np.array([-4e-34, 0.021]), np.array([1e-3, 1.0]))
    assert np.isnan(rel[0]) and rel[1] == pytest.approx(0.05)
