"""Statistics shared by the checks, the simulator, the LLM trainer and the reports."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

# The float64 resolution of an entropy change: this many ulps of (1 + H). Below it, a measured
# or predicted ΔH is a numerical zero, and a ratio of two such zeros means nothing.
RESOLUTION_ULPS = 64

# The paper's Table 1 groups: mean covariance over the top q of tokens.
COV_TABLE_QUANTILES = (0.0002, 0.002, 0.02, 0.2, 0.5, 1.0)


def correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation; None when either side is constant (undefined, not zero)."""
    x, y = np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def resolution(entropy: np.ndarray, eps: float = float(np.finfo(np.float64).eps)) -> np.ndarray:
    """The smallest entropy change distinguishable from rounding at entropy H: 64·eps·(1 + H)."""
    return RESOLUTION_ULPS * eps * (1.0 + np.abs(np.asarray(entropy, dtype=np.float64)))


def relative_errors(
    measured: np.ndarray,
    predicted: np.ndarray,
    entropy: np.ndarray,
    eps: float = float(np.finfo(np.float64).eps),
) -> np.ndarray:
    """|predicted − measured| / |measured| where either exceeds the resolution of the entropies
    involved (``resolution``); NaN where both are numerical zeros (report the absolute error
    there). A measured change below the resolution counts as the resolution."""
    m = np.asarray(measured, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    floor = resolution(entropy, eps)
    rel = np.abs(p - m) / np.maximum(np.abs(m), floor)
    return np.where(np.maximum(np.abs(m), np.abs(p)) > floor, rel, np.nan)


def top_covariance_means(cov: np.ndarray) -> dict[str, float]:
    """Mean token covariance over the top q of tokens for each q of the paper's Table 1
    ("top 0.02%" … "all"); each group holds at least one token."""
    cov = np.sort(np.asarray(cov, dtype=np.float64).reshape(-1))[::-1]
    top = {}
    for q in COV_TABLE_QUANTILES:
        k = max(1, int(round(q * cov.size)))
        top["all" if q == 1.0 else f"top {100 * q:g}%"] = float(cov[:k].mean())
    return top


def smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average over ``width`` steps, narrowed at the ends."""
    v = np.asarray(values, dtype=np.float64)
    c = np.cumsum(np.insert(v, 0, 0.0))
    half = width // 2
    k = np.arange(len(v))
    lo, hi = np.maximum(0, k - half), np.minimum(len(v), k + half + 1)
    return (c[hi] - c[lo]) / (hi - lo)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate from n samples of which c are right: 1 − C(n−c, k)/C(n, k),
    the chance that k drawn without replacement include a right one. Chen et al. 2021 (Codex,
    arXiv 2107.03374), eq. 1; exact integer binomials, so no cancellation."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"k: pass@k needs 1 ≤ k ≤ n and 0 ≤ c ≤ n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def token_weighted_means(
    parts: Iterable[tuple[Mapping[str, float], float]],
) -> dict[str, float]:
    """Σ_u n_u·m_u[key] / Σ_u n_u for each key, over the parts u (each update, or each
    micro-batch of one) that carry it: ``parts`` are (metrics, valid tokens) pairs.

    How a step's ``actor/*`` metrics are reported in both worlds: the token-weighted mean over
    all the step's updates, so a step's numbers do not depend on how it was split. A key no
    part carries is absent; parts without tokens weigh nothing.
    """
    sums: dict[str, float] = {}
    tokens: dict[str, float] = {}
    for metrics, n in parts:
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value) * n
            tokens[key] = tokens.get(key, 0.0) + n
    return {key: sums[key] / tokens[key] for key in sums if tokens[key] > 0}


def mean_interval(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """The mean of ``values`` (runs over seeds) and the half-width of its Student-t interval at
    ``level``: t_{(1+level)/2, n−1}·s/√n with s the sample standard deviation; 0 for one value
    (no spread to estimate, said by the caller)."""
    from scipy import stats

    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("values: the interval of no values")
    if x.size == 1:
        return float(x[0]), 0.0
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def interval_text(values: Iterable[float], fmt: str = ".3f", half_fmt: str | None = None) -> str:
    """``mean_interval`` as the findings' tables print it: "mean ± half-width" (``fmt`` for the
    mean, ``half_fmt`` for the half-width, ``fmt`` by default), or the mean alone for one value
    (no spread to give)."""
    x = list(values)
    mean, half = mean_interval(x)
    return f"{mean:{fmt}}" if len(x) == 1 else f"{mean:{fmt}} ± {half:{half_fmt or fmt}}"
