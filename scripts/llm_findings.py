"""Reproduce the language-model findings in docs/llm_findings.md.

    .venv/bin/python scripts/llm_findings.py --model .cache/tiny-addition --out runs/findings

Needs the pre-trained tiny model (`make demo` or `llm-bridge pretrain-tiny`). Prints markdown;
every number comes from a seeded run written under --out. About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from llm_bridge import (
    PolicyLossConfig,
    TinyConfig,
    TrainConfig,
    pretrain_tiny,
    train_or_reuse,
)
from llm_bridge.compare import compare_run
from softmax_theory import read_run


def _run(cfg: TrainConfig, out: Path):
    """Train, or reuse a finished run of the same config in ``out``."""
    train_or_reuse(cfg, out)
    return read_run(out)


def _sci(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2e}"


def _median(run, key):
    vals = [s[key] for s in run.steps if s.get(key) is not None]
    return float(np.median(vals)) if vals else float("nan")


def lr_curve(model: str, out: Path) -> None:
    print("## 1. Lemma 1 and the JVP forecast against the step size\n")
    print(
        "One optimiser update per step (`--mini-batches 1`), 16 prompts × 8 responses, 20 "
        "steps. Per-token correlation: across the step's response tokens, median over steps. "
        "Per-step: across steps.\n"
    )
    print(
        "| optimizer | lr | per-token corr, Lemma 1 | per-token corr, JVP | per-step corr, "
        "Lemma 1 | per-step corr, JVP | median rel err, Lemma 1 | median rel err, JVP |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    grid = [("adam", lr) for lr in (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)]
    grid += [("sgd", lr) for lr in (1e-2, 1e-1, 1.0, 3.0)]
    for opt, lr in grid:
        cfg = TrainConfig(
            model=model,
            steps=20,
            prompts_per_step=16,
            mini_batches=1,
            lr=lr,
            optimizer=opt,
            warmup_steps=0,  # a fixed step size: the measurement is per lr
            val_every=0,
            checkpoint_every=0,
        )
        run = _run(cfg, out / f"lr_{opt}_{lr:g}")
        rep = {p.key: p for p in compare_run(run, n_boot=10).predictors}
        lem, jv = rep["pred_lemma1"], rep["pred_jvp"]
        print(
            f"| {opt} | {lr:g} | {_median(run, 'token_corr/lemma1'):.4f} | "
            f"{_median(run, 'token_corr/jvp'):.4f} | {lem.correlation:.4f} | "
            f"{jv.correlation:.4f} | {_sci(lem.median_rel_error)} | {_sci(jv.median_rel_error)} |"
        )
    print()


def estimators(models: dict[str, str], out: Path) -> None:
    print("## 2. Which estimator predicts the step's ΔH?\n")
    print(
        "Correlation of the measured `delta_entropy` with each prediction (with −estimator "
        "for the sampled covariances), per step and over sums of w-step windows (n/a: fewer "
        "than 5 windows). Two settings: Adam 3e-5 with one update per step, where Lemma 1 "
        "is accurate, and the demo's Adam 5e-4 with two updates per step.\n"
    )
    print(
        "| model | lr, updates/step | prompts/step | predictor | per step | w = 5 | w = 10 | "
        "w = 20 |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|")
    trends = []
    for (name, path), (lr, updates), prompts in (
        (m, s, p) for m in models.items() for s in ((3e-5, 1), (5e-4, 2)) for p in (16, 64)
    ):
        steps = 100 if updates == 1 else 60
        cfg = TrainConfig(
            model=path,
            steps=steps,
            prompts_per_step=prompts,
            val_every=0,
            checkpoint_every=0,
            lr=lr,
            mini_batches=updates,
            warmup_steps=0,
        )
        run = _run(cfg, out / f"est_{name}_{lr:g}_{prompts}")
        for p in compare_run(run, n_boot=10).predictors:
            w = p.window_correlation
            cells = " | ".join("n/a" if w.get(k) is None else f"{w[k]:+.3f}" for k in (5, 10, 20))
            print(
                f"| {name} | {lr:g}, {updates} | {prompts} | {p.key} | "
                f"{p.correlation:+.3f} | {cells} |"
            )
        trends.append((f"{name}, {lr:g} × {updates}, {prompts} prompts", run))
    print(
        "\nTrends: ΔH and `cov_mean`, means over the first and last fifth of the steps, and "
        "their per-step correlation (ΔH with −cov_mean) once each series' linear trend is "
        "removed.\n"
    )
    for label, run in trends:
        d, c = (np.array([s[k] for s in run.steps]) for k in ("delta_entropy", "cov_mean"))
        k = max(1, len(d) // 5)
        print(
            f"- {label}: ΔH {d[:k].mean():+.4f} → {d[-k:].mean():+.4f}, cov_mean "
            f"{c[:k].mean():.3f} → {c[-k:].mean():.3f}, detrended corr "
            f"{np.corrcoef(_detrend(d), -_detrend(c))[0, 1]:+.2f}"
        )
    print()


def _detrend(x: np.ndarray) -> np.ndarray:
    """``x`` less its least-squares line over the step index."""
    t = np.arange(len(x))
    return x - np.polyval(np.polyfit(t, x, 1), t)


def controls(model: str, out: Path) -> None:
    print("## 3. Vanilla, Clip-Cov and KL-Cov, with a ratio sweep\n")
    print(
        "The demo's settings (TrainConfig defaults: 64 prompts × 8 responses, Adam 5e-4, "
        "120 steps, 2 mini-batches of ~1,280 response tokens). Paper ratios select "
        "max(1, int(N·ratio)) = 1 (Clip-Cov) and 2 (KL-Cov) tokens per mini-batch.\n"
    )
    print(
        "| run | tokens selected / mini-batch | H start → end | H change | train reward, "
        "first → last 10 steps | val_reward, mean of last 3 evals |"
    )
    print("|---|---:|---|---:|---|---:|")
    variants = {
        "vanilla": PolicyLossConfig(),
        "clip_cov, ratio 2e-4 (paper)": PolicyLossConfig(loss_mode="clip_cov"),
        "clip_cov, ratio 0.01": PolicyLossConfig(loss_mode="clip_cov", clip_cov_ratio=0.01),
        "clip_cov, ratio 0.05": PolicyLossConfig(loss_mode="clip_cov", clip_cov_ratio=0.05),
        "kl_cov, ratio 2e-3 (paper)": PolicyLossConfig(loss_mode="kl_cov"),
        "kl_cov, ratio 0.01": PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.01),
        "kl_cov, ratio 0.05": PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.05),
    }
    base = TrainConfig(
        steps=120, prompts_per_step=64, lr=5e-4, warmup_steps=10, model=model, checkpoint_every=0
    )
    for name, loss in variants.items():
        slug = (
            name.split(",")[0]
            + "_"
            + (name.split("ratio ")[-1].split(" ")[0] if "ratio" in name else "")
        )
        run = _run(replace(base, policy_loss=loss), out / f"ctl_{slug}")
        h = [s["entropy"] for s in run.steps]
        r = [s["reward"] for s in run.steps]
        v = [s["val_reward"] for s in run.steps if "val_reward" in s]
        frac = [s.get("actor/cov_selected_frac") for s in run.steps]
        frac = [f for f in frac if f is not None]
        sel = "—" if not frac else f"{np.mean(frac) * 1280:.1f}"
        print(
            f"| {name} | {sel} | {np.mean(h[:5]):.3f} → {np.mean(h[-5:]):.3f} | "
            f"{np.mean(h[-5:]) / np.mean(h[:5]) - 1:+.0%} | {np.mean(r[:10]):.3f} → "
            f"{np.mean(r[-10:]):.3f} | {np.mean(v[-3:]):.3f} |"
        )
    print()


def controls_seeds(model: str, out: Path, seeds: int = 3) -> None:
    print("## 3b. The demo's three runs over seeds\n")
    print(f"Mean ± standard deviation over seeds 0–{seeds - 1} (seed 0 is the run of §3).\n")
    print(
        "| run | H end (last 5 steps) | H change | train reward, last 10 steps | "
        "val_reward, last 3 evals |"
    )
    print("|---|---:|---:|---:|---:|")
    variants = {
        "vanilla": PolicyLossConfig(),
        "clip_cov, ratio 0.01": PolicyLossConfig(loss_mode="clip_cov", clip_cov_ratio=0.01),
        "kl_cov, ratio 0.01": PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.01),
    }
    for name, loss in variants.items():
        slug = name.split(",")[0] + "_" + (name.split("ratio ")[-1] if "ratio" in name else "")
        h_end, h_chg, r_end, v_end = [], [], [], []
        for seed in range(seeds):
            cfg = TrainConfig(
                steps=120,
                prompts_per_step=64,
                lr=5e-4,
                warmup_steps=10,
                model=model,
                checkpoint_every=0,
                policy_loss=loss,
                seed=seed,
            )
            suffix = "" if seed == 0 else f"_s{seed}"
            run = _run(cfg, out / f"ctl_{slug}{suffix}")
            h = [s["entropy"] for s in run.steps]
            h_end.append(np.mean(h[-5:]))
            h_chg.append(np.mean(h[-5:]) / np.mean(h[:5]) - 1)
            r_end.append(np.mean([s["reward"] for s in run.steps][-10:]))
            v_end.append(np.mean([s["val_reward"] for s in run.steps if "val_reward" in s][-3:]))

        def ms(x, fmt=".3f"):
            return f"{np.mean(x):{fmt}} ± {np.std(x):{fmt}}"

        print(f"| {name} | {ms(h_end)} | {ms(h_chg, '+.0%')} | {ms(r_end)} | {ms(v_end)} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/findings"))
    parser.add_argument("--only", choices=["lr", "estimators", "controls", "seeds"], default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "lr"):
        lr_curve(args.model, args.out)
    if args.only in (None, "estimators"):
        small = args.out / "tiny-64"
        if not (small / "config.json").exists():
            pretrain_tiny(
                TinyConfig(
                    hidden_size=64,
                    intermediate_size=128,
                    steps=1500,
                    lr=3e-3,
                    warmup=50,
                    label_noise=0.0,
                ),
                small,
                log=lambda _: None,
            )
        estimators({"128x2": args.model, "64x2": str(small)}, args.out)
    if args.only in (None, "controls"):
        controls(args.model, args.out)
    if args.only in (None, "seeds"):
        controls_seeds(args.model, args.out)


if __name__ == "__main__":
    main()
