"""The configuration of one GRPO run on a language model, whichever engine runs it.

``TrainConfig`` is the only home of the run's defaults (the loss's are in ``PolicyLossConfig``,
shared with ``softmax_theory``). Both engines read it: ours (``llm_bridge.trainer``) honours every
field; the TRL engine (``llm_bridge.integrations.trl``) honours or refuses each one by name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from llm_bridge.reporters import parse_report_to
from llm_bridge.rollout import BackendName, ChatTemplate
from llm_bridge.tasks import (
    DEFAULT_ANSWER_KEY,
    DEFAULT_PROMPT_KEY,
    DEFAULT_REASONING_TOKENS,
    DEFAULT_TERMS,
    MAX_TERMS,
    AnswerFormat,
    TaskName,
)
from softmax_theory.control import ControlConfig, Controller, check_control
from softmax_theory.group_advantages import (
    W_REINFORCE_LAMBDA_DOMAIN,
    AdvantageEstimator,
    check_w_reinforce_lambda,
)
from softmax_theory.inputs import Domain, SettingError, check_domains
from softmax_theory.policy import PolicyLossConfig
from softmax_theory.registry import parse_choice


class OptimizerName(str, enum.Enum):
    ADAM = "adam"
    SGD = "sgd"


class Device(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Engine(str, enum.Enum):
    OURS = "ours"  # llm_bridge.trainer: exact probes, one process
    TRL = "trl"  # TRL's GRPOTrainer: accelerate, several processes, vLLM


def _help(text: str, domain: Domain | None = None) -> dict:
    """A field's metadata: its help text and, for a number, its domain."""
    return {"help": text} if domain is None else {"help": text, "domain": domain}


AT_LEAST_0 = Domain(ge=0)
# running-sum's partial sums have 4 digits: at most MAX_TERMS two-digit terms
TERMS_DOMAIN = Domain(ge=1, le=MAX_TERMS)
AT_LEAST_1 = Domain(ge=1)


