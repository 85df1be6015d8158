"""Per-step logit updates for tabular softmax policies: PG, NPG, REINFORCE, GRPO.

Each algorithm is a pure step function ``(env, logits, state, config, rng) → StepResult`` held in
a registry keyed by ``Algo``. GRPO reads the shared policy losses (``softmax_theory.losses``, the
numpy twins of ``llm_bridge.losses``) and advantage estimators
(``softmax_theory.group_advantages``). Every token loss is a function of the token's
log-probability and its state's entropy, so the loss returns dℓ/d log π and dℓ/dH per token and
the logit gradient is exact:
(dℓ/d log π)·(e_a − π(·|s)) + (dℓ/dH)·∂H(s)/∂z.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from softmax_theory.attribution import attribution_parts, lemma1_weights, own_entropy_term
from softmax_theory.control import (
    ControlConfig,
    Controller,
    ControlState,
    check_control,
    directional_change,
    solve_coef,
    step_aims,
    step_end,
    target_path,
)
from softmax_theory.envs import TabularEnv, TokenTreeMDP
from softmax_theory.estimators import entropy, log_softmax
from softmax_theory.group_advantages import (
    W_REINFORCE_LAMBDA_DOMAIN,
    AdvantageEstimator,
    check_w_reinforce_lambda,
    compute_advantages,
)
from softmax_theory.inputs import Domain, SettingError, check_domains, check_lr
from softmax_theory.losses import (
    LossInputs,
    agg_weights,
    compute_policy_loss,
    select_by_scope,
)
from softmax_theory.policy import (
    COV_LOSSES,
    CovScope,
    PolicyLossConfig,
    adaptive_entropy_coef,
)
from softmax_theory.registry import parse_choice
from softmax_theory.stats import token_weighted_means


class Algo(str, enum.Enum):
    PG = "pg"
    NPG = "npg"
    REINFORCE = "reinforce"
    GRPO = "grpo"


@dataclass(frozen=True)
class AlgoConfig:
    """One algorithm's settings; the only home of their defaults and domains."""

    algo: Algo = field(default=Algo.GRPO, metadata={"help": "the update rule"})
    # a group of one has no baseline to compare against
    group_size: int = field(
        default=8, metadata={"help": "grpo: responses G per prompt", "domain": Domain(ge=2)}
    )
    samples: int = field(
        default=8, metadata={"help": "reinforce: samples N per prompt", "domain": Domain(ge=1)}
    )
    epochs: int = field(
        default=4,
        metadata={
            "help": "grpo: inner epochs K on each batch (KL-Cov needs K ≥ 2)",
            "domain": Domain(ge=1),
        },
    )
    advantage: AdvantageEstimator = field(
        default=AdvantageEstimator.GRPO, metadata={"help": "grpo: advantage estimator"}
    )
    w_reinforce_lambda: float | None = field(
        default=None,
        metadata={
            "help": "w_reinforce: λ, the weight of right responses (default 0.1; 0: NSR)",
            "domain": W_REINFORCE_LAMBDA_DOMAIN,
        },
    )
    micro_batches: int = field(
        default=1,
        metadata={
            "help": "grpo: micro-batches the responses are split into (clip_cov/kl_cov with "
            "cov_scope micro select in each)",
            "domain": Domain(ge=1),
        },
    )
    policy_loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    control: ControlConfig = field(default_factory=ControlConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "algo", parse_choice(Algo, self.algo, "algo"))
        object.__setattr__(
            self, "advantage", parse_choice(AdvantageEstimator, self.advantage, "advantage")
        )
        check_domains(self)
        check_w_reinforce_lambda(self.advantage, self.w_reinforce_lambda)
        check_control(self.control, self.policy_loss.entropy_coeff, self.policy_loss.entropy_target)


@dataclass(frozen=True)
class AlgoState:
    """What an algorithm carries between steps: the reference logits and the adaptive
    ``entropy_coeff``."""

    ref_logits: np.ndarray
    entropy_coeff: float
    control: ControlState | None = None  # an entropy controller's (``softmax_theory.control``)


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
    metrics: dict[str, float] = field(default_factory=dict)  # incl. the ΔH attribution


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


