"""The theory's quantities on language-model tokens, the policy losses, and a GRPO trainer with
per-step entropy probes (torch + transformers).

What to call:

- ``train(TrainConfig(model=..., ...), out)``: a GRPO run with the probe, written as a run log
  (``engine="trl"`` runs it inside TRL's GRPOTrainer);
- ``compare_runs([run, ...], out)``: measured ΔH against the predictions, the law, a report;
- ``compute_policy_loss`` and ``agg_loss``: the losses on [B, T] tensors (verl's semantics);
- ``entropy_and_logprobs``, ``lemma1_prediction``, ``token_entropy_change``: chunked token
  statistics on logits; ``head_entropy_and_logprobs``: the same from hidden states.

``PolicyLossConfig`` is shared with ``softmax_theory``, whose numpy losses are the twins of these.
"""

from llm_bridge.compare import RunReport, compare_runs
from llm_bridge.config import Device, Engine, OptimizerName, TrainConfig
from llm_bridge.engines import load_task, train, train_or_reuse
from llm_bridge.head import head_entropy_and_logprobs
from llm_bridge.losses import (
    LossInputs,
    PolicyLossOutput,
    agg_loss,
    compute_policy_loss,
    entropy_shaped_advantage,
    get_policy_loss,
    kl_penalty,
)
from llm_bridge.models import load_model
from llm_bridge.probe import ProbeTokens, measure_tokens, probe_record, stream_own_entropy_term
from llm_bridge.rollout import Rollouts
from llm_bridge.tasks import Task, dataset_task, synthetic_task
from llm_bridge.tiny import TinyConfig, pretrain_tiny
from llm_bridge.token_stats import (
    entropy_and_logprobs,
    group_covariance,
    lemma1_prediction,
    masked_mean,
    token_covariance,
    token_entropy,
    token_entropy_change,
    token_logprobs,
    token_probe_stats,
)
from llm_bridge.trainer import ProbedGRPOTrainer
from llm_bridge.update import StepBatch, mini_batch_loss
from softmax_theory.policy import AggMode, PolicyLoss, PolicyLossConfig

# Names from modules with optional extras (TRL) or a second thought (importers), loaded on first
# use so that `import llm_bridge` needs neither.
_LAZY = {
    "RegistryLossTrainer": "llm_bridge.integrations.trl",
    "train_with_trl": "llm_bridge.integrations.trl",
    "import_openrlhf": "llm_bridge.integrations.importers",
    "import_skyrl": "llm_bridge.integrations.importers",
    "import_trl": "llm_bridge.integrations.importers",
    "import_verl": "llm_bridge.integrations.importers",
    "import_tensorboard": "llm_bridge.integrations.importers",
    "import_wandb": "llm_bridge.integrations.importers",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'llm_bridge' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "AggMode",
    "Device",
    "Engine",
    "LossInputs",
    "OptimizerName",
    "PolicyLoss",
    "PolicyLossConfig",
    "PolicyLossOutput",
    "ProbeTokens",
    "ProbedGRPOTrainer",
    "RegistryLossTrainer",
    "Rollouts",
    "RunReport",
    "StepBatch",
    "Task",
    "TinyConfig",
    "TrainConfig",
    "agg_loss",
    "compare_runs",
    "compute_policy_loss",
    "dataset_task",
    "entropy_and_logprobs",
    "entropy_shaped_advantage",
    "get_policy_loss",
    "group_covariance",
    "head_entropy_and_logprobs",
    "import_openrlhf",
    "import_skyrl",
    "import_tensorboard",
    "import_trl",
    "import_verl",
    "import_wandb",
    "kl_penalty",
    "lemma1_prediction",
    "load_model",
    "load_task",
    "masked_mean",
    "measure_tokens",
    "mini_batch_loss",
    "pretrain_tiny",
    "probe_record",
    "stream_own_entropy_term",
    "synthetic_task",
    "token_covariance",
    "token_entropy",
    "token_entropy_change",
    "token_logprobs",
    "token_probe_stats",
    "train",
    "train_or_reuse",
    "train_with_trl",
]