@dataclass(frozen=True)
class TrainConfig:
    """One GRPO run; see the module docstring."""

    model: str = field(default="", metadata=_help("local Hugging Face causal-LM folder"))
    task: str = field(
        default="addition",
        metadata=_help("synthetic task: addition, multiplication, running-sum (long responses)"),
    )
    terms: int = field(
        default=DEFAULT_TERMS,
        metadata=_help("running-sum: terms per prompt (responses of 5·terms tokens)", TERMS_DOMAIN),
    )
    dataset: str | None = field(
        default=None,
        metadata=_help("local JSONL/parquet with prompt and answer (overrides task)"),
    )
    dataset_reward: str = field(default="math", metadata=_help("dataset reward: math or exact"))
    prompt_key: str = field(
        default=DEFAULT_PROMPT_KEY,
        metadata=_help("dataset field of the prompt (GSM8K's 'question' is read without 'prompt')"),
    )
    answer_key: str = field(
        default=DEFAULT_ANSWER_KEY, metadata=_help("dataset field of the reference answer")
    )
    answer_format: AnswerFormat = field(
        default=AnswerFormat.AUTO,
        metadata=_help("auto: GSM8K's '#### N' rule where an answer holds '####'; gsm8k; raw"),
    )
    chat_template: ChatTemplate = field(
        default=ChatTemplate.AUTO,
        metadata=_help("auto: the tokenizer's chat template when it has one; none: raw text"),
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata=_help(
            f"response budget in tokens, EOS included (default: a synthetic task's own; "
            f"{DEFAULT_REASONING_TOKENS} for a dataset)",
            AT_LEAST_1,
        ),
    )
    max_prompt_tokens: int | None = field(
        default=None,
        metadata=_help(
            "keep a prompt's last N tokens (cut from the left; default: no cut)", AT_LEAST_1
        ),
    )
    mask_truncated: bool = field(
        default=False,
        metadata=_help("leave responses cut at the budget out of the loss (TRL's name)"),
    )
    steps: int = field(default=300, metadata=_help("GRPO steps", AT_LEAST_1))
    prompts_per_step: int = field(default=32, metadata=_help("prompts P per step", AT_LEAST_1))
    # a group of one has no baseline to compare against
    group_size: int = field(default=8, metadata=_help("responses G per prompt", Domain(ge=2)))
    temperature: float = field(
        default=1.0,
        metadata=_help("sampling temperature T; the policy is softmax(z/T)", Domain(gt=0)),
    )
    optimizer: OptimizerName = field(default=OptimizerName.ADAM, metadata=_help("adam or sgd"))
    lr: float = field(
        default=2e-4,
        metadata=_help(
            "learning rate (2e-4 suits the tiny model; 0.5-7B models: 1e-6)", Domain(gt=0)
        ),
    )
    warmup_steps: int = field(
        default=5,
        metadata=_help(
            "GRPO steps of linear learning-rate warm-up (Adam's first updates move every "
            "weight by about lr, whatever its gradient)",
            AT_LEAST_0,
        ),
    )
    epochs: int = field(default=1, metadata=_help("PPO epochs over each step's batch", AT_LEAST_1))
    mini_batches: int = field(
        default=2,
        metadata=_help("optimiser updates per epoch (KL-Cov acts from the 2nd)", AT_LEAST_1),
    )
    micro_batch_size: int | None = field(
        default=None,
        metadata=_help(
            "responses per forward/backward pass (TRL's per_device_train_batch_size, verl's "
            "ppo_micro_batch_size_per_gpu); memory is set by it (default: the whole mini-batch)",
            AT_LEAST_1,
        ),
    )
    generate_batch_size: int | None = field(
        default=None,
        metadata=_help(
            "responses per generate call, a multiple of group_size (the KV cache and the sampling "
            "logits are held for this many at once; default: the whole batch in one call)",
            Domain(ge=2),  # whole groups, and a group has at least 2
        ),
    )
    advantage: AdvantageEstimator = field(
        default=AdvantageEstimator.GRPO, metadata=_help("advantage estimator")
    )
    w_reinforce_lambda: float | None = field(
        default=None,
        metadata=_help(
            "w_reinforce: λ, the weight of right responses (default 0.1; 0: NSR)",
            W_REINFORCE_LAMBDA_DOMAIN,
        ),
    )
    policy_loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    # entropy control: a controller that sets the bonus coefficient each step (docs/control.md)
    control: ControlConfig = field(default_factory=ControlConfig)
    val_every: int = field(
        default=10, metadata=_help("steps between validations (0: never)", AT_LEAST_0)
    )
    # no validation is val_every 0; a validation has at least one prompt
    val_prompts: int = field(
        default=128, metadata=_help("held-out prompts per validation", AT_LEAST_1)
    )
    val_k: int | None = field(
        default=None,
        metadata=_help(
            "also log val_pass@K: K for the unbiased pass@k estimator over --val-samples "
            "samples per held-out prompt (default: off)",
            AT_LEAST_1,
        ),
    )
    val_samples: int | None = field(
        default=None,
        metadata=_help("samples n ≥ K per held-out prompt for pass@K (default: K)", AT_LEAST_1),
    )
    probe: bool = field(default=True, metadata=_help("measure ΔH and the predictions"))
    probe_jvp: bool = field(default=True, metadata=_help("also the JVP forecast, pred_jvp"))
    probe_every: int = field(default=1, metadata=_help("probe every k-th step", AT_LEAST_1))
    probe_responses: int | None = field(
        default=None,
        metadata=_help("probe a seeded random subset of n responses (default: all)", AT_LEAST_1),
    )
    token_steps_every: int = field(
        default=0,
        metadata=_help("save per-token probe arrays every k steps (0: never)", AT_LEAST_0),
    )
    cov_table_steps: tuple[int, ...] = field(
        default=(0,),
        metadata=_help("steps at which to write the covariance table", AT_LEAST_0),
    )
    checkpoint_every: int = field(
        default=25,
        metadata=_help("steps between checkpoints, the latest one kept (0: never)", AT_LEAST_0),
    )
    save_final: bool = field(default=True, metadata=_help("write the trained model to OUT/final"))
    seed: int = field(
        default=0,
        metadata=_help("seed of the prompts' order, sampling and selection", AT_LEAST_0),
    )
    task_seed: int = field(
        default=0,
        metadata=_help(
            "seed of the task's problems and its train/test split (keep pretrain-tiny's, 0, "
            "so that held-out prompts stay held out whatever --seed)",
            AT_LEAST_0,
        ),
    )
    device: Device = field(default=Device.AUTO, metadata=_help("auto, cpu or cuda"))
    backend: BackendName = field(default=BackendName.HF, metadata=_help("rollout backend"))
    engine: Engine = field(
        default=Engine.OURS, metadata=_help("ours (exact probes) or trl (TRL's GRPOTrainer)")
    )
    report_to: str = field(
        default="none",
        metadata=_help(
            "also report every run-log key to: none, or a comma list of tensorboard, wandb, "
            "trackio (under OUT/)"
        ),
    )

    def __post_init__(self) -> None:
        for name, enum_cls in (
            ("optimizer", OptimizerName),
            ("advantage", AdvantageEstimator),
            ("device", Device),
            ("backend", BackendName),
            ("engine", Engine),
            ("answer_format", AnswerFormat),
            ("chat_template", ChatTemplate),
        ):
            object.__setattr__(self, name, parse_choice(enum_cls, getattr(self, name), name))
        check_domains(self)
        check_w_reinforce_lambda(self.advantage, self.w_reinforce_lambda)
        lc = self.policy_loss
        check_control(self.control, lc.entropy_coeff, lc.entropy_target, lc.loss_mode.value)
        if self.control.entropy_control is Controller.PREDICTIVE:
            if lc.loss_agg_mode.value != "token-mean":
                raise SettingError(
                    "entropy_control",
                    "predictive needs loss_agg_mode token-mean (the bonus's gradient is then "
                    "the entropy's, rescaled)",
                )
        if self.val_samples is not None and self.val_k is None:
            raise SettingError("val_samples", "has no effect without val_k")
        if self.val_k is not None and self.val_every == 0:
            raise SettingError("val_k", "has no effect while val_every is 0 (no validation)")
        if self.val_k is not None and (self.val_samples or self.val_k) < self.val_k:
            raise SettingError(
                "val_samples", f"must be ≥ val_k = {self.val_k}, got {self.val_samples}"
            )
        if self.generate_batch_size is not None and self.generate_batch_size % self.group_size:
            raise SettingError(
                "generate_batch_size",
                f"{self.generate_batch_size} is not a multiple of group_size {self.group_size} "
                "(a call generates whole groups)",
            )
        if self.prompts_per_step % self.mini_batches:
            raise SettingError(
                "mini_batches",
                f"{self.mini_batches} must divide prompts_per_step {self.prompts_per_step}",
            )
        if self.task != TaskName.RUNNING_SUM.value and self.terms != DEFAULT_TERMS:
            raise SettingError(
                "terms", f"has no effect with task {self.task} (running-sum reads it)"
            )
        parse_report_to(self.report_to)  # a bad target fails before anything runs
        late = [s for s in self.cov_table_steps if s >= self.steps]
        if late:
            raise SettingError(
                "cov_table_steps",
                f"step {late[0]} is past the last step {self.steps - 1} (steps start at 0)",
            )

    @property
    def responses_per_step(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def mini_batch_responses(self) -> int:
        return self.responses_per_step // self.mini_batches

    @property
    def updates_per_step(self) -> int:
        return self.epochs * self.mini_batches

    @property
    def val_n(self) -> int:
        """Samples per held-out prompt: n for pass@K, else one."""
        if self.val_k is None:
            return 1
        return self.val_k if self.val_samples is None else self.val_samples


def warmup_factor(update: int, warmup_updates: int) -> float:
    """The learning rate's factor at optimiser update ``update`` (0-based): linear from
    1/W to 1 over the first W updates, then 1. Both engines use it."""
    return 1.0 if update >= warmup_updates else (update + 1) / warmup_updates


# Settings a resumed run may change: none of them changes what training computes (the
# micro-batch size changes only the fp32 reduction order).
RESUME_FREE = frozenset(
    {
        "steps",
        "checkpoint_every",
        "val_every",
        "val_prompts",
        "val_k",
        "val_samples",
        "probe",
        "probe_jvp",
        "probe_every",
        "probe_responses",
        "token_steps_every",
        "cov_table_steps",
        "micro_batch_size",
        "report_to",
        "save_final",
        # what the model read, recorded beside the settings it follows from
        "rendered_prompt",
        "rendered_prompt_tokens",
    }
)


def resolve_device(device: Device):
    """The torch device a ``device`` setting means here; cuda without a CUDA device is refused."""
    import torch

    if device is Device.CUDA and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for, but no CUDA device is available")
    if device is Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.value)