def expected_attribution(env: TabularEnv, logits: np.ndarray, delta: np.ndarray) -> dict:
    """The ΔH attribution of an expected update δ [S, A] (PG, NPG): one term per (s, a),
    c = −w(s)·g(s, a)·δ(s, a), classed by the exact A(s, a), π(a|s) and H(s)
    (``softmax_theory.attribution``); nothing is clipped."""
    z = np.asarray(logits, dtype=np.float64)
    contrib = -env.state_weights(z)[:, None] * lemma1_weights(z) * delta
    logp = log_softmax(z)
    h = np.broadcast_to(entropy(z)[:, None], z.shape)
    reachable = np.isfinite(logp)
    return attribution_parts(
        contrib[reachable],
        env.advantages(z)[reachable],
        logp[reachable],
        h[reachable],
        np.zeros(int(reachable.sum()), dtype=bool),  # an expected update clips nothing
    )


def pg_step(env, logits, state: AlgoState, cfg: AlgoConfig, lr, rng) -> StepResult:
    """z' = z + η·d_π(s)·π·A: exact expected policy gradient  (eq. 6)."""
    delta = lr * env.policy_gradient(logits)
    return StepResult(
        logits=logits + delta, state=state, metrics=expected_attribution(env, logits, delta)
    )


def npg_step(env, logits, state: AlgoState, cfg: AlgoConfig, lr, rng) -> StepResult:
    """z' = z + η·A: exact natural policy gradient  (eq. 7)."""
    delta = lr * env.advantages(logits)
    return StepResult(
        logits=logits + delta, state=state, metrics=expected_attribution(env, logits, delta)
    )


def token_lemma1_terms(
    env: TabularEnv,
    logits: np.ndarray,
    logits_now: np.ndarray,
    s_t: np.ndarray,
    a_t: np.ndarray,
    dlogit_coef: np.ndarray,
    dentropy_coef: np.ndarray | None = None,
) -> np.ndarray:
    """Each token's own part of one update's Lemma-1 prediction, [T]: the update adds, for
    token t, δ_t = c_t·(e_{a_t} − π_now(·|s_t)) + d_t·∂H(s_t)/∂z|_now to its state's logits;
    its part is −w(s_t)·Σ_a g(s_t, a)·δ_t(a), with w and g = π(log π + H) at the step's start
    ``logits`` (Lemma 1 is read there, as ``pred_lemma1``)."""
    g = lemma1_weights(logits)[s_t]  # (T, A)
    p_now = np.exp(log_softmax(logits_now))[s_t]  # (T, A)
    w = env.state_weights(logits)[s_t]
    g_y = g[np.arange(s_t.size), a_t]
    terms = dlogit_coef * (g_y - (g * p_now).sum(-1))
    if dentropy_coef is not None:
        # ∂H/∂z = −π(log π + H) at the current logits: the g of the current policy
        terms = terms - dentropy_coef * (g * lemma1_weights(logits_now)[s_t]).sum(-1)
    return -w * terms


def reinforce_step(env, logits, state: AlgoState, cfg: AlgoConfig, lr, rng) -> StepResult:
    """z' = z + η·(1/N)Σ_i w_i·r_i·Σ_t (e_{a_t} − π(·|s_t)): the score-function estimate of the
    PG step, unbiased for η·d_π·π·A (no baseline; its variance is what REINFORCE pays)."""
    batch = sample_batch(env, logits, cfg.samples, rng)
    p = np.exp(log_softmax(logits))
    coef = (batch.weight * batch.reward)[batch.response] / cfg.samples
    if not isinstance(env, TokenTreeMDP):
        coef = coef / logits.shape[0]  # J averages prompts: d(s) = w(s) = weight/S
    grad = _scatter_logit_grad(logits.shape, p, batch.state, batch.action, coef)
    logp = log_softmax(logits)[batch.state, batch.action]
    adv = batch.reward[batch.response]  # no baseline: the advantage is the reward
    contrib = token_lemma1_terms(env, logits, logits, batch.state, batch.action, lr * coef)
    return StepResult(
        logits=logits + lr * grad,
        state=state,
        tokens=batch,
        token_logp=logp,
        token_adv=adv,
        metrics=attribution_parts(
            contrib, adv, logp, entropy(logits)[batch.state], np.zeros(adv.size, dtype=bool)
        ),
    )


