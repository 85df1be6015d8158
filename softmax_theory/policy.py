"""The policy-loss settings both worlds share: the loss names, the config, the counts of selected
tokens and the adaptive entropy controller.

``PolicyLossConfig`` is read by the numpy losses (``softmax_theory.losses``, tabular) and the torch
losses (``llm_bridge.losses``, language models), so a setting means one thing in both. Names follow
verl's actor config where verl has the knob (``loss_mode``, ``clip_ratio_low``, ``clip_ratio_high``,
``clip_ratio_c``, ``clip_cov_*``, ``kl_cov_ratio``, ``ppo_kl_coef``, ``loss_agg_mode``,
``loss_scale_factor``, ``entropy_coeff``, ``kl_loss_coef``, ``kl_loss_type``; from verl's rollout
correction, ``rollout_is`` and ``rollout_is_threshold``), so a verl user's settings carry over. A
loss reads only its own settings (``LOSS_KNOBS``); setting one that the chosen loss does not read
is refused by name.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, fields

from softmax_theory.inputs import Domain, SettingError, check_domains
from softmax_theory.registry import parse_choice


class PolicyLoss(str, enum.Enum):
    VANILLA = "vanilla"  # PPO clip with dual-clip (verl's vanilla)
    CLIP_HIGHER = "clip_higher"  # vanilla with ε_high = 0.28 (DAPO)
    CLIP_COV = "clip_cov"  # Cui et al. 2025, §4
    KL_COV = "kl_cov"  # Cui et al. 2025, §4
    GPPO = "gppo"  # gradient-preserving clip (Klear-Reasoner; CE-GPPO's β₁, β₂)
    CISPO = "cispo"  # clipped, stop-gradient importance weight × REINFORCE (MiniMax-M1)
    GSPO = "gspo"  # sequence-level, length-normalised ratio (Qwen, GSPO)
    ARCHER = "archer"  # dual-token constraints by response-level entropy quantile (Archer)


class AggMode(str, enum.Enum):
    """How a [B, T] per-token loss becomes a scalar (verl's ``loss_agg_mode``)."""

    TOKEN_MEAN = "token-mean"  # Σ ℓ / N_tokens (the paper's setting; TRL's dapo)
    TOKEN_SUM = "token-sum"  # Σ ℓ
    SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"  # mean over responses of the token mean
    SEQ_MEAN_TOKEN_SUM = "seq-mean-token-sum"  # mean over responses of the token sum
    SEQ_MEAN_TOKEN_SUM_NORM = "seq-mean-token-sum-norm"  # … ÷ horizon (verl ≥ 0.7.1, Dr. GRPO)
    TOKEN_SUM_NORM = "token-sum-norm"  # Σ ℓ ÷ horizon (the paper's code, verl ≤ 0.7.0)


# Modes that divide by a constant horizon (``loss_scale_factor``; the maximum response length
# when unset).
NORM_MODES = frozenset({AggMode.SEQ_MEAN_TOKEN_SUM_NORM, AggMode.TOKEN_SUM_NORM})


class CovScope(str, enum.Enum):
    MICRO = "micro"  # select per micro-batch, as the paper's original code
    MINI = "mini"  # select over the optimiser mini-batch, as verl later does
    GLOBAL = "global"  # select once per step, over the step's whole batch


class CovSelector(str, enum.Enum):
    """Which tokens Clip-Cov and KL-Cov restrain."""

    COVARIANCE = "covariance"  # the paper's: largest (A − Ā)(log π − mean log π)
    # the tokens whose own first-order entropy change is the most negative: largest
    # A·[π(y)(log π(y) + H) − Cov_π(log π, π)] (Lemma 1 for the token's own update, exact in the
    # tabular world): the best selection a per-token score can make
    ORACLE = "oracle"


class RolloutIS(str, enum.Enum):
    """The level of the truncated importance weight w = min(π_old/π_sampler, C) that corrects
    for the sampler–trainer mismatch (verl's ``rollout_is``; TRL's ``token_truncate`` and
    ``sequence_truncate`` modes of ``vllm_importance_sampling_mode``)."""

    TOKEN = "token"  # w_t = min(π_old(y_t|s_t)/π_sampler(y_t|s_t), C), one per token
    SEQUENCE = "sequence"  # w_i = min(Π_t π_old/π_sampler, C), one per response


class KLEstimator(str, enum.Enum):
    K1 = "k1"  # log π − log π_ref
    K3 = "k3"  # e^{log π_ref − log π} − (log π_ref − log π) − 1 (verl's low_var_kl)


# Dual-clip's c (verl's clip_ratio_c default): tokens with A < 0 lose at most c·|A|.
DUAL_CLIP_DEFAULT = 3.0

# The cap C of the truncated importance weight: verl's rollout_is_threshold default (TRL 1.16's
# vllm_importance_sampling_clip_max defaults to 3.0).
ROLLOUT_IS_THRESHOLD_DEFAULT = 2.0

# The loss-specific settings each loss reads. Any other loss-specific setting is refused.
LOSS_KNOBS: dict[PolicyLoss, tuple[str, ...]] = {
    PolicyLoss.VANILLA: ("clip_ratio_low", "clip_ratio_high", "clip_ratio_c"),
    PolicyLoss.CLIP_HIGHER: ("clip_ratio_low", "clip_ratio_high", "clip_ratio_c"),
    PolicyLoss.CLIP_COV: (
        "clip_ratio_low",
        "clip_ratio_high",
        "clip_cov_ratio",
        "clip_cov_lb",
        "clip_cov_ub",
    ),
    PolicyLoss.KL_COV: ("kl_cov_ratio", "ppo_kl_coef"),
    PolicyLoss.GPPO: ("clip_ratio_low", "clip_ratio_high", "gppo_beta_low", "gppo_beta_high"),
    PolicyLoss.CISPO: ("clip_ratio_low", "clip_ratio_high"),
    PolicyLoss.GSPO: ("clip_ratio_low", "clip_ratio_high"),
    PolicyLoss.ARCHER: (
        "clip_ratio_low",
        "clip_ratio_high",
        "archer_quantile",
        "archer_clip_ratio",
        "archer_kl_coef",
    ),
}

# Each loss's defaults for the settings left unset (None): the only home of these numbers.
# Clip-Cov's clip range of 1 (ratio in [0, 2]) and its ratio and bounds are the paper's scripts';
# KL-Cov's ratio 0.002 is the paper's 7B setting as a fraction (the original code's
# k_percent = 0.2 means 0.2%) and its coefficient 1 the paper's (verl's default is 0.1).
LOSS_DEFAULTS: dict[PolicyLoss, dict[str, float]] = {
    PolicyLoss.VANILLA: {"clip_ratio_low": 0.2, "clip_ratio_high": 0.2},
    PolicyLoss.CLIP_HIGHER: {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28},
    PolicyLoss.CLIP_COV: {
        "clip_ratio_low": 1.0,
        "clip_ratio_high": 1.0,
        "clip_cov_ratio": 0.0002,
        "clip_cov_lb": 1.0,
        "clip_cov_ub": 5.0,
    },
    PolicyLoss.KL_COV: {"kl_cov_ratio": 0.002, "ppo_kl_coef": 1.0},
    # GPPO: β = 1 on both sides (Klear-Reasoner); CE-GPPO tunes β₁ (low side), β₂ (high side)
    PolicyLoss.GPPO: {
        "clip_ratio_low": 0.2,
        "clip_ratio_high": 0.28,
        "gppo_beta_low": 1.0,
        "gppo_beta_high": 1.0,
    },
    # CISPO truncates the weight from above only: ratio in [0, 5] (TRL's epsilon_high = 5)
    PolicyLoss.CISPO: {"clip_ratio_low": 1.0, "clip_ratio_high": 4.0},
    # GSPO's sequence ratio lives near 1: the paper's ε_low = 3e-4, ε_high = 4e-4
    PolicyLoss.GSPO: {"clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4},
    # Archer: low-entropy (knowledge) tokens keep the PPO clip (0.2) and a KL of 0.001 to the
    # reference; tokens above the response's 80% entropy quantile (reasoning) get a wider clip
    # (0.5, our reading of "higher clipping thresholds") and no KL
    PolicyLoss.ARCHER: {
        "clip_ratio_low": 0.2,
        "clip_ratio_high": 0.2,
        "archer_quantile": 0.8,
        "archer_clip_ratio": 0.5,
        "archer_kl_coef": 0.001,
    },
}

# The losses that read the reference policy's log-probs whatever kl_loss_coef is.
REFERENCE_LOSSES = frozenset({PolicyLoss.ARCHER})

# The losses that select tokens by covariance (and so read cov_scope).
COV_LOSSES = frozenset({PolicyLoss.CLIP_COV, PolicyLoss.KL_COV})

LOSS_SPECIFIC = tuple(dict.fromkeys(k for knobs in LOSS_KNOBS.values() for k in knobs))


def _per_loss(name: str) -> str:
    """'default per loss: vanilla 0.2, clip_higher 0.28, …' for a help string."""
    parts = [f"{loss.value} {d[name]:g}" for loss, d in LOSS_DEFAULTS.items() if name in d]
    return "default per loss: " + ", ".join(parts)


def _help(text: str, name: str | None = None, domain: Domain | None = None) -> dict:
    """A field's metadata: its help text (with the per-loss defaults of ``name``) and domain."""
    meta: dict = {"help": text if name is None else f"{text} ({_per_loss(name)})"}
    if domain is not None:
        meta["domain"] = domain
    return meta


# Domains shared by several settings.
NON_NEGATIVE = Domain(ge=0)
POSITIVE = Domain(gt=0)
FRACTION = Domain(gt=0, le=1)  # a share of the valid tokens: at least one is always taken


@dataclass(frozen=True)
class PolicyLossConfig:
    """The surrogate loss and the entropy controls; see the module docstring.

    Loss-specific settings left as None take the chosen loss's default (``LOSS_DEFAULTS``), and
    the config records the resolved value, so ``config.json`` shows what ran.
    """

    loss_mode: PolicyLoss = field(default=PolicyLoss.VANILLA, metadata=_help("the policy loss"))
    clip_ratio_low: float | None = field(
        default=None, metadata=_help("PPO ε_low: ratio ≥ 1 − ε_low", "clip_ratio_low", NON_NEGATIVE)
    )
    clip_ratio_high: float | None = field(
        default=None,
        metadata=_help("PPO ε_high: ratio ≤ 1 + ε_high", "clip_ratio_high", NON_NEGATIVE),
    )
    clip_ratio_c: float | None = field(
        default=DUAL_CLIP_DEFAULT,
        metadata=_help(
            "dual-clip c: a token with A < 0 loses at most c·|A|; 'none' disables",
            domain=Domain(gt=1),
        ),
    )
    clip_cov_ratio: float | None = field(
        default=None,
        metadata=_help("clip_cov: fraction of valid tokens detached", "clip_cov_ratio", FRACTION),
    )
    clip_cov_lb: float | None = field(
        default=None, metadata=_help("clip_cov: covariance lower bound", "clip_cov_lb", Domain())
    )
    clip_cov_ub: float | None = field(
        default=None, metadata=_help("clip_cov: covariance upper bound", "clip_cov_ub", Domain())
    )
    kl_cov_ratio: float | None = field(
        default=None,
        metadata=_help(
            "kl_cov: fraction of valid tokens penalised (top-k cov)", "kl_cov_ratio", FRACTION
        ),
    )
    ppo_kl_coef: float | None = field(
        default=None,
        metadata=_help("kl_cov: coefficient of |log π − log π_old|", "ppo_kl_coef", NON_NEGATIVE),
    )
    gppo_beta_low: float | None = field(
        default=None,
        metadata=_help(
            "gppo: β₁, the gradient kept below the clip range (A < 0)",
            "gppo_beta_low",
            NON_NEGATIVE,
        ),
    )
    gppo_beta_high: float | None = field(
        default=None,
        metadata=_help(
            "gppo: β₂, the gradient kept above the clip range (A > 0)",
            "gppo_beta_high",
            NON_NEGATIVE,
        ),
    )
    archer_quantile: float | None = field(
        default=None,
        metadata=_help(
            "archer: tokens above this quantile of their response's entropies are high-entropy",
            "archer_quantile",
            Domain(gt=0, lt=1),
        ),
    )
    archer_clip_ratio: float | None = field(
        default=None,
        metadata=_help(
            "archer: the clip range ε of high-entropy tokens", "archer_clip_ratio", NON_NEGATIVE
        ),
    )
    archer_kl_coef: float | None = field(
        default=None,
        metadata=_help(
            "archer: the KL-to-reference weight of low-entropy tokens",
            "archer_kl_coef",
            NON_NEGATIVE,
        ),
    )
    loss_agg_mode: AggMode = field(
        default=AggMode.TOKEN_MEAN, metadata=_help("aggregation of the per-token loss")
    )
    loss_scale_factor: float | None = field(
        default=None,
        metadata=_help(
            "the horizon of the *-norm modes (default: the maximum response length)",
            domain=POSITIVE,
        ),
    )
    entropy_coeff: float = field(
        default=0.0,
        metadata=_help("entropy bonus coefficient (loss −entropy_coeff·H)", domain=NON_NEGATIVE),
    )
    entropy_target: float | None = field(
        default=None,
        metadata=_help(
            "adaptive entropy: target H (nats); entropy_coeff moves ±entropy_delta each step "
            "towards it",
            domain=NON_NEGATIVE,
        ),
    )
    entropy_delta: float = field(
        default=0.005,
        metadata=_help("adaptive entropy: the step of entropy_coeff", domain=NON_NEGATIVE),
    )
    kl_loss_coef: float = field(
        default=0.0,
        metadata=_help("β of +β·KL(π‖π_ref), π_ref = the initial policy", domain=NON_NEGATIVE),
    )
    kl_loss_type: KLEstimator = field(
        default=KLEstimator.K3, metadata=_help("per-token estimator of KL(π‖π_ref)")
    )
    entropy_adv_alpha: float = field(
        default=0.0,
        metadata=_help(
            "entropy-shaped advantage A + min(α·sg(H), |A|/κ) (arXiv 2506.14758): α (0: off)",
            domain=NON_NEGATIVE,
        ),
    )
    entropy_adv_kappa: float = field(
        default=2.0,
        # κ ≤ 1 lets the bonus cancel or flip a negative advantage
        metadata=_help("entropy-shaped advantage: κ, the cap's divisor", domain=Domain(gt=1)),
    )
    top_entropy_ratio: float | None = field(
        default=None,
        metadata=_help(
            "gradient only through tokens in the top ρ of entropy (80/20: 0.2)", domain=FRACTION
        ),
    )
    cov_scope: CovScope = field(
        default=CovScope.MICRO,
        metadata=_help("clip_cov/kl_cov: where tokens are selected: micro, mini or global (step)"),
    )
    cov_selector: CovSelector = field(
        default=CovSelector.COVARIANCE,
        metadata=_help("clip_cov/kl_cov: which tokens: covariance (the paper's) or oracle"),
    )
    rollout_is: RolloutIS | None = field(
        default=None,
        metadata=_help(
            "truncated importance sampling of the sampler–trainer mismatch: the policy loss "
            "times w = min(π_old/π_sampler, rollout_is_threshold), per token or per sequence "
            "(verl's rollout_is; default: off)"
        ),
    )
    rollout_is_threshold: float = field(
        default=ROLLOUT_IS_THRESHOLD_DEFAULT,
        # a cap below 1 would scale down every token the sampler and trainer agree on: a smaller
        # step, not a correction
        metadata=_help(
            "rollout_is: the cap C of the importance weight (verl's rollout_is_threshold, TRL's "
            "vllm_importance_sampling_clip_max)",
            domain=Domain(ge=1),
        ),
    )

    def __post_init__(self) -> None:
        for name, enum_cls in (
            ("loss_mode", PolicyLoss),
            ("loss_agg_mode", AggMode),
            ("cov_scope", CovScope),
            ("cov_selector", CovSelector),
            ("kl_loss_type", KLEstimator),
        ):
            object.__setattr__(self, name, parse_choice(enum_cls, getattr(self, name), name))
        if self.rollout_is is not None:
            object.__setattr__(
                self, "rollout_is", parse_choice(RolloutIS, self.rollout_is, "rollout_is")
            )
        check_domains(self)
        self._resolve_loss_settings()
        self._check_pairs()
        self._refuse_unused_controls()

    @property
    def needs_reference(self) -> bool:
        """Whether the loss reads log π_ref: a KL penalty, or a loss with a KL of its own."""
        return self.kl_loss_coef > 0 or self.loss_mode in REFERENCE_LOSSES

    @property
    def needs_sampler(self) -> bool:
        """Whether the loss reads the sampler's log-probs (the truncated importance weight)."""
        return self.rollout_is is not None

    @property
    def needs_score(self) -> bool:
        """Whether the loss reads each token's own-update entropy term (the oracle selector)."""
        return self.loss_mode in COV_LOSSES and self.cov_selector is CovSelector.ORACLE

    def _resolve_loss_settings(self) -> None:
        """Fill the chosen loss's unset settings from ``LOSS_DEFAULTS``; refuse the others."""
        mode = self.loss_mode
        knobs, defaults = LOSS_KNOBS[mode], LOSS_DEFAULTS[mode]
        for name in LOSS_SPECIFIC:
            value = getattr(self, name)
            if name in knobs:
                if value is None and name in defaults:
                    object.__setattr__(self, name, defaults[name])
                continue
            # clip_ratio_c has a default of its own; for a loss without dual-clip it is off
            untouched = (
                value in (None, DUAL_CLIP_DEFAULT) if name == "clip_ratio_c" else value is None
            )
            if not untouched:
                raise SettingError(
                    name, f"has no effect with loss_mode {mode.value} (it reads {', '.join(knobs)})"
                )
            object.__setattr__(self, name, None)

    def _check_pairs(self) -> None:
        """The rules between settings that each field's domain cannot say."""
        if self.clip_cov_lb is not None and not self.clip_cov_lb < self.clip_cov_ub:
            raise SettingError(
                "clip_cov_lb", f"must be < clip_cov_ub = {self.clip_cov_ub}, got {self.clip_cov_lb}"
            )

    def _refuse_unused_controls(self) -> None:
        """A control setting that cannot act with the other settings is refused by name."""
        default = {f.name: f.default for f in fields(self)}
        unused = []
        if self.entropy_target is None and self.entropy_delta != default["entropy_delta"]:
            unused.append(("entropy_delta", "without entropy_target"))
        if self.kl_loss_coef == 0 and self.kl_loss_type is not default["kl_loss_type"]:
            unused.append(("kl_loss_type", "while kl_loss_coef is 0"))
        for name in ("cov_scope", "cov_selector"):
            if getattr(self, name) is not default[name] and self.loss_mode not in COV_LOSSES:
                unused.append((name, f"with loss_mode {self.loss_mode.value}"))
        if self.entropy_adv_alpha == 0 and self.entropy_adv_kappa != default["entropy_adv_kappa"]:
            unused.append(("entropy_adv_kappa", "while entropy_adv_alpha is 0"))
        if self.rollout_is is None and self.rollout_is_threshold != default["rollout_is_threshold"]:
            unused.append(("rollout_is_threshold", "while rollout_is is unset"))
        if self.loss_scale_factor is not None and self.loss_agg_mode not in NORM_MODES:
            unused.append(("loss_scale_factor", f"with loss_agg_mode {self.loss_agg_mode.value}"))
        if unused:
            name, why = unused[0]
            raise SettingError(name, f"has no effect {why}")


# ceil(ρ·N) is computed from a float product: 0.1·30 is 3.0000000000000004, whose ceiling is 4.
# A product within this distance above an integer counts as that integer.
TOP_RATIO_TOLERANCE = 1e-9


def n_selected(n_valid: int, ratio: float) -> int:
    """max(1, int(N_valid·ratio)): how the reference code of Clip-Cov and KL-Cov counts tokens."""
    return max(1, int(n_valid * ratio))


def n_top(n_valid: int, ratio: float) -> int:
    """⌈ρ·N⌉ (at least 1, at most N): the tokens kept by the top-ρ entropy rule (80/20)."""
    return min(n_valid, max(1, math.ceil(ratio * n_valid - TOP_RATIO_TOLERANCE)))


def adaptive_entropy_coef(
    entropy_coeff: float, entropy: float, cfg: PolicyLossConfig
) -> tuple[float, float]:
    """Adaptive entropy control (Skywork-OR1): ``entropy_coeff`` moves by ±``entropy_delta``
    towards the target entropy, and the bonus applies only while H ≤ target. Returns
    (``entropy_coeff`` carried to the next step, ``entropy_coeff`` applied now, which both
    worlds log as ``actor/entropy_coeff``).

    Without a target, ``entropy_coeff`` is the fixed ``cfg.entropy_coeff`` and always applies.
    """
    if cfg.entropy_target is None:
        return entropy_coeff, entropy_coeff
    step = cfg.entropy_delta if entropy < cfg.entropy_target else -cfg.entropy_delta
    entropy_coeff = max(0.0, entropy_coeff + step)
    return entropy_coeff, entropy_coeff if entropy <= cfg.entropy_target else 0.0
