"""Results do not move when code moves: one probed run of each engine, with two updates a step
and with one, writes the run log that the code wrote before the engines shared one step setup,
record and probe (``tests/llm/golden/``, from ``golden_runs.py``): every key, every count and
label exactly, every float to 1e-5 absolute or 1e-4 relative, but for the clock's keys.

Why floats get a tolerance: the golden logs were written on one CPU, and torch's CPU kernels
pick their code path by the instruction set, so the same seeded run on another CPU differs at
float32 rounding (measured on a second CPU, the old code and the new alike: at most 1.1e-6
absolute over every float of the four runs; relative up to 1.4e-2 only on values near zero that
are differences, e.g. ``delta_entropy`` 2e-5). A change of meaning (a normaliser, a sign, a key)
moves the values, whose sizes are 1e-4 and up, by more than ten times that.
Differences the merge made on purpose, held here:

- the keys of a record now stand in one order in both engines (``step_record``), so records are
  compared as objects, not as lines;
- the forecast keys (``pred_jvp``, ``token_corr/jvp``) are now computed before each update
  from the optimiser's would-be Δθ; the golden TRL runs, and our engine's two-update runs, took
  θ_new − θ_old after the step, which is the sum of those Δθ up to float rounding;
- our engine's covariance table is now computed in float64 as the TRL engine's was (it was
  float32), so its values agree to float32 rounding.
"""

import json

import pytest

from tests.llm.golden_runs import (
    GOLDEN,
    RUNS,
    comparable,
    golden_model,
    run_golden,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return golden_model(tmp_path_factory.mktemp("golden") / "tiny")


REL, ABS = 1e-4, 1e-5  # float32 rounding across CPUs, amplified over a few updates


def assert_close(value, expected, where: str) -> None:
    """``value`` equals ``expected``: floats to ``ABS`` or ``REL``, everything else (counts, labels,
    None, the structure of lists and objects) exactly."""
    if isinstance(expected, float) and isinstance(value, int | float):
        assert value == pytest.approx(expected, rel=REL, abs=ABS), where
    elif isinstance(expected, list):
        assert isinstance(value, list) and len(value) == len(expected), where
        for i, (v, e) in enumerate(zip(value, expected, strict=True)):
            assert_close(v, e, f"{where}[{i}]")
    elif isinstance(expected, dict):
        assert isinstance(value, dict) and sorted(value) == sorted(expected), where
        for k in expected:
            assert_close(value[k], expected[k], f"{where}.{k}")
    else:
        assert value == expected, where


@pytest.mark.parametrize("name", sorted(RUNS))
@pytest.mark.parametrize("engine", ["ours", "trl"])
def test_a_probed_run_writes_the_golden_run_log(model, tmp_path, engine, name):
    if engine == "trl":
        pytest.importorskip("trl")
    run = run_golden(model, engine, name, tmp_path / "run")
    golden = (GOLDEN / f"{engine}-{name}.steps.jsonl").read_text().splitlines()
    rows = (run / "steps.jsonl").read_text().splitlines()
    assert len(rows) == len(golden)
    for line, expected_line in zip(rows, golden, strict=True):
        row, expected = comparable(line), json.loads(expected_line)
        assert_close(row, expected, f"step {expected['step']}")
    tables = [json.loads(t) for t in (run / "cov_tables.jsonl").read_text().splitlines()]
    expected_tables = [
        json.loads(t)
        for t in (GOLDEN / f"{engine}-{name}.cov_tables.jsonl").read_text().splitlines()
    ]
    assert_close(tables, expected_tables, "cov_tables")
