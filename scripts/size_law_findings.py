"""The law's coefficients against model size, in miniature (the paper's Fig. 7;
docs/llm_findings.md §7): the addition testbed at four widths, three seeds each; the law
R = −a·e^H + b fitted on each vanilla run; a and b fitted log-linearly against the
non-embedding parameter count on the three smaller sizes; the largest size's a, b and ceiling
predicted from that fit *before* the largest is pre-trained or run (the prediction is written to
``prediction.json`` first), then measured and held against it.

    .venv/bin/python scripts/size_law_findings.py --out runs/size_law

Every number is from a seeded run written under --out; a finished run is reused
(``train_or_reuse``), a written prediction is never rewritten, so an interrupted invocation
loses nothing and cannot peek. Runs use one thread and run one at a time. Prints markdown.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

torch.set_num_threads(1)

import numpy as np  # noqa: E402

from llm_bridge import pretrain_tiny, train_or_reuse  # noqa: E402
from llm_bridge.models import load_weights  # noqa: E402
from llm_bridge.testbed import TESTBED  # noqa: E402
from llm_bridge.tiny import build_model, build_tokenizer  # noqa: E402
from softmax_theory import read_run  # noqa: E402
from softmax_theory.law import fit_entropy_law, series_from_run  # noqa: E402
from softmax_theory.stats import mean_interval  # noqa: E402

# the testbed's model at four widths, the MLP at twice the width (the testbed's 128 → 256), so
# the non-embedding count grows as the width squared: 48 → 144 is 9×
WIDTHS = (48, 64, 96, 144)
# the runs beside the preset: no probe, validation every 10 steps on 128 held-out prompts × 8
EXTRA = dict(probe=False, checkpoint_every=0, save_final=False, val_prompts=128, val_k=8)
N_BOOT = 2000


def model(out: Path, width: int) -> Path:
    path = out / f"model_w{width}"
    if not (path / "pretrain.json").exists():
        cfg = replace(TESTBED.pretrain, hidden_size=width, intermediate_size=2 * width)
        pretrain_tiny(cfg, path, log=lambda _: None)
    return path


def non_embedding_params(model) -> int:
    """Parameters outside the (tied) token embedding, as the paper counts them."""
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)


def vanilla(out: Path, width: int, seed: int) -> dict:
    """One vanilla run on the width's model and the law fitted on its validation reward."""
    cfg = TESTBED.train_config(str(model(out, width)), seed=seed, **EXTRA)
    path = out / "runs" / f"w{width}_s{seed}"
    train_or_reuse(cfg, path)
    run = read_run(path)
    series = series_from_run(run, "val_reward")
    fit = fit_entropy_law(series.entropy, series.reward)
    ent = [s["entropy"] for s in run.steps]
    return dict(
        a=fit.a,
        b=fit.b,
        r2=fit.r2,
        n=fit.n,
        h0=ent[0],
        h_end=float(np.mean(ent[-5:])),
        val_end=float(np.mean(series.reward[-3:])),
    )


