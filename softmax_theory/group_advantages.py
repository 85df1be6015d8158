"""Advantage estimators: per-response rewards and prompt groups → per-response advantages.

One registry, ``ADVANTAGES``, keyed by ``AdvantageEstimator``; the tabular GRPO step and the
language-model trainers (ours and the TRL engine) all read it, so an estimator means one thing
wherever it runs. Shapes: reward [R] and group [R] (the prompt index of each response).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import numpy as np

# Added to a group's reward std before dividing (GRPO's ε).
ADV_EPS = 1e-6


class AdvantageEstimator(str, enum.Enum):
    GRPO = "grpo"  # group z-score
    RLOO = "rloo"  # leave-one-out group mean
    REINFORCE_PP = "reinforce_pp"  # batch-normalised (REINFORCE++)


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


ADVANTAGES: dict[AdvantageEstimator, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    AdvantageEstimator.GRPO: grpo_advantage,
    AdvantageEstimator.RLOO: rloo_advantage,
    AdvantageEstimator.REINFORCE_PP: reinforce_pp_advantage,
}
