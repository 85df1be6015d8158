"""The entropy–performance law: exact fit, forecast, bootstrap coverage, scaling, runs, CLI."""

import json

import numpy as np
import pytest
from scipy.optimize import lsq_linear

from softmax_theory.cli import main
from softmax_theory.law import (
    _fit_many,
    bootstrap_entropy_law,
    fit_coefficient_scaling,
    fit_entropy_law,
    forecast_entropy_law,
    series_from_csv,
    series_from_run,
)
from softmax_theory.runlog import RunWriter, read_run


def _curve(a, b, n=60, sigma=0.0, seed=0):
    rng = np.random.default_rng(seed)
    h = np.linspace(1.5, 0.1, n)
    return h, -a * np.exp(h) + b + sigma * rng.standard_normal(n)


def test_exact_curve_is_recovered():
    h, r = _curve(0.2, 1.0)
    fit = fit_entropy_law(h, r)
    assert fit.a == pytest.approx(0.2, abs=1e-12)
    assert fit.b == pytest.approx(1.0, abs=1e-12)
    assert fit.ceiling == pytest.approx(0.8)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.rmse < 1e-12
    assert fit.holds
    np.testing.assert_allclose(fit.predict([0.0, np.log(2)]), [0.8, 0.6])


def test_by_hand_three_points():
    # e^H = 1, 2, 3 with R = 3, 2, 1: R = −1·e^H + 4 exactly.
    fit = fit_entropy_law(np.log([1.0, 2.0, 3.0]), [3.0, 2.0, 1.0])
    assert (fit.a, fit.b, fit.ceiling) == pytest.approx((1.0, 4.0, 3.0))


@pytest.mark.parametrize("seed", range(5))
def test_closed_form_equals_scipy_bounded_least_squares(seed):
    rng = np.random.default_rng(seed)
    h = rng.uniform(0.0, 2.0, 20)
    r = rng.standard_normal(20) + (0.5 if seed % 2 else -0.5) * np.exp(h)  # some have a < 0
    ref = lsq_linear(
        np.column_stack([-np.exp(h), np.ones_like(h)]),
        r,
        bounds=([0.0, -np.inf], [np.inf, np.inf]),
        tol=1e-14,
    )
    a, b = _fit_many(np.exp(h)[None], r[None])
    np.testing.assert_allclose([a[0], b[0]], ref.x, rtol=1e-8, atol=1e-10)


def test_a_law_that_does_not_hold_is_flagged():
    # reward falls as entropy falls: the constrained fit sits at a = 0
    h = np.linspace(2.0, 0.5, 10)
    fit = fit_entropy_law(h, 0.1 * np.exp(h))
    assert fit.a == 0.0
    assert not fit.holds


def test_forecast_from_the_first_fraction():
    h, r = _curve(0.3, 0.9, n=100, sigma=0.0)
    fc = forecast_entropy_law(h, r, fit_fraction=0.15)
    assert fc.n_fit == 15
    assert fc.predicted.shape == (85,)
    assert fc.rmse < 1e-10 and abs(fc.final_error) < 1e-10
    # a curve that bends away from the law after the window is not forecast well
    r_bent = r.copy()
    r_bent[50:] -= 0.2
    assert forecast_entropy_law(h, r_bent).rmse > 0.1