def loglinear(n: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """y = k·ln N + c by least squares (the paper's Fig. 7); (k, c)."""
    k, c = np.polyfit(np.log(n), y, 1)
    return float(k), float(c)


def predict(n_small: np.ndarray, per_seed: np.ndarray, n_large: float, rng) -> dict:
    """The largest size's a, b and ceiling b − a from the log-linear fit over the smaller sizes
    (on the seed means), with a 95% interval from resampling each size's seeds.
    ``per_seed``: [sizes, seeds, 2] of (a, b)."""

    def at(values: np.ndarray) -> np.ndarray:  # [sizes, 2] → (a, b) at n_large
        return np.array(
            [
                np.polyval(np.polyfit(np.log(n_small), values[:, j], 1), np.log(n_large))
                for j in range(2)
            ]
        )

    point = at(per_seed.mean(axis=1))
    seeds = per_seed.shape[1]
    boots = np.array(
        [
            at(np.stack([s[rng.integers(0, seeds, seeds)].mean(axis=0) for s in per_seed]))
            for _ in range(N_BOOT)
        ]
    )
    ceil = boots[:, 1] - boots[:, 0]
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    return dict(
        a=float(point[0]),
        b=float(point[1]),
        ceiling=float(point[1] - point[0]),
        a_ci=[float(lo[0]), float(hi[0])],
        b_ci=[float(lo[1]), float(hi[1])],
        ceiling_ci=[float(v) for v in np.percentile(ceil, [2.5, 97.5])],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/size_law"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--figure", type=Path, default=None, help="a and b against size")
    args = parser.parse_args()
    out, seeds = args.out, args.seeds
    out.mkdir(parents=True, exist_ok=True)
    small, large = WIDTHS[:-1], WIDTHS[-1]
    rows = {w: [vanilla(out, w, s) for s in seeds] for w in small}
    sizes = {w: non_embedding_params(load_weights(model(out, w))) for w in small}
    pred_file = out / "prediction.json"
    if not pred_file.exists():  # before the largest is pre-trained: it cannot inform this
        cfg = replace(TESTBED.pretrain, hidden_size=large, intermediate_size=2 * large)
        tmp_params = non_embedding_params(build_model(cfg, build_tokenizer()))  # untrained
        per_seed = np.array([[(r["a"], r["b"]) for r in rows[w]] for w in small])
        n_small = np.array([sizes[w] for w in small], dtype=float)
        p = predict(n_small, per_seed, tmp_params, np.random.default_rng(0))
        pred_file.write_text(json.dumps({"width": large, "params": tmp_params, **p}, indent=1))
    pred = json.loads(pred_file.read_text())
    rows[large] = [vanilla(out, large, s) for s in seeds]
    sizes[large] = non_embedding_params(load_weights(model(out, large)))
    assert sizes[large] == pred["params"], "the prediction's size is the model's"

    print("## The law's coefficients across model size (Fig. 7 in miniature)\n")
    print(
        "The addition testbed at widths "
        f"{', '.join(map(str, WIDTHS))} (MLP at twice the width, 2 layers), each pre-trained as "
        "the testbed (`--preset testbed`), then vanilla GRPO for 300 steps, seeds "
        f"{', '.join(map(str, seeds))}. The law fitted on each run's validation reward (31 "
        "points). Mean ± half-width of the 95% t interval over seeds.\n"
    )
    print(
        "| width | non-embedding params | a | b | ceiling b − a | R² | H₀ → H end "
        "| val reward end |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in WIDTHS:
        r = rows[w]
        cells = []
        for key in ("a", "b"):
            m, h = mean_interval([x[key] for x in r])
            cells.append(f"{m:.3f} ± {h:.3f}")
        m, h = mean_interval([x["b"] - x["a"] for x in r])
        cells.append(f"{m:.3f} ± {h:.3f}")
        cells.append(f"{min(x['r2'] for x in r):.3f}–{max(x['r2'] for x in r):.3f}")
        cells.append(
            f"{np.mean([x['h0'] for x in r]):.3f} → {np.mean([x['h_end'] for x in r]):.3f}"
        )
        m, h = mean_interval([x["val_end"] for x in r])
        cells.append(f"{m:.3f} ± {h:.3f}")
        print(f"| {w} | {sizes[w]:,} | " + " | ".join(cells) + " |")
    print()
    n_small = np.array([sizes[w] for w in small], dtype=float)
    for key in ("a", "b"):
        k, c = loglinear(n_small, np.array([np.mean([x[key] for x in rows[w]]) for w in small]))
        print(f"- log-linear on the three smaller sizes: {key} = {k:.4f}·ln N + {c:.3f}")
    print()
    print(f"### The largest size (width {large}, {sizes[large]:,} parameters), predicted first\n")
    print("| | predicted (95% interval) | measured (mean ± 95% t) | error |")
    print("|---|---:|---:|---:|")
    for key, vals in (
        ("a", [x["a"] for x in rows[large]]),
        ("b", [x["b"] for x in rows[large]]),
        ("ceiling", [x["b"] - x["a"] for x in rows[large]]),
    ):
        m, h = mean_interval(vals)
        lo, hi = pred[f"{key}_ci"]
        print(
            f"| {key} | {pred[key]:.3f} [{lo:.3f}, {hi:.3f}] | {m:.3f} ± {h:.3f} | "
            f"{pred[key] - m:+.3f} ({(pred[key] - m) / abs(m):+.0%}) |"
        )
    print()
    (out / "rows.json").write_text(json.dumps({str(w): rows[w] for w in WIDTHS}, indent=1))
    if args.figure is not None:
        plot_sizes(rows, sizes, pred).savefig(args.figure, dpi=110)


def plot_sizes(rows: dict, sizes: dict, pred: dict):
    """a and b of each run against the non-embedding count (log axis), the log-linear fit on
    the smaller sizes, and the largest size's prediction with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4))
    widths = sorted(rows)
    small = widths[:-1]
    grid = np.geomspace(min(sizes.values()) * 0.8, max(sizes.values()) * 1.25, 50)
    for ax, key in zip(axes, ("a", "b"), strict=True):
        for w in widths:
            ys = [r[key] for r in rows[w]]
            label = (
                "runs (seeds)" if w == small[0] else "largest, measured" if w not in small else None
            )
            ax.scatter(
                [sizes[w]] * len(ys), ys, s=14, color="C0" if w in small else "C3", label=label
            )
        n_small = np.array([sizes[w] for w in small], dtype=float)
        k, c = loglinear(n_small, np.array([np.mean([r[key] for r in rows[w]]) for w in small]))
        ax.plot(grid, k * np.log(grid) + c, color="C0", label="log-linear, 3 smaller sizes")
        lo, hi = pred[f"{key}_ci"]
        ax.errorbar(
            [pred["params"]],
            [pred[key]],
            yerr=[[pred[key] - lo], [hi - pred[key]]],
            fmt="D",
            color="C1",
            label="predicted (95%)",
        )
        ax.set(xscale="log", xlabel="non-embedding parameters", ylabel=key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
