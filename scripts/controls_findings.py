"""Reproduce docs/controls.md: every entropy control against vanilla, in both worlds, 3 seeds.

    .venv/bin/python scripts/controls_findings.py --model .cache/tiny-addition \
        --out runs/controls --figures docs/figures > docs/controls.md

Needs the pre-trained tiny model (`make demo` or `llm-bridge pretrain-tiny`); the long-response
section pre-trains its own running-sum model into --out. Prints markdown; every number comes from
a seeded run written under --out (a finished run of the same config is reused, so an interrupted
invocation resumes). ``--only tabular|llm|llm-sweeps|long`` runs one part; parts run in
separate processes may run at once (each writes its own runs). About 80 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from llm_bridge import TinyConfig, TrainConfig, pretrain_tiny, train_or_reuse  # noqa: E402
from llm_bridge.compare import attribution_totals  # noqa: E402
from softmax_theory import (  # noqa: E402
    ATTRIBUTION_KEYS,
    AlgoConfig,
    EnvConfig,
    PolicyLossConfig,
    SimConfig,
    make_env,
    read_run,
    simulate,
)

SEEDS = (0, 1, 2)
K = 8  # pass@K
SIGN = ATTRIBUTION_KEYS[:5]

# ---------------------------------------------------------------------------------------------
# The controls: (label, loss settings, other settings); one list for both worlds
# ---------------------------------------------------------------------------------------------


def controls(cov_ratio: float) -> list[tuple[str, dict, dict]]:
    """Every control at its paper's (or verl's) defaults; Clip-Cov and KL-Cov at ``cov_ratio``,
    scaled to the world's batch (the paper's 2e-4 selects a single token of a small batch)."""
    return [
        ("vanilla", {}, {}),
        ("clip_higher (DAPO)", {"loss_mode": "clip_higher"}, {}),
        ("clip_cov", {"loss_mode": "clip_cov", "clip_cov_ratio": cov_ratio}, {}),
        ("kl_cov", {"loss_mode": "kl_cov", "kl_cov_ratio": cov_ratio}, {}),
        ("gppo β₁=β₂=1", {"loss_mode": "gppo"}, {}),
        ("ce-gppo β₁=0.5, β₂=1", {"loss_mode": "gppo", "gppo_beta_low": 0.5}, {}),
        ("cispo", {"loss_mode": "cispo"}, {}),
        ("gspo", {"loss_mode": "gspo", "loss_agg_mode": "seq-mean-token-mean"}, {}),
        ("archer", {"loss_mode": "archer"}, {}),
        ("w_reinforce λ=0.1", {}, {"advantage": "w_reinforce"}),
        ("nsr λ=0", {}, {"advantage": "w_reinforce", "w_reinforce_lambda": 0.0}),
        ("entropy-shaped A, α=0.4 κ=2", {"entropy_adv_alpha": 0.4}, {}),
        ("80/20: top-20% entropy tokens", {"top_entropy_ratio": 0.2}, {}),
    ]


def coefficient_sweeps(cov_ratio: float, betas=(0.0, 0.01, 0.1, 1.0)) -> dict[str, list]:
    """The paper's coefficient figures: 9 (entropy bonus), 10 (KL to the reference), 12 (the
    dial of KL-Cov's coefficient and Clip-Cov's ratio)."""
    return {
        "Fig. 9: entropy bonus α": [
            (f"α={a:g}", {"entropy_coeff": a}) for a in (0.0, 1e-4, 1e-3, 1e-2)
        ],
        "Fig. 10: KL penalty β": [(f"β={b:g}", {"kl_loss_coef": b}) for b in betas],
        "Fig. 12: KL-Cov coefficient": [
            (f"kl_coef={c:g}", {"loss_mode": "kl_cov", "kl_cov_ratio": cov_ratio, "ppo_kl_coef": c})
            for c in (0.1, 1.0, 10.0)
        ],
        "Fig. 12: Clip-Cov ratio": [
            (f"ratio={r:g}", {"loss_mode": "clip_cov", "clip_cov_ratio": r})
            for r in (cov_ratio / 10, cov_ratio, cov_ratio * 5)
        ],
    }


def scopes(cov_ratio: float, micro: str) -> list[tuple[str, dict]]:
    """Where Clip-Cov/KL-Cov select (``micro`` names the micro-batching), and the oracle."""
    out = []
    for loss in ("clip_cov", "kl_cov"):
        base = {"loss_mode": loss, f"{loss}_ratio": cov_ratio}
        out += [
            (f"{loss}, micro ({micro})", {**base, "cov_scope": "micro"}),
            (f"{loss}, mini", {**base, "cov_scope": "mini"}),
            (f"{loss}, global", {**base, "cov_scope": "global"}),
            (f"{loss}, oracle", {**base, "cov_selector": "oracle"}),
        ]
    return out


# ---------------------------------------------------------------------------------------------
# Summaries over seeds
# ---------------------------------------------------------------------------------------------


def _ms(values: list[float], fmt: str = ".3f") -> str:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return "n/a"
    return f"{v.mean():{fmt}} ± {v.std(ddof=1) if v.size > 1 else 0:{fmt}}"


def _tail(run, key: str, n: int) -> float | None:
    vals = [s[key] for s in run.steps if s.get(key) is not None]
    return float(np.mean(vals[-n:])) if vals else None


def _total(run, key: str) -> float:
    return float(sum(s[key] for s in run.steps if key in s))


def _shares(runs, keys) -> str:
    """Σ over steps of each part, as a share of Σ pred_lemma1 (``compare``'s totals), mean over
    seeds; n/a where no seed has the part."""
    totals = [attribution_totals(r) for r in runs]
    cells = []
    for k in keys:
        shares = [t[k] / t["pred_lemma1"] for t in totals if k in t and t["pred_lemma1"]]
        cells.append(f"{np.mean(shares):+.0%}" if shares else "n/a")
    return " | ".join(cells)


def _attribution_cells(runs) -> str:
    """Σ pred_lemma1, the sign × likely shares and the clipped share: one table's last cells."""
    total = _ms([_total(r, "pred_lemma1") for r in runs], "+.3f")
    return f"{total} | {_shares(runs, SIGN)} | {_shares(runs, ('attr/clipped',))}"


def _curve(runs, key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [[s[key] for s in r.steps if s.get(key) is not None] for r in runs]
    n = min(len(x) for x in rows)
    arr = np.array([x[:n] for x in rows])
    steps = [s["step"] for s in runs[0].steps if s.get(key) is not None][:n]
    return np.array(steps), arr.mean(0)


def sweep_figure(title: str, groups: dict[str, list], key: str, ylabel: str, path: Path) -> None:
    """One line per setting (mean over seeds) of ``key`` against step."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, (label, runs) in enumerate(groups.items()):
        steps, mean = _curve(runs, key)
        ax.plot(steps, mean, color=f"C{i}", label=label)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Tabular world: exact J, exact ΔH
# ---------------------------------------------------------------------------------------------

TAB_STEPS, TAB_LR = 200, 5.0
TAB_COV_RATIO = 0.02  # of 32 prompts × 8 responses: 5 tokens


def _sim(env_name: str, label: str, loss: dict, extra: dict, seed: int, out: Path):
    run_dir = out / "tabular" / env_name / f"{_slug(label)}_s{seed}"
    cfg = SimConfig(
        steps=TAB_STEPS,
        lr=TAB_LR,
        seed=seed,
        pass_k=K,
        algo=AlgoConfig(algo="grpo", policy_loss=PolicyLossConfig(**loss), **extra),
    )
    if (run_dir / "steps.jsonl").exists():
        run = read_run(run_dir)
        if len(run.steps) == cfg.steps and run.config.get("lr") == cfg.lr:
            return run
    shutil.rmtree(run_dir, ignore_errors=True)
    simulate(make_env(EnvConfig(name=env_name)), cfg, out=run_dir)
    return read_run(run_dir)


def _run_label(title: str, label: str, loss: dict) -> str:
    """A sweep's zero setting is vanilla: its runs are vanilla's."""
    return "vanilla" if not any(loss.values()) else f"{title} {label}"


def _slug(label: str) -> str:
    ascii_label = label.replace("α", "alpha").replace("β", "beta").replace("λ", "lambda")
    ascii_label = ascii_label.replace("κ", "kappa").replace("₁", "1").replace("₂", "2")
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in ascii_label).strip("_")


def tabular(out: Path, figures: Path) -> None:
    print("## 1. Tabular world: every control against vanilla (exact)\n")
    print(
        f"GRPO on the logits, {TAB_STEPS} steps of η = {TAB_LR}, 4 epochs per batch, 32 prompts × "
        f"8 responses; Clip-Cov and KL-Cov select {TAB_COV_RATIO:.0%} of the tokens. Entropy, "
        f"reward (J) and pass@{K} are exact (the policy's own, not sampled), at the last step; "
        "mean ± sd over seeds 0–2 (the sampling seed; the environment is fixed). The attribution "
        "columns are each part's share of the run's Σ `pred_lemma1` (exact per-token parts).\n"
    )
    for env_name in ("contextual", "explore"):
        print(f"### {env_name}\n")
        print(
            f"| control | H end | J end | pass@{K} end | Σ pred_lemma1 | pos_high | pos_low | "
            "neg_high | neg_low | zero_adv | clipped |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, loss, extra in controls(TAB_COV_RATIO):
            runs = [_sim(env_name, label, loss, extra, s, out) for s in SEEDS]
            print(
                f"| {label} | {_ms([_tail(r, 'entropy', 1) for r in runs])} | "
                f"{_ms([_tail(r, 'reward', 1) for r in runs])} | "
                f"{_ms([_tail(r, f'pass@{K}', 1) for r in runs])} | "
                f"{_attribution_cells(runs)} |"
            )
        print()
        selection(env_name, out, world="tabular")
        groups_by_fig = {}
        for title, settings in coefficient_sweeps(TAB_COV_RATIO).items():
            groups = {
                label: [
                    _sim(env_name, _run_label(title, label, loss), loss, {}, s, out) for s in SEEDS
                ]
                for label, loss in settings
            }
            groups_by_fig[title] = groups
            sweep_figure(
                f"{env_name}: {title}",
                groups,
                "entropy",
                "entropy (nats)",
                figures / f"controls_{env_name}_{_slug(title)}.png",
            )
        coefficient_table(groups_by_fig, env_name, "reward", "J", figures, f"controls_{env_name}")


def coefficient_table(groups_by_fig, world, reward_key, reward_name, figures, prefix) -> None:
    print(f"#### The paper's coefficient figures ({world})\n")
    print(f"| figure | setting | H end | {reward_name} end | pass@{K} end |")
    print("|---|---|---:|---:|---:|")
    pass_key = f"pass@{K}" if world in ("contextual", "explore") else f"val_pass@{K}"
    for title, groups in groups_by_fig.items():
        for label, runs in groups.items():
            print(
                f"| {title} | {label} | {_ms([_tail(r, 'entropy', 5) for r in runs])} | "
                f"{_ms([_tail(r, reward_key, 3) for r in runs])} | "
                f"{_ms([_tail(r, pass_key, 3) for r in runs])} |"
            )
    print()
    for title in groups_by_fig:
        print(f"![{world}: {title}](figures/{prefix}_{_slug(title)}.png)")
    print()


def selection(world_name: str, out: Path, world: str, run_fn: Callable | None = None) -> None:
    """Selection scope and the oracle for Clip-Cov and KL-Cov."""
    print(f"#### Where Clip-Cov and KL-Cov select, and the oracle ({world_name})\n")
    print(
        "`selected/step`: tokens restrained per update (share × tokens). `capture`: the mean over "
        "steps of the selected tokens' A·score over the oracle's for a selection of the same "
        "size (1: the covariance rule picked the tokens whose own update lowers entropy most). "
        "`ΔH kept`: final entropy minus vanilla's. `kept per token`: that, over the tokens "
        "restrained in the whole run.\n"
    )
    print("| selection | selected/step | capture | H end | ΔH kept | kept per token | reward end |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    if world == "tabular":
        micro = "8 micro-batches"
        fn = run_fn or (
            lambda label, loss, s: _sim(
                world_name,
                label,
                loss,
                {"micro_batches": 8} if loss.get("cov_scope") == "micro" else {},
                s,
                out,
            )
        )
        n_tokens, reward_key, vanilla = 256, "reward", "vanilla"
    else:
        micro = "micro-batches of 16"
        fn = run_fn
        n_tokens, reward_key, vanilla = None, "val_reward", "vanilla"
    base = [fn(vanilla, {}, s) for s in SEEDS]
    h_base = np.mean([_tail(r, "entropy", 5) for r in base])
    for label, loss in scopes(TAB_COV_RATIO if world == "tabular" else LLM_COV_RATIO, micro):
        runs = [fn(label, loss, s) for s in SEEDS]
        per_step, capture, kept, per_token = [], [], [], []
        for r in runs:
            tok = [
                s["actor/cov_selected_frac"] * (n_tokens or s["response_length"] * s["_n"])
                for s in r.steps
                if "actor/cov_selected_frac" in s
            ]
            per_step.append(float(np.mean(tok)))
            ratios = [
                s["actor/cov_selected_value"] / s["actor/cov_oracle_value"]
                for s in r.steps
                if s.get("actor/cov_oracle_value")
            ]
            capture.append(float(np.mean(ratios)) if ratios else np.nan)
            dh = _tail(r, "entropy", 5) - h_base
            kept.append(dh)
            per_token.append(dh / max(1.0, float(np.sum(tok))))
        print(
            f"| {label} | {_ms(per_step, '.1f')} | {_ms(capture, '.2f')} | "
            f"{_ms([_tail(r, 'entropy', 5) for r in runs])} | {_ms(kept, '+.3f')} | "
            f"{_ms(per_token, '+.1e')} | {_ms([_tail(r, reward_key, 3) for r in runs])} |"
        )
    print()


# ---------------------------------------------------------------------------------------------
# Language-model world: the tiny model on addition
# ---------------------------------------------------------------------------------------------

LLM_STEPS, LLM_PROMPTS = 60, 32
LLM_COV_RATIO = 0.01  # of the ~640-token mini-batch: 6 tokens


def _llm_cfg(model: str, seed: int) -> TrainConfig:
    return TrainConfig(
        # the defaults of the time, before the testbed became them
        lr=5e-4,
        warmup_steps=10,
        model=model,
        steps=LLM_STEPS,
        prompts_per_step=LLM_PROMPTS,
        micro_batch_size=16,
        val_every=10,
        val_prompts=64,
        val_k=K,
        probe_jvp=False,
        checkpoint_every=0,
        cov_table_steps=(),
        seed=seed,
    )


def _train(cfg: TrainConfig, run_dir: Path):
    """A finished run of the same config is reused (``train_or_reuse``: parts running at once
    in several processes take turns on a run)."""
    train_or_reuse(cfg, run_dir)
    return _with_n(read_run(run_dir), cfg)


def _with_n(run, cfg: TrainConfig):
    """Each step's response count, for turning token shares into counts."""
    n = cfg.mini_batch_responses
    for s in run.steps:
        s["_n"] = n
    return run


def _same_as_control(label: str, loss: dict, extra: dict | None, cov_ratio: float) -> str:
    """The label of the control with the same settings (one run, however many tables show it;
    e.g. KL-Cov's coefficient 1 is the kl_cov control), else ``label``."""
    settings = PolicyLossConfig(**loss)
    for control, c_loss, c_extra in controls(cov_ratio):
        if PolicyLossConfig(**c_loss) == settings and c_extra == (extra or {}):
            return control
    return label


def _llm_run(model: str, out: Path, label: str, loss: dict, seed: int, extra: dict | None = None):
    cfg = replace(_llm_cfg(model, seed), policy_loss=PolicyLossConfig(**loss), **(extra or {}))
    label = _same_as_control(label, loss, extra, LLM_COV_RATIO)
    return _train(cfg, out / "llm" / f"{_slug(label)}_s{seed}")


def llm(model: str, out: Path, figures: Path) -> None:
    print("## 2. Language-model world: the tiny model on 4-digit addition\n")
    print(
        f"{LLM_STEPS} steps, {LLM_PROMPTS} prompts × 8 responses, two Adam updates per step "
        f"(lr 5e-4, 10 warm-up steps), validation every 10 steps on 64 held-out prompts with "
        f"{K} samples each (`val_reward` over the samples, `val_pass@{K}` unbiased); Clip-Cov and "
        f"KL-Cov select {LLM_COV_RATIO:.0%} of a micro-batch's tokens. H end: mean of the last "
        "5 steps; rewards: mean of the last 3 validations; mean ± sd over seeds 0–2. Attribution: "
        "each part's share of the run's Σ `pred_lemma1` (Lemma 1 at each token's own state).\n"
    )
    print(
        f"| control | H end | train reward end | val_reward | val_pass@{K} | Σ pred_lemma1 | "
        "pos_high | pos_low | neg_high | neg_low | zero_adv | clipped |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, loss, extra in controls(LLM_COV_RATIO):
        runs = [_llm_run(model, out, label, loss, s, extra) for s in SEEDS]
        print(
            f"| {label} | {_ms([_tail(r, 'entropy', 5) for r in runs])} | "
            f"{_ms([_tail(r, 'reward', 10) for r in runs])} | "
            f"{_ms([_tail(r, 'val_reward', 3) for r in runs])} | "
            f"{_ms([_tail(r, f'val_pass@{K}', 3) for r in runs])} | "
            f"{_attribution_cells(runs)} |"
        )
    print()
    selection(
        "tiny LM", out, "llm", run_fn=lambda label, loss, s: _llm_run(model, out, label, loss, s)
    )


def llm_sweeps(model: str, out: Path, figures: Path) -> None:
    """The paper's coefficient figures in the LM world."""
    groups_by_fig = {}
    # β = 0.01 left out in the LM world for time (the tabular world has it)
    for title, settings in coefficient_sweeps(LLM_COV_RATIO, betas=(0.0, 0.1, 1.0)).items():
        groups = {
            label: [_llm_run(model, out, _run_label(title, label, loss), loss, s) for s in SEEDS]
            for label, loss in settings
        }
        groups_by_fig[title] = groups
        sweep_figure(
            f"tiny LM: {title}",
            groups,
            "entropy",
            "entropy (nats)",
            figures / f"controls_llm_{_slug(title)}.png",
        )
    coefficient_table(groups_by_fig, "tiny LM", "val_reward", "val_reward", figures, "controls_llm")


# ---------------------------------------------------------------------------------------------
# Long responses: response length with and without the controls (Fig. 11)
# ---------------------------------------------------------------------------------------------

LONG_TERMS, LONG_STEPS, LONG_PROMPTS = 13, 30, 16


def long_responses(out: Path, figures: Path) -> None:
    model = out / "tiny-running-sum"
    if not (model / "config.json").exists():
        pretrain_tiny(
            # the first tiny model's schedule (1,150 steps at lr 3e-3, no label noise)
            TinyConfig(
                task="running-sum",
                terms=LONG_TERMS,
                steps=1150,
                lr=3e-3,
                warmup=50,
                label_noise=0.0,
            ),
            model,
            log=lambda _: None,
        )
    print("## 3. Long responses: response length under the controls (Fig. 11)\n")
    print(
        f"The tiny model pre-trained on running sums of {LONG_TERMS} terms (answers of "
        f"{5 * LONG_TERMS} tokens, every partial sum written; reward: the share of partial sums "
        f"right). {LONG_STEPS} steps, {LONG_PROMPTS} prompts × 8; mean ± sd over seeds 0–2. "
        "Response length counts tokens up to and including EOS.\n"
    )
    print("| control | length start | length end | H end | train reward end | val_reward |")
    print("|---|---:|---:|---:|---:|---:|")
    groups = {}
    for label, loss in (
        ("vanilla", {}),
        ("clip_cov", {"loss_mode": "clip_cov", "clip_cov_ratio": LLM_COV_RATIO}),
        ("kl_cov", {"loss_mode": "kl_cov", "kl_cov_ratio": LLM_COV_RATIO}),
        ("entropy bonus α=1e-3", {"entropy_coeff": 1e-3}),
    ):
        runs = []
        for s in SEEDS:
            cfg = TrainConfig(
                # the defaults of the time, before the testbed became them
                lr=5e-4,
                warmup_steps=10,
                model=str(model),
                task="running-sum",
                terms=LONG_TERMS,
                steps=LONG_STEPS,
                prompts_per_step=LONG_PROMPTS,
                micro_batch_size=16,
                val_every=10,
                val_prompts=32,
                probe_jvp=False,
                checkpoint_every=0,
                cov_table_steps=(),
                seed=s,
                policy_loss=PolicyLossConfig(**loss),
            )
            runs.append(_train(cfg, out / "long" / f"{_slug(label)}_s{s}"))
        groups[label] = runs
        first = [r.steps[0]["response_length"] for r in runs]
        print(
            f"| {label} | {_ms(first, '.1f')} | "
            f"{_ms([_tail(r, 'response_length', 5) for r in runs], '.1f')} | "
            f"{_ms([_tail(r, 'entropy', 5) for r in runs])} | "
            f"{_ms([_tail(r, 'reward', 5) for r in runs])} | "
            f"{_ms([_tail(r, 'val_reward', 2) for r in runs])} |"
        )
    print()
    sweep_figure(
        "running sum: response length",
        groups,
        "response_length",
        "response tokens",
        figures / "controls_long_length.png",
    )
    print("![response length under the controls](figures/controls_long_length.png)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the pre-trained tiny addition model")
    parser.add_argument("--out", type=Path, default=Path("runs/controls"))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    parser.add_argument("--only", choices=["tabular", "llm", "llm-sweeps", "long"], default=None)
    args = parser.parse_args()
    if args.only in (None, "tabular"):
        tabular(args.out, args.figures)
    if args.only in (None, "llm"):
        llm(args.model, args.out, args.figures)
    if args.only in (None, "llm-sweeps"):
        llm_sweeps(args.model, args.out, args.figures)
    if args.only in (None, "long"):
        long_responses(args.out, args.figures)


if __name__ == "__main__":
    main()
