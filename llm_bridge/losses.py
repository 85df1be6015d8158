"""Policy losses for language-model RL, in torch: the twins of ``softmax_theory.losses``.

Pure functions over ``[B, T]`` tensors with a ``response_mask``, picked from a registry keyed by
``PolicyLoss`` (verl's layout: per-token losses apart from aggregation). A loss returns the
per-token loss matrix and its metrics (tensors, namespaced); ``agg_loss`` reduces. Definitions
follow verl 0.9.1's ``core_algos`` (checked against the real package in
``tests/llm/test_verl_parity.py``) and the paper's reference code; ``PolicyLossConfig``, shared
with ``softmax_theory``, holds every setting and default. The numpy twins carry the same names
and signatures and also return the exact derivatives; ``tests/llm/test_losses.py`` holds the
two equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import torch

from llm_bridge.token_stats import masked_mean, token_covariance
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

# verl clamps log π − log π_old to ±20 before exponentiating (and k3's log-ratio likewise, and
# its rollout correction the log of the importance weight).
LOG_RATIO_CLAMP = 20.0
# verl clamps the k3 estimate to ±10.
K3_CLAMP = 10.0
# verl (and the GSPO paper's code) clamps the log of GSPO's sequence ratio to ≤ 10.
SEQ_LOG_RATIO_MAX = 10.0

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

Metrics = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LossInputs:
    """What a policy loss reads; all [B, T] in the same dtype, log-probs of the sampled tokens."""

    log_prob: torch.Tensor  # log π_θ, with gradient
    old_log_prob: torch.Tensor  # log π_old at sampling time
    advantages: torch.Tensor
    response_mask: torch.Tensor  # 1 on valid response tokens
    entropy: torch.Tensor | None = None  # per-token H(π_θ(·|s)), with gradient where needed
    ref_log_prob: torch.Tensor | None = None  # log π_ref, for the KL-to-reference penalty
    # π(y)(log π(y) + H) − Cov_π(log π, π) at θ_old: the token's own-update entropy term,
    # read by the oracle selector and the selection metrics
    score: torch.Tensor | None = None
    # log π_sampler: what the sampler (vLLM, or the trainer itself) gave the sampled tokens, for
    # the truncated importance weight (``rollout_is``); only valid tokens are read
    sampler_log_prob: torch.Tensor | None = None

    def __post_init__(self) -> None:
        ref = self.log_prob
        if ref.ndim != 2:
            raise ValueError(f"log_prob: expected [B, T], got {tuple(ref.shape)}")
        for name in TENSOR_FIELDS[1:]:
            x = getattr(self, name)
            if x is not None and x.shape != ref.shape:
                raise ValueError(f"{name}: shape {tuple(x.shape)} must equal {tuple(ref.shape)}")
        for name in ("log_prob", "old_log_prob", "advantages"):
            if not torch.isfinite(getattr(self, name).detach()).all():
                raise ValueError(f"{name}: contains NaN or infinite values")
        if self.sampler_log_prob is not None:
            valid = self.response_mask.bool()
            if not torch.isfinite(self.sampler_log_prob.detach()[valid]).all():
                raise ValueError(
                    "sampler_log_prob: contains NaN or infinite values on valid tokens"
                )


@dataclass(frozen=True)
class PolicyLossOutput:
    per_token_loss: torch.Tensor  # [B, T]; padding positions are 0
    metrics: Metrics = field(default_factory=dict)
    # [B, T] bool: the tokens whose ratio left the trust region on the side the loss restrains
    # (their gradient cut or bounded), for the ΔH attribution; None for a loss without a clip
    clipped: torch.Tensor | None = None
    # [B, T] bool: the tokens whose weight π_old/π_sampler reached the cap (``rollout_is``), for
    # the ΔH attribution; None without the correction
    is_capped: torch.Tensor | None = None


def log_ratio(inp: LossInputs) -> torch.Tensor:
    """log r = clamp(log π − log π_old, ±20) (verl's clamp)."""
    return torch.clamp(inp.log_prob - inp.old_log_prob, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def _frac(x: torch.Tensor, inp: LossInputs) -> torch.Tensor:
    """The share of valid tokens where the bool ``x`` holds, in the loss's dtype."""
    return masked_mean(x.to(inp.log_prob.dtype), inp.response_mask).detach()


def _clip_metrics(inp: LossInputs, lr: torch.Tensor, clipped: torch.Tensor) -> Metrics:
    """The clip fraction, split by the sign of A (clip-high acts on A > 0, clip-low on A < 0),
    and ppo_kl = mean of log π_old − log π, over the valid tokens."""
    adv = inp.advantages
    return {
        "actor/pg_clipfrac": _frac(clipped, inp),
        "actor/pg_clipfrac_pos": _frac(clipped & (adv > 0), inp),
        "actor/pg_clipfrac_neg": _frac(clipped & (adv < 0), inp),
        "actor/ppo_kl": masked_mean(-lr, inp.response_mask).detach(),
    }


def ppo_clip(
    inp: LossInputs,
    low: float | torch.Tensor,
    high: float | torch.Tensor,
    dual_c: float | None,
) -> tuple[torch.Tensor, Metrics, torch.Tensor]:
    """ℓ = max(−A·r, −A·clip(r, 1 − low, 1 + high)); with dual-clip c, tokens with A < 0 take
    min(ℓ, −A·c). Schulman et al. 2017 (PPO); Ye et al. 2020 (dual-clip, arXiv 1912.09729).

    ``low``/``high`` may be per-token tensors. The operations and their order are verl's, so
    the results agree to the last bit. Returns ℓ, the metrics and the clipped tokens.
    """
    adv = inp.advantages
    lr = log_ratio(inp)
    ratio = torch.exp(lr)
    loss1 = -adv * ratio
    loss2 = -adv * torch.clamp(ratio, 1 - low, 1 + high)
    loss = torch.maximum(loss1, loss2)
    clipped = torch.gt(loss2, loss1).detach()
    metrics = _clip_metrics(inp, lr, clipped)
    if dual_c is not None:
        loss3 = -adv * dual_c
        dual = (torch.gt(loss, loss3) & (adv < 0)).detach()
        loss = torch.where(adv < 0, torch.min(loss3, loss), loss)
        metrics["actor/pg_clipfrac_lower"] = _frac(dual, inp)
        clipped = clipped | dual
    return loss, metrics, clipped


def vanilla_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """PPO clip with ε_low = ``clip_ratio_low``, ε_high = ``clip_ratio_high`` and dual-clip c =
    ``clip_ratio_c`` (verl's ``vanilla``)."""
    loss, metrics, clipped = ppo_clip(
        inp, cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_c
    )
    return PolicyLossOutput(loss, metrics, clipped)


def clip_higher_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """Vanilla with the larger default ε_high = 0.28 (DAPO, Yu et al. 2025)."""
    return vanilla_loss(inp, cfg, generator, selected)


def select_clip_cov(
    inp: LossInputs, cfg: PolicyLossConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Clip-Cov's tokens: max(1, int(N_valid·ratio)) drawn uniformly among the valid, unclipped
    tokens with lb < cov < ub (fewer if fewer qualify). Returns a bool [B, T] mask."""
    mask = inp.response_mask.bool()
    adv = inp.advantages.detach()
    ratio = torch.exp(log_ratio(inp).detach())
    clipped = -adv * torch.clamp(ratio, 1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high) > (
        -adv * ratio
    )
    cov = token_covariance(inp.log_prob, adv, inp.response_mask)
    eligible = mask & ~clipped & (cov > cfg.clip_cov_lb) & (cov < cfg.clip_cov_ub)
    idx = eligible.reshape(-1).nonzero().squeeze(-1)
    k = min(n_selected(int(mask.sum()), cfg.clip_cov_ratio), idx.numel())
    perm = torch.randperm(idx.numel(), generator=generator, device="cpu")[:k]
    selected = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    selected[idx[perm.to(idx.device)]] = True
    return selected.reshape(mask.shape)


def _top_k_valid(values: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k valid positions with the largest ``values`` (k ≤ number valid)."""
    valid = mask.bool().reshape(-1).nonzero().squeeze(-1)
    top = valid[torch.topk(values.detach().reshape(-1)[valid], k).indices]
    out = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    out[top] = True
    return out.reshape(mask.shape)


def select_kl_cov(
    inp: LossInputs, cfg: PolicyLossConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """KL-Cov's tokens: the max(1, int(N_valid·ratio)) valid tokens of largest cov (bool [B, T])."""
    cov = token_covariance(inp.log_prob, inp.advantages, inp.response_mask)
    k = n_selected(int(inp.response_mask.bool().sum()), cfg.kl_cov_ratio)
    return _top_k_valid(cov, inp.response_mask, k)


def select_oracle(
    inp: LossInputs, cfg: PolicyLossConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The oracle's tokens: as many as the covariance rule picks (``n_selected`` with the loss's
    ratio), those whose own update lowers entropy most, i.e. the largest A·score. Clip-Cov's
    oracle also skips tokens already clipped. Returns a bool [B, T] mask."""
    if inp.score is None:
        raise ValueError("score: the oracle selector needs each token's own entropy term")
    valid = inp.response_mask.bool()
    mask = valid
    adv = inp.advantages.detach()
    value = adv * inp.score
    ratio = cfg.kl_cov_ratio if cfg.loss_mode is PolicyLoss.KL_COV else cfg.clip_cov_ratio
    if cfg.loss_mode is PolicyLoss.CLIP_COV:
        r = torch.exp(log_ratio(inp).detach())
        lo, hi = 1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high
        mask = mask & ~(-adv * torch.clamp(r, lo, hi) > -adv * r)
    k = min(n_selected(int(valid.sum()), ratio), int(mask.sum()))
    return _top_k_valid(value, mask, k)


def select_cov_tokens(
    inp: LossInputs, cfg: PolicyLossConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The tokens Clip-Cov or KL-Cov restrains, by ``cfg.cov_selector``: the paper's covariance
    rule for the loss, or the oracle (bool [B, T])."""
    if cfg.cov_selector is CovSelector.ORACLE:
        return select_oracle(inp, cfg, generator)
    return COV_SELECTORS[cfg.loss_mode](inp, cfg, generator)


def select_by_scope(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    generator: torch.Generator | None = None,
    micro_batches: int = 1,
) -> torch.Tensor | None:
    """Clip-Cov/KL-Cov tokens for the responses of ``inp`` by ``cfg.cov_scope``: ``micro``
    selects in each of ``micro_batches`` slices of the responses (the paper's code and verl:
    each slice picks at least one token), ``mini`` and ``global`` over all of ``inp``; None for
    a loss that selects nothing. Our trainer calls it for ``mini`` (the optimiser mini-batch at
    its current parameters) and ``global`` (the step's batch at θ_old); under ``micro`` each
    micro-batch's loss selects its own inside ``compute_policy_loss``. The numpy twin
    ``softmax_theory.losses.select_by_scope`` has the same signature."""
    if cfg.loss_mode not in COV_SELECTORS:
        return None
    if cfg.cov_scope is not CovScope.MICRO or micro_batches == 1:
        return select_cov_tokens(inp, cfg, generator)
    parts = []
    for rows in torch.tensor_split(torch.arange(inp.log_prob.shape[0]), micro_batches):
        sub = LossInputs(
            **{
                f.name: None if (v := getattr(inp, f.name)) is None else v[rows]
                for f in fields(inp)
            }
        )
        parts.append(select_cov_tokens(sub, cfg, generator))
    return torch.cat(parts)


def _selection_metrics(inp: LossInputs, selected: torch.Tensor) -> Metrics:
    """The selected share and, where each token's own entropy term is known, the mean A·score
    of the selected tokens beside the oracle's (the most a selection of that size can hold)."""
    metrics = {"actor/cov_selected_frac": _frac(selected, inp)}
    n = int(selected.sum())
    if inp.score is not None and n:
        value = (inp.advantages * inp.score).detach()
        best = _top_k_valid(value, inp.response_mask, n)
        metrics["actor/cov_selected_value"] = value[selected].mean()
        metrics["actor/cov_oracle_value"] = value[best].mean()
    return metrics


def clip_cov_loss(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """Clip-Cov (Cui et al. 2025, §4): PPO clip (range ``clip_ratio_low/high``, no dual-clip, as
    verl); the selected tokens' losses are multiplied by 0 (no gradient; they stay in the
    token-mean denominator). ``selected``: a mask chosen over a larger scope (``cov_scope``)."""
    loss, metrics, clipped = ppo_clip(inp, cfg.clip_ratio_low, cfg.clip_ratio_high, None)
    if selected is None:
        selected = select_cov_tokens(inp, cfg, generator)
    loss = loss * (~selected).to(loss.dtype)
    metrics.update(_selection_metrics(inp, selected))
    return PolicyLossOutput(loss, metrics, clipped)


def kl_cov_loss(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """KL-Cov (Cui et al. 2025, §4): ℓ = −A·r (no clip); the selected top-cov tokens add
    ``ppo_kl_coef``·|log π − log π_old| (zero, with zero gradient, on the on-policy pass)."""
    lr = log_ratio(inp)
    ratio = torch.exp(lr)
    abs_kl = (inp.log_prob - inp.old_log_prob).abs()
    if selected is None:
        selected = select_cov_tokens(inp, cfg, generator)
    loss = -inp.advantages * ratio + cfg.ppo_kl_coef * abs_kl * selected.to(ratio.dtype)
    mask = inp.response_mask
    metrics = {
        "actor/ppo_kl": masked_mean(-lr, mask).detach(),
        "actor/ppo_kl_abs": masked_mean(abs_kl, mask).detach(),
        **_selection_metrics(inp, selected),
    }
    return PolicyLossOutput(loss, metrics)


def gppo_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """GPPO / CE-GPPO: PPO clip whose clipped tokens keep a bounded gradient.

    ℓ = −A·w·r/sg(r), w = β₂(1 + ε_high) where A > 0 and r > 1 + ε_high, β₁(1 − ε_low) where
    A < 0 and r < 1 − ε_low, and sg(r) elsewhere (plain −A·r). A clipped token's gradient is
    β(1 ± ε)·A·∇log π, bounded, never zero. β₁ = β₂ = 1 is Klear-Reasoner's GPPO
    (arXiv 2508.07629); CE-GPPO (arXiv 2509.20712) tunes β₁ (low side) and β₂ (high side).
    """
    adv = inp.advantages
    lr = log_ratio(inp)
    ratio = torch.exp(lr)
    high = (adv > 0) & (ratio > 1 + cfg.clip_ratio_high)
    low = (adv < 0) & (ratio < 1 - cfg.clip_ratio_low)
    w = torch.where(
        high,
        cfg.gppo_beta_high * (1 + cfg.clip_ratio_high),
        torch.where(low, cfg.gppo_beta_low * (1 - cfg.clip_ratio_low), ratio),
    ).detach()
    loss = -adv * w * torch.exp(lr - lr.detach())  # value −A·w; gradient −A·w·∇log r
    clipped = (high | low).detach()
    return PolicyLossOutput(loss, _clip_metrics(inp, lr, clipped), clipped)


def cispo_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """CISPO (MiniMax-M1, arXiv 2506.13585): ℓ = −sg(clip(r, 1 − ε_low, 1 + ε_high))·A·log π.

    The importance weight is truncated and carries no gradient, so every token keeps its
    REINFORCE gradient −w·A·∇log π; none is dropped by the clip. verl 0.9.1's ``cispo``; a
    token counts as clipped where its weight was truncated.
    """
    lr = log_ratio(inp)
    ratio = torch.exp(lr)
    w = torch.clamp(ratio, 1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high)
    clipped = torch.ne(ratio, w).detach()
    loss = -w.detach() * inp.advantages * inp.log_prob
    return PolicyLossOutput(loss, _clip_metrics(inp, lr, clipped), clipped)


def sequence_log_ratio(inp: LossInputs) -> torch.Tensor:
    """log s_i = (1/|y_i|)·Σ_t (log π − log π_old) over the response's valid tokens: GSPO's
    length-normalised sequence ratio, in log; [B] (an empty response counts length 1)."""
    m = inp.response_mask.to(inp.log_prob.dtype)
    return ((inp.log_prob - inp.old_log_prob) * m).sum(-1) / m.sum(-1).clamp(min=1)


def gspo_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071), token form: every token of response i takes
    the sequence ratio s_{i,t} = sg(s_i)·π/sg(π), log clamped to ≤ 10, in a PPO clip:

    ℓ = max(−A·s, −A·clip(s, 1 − ε_low, 1 + ε_high)).

    verl 0.9.1's ``gspo``; the whole response is clipped together, at ratios near 1 (the
    paper's ε are 3e-4 and 4e-4).
    """
    adv = inp.advantages
    seq = sequence_log_ratio(inp).detach().unsqueeze(-1)
    log_s = torch.clamp(inp.log_prob - inp.log_prob.detach() + seq, max=SEQ_LOG_RATIO_MAX)
    s = torch.exp(log_s)
    loss1 = -adv * s
    loss2 = -adv * torch.clamp(s, 1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high)
    loss = torch.maximum(loss1, loss2)
    clipped = torch.gt(loss2, loss1).detach()
    metrics = _clip_metrics(inp, inp.log_prob - inp.old_log_prob, clipped)
    return PolicyLossOutput(loss, metrics, clipped)


def high_entropy_tokens(entropy: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """The valid tokens whose entropy lies above their own response's ``quantile`` of entropies
    (linear interpolation, as ``torch.quantile``): Archer's reasoning tokens; bool [B, T]."""
    valid = mask.bool()
    h = entropy.detach()
    out = torch.zeros_like(valid)
    for i in range(valid.shape[0]):
        if valid[i].any():
            q = torch.quantile(h[i][valid[i]].double(), quantile)
            out[i] = valid[i] & (h[i].double() > q)
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
    dtype = inp.log_prob.dtype
    wide = torch.tensor(cfg.archer_clip_ratio, dtype=dtype)
    low_eps = torch.where(high, wide, torch.tensor(cfg.clip_ratio_low, dtype=dtype))
    high_eps = torch.where(high, wide, torch.tensor(cfg.clip_ratio_high, dtype=dtype))
    loss, metrics, clipped = ppo_clip(inp, low_eps, high_eps, None)
    kl = kl_penalty(inp.log_prob, inp.ref_log_prob, KLEstimator.K3)
    knowledge = (~high).to(dtype) * cfg.archer_kl_coef
    metrics["actor/archer_high_frac"] = _frac(high, inp)
    metrics["actor/archer_kl"] = masked_mean(kl.detach(), inp.response_mask.bool() & ~high)
    return PolicyLossOutput(loss + knowledge * kl, metrics, clipped)


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

# The selection rule of each covariance loss, for cov_scope = mini (the trainer selects over the
# mini-batch and passes the mask to each micro-batch).
COV_SELECTORS: dict[PolicyLoss, Callable[..., torch.Tensor]] = {
    PolicyLoss.CLIP_COV: select_clip_cov,
    PolicyLoss.KL_COV: select_kl_cov,
}


def get_policy_loss(name: str | PolicyLoss) -> Callable[..., PolicyLossOutput]:
    return POLICY_LOSSES[parse_choice(PolicyLoss, name, "loss_mode")]


def kl_penalty(
    log_prob: torch.Tensor, ref_log_prob: torch.Tensor, estimator: str | KLEstimator
) -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from the sampled tokens' log-probs (Schulman 2020).

    k1 = log π − log π_ref (unbiased, can be negative);
    k3 = e^{d} − d − 1, d = clamp(log π_ref − log π, ±20), clamped to ≤ 10 (verl's low_var_kl).
    """
    est = parse_choice(KLEstimator, estimator, "kl_loss_type")
    if est is KLEstimator.K1:
        return log_prob - ref_log_prob
    d = torch.clamp(ref_log_prob - log_prob, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.clamp(torch.expm1(d) - d, max=K3_CLAMP)


def top_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """The valid tokens whose entropy is in the batch's top ``ratio`` (the 80/20 rule; Wang et al.
    2025, arXiv 2506.01939): ⌈ρ·N⌉ tokens (``n_top``); bool."""
    return _top_k_valid(entropy, mask, n_top(int(mask.bool().sum()), ratio))


def entropy_shaped_advantage(
    advantages: torch.Tensor, entropy: torch.Tensor, alpha: float, kappa: float
) -> torch.Tensor:
    """A′ = A + min(α·sg(H), |A|/κ): an entropy bonus on the advantage, capped so it never
    flips A's sign (κ > 1). Cheng et al. 2025, "Reasoning with Exploration: An Entropy
    Perspective" (arXiv 2506.14758). Tokens with A = 0 get nothing."""
    return advantages + torch.minimum(alpha * entropy.detach(), advantages.abs() / kappa)


def token_is_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log w_t = log ρ_t: one weight per token (verl's ``rollout_is`` token)."""
    return log_ratio


def sequence_is_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log w_i = Σ_t log ρ_t over the response's valid tokens, on each of its tokens: the
    sequence's likelihood ratio (verl's ``rollout_is`` sequence)."""
    return (log_ratio * mask).sum(-1, keepdim=True).expand_as(log_ratio)


# How each level of the correction forms the log of its weight from the per-token log ρ.
IS_LOG_RATIOS: dict[RolloutIS, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    RolloutIS.TOKEN: token_is_log_ratio,
    RolloutIS.SEQUENCE: sequence_is_log_ratio,
}


def truncated_is_weights(
    old_log_prob: torch.Tensor,
    sampler_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    level: str | RolloutIS,
    cap: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance sampling of the sampler–trainer mismatch ("Your Efficient RL
    Framework Secretly Brings You Off-Policy RL Training", 2025):

    w = min(exp(clamp(log ρ, ±20)), C),  log ρ_t = log π_old(y_t|s_t) − log π_sampler(y_t|s_t),

    per token, or with the response's Σ_t log ρ_t on each of its tokens (``level``). π_old is
    the trainer's policy at sampling time, as verl's rollout correction and TRL's
    ``vllm_importance_sampling_correction`` both take it (never the current π_θ, so w is fixed
    over a step's updates); w is detached. The ±20 clamp is verl's; verl 0.9.1's
    ``compute_rollout_correction_weights`` gives the same w (``tests/llm/test_verl_parity.py``).

    Args:
      old_log_prob, sampler_log_prob, response_mask: [B, T]; the sampler's log-probs are read
        on valid tokens only.
      level: ``token`` or ``sequence``.
      cap: C.
    Returns:
      w [B, T] in ``old_log_prob``'s dtype (0 on padding) and the tokens whose weight was
      capped (ρ > C), bool [B, T].
    """
    level = parse_choice(RolloutIS, level, "rollout_is")
    valid = response_mask.bool()
    m = valid.to(old_log_prob.dtype)
    diff = old_log_prob.detach() - sampler_log_prob.detach().to(old_log_prob.dtype)
    log_rho = torch.where(valid, diff, torch.zeros_like(diff))
    log_w = torch.clamp(IS_LOG_RATIOS[level](log_rho, m), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    raw = torch.exp(log_w)
    return torch.clamp(raw, max=cap) * m, (raw > cap) & valid


def compute_policy_loss(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    entropy_coeff: float | None = None,
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """The configured policy loss plus the composable controls, per token:

    ℓ_t = w_t·ℓ^policy_t(A′)·[top-ρ entropy mask]  −  entropy_coeff·H_t  +  β·KL_t(π‖π_ref)

    with A′ the entropy-shaped advantage when ``entropy_adv_alpha`` > 0 (else A), and w_t the
    truncated importance weight when ``rollout_is`` is set (else 1; ``truncated_is_weights``).
    As in verl and TRL, w weighs the policy loss only, not the entropy bonus or the KL penalty.

    Args:
      inp: the batch's tensors.
      cfg: the loss and the controls.
      entropy_coeff: the bonus coefficient in force this step (adaptive entropy control passes
        its current value); ``cfg.entropy_coeff`` when omitted.
      generator: randomness of Clip-Cov's draw.
      selected: Clip-Cov/KL-Cov tokens chosen over a larger scope (``cov_scope`` mini, global).
    """
    bonus = None
    if cfg.entropy_adv_alpha > 0:
        if inp.entropy is None:
            raise ValueError("entropy: the entropy-shaped advantage needs the per-token entropy")
        shaped = entropy_shaped_advantage(
            inp.advantages, inp.entropy, cfg.entropy_adv_alpha, cfg.entropy_adv_kappa
        )
        bonus = masked_mean(shaped - inp.advantages, inp.response_mask).detach()
        inp = replace(inp, advantages=shaped * inp.response_mask.to(shaped.dtype))
    out = get_policy_loss(cfg.loss_mode)(inp, cfg, generator=generator, selected=selected)
    loss, metrics = out.per_token_loss, dict(out.metrics)
    if bonus is not None:
        metrics["actor/entropy_adv_bonus"] = bonus
    if cfg.top_entropy_ratio is not None:
        if inp.entropy is None:
            raise ValueError("entropy: top_entropy_ratio needs the per-token entropy")
        keep = top_entropy_mask(inp.entropy, inp.response_mask, cfg.top_entropy_ratio)
        loss = loss * keep.to(loss.dtype)
        metrics["actor/top_entropy_frac"] = _frac(keep, inp)
    is_capped = None
    if cfg.rollout_is is not None:
        if inp.sampler_log_prob is None:
            raise ValueError("sampler_log_prob: rollout_is needs the sampler's log-probs")
        w, is_capped = truncated_is_weights(
            inp.old_log_prob,
            inp.sampler_log_prob,
            inp.response_mask,
            cfg.rollout_is,
            cfg.rollout_is_threshold,
        )
        loss = loss * w
        metrics["actor/is_weight_mean"] = masked_mean(w, inp.response_mask)
        metrics["actor/is_clip_frac"] = _frac(is_capped, inp)
    entropy_coeff = cfg.entropy_coeff if entropy_coeff is None else entropy_coeff
    if entropy_coeff > 0:
        if inp.entropy is None:
            raise ValueError("entropy: an entropy bonus needs the per-token entropy")
        loss = loss - entropy_coeff * inp.entropy
    if inp.entropy is not None:
        metrics["actor/entropy"] = masked_mean(inp.entropy.detach(), inp.response_mask)
    if cfg.kl_loss_coef > 0:
        if inp.ref_log_prob is None:
            raise ValueError("ref_log_prob: kl_loss_coef > 0 needs the reference log-probs")
        kl = kl_penalty(inp.log_prob, inp.ref_log_prob, cfg.kl_loss_type)
        loss = loss + cfg.kl_loss_coef * kl
        metrics["actor/kl_loss"] = masked_mean(kl.detach(), inp.response_mask)
    loss = loss * inp.response_mask.to(loss.dtype)
    clipped = None if out.clipped is None else out.clipped & inp.response_mask.bool()
    return PolicyLossOutput(loss, metrics, clipped, is_capped)


def kl_cov_split(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    entropy_coeff: float | None = None,
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
) -> tuple[PolicyLossOutput, torch.Tensor]:
    """KL-Cov's loss split in its coefficient k: ℓ(k) = ℓ(0) + k·ℓ_KL, where ℓ_KL is the
    selected tokens' |log π − log π_old| after every weight and mask ``compute_policy_loss``
    applies to the policy loss (Cui et al. 2025, §4). Returns (``compute_policy_loss`` at k = 0,
    ℓ_KL [B, T]), both on one selection of tokens; an entropy controller on KL-Cov's
    coefficient forecasts with ℓ_KL's gradient apart."""
    if cfg.loss_mode is not PolicyLoss.KL_COV:
        raise ValueError(f"loss_mode: kl_cov_split needs kl_cov, got {cfg.loss_mode.value}")
    if selected is None:
        selected = select_cov_tokens(inp, cfg, generator)
    at = {k: replace(cfg, ppo_kl_coef=k) for k in (0.0, 1.0)}
    zero = compute_policy_loss(inp, at[0.0], entropy_coeff, generator, selected)
    one = compute_policy_loss(inp, at[1.0], entropy_coeff, generator, selected)
    return zero, one.per_token_loss - zero.per_token_loss


def agg_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str | AggMode,
    dp_size: int = 1,
    batch_num_tokens: float | torch.Tensor | None = None,
    global_batch_size: float | torch.Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> torch.Tensor:
    """Reduce a [B, T] loss to a scalar (verl 0.9.1's ``agg_loss``, same arguments).

    - token-mean: Σ ℓ·m / N, N = ``batch_num_tokens`` (default: the valid tokens here);
    - token-sum: Σ ℓ·m;
    - seq-mean-token-sum: Σ_i (Σ_t ℓ·m) / S, S = ``global_batch_size`` (default: the non-empty
      responses here);
    - seq-mean-token-mean: Σ_i (Σ_t ℓ·m / n_i) / S;
    - seq-mean-token-sum-norm: seq-mean-token-sum / H, H = ``loss_scale_factor`` (default: T,
      the padded length; verl ≥ 0.7.1 and Dr. GRPO);
    - token-sum-norm: Σ ℓ·m / H (the paper's code and verl ≤ 0.7.0: larger than the previous by
      the number of responses).
    Each is multiplied by ``dp_size``, so that averaging gradients over data-parallel ranks
    gives the reduction over the global batch. Responses without a valid token are left out of S.
    """
    mode = parse_choice(AggMode, mode, "loss_agg_mode")
    if per_token_loss.shape != mask.shape or per_token_loss.ndim != 2:
        raise ValueError(
            f"mask: per_token_loss {tuple(per_token_loss.shape)} and mask {tuple(mask.shape)} "
            "must both be [B, T]"
        )
    m = mask.to(per_token_loss.dtype)
    if mode is AggMode.TOKEN_MEAN:
        n = m.sum() if batch_num_tokens is None else batch_num_tokens
        if float(n) == 0:
            raise ValueError("mask: no valid token")
        return (per_token_loss * m).sum() / n * dp_size
    if mode is AggMode.TOKEN_SUM:
        return (per_token_loss * m).sum() * dp_size
    horizon = m.shape[-1] if loss_scale_factor is None else loss_scale_factor
    if mode is AggMode.TOKEN_SUM_NORM:
        return (per_token_loss * m).sum() / horizon * dp_size
    length = m.sum(-1)
    seq = (per_token_loss * m).sum(-1)
    if mode is AggMode.SEQ_MEAN_TOKEN_MEAN:
        seq = seq / length.clamp_min(1)
    has_tokens = (length > 0).to(seq.dtype)
    n_seq = has_tokens.sum() if global_batch_size is None else global_batch_size
    if float(n_seq) == 0:
        raise ValueError("mask: no valid token")
    loss = (seq * has_tokens).sum() / n_seq * dp_size
    if mode is AggMode.SEQ_MEAN_TOKEN_SUM_NORM:
        loss = loss / horizon
    return loss


__all__ = [
    "COV_SELECTORS",
    "IS_LOG_RATIOS",
    "LOG_RATIO_CLAMP",
    "LossInputs",
    "POLICY_LOSSES",
    "PolicyLossOutput",
    "TENSOR_FIELDS",
    "agg_loss",
    "archer_loss",
    "cispo_loss",
    "clip_cov_loss",
    "clip_higher_loss",
    "compute_policy_loss",
    "entropy_shaped_advantage",
    "get_policy_loss",
    "gppo_loss",
    "gspo_loss",
    "high_entropy_tokens",
    "kl_cov_loss",
    "kl_cov_split",
    "kl_penalty",
    "log_ratio",
    "ppo_clip",
    "select_by_scope",
    "select_clip_cov",
    "select_cov_tokens",
    "select_kl_cov",
    "select_oracle",
    "sequence_is_log_ratio",
    "sequence_log_ratio",
    "token_is_log_ratio",
    "top_entropy_mask",
    "truncated_is_weights",
    "vanilla_loss",
]
