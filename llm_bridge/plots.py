"""Figures of run logs. Each ``plot_*`` takes runs and returns ``(fig, axes)``; callers save."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from softmax_theory.runlog import RunLog  # noqa: E402

CURVES = (
    ("entropy", "entropy (nats)"),
    ("reward", "training reward"),
    ("val_reward", "validation reward"),
)


def plot_runs(runs: Sequence[RunLog]):
    """Entropy, training reward and validation reward against step, one line per run."""
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.6))
    for i, run in enumerate(runs):
        for ax, (key, label) in zip(axes, CURVES, strict=True):
            steps, values = run.series(key)
            if values:
                ax.plot(
                    steps,
                    values,
                    color=f"C{i % 10}",
                    label=run.name,
                    marker="o" if key == "val_reward" else None,
                    ms=3,
                )
            ax.set(xlabel="step", ylabel=label)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, axes


def plot_control(runs: Sequence[RunLog]):
    """Entropy against its target path (dashed) and the controller's bonus coefficient, over
    steps, one colour per run; a run without a controller draws its entropy only."""
    fig, (ax_h, ax_c) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, run in enumerate(runs):
        colour = f"C{i % 10}"
        steps, h = run.series("entropy")
        ax_h.plot(steps, h, color=colour, label=run.name)
        steps, target = run.series("control/now")
        if target:
            ax_h.plot(steps, target, color=colour, ls="--", lw=1)
        steps, coef = run.series("control/coef")
        if coef:
            ax_c.plot(steps, coef, color=colour, label=run.name)
    ax_h.set(xlabel="step", ylabel="entropy (nats); dashed: target")
    ax_c.set(xlabel="step", ylabel="bonus coefficient")
    for ax in (ax_h, ax_c):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, (ax_h, ax_c)


# Axes of the prediction scatter span these quantiles of the points, so one outlier step does not
# squeeze the rest into a corner; the title says how many points fall outside.
ROBUST_QUANTILES = (0.01, 0.99)


def plot_predictions(runs: Sequence[RunLog]):
    """Measured ΔH per step against Lemma 1 (left) and the JVP forecast (right), on axes that
    span the 1st–99th percentiles of the points (the title counts the points outside)."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.4))
    for ax, key, title in (
        (axes[0], "pred_lemma1", "Lemma 1 with the actual Δz"),
        (axes[1], "pred_jvp", "JVP forecast from Δθ"),
    ):
        xs, ys = [], []
        for i, run in enumerate(runs):
            rows = [s for s in run.steps if key in s and "delta_entropy" in s]
            if not rows:
                continue
            x = np.array([s[key] for s in rows])
            y = np.array([s["delta_entropy"] for s in rows])
            ax.scatter(x, y, s=8, alpha=0.6, color=f"C{i % 10}", label=run.name)
            xs.append(x)
            ys.append(y)
        outside = 0
        if xs:
            both = np.concatenate(xs + ys)
            lo, hi = np.quantile(both, ROBUST_QUANTILES)
            pad = 0.05 * (hi - lo) if hi > lo else 1e-12
            lo, hi = lo - pad, hi + pad
            x, y = np.concatenate(xs), np.concatenate(ys)
            outside = int(((x < lo) | (x > hi) | (y < lo) | (y > hi)).sum())
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
            ax.set(xlim=(lo, hi), ylim=(lo, hi))
        note = f" ({outside} outside the axes)" if outside else ""
        ax.set(xlabel=f"predicted ΔH ({key})", ylabel="measured ΔH")
        ax.set_title(title + note, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, axes


def plot_attribution(runs: Sequence[RunLog], parts: Sequence[str]):
    """Lemma 1's predicted ΔH per step split into ``parts`` (``attr/*`` keys), stacked: parts
    that raise entropy above zero, those that lower it below; the black line is their sum,
    ``pred_lemma1``. One panel per run that logged the parts."""
    runs = [r for r in runs if any(parts[0] in s for s in r.steps)]
    fig, axes = plt.subplots(
        1, max(1, len(runs)), figsize=(4.6 * max(1, len(runs)), 3.8), squeeze=False
    )
    for ax, run in zip(axes[0], runs, strict=False):
        rows = [s for s in run.steps if all(p in s for p in parts)]
        steps = np.array([s["step"] for s in rows])
        values = np.array([[s[p] for p in parts] for s in rows])  # (steps, parts)
        up = np.zeros(len(rows))
        down = np.zeros(len(rows))
        for j, part in enumerate(parts):
            v = values[:, j]
            pos, neg = np.clip(v, 0, None), np.clip(v, None, 0)
            ax.bar(steps, pos, bottom=up, width=1.0, color=f"C{j}", label=part.split("/")[-1])
            ax.bar(steps, neg, bottom=down, width=1.0, color=f"C{j}")
            up, down = up + pos, down + neg
        ax.plot(steps, values.sum(1), "k-", lw=0.8, label="pred_lemma1")
        ax.axhline(0, color="k", lw=0.5)
        ax.set(xlabel="step", ylabel="predicted ΔH (nats)", title=run.name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, axes
