"""Per-step logit updates for tabular softmax policies: PG, NPG, REINFORCE, GRPO.

Each algorithm is a pure step function ``(env, logits, state, config, rng) → StepResult`` held in
a registry keyed by ``Algo``. GRPO reads the shared policy losses (``softmax_theory.losses``, the
numpy twins of ``llm_bridge.losses``) and advantage estimators (``softmax_theory.advantages``);
every token loss is a function of the token's log-probability and its state's entropy, so the loss
returns dℓ/d log π and dℓ/dH per token and the logit gradient is exact:
(dℓ/d log π)·(e_a − π(·|s)) + (dℓ/dH)·∂H(s)/∂z.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from softmax_theory.envs import TabularEnv, TokenTreeMDP
from softmax_theory.estimators import entropy, log_softmax
from softmax_theory.group_advantages import ADVANTAGES, AdvantageEstimator
from softmax_theory.inputs import check_lr
from softmax_theory.losses import LossInputs, agg_weights, compute_policy_loss
from softmax_theory.policy import PolicyLossConfig, adaptive_entropy_coef
from softmax_theory.registry import parse_choice


class Algo(str, enum.Enum):
    PG = "pg"
    NPG = "npg"
    REINFORCE = "reinforce"
    GRPO = "grpo"


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
    policy_loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)

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
    entropy_coeff: float


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
            flat = env.offsets[t] + prefix
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


def _entropy_logit_grad(logp: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Σ_t coef_t·∂H(s_t)/∂z per state, given coef summed per state [S]: ∂H/∂z = −π·(log π + H)."""
    p = np.exp(logp)
    centred = logp - (p * logp).sum(axis=1, keepdims=True)  # log π + H
    return -coef[:, None] * p * centred


def grpo_step(env, logits, state: AlgoState, cfg: AlgoConfig, lr, rng) -> StepResult:
    """GRPO on the logits: sample G responses per prompt, compute advantages, and take K
    gradient steps of size η on the aggregated surrogate loss (plus controls)."""
    lc = cfg.policy_loss
    batch = sample_batch(env, logits, cfg.group_size, rng)
    adv_resp = ADVANTAGES[cfg.advantage](batch.reward, batch.group)
    adv = (adv_resp * batch.weight)[batch.response]  # [T]; prompt weights fold into A
    s_t, a_t = batch.state, batch.action
    shape = (batch.group.size, s_t.size // batch.group.size)  # (responses, tokens each)
    mask = np.ones(shape)
    weights = agg_weights(mask, lc.loss_agg_mode, loss_scale_factor=lc.loss_scale_factor)
    old_logp = log_softmax(logits)[s_t, a_t]
    ref_logp = log_softmax(state.ref_logits)[s_t, a_t] if lc.kl_loss_coef > 0 else None
    alpha, bonus = adaptive_entropy_coef(state.entropy_coeff, env.entropy(logits), lc)
    n_states = logits.shape[0]

    z = logits.copy()
    metrics: dict[str, float] = {}
    for _ in range(cfg.epochs):
        logp_all = log_softmax(z)
        inp = LossInputs(
            log_prob=logp_all[s_t, a_t].reshape(shape),
            old_log_prob=old_logp.reshape(shape),
            advantages=adv.reshape(shape),
            response_mask=mask,
            entropy=entropy(z)[s_t].reshape(shape),
            ref_log_prob=None if ref_logp is None else ref_logp.reshape(shape),
        )
        out = compute_policy_loss(inp, lc, entropy_coeff=bonus, generator=rng)
        # the gradient of Σ_t w_t·ℓ_t: through log π(a_t|s_t) and through H(s_t)
        grad = _scatter_logit_grad(
            z.shape, np.exp(logp_all), s_t, a_t, (out.dlogp * weights).reshape(-1)
        )
        if out.dentropy is not None:
            coef = np.bincount(
                s_t, weights=(out.dentropy * weights).reshape(-1), minlength=n_states
            )
            grad += _entropy_logit_grad(logp_all, coef)
        z = z - lr * grad
        metrics = out.metrics
    metrics["actor/entropy_coeff"] = bonus
    return StepResult(
        logits=z,
        state=replace(state, entropy_coeff=alpha),
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
    return AlgoState(
        ref_logits=np.array(logits, copy=True), entropy_coeff=cfg.policy_loss.entropy_coeff
    )


def step(
    env: TabularEnv,
    logits: np.ndarray,
    state: AlgoState,
    cfg: AlgoConfig,
    lr: float,
    rng: np.random.Generator,
) -> StepResult:
    """One update of ``cfg.algo`` from ``logits`` [S, A] with step size η = ``lr``."""
    return get_step(cfg.algo)(env, logits, state, cfg, check_lr(lr), rng)
