"""Results do not move when code moves: one probed run of each engine, with two updates a step
and with one, writes the run log that the code wrote before the engines shared one step setup,
record and probe (``tests/llm/golden/``, from ``golden_runs.py``): byte for byte but for the
clock's keys, and the forecast keys to rounding (they are now computed before each update from
the optimiser's would-be Δθ; the golden TRL runs, and our engine's two-update runs, took
θ_new − θ_old after the step, which is the sum of those Δθ up to float rounding)."""

import json

import pytest

from tests.llm.golden_runs import (
    FORECAST_KEYS,
    GOLDEN,
    RUNS,
    comparable,
    golden_model,
    run_golden,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return golden_model(tmp_path_factory.mktemp("golden") / "tiny")


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
        assert list(row) == list(expected), row["step"]  # the same keys, in the same order
        for key in FORECAST_KEYS:
            if expected[key] is None:
                assert row[key] is None, key
            else:
                assert row[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-9), key
        exact = {k: v for k, v in row.items() if k not in FORECAST_KEYS}
        assert json.dumps(exact) == json.dumps(
            {k: v for k, v in expected.items() if k not in FORECAST_KEYS}
        )
    tables = (run / "cov_tables.jsonl").read_text()
    assert tables == (GOLDEN / f"{engine}-{name}.cov_tables.jsonl").read_text()
