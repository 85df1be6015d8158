"""The entropy–performance law R = −a·e^H + b: fit, ceiling, forecast, bootstrap, scaling.

Cui et al. 2025, §2 (eq. 1 there): without entropy intervention, validation reward follows
R = −a·exp(H) + b as entropy H falls; the ceiling is R(H = 0) = b − a. Given x = e^H the law is
linear in (a, b), so least squares is solved in closed form (no iterative optimiser); a is
constrained to a ≥ 0, and a fit that lands on a = 0 says the law does not hold for that run.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from softmax_theory.inputs import Domain, check_domains
from softmax_theory.runlog import RunLog

MIN_POINTS = 3
# The paper fits on the first ~15% of validation points (36 of 236) and predicts the rest.
PAPER_FIT_FRACTION = 0.15
N_BOOT = 1000
MIN_BOOT = 10
LEVEL = 0.95


@dataclass(frozen=True)
class LawConfig:
    """How a law report is made (``softmax-theory fit``, ``llm-bridge compare``); the only home
    of these defaults and domains."""

    # the forecast needs points to fit and points to predict
    fit_fraction: float = field(
        default=PAPER_FIT_FRACTION,
        metadata={
            "help": "share of points (in step order) the forecast is fitted on",
            "domain": Domain(gt=0, lt=1),
        },
    )
    n_boot: int = field(
        default=N_BOOT,
        metadata={"help": "bootstrap resamples for the intervals", "domain": Domain(ge=MIN_BOOT)},
    )
    seed: int = field(default=0, metadata={"help": "seed of the bootstrap", "domain": Domain(ge=0)})

    def __post_init__(self) -> None:
        check_domains(self)


def _paired(x: np.ndarray, y: np.ndarray, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Two 1-D float64 series of equal length ≥ MIN_POINTS, all finite; errors name them."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    b = np.asarray(y, dtype=np.float64).reshape(-1)
    if a.size != b.size:
        raise ValueError(f"{names[0]}, {names[1]}: lengths differ ({a.size} vs {b.size})")
    if a.size < MIN_POINTS:
        raise ValueError(f"{names[0]}: need at least {MIN_POINTS} points to fit, got {a.size}")
    for name, v in zip(names, (a, b), strict=True):
        if not np.isfinite(v).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
    return a, b


def _check_series(entropy: np.ndarray, reward: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, r = _paired(entropy, reward, ("entropy", "reward"))
    if np.ptp(h) == 0:
        raise ValueError("entropy: constant over the run, so a and b cannot be separated")
    if h.max() > 700:
        raise ValueError(f"entropy: {h.max():g} nats overflows exp(H); entropy must be in nats")
    return h, r


def _fit_many(x: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of r ≈ −a·x + b with a ≥ 0, for each row of x, r: [B, n] → a, b [B].

    Unconstrained: a = −Cov(x, r)/Var(x), b = mean r + a·mean x. The objective is a convex
    quadratic, so when that a is negative the constrained optimum lies on a = 0, where
    b = mean r.
    """
    xm = x.mean(axis=1, keepdims=True)
    rm = r.mean(axis=1)
    xc = x - xm
    var = (xc * xc).sum(axis=1)
    a = np.where(var > 0, -(xc * (r - rm[:, None])).sum(axis=1) / np.where(var > 0, var, 1), 0.0)
    a = np.maximum(a, 0.0)
    b = rm + a * xm[:, 0]
    return a, b


@dataclass(frozen=True)
class LawFit:
    """R = −a·e^H + b fitted on ``n`` points."""

    a: float
    b: float
    rmse: float
    r2: float | None  # None when reward is constant (nothing to explain)
    n: int

    @property
    def ceiling(self) -> float:
        """R at H = 0: b − a."""
        return self.b - self.a

    @property
    def holds(self) -> bool:
        """False when the fit sits on a = 0: reward does not rise as entropy falls."""
        return self.a > 0

    def predict(self, entropy: np.ndarray) -> np.ndarray:
        return -self.a * np.exp(np.asarray(entropy, dtype=np.float64)) + self.b


def fit_entropy_law(entropy: np.ndarray, reward: np.ndarray) -> LawFit:
    """Fit R = −a·exp(H) + b (a ≥ 0) by exact least squares. Cui et al. 2025, §2.

    Args:
      entropy: H per evaluation, nats, shape [n], n ≥ 3, not constant.
      reward: R at the same evaluations, shape [n].
    """
    h, r = _check_series(entropy, reward)
    a, b = _fit_many(np.exp(h)[None], r[None])
    resid = r - (-a[0] * np.exp(h) + b[0])
    ss_tot = float(((r - r.mean()) ** 2).sum())
    r2 = None if ss_tot == 0 else 1.0 - float((resid**2).sum()) / ss_tot
    return LawFit(
        a=float(a[0]),
        b=float(b[0]),
        rmse=float(np.sqrt((resid**2).mean())),
        r2=r2,
        n=int(h.size),
    )


