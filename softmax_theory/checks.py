"""Numeric checks of Lemma 1, Theorems 1 and 2 and the second-order term.

For seeded random instances of each environment and a ladder of step sizes η, the exact entropy
change of one update is compared with each prediction. A first-order prediction is exact up to
O(η²), so its absolute error against η has slope 2 on log-log axes; the second-order estimate
has slope 3. Those slopes, and the error bounds of the issue that founded the project (on
bandits at η = 0.01), are the tolerances a check must meet.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from softmax_theory.envs import Bandit, ContextualBandit, TabularEnv, TokenTreeMDP
from softmax_theory.estimators import (
    first_order_entropy_change,
    npg_entropy_change,
    npg_update,
    pg_entropy_change,
    second_order_entropy_change,
)
from softmax_theory.stats import correlation


class Claim(str, enum.Enum):
    LEMMA1 = "lemma1"  # random logit change δ = η·u, u ~ N(0, 1)
    THEOREM1 = "theorem1"  # exact PG step
    THEOREM2 = "theorem2"  # exact NPG step
    SECOND_ORDER = "second_order"  # Lemma 1 + ½δᵀ∇²Hδ along the NPG step


# (low, high) bounds on the log-log slope of |error| against η that the Taylor order gives.
SLOPE_BOUNDS: dict[Claim, tuple[float, float]] = {
    Claim.LEMMA1: (1.8, 2.2),
    Claim.THEOREM1: (1.8, 2.2),
    Claim.THEOREM2: (1.8, 2.2),
    Claim.SECOND_ORDER: (2.7, 3.3),
}

# Median relative error allowed on bandits at η = BANDIT_ERROR_LR.
BANDIT_ERROR_LR = 0.01
BANDIT_MAX_MEDIAN_REL_ERROR: dict[Claim, float] = {
    Claim.THEOREM1: 1e-3,
    Claim.THEOREM2: 1e-2,
}


@dataclass(frozen=True)
class CheckConfig:
    """What `softmax-theory check` runs; every default lives here."""

    lrs: tuple[float, ...] = field(
        default=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
        metadata={"help": "ladder of step sizes η"},
    )
    instances: int = field(
        default=32, metadata={"help": "random instances (logits and rewards) per environment"}
    )
    logit_scales: tuple[float, ...] = field(
        default=(1.0, 2.0, 4.0),
        metadata={
            "help": "standard deviations of the random logits, cycled over instances; near 0 "
            "the first-order term vanishes and relative errors grow (docs/theory.md, §5)"
        },
    )
    bandit_actions: tuple[int, ...] = field(
        default=(4, 64, 1024), metadata={"help": "arm counts of the bandits checked"}
    )
    contextual_shape: tuple[int, int] = field(
        default=(16, 16), metadata={"help": "(prompts, responses) of the contextual bandit"}
    )
    tree_shape: tuple[int, int] = field(
        default=(4, 3), metadata={"help": "(vocabulary, horizon) of the token-tree MDP"}
    )
    seed: int = field(default=0, metadata={"help": "seed of every random instance"})

    def __post_init__(self) -> None:
        if len(self.lrs) < 2 or any(not (lr > 0) for lr in self.lrs):
            raise ValueError(f"lrs: need at least two step sizes > 0, got {self.lrs}")
        if self.instances < 2:
            raise ValueError(f"instances: need at least 2, got {self.instances}")
        if not self.logit_scales or any(s <= 0 for s in self.logit_scales):
            raise ValueError(f"logit_scales: need positive scales, got {self.logit_scales}")


@dataclass(frozen=True)
class CheckRow:
    """One (claim, environment, η) cell of the check table."""

    claim: str
    env: str
    lr: float
    median_rel_error: float
    p90_rel_error: float
    correlation: float | None  # None where predictions or measurements are constant
    slope: float  # median over instances of the log-log slope of |error| vs η (whole ladder)
    slope_bounds: tuple[float, float]
    max_median_rel_error: float | None  # the bound at this cell, if one applies
    shift_share: float  # median |state-shift term| / |ΔH|: what the paper's approximation drops
    passed: bool


@dataclass(frozen=True)
class CheckReport:
    config: CheckConfig
    rows: tuple[CheckRow, ...]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "config": asdict(self.config),
            "rows": [asdict(row) for row in self.rows],
        }


def _envs(config: CheckConfig, rng: np.random.Generator) -> list[TabularEnv]:
    """One reward table per environment; rewards uniform in [0, 1]."""
    envs: list[TabularEnv] = [
        Bandit(rng.random(n), name=f"bandit-{n}") for n in config.bandit_actions
    ]
    prompts, responses = config.contextual_shape
    envs.append(
        ContextualBandit(
            rng.random((prompts, responses)),
            prompt_weights=rng.random(prompts) + 0.1,
            name=f"contextual-{prompts}x{responses}",
        )
    )
    vocab, horizon = config.tree_shape
    envs.append(
        TokenTreeMDP(vocab, horizon, rng.random(vocab**horizon), name=f"tree-{vocab}^{horizon}")
    )
    return envs


# Each claim: (logits, env, η, direction u) → (new logits, predicted ΔH̄). Predictions are
# per-state, averaged with the same state weights as the measured entropy.
def _lemma1(z: np.ndarray, env: TabularEnv, lr: float, u: np.ndarray):
    delta = lr * u
    return z + delta, first_order_entropy_change(z, delta)


def _theorem1(z: np.ndarray, env: TabularEnv, lr: float, u: np.ndarray):
    d = env.visitation(z)
    return z + lr * env.policy_gradient(z), pg_entropy_change(
        z, env.state_rewards(z), lr, state_weights=d
    )


def _theorem2(z: np.ndarray, env: TabularEnv, lr: float, u: np.ndarray):
    q = env.state_rewards(z)
    return npg_update(z, q, lr), npg_entropy_change(z, q, lr)


def _second_order(z: np.ndarray, env: TabularEnv, lr: float, u: np.ndarray):
    z_new = npg_update(z, env.state_rewards(z), lr)
    return z_new, second_order_entropy_change(z, z_new - z)


CLAIMS: dict[Claim, Callable] = {
    Claim.LEMMA1: _lemma1,
    Claim.THEOREM1: _theorem1,
    Claim.THEOREM2: _theorem2,
    Claim.SECOND_ORDER: _second_order,
}


def _slope(lrs: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """Least-squares slope of log|error| on log η, per instance; errors [N, L] → [N]."""
    x = np.log(lrs) - np.log(lrs).mean()
    y = np.log(np.maximum(np.abs(errors), np.finfo(float).tiny))
    return (y - y.mean(axis=1, keepdims=True)) @ x / (x @ x)


def run_checks(config: CheckConfig = CheckConfig()) -> CheckReport:
    """Run every claim on every environment over the step-size ladder."""
    rng = np.random.default_rng(config.seed)
    lrs = np.asarray(sorted(config.lrs), dtype=np.float64)
    rows: list[CheckRow] = []
    for env in _envs(config, rng):
        is_bandit = env.name.startswith("bandit")
        instances = []
        for i in range(config.instances):
            scale = config.logit_scales[i % len(config.logit_scales)]
            z = env.random_logits(rng, scale)
            instances.append((z, rng.standard_normal(z.shape)))
        for claim, step in CLAIMS.items():
            measured = np.empty((config.instances, lrs.size))
            predicted = np.empty_like(measured)
            shift = np.empty_like(measured)
            for i, (z, u) in enumerate(instances):
                w = env.state_weights(z)
                for j, lr in enumerate(lrs):
                    z_new, pred = step(z, env, lr, u)
                    change = env.entropy_change(z, z_new)
                    measured[i, j] = change.within
                    predicted[i, j] = w @ pred
                    shift[i, j] = change.shift
            error = predicted - measured
            rel = np.abs(error) / np.maximum(np.abs(measured), np.finfo(float).tiny)
            slopes = _slope(lrs, error)
            median_slope = float(np.median(slopes))
            lo, hi = SLOPE_BOUNDS[claim]
            for j, lr in enumerate(lrs):
                bound = (
                    BANDIT_MAX_MEDIAN_REL_ERROR.get(claim)
                    if is_bandit and np.isclose(lr, BANDIT_ERROR_LR)
                    else None
                )
                median_rel = float(np.median(rel[:, j]))
                total = np.abs(measured[:, j] + shift[:, j])
                rows.append(
                    CheckRow(
                        claim=claim.value,
                        env=env.name,
                        lr=float(lr),
                        median_rel_error=median_rel,
                        p90_rel_error=float(np.quantile(rel[:, j], 0.9)),
                        correlation=correlation(measured[:, j], predicted[:, j]),
                        slope=median_slope,
                        slope_bounds=(lo, hi),
                        max_median_rel_error=bound,
                        shift_share=float(
                            np.median(np.abs(shift[:, j]) / np.maximum(total, np.finfo(float).tiny))
                        ),
                        passed=bool(lo <= median_slope <= hi)
                        and (bound is None or median_rel <= bound),
                    )
                )
    return CheckReport(config=config, rows=tuple(rows))
