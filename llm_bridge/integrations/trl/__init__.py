"""Our losses, advantages, run log and entropy probe inside TRL's GRPOTrainer (extra ``trl``),
one module a job:

- ``config``: a ``TrainConfig`` as TRL's ``GRPOConfig`` (``grpo_args``) and
  every setting the engine cannot honour, refused by name (``refuse_for_trl``);
- ``trainer``: ``RegistryLossTrainer``, TRL's trainer with our advantages and loss only;
- ``run_log``: ``RunLogCallback``, our run directory and the probe as a TRL callback;
- ``distributed``: what a step reduces over processes (``StepMeans``, ``all_concat``);
- ``data``: our tasks as TRL's dataset and reward;
- ``engine``: ``train_with_trl``, the entry point of ``--engine trl``.
"""

from softmax_theory.inputs import MissingExtra

try:
    import trl  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise MissingExtra("engine: trl needs TRL: pip install 'entropy-mechanism[trl]'") from err

from llm_bridge.integrations.trl.config import grpo_args, refuse_for_trl
from llm_bridge.integrations.trl.data import trl_dataset, trl_prompt, trl_reward
from llm_bridge.integrations.trl.distributed import StepMeans
from llm_bridge.integrations.trl.engine import train_with_trl
from llm_bridge.integrations.trl.run_log import RunLogCallback
from llm_bridge.integrations.trl.trainer import GenerationBatch, RegistryLossTrainer

__all__ = [
    "GenerationBatch",
    "RegistryLossTrainer",
    "RunLogCallback",
    "StepMeans",
    "grpo_args",
    "refuse_for_trl",
    "train_with_trl",
    "trl_dataset",
    "trl_prompt",
    "trl_reward",
]
