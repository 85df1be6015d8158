"""Steering entropy on the regime testbed (docs/control.md): the predictive controller against a
fixed bonus, the adaptive rule and PI, on two target paths, and holding entropy at four levels
to ask whether reward settles where the law fitted on vanilla says.

    .venv/bin/python scripts/control_findings.py --out runs/control --seeds 0

Every number is from a seeded run written under --out; a finished run of the same config is
reused (``train_or_reuse``), so an interrupted invocation loses nothing. Runs use one thread and
run one at a time. Prints markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

torch.set_num_threads(1)

import numpy as np  # noqa: E402
from trl_adaptive_entropy import trl_adaptive_run  # noqa: E402

from llm_bridge import pretrain_tiny, train_or_reuse  # noqa: E402
from llm_bridge.testbed import TESTBED  # noqa: E402
from softmax_theory import read_run  # noqa: E402
from softmax_theory.control import ControlConfig, target_path  # noqa: E402
from softmax_theory.law import fit_entropy_law  # noqa: E402
from softmax_theory.policy import PolicyLossConfig  # noqa: E402
from softmax_theory.stats import interval_text  # noqa: E402

# the runs' shared settings beside the preset: no probe (the controller needs none), validation
# every 10 steps on 128 held-out prompts × 8 samples (val_reward and the unbiased pass@8)
EXTRA = dict(probe=False, checkpoint_every=0, save_final=False, val_prompts=128, val_k=8)
# the bonus's range for every controller (below 0: a penalty, so a path below vanilla's
# entropy can be followed too)
COEF = dict(control_coef_min=-0.5, control_coef_max=1.0)
PATHS = {
    "hold 0.5·H₀ from step 10": dict(control_path="constant", control_level=0.5, control_start=10),
    "linear H₀ → 0.2·H₀": dict(control_path="linear", control_level=0.2),
}
FIXED_COEF = 0.005  # the fixed bonus, beside the paths' controllers
# the second actuator: KL-Cov at the paper's ratio, its coefficient in [0, 10] (the paper's 1),
# on seed 0 (it saturates there; a run costs three times a bonus run's time on this machine)
KL_SEEDS = (0,)
KL_COV = dict(
    policy_loss=PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.002),
    coef=dict(control_actuator="ppo_kl_coef", control_coef_min=0.0, control_coef_max=10.0),
)
ADAPTIVE_DELTA = 0.005  # the adaptive rule's step (Skywork-OR1's ±δ)
LEVELS = (0.2, 0.4, 0.6, 0.8)  # the held levels of the law-as-intervention runs
TRL_DELTAS = (0.001, 0.005, 0.02)  # TRL's entropy_coef_delta, chosen on seed 0 per path


def model(out: Path) -> str:
    path = out / "model"
    if not (path / "pretrain.json").exists():
        pretrain_tiny(TESTBED.pretrain, path, log=lambda _: None)
    return str(path)


def run(out: Path, name: str, seed: int, **settings) -> list[dict]:
    cfg = TESTBED.train_config(model(out), seed=seed, **{**EXTRA, **settings})
    path = out / "runs" / f"{name}_s{seed}"
    train_or_reuse(cfg, path)
    return read_run(path).steps


def controlled(kind: str, path: dict) -> dict:
    return {"control": ControlConfig(entropy_control=kind, **path, **COEF)}


def path_values(steps: list[dict], path: dict, h0: float) -> list[float | None]:
    """The path each step should be at (the same for every run of a seed: H₀ is step 0's)."""
    p = target_path(ControlConfig(**path), h0, len(steps), np.log(10_000))
    return [p.target(s["step"]) for s in steps]


def rmse(steps: list[dict], targets: list[float | None]) -> float:
    err = [s["entropy"] - t for s, t in zip(steps, targets, strict=True) if t is not None]
    return float(np.sqrt(np.mean(np.square(err))))


def tail(steps: list[dict], key: str, n: int = 3) -> float:
    vals = [s[key] for s in steps if key in s]
    return float(np.mean(vals[-n:]))


def trl_run(out: Path, title: str, path: dict, seed: int, delta: float) -> list[dict]:
    """TRL's own adaptive entropy on the path's end level, the seed's vanilla H₀."""
    vanilla = run(out, "vanilla", seed)
    level = [t for t in path_values(vanilla, path, vanilla[0]["entropy"]) if t is not None][-1]
    name = f"trl_{title.split()[0]}_d{delta}_s{seed}"
    return trl_adaptive_run(model(out), out / "trl" / name, seed, level, delta)


def trl_delta(out: Path, title: str, path: dict) -> tuple[float, dict[float, float]]:
    """TRL's δ with the lowest tracking RMSE on seed 0, and each δ's RMSE."""
    vanilla = run(out, "vanilla", 0)
    targets = path_values(vanilla, path, vanilla[0]["entropy"])
    err = {d: rmse(trl_run(out, title, path, 0, d), targets) for d in TRL_DELTAS}
    return min(err, key=err.get), err


def trl_runs(out: Path, seeds: list[int]) -> None:
    """Every TRL run of the tracking table (its δ chosen on seed 0 first)."""
    for title, path in PATHS.items():
        delta, _ = trl_delta(out, title, path)
        for seed in seeds:
            trl_run(out, title, path, seed, delta)


def tabular(seeds: list[int]) -> None:
    """The tabular world, exact: the same controllers on the token tree and the contextual
    bandit, GRPO with 4 epochs of η 0.5 on the logits, 200 steps."""
    from softmax_theory.algorithms import AlgoConfig
    from softmax_theory.dynamics import SimConfig, simulate
    from softmax_theory.envs import EnvConfig, make_env

    print("## The tabular world (exact)\n")
    print(
        "GRPO on the logits (4 epochs of η = 0.5 a step, 200 steps), the bonus in [−1, 1] for "
        "PI and the forecast unless the row says (a negative one is a penalty); RMSE of H − H* "
        "from step 10 on. The "
        "adaptive rule (a bonus only, by its definition) aims at the path's end, at its best "
        "δ of 0.001, 0.005 and 0.02. Mean "
        f"over seeds {', '.join(map(str, seeds))}.\n"
    )
    print("| env | path | vanilla | adaptive (best δ) | PI | predictive | adaptive ÷ predictive |")
    print("|---|---|---:|---:|---:|---:|---:|")
    hold = dict(control_path="constant", control_level=0.8)
    # (title, path, bound on the bonus of PI and the forecast); the last row lifts the bound, to
    # show what the bounded actuator costs a path that starts with a jump
    paths = [
        ("hold 0.8·H₀", hold, 1.0),
        ("linear H₀ → 0.5·H₀", dict(control_path="linear", control_level=0.5), 1.0),
        ("hold 0.8·H₀, bonus in [−4, 4]", hold, 4.0),
    ]
    # RMSE by (env, path, seed, algo): a row that changes only the bound reuses the runs that
    # do not read it (vanilla and the adaptive rule)
    done: dict[tuple, float] = {}
    for env_name in ("tree", "contextual"):
        env = make_env(EnvConfig(name=env_name))
        for title, path, bound in paths:
            res: dict[str, list[float]] = {}
            for seed in seeds:
                h0 = env.entropy(env.initial_logits(np.random.default_rng(seed)))
                p = target_path(ControlConfig(**path), h0, 200, 10.0)
                where = (env_name, *path.items())

                def err(algo, seed=seed, p=p, env=env, key=where) -> float:
                    if (*key, seed, algo) not in done:
                        rec = simulate(env, SimConfig(steps=200, lr=0.5, seed=seed, algo=algo))
                        e = [r["entropy"] - p.target(r["step"]) for r in rec.records[10:]]
                        done[(*key, seed, algo)] = float(np.sqrt(np.mean(np.square(e))))
                    return done[(*key, seed, algo)]

                level = p.target(199)
                ctl = dict(**path, control_coef_min=-bound, control_coef_max=bound)
                res.setdefault("vanilla", []).append(err(AlgoConfig()))
                res.setdefault("adaptive", []).append(
                    min(
                        err(
                            AlgoConfig(
                                policy_loss=PolicyLossConfig(entropy_target=level, entropy_delta=d)
                            )
                        )
                        for d in (0.001, 0.005, 0.02)
                    )
                )
                res.setdefault("pi", []).append(
                    err(AlgoConfig(control=ControlConfig(entropy_control="pi", **ctl)))
                )
                res.setdefault("predictive", []).append(
                    err(AlgoConfig(control=ControlConfig(entropy_control="predictive", **ctl)))
                )
            m = {k: float(np.mean(v)) for k, v in res.items()}
            print(
                f"| {env_name} | {title} | {m['vanilla']:.2e} | {m['adaptive']:.2e} | "
                f"{m['pi']:.2e} | {m['predictive']:.2e} | {m['adaptive'] / m['predictive']:.0f}× |"
            )
    print()


def tracking(out: Path, seeds: list[int]) -> None:
    print("## Tracking a path\n")
    print(
        "The testbed's run (`--preset testbed`, 300 steps) with no probe; the bonus in "
        f"[{COEF['control_coef_min']}, {COEF['control_coef_max']}] for every controller. "
        "RMSE of `entropy` − H* over the steps the path holds; val reward and pass@8: the mean "
        "of the last 3 validations. Mean ± half-width of the 95% t interval over seeds "
        f"{', '.join(map(str, seeds))}.\n"
    )
    for title, path in PATHS.items():
        print(f"### {title}\n")
        print("| control | RMSE | H end | val reward | val pass@8 |")
        print("|---|---:|---:|---:|---:|")
        rows: dict[str, list[tuple[float, float, float, float]]] = {}
        delta, by_delta = trl_delta(out, title, path)
        for seed in seeds:
            vanilla = run(out, "vanilla", seed)
            h0 = vanilla[0]["entropy"]
            targets = path_values(vanilla, path, h0)
            level = [t for t in targets if t is not None][-1]
            slug = title.split()[0]
            runs = {
                "vanilla": vanilla,
                f"fixed bonus {FIXED_COEF}": run(
                    out, "fixed", seed, policy_loss=PolicyLossConfig(entropy_coeff=FIXED_COEF)
                ),
                "adaptive rule (target: the path's end)": run(
                    out,
                    f"adaptive_{slug}",
                    seed,
                    policy_loss=PolicyLossConfig(
                        entropy_target=level, entropy_delta=ADAPTIVE_DELTA
                    ),
                ),
                f"TRL's adaptive entropy (δ {delta})": trl_run(out, title, path, seed, delta),
                "PI": run(out, f"pi_{slug}", seed, **controlled("pi", path)),
                "predictive": run(
                    out, f"predictive_{slug}", seed, **controlled("predictive", path)
                ),
            }
            if seed in KL_SEEDS:
                runs["predictive on KL-Cov's coefficient (ratio 0.002; seed 0)"] = run(
                    out,
                    f"predictive_klcov_{slug}",
                    seed,
                    policy_loss=KL_COV["policy_loss"],
                    control=ControlConfig(entropy_control="predictive", **path, **KL_COV["coef"]),
                )
            for name, steps in runs.items():
                rows.setdefault(name, []).append(
                    (
                        rmse(steps, targets),
                        tail(steps, "entropy", 5),
                        tail(steps, "val_reward"),
                        tail(steps, "val_pass@8"),
                    )
                )
        for name, vals in rows.items():
            cells = [interval_text(col) for col in zip(*vals, strict=True)]  # mean ± 95% t
            print(f"| {name} | " + " | ".join(cells) + " |")
        chosen = ", ".join(f"δ {d}: {e:.3f}" for d, e in by_delta.items())
        print(f"\nTRL's δ, chosen on seed 0 by its RMSE: {chosen}.\n")


def law_intervention(out: Path, seeds: list[int], figure: Path | None = None) -> None:
    print("## The law as an intervention\n")
    print(
        "Entropy held at a share of H₀ from step 10 by the predictive controller; where the "
        "validation reward settles (mean ± standard error of the last 5 validations) beside "
        "what the law R = −a·e^H + b, fitted on the vanilla run of the same seed (validation "
        "reward against entropy), gives at the held entropy (95% bootstrap interval over the "
        "vanilla run's validation points, 1,000 resamples).\n"
    )
    print("| seed | level | H held (last 50 steps) | val reward settles at | the law says |")
    print("|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    points = []
    for seed in seeds:
        vanilla = run(out, "vanilla", seed)
        vals = [s for s in vanilla if "val_reward" in s]
        h_v = np.array([s["entropy"] for s in vals])
        r_v = np.array([s["val_reward"] for s in vals])
        fit = fit_entropy_law(h_v, r_v)
        boots = []
        for _ in range(1000):
            idx = rng.integers(0, h_v.size, h_v.size)
            if np.ptp(h_v[idx]) > 0:
                boots.append(fit_entropy_law(h_v[idx], r_v[idx]))
        for level in LEVELS:
            path = dict(control_path="constant", control_level=level, control_start=10)
            steps = run(out, f"hold{level}", seed, **controlled("predictive", path))
            h = float(np.mean([s["entropy"] for s in steps[-50:]]))
            last = [s["val_reward"] for s in steps if "val_reward" in s][-5:]
            settled, se = float(np.mean(last)), float(np.std(last, ddof=1) / np.sqrt(len(last)))
            law = -fit.a * np.exp(h) + fit.b
            lo, hi = np.percentile([-f.a * np.exp(h) + f.b for f in boots], [2.5, 97.5])
            points.append((h, settled, se, law, lo, hi))
            print(
                f"| {seed} | {level} | {h:.3f} | {settled:.3f} ± {se:.3f} | "
                f"{law:.3f} [{lo:.3f}, {hi:.3f}] |"
            )
        print(
            f"\nThe law on vanilla, seed {seed}: a = {fit.a:.3f}, b = {fit.b:.3f}, "
            f"R² = {fit.r2:.3f} ({fit.n} points).\n"
        )
        if figure is not None:
            plot_intervention(h_v, r_v, fit, boots, points).savefig(figure, dpi=110)


def plot_intervention(h_v, r_v, fit, boots, points):
    """Vanilla's (H, val reward) points and the law fitted on them with its band, and the held
    runs' settled rewards at their held entropy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    grid = np.linspace(min(h_v.min(), min(p[0] for p in points)) * 0.9, h_v.max() * 1.02, 100)
    curves = np.array([-f.a * np.exp(grid) + f.b for f in boots])
    lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
    ax.fill_between(grid, lo, hi, color="C0", alpha=0.2, label="law, 95% band")
    ax.plot(grid, -fit.a * np.exp(grid) + fit.b, color="C0", label="law fitted on vanilla")
    ax.scatter(h_v, r_v, s=10, color="C0", alpha=0.6, label="vanilla validations")
    h, r, se = (np.array([p[i] for p in points]) for i in range(3))
    ax.errorbar(h, r, yerr=se, fmt="o", color="C3", label="held entropy: settled reward")
    ax.set(xlabel="entropy (nats)", ylabel="validation reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/control"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--only",
        choices=["tabular", "tracking", "trl", "law"],
        default=None,
        help="trl: only the TRL runs of the tracking table (to run beside the rest)",
    )
    parser.add_argument("--figure", type=Path, default=None, help="the law-as-intervention figure")
    args = parser.parse_args()
    if args.only in (None, "tabular"):
        tabular(args.seeds)
    if args.only == "trl":
        trl_runs(args.out, args.seeds)
    if args.only in (None, "tracking"):
        tracking(args.out, args.seeds)
    if args.only in (None, "law"):
        law_intervention(args.out, args.seeds, args.figure)


if __name__ == "__main__":
    main()
