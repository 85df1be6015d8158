"""Run logs against the theory: correlations, errors, the law, and a report with figures.

Reads any run directory of the shared format (ours, the tabular simulator's, or one imported from
TRL or verl) and uses only the keys the run measured.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from softmax_theory.attribution import CLIP_PARTS, IS_PARTS, SIGN_PARTS
from softmax_theory.law import LawReport, law_report, series_from_run
from softmax_theory.runlog import RunLog, atomic_write_text, distinct_labels, read_run
from softmax_theory.stats import COV_TABLE_QUANTILES, correlation, relative_errors, smooth

# Predictions in the units of ΔH (nats per step): compared by correlation and relative error.
DIRECT_PREDICTORS = ("pred_lemma1", "pred_jvp")
# Sampled covariance estimators: ΔH ≈ −η·estimator, so they are compared with −estimator by
# correlation only (the effective η of Adam is unknown).
COV_ESTIMATORS = ("cov_mean", "cov_group", "cov_state", "cov_score")
WINDOWS = (1, 5, 10, 20)
# A window correlation needs at least this many windows to mean anything.
MIN_WINDOWS = 5
# 1/3: the paper's Fig. 2 reading (most of the change by a third of the steps); 2/3: what the
# last third adds (saturation)
SHARE_POINTS = (0.1, 0.25, 1 / 3, 0.5, 2 / 3)
FIG2_POINT = 1 / 3
FP32_EPS = float(np.finfo(np.float32).eps)

# The thresholds the report's conclusions use.
EXACT_TOKEN_CORR = 0.99  # per-token correlation at which first order is "near-exact"
APPROX_TOKEN_CORR = 0.9  # … "approximate"
TRACKS_CORR = 0.5  # per-step correlation at which an estimator "tracks" ΔH
LAW_MIN_POINTS = 10  # a law fit on fewer points is not trusted
LAW_MIN_R2 = 0.8


@dataclass(frozen=True)
class PredictorStats:
    key: str
    n: int
    correlation: float | None  # per step, with delta_entropy (with −estimator for covariances)
    median_rel_error: float | None  # direct predictors only
    token_correlation: float | None  # median over steps of the per-token correlation
    window_correlation: dict[int, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class RunReport:
    name: str  # distinct among the runs compared
    steps: int
    entropy_start: float | None
    entropy_end: float | None
    reward_start: float | None
    reward_end: float | None
    val_reward_start: float | None
    val_reward_end: float | None
    predictors: tuple[PredictorStats, ...]
    shares: dict[float, tuple[float | None, float | None]]  # step fraction → (ΔH share, ΔR share)
    law: LawReport | None
    law_error: str | None
    # Σ over the run's steps of each attribution part and of pred_lemma1 (empty: not logged)
    attribution: dict[str, float] = field(default_factory=dict)
    # (steps with a learning signal, steps that logged it); None: the run does not log it
    signal: tuple[int, int] | None = None
    # an entropy controller's tracking (``tracking_stats``); None: the run has no controller
    tracking: TrackingStats | None = None
    # Table 1 rows of the steps the run wrote one for (``cov_tables.jsonl``); empty: none
    cov_tables: tuple[dict, ...] = ()


@dataclass(frozen=True)
class TrackingStats:
    """How closely a controlled run's ``entropy`` followed its path ``control/now``."""

    rmse: float
    n: int  # steps where the path held
    coef_mean: float
    coef_max: float


def tracking_stats(run: RunLog) -> TrackingStats | None:
    """RMSE of ``entropy`` − ``control/now`` over the steps that log both; None without a
    controller."""
    pairs = [
        (s["entropy"], s["control/now"])
        for s in run.steps
        if isinstance(s.get("entropy"), float) and isinstance(s.get("control/now"), float)
    ]
    if not pairs:
        return None
    err = np.array([h - t for h, t in pairs])
    _, coefs = run.series("control/coef")
    return TrackingStats(
        rmse=float(np.sqrt(np.mean(err**2))),
        n=len(pairs),
        coef_mean=float(np.mean(coefs)),
        coef_max=float(np.max(coefs)),
    )