@dataclass(frozen=True)
class LawInterval:
    """Percentile bootstrap intervals (resampling (H, R) pairs) at ``level``."""

    a: tuple[float, float]
    b: tuple[float, float]
    ceiling: tuple[float, float]
    level: float
    n_boot: int


def bootstrap_entropy_law(
    entropy: np.ndarray,
    reward: np.ndarray,
    n_boot: int = N_BOOT,
    rng: np.random.Generator | None = None,
    level: float = LEVEL,
) -> LawInterval:
    """Bootstrap intervals for a, b and the ceiling b − a (the paper gives none).

    Args:
      n_boot: resamples, ≥ 10.
      rng: the source of randomness; a fresh ``default_rng(0)`` when omitted.
      level: coverage of the two-sided percentile interval, in (0, 1).
    """
    h, r = _check_series(entropy, reward)
    if n_boot < MIN_BOOT:
        raise ValueError(f"n_boot: need at least {MIN_BOOT} resamples, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level: must lie in (0, 1), got {level}")
    rng = np.random.default_rng(0) if rng is None else rng
    idx = rng.integers(0, h.size, size=(n_boot, h.size))  # (n_boot, n)
    a, b = _fit_many(np.exp(h)[idx], r[idx])
    tail = 100 * (1 - level) / 2

    def interval(x: np.ndarray) -> tuple[float, float]:
        lo, hi = np.percentile(x, [tail, 100 - tail])
        return float(lo), float(hi)

    return LawInterval(
        a=interval(a), b=interval(b), ceiling=interval(b - a), level=level, n_boot=n_boot
    )


@dataclass(frozen=True)
class LawForecast:
    """A fit on the first ``n_fit`` points and its prediction of the rest."""

    fit: LawFit
    n_fit: int
    predicted: np.ndarray  # reward predicted for points n_fit … n−1
    actual: np.ndarray
    rmse: float  # over the predicted points
    final_error: float  # predicted − actual at the last point


def forecast_entropy_law(
    entropy: np.ndarray, reward: np.ndarray, fit_fraction: float = PAPER_FIT_FRACTION
) -> LawForecast:
    """Fit on the first ``fit_fraction`` of points (step order) and predict the rest.

    The paper fits on roughly the first 15% of validation points and reports the RMSE of the
    prediction of the remaining ones (0.9% math, 1.2% code).
    """
    h, r = _check_series(entropy, reward)
    if not 0 < fit_fraction < 1:
        raise ValueError(f"fit_fraction: must lie in (0, 1), got {fit_fraction}")
    n_fit = int(math.floor(fit_fraction * h.size))
    if n_fit < MIN_POINTS:
        raise ValueError(
            f"fit_fraction: {fit_fraction} of {h.size} points leaves {n_fit} to fit; need "
            f"{MIN_POINTS} (more points or a larger fraction)"
        )
    if n_fit >= h.size:
        raise ValueError(f"fit_fraction: leaves no point to predict out of {h.size}")
    if np.ptp(h[:n_fit]) == 0:
        raise ValueError("entropy: constant over the fit window, so a and b cannot be separated")
    fit = fit_entropy_law(h[:n_fit], r[:n_fit])
    predicted = fit.predict(h[n_fit:])
    actual = r[n_fit:]
    return LawForecast(
        fit=fit,
        n_fit=n_fit,
        predicted=predicted,
        actual=actual,
        rmse=float(np.sqrt(((predicted - actual) ** 2).mean())),
        final_error=float(predicted[-1] - actual[-1]),
    )


@dataclass(frozen=True)
class ScalingFit:
    """value = slope·ln(size) + intercept (the paper's Fig. 7, log-linear in model size)."""

    slope: float
    intercept: float
    r2: float

    def predict(self, model_size: float | np.ndarray) -> np.ndarray:
        size = np.asarray(model_size, dtype=np.float64)
        if (size <= 0).any():
            raise ValueError("model_size: must be positive")
        return self.slope * np.log(size) + self.intercept


def fit_coefficient_scaling(model_sizes: np.ndarray, values: np.ndarray) -> ScalingFit:
    """Fit a (or b) against model size: value = k·ln(N) + c. Cui et al. 2025, Fig. 7.

    Args:
      model_sizes: N > 0 (e.g. non-embedding parameters in billions), shape [m], m ≥ 3.
      values: the coefficient fitted at each size, shape [m].
    """
    n, v = _paired(model_sizes, values, ("model_sizes", "values"))
    if (n <= 0).any():
        raise ValueError("model_sizes: must be positive")
    if np.ptp(n) == 0:
        raise ValueError("model_sizes: all equal; need at least two distinct sizes")
    res = stats.linregress(np.log(n), v)
    return ScalingFit(
        slope=float(res.slope), intercept=float(res.intercept), r2=float(res.rvalue**2)
    )


# ---------------------------------------------------------------------------------------------
# Series from runs and CSV files
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LawSeries:
    """(step, entropy, reward) points in step order, which reward key they use, and why."""

    name: str
    steps: np.ndarray
    entropy: np.ndarray
    reward: np.ndarray
    reward_key: str
    note: str | None = None  # why this key, when it is not the one asked for or the usual one
    reward_max: float | None = None  # the task's largest possible reward, when the run says


