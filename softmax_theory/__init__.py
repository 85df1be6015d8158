"""Exact, float64 entropy dynamics of tabular softmax policies (Cui et al. 2025)."""

from softmax_theory.checks import CheckConfig, CheckReport, run_checks
from softmax_theory.envs import Bandit, ContextualBandit, EntropyChange, TabularEnv, TokenTreeMDP
from softmax_theory.estimators import (
    advantages,
    covariance,
    entropy,
    entropy_and_first_order_change,
    entropy_change,
    first_order_entropy_change,
    log_softmax,
    npg_entropy_change,
    npg_update,
    pg_entropy_change,
    pg_update,
    second_order_entropy_change,
    softmax,
)

__all__ = [
    "Bandit",
    "CheckConfig",
    "CheckReport",
    "ContextualBandit",
    "EntropyChange",
    "TabularEnv",
    "TokenTreeMDP",
    "advantages",
    "covariance",
    "entropy",
    "entropy_and_first_order_change",
    "entropy_change",
    "first_order_entropy_change",
    "log_softmax",
    "npg_entropy_change",
    "npg_update",
    "pg_entropy_change",
    "pg_update",
    "run_checks",
    "second_order_entropy_change",
    "softmax",
]
