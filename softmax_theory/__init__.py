"""Exact, float64 entropy dynamics of tabular softmax policies (Cui et al. 2025, arXiv 2505.22617).

What to call:

- one state: ``entropy(z)``, ``first_order_entropy_change(z, δ)`` (Lemma 1),
  ``pg_entropy_change`` / ``npg_entropy_change`` (Theorems 1–2), ``entropy_change`` (exact);
- training dynamics: ``simulate(make_env(EnvConfig(...)), SimConfig(...))`` writes a run log;
- the law R = −a·e^H + b: ``fit_entropy_law``, ``forecast_entropy_law``,
  ``bootstrap_entropy_law``; run logs: ``read_run``;
- the theorem checks: ``run_checks(CheckConfig())``.

The policy losses (``compute_policy_loss``, ``agg_loss``) and their settings
(``PolicyLossConfig``) are shared with ``llm_bridge``, which holds their torch twins. Where the
step's entropy goes: ``attribution_parts`` (the ``attr/*`` keys every step records), with
``likely_tokens`` and ``own_entropy_term``; pass@k: ``pass_at_k`` (unbiased, from samples) and
``TabularEnv.pass_at_k`` (exact).
"""

from softmax_theory.algorithms import Algo, AlgoConfig
from softmax_theory.attribution import (
    ATTRIBUTION_KEYS,
    attribution_parts,
    likely_tokens,
    own_entropy_term,
)
from softmax_theory.checks import CheckConfig, CheckReport, run_checks
from softmax_theory.dynamics import SimConfig, SimResult, simulate
from softmax_theory.envs import (
    Bandit,
    ContextualBandit,
    EntropyChange,
    EnvConfig,
    TabularEnv,
    TokenTreeMDP,
    make_env,
)
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
from softmax_theory.group_advantages import ADVANTAGES, AdvantageEstimator, compute_advantages
from softmax_theory.law import (
    LawFit,
    bootstrap_entropy_law,
    fit_coefficient_scaling,
    fit_entropy_law,
    forecast_entropy_law,
)
from softmax_theory.losses import (
    LossInputs,
    PolicyLossOutput,
    agg_loss,
    agg_weights,
    compute_policy_loss,
    get_policy_loss,
)
from softmax_theory.policy import (
    AggMode,
    CovScope,
    CovSelector,
    KLEstimator,
    PolicyLoss,
    PolicyLossConfig,
    n_selected,
    n_top,
)
from softmax_theory.runlog import RunLog, RunWriter, read_run
from softmax_theory.stats import correlation, pass_at_k, top_covariance_means
from softmax_theory.token_stats import masked_mean, token_covariance

__all__ = [
    "ADVANTAGES",
    "ATTRIBUTION_KEYS",
    "AdvantageEstimator",
    "AggMode",
    "Algo",
    "AlgoConfig",
    "Bandit",
    "CheckConfig",
    "CheckReport",
    "ContextualBandit",
    "CovScope",
    "CovSelector",
    "EntropyChange",
    "EnvConfig",
    "KLEstimator",
    "LawFit",
    "LossInputs",
    "PolicyLoss",
    "PolicyLossConfig",
    "PolicyLossOutput",
    "RunLog",
    "RunWriter",
    "SimConfig",
    "SimResult",
    "TabularEnv",
    "TokenTreeMDP",
    "advantages",
    "agg_loss",
    "agg_weights",
    "attribution_parts",
    "bootstrap_entropy_law",
    "compute_advantages",
    "compute_policy_loss",
    "correlation",
    "covariance",
    "entropy",
    "entropy_and_first_order_change",
    "entropy_change",
    "first_order_entropy_change",
    "fit_coefficient_scaling",
    "fit_entropy_law",
    "forecast_entropy_law",
    "get_policy_loss",
    "likely_tokens",
    "log_softmax",
    "make_env",
    "masked_mean",
    "n_selected",
    "n_top",
    "npg_entropy_change",
    "npg_update",
    "own_entropy_term",
    "pass_at_k",
    "pg_entropy_change",
    "pg_update",
    "read_run",
    "run_checks",
    "second_order_entropy_change",
    "simulate",
    "softmax",
    "token_covariance",
    "top_covariance_means",
]