def series_from_run(run: RunLog, reward_key: str | None = None) -> LawSeries:
    """Entropy and reward from a run log.

    With ``reward_key`` that key; otherwise ``val_reward`` where the run has at least
    ``MIN_POINTS`` of them (the paper fits validation reward), else ``reward`` with a note.
    """
    note = None
    if reward_key is None:
        n_val = sum(1 for s in run.steps if "val_reward" in s and "entropy" in s)
        reward_key = "val_reward" if n_val >= MIN_POINTS else "reward"
        if 0 < n_val < MIN_POINTS:
            note = (
                f"{n_val} validation point(s) are too few to fit; using the training reward "
                "(--reward-col val_reward to insist)"
            )
    rows = [s for s in run.steps if reward_key in s and "entropy" in s]
    if not rows:
        keys = sorted({k for s in run.steps for k in s if "reward" in k or "pass@" in k})
        raise ValueError(
            f"reward-col: {run.path} has no step with both 'entropy' and '{reward_key}' "
            f"(its reward keys: {', '.join(keys) or 'none'})"
        )
    rows.sort(key=lambda s: s["step"])
    return LawSeries(
        name=run.name,
        steps=np.array([s["step"] for s in rows]),
        entropy=np.array([s["entropy"] for s in rows], dtype=np.float64),
        reward=np.array([s[reward_key] for s in rows], dtype=np.float64),
        reward_key=reward_key,
        note=note,
        reward_max=run.config.get("reward_max"),
    )


def series_from_csv(
    path: str | os.PathLike,
    entropy_col: str = "entropy",
    reward_col: str = "reward",
    step_col: str | None = "step",
) -> LawSeries:
    """Entropy and reward columns of a CSV file; rows missing either value are skipped."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for flag, col in (("entropy-col", entropy_col), ("reward-col", reward_col)):
            if col not in columns:
                raise ValueError(f"{flag}: column {col!r} not in {path} (columns: {columns})")
        use_step = step_col is not None and step_col in columns
        rows = [row for row in reader if row[entropy_col] not in ("", None)]
        rows = [row for row in rows if row[reward_col] not in ("", None)]
    steps = np.array([float(r[step_col]) if use_step else i for i, r in enumerate(rows)])
    order = np.argsort(steps, kind="stable")
    return LawSeries(
        name=os.path.basename(os.fspath(path)),
        steps=steps[order],
        entropy=np.array([float(r[entropy_col]) for r in rows])[order],
        reward=np.array([float(r[reward_col]) for r in rows])[order],
        reward_key=reward_col,
    )


@dataclass(frozen=True)
class LawReport:
    """Everything `softmax-theory fit` says about one run."""

    series: LawSeries
    fit: LawFit
    interval: LawInterval
    forecast: LawForecast | None
    forecast_error: str | None  # why there is no forecast, when there is none
    warnings: tuple[str, ...] = ()  # what a reader must know before trusting the numbers


# Fewer points than this: the fit is reported with a warning.
FEW_POINTS = 10


def law_warnings(series: LawSeries, fit: LawFit, forecast: LawForecast | None) -> list[str]:
    """What makes a fit untrustworthy, in words: too few points, a ceiling beyond any reward
    seen or possible, a forecast that leaves the range of rewards seen."""
    out = []
    if fit.n < FEW_POINTS:
        out.append(f"only {fit.n} points: the fit and its intervals are rough")
    lo, hi = float(series.reward.min()), float(series.reward.max())
    if fit.holds and fit.ceiling > hi:
        out.append(
            f"the ceiling b − a = {fit.ceiling:.4g} exceeds the largest reward seen ({hi:.4g})"
        )
    if fit.holds and series.reward_max is not None and fit.ceiling > series.reward_max:
        out.append(
            f"the ceiling b − a = {fit.ceiling:.4g} exceeds the task's maximum reward "
            f"({series.reward_max:g}): it is not reachable"
        )
    if forecast is not None:
        outside = (forecast.predicted < lo) | (forecast.predicted > hi)
        if outside.any():
            out.append(
                f"the forecast leaves the range of rewards seen [{lo:.4g}, {hi:.4g}] at "
                f"{int(outside.sum())} of {outside.size} points"
            )
    return out


def law_report(
    series: LawSeries,
    fit_fraction: float = PAPER_FIT_FRACTION,
    n_boot: int = N_BOOT,
    rng: np.random.Generator | None = None,
) -> LawReport:
    """Fit, bootstrap and forecast one series; a forecast that cannot be made says why."""
    fit = fit_entropy_law(series.entropy, series.reward)
    interval = bootstrap_entropy_law(series.entropy, series.reward, n_boot=n_boot, rng=rng)
    try:
        forecast, reason = forecast_entropy_law(series.entropy, series.reward, fit_fraction), None
    except ValueError as err:
        forecast, reason = None, str(err)
    return LawReport(
        series=series,
        fit=fit,
        interval=interval,
        forecast=forecast,
        forecast_error=reason,
        warnings=tuple(law_warnings(series, fit, forecast)),
    )
