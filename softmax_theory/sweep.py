"""A grid of simulations (algorithm × step size × seed) and its per-run summary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from softmax_theory.algorithms import Algo
from softmax_theory.dynamics import EnvConfig, SimConfig, SimResult, make_env, simulate
from softmax_theory.stats import correlation


@dataclass(frozen=True)
class SweepRow:
    """One run of the grid, summarised over its steps."""

    algo: str
    lr: float
    seed: int
    median_rel_error: float | None  # of pred_lemma1 against the within-state ΔH, over steps
    correlation: float | None  # of pred_lemma1 against the measured total ΔH, over steps
    correlation_within: float | None  # … against the within-state part
    initial_entropy: float
    final_entropy: float
    initial_reward: float
    final_reward: float


def summarise(result: SimResult, seed: int) -> SweepRow:
    pred = result.series("pred_lemma1")
    within = result.series("delta_within")
    total = result.series("delta_entropy")
    moved = np.abs(within) > 0  # steps whose update changed nothing have no relative error
    rel = np.abs(pred[moved] - within[moved]) / np.abs(within[moved])
    h, r = result.series("entropy"), result.series("reward")
    return SweepRow(
        algo=result.config.algo.algo.value,
        lr=result.config.lr,
        seed=seed,
        median_rel_error=float(np.median(rel)) if rel.size else None,
        correlation=correlation(total, pred),
        correlation_within=correlation(within, pred),
        initial_entropy=float(h[0]),
        final_entropy=result.final_entropy,
        initial_reward=float(r[0]),
        final_reward=result.final_reward,
    )


def run_sweep(
    env_config: EnvConfig,
    algos: Sequence[Algo | str],
    lrs: Sequence[float],
    seeds: int,
    base: SimConfig,
    on_run: Callable[[], None] | None = None,
) -> tuple[list[SweepRow], dict[tuple[str, float, int], SimResult]]:
    """Every (algo, lr, seed) on the same environment; ``on_run`` is called after each run."""
    if seeds < 1:
        raise ValueError(f"seeds: need at least 1, got {seeds}")
    env = make_env(env_config)
    rows, results = [], {}
    for algo in algos:
        for lr in lrs:
            for seed in range(seeds):
                cfg = replace(
                    base, lr=lr, seed=base.seed + seed, algo=replace(base.algo, algo=Algo(algo))
                )
                res = simulate(env, cfg)
                rows.append(summarise(res, seed))
                results[(Algo(algo).value, float(lr), seed)] = res
                if on_run is not None:
                    on_run()
    return rows, results
