"""Exact, float64 entropy dynamics of tabular softmax policies (Cui et al. 2025)."""

from softmax_theory.checks import CheckConfig
from softmax_theory.checks import CheckReport
from softmax_theory.checks import run_checks
from softmax_theory.envs import Bandit
from softmax_theory.envs import ContextualBandit
from softmax_theory.envs import EntropyChange
from softmax_theory.envs import TabularEnv
from softmax_theory.envs import TokenTreeMDP
from softmax_theory.estimators import advantages
from softmax_theory.estimators import covariance
from softmax_theory.estimators import entropy
from softmax_theory.estimators import entropy_and_first_order_change
from softmax_theory.estimators import entropy_change
from softmax_theory.estimators import first_order_entropy_change
from softmax_theory.estimators import log_softmax
from softmax_theory.estimators import npg_entropy_change
from softmax_theory.estimators import npg_update
from softmax_theory.estimators import pg_entropy_change
from softmax_theory.estimators import pg_update
from softmax_theory.estimators import second_order_entropy_change
from softmax_theory.estimators import softmax

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
