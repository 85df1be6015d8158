"""Advantage estimators: per-response rewards and prompt groups → per-response advantages.

One registry, ``ADVANTAGES``, keyed by ``AdvantageEstimator``; the tabular GRPO step and the
language-model trainers (ours and the TRL engine) all read it, so an estimator means one thing
wherever it runs. Shapes: reward [R] and group [R] (the prompt index of each response).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import numpy as np

from softmax_theory.inputs import Domain, SettingError, domain_problem

# Added to a group's reward std before dividing (GRPO's ε).
ADV_EPS = 1e-6


class AdvantageEstimator(str, enum.Enum):
    GRPO = "grpo"  # group z-score
    RLOO = "rloo"  # leave-one-out group mean
    REINFORCE_PP = "reinforce_pp"  # batch-normalised (REINFORCE++)
    W_REINFORCE = "w_reinforce"  # +λ for right, −1 for wrong (negative-sample reinforcement)


# W-REINFORCE's λ, the weight of the positive samples (the paper's recommended 0.1).
W_REINFORCE_LAMBDA = 0.1


def _group_stats(
    reward: np.ndarray, group: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each response's group mean, group std (population) and group size; [R] each."""
    n_groups = group.max() + 1
    count = np.bincount(group, minlength=n_groups).astype(np.float64)
    mean = np.bincount(group, weights=reward, minlength=n_groups) / count
    var = np.bincount(group, weights=(reward - mean[group]) ** 2, minlength=n_groups) / count
    return mean[group], np.sqrt(var)[group], count[group]


def grpo_advantage(reward: np.ndarray, group: np.ndarray) -> np.ndarray:
    """A_i = (r_i − mean_g r)/(std_g r + ε); a group whose rewards are all equal gets 0.

    Shao et al. 2024 (DeepSeekMath), GRPO's outcome advantage.
    """
    mean, std, _ = _group_stats(reward, group)
    return np.where(std > 0, (reward - mean) / (std + ADV_EPS), 0.0)


def rloo_advantage(reward: np.ndarray, group: np.ndarray) -> np.ndarray:
    """A_i = r_i − mean_{j≠i} r_j = G/(G − 1)·(r_i − mean_g r) (leave-one-out baseline).

    Ahmadian et al. 2024, RLOO.
    """
    mean, _, count = _group_stats(reward, group)
    return np.where(count > 1, count / np.maximum(count - 1, 1) * (reward - mean), 0.0)


def reinforce_pp_advantage(reward: np.ndarray, group: np.ndarray) -> np.ndarray:
    """A_i = (r_i − mean_batch r)/(std_batch r + ε): REINFORCE++'s global normalisation.

    Hu 2025, REINFORCE++.
    """
    std = reward.std()
    return (reward - reward.mean()) / (std + ADV_EPS) if std > 0 else np.zeros_like(reward)


def w_reinforce_advantage(
    reward: np.ndarray, group: np.ndarray, lam: float = W_REINFORCE_LAMBDA
) -> np.ndarray:
    """A_i = λ·r_i − (1 − r_i) for rewards in [0, 1]: +λ for a right response, −1 for a wrong
    one, linear in between (partial credit). No baseline: every sample is pushed, the wrong
    ones harder. Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement in LLM
    Reasoning" (arXiv 2506.01347): λ = 0.1 is W-REINFORCE, λ → 0 is NSR, negative samples only.
    """
    r = np.asarray(reward, dtype=np.float64)
    if r.size and (r.min() < 0 or r.max() > 1):
        raise ValueError(
            f"advantage: w_reinforce needs rewards in [0, 1], got [{r.min():g}, {r.max():g}]"
        )
    return lam * r - (1 - r)


ADVANTAGES: dict[AdvantageEstimator, Callable[..., np.ndarray]] = {
    AdvantageEstimator.GRPO: grpo_advantage,
    AdvantageEstimator.RLOO: rloo_advantage,
    AdvantageEstimator.REINFORCE_PP: reinforce_pp_advantage,
    AdvantageEstimator.W_REINFORCE: w_reinforce_advantage,
}


def compute_advantages(
    estimator: AdvantageEstimator,
    reward: np.ndarray,
    group: np.ndarray,
    w_reinforce_lambda: float | None = None,
) -> np.ndarray:
    """The estimator's advantages; ``w_reinforce_lambda`` (default ``W_REINFORCE_LAMBDA``) is
    read by ``w_reinforce`` only, and refused by name for any other estimator."""
    if estimator is AdvantageEstimator.W_REINFORCE:
        lam = W_REINFORCE_LAMBDA if w_reinforce_lambda is None else w_reinforce_lambda
        return w_reinforce_advantage(reward, group, lam)
    if w_reinforce_lambda is not None:
        raise ValueError(f"w_reinforce_lambda: has no effect with advantage {estimator.value}")
    return ADVANTAGES[estimator](reward, group)


# λ, the weight of a right response against a wrong one's −1: the one home of its domain, read
# by every config that offers it (AlgoConfig, TrainConfig) and by check_w_reinforce_lambda.
W_REINFORCE_LAMBDA_DOMAIN = Domain(ge=0)


def check_w_reinforce_lambda(estimator: AdvantageEstimator, lam: float | None) -> None:
    """Refuse λ outside [0, ∞) or with an estimator that does not read it (one line, by name)."""
    if lam is None:
        return
    problem = domain_problem(lam, W_REINFORCE_LAMBDA_DOMAIN, False, False, False)
    if problem is not None:
        raise SettingError("w_reinforce_lambda", problem)
    if estimator is not AdvantageEstimator.W_REINFORCE:
        raise SettingError("w_reinforce_lambda", f"has no effect with advantage {estimator.value}")