def _entropy_logit_grad(logp: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Σ_t coef_t·∂H(s_t)/∂z per state, given coef summed per state [S]: ∂H/∂z = −π·(log π + H)."""
    p = np.exp(logp)
    centred = logp - (p * logp).sum(axis=1, keepdims=True)  # log π + H
    return -coef[:, None] * p * centred


class StepControl:
    """One step of an entropy controller in the tabular world (``softmax_theory.control``):
    the bonus coefficient of each of the step's K updates.

    ``predictive``: the step aims at H*(t+1), less the last step's forecast error; update j of
    K aims at H(z_j) + (aim − H(z_j))/(K − j), and takes the c whose first-order forecast
    H(z_j) + ∇H(z_j)·Δz(c), Δz(c) = −η·(g + c·b), meets it (``solve_coef``; the forecast is
    linear in c here). The update is then exact; the forecast's error is the second-order
    term, O(η²). ``pi``: c = Kp·e + Ki·Σe for the whole step, e = H*(t) − H(z)."""

    def __init__(self, env, logits, state: ControlState | None, cfg: ControlConfig, updates: int):
        self.env, self.cfg, self.state, self.updates = env, cfg, state, updates
        self.on = state is not None
        self.coefs: list[float] = []
        self.pred_after: float | None = None
        if self.on:
            self.aims = step_aims(state, state.step, env.entropy(logits), cfg)

    def coef(self, z: np.ndarray, grad: np.ndarray, bonus: np.ndarray, lr: float) -> float:
        """The coefficient of the update from ``z`` with policy gradient ``grad`` and the
        bonus's gradient ``bonus`` (for c = 1)."""
        h_now = self.env.entropy(z)
        base = directional_change(self.env.entropy, z, -lr * grad)
        per_c = directional_change(self.env.entropy, z, -lr * bonus)
        aim = self.aims.aim
        if aim is None:
            c = 0.0
        elif self.cfg.entropy_control is Controller.PI:
            c = 0.0 if self.aims.pi is None else self.aims.pi
        else:
            left = self.updates - len(self.coefs)
            want = h_now + (aim - h_now) / left
            c = solve_coef(
                lambda x: h_now + base + x * per_c,
                want,
                self.cfg.control_coef_min,
                self.cfg.control_coef_max,
            )
        self.coefs.append(c)
        self.pred_after = h_now + base + c * per_c
        return c

    def mean_coef(self) -> float:
        return float(np.mean(self.coefs)) if self.coefs else 0.0

    def end(self) -> tuple[dict[str, float], ControlState | None]:
        """The step's ``control/*`` keys and the state carried to the next step."""
        if not self.on:
            return {}, None
        return step_end(self.state, self.aims, self.coefs, self.pred_after)


def grpo_step(env, logits, state: AlgoState, cfg: AlgoConfig, lr, rng) -> StepResult:
    """GRPO on the logits: sample G responses per prompt, compute advantages, and take K
    gradient steps of size η on the aggregated surrogate loss (plus controls).

    Clip-Cov/KL-Cov select their tokens at each epoch (``cov_scope`` micro: in each of
    ``micro_batches`` slices; mini: over the batch) or once per step at θ_old (global). The
    step's metrics carry the exact ΔH attribution (``softmax_theory.attribution``); its
    ``actor/*`` metrics are the token-weighted mean over all K updates (``token_weighted_means``),
    as the language-model trainer reports them, and ``actor/entropy_coeff`` is the entropy bonus
    coefficient in force this step."""
    lc = cfg.policy_loss
    batch = sample_batch(env, logits, cfg.group_size, rng)
    adv_resp = compute_advantages(cfg.advantage, batch.reward, batch.group, cfg.w_reinforce_lambda)
    adv = (adv_resp * batch.weight)[batch.response]  # [T]; prompt weights fold into A
    s_t, a_t = batch.state, batch.action
    shape = (batch.group.size, s_t.size // batch.group.size)  # (responses, tokens each)
    mask = np.ones(shape)
    weights = agg_weights(mask, lc.loss_agg_mode, loss_scale_factor=lc.loss_scale_factor)
    old_logp = log_softmax(logits)[s_t, a_t]
    ref_logp = log_softmax(state.ref_logits)[s_t, a_t] if lc.needs_reference else None
    # the token's own-update entropy term at θ_old: the oracle's score, and the yardstick of
    # every covariance selection (actor/cov_selected_value beside actor/cov_oracle_value)
    score = own_entropy_term(logits)[s_t, a_t] if lc.loss_mode in COV_LOSSES else None
    coeff_next, coeff_now = adaptive_entropy_coef(state.entropy_coeff, env.entropy(logits), lc)
    n_states = logits.shape[0]
    control = StepControl(env, logits, state.control, cfg.control, cfg.epochs)

    def loss_inputs(z_now: np.ndarray) -> LossInputs:
        return LossInputs(
            log_prob=log_softmax(z_now)[s_t, a_t].reshape(shape),
            old_log_prob=old_logp.reshape(shape),
            advantages=adv.reshape(shape),
            response_mask=mask,
            entropy=entropy(z_now)[s_t].reshape(shape),
            ref_log_prob=None if ref_logp is None else ref_logp.reshape(shape),
            score=None if score is None else score.reshape(shape),
            # the tabular sampler is the policy itself: no sampler–trainer mismatch
            sampler_log_prob=old_logp.reshape(shape),
        )

    selected = None
    if lc.cov_scope is CovScope.GLOBAL:
        selected = select_by_scope(loss_inputs(logits), lc, rng)
    z = logits.copy()
    updates: list[tuple[dict[str, float], float]] = []  # each update's metrics and tokens
    contrib = np.zeros(s_t.size)
    clipped_any = np.zeros(s_t.size, dtype=bool)
    for _ in range(cfg.epochs):
        logp_all = log_softmax(z)
        inp = loss_inputs(z)
        if lc.cov_scope is not CovScope.GLOBAL:
            selected = select_by_scope(inp, lc, rng, cfg.micro_batches)
        out = compute_policy_loss(
            inp,
            lc,
            entropy_coeff=0.0 if control.on else coeff_now,
            generator=rng,
            selected=selected,
        )
        # the gradient of Σ_t w_t·ℓ_t: through log π(a_t|s_t) and through H(s_t)
        dlogit = (out.dlogp * weights).reshape(-1)
        dent = None if out.dentropy is None else (out.dentropy * weights).reshape(-1)
        grad = _scatter_logit_grad(z.shape, np.exp(logp_all), s_t, a_t, dlogit)
        if control.on:  # the bonus −c·H with the c the controller picks for this update
            unit = -(mask * weights).reshape(-1)  # ∂(−H_t·w_t)/∂H_t per token, for c = 1
            bonus = _entropy_logit_grad(
                logp_all, np.bincount(s_t, weights=unit, minlength=n_states)
            )
            c = control.coef(z, grad, bonus, lr)
            grad = grad + c * bonus
            dent = c * unit if c > 0 else None
        elif dent is not None:
            grad += _entropy_logit_grad(
                logp_all, np.bincount(s_t, weights=dent, minlength=n_states)
            )
        contrib += token_lemma1_terms(
            env, logits, z, s_t, a_t, -lr * dlogit, None if dent is None else -lr * dent
        )
        if out.clipped is not None:
            clipped_any |= out.clipped.reshape(-1)
        z = z - lr * grad
        updates.append((out.metrics, float(mask.sum())))
    metrics = token_weighted_means(updates)
    metrics["actor/entropy_coeff"] = control.mean_coef() if control.on else coeff_now
    step_control_keys, control_state = control.end()
    metrics.update(step_control_keys)
    metrics.update(attribution_parts(contrib, adv, old_logp, entropy(logits)[s_t], clipped_any))
    return StepResult(
        logits=z,
        state=replace(state, entropy_coeff=coeff_next, control=control_state),
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


def initial_state(
    logits: np.ndarray, cfg: AlgoConfig, env: TabularEnv | None = None, steps: int | None = None
) -> AlgoState:
    """The state before the first update; an entropy controller (``cfg.control``) needs the
    environment and the run's length, for its path from the starting entropy."""
    control = None
    if cfg.control.on:
        if env is None or steps is None:
            raise ValueError("entropy_control: the controller's path needs env and steps")
        if cfg.algo is not Algo.GRPO:
            raise SettingError("entropy_control", "is available with algo grpo only")
        h0 = env.entropy(logits)
        control = ControlState(target_path(cfg.control, h0, steps, math.log(logits.shape[1])))
    return AlgoState(
        ref_logits=np.array(logits, copy=True),
        entropy_coeff=cfg.policy_loss.entropy_coeff,
        control=control,
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
