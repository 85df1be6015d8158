"""The theory's quantities on language-model tokens, and the policy losses (torch)."""

from llm_bridge.losses import (
    AggMode,
    LossInputs,
    PolicyLossOutput,
    agg_loss,
    compute_policy_loss,
    get_policy_loss,
    kl_penalty,
)
from llm_bridge.token_stats import (
    entropy_and_logprobs,
    group_covariance,
    lemma1_prediction,
    masked_mean,
    token_covariance,
    token_entropy,
    token_entropy_change,
    token_logprobs,
)
from softmax_theory.algorithms import PolicyLoss, PolicyLossConfig

__all__ = [
    "AggMode",
    "LossInputs",
    "PolicyLoss",
    "PolicyLossConfig",
    "PolicyLossOutput",
    "agg_loss",
    "compute_policy_loss",
    "entropy_and_logprobs",
    "get_policy_loss",
    "group_covariance",
    "kl_penalty",
    "lemma1_prediction",
    "masked_mean",
    "token_covariance",
    "token_entropy",
    "token_entropy_change",
    "token_logprobs",
]