def _tracking_section(reports: list[RunReport]) -> list[str]:
    rows = [r for r in reports if r.tracking is not None]
    if not rows:
        return []
    lines = [
        "## Entropy against its target path",
        "",
        "RMSE of `entropy` − `control/now` over the steps the path held, and the controller's "
        "bonus coefficient (`control.png` draws both over steps).",
        "",
        "| run | tracking RMSE | steps | coef mean | coef max |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r.tracking
        lines.append(f"| {r.name} | {t.rmse:.4f} | {t.n} | {t.coef_mean:.4f} | {t.coef_max:.4f} |")
    return lines


# The share of responses with a non-zero advantage: 0 means a step without learning signal.
SIGNAL_KEY = "adv/nonzero_frac"


def has_signal(step: dict) -> bool:
    """Whether a step had a learning signal (some non-zero advantage); a run that does not log
    ``adv/nonzero_frac`` is taken to have one."""
    return step.get(SIGNAL_KEY, 1.0) > 0


def signal_steps(run: RunLog) -> tuple[int, int] | None:
    """(steps with a learning signal, steps that logged whether they had one), or None."""
    logged = [s for s in run.steps if SIGNAL_KEY in s]
    return (sum(has_signal(s) for s in logged), len(logged)) if logged else None


def _aligned(run: RunLog, key: str) -> tuple[np.ndarray, np.ndarray]:
    """ΔH and the predictor on the steps that measured both and had a learning signal (on a
    step whose advantages are all 0 nothing is learnt, and a prediction holds trivially)."""
    rows = [
        s
        for s in run.steps
        if key in s and "delta_entropy" in s and s[key] is not None and has_signal(s)
    ]
    return (
        np.array([s["delta_entropy"] for s in rows], dtype=np.float64),
        np.array([s[key] for s in rows], dtype=np.float64),
    )


def _window_sums(x: np.ndarray, w: int) -> np.ndarray:
    n = len(x) // w
    return x[: n * w].reshape(n, w).sum(axis=1)


def predictor_stats(run: RunLog, key: str) -> PredictorStats | None:
    measured, pred = _aligned(run, key)
    if measured.size == 0:
        return None
    sign = -1.0 if key in COV_ESTIMATORS else 1.0
    pred = sign * pred
    rel = None
    if key in DIRECT_PREDICTORS:
        # the probe measures from fp32 logits: below its resolution a change is a zero
        entropy = np.array(
            [
                s["entropy"]
                for s in run.steps
                if key in s and "delta_entropy" in s and s[key] is not None and has_signal(s)
            ]
        )
        errors = relative_errors(measured, pred, entropy, eps=FP32_EPS)
        rel = float(np.nanmedian(errors)) if np.isfinite(errors).any() else None
    token_key = {"pred_lemma1": "token_corr/lemma1", "pred_jvp": "token_corr/jvp"}.get(key)
    token = None
    if token_key is not None:
        values = [s[token_key] for s in run.steps if s.get(token_key) is not None and has_signal(s)]
        token = float(np.median(values)) if values else None
    windows = {
        w: correlation(_window_sums(measured, w), _window_sums(pred, w))
        for w in WINDOWS
        if len(measured) // w >= MIN_WINDOWS
    }
    return PredictorStats(
        key=key,
        n=int(measured.size),
        correlation=correlation(measured, pred),
        median_rel_error=rel,
        token_correlation=token,
        window_correlation=windows,
    )


def progress_shares(values: np.ndarray) -> dict[float, float | None]:
    """Share of the run's total change reached by each step fraction (the paper's Fig. 2).

    Per-step rewards are noisy, so both ends are moving averages over a tenth of the run; a run
    whose smoothed total change is zero has no shares.
    """
    s = smooth(values, max(1, len(values) // 10))
    total = s[-1] - s[0]
    out: dict[float, float | None] = {}
    for frac in SHARE_POINTS:
        k = max(0, int(round(frac * (len(s) - 1))))
        out[frac] = None if total == 0 else float((s[k] - s[0]) / total)
    return out


def _first_last(run: RunLog, key: str) -> tuple[float | None, float | None]:
    _, vals = run.series(key)
    return (vals[0], vals[-1]) if vals else (None, None)


def attribution_totals(run: RunLog) -> dict[str, float]:
    """Σ over the steps that logged them of each ``attr/*`` part and of ``pred_lemma1``; the
    clipped/unclipped pair only where every such step has it."""
    rows = [s for s in run.steps if all(k in s for k in SIGN_PARTS) and "pred_lemma1" in s]
    if not rows:
        return {}
    keys = SIGN_PARTS
    for family in (CLIP_PARTS, IS_PARTS):  # only where every such step has the split
        if all(k in s for s in rows for k in family):
            keys = keys + family
    return {k: float(sum(s[k] for s in rows)) for k in keys + ("pred_lemma1",)}


def compare_run(
    run: RunLog,
    fit_fraction: float = 0.15,
    n_boot: int = 1000,
    rng: np.random.Generator | None = None,
    reward_key: str | None = None,
) -> RunReport:
    stats = tuple(
        s for k in DIRECT_PREDICTORS + COV_ESTIMATORS if (s := predictor_stats(run, k)) is not None
    )
    shares: dict[float, tuple[float | None, float | None]] = {}
    _, ent = run.series("entropy")
    _, rew = run.series("reward")
    if len(ent) >= 2 and len(rew) >= 2:
        h_share = progress_shares(np.array(ent))
        r_share = progress_shares(np.array(rew))
        shares = {f: (h_share[f], r_share[f]) for f in SHARE_POINTS}
    law, law_error = None, None
    try:
        law = law_report(
            series_from_run(run, reward_key), fit_fraction=fit_fraction, n_boot=n_boot, rng=rng
        )
    except ValueError as err:
        law_error = str(err)
    h0, h1 = _first_last(run, "entropy")
    r0, r1 = _first_last(run, "reward")
    v0, v1 = _first_last(run, "val_reward")
    return RunReport(
        name=run.name,
        steps=len(run.steps),
        entropy_start=h0,
        entropy_end=h1,
        reward_start=r0,
        reward_end=r1,
        val_reward_start=v0,
        val_reward_end=v1,
        predictors=stats,
        shares=shares,
        law=law,
        law_error=law_error,
        attribution=attribution_totals(run),
        signal=signal_steps(run),
        tracking=tracking_stats(run),
    )


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.0%}"


def _runs_conclusion(r: RunReport) -> str:
    parts = [f"**{r.name}**:"]
    if r.entropy_start and r.entropy_end is not None:
        parts.append(
            f"entropy went from {r.entropy_start:.3f} to {r.entropy_end:.3f} "
            f"({_pct(r.entropy_end / r.entropy_start - 1)})"
        )
    if r.reward_start is not None and r.reward_end is not None:
        parts.append(f"training reward from {r.reward_start:.3f} to {r.reward_end:.3f}")
    if r.val_reward_start is not None and r.val_reward_end is not None:
        parts.append(f"validation reward from {r.val_reward_start:.3f} to {r.val_reward_end:.3f}")
    if r.signal is not None:
        with_signal, logged = r.signal
        if with_signal == 0:
            parts.append(
                f"and no step had a learning signal (every advantage 0 on all {logged} steps: "
                "nothing was learnt, and no prediction is judged)"
            )
        else:
            parts.append(f"learning signal on {with_signal} of {logged} steps")
    return " ".join(parts[:1]) + " " + ", ".join(parts[1:]) + "."


def _runs_section(reports: list[RunReport]) -> list[str]:
    lines = [
        "## Runs",
        "",
        "What this shows: "
        + " ".join(_runs_conclusion(r) for r in reports)
        + " (first and last recorded step; `curves.png` draws every step).",
        "",
        "![entropy and reward against step](curves.png)",
        "",
        "| run | steps | with signal | H start → end | reward start → end | "
        "val_reward start → end |",
        "|---|---:|---:|---|---|---|",
    ]
    for r in reports:
        signal = "n/a" if r.signal is None else f"{r.signal[0] / r.signal[1]:.0%}"
        lines.append(
            f"| {r.name} | {r.steps} | {signal} | {_f(r.entropy_start)} → {_f(r.entropy_end)} | "
            f"{_f(r.reward_start)} → {_f(r.reward_end)} | "
            f"{_f(r.val_reward_start)} → {_f(r.val_reward_end)} |"
        )
    return lines


def _lemma1_conclusion(r: RunReport) -> str | None:
    stats = {p.key: p for p in r.predictors}
    if r.signal is not None and r.signal[0] == 0:
        return (
            f"**{r.name}**: no update happened (every advantage was 0 on every step), so Lemma 1 "
            "is not judged: a zero change predicted as zero proves nothing."
        )
    lemma = stats.get("pred_lemma1")
    if lemma is None or lemma.token_correlation is None:
        return None
    c = lemma.token_correlation
    if c >= EXACT_TOKEN_CORR:
        verdict = (
            f"Lemma 1 held at this step size: per-token correlation {c:.4f} ≥ "
            f"{EXACT_TOKEN_CORR} (first order is near-exact for small steps)"
        )
    elif c >= APPROX_TOKEN_CORR:
        verdict = (
            f"Lemma 1 held approximately: per-token correlation {c:.3f} (between "
            f"{APPROX_TOKEN_CORR} and {EXACT_TOKEN_CORR}); the steps are near the edge of "
            "first order"
        )
    else:
        verdict = (
            f"Lemma 1 did not hold at this step size: per-token correlation {c:.3f} < "
            f"{APPROX_TOKEN_CORR}; the updates are too large for a first-order prediction, which "
            "is exact only for small steps (docs/llm_findings.md §1)"
        )
    jvp = stats.get("pred_jvp")
    if jvp is not None and jvp.token_correlation is not None:
        verdict += f"; the JVP forecast, made before the step, reached {jvp.token_correlation:.3f}"
    return f"**{r.name}**: {verdict}."


def _estimators_conclusion(r: RunReport) -> str | None:
    covs = [p for p in r.predictors if p.key in COV_ESTIMATORS and p.correlation is not None]
    if not covs:
        return None
    tracking = [p.key for p in covs if p.correlation >= TRACKS_CORR]
    best = max(covs, key=lambda p: p.correlation)
    if tracking:
        return (
            f"**{r.name}**: the sampled covariance estimators {', '.join(tracking)} tracked the "
            f"step's ΔH (per-step correlation ≥ {TRACKS_CORR}; best {best.key} "
            f"{best.correlation:.2f})."
        )
    return (
        f"**{r.name}**: no sampled covariance estimator tracked the step's ΔH (best "
        f"{best.key}: per-step correlation {best.correlation:.2f} < {TRACKS_CORR})."
    )


def _predictors_section(reports: list[RunReport]) -> list[str]:
    verdicts = [
        v
        for r in reports
        for v in (_lemma1_conclusion(r), _estimators_conclusion(r))
        if v is not None
    ]
    lines = [
        "## Does the measured ΔH follow the predictions?",
        "",
        "What this shows: " + (" ".join(verdicts) if verdicts else "no run was probed."),
        "",
        "![measured against predicted ΔH](predictions.png)",
        "",
        "Per step: Pearson correlation of `delta_entropy` with the prediction (with "
        "−estimator for the sampled covariances, since ΔH ≈ −η·Cov) and the median "
        "relative error of the direct predictions. Per token: the median over steps of the "
        "correlation across the step's tokens. Windows: correlation of sums over "
        "non-overlapping windows of w steps.",
        "",
        "| run | predictor | steps | corr per step | median rel err | corr per token | "
        + " | ".join(f"corr, w={w}" for w in WINDOWS[1:])
        + " |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * len(WINDOWS[1:]),
    ]
    for r in reports:
        for p in r.predictors:
            wins = " | ".join(_f(p.window_correlation.get(w)) for w in WINDOWS[1:])
            lines.append(
                f"| {r.name} | {p.key} | {p.n} | {_f(p.correlation)} | "
                f"{_f(p.median_rel_error, '.2e')} | {_f(p.token_correlation)} | {wins} |"
            )
    return lines


def _shares_conclusion(r: RunReport) -> str | None:
    h, rew = r.shares.get(0.25, (None, None))
    if h is None or rew is None:
        return None
    return (
        f"**{r.name}**: by a quarter of the steps, {h:.0%} of the run's entropy change and "
        f"{rew:.0%} of its reward change had happened."
    )


def _shares_section(reports: list[RunReport]) -> list[str]:
    verdicts = [v for r in reports if (v := _shares_conclusion(r)) is not None]
    lines = [
        "## Entropy consumed and reward gained (paper Fig. 2)",
        "",
        "What this shows: "
        + (
            " ".join(verdicts)
            + " The paper reports that most of both happen early; shares near the step share "
            "(25%) mean steady progress instead."
            if verdicts
            else "the runs are too short or too flat for shares."
        ),
        "",
        "Share of the run's total entropy change and reward change reached after each "
        "fraction of the steps (per-step values smoothed over a tenth of the run; shares "
        "outside 0–100% mean the curve is not monotone or its total change is within noise).",
        "",
        "| run | " + " | ".join(f"{round(100 * f)}% of steps: ΔH, ΔR" for f in SHARE_POINTS) + " |",
        "|---|" + "---|" * len(SHARE_POINTS),
    ]
    for r in reports:
        cells = [
            f"{_f(r.shares[f][0], '.0%')}, {_f(r.shares[f][1], '.0%')}" if f in r.shares else "n/a"
            for f in SHARE_POINTS
        ]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return lines


def _law_conclusion(r: RunReport) -> str:
    if r.law is None:
        return f"**{r.name}**: no fit ({r.law_error})."
    f = r.law.fit
    if not f.holds:
        return f"**{r.name}**: the law does not hold (the fit sits on a = 0)."
    trusted = f.n >= LAW_MIN_POINTS and f.r2 is not None and f.r2 >= LAW_MIN_R2
    text = (
        f"**{r.name}**: the law fits with R² {_f(f.r2)} on {f.n} points of "
        f"{r.law.series.reward_key}; "
    )
    if trusted and r.law.forecast is not None:
        text += (
            f"its forecast from the first points misses the rest by RMSE {r.law.forecast.rmse:.3g}"
        )
    elif trusted:
        text += "no forecast could be made"
    else:
        text += (
            f"too few points or too poor a fit to trust (need n ≥ {LAW_MIN_POINTS} and "
            f"R² ≥ {LAW_MIN_R2})"
        )
    warnings = "; ".join(r.law.warnings)
    return text + (f" ({warnings})." if warnings else ".")


def _law_section(reports: list[RunReport]) -> list[str]:
    lines = [
        "## R = −a·exp(H) + b",
        "",
        "What this shows: " + " ".join(_law_conclusion(r) for r in reports),
        "",
        "![the law: reward against entropy, and the forecast](law.png)",
        "",
        "| run | reward key | n | a | b | ceiling b − a (95%) | R² | forecast RMSE (15%) | "
        "final error |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in reports:
        if r.law is None:
            lines.append(f"| {r.name} | — | — | — | — | {r.law_error} | — | — | — |")
            continue
        f, ci, fc = r.law.fit, r.law.interval, r.law.forecast
        lines.append(
            f"| {r.name} | {r.law.series.reward_key} | {f.n} | {f.a:.4g} | {f.b:.4g} | "
            f"{f.ceiling:.4g} [{ci.ceiling[0]:.4g}, {ci.ceiling[1]:.4g}] | {_f(f.r2)} | "
            f"{_f(None if fc is None else fc.rmse, '.3g')} | "
            f"{_f(None if fc is None else fc.final_error, '+.3g')} |"
        )
    for r in reports:
        if r.law is not None and not r.law.fit.holds:
            lines.append(
                f"\n{r.name}: the fit sits on a = 0 — reward does not rise as entropy "
                "falls, so the law does not hold for this run."
            )
        if r.law is not None and r.law.forecast_error is not None:
            lines.append(f"\n{r.name}: no forecast — {r.law.forecast_error}.")
    return lines


def _attribution_conclusion(r: RunReport) -> str:
    a = r.attribution
    total = a["pred_lemma1"]
    parts = sorted(SIGN_PARTS, key=lambda k: a[k])
    most_down, most_up = parts[0], parts[-1]
    said = []
    if a[most_down] < 0:
        said.append(
            f"`{most_down.split('/')[1]}` tokens lowered entropy most ({a[most_down]:+.3g})"
        )
    if a[most_up] > 0:
        said.append(f"`{most_up.split('/')[1]}` tokens raised it most ({a[most_up]:+.3g})")
    text = f"**{r.name}**: Lemma 1 predicts {total:+.3g} nats over the run"
    if said:
        text += "; " + ", ".join(said)
    if a.get("attr/clipped"):
        text += f"; clipped tokens carried {a['attr/clipped']:+.3g}"
    return text + "."


def _attribution_section(reports: list[RunReport]) -> list[str]:
    rows = [r for r in reports if r.attribution]
    if not rows:
        return []
    keys = SIGN_PARTS + (CLIP_PARTS if any(CLIP_PARTS[0] in r.attribution for r in rows) else ())
    keys += IS_PARTS if any(IS_PARTS[0] in r.attribution for r in rows) else ()
    lines = [
        "## Where the entropy goes",
        "",
        "Lemma 1's predicted ΔH, summed over the run, split by the sign of the token's advantage "
        "and whether the sampled token was likely (log π(y) ≥ −H, more probable than the "
        "policy's typical token), and by whether its ratio was clipped at some update. Each "
        "family sums to `pred_lemma1`; a share is the part over that total, so parts of "
        "opposite sign can exceed ±100%. In a language model a token's part is Lemma 1 at its "
        "own state, which includes what the other tokens' updates did there.",
        "",
        "What this shows: " + " ".join(_attribution_conclusion(r) for r in rows),
        "",
        "![attribution by advantage sign and likelihood](attribution.png)",
        "",
        "| run | Σ pred_lemma1 | " + " | ".join(k.split("/")[1] for k in keys) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    unsplit = []
    for r in rows:
        a = r.attribution
        total = a["pred_lemma1"]
        cells = [
            "—" if k not in a else f"{a[k]:+.3g} ({a[k] / total:+.0%})" if total else f"{a[k]:+.3g}"
            for k in keys
        ]
        if any(k not in a for k in CLIP_PARTS if k in keys):
            unsplit.append(r.name)
        lines.append(f"| {r.name} | {total:+.3g} | " + " | ".join(cells) + " |")
    if unsplit:
        lines += [
            "",
            f"{', '.join(unsplit)}: no clipped split (—): the engine that ran "
            + ("them" if len(unsplit) > 1 else "it")
            + " does not know which tokens were clipped (the TRL engine, docs/trl.md).",
        ]
    return lines


TABLE1_COLUMNS = tuple("all" if q == 1.0 else f"top {100 * q:g}%" for q in COV_TABLE_QUANTILES)
# the paper's Table 1 (Qwen2.5-7B, step 1): the mean centred cross-product of each group
PAPER_TABLE1 = (5.654, 3.112, 1.385, 0.351, 0.152, 0.003)


def concentration(table: dict) -> float | None:
    """The mean of the top 0.02% of tokens ÷ the mean of all (the paper's 5.654 / 0.003, about
    1,900×); None where the mean of all is not positive, so the ratio says nothing."""
    top, every = table.get(TABLE1_COLUMNS[0]), table.get("all")
    return None if top is None or every is None or every <= 0 else top / every


def _table1_section(reports: list[RunReport]) -> list[str]:
    with_tables = [r for r in reports if r.cov_tables]
    if not with_tables:
        return []
    head = " | ".join(TABLE1_COLUMNS)
    lines = [
        "## Table 1: is the covariance concentrated in a few tokens?",
        "",
        "The mean centred cross-product (log π − mean)·(A − mean) over the top q of a step's "
        "tokens (Cui et al. 2025, Table 1). A group holds at least one token; where 0.02% of "
        "the step's tokens is less than one, its row is one token's value.",
        "",
        f"| run | step | tokens | {head} | top 0.02% ÷ all |",
        "|---|---:|---:|" + "---:|" * (len(TABLE1_COLUMNS) + 1),
        f"| the paper (Qwen2.5-7B) | 1 | — | {' | '.join(f'{v:.3f}' for v in PAPER_TABLE1)} | "
        f"{PAPER_TABLE1[0] / PAPER_TABLE1[-1]:,.0f}× |",
    ]
    for r in with_tables:
        for t in r.cov_tables:
            ratio = concentration(t)
            values = " | ".join(_f(t.get(c), ".4g") for c in TABLE1_COLUMNS)
            lines.append(
                f"| {r.name} | {t['step']} | {t.get('n_tokens', '—'):,} | {values} | "
                + ("— (mean of all ≤ 0)" if ratio is None else f"{ratio:,.0f}×")
                + " |"
            )
    return lines


def table1_over_seeds(tables: dict[int, list[dict]]) -> list[str]:
    """Table 1 as markdown over seeds: for each step, each column's mean ± half-width of the
    95% t interval over the runs' rows of that step (``tables``: step → one row per run), with
    the paper's row first and the top 0.02% ÷ all ratio (over the runs whose ratio is defined).
    """
    from softmax_theory.stats import interval_text

    def cell(values: list[float]) -> str:
        return interval_text(values, ".3g", ".2g")

    paper = " | ".join(f"{v:g}" for v in PAPER_TABLE1)
    lines = [
        "| step | tokens | " + " | ".join(TABLE1_COLUMNS) + " | top 0.02% ÷ all |",
        "|---:|---:|" + "---:|" * (len(TABLE1_COLUMNS) + 1),
        f"| the paper, 1 | — | {paper} | {PAPER_TABLE1[0] / PAPER_TABLE1[-1]:,.0f}× |",
    ]
    for step, rows in sorted(tables.items()):
        if not rows:
            continue
        cols = [cell([r[c] for r in rows]) for c in TABLE1_COLUMNS]
        ratios = [x for x in (concentration(r) for r in rows) if x is not None]
        ratio = cell(ratios) + "×" if ratios else "— (mean of all ≤ 0)"
        tokens = cell([r["n_tokens"] for r in rows])
        lines.append(f"| {step} | {tokens} | " + " | ".join(cols) + f" | {ratio} |")
    return lines


REPORT_SECTIONS = (
    _runs_section,
    _predictors_section,
    _attribution_section,
    _shares_section,
    _law_section,
    _tracking_section,
    _table1_section,
)


def render_report(reports: list[RunReport]) -> str:
    """The comparison as markdown: one section per question."""
    lines = ["# Entropy dynamics against the theory", ""]
    for section in REPORT_SECTIONS:
        lines += section(reports) + [""]
    return "\n".join(lines)


SUMMARY_FILE = "summary.json"


def _ends(values: list[float]) -> tuple[float | None, float | None]:
    """Both ends of a per-step series, each a mean over a tenth of the run (``progress_shares``'
    smoothing), or None for a series of fewer than two values."""
    if len(values) < 2:
        return None, None
    s = smooth(np.array(values, dtype=np.float64), max(1, len(values) // 10))
    return float(s[0]), float(s[-1])


def run_summary(report: RunReport, run: RunLog) -> dict:
    """One run of ``summary.json``: what the report says, as numbers a script can read.

    ``entropy_start``/``entropy_end`` and the reward's ``start``/``end`` are the first and last
    recorded values (as in the report's table); ``entropy_drop`` is 1 − end/start with both ends
    averaged over a tenth of the run, as the Fig. 2 shares are. ``shares``: the share of the
    run's entropy change and training-reward change reached at each step fraction;
    ``reward_last_third`` is the share of the training-reward gain the last third added.
    ``law``: the fit of R = −a·e^H + b on the reward key, its 15% forecast and its final-step
    error (predicted − actual), or ``error`` when no fit could be made. ``table1``: the run's
    Table 1 rows with the top 0.02% ÷ all ratio (``concentration``). None: not measured.
    """
    _, ent = run.series("entropy")
    h_start, h_end = _ends(ent)
    law: dict = {"error": report.law_error}
    key = None
    if report.law is not None:
        fit, fc = report.law.fit, report.law.forecast
        key = report.law.series.reward_key
        law = {
            "a": fit.a,
            "b": fit.b,
            "r2": fit.r2,
            "n": fit.n,
            "rmse": fit.rmse,
            "ceiling": fit.ceiling,
            "holds": fit.holds,
            "fit_points": None if fc is None else fc.n_fit,
            "forecast_rmse": None if fc is None else fc.rmse,
            "final_error": None if fc is None else fc.final_error,
            "forecast_error": report.law.forecast_error,
        }
    rewards = run.series(key)[1] if key is not None else []
    h_share, r_share = report.shares.get(FIG2_POINT, (None, None))
    late = report.shares.get(2 / 3, (None, None))[1]
    return {
        "name": report.name,
        "steps": report.steps,
        "entropy_start": report.entropy_start,
        "entropy_end": report.entropy_end,
        "entropy_drop": None if not h_start or h_end is None else 1 - h_end / h_start,
        "reward_key": key,
        "reward_start": rewards[0] if rewards else None,
        "reward_end": rewards[-1] if rewards else None,
        "train_reward_start": report.reward_start,
        "train_reward_end": report.reward_end,
        "law": law,
        "shares": {
            f"{f:.4g}": {"entropy": h, "reward": r} for f, (h, r) in sorted(report.shares.items())
        },
        "fig2": {"at": FIG2_POINT, "entropy": h_share, "reward": r_share},
        "reward_last_third": None if late is None else 1 - late,
        "table1": [{**t, "concentration": concentration(t)} for t in report.cov_tables],
    }


def write_summary(reports: list[RunReport], logs: list[RunLog], out: str | os.PathLike) -> Path:
    """``summary.json`` in ``out``: one ``run_summary`` entry per run, in the order given."""
    path = Path(out) / SUMMARY_FILE
    entries = [run_summary(r, log) for r, log in zip(reports, logs, strict=True)]
    atomic_write_text(path, json.dumps({"runs": entries}, indent=2, allow_nan=False) + "\n")
    return path


def run_cov_tables(run: str | os.PathLike) -> tuple[dict, ...]:
    """The Table 1 rows a run directory holds (``cov_tables.jsonl``); () for none."""
    from llm_bridge.run_dir import read_cov_tables

    path = Path(run)
    return read_cov_tables(path) if path.is_dir() else ()


def compare_runs(
    runs: list[str | os.PathLike],
    out: str | os.PathLike | None = None,
    fit_fraction: float = 0.15,
    n_boot: int = 1000,
    seed: int = 0,
    reward_key: str | None = None,
) -> list[RunReport]:
    """Compare runs; with ``out``, write ``report.md`` and figures there. ``reward_key``: the
    reward the law fits (e.g. ``val_pass@8``); by default ``val_reward`` where there are enough
    points, else ``reward``."""
    rng = np.random.default_rng(seed)
    labels = distinct_labels(runs)
    logs = [replace(read_run(r), label=label) for r, label in zip(runs, labels, strict=True)]
    reports = [
        replace(compare_run(log, fit_fraction, n_boot, rng, reward_key), cov_tables=tables)
        for log, tables in zip(logs, (run_cov_tables(r) for r in runs), strict=True)
    ]
    if out is not None:
        from llm_bridge.plots import plot_attribution, plot_control, plot_predictions, plot_runs
        from softmax_theory.plots import plot_law

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(render_report(reports))
        write_summary(reports, logs, out)
        figures = {"curves.png": plot_runs(logs), "predictions.png": plot_predictions(logs)}
        if any(r.attribution for r in reports):
            figures["attribution.png"] = plot_attribution(logs, SIGN_PARTS)
        if any(r.tracking for r in reports):
            figures["control.png"] = plot_control(logs)
        laws = [r.law for r in reports if r.law is not None]
        if laws:
            figures["law.png"] = plot_law(laws)
        for name, (fig, _) in figures.items():
            fig.savefig(out / name, dpi=110)
    return reports