def test_bootstrap_interval_covers_the_truth_about_95_percent():
    a_true, b_true, hits, trials = 0.25, 0.9, 0, 200
    ceiling_hits = 0
    for seed in range(trials):
        h, r = _curve(a_true, b_true, n=40, sigma=0.02, seed=seed)
        ci = bootstrap_entropy_law(h, r, n_boot=300, rng=np.random.default_rng(10_000 + seed))
        fit = fit_entropy_law(h, r)
        assert ci.a[0] <= fit.a <= ci.a[1]
        hits += ci.a[0] <= a_true <= ci.a[1] and ci.b[0] <= b_true <= ci.b[1]
        ceiling_hits += ci.ceiling[0] <= b_true - a_true <= ci.ceiling[1]
    # a and b are strongly correlated, so the joint rate is close to each marginal one;
    # the percentile bootstrap under-covers slightly at n = 40.
    assert 0.85 <= hits / trials <= 0.99
    assert 0.85 <= ceiling_hits / trials <= 0.99


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least 3"):
        fit_entropy_law([1.0, 2.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="reward"):
        fit_entropy_law([1.0, 2.0, 3.0], [0.1, np.nan, 0.2])
    with pytest.raises(ValueError, match="constant"):
        fit_entropy_law([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="lengths differ"):
        fit_entropy_law([1.0, 2.0, 3.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="fit_fraction"):
        forecast_entropy_law(*_curve(0.2, 1.0, n=10), fit_fraction=0.15)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_entropy_law(*_curve(0.2, 1.0), n_boot=2)


def test_coefficient_scaling_log_linear():
    sizes = np.array([0.5, 1.5, 3.0, 7.0])
    values = 0.1 * np.log(sizes) + 0.4
    fit = fit_coefficient_scaling(sizes, values)
    assert (fit.slope, fit.intercept, fit.r2) == pytest.approx((0.1, 0.4, 1.0))
    assert fit.predict(32.0) == pytest.approx(0.1 * np.log(32) + 0.4)
    with pytest.raises(ValueError, match="positive"):
        fit_coefficient_scaling([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])


def _write_run(path, h, r, val_every=None):
    with RunWriter(path, {"algo": "test"}) as w:
        for i, (hi, ri) in enumerate(zip(h, r, strict=True)):
            rec = {"step": i, "entropy": hi, "reward": ri - 0.05}
            if val_every and i % val_every == 0:
                rec["val_reward"] = ri
            w.write(rec)


def test_series_prefers_val_reward(tmp_path):
    h, r = _curve(0.2, 1.0, n=30)
    _write_run(tmp_path / "run", h, r, val_every=3)
    series = series_from_run(read_run(tmp_path / "run"))
    assert series.reward_key == "val_reward"
    assert series.steps.tolist() == list(range(0, 30, 3))
    np.testing.assert_allclose(series.reward, r[::3])


def test_a_torn_last_line_is_named_not_read_past(tmp_path):
    h, r = _curve(0.2, 1.0, n=10)
    _write_run(tmp_path / "run", h, r)
    with open(tmp_path / "run" / "steps.jsonl", "a") as f:
        f.write('{"step": 10, "entr')
    with pytest.raises(ValueError, match=r"steps.jsonl line 11 is torn"):
        read_run(tmp_path / "run")


def test_run_writer_refuses_nan_and_overwrites(tmp_path):
    w = RunWriter(tmp_path / "r", {})
    with pytest.raises(ValueError, match="non-finite"):
        w.write({"step": 0, "entropy": float("nan")})
    w.write({"step": 0, "entropy": 1.0})
    w.close()
    with pytest.raises(FileExistsError):
        RunWriter(tmp_path / "r", {})


def test_csv_series(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,ent,acc\n2,0.5,0.7\n0,1.0,0.5\n1,0.8,\n3,0.3,0.8\n")
    s = series_from_csv(path, entropy_col="ent", reward_col="acc")
    assert s.steps.tolist() == [0, 2, 3]
    assert s.entropy.tolist() == [1.0, 0.5, 0.3]
    with pytest.raises(ValueError, match="entropy-col"):
        series_from_csv(path, entropy_col="H", reward_col="acc")


def test_cli_fit(tmp_path, cli):
    h, r = _curve(0.2, 1.0, n=60, sigma=0.01)
    _write_run(tmp_path / "run", h, r)
    out = tmp_path / "out"
    result = cli(main, ["fit", str(tmp_path / "run"), "--n-boot", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "law.json").read_text())[0]
    assert data["a"] == pytest.approx(0.2, abs=0.05)
    assert data["forecast"]["n_fit"] == 9
    assert (out / "law.png").stat().st_size > 1000


def test_cli_fit_reports_bad_runs(tmp_path, cli):
    result = cli(main, ["fit", str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "is not a run directory" in result.stderr
