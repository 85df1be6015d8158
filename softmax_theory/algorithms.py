"""Per-step logit updates for tabular softmax policies: PG, NPG, REINFORCE, GRPO.

Each algorithm is a pure step function ``(env, logits, state, config, rng) → StepResult`` held in
a registry keyed by ``Algo``. GRPO's surrogate losses (PPO clip, clip-higher, Clip-Cov, KL-Cov)
and advantage estimators (GRPO, RLOO, REINFORCE++) are registries of their own. The losses'
definitions and defaults follow the design note's parity section, which matches the paper's
reference code; every token loss here is a function of the token's log-probability, so a loss
returns dℓ/d log π per token and the logit gradient is (dℓ/d log π)·(e_a − π(·|s)).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from softmax_theory.envs import TabularEnv, TokenTreeMDP
from softmax_theory.estimators import _check_lr, entropy, log_softmax
from softmax_theory.registry import parse_choice

# Added to a group's reward std before dividing (GRPO's ε).
ADV_EPS = 1e-6


class Algo(str, enum.Enum):
    PG = "pg"
    NPG = "npg"
    REINFORCE = "reinforce"
    GRPO = "grpo"


class AdvantageEstimator(str, enum.Enum):
    GRPO = "grpo"  # group z-score
    RLOO = "rloo"  # leave-one-out group mean
    REINFORCE_PP = "reinforce_pp"  # batch-normalised (REINFORCE++)


class CovScope(str, enum.Enum):
    MICRO = "micro"  # select per micro-batch, as the paper's original code
    MINI = "mini"  # select over the optimiser mini-batch, as verl later does


class KLEstimator(str, enum.Enum):
    K1 = "k1"  # log π − log π_ref
    K3 = "k3"  # e^{log π_ref − log π} − (log π_ref − log π) − 1 (non-negative, low variance)


class PolicyLoss(str, enum.Enum):
    VANILLA = "vanilla"  # PPO clip, ε_low = ε_high
    CLIP_HIGHER = "clip_higher"  # PPO clip with ε_high > ε_low (DAPO)
    CLIP_COV = "clip_cov"  # Cui et al. 2025, §4
    KL_COV = "kl_cov"  # Cui et al. 2025, §4


@dataclass(frozen=True)
class PolicyLossConfig:
    """The surrogate loss and the entropy controls: the only home of their defaults.

    Defaults are the paper's (design note, "Parity with the reference implementation").
    """

    loss: PolicyLoss = field(default=PolicyLoss.VANILLA, metadata={"help": "the policy loss"})
    clip_ratio_low: float = field(default=0.2, metadata={"help": "PPO ε_low: ratio ≥ 1 − ε_low"})
    clip_ratio_high: float = field(
        default=0.2, metadata={"help": "PPO ε_high for vanilla: ratio ≤ 1 + ε_high"}
    )
    clip_higher_high: float = field(
        default=0.28, metadata={"help": "clip_higher's ε_high (DAPO's 0.28)"}
    )
    clip_cov_clip_ratio: float = field(
        default=1.0,
        metadata={"help": "clip_cov's PPO clip range (the paper's scripts: 1, ratio in [0, 2])"},
    )
    clip_cov_ratio: float = field(
        default=0.0002, metadata={"help": "clip_cov: fraction of valid tokens detached"}
    )
    clip_cov_lb: float = field(default=1.0, metadata={"help": "clip_cov: covariance lower bound"})
    clip_cov_ub: float = field(default=5.0, metadata={"help": "clip_cov: covariance upper bound"})
    kl_cov_ratio: float = field(
        default=0.002, metadata={"help": "kl_cov: fraction of valid tokens penalised (top-k cov)"}
    )
    kl_cov_coef: float = field(
        default=1.0, metadata={"help": "kl_cov: coefficient of |log π − log π_old|"}
    )
    entropy_coef: float = field(default=0.0, metadata={"help": "entropy bonus α (loss −α·H)"})
    entropy_target: float | None = field(
        default=None,
        metadata={"help": "adaptive entropy: target H; α moves ±entropy_delta towards it"},
    )
    entropy_delta: float = field(default=0.005, metadata={"help": "adaptive entropy: α step"})
    kl_ref_coef: float = field(
        default=0.0, metadata={"help": "β of +β·KL(π‖π_ref), π_ref = the initial policy"}
    )
    top_entropy_ratio: float | None = field(
        default=None,
        metadata={"help": "gradient only through tokens in the top ρ of entropy (80/20: 0.2)"},
    )
    cov_scope: CovScope = field(
        default=CovScope.MICRO,
        metadata={"help": "LLM: where Clip-Cov/KL-Cov select tokens: micro- or mini-batch"},
    )
    kl_ref_estimator: KLEstimator = field(
        default=KLEstimator.K3, metadata={"help": "LLM: per-token estimator of KL(π‖π_ref)"}
    )

    def __post_init__(self) -> None:
        for name, enum_cls in (
            ("loss", PolicyLoss),
            ("cov_scope", CovScope),
            ("kl_ref_estimator", KLEstimator),
        ):
            object.__setattr__(self, name, parse_choice(enum_cls, getattr(self, name), name))
        for name in (
            "clip_ratio_low",
            "clip_ratio_high",
            "clip_higher_high",
            "clip_cov_clip_ratio",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be ≥ 0, got {getattr(self, name)}")
        for name in ("clip_cov_ratio", "kl_cov_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: a fraction in [0, 1], got {getattr(self, name)}")
        if self.clip_cov_lb >= self.clip_cov_ub:
            raise ValueError(f"clip_cov_lb: must be < clip_cov_ub, got {self.clip_cov_lb}")
        if self.top_entropy_ratio is not None and not 0 < self.top_entropy_ratio <= 1:
            raise ValueError(
                f"top_entropy_ratio: a fraction in (0, 1], got {self.top_entropy_ratio}"
            )
        for name in ("entropy_coef", "kl_ref_coef", "kl_cov_coef", "entropy_delta"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be ≥ 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class AlgoConfig:
    """One algorithm's settings; the only home of their defaults."""

    algo: Algo = field(default=Algo.GRPO, metadata={"help": "the update rule"})
    group_size: int = field(default=8, metadata={"help": "grpo: responses G per prompt"})
    samples: int = field(default=8, metadata={"help": "reinforce: samples N per prompt"})
    epochs: int = field(
        default=4, metadata={"help": "grpo: inner epochs K on each batch (KL-Cov needs K ≥ 2)"}
    )
    advantage: AdvantageEstimator = field(
        default=AdvantageEstimator.GRPO, metadata={"help": "grpo: advantage estimator"}
    )
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "algo", parse_choice(Algo, self.algo, "algo"))
        object.__setattr__(
            self, "advantage", parse_choice(AdvantageEstimator, self.advantage, "advantage")
        )
        for name in ("group_size", "samples", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be ≥ 1, got {getattr(self, name)}")
        if self.algo is Algo.GRPO and self.group_size < 2:
            raise ValueError("group_size: GRPO needs at least 2 responses per prompt")


@dataclass(frozen=True)
class AlgoState:
    """What an algorithm carries between steps: the reference logits and the adaptive α."""

    ref_logits: np.ndarray
    entropy_coef: float


@dataclass(frozen=True)
class TokenBatch:
    """Sampled tokens, flattened over responses: state s_t, action a_t, response and group.

    T below is the number of sampled tokens in the batch (responses × tokens per response).
    """

    state: np.ndarray  # [T] int, flat state index
    action: np.ndarray  # [T] int
    response: np.ndarray  # [T] int, which response the token belongs to
    group: np.ndarray  # [R] int, the prompt (group) of each response
    reward: np.ndarray  # [R] reward of each response
    weight: np.ndarray  # [R] prompt weight correction (S·w(s); 1 for uniform prompts)


@dataclass(frozen=True)
class StepResult:
    logits: np.ndarray  # after the step
    state: AlgoState
    tokens: TokenBatch | None = None  # sampled algorithms only
    token_logp: np.ndarray | None = None  # [T] log π_old of each sampled token
    token_adv: np.ndarray | None = None  # [T] advantage of each sampled token
    metrics: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def _sample_actions(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per row of p [n, A] by inverse CDF."""
    u = rng.random(p.shape[0])
    cdf = np.cumsum(p, axis=1)
    return np.minimum((cdf < (u * cdf[:, -1])[:, None]).sum(axis=1), p.shape[1] - 1)


def sample_batch(
    env: TabularEnv, logits: np.ndarray, per_prompt: int, rng: np.random.Generator
) -> TokenBatch:
    """``per_prompt`` responses for every prompt (every state of a bandit, the root of a tree)."""
    p = np.exp(log_softmax(logits))
    if isinstance(env, TokenTreeMDP):
        vocab, horizon = env.vocab, env.horizon
        n = per_prompt
        prefix = np.zeros(n, dtype=np.int64)  # base-V prefix value at the current depth
        states, actions = [], []
        for t in range(horizon):
            flat = env._offsets[t] + prefix
            a = _sample_actions(p[flat], rng)
            states.append(flat)
            actions.append(a)
            prefix = prefix * vocab + a
        state = np.stack(states, axis=1).reshape(-1)  # (n, T) → (n·T,)
        action = np.stack(actions, axis=1).reshape(-1)
        response = np.repeat(np.arange(n), horizon)
        return TokenBatch(
            state=state,
            action=action,
            response=response,
            group=np.zeros(n, dtype=np.int64),
            reward=env.rewards[prefix],
            weight=np.ones(n),
        )
    n_prompts = logits.shape[0]
    state = np.repeat(np.arange(n_prompts), per_prompt)
    action = _sample_actions(p[state], rng)
    w = env.state_weights(logits)
    return TokenBatch(
        state=state,
        action=action,
        response=np.arange(state.size),
        group=state.copy(),
        reward=env.rewards[state, action],
        weight=n_prompts * w[state],
    )


# ---------------------------------------------------------------------------------------------
# Advantage estimators: group rewards → per-response advantages
# ---------------------------------------------------------------------------------------------


def _group_stats(
    reward: np.ndarray, group: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_groups = group.max() + 1
    count = np.bincount(group, minlength=n_groups).astype(np.float64)
    mean = np.bincount(group, weights=reward, minlength=n_groups) / count
    var = np.bincount(group, weights=(reward - mean[group]) ** 2, minlength=n_groups) / count
    return mean[group], np.sqrt(var)[group], count[group]


def grpo_advantage(reward: np.ndarray, group: np.ndarray) -> np.ndarray:
    """A_i = (r_i − mean_g r)/(std_g r + ε); a group whose rewards are all equal gets 0."""
    mean, std, _ = _group_stats(reward, group)
    return np.where(std > 0, (reward - mean) / (std + ADV_EPS), 0.0)


def rloo_advantage(reward: np.ndarray, group: np.ndarray) -> np.ndarray:
    """A_i = r_i − mean_{j≠i} r_j = G/(G − 1)·(r_i − mean_g r) (leave-one-out baseline)."""
    mean, _, count = _group_stats(reward, group)
    return np.where(count > 1, count / np.maximum(count - 1, 1) * (reward - mean), 0.0)


def reinforce_pp_advantage(reward: np.ndarray, group: np.ndarray) -> np.ndarray:
    """A_i = (r_i − mean_batch r)/(std_batch r + ε): REINFORCE++'s global normalisation."""
    std = reward.std()
    return (reward - reward.mean()) / (std + ADV_EPS) if std > 0 else np.zeros_like(reward)


ADVANTAGES: dict[AdvantageEstimator, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    AdvantageEstimator.GRPO: grpo_advantage,
    AdvantageEstimator.RLOO: rloo_advantage,
    AdvantageEstimator.REINFORCE_PP: reinforce_pp_advantage,
}


# ---------------------------------------------------------------------------------------------
# Policy losses over sampled tokens
# ---------------------------------------------------------------------------------------------


def token_covariance(logp: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """cov_t = (log π_t − mean log π)·(A_t − mean A), means over the batch's valid tokens.

    Cui et al. 2025, §4 (the estimator Clip-Cov and KL-Cov select on).
    """
    return (logp - logp.mean()) * (adv - adv.mean())


def adaptive_entropy_coef(
    alpha: float, entropy: float, cfg: PolicyLossConfig
) -> tuple[float, float]:
    """Adaptive entropy control (Skywork-OR1): α moves by ±Δ towards the target entropy, and
    the bonus applies only while H ≤ target. Returns (α carried to the next step, α applied now).

    Without a target, α is the fixed ``entropy_coef`` and always applies.
    """
    if cfg.entropy_target is None:
        return alpha, alpha
    step = cfg.entropy_delta if entropy < cfg.entropy_target else -cfg.entropy_delta
    alpha = max(0.0, alpha + step)
    return alpha, alpha if entropy <= cfg.entropy_target else 0.0


def n_selected(n_valid: int, ratio: float) -> int:
    """max(1, int(N_valid·ratio)), as the reference code counts the tokens to select."""
    return max(1, int(n_valid * ratio))


@dataclass(frozen=True)
class TokenLoss:
    """Per-token loss ℓ_t, its derivative dℓ_t/d log π_t, and the loss's metrics."""

    loss: np.ndarray
    dlogp: np.ndarray
    metrics: dict[str, float]


def _ppo_clip(logp, old_logp, adv, low, high) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ℓ = max(−r·A, −clip(r, 1 − low, 1 + high)·A), r = exp(log π − log π_old).

    Returns ℓ, dℓ/d log π, and the mask of tokens where the clipped branch is active.
    """
    ratio = np.exp(logp - old_logp)
    unclipped = -ratio * adv
    clipped = -np.clip(ratio, 1 - low, 1 + high) * adv
    is_clipped = clipped > unclipped
    loss = np.where(is_clipped, clipped, unclipped)
    return loss, np.where(is_clipped, 0.0, -ratio * adv), is_clipped


def vanilla_loss(logp, old_logp, adv, cfg: PolicyLossConfig, rng) -> TokenLoss:
    loss, dlogp, clipped = _ppo_clip(logp, old_logp, adv, cfg.clip_ratio_low, cfg.clip_ratio_high)
    return TokenLoss(loss, dlogp, {"actor/pg_clipfrac": float(clipped.mean())})


def clip_higher_loss(logp, old_logp, adv, cfg: PolicyLossConfig, rng) -> TokenLoss:
    loss, dlogp, clipped = _ppo_clip(logp, old_logp, adv, cfg.clip_ratio_low, cfg.clip_higher_high)
    return TokenLoss(loss, dlogp, {"actor/pg_clipfrac": float(clipped.mean())})


def clip_cov_loss(logp, old_logp, adv, cfg: PolicyLossConfig, rng) -> TokenLoss:
    """PPO clip; a random max(1, int(N·ratio)) of the unclipped tokens with lb < cov < ub lose
    their gradient (their loss is multiplied by 0 and stays in the token-mean denominator)."""
    c = cfg.clip_cov_clip_ratio
    loss, dlogp, clipped = _ppo_clip(logp, old_logp, adv, c, c)
    cov = token_covariance(logp, adv)
    eligible = np.flatnonzero((cov > cfg.clip_cov_lb) & (cov < cfg.clip_cov_ub) & ~clipped)
    k = min(n_selected(logp.size, cfg.clip_cov_ratio), eligible.size)
    chosen = rng.choice(eligible, size=k, replace=False) if k else eligible
    keep = np.ones_like(loss)
    keep[chosen] = 0.0
    return TokenLoss(
        loss * keep,
        dlogp * keep,
        {"actor/pg_clipfrac": float(clipped.mean()), "actor/cov_selected_frac": k / logp.size},
    )


def kl_cov_loss(logp, old_logp, adv, cfg: PolicyLossConfig, rng) -> TokenLoss:
    """ℓ = −r·A (no clip); the top-k tokens by cov add kl_cov_coef·|log π − log π_old|."""
    ratio = np.exp(logp - old_logp)
    loss = -ratio * adv
    dlogp = -ratio * adv
    k = n_selected(logp.size, cfg.kl_cov_ratio)
    top = np.argsort(-token_covariance(logp, adv), kind="stable")[:k]
    diff = logp[top] - old_logp[top]
    loss[top] += cfg.kl_cov_coef * np.abs(diff)
    dlogp[top] += cfg.kl_cov_coef * np.sign(diff)  # zero on the on-policy first epoch
    return TokenLoss(loss, dlogp, {"actor/cov_selected_frac": k / logp.size})


POLICY_LOSSES: dict[PolicyLoss, Callable[..., TokenLoss]] = {
    PolicyLoss.VANILLA: vanilla_loss,
    PolicyLoss.CLIP_HIGHER: clip_higher_loss,
    PolicyLoss.CLIP_COV: clip_cov_loss,
    PolicyLoss.KL_COV: kl_cov_loss,
}


def get_policy_loss(name: str | PolicyLoss) -> Callable[..., TokenLoss]:
    return POLICY_LOSSES[parse_choice(PolicyLoss, name, "loss")]


# ---------------------------------------------------------------------------------------------
# Step functions
# ---------------------------------------------------------------------------------------------


def _scatter_logit_grad(
    n_states_actions: tuple[int, int],
    p: np.ndarray,
    state: np.ndarray,
    action: np.ndarray,
    coef: np.ndarray,
) -> np.ndarray:
    """Σ_t coef_t·(e_{a_t} − π(·|s_t)) accumulated into a [S, A] array."""
    grad = np.zeros(n_states_actions)
    np.add.at(grad, (state, action), coef)
    per_state = np.bincount(state, weights=coef, minlength=n_states_actions[0])
    return grad - per_state[:, None] * p


def pg_step(env, logits, state: AlgoState, cfg: AlgoConfig, lr, rng) -> StepResult:
    """z' = z + η·d_π(s)·π·A: exact expected policy gradient  (eq. 6)."""
    return StepResult(logits=logits + lr * env.policy_gradient(logits), state=state)


def npg_step(env, logits, state: AlgoState, cfg: AlgoConfig, lr, rng) -> StepResult:
    """z' = z + η·A: exact natural policy gradient  (eq. 7)."""
    return StepResult(logits=logits + lr * env.advantages(logits), state=state)


def reinforce_step(env, logits, state: AlgoState, cfg: AlgoConfig, lr, rng) -> StepResult:
    """z' = z + η·(1/N)Σ_i w_i·r_i·Σ_t (e_{a_t} − π(·|s_t)): the score-function estimate of the
    PG step, unbiased for η·d_π·π·A (no baseline; its variance is what REINFORCE pays)."""
    batch = sample_batch(env, logits, cfg.samples, rng)
    p = np.exp(log_softmax(logits))
    coef = (batch.weight * batch.reward)[batch.response] / cfg.samples
    grad = _scatter_logit_grad(logits.shape, p, batch.state, batch.action, coef)
    if not isinstance(env, TokenTreeMDP):
        grad /= logits.shape[0]  # J averages prompts: d(s) = w(s) = weight/S
    logp = log_softmax(logits)[batch.state, batch.action]
    return StepResult(
        logits=logits + lr * grad,
        state=state,
        tokens=batch,
        token_logp=logp,
        token_adv=batch.reward[batch.response],  # no baseline: the advantage is the reward
    )


def grpo_step(env, logits, state: AlgoState, cfg: AlgoConfig, lr, rng) -> StepResult:
    """GRPO on the logits: sample G responses per prompt, group-normalise the advantages, and
    take K gradient steps of size η on the token-mean surrogate loss (plus controls)."""
    lc = cfg.loss
    batch = sample_batch(env, logits, cfg.group_size, rng)
    adv_resp = ADVANTAGES[cfg.advantage](batch.reward, batch.group)
    adv = (adv_resp * batch.weight)[batch.response]  # [T]; prompt weights fold into A
    s_t, a_t = batch.state, batch.action
    old_logp = log_softmax(logits)[s_t, a_t]
    loss_fn = get_policy_loss(lc.loss)
    n_tokens = s_t.size

    alpha, bonus = adaptive_entropy_coef(state.entropy_coef, env.entropy(logits), lc)

    # Top-ρ entropy tokens (80/20): only tokens at high-entropy states carry the policy loss.
    token_mask = np.ones(n_tokens)
    if lc.top_entropy_ratio is not None:
        h_tok = entropy(logits)[s_t]
        k = max(1, int(np.ceil(lc.top_entropy_ratio * n_tokens)))
        token_mask = np.zeros(n_tokens)
        token_mask[np.argsort(-h_tok, kind="stable")[:k]] = 1.0

    z = logits.copy()
    metrics: dict[str, float] = {}
    for _ in range(cfg.epochs):
        logp_all = log_softmax(z)
        p = np.exp(logp_all)
        tl = loss_fn(logp_all[s_t, a_t], old_logp, adv, lc, rng)
        # token-mean aggregation: the gradient of (1/T)Σ_t ℓ_t
        grad = _scatter_logit_grad(z.shape, p, s_t, a_t, tl.dlogp * token_mask / n_tokens)
        # −α·mean_t H(s_t): dH/dz = −π·(log π − E log π)
        g = logp_all - (p * logp_all).sum(axis=1, keepdims=True)
        visits = np.bincount(s_t, minlength=z.shape[0]) / n_tokens
        if bonus > 0:
            grad += bonus * visits[:, None] * p * g
        # +β·mean_t KL(π(·|s_t) ‖ π_ref(·|s_t)), exact per state: dKL/dz = π·(log π/π_ref − KL)
        if lc.kl_ref_coef > 0:
            log_ratio = logp_all - log_softmax(state.ref_logits)
            kl = (p * log_ratio).sum(axis=1, keepdims=True)
            grad += lc.kl_ref_coef * visits[:, None] * p * (log_ratio - kl)
        z = z - lr * grad
        metrics = tl.metrics
    metrics["actor/entropy_coef"] = bonus
    return StepResult(
        logits=z,
        state=replace(state, entropy_coef=alpha),
        tokens=batch,
        token_logp=old_logp,
        token_adv=adv,
        metrics=metrics,
    )


STEPS: dict[Algo, Callable[..., StepResult]] = {
    Algo.PG: pg_step,
    Algo.NPG: npg_step,
    Algo.REINFORCE: reinforce_step,
    Algo.GRPO: grpo_step,
}


def get_step(name: str | Algo) -> Callable[..., StepResult]:
    return STEPS[parse_choice(Algo, name, "algo")]


def initial_state(logits: np.ndarray, cfg: AlgoConfig) -> AlgoState:
    return AlgoState(ref_logits=np.array(logits, copy=True), entropy_coef=cfg.loss.entropy_coef)


def step(
    env: TabularEnv,
    logits: np.ndarray,
    state: AlgoState,
    cfg: AlgoConfig,
    lr: float,
    rng: np.random.Generator,
) -> StepResult:
    """One update of ``cfg.algo`` from ``logits`` [S, A] with step size η = ``lr``."""
    return get_step(cfg.algo)(env, logits, state, cfg, _check_lr(lr), rng)
