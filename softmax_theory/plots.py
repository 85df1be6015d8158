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
