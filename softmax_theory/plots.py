"""Figures. Each ``plot_*`` takes computed results and returns ``(fig, axes)``; callers save."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # figures are written to files; no display is assumed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from softmax_theory.law import LawReport  # noqa: E402


def _padded(lo: float, hi: float, pad: float = 0.08) -> tuple[float, float]:
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return lo - pad * span, hi + pad * span


def plot_law(reports: Sequence[LawReport]):
    """Left: reward against entropy with the fitted R = −a·e^H + b over the entropies seen (the
    ceiling b − a, the value at H = 0, is in the legend, not drawn: it lies outside the data).
    Right: reward against step, with the forecast from the fit window (dashed) and the window's
    end (dotted); the axes keep to the rewards seen, so a forecast that leaves them shows as
    leaving the plot."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    r_lo, r_hi = np.inf, -np.inf
    for i, rep in enumerate(reports):
        color = f"C{i % 10}"
        s = rep.series
        r_lo, r_hi = min(r_lo, s.reward.min()), max(r_hi, s.reward.max())
        axes[0].scatter(s.entropy, s.reward, s=10, color=color, alpha=0.6)
        grid = np.linspace(s.entropy.min(), s.entropy.max(), 200)
        axes[0].plot(
            grid,
            rep.fit.predict(grid),
            color=color,
            label=f"{s.name}: a={rep.fit.a:.3g}, b={rep.fit.b:.3g}, ceiling={rep.fit.ceiling:.3g}",
        )
        axes[1].plot(s.steps, s.reward, color=color, label=s.name)
        if rep.forecast is not None:
            f = rep.forecast
            axes[1].plot(
                s.steps[f.n_fit :], f.predicted, "--", color=color, label=f"{s.name}: forecast"
            )
            axes[1].axvline(
                s.steps[f.n_fit - 1], ls=":", color=color, alpha=0.7, label=f"{s.name}: fit window"
            )
    key = reports[0].series.reward_key if reports else ""
    axes[0].set(xlabel="entropy H (nats)", ylabel=key, title="R = −a·exp(H) + b")
    axes[1].set(xlabel="step", ylabel=key, title="forecast from the first points (dashed)")
    if np.isfinite(r_lo):
        for ax in axes:
            ax.set_ylim(*_padded(r_lo, r_hi))
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, axes


def plot_sweep_curves(curves: dict):
    """Entropy (left) and expected reward (right) against step, one line per (algo, η) at the
    first seed. ``curves`` maps (algo, η, seed) → {"entropy": …, "reward": …}."""
    algos = list(dict.fromkeys(k[0] for k in curves))
    fig, axes = plt.subplots(len(algos), 2, figsize=(11, 3.2 * len(algos)), squeeze=False)
    for row, algo in enumerate(algos):
        lrs = sorted({k[1] for k in curves if k[0] == algo})
        for i, lr in enumerate(lrs):
            seed = min(k[2] for k in curves if k[:2] == (algo, lr))
            c = curves[(algo, lr, seed)]
            axes[row, 0].plot(c["entropy"], color=f"C{i}", label=f"η={lr:g}")
            axes[row, 1].plot(c["reward"], color=f"C{i}", label=f"η={lr:g}")
        axes[row, 0].set(title=f"{algo}: entropy", xlabel="step", ylabel="H (nats)")
        axes[row, 1].set(title=f"{algo}: expected reward", xlabel="step", ylabel="J")
        for ax in axes[row]:
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, axes


def plot_delta_scatter(curves: dict):
    """Measured ΔH (within states) against Lemma 1's prediction on every step: one panel per
    algorithm, one colour per step size, so no algorithm or η hides another."""
    algos = list(dict.fromkeys(k[0] for k in curves))
    fig, axes = plt.subplots(1, len(algos), figsize=(4.6 * len(algos), 4.4), squeeze=False)
    for ax, algo in zip(axes[0], algos, strict=True):
        lo, hi = np.inf, -np.inf
        for i, lr in enumerate(sorted({k[1] for k in curves if k[0] == algo})):
            cells = [c for k, c in curves.items() if k[:2] == (algo, lr)]
            meas = np.concatenate([c["delta_within"] for c in cells])
            pred = np.concatenate([c["pred_lemma1"] for c in cells])
            ax.scatter(pred, meas, s=5, alpha=0.5, color=f"C{i}", label=f"η={lr:g}")
            lo, hi = min(lo, pred.min(), meas.min()), max(hi, pred.max(), meas.max())
        if np.isfinite(lo):
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
        ax.set(xlabel="predicted ΔH, −Cov(log π, Δz)", ylabel="measured ΔH (within states)")
        ax.set_title(f"{algo}: Lemma 1 on every step", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, axes


def plot_error_vs_lr(rows: Sequence):
    """The error of Lemma 1 against η, log-log, per algorithm: median absolute error (left,
    with a slope-2 reference: the first-order error is O(η²)) and median relative error over the
    steps where ΔH exceeds the float resolution (right, slope-1 reference)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    algos = list(dict.fromkeys(r.algo for r in rows))
    all_lrs = sorted({r.lr for r in rows})
    for i, algo in enumerate(algos):
        lrs = sorted({r.lr for r in rows if r.algo == algo})
        for ax, field in zip(axes, ("median_abs_error", "median_rel_error"), strict=True):
            med = []
            for lr in lrs:
                vals = [getattr(r, field) for r in rows if r.algo == algo and r.lr == lr]
                vals = [v for v in vals if v is not None]
                med.append(np.median(vals) if vals else np.nan)
            ax.loglog(lrs, med, "o-", color=f"C{i}", label=algo)
    for ax, slope in zip(axes, (2, 1), strict=True):
        ys = [line.get_ydata() for line in ax.get_lines()]
        ys = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.array([])
        if len(all_lrs) >= 2 and ys.size:
            x = np.array([all_lrs[0], all_lrs[-1]])
            anchor = np.exp(np.median(np.log(ys[ys > 0]))) if (ys > 0).any() else 1.0
            ref = anchor * (x / np.sqrt(x[0] * x[1])) ** slope
            ax.loglog(x, ref, "k:", lw=1, label=f"slope {slope}")
        ax.set(xlabel="step size η")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set(ylabel="median |error| of Lemma 1 (nats)", title="absolute error against η")
    axes[1].set(ylabel="median relative error of Lemma 1", title="relative error against η")
    fig.tight_layout()
    return fig, axes
