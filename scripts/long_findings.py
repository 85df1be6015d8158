"""The long-response testbed (docs/llm_findings.md §8): vanilla, Clip-Cov and KL-Cov at the
paper's settings where an update holds tens of thousands of tokens (the paper's Fig. 11 and
Table 2), and Table 1 there, over three seeds.

    .venv/bin/python scripts/long_findings.py --out runs/long

The model is pre-trained as ``--preset running-sum`` says (``llm_bridge.testbed.RUNNING_SUM``),
into ``--out/model`` unless one is there; every number is from a seeded run written under
--out, and a finished run is reused (``train_or_reuse``), so an interrupted invocation resumes.
Runs use one thread; two invocations with different ``--controls`` or ``--seeds`` may run at
once (they take turns on a shared run). Prints markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

torch.set_num_threads(1)

import numpy as np  # noqa: E402

from llm_bridge import pretrain_tiny, train_or_reuse  # noqa: E402
from llm_bridge.compare import (  # noqa: E402
    compare_run,
    run_cov_tables,
    run_summary,
    table1_over_seeds,
)
from llm_bridge.tasks import TaskName, answer_chars  # noqa: E402
from llm_bridge.testbed import RUNNING_SUM  # noqa: E402
from softmax_theory import PolicyLossConfig, read_run  # noqa: E402
from softmax_theory.stats import interval_text  # noqa: E402

# Clip-Cov and KL-Cov at their defaults (verl's and the paper's: ratios 2e-4 and 2e-3, KL-Cov's
# coefficient 1); nothing is tuned here
CONTROLS = {
    "vanilla": {},
    "clip_cov": {"loss_mode": "clip_cov"},
    "kl_cov": {"loss_mode": "kl_cov"},
}
EXTRA = dict(probe=False, checkpoint_every=0, save_final=False)
TAIL = 0.1  # "late in the run": the last tenth of the steps


def tail(values: list[float]) -> float:
    return float(np.mean(values[-max(1, round(TAIL * len(values))) :]))


def summary(path: Path, seconds: float | None) -> dict:
    run = read_run(path)
    steps = run.steps
    val = [s for s in steps if s.get("val_reward") is not None]
    return dict(
        h0=steps[0]["entropy"],
        h_late=tail([s["entropy"] for s in steps]),
        reward_late=tail([s["reward"] for s in steps]),
        val0=val[0]["val_reward"],
        val=val[-1]["val_reward"],
        pass_k=val[-1].get(f"val_pass@{run.config.get('val_k')}"),
        length=tail([s["response_length"] for s in steps]),
        minutes=None if seconds is None else seconds / 60,
        tables=run_cov_tables(path),
        regime=regime(run, seconds),
    )


def regime(run, seconds: float | None) -> dict:
    """The run against the preset's regime targets (``RegimeTargets.checks``; the time check
    only where the run's wall time is known)."""
    report = compare_run(run, n_boot=200, rng=np.random.default_rng(0))
    entry = run_summary(report, run)
    checks = RUNNING_SUM.targets.checks(entry, seconds if seconds is not None else 0.0)
    if seconds is None:
        del checks["minutes"]
    return dict(
        drop=entry["entropy_drop"],
        early=entry["fig2"]["entropy"],
        late=entry["reward_last_third"],
        r2=entry["law"].get("r2"),
        points=entry["law"].get("n"),
        met=[k for k, v in checks.items() if v],
        missed=[k for k, v in checks.items() if not v],
    )


HELD_OUT = 128  # held-out prompts of the model check


