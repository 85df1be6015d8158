"""Policy losses over sampled tokens, in numpy, with their exact derivatives: the twins of
``llm_bridge.losses``.

Same names and signatures as the torch module (a registry ``POLICY_LOSSES`` keyed by
``PolicyLoss``; ``compute_policy_loss`` adds the controls; ``agg_loss`` reduces), so one parity
test holds the two equal. Every token loss here is a function of the token's log-probability
(and, for the entropy bonus, of the state's entropy), so a loss also returns dℓ_t/d log π_t and
dℓ_t/dH_t; the tabular step turns them into exact logit gradients. Shapes: [B, T] (responses ×
tokens) with a ``response_mask``; the tabular world uses B responses of equal length T.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from softmax_theory.policy import (
    AggMode,
    CovScope,
    CovSelector,
    KLEstimator,
    PolicyLoss,
    PolicyLossConfig,
    RolloutIS,
    n_selected,
    n_top,
)
from softmax_theory.registry import parse_choice
from softmax_theory.token_stats import masked_mean, token_covariance

# verl clamps log π − log π_old to ±20 before exponentiating (and k3's log-ratio likewise, and
# its rollout correction the log of the importance weight).
LOG_RATIO_CLAMP = 20.0
# verl clamps the k3 estimate to ±10.
K3_CLAMP = 10.0
# verl (and the GSPO paper's code) clamps the log of GSPO's sequence ratio to ≤ 10.
SEQ_LOG_RATIO_MAX = 10.0

Metrics = dict[str, float]


# LossInputs' [B, T] fields, in order.
TENSOR_FIELDS = (
    "log_prob",
    "old_log_prob",
    "advantages",
    "response_mask",
    "entropy",
    "ref_log_prob",
    "score",
    "sampler_log_prob",
)


@dataclass(frozen=True)
class LossInputs:
    """What a policy loss reads; all [B, T], log-probs of the sampled tokens."""

    log_prob: np.ndarray  # log π_θ
    old_log_prob: np.ndarray  # log π_old at sampling time
    advantages: np.ndarray
    response_mask: np.ndarray  # 1 on valid response tokens
    entropy: np.ndarray | None = None  # per-token H(π_θ(·|s)), for the bonus and top-ρ
    ref_log_prob: np.ndarray | None = None  # log π_ref, for the KL-to-reference penalty
    # π(y)(log π(y) + H) − Cov_π(log π, π) at θ_old: the token's own-update entropy term
    # (``own_entropy_term``), read by the oracle selector
    score: np.ndarray | None = None
    # log π_sampler: what the sampler gave the sampled tokens, for the truncated importance
    # weight (``rollout_is``); only valid tokens are read
    sampler_log_prob: np.ndarray | None = None

    def __post_init__(self) -> None:
        ref = np.asarray(self.log_prob)
        if ref.ndim != 2:
            raise ValueError(f"log_prob: expected [B, T], got {ref.shape}")
        for name in TENSOR_FIELDS[1:]:
            x = getattr(self, name)
            if x is not None and np.shape(x) != ref.shape:
                raise ValueError(f"{name}: shape {np.shape(x)} must equal {ref.shape}")
        for name in ("log_prob", "old_log_prob", "advantages"):
            if not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"{name}: contains NaN or infinite values")
        if self.sampler_log_prob is not None:
            valid = np.asarray(self.response_mask).astype(bool)
            if not np.isfinite(np.asarray(self.sampler_log_prob)[valid]).all():
                raise ValueError(
                    "sampler_log_prob: contains NaN or infinite values on valid tokens"
                )


@dataclass(frozen=True)
class PolicyLossOutput:
    """Per-token loss (0 on padding), metrics, the clipped tokens and those whose importance
    weight was capped: the torch twin's fields, in its order. Then what only numpy has,
    keyword-only: the exact derivatives of the loss (torch gets them from autograd)."""

    per_token_loss: np.ndarray  # [B, T]
    metrics: Metrics = field(default_factory=dict)
    # [B, T] bool: the tokens whose ratio left the trust region on the side the loss restrains
    # (their gradient cut or bounded), for the ΔH attribution; None for a loss without a clip
    clipped: np.ndarray | None = None
    # [B, T] bool: the tokens whose weight π_old/π_sampler reached the cap (``rollout_is``), for
    # the ΔH attribution; None without the correction
    is_capped: np.ndarray | None = None
    dlogp: np.ndarray = field(kw_only=True)  # [B, T] dℓ_t/d log π_t
    dentropy: np.ndarray | None = field(default=None, kw_only=True)  # [B, T] dℓ_t/dH_t


def log_ratio(inp: LossInputs) -> np.ndarray:
    """log r = clamp(log π − log π_old, ±20) (verl's clamp); its derivative is 0 where clamped."""
    return np.clip(inp.log_prob - inp.old_log_prob, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def _ratio_grad(inp: LossInputs, ratio: np.ndarray) -> np.ndarray:
    """dr/d log π: r inside the clamp, 0 outside."""
    d = inp.log_prob - inp.old_log_prob
    return np.where(np.abs(d) < LOG_RATIO_CLAMP, ratio, 0.0)


def _valid(inp: LossInputs) -> np.ndarray:
    return np.asarray(inp.response_mask).astype(bool)


def _clip_metrics(inp: LossInputs, lr: np.ndarray, clipped: np.ndarray) -> Metrics:
    """The clip fraction, split by the sign of A (clip-high acts on A > 0, clip-low on A < 0),
    and ppo_kl = mean of log π_old − log π, over the valid tokens."""
    mask = _valid(inp)
    adv = inp.advantages
    return {
        "actor/pg_clipfrac": float(masked_mean(clipped, mask)),
        "actor/pg_clipfrac_pos": float(masked_mean(clipped & (adv > 0), mask)),
        "actor/pg_clipfrac_neg": float(masked_mean(clipped & (adv < 0), mask)),
        "actor/ppo_kl": float(masked_mean(-lr, mask)),
    }


def ppo_clip(
    inp: LossInputs,
    low: float | np.ndarray,
    high: float | np.ndarray,
    dual_c: float | None,
) -> tuple[np.ndarray, np.ndarray, Metrics, np.ndarray]:
    """ℓ = max(−A·r, −A·clip(r, 1 − low, 1 + high)); with dual-clip c, tokens with A < 0 take
    min(ℓ, −A·c). Schulman et al. 2017 (PPO); Ye et al. 2020 (dual-clip, arXiv 1912.09729).

    ``low``/``high`` may be per-token arrays. Returns ℓ, dℓ/d log π, the metrics (clip fraction
    and its split by the sign of A, dual-clip fraction, ppo_kl) and the clipped tokens.
    """
    adv = inp.advantages
    lr = log_ratio(inp)
    ratio = np.exp(lr)
    loss1 = -adv * ratio
    loss2 = -adv * np.clip(ratio, 1 - low, 1 + high)
    clipped = loss2 > loss1  # the clipped branch is active: no gradient
    loss = np.maximum(loss1, loss2)
    grad = np.where(clipped, 0.0, -adv * _ratio_grad(inp, ratio))
    metrics = _clip_metrics(inp, lr, clipped)
    if dual_c is not None:
        loss3 = -adv * dual_c
        dual = (adv < 0) & (loss > loss3)  # capped at c·|A|: no gradient
        loss = np.where(adv < 0, np.minimum(loss3, loss), loss)
        grad = np.where(dual, 0.0, grad)
        metrics["actor/pg_clipfrac_lower"] = float(masked_mean(dual, _valid(inp)))
        clipped = clipped | dual
    return loss, grad, metrics, clipped


def vanilla_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """PPO clip with ε_low = ``clip_ratio_low``, ε_high = ``clip_ratio_high`` and dual-clip c =
    ``clip_ratio_c`` (verl's ``vanilla``)."""
    loss, grad, metrics, clipped = ppo_clip(
        inp, cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_c
    )
    return PolicyLossOutput(loss, metrics, clipped, dlogp=grad)


def clip_higher_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """Vanilla with the larger default ε_high = 0.28 (DAPO, Yu et al. 2025)."""
    return vanilla_loss(inp, cfg, generator, selected)


def select_clip_cov(
    inp: LossInputs, cfg: PolicyLossConfig, generator: np.random.Generator | None = None
) -> np.ndarray:
    """Clip-Cov's tokens: max(1, int(N_valid·ratio)) drawn uniformly among the valid, unclipped
    tokens with lb < cov < ub (fewer if fewer qualify). Returns a bool [B, T] mask."""
    mask = _valid(inp)
    ratio = np.exp(log_ratio(inp))
    adv = inp.advantages
    clipped = -adv * np.clip(ratio, 1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high) > -adv * ratio
    cov = token_covariance(inp.log_prob, adv, mask)
    eligible = np.flatnonzero(mask & ~clipped & (cov > cfg.clip_cov_lb) & (cov < cfg.clip_cov_ub))
    k = min(n_selected(int(mask.sum()), cfg.clip_cov_ratio), eligible.size)
    rng = np.random.default_rng(0) if generator is None else generator
    chosen = rng.choice(eligible, size=k, replace=False) if k else eligible
    out = np.zeros(mask.size, dtype=bool)
    out[chosen] = True
    return out.reshape(mask.shape)


def _top_k_valid(values: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the k valid positions with the largest ``values``."""
    valid = np.flatnonzero(np.asarray(mask).astype(bool))
    top = valid[np.argsort(-np.asarray(values).reshape(-1)[valid], kind="stable")[:k]]
    out = np.zeros(np.size(mask), dtype=bool)
    out[top] = True
    return out.reshape(np.shape(mask))


def select_kl_cov(
    inp: LossInputs, cfg: PolicyLossConfig, generator: np.random.Generator | None = None
) -> np.ndarray:
    """KL-Cov's tokens: the max(1, int(N_valid·ratio)) valid tokens of largest cov (bool [B, T])."""
    mask = _valid(inp)
    cov = token_covariance(inp.log_prob, inp.advantages, mask)
    return _top_k_valid(cov, mask, n_selected(int(mask.sum()), cfg.kl_cov_ratio))


def select_oracle(
    inp: LossInputs, cfg: PolicyLossConfig, generator: np.random.Generator | None = None
) -> np.ndarray:
    """The oracle's tokens: as many as the covariance rule picks (``n_selected`` with the loss's
    ratio), those whose own update lowers entropy most, i.e. the largest A·score (``score``:
    the token's own-update entropy term, ``own_entropy_term``). Clip-Cov's oracle also skips
    tokens already clipped. Returns a bool [B, T] mask."""
    if inp.score is None:
        raise ValueError("score: the oracle selector needs each token's own entropy term")
    mask = _valid(inp)
    value = inp.advantages * inp.score
    ratio = cfg.kl_cov_ratio if cfg.loss_mode is PolicyLoss.KL_COV else cfg.clip_cov_ratio
    if cfg.loss_mode is PolicyLoss.CLIP_COV:
        r = np.exp(log_ratio(inp))
        adv = inp.advantages
        clipped = -adv * np.clip(r, 1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high) > -adv * r
        mask = mask & ~clipped
    k = min(n_selected(int(_valid(inp).sum()), ratio), int(mask.sum()))
    return _top_k_valid(value, mask, k)


def select_cov_tokens(
    inp: LossInputs, cfg: PolicyLossConfig, generator: np.random.Generator | None = None
) -> np.ndarray:
    """The tokens Clip-Cov or KL-Cov restrains, by ``cfg.cov_selector``: the paper's covariance
    rule for the loss, or the oracle (bool [B, T])."""
    if cfg.cov_selector is CovSelector.ORACLE:
        return select_oracle(inp, cfg, generator)
    return COV_SELECTORS[cfg.loss_mode](inp, cfg, generator)


def select_by_scope(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    generator: np.random.Generator | None = None,
    micro_batches: int = 1,
) -> np.ndarray | None:
    """Clip-Cov/KL-Cov tokens for the responses of ``inp`` by ``cfg.cov_scope``: ``micro``
    selects in each of ``micro_batches`` slices of the responses (the paper's code and verl:
    each slice picks at least one token), ``mini`` and ``global`` over all of ``inp``; None for
    a loss that selects nothing. The torch twin has the same signature; our trainer calls it for
    ``mini`` and ``global`` only, since there each micro-batch's loss selects its own."""
    if cfg.loss_mode not in COV_SELECTORS:
        return None
    if cfg.cov_scope is not CovScope.MICRO or micro_batches == 1:
        return select_cov_tokens(inp, cfg, generator)
    parts = []
    for rows in np.array_split(np.arange(inp.log_prob.shape[0]), micro_batches):
        sub = LossInputs(**{k: None if v is None else v[rows] for k, v in vars(inp).items()})
        parts.append(select_cov_tokens(sub, cfg, generator))
    return np.concatenate(parts)


def _selection_metrics(inp: LossInputs, selected: np.ndarray) -> Metrics:
    """The selected share and, where each token's own entropy term is known, the mean A·score
    of the selected tokens beside the oracle's (the most a selection of that size can hold)."""
    mask = _valid(inp)
    metrics = {"actor/cov_selected_frac": float(masked_mean(selected, mask))}
    if inp.score is not None and selected.any():
        value = inp.advantages * inp.score
        best = _top_k_valid(value, mask, int(selected.sum()))
        metrics["actor/cov_selected_value"] = float(value[selected].mean())
        metrics["actor/cov_oracle_value"] = float(value[best].mean())
    return metrics


def clip_cov_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """Clip-Cov (Cui et al. 2025, §4): PPO clip (range ``clip_ratio_low/high``, no dual-clip, as
    verl); the selected tokens' losses are multiplied by 0 (no gradient; they stay in the
    token-mean denominator). ``selected``: a mask chosen over a larger scope."""
    loss, grad, metrics, clipped = ppo_clip(inp, cfg.clip_ratio_low, cfg.clip_ratio_high, None)
    if selected is None:
        selected = select_cov_tokens(inp, cfg, generator)
    keep = (~selected).astype(np.float64)
    metrics.update(_selection_metrics(inp, selected))
    return PolicyLossOutput(loss * keep, metrics, clipped, dlogp=grad * keep)


def kl_cov_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """KL-Cov (Cui et al. 2025, §4): ℓ = −A·r (no clip); the selected top-cov tokens add
    ``ppo_kl_coef``·|log π − log π_old| (zero, with zero gradient, on the on-policy pass)."""
    lr = log_ratio(inp)
    ratio = np.exp(lr)
    diff = inp.log_prob - inp.old_log_prob
    if selected is None:
        selected = select_cov_tokens(inp, cfg, generator)
    sel = selected.astype(np.float64)
    loss = -inp.advantages * ratio + cfg.ppo_kl_coef * np.abs(diff) * sel
    grad = -inp.advantages * _ratio_grad(inp, ratio) + cfg.ppo_kl_coef * np.sign(diff) * sel
    mask = _valid(inp)
    metrics = {
        "actor/ppo_kl": float(masked_mean(-lr, mask)),
        "actor/ppo_kl_abs": float(masked_mean(np.abs(diff), mask)),
        **_selection_metrics(inp, selected),
    }
    return PolicyLossOutput(loss, metrics, dlogp=grad)


def gppo_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """GPPO / CE-GPPO: PPO clip whose clipped tokens keep a bounded gradient.

    ℓ = −A·w·r/sg(r), w = β₂(1 + ε_high) where A > 0 and r > 1 + ε_high, β₁(1 − ε_low) where
    A < 0 and r < 1 − ε_low, and sg(r) elsewhere (plain −A·r). So dℓ/d log π = −A·w: a clipped
    token's gradient is β(1 ± ε)·A·∇log π, bounded, never zero. β₁ = β₂ = 1 is Klear-Reasoner's
    GPPO (arXiv 2508.07629); CE-GPPO (arXiv 2509.20712) tunes β₁ (low side) and β₂ (high side)
    to move entropy.
    """
    adv = inp.advantages
    lr = log_ratio(inp)
    ratio = np.exp(lr)
    high = (adv > 0) & (ratio > 1 + cfg.clip_ratio_high)
    low = (adv < 0) & (ratio < 1 - cfg.clip_ratio_low)
    w = np.where(
        high,
        cfg.gppo_beta_high * (1 + cfg.clip_ratio_high),
        np.where(low, cfg.gppo_beta_low * (1 - cfg.clip_ratio_low), ratio),
    )
    inside = _ratio_grad(inp, ratio) / ratio  # 1 inside the ±20 clamp, 0 outside
    clipped = high | low
    return PolicyLossOutput(
        -adv * w, _clip_metrics(inp, lr, clipped), clipped, dlogp=-adv * w * inside
    )


def cispo_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """CISPO (MiniMax-M1, arXiv 2506.13585): ℓ = −sg(clip(r, 1 − ε_low, 1 + ε_high))·A·log π.

    The importance weight is truncated and carries no gradient, so every token keeps its
    REINFORCE gradient −w·A·∇log π (dℓ/d log π = −w·A); none is dropped by the clip. verl 0.9.1's
    ``cispo``; a token counts as clipped where its weight was truncated.
    """
    adv = inp.advantages
    lr = log_ratio(inp)
    ratio = np.exp(lr)
    w = np.clip(ratio, 1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high)
    clipped = ratio != w
    return PolicyLossOutput(
        -w * adv * inp.log_prob, _clip_metrics(inp, lr, clipped), clipped, dlogp=-w * adv
    )


def sequence_log_ratio(inp: LossInputs) -> np.ndarray:
    """log s_i = (1/|y_i|)·Σ_t (log π − log π_old) over the response's valid tokens: GSPO's
    length-normalised sequence ratio, in log; [B] (an empty response counts length 1)."""
    m = np.asarray(inp.response_mask, dtype=np.float64)
    diff = (inp.log_prob - inp.old_log_prob) * m
    return diff.sum(-1) / np.maximum(m.sum(-1), 1)


def gspo_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071), token form: every token of response i takes
    the sequence ratio s_{i,t} = sg(s_i)·π/sg(π), log clamped to ≤ 10, in a PPO clip:

    ℓ = max(−A·s, −A·clip(s, 1 − ε_low, 1 + ε_high)),  dℓ/d log π = −A·s where unclipped.

    verl 0.9.1's ``gspo``; the whole response is clipped together, at ratios near 1 (the
    paper's ε are 3e-4 and 4e-4).
    """
    adv = inp.advantages
    seq = sequence_log_ratio(inp)[:, None] + np.zeros_like(adv)  # [B, T]
    log_s = np.minimum(seq, SEQ_LOG_RATIO_MAX)
    s = np.exp(log_s)
    loss1 = -adv * s
    loss2 = -adv * np.clip(s, 1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high)
    clipped = loss2 > loss1
    loss = np.maximum(loss1, loss2)
    grad = np.where(clipped | (seq > SEQ_LOG_RATIO_MAX), 0.0, -adv * s)
    metrics = _clip_metrics(inp, inp.log_prob - inp.old_log_prob, clipped)
    return PolicyLossOutput(loss, metrics, clipped, dlogp=grad)


def high_entropy_tokens(entropy: np.ndarray, mask: np.ndarray, quantile: float) -> np.ndarray:
    """The valid tokens whose entropy lies above their own response's ``quantile`` of entropies
    (linear interpolation, as ``numpy.quantile``): Archer's reasoning tokens; bool [B, T]."""
    valid = np.asarray(mask).astype(bool)
    out = np.zeros_like(valid)
    for i in range(valid.shape[0]):
        if valid[i].any():
            q = np.quantile(entropy[i][valid[i]], quantile)
            out[i] = valid[i] & (entropy[i] > q)
    return out


def archer_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """Archer (Wang et al. 2025, arXiv 2507.15778): dual-token constraints by entropy.

    Tokens above their response's ``archer_quantile`` of entropy (reasoning tokens) take a PPO
    clip of range ±``archer_clip_ratio`` and no KL; the others (knowledge tokens) the usual clip
    (``clip_ratio_low``/``high``) plus ``archer_kl_coef``·k3 KL to the reference policy:

    ℓ = max(−A·r, −A·clip(r, 1 − ε_t, 1 + ε_t)) + [low-entropy]·β·KL_k3(π‖π_ref).

    The split reads sg(H) under the current policy.
    """
    if inp.entropy is None or inp.ref_log_prob is None:
        raise ValueError("entropy: archer needs the per-token entropy and the reference log-probs")
    high = high_entropy_tokens(inp.entropy, inp.response_mask, cfg.archer_quantile)
    low_eps = np.where(high, cfg.archer_clip_ratio, cfg.clip_ratio_low)
    high_eps = np.where(high, cfg.archer_clip_ratio, cfg.clip_ratio_high)
    loss, grad, metrics, clipped = ppo_clip(inp, low_eps, high_eps, None)
    kl, dkl = _kl_penalty_and_grad(inp.log_prob, inp.ref_log_prob, KLEstimator.K3)
    knowledge = (~high).astype(np.float64) * cfg.archer_kl_coef
    metrics["actor/archer_high_frac"] = float(masked_mean(high, _valid(inp)))
    metrics["actor/archer_kl"] = float(masked_mean(kl, _valid(inp) & ~high))
    return PolicyLossOutput(loss + knowledge * kl, metrics, clipped, dlogp=grad + knowledge * dkl)


POLICY_LOSSES: dict[PolicyLoss, Callable[..., PolicyLossOutput]] = {
    PolicyLoss.VANILLA: vanilla_loss,
    PolicyLoss.CLIP_HIGHER: clip_higher_loss,
    PolicyLoss.CLIP_COV: clip_cov_loss,
    PolicyLoss.KL_COV: kl_cov_loss,
    PolicyLoss.GPPO: gppo_loss,
    PolicyLoss.CISPO: cispo_loss,
    PolicyLoss.GSPO: gspo_loss,
    PolicyLoss.ARCHER: archer_loss,
}

# The selection rule of each covariance loss, for selection over a larger scope.
COV_SELECTORS: dict[PolicyLoss, Callable[..., np.ndarray]] = {
    PolicyLoss.CLIP_COV: select_clip_cov,
    PolicyLoss.KL_COV: select_kl_cov,
}


def get_policy_loss(name: str | PolicyLoss) -> Callable[..., PolicyLossOutput]:
    return POLICY_LOSSES[parse_choice(PolicyLoss, name, "loss_mode")]


def kl_penalty(
    log_prob: np.ndarray, ref_log_prob: np.ndarray, estimator: str | KLEstimator
) -> np.ndarray:
    """Per-token estimate of KL(π‖π_ref) from the sampled tokens' log-probs (Schulman 2020).

    k1 = log π − log π_ref (unbiased, can be negative);
    k3 = e^{d} − d − 1, d = clamp(log π_ref − log π, ±20), clamped to ≤ 10 (verl's low_var_kl).
    """
    return _kl_penalty_and_grad(log_prob, ref_log_prob, estimator)[0]


def _kl_penalty_and_grad(log_prob, ref_log_prob, estimator) -> tuple[np.ndarray, np.ndarray]:
    est = parse_choice(KLEstimator, estimator, "kl_loss_type")
    if est is KLEstimator.K1:
        return log_prob - ref_log_prob, np.ones_like(log_prob)
    raw = ref_log_prob - log_prob
    d = np.clip(raw, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    k3 = np.expm1(d) - d
    inside = (np.abs(raw) < LOG_RATIO_CLAMP) & (k3 < K3_CLAMP)
    return np.minimum(k3, K3_CLAMP), np.where(inside, -np.expm1(d), 0.0)


def top_entropy_mask(entropy: np.ndarray, mask: np.ndarray, ratio: float) -> np.ndarray:
    """The valid tokens whose entropy is in the batch's top ``ratio`` (the 80/20 rule; Wang et al.
    2025, arXiv 2506.01939): ⌈ρ·N⌉ tokens (``n_top``); bool."""
    return _top_k_valid(entropy, mask, n_top(int(np.asarray(mask).astype(bool).sum()), ratio))


def entropy_shaped_advantage(
    advantages: np.ndarray, entropy: np.ndarray, alpha: float, kappa: float
) -> np.ndarray:
    """A′ = A + min(α·sg(H), |A|/κ): an entropy bonus on the advantage, capped so it never
    flips A's sign (κ > 1). Cheng et al. 2025, "Reasoning with Exploration: An Entropy
    Perspective" (arXiv 2506.14758). Tokens with A = 0 get nothing."""
    return advantages + np.minimum(alpha * entropy, np.abs(advantages) / kappa)


def token_is_log_ratio(log_ratio: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """log w_t = log ρ_t: one weight per token (verl's ``rollout_is`` token)."""
    return log_ratio


def sequence_is_log_ratio(log_ratio: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """log w_i = Σ_t log ρ_t over the response's valid tokens, on each of its tokens: the
    sequence's likelihood ratio (verl's ``rollout_is`` sequence)."""
    return np.broadcast_to((log_ratio * mask).sum(-1, keepdims=True), log_ratio.shape)


# How each level of the correction forms the log of its weight from the per-token log ρ.
IS_LOG_RATIOS: dict[RolloutIS, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    RolloutIS.TOKEN: token_is_log_ratio,
    RolloutIS.SEQUENCE: sequence_is_log_ratio,
}


def truncated_is_weights(
    old_log_prob: np.ndarray,
    sampler_log_prob: np.ndarray,
    response_mask: np.ndarray,
    level: str | RolloutIS,
    cap: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Truncated importance sampling of the sampler–trainer mismatch ("Your Efficient RL
    Framework Secretly Brings You Off-Policy RL Training", 2025):

    w = min(exp(clamp(log ρ, ±20)), C),  log ρ_t = log π_old(y_t|s_t) − log π_sampler(y_t|s_t),

    per token, or with the response's Σ_t log ρ_t on each of its tokens (``level``). π_old is
    the trainer's policy at sampling time, as verl's rollout correction and TRL's
    ``vllm_importance_sampling_correction`` both take it (never the current π_θ, so w is fixed
    over a step's updates and carries no gradient). The ±20 clamp is verl's.

    Args:
      old_log_prob, sampler_log_prob, response_mask: [B, T]; the sampler's log-probs are read
        on valid tokens only.
      level: ``token`` or ``sequence``.
      cap: C.
    Returns:
      w [B, T] (0 on padding) and the tokens whose weight was capped (ρ > C), bool [B, T].
    """
    level = parse_choice(RolloutIS, level, "rollout_is")
    valid = np.asarray(response_mask).astype(bool)
    m = valid.astype(np.float64)
    log_rho = np.where(valid, np.asarray(old_log_prob) - np.asarray(sampler_log_prob), 0.0)
    log_w = np.clip(IS_LOG_RATIOS[level](log_rho, m), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    raw = np.exp(log_w)
    return np.minimum(raw, cap) * m, (raw > cap) & valid


def compute_policy_loss(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    entropy_coeff: float | None = None,
    generator: np.random.Generator | None = None,
    selected: np.ndarray | None = None,
) -> PolicyLossOutput:
    """The configured policy loss plus the composable controls, per token:

    ℓ_t = w_t·ℓ^policy_t(A′)·[top-ρ entropy mask]  −  entropy_coeff·H_t  +  β·KL_t(π‖π_ref)

    with A′ the entropy-shaped advantage when ``entropy_adv_alpha`` > 0 (else A), and w_t the
    truncated importance weight when ``rollout_is`` is set (else 1; ``truncated_is_weights``).
    As in verl and TRL, w weighs the policy loss only, not the entropy bonus or the KL penalty.

    Args:
      inp: the batch.
      cfg: the loss and the controls.
      entropy_coeff: the bonus coefficient in force (adaptive control passes its current
        value); ``cfg.entropy_coeff`` when omitted.
      generator: randomness of Clip-Cov's draw.
      selected: Clip-Cov/KL-Cov tokens chosen over a larger scope.
    """
    mask = np.asarray(inp.response_mask, dtype=np.float64)
    bonus = None
    if cfg.entropy_adv_alpha > 0:
        if inp.entropy is None:
            raise ValueError("entropy: the entropy-shaped advantage needs the per-token entropy")
        shaped = entropy_shaped_advantage(
            inp.advantages, inp.entropy, cfg.entropy_adv_alpha, cfg.entropy_adv_kappa
        )
        bonus = float(masked_mean(shaped - inp.advantages, mask))
        inp = replace(inp, advantages=shaped * mask)
    out = get_policy_loss(cfg.loss_mode)(inp, cfg, generator=generator, selected=selected)
    loss, grad, metrics = out.per_token_loss, out.dlogp, dict(out.metrics)
    if bonus is not None:
        metrics["actor/entropy_adv_bonus"] = bonus
    if cfg.top_entropy_ratio is not None:
        if inp.entropy is None:
            raise ValueError("entropy: top_entropy_ratio needs the per-token entropy")
        keep = top_entropy_mask(inp.entropy, mask, cfg.top_entropy_ratio).astype(np.float64)
        loss, grad = loss * keep, grad * keep
        metrics["actor/top_entropy_frac"] = float(masked_mean(keep, mask))
    is_capped = None
    if cfg.rollout_is is not None:
        if inp.sampler_log_prob is None:
            raise ValueError("sampler_log_prob: rollout_is needs the sampler's log-probs")
        w, is_capped = truncated_is_weights(
            inp.old_log_prob, inp.sampler_log_prob, mask, cfg.rollout_is, cfg.rollout_is_threshold
        )
        loss, grad = loss * w, grad * w  # w is fixed (no gradient): dℓ/d log π scales by w
        metrics["actor/is_weight_mean"] = float(masked_mean(w, mask))
        metrics["actor/is_clip_frac"] = float(masked_mean(is_capped, mask))
    entropy_coeff = cfg.entropy_coeff if entropy_coeff is None else entropy_coeff
    dentropy = None
    if entropy_coeff > 0:
        if inp.entropy is None:
            raise ValueError("entropy: an entropy bonus needs the per-token entropy")
        loss = loss - entropy_coeff * inp.entropy
        dentropy = -entropy_coeff * mask
    if inp.entropy is not None:
        metrics["actor/entropy"] = float(masked_mean(inp.entropy, mask))
    if cfg.kl_loss_coef > 0:
        if inp.ref_log_prob is None:
            raise ValueError("ref_log_prob: kl_loss_coef > 0 needs the reference log-probs")
        kl, dkl = _kl_penalty_and_grad(inp.log_prob, inp.ref_log_prob, cfg.kl_loss_type)
        loss, grad = loss + cfg.kl_loss_coef * kl, grad + cfg.kl_loss_coef * dkl
        metrics["actor/kl_loss"] = float(masked_mean(kl, mask))
    clipped = None if out.clipped is None else out.clipped & mask.astype(bool)
    return PolicyLossOutput(
        loss * mask, metrics, clipped, is_capped, dlogp=grad * mask, dentropy=dentropy
    )


def agg_loss(
    per_token_loss: np.ndarray,
    mask: np.ndarray,
    mode: str | AggMode,
    dp_size: int = 1,
    batch_num_tokens: float | None = None,
    global_batch_size: float | None = None,
    loss_scale_factor: float | None = None,
) -> float:
    """Reduce a [B, T] loss to a scalar: Σ_t w_t·ℓ_t with the weights of ``agg_weights``."""
    weights = agg_weights(
        mask, mode, dp_size, batch_num_tokens, global_batch_size, loss_scale_factor
    )
    return float((weights * per_token_loss).sum())


def agg_weights(
    mask: np.ndarray,
    mode: str | AggMode,
    dp_size: int = 1,
    batch_num_tokens: float | None = None,
    global_batch_size: float | None = None,
    loss_scale_factor: float | None = None,
) -> np.ndarray:
    """Per-token weights w [B, T] with agg_loss = Σ w·ℓ: every mode is linear in ℓ.

    - token-mean: m / N (N = ``batch_num_tokens``, default the valid tokens here);
    - token-sum: m;
    - seq-mean-token-sum: m / S (S = ``global_batch_size``, default the non-empty responses);
    - seq-mean-token-mean: m / (S·n_i), n_i the response's valid tokens;
    - seq-mean-token-sum-norm: m / (S·H) (H = ``loss_scale_factor``, default T; verl ≥ 0.7.1);
    - token-sum-norm: m / H (the paper's code and verl ≤ 0.7.0).
    Each is multiplied by ``dp_size``, as verl does so that averaging gradients over data-parallel
    ranks gives the global reduction.
    """
    mode = parse_choice(AggMode, mode, "loss_agg_mode")
    m = np.asarray(mask, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"mask: expected [B, T], got {m.shape}")
    horizon = m.shape[-1] if loss_scale_factor is None else loss_scale_factor
    n_i = m.sum(-1, keepdims=True)
    n_seq = float((n_i > 0).sum()) if global_batch_size is None else global_batch_size
    if mode is AggMode.TOKEN_MEAN:
        w = m / (m.sum() if batch_num_tokens is None else batch_num_tokens)
    elif mode is AggMode.TOKEN_SUM:
        w = m
    elif mode is AggMode.TOKEN_SUM_NORM:
        w = m / horizon
    elif mode is AggMode.SEQ_MEAN_TOKEN_MEAN:
        w = m / np.maximum(n_i, 1) / n_seq
    else:
        w = m / n_seq
        if mode is AggMode.SEQ_MEAN_TOKEN_SUM_NORM:
            w = w / horizon
    return w * dp_size
