"""Figures. Each ``plot_*`` takes computed results and returns ``(fig, axes)``; callers save."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # figures are written to files; no display is assumed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from softmax_theory.law import LawReport  # noqa: E402


def plot_law(reports: Sequence[LawReport]):
    """Left: reward against entropy with the fitted R = −a·e^H + b. Right: reward against step,
    with the forecast made from the fit window (dashed) and the window's end (dotted)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, rep in enumerate(reports):
        color = f"C{i % 10}"
        s = rep.series
        axes[0].scatter(s.entropy, s.reward, s=10, color=color, alpha=0.6)
        grid = np.linspace(0.0, s.entropy.max(), 200)
        axes[0].plot(
            grid,
            rep.fit.predict(grid),
            color=color,
            label=f"{s.name}: a={rep.fit.a:.3g}, b={rep.fit.b:.3g}",
        )
        axes[1].plot(s.steps, s.reward, color=color, label=s.name)
        if rep.forecast is not None:
            f = rep.forecast
            axes[1].plot(s.steps[f.n_fit :], f.predicted, "--", color=color)
            axes[1].axvline(s.steps[f.n_fit - 1], ls=":", color=color, alpha=0.7)
    axes[0].set(
        xlabel="entropy H (nats)",
        ylabel=reports[0].series.reward_key if reports else "",
        title="R = −a·exp(H) + b",
    )
    axes[1].set(xlabel="step", ylabel="reward", title="forecast from the fit window (dashed)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, axes


def plot_sweep_curves(results: dict):
    """Entropy (left) and expected reward (right) against step, one line per (algo, lr), seed 0.

    ``results`` maps (algo, lr, seed) → SimResult.
    """
    algos = list(dict.fromkeys(k[0] for k in results))
    fig, axes = plt.subplots(len(algos), 2, figsize=(11, 3.2 * len(algos)), squeeze=False)
    for row, algo in enumerate(algos):
        lrs = sorted({k[1] for k in results if k[0] == algo})
        for i, lr in enumerate(lrs):
            res = results[(algo, lr, min(k[2] for k in results if k[:2] == (algo, lr)))]
            axes[row, 0].plot(res.series("entropy"), color=f"C{i}", label=f"η={lr:g}")
            axes[row, 1].plot(res.series("reward"), color=f"C{i}", label=f"η={lr:g}")
        axes[row, 0].set(title=f"{algo}: entropy", xlabel="step", ylabel="H (nats)")
        axes[row, 1].set(title=f"{algo}: expected reward", xlabel="step", ylabel="J")
        for ax in axes[row]:
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, axes


def plot_delta_scatter(results: dict):
    """Measured ΔH (within states) against Lemma 1's prediction, every step of every run."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    algos = list(dict.fromkeys(k[0] for k in results))
    lo, hi = np.inf, -np.inf
    for i, algo in enumerate(algos):
        meas = np.concatenate(
            [r.series("delta_within") for k, r in results.items() if k[0] == algo]
        )
        pred = np.concatenate([r.series("pred_lemma1") for k, r in results.items() if k[0] == algo])
        ax.scatter(pred, meas, s=4, alpha=0.4, color=f"C{i}", label=algo)
        lo, hi = min(lo, pred.min(), meas.min()), max(hi, pred.max(), meas.max())
    if np.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    ax.set(
        xlabel="predicted ΔH, −Cov(log π, Δz)",
        ylabel="measured ΔH (within states)",
        title="Lemma 1 on every step",
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, ax


def plot_error_vs_lr(rows: Sequence):
    """Median relative error of the first-order prediction against η, log-log, per algo."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    algos = list(dict.fromkeys(r.algo for r in rows))
    for i, algo in enumerate(algos):
        lrs = sorted({r.lr for r in rows if r.algo == algo})
        med = []
        for lr in lrs:
            errs = [r.median_rel_error for r in rows if r.algo == algo and r.lr == lr]
            errs = [e for e in errs if e is not None]
            med.append(np.median(errs) if errs else np.nan)
        ax.loglog(lrs, med, "o-", color=f"C{i}", label=algo)
    ax.set(
        xlabel="step size η",
        ylabel="median relative error of Lemma 1",
        title="first-order error against η",
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig, ax