def model_check(model: Path) -> dict[float, float]:
    """The pre-trained model's held-out reward, one sample per prompt, greedy and at T = 1
    (what it knows against what it writes: RL's headroom), cached in its folder."""
    cache = model / "headroom.json"
    if cache.exists():
        return {float(k): v for k, v in json.loads(cache.read_text()).items()}
    from llm_bridge.models import load_model
    from llm_bridge.scoring import held_out_reward
    from llm_bridge.tasks import synthetic_task

    net, tokenizer = load_model(model)
    pre = RUNNING_SUM.pretrain
    task = synthetic_task(pre.task, seed=pre.seed, terms=pre.terms)
    out = held_out_reward(net, tokenizer, task, (0.0, 1.0), HELD_OUT)
    cache.write_text(json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/long"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--controls", nargs="+", choices=list(CONTROLS), default=list(CONTROLS))
    args = parser.parse_args()
    model = args.out / "model"
    if not (model / "pretrain.json").exists():
        pretrain_tiny(RUNNING_SUM.pretrain, model, log=lambda _: None)
    check = model_check(model)
    cfg0 = RUNNING_SUM.train_config(str(model), **EXTRA)
    mid = cfg0.steps // 2
    runs: dict[str, list[dict]] = {}
    for label in args.controls:
        for seed in args.seeds:
            cfg = RUNNING_SUM.train_config(
                str(model),
                seed=seed,
                policy_loss=PolicyLossConfig(**CONTROLS[label]),
                cov_table_steps=(0, mid) if label == "vanilla" else (),
                **EXTRA,
            )
            path = args.out / f"{label}_s{seed}"
            runs.setdefault(label, []).append(summary(path, train_or_reuse(cfg, path)))
    k = cfg0.val_k
    # a response: every partial sum and EOS (the task's own budget); an update: a mini-batch
    tokens = cfg0.mini_batch_responses * (answer_chars(TaskName.RUNNING_SUM, cfg0.terms) + 1)
    print("## The controls where many tokens compete (Fig. 11, Table 2)\n")
    print(
        f"The model, on {HELD_OUT} held-out prompts, one sample each (the share of partial sums "
        f"right): {check[0.0]:.1%} greedy, {check[1.0]:.1%} at T = 1.\n"
    )
    print(
        f"`--preset running-sum`: {cfg0.steps} steps of {cfg0.prompts_per_step} prompts × "
        f"{cfg0.group_size}, {cfg0.updates_per_step} updates a step ({cfg0.epochs} epochs of "
        f"{cfg0.mini_batches}) of at most {tokens:,} tokens each; "
        f"seeds {', '.join(map(str, args.seeds))}; mean ± half-width of the 95% t interval. "
        f"Late: the mean over the last {TAIL:.0%} of the steps.\n"
    )
    print(
        "| control | H₀ | H late | H late ÷ vanilla's | reward late | val reward | "
        f"val pass@{k} | length late | minutes |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = runs.get("vanilla")
    for label, rs in runs.items():
        ratio = (
            interval_text([r["h_late"] / b["h_late"] for r, b in zip(rs, base, strict=True)], ".2f")
            + "×"
            if base is not None and len(base) == len(rs)
            else "—"
        )
        passes = [r["pass_k"] for r in rs if r["pass_k"] is not None]
        minutes = [r["minutes"] for r in rs if r["minutes"] is not None]
        cells = [
            interval_text([r["h0"] for r in rs]),
            interval_text([r["h_late"] for r in rs]),
            ratio,
            interval_text([r["reward_late"] for r in rs]),
            interval_text([r["val"] for r in rs]),
            interval_text(passes) if passes else "—",
            interval_text([r["length"] for r in rs], ".1f"),
            f"{max(minutes):.1f}" if minutes else "—",
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if base is not None:
        t = RUNNING_SUM.targets
        print(
            f"\nVanilla against the regime's targets (`RegimeTargets`: entropy drop ≥ "
            f"{t.min_drop:.0%}, ≥ {t.min_early:.0%} of the drop and of the reward gain by a third "
            f"of the steps, the last third adding at most {t.max_late:.0%} of the gain, the law at "
            f"R² ≥ {t.law_r2} on ≥ {t.law_points} points, ≤ {t.max_minutes:g} minutes):\n"
        )
        print(
            "| seed | entropy drop | drop by a third | last third's share of the gain | "
            "law R² (points) | met | missed |"
        )
        print("|---:|---:|---:|---:|---:|---|---|")
        for seed, r in zip(args.seeds, base, strict=True):
            g = r["regime"]

            def num(x, fmt=".2f"):
                return "—" if x is None else format(x, fmt)

            print(
                f"| {seed} | {num(g['drop'], '.0%')} | {num(g['early'], '.0%')} | "
                f"{num(g['late'], '.0%')} | {num(g['r2'], '.3f')} ({g['points']}) | "
                f"{', '.join(g['met']) or '—'} | {', '.join(g['missed']) or '—'} |"
            )
        tables: dict[int, list[dict]] = {}
        for r in base:
            for row in r["tables"]:
                tables.setdefault(row["step"], []).append(row)
        print("\n## Table 1 on the long-response testbed\n")
        print(f"Vanilla runs, seeds {', '.join(map(str, args.seeds))}.\n")
        print("\n".join(table1_over_seeds(tables)))


if __name__ == "__main__":
    main()
