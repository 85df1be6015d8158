"""Policy losses for language-model RL: PPO clip, clip-higher, Clip-Cov, KL-Cov, and the controls.

Pure functions over ``[B, T]`` tensors with a ``response_mask``, picked from a registry keyed by
``PolicyLoss``. A loss returns the per-token loss matrix and its metrics (tensors, namespaced);
aggregation is its own step (``agg_loss``). Definitions and defaults follow the design note's
parity section, which matches the paper's reference code; ``PolicyLossConfig`` (shared with
``softmax_theory``) is the only home of the defaults.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llm_bridge.token_stats import masked_mean, token_covariance
from softmax_theory.algorithms import (
    CovScope,
    KLEstimator,
    PolicyLoss,
    PolicyLossConfig,
    n_selected,
)
from softmax_theory.registry import parse_choice

Metrics = dict[str, torch.Tensor]


class AggMode(str, enum.Enum):
    TOKEN_MEAN = "token-mean"
    SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"
    SEQ_MEAN_TOKEN_SUM = "seq-mean-token-sum"
    SEQ_MEAN_TOKEN_SUM_NORM = "seq-mean-token-sum-norm"


def agg_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, mode: str | AggMode) -> torch.Tensor:
    """Reduce a [B, T] loss to a scalar.

    - token-mean: Σ ℓ·m / Σ m (every valid token weighs the same; the paper's setting).
    - seq-mean-token-mean: mean over responses of each response's token mean.
    - seq-mean-token-sum: mean over responses of each response's token sum.
    - seq-mean-token-sum-norm: Σ ℓ·m / T, T the padded length (a constant divisor, Dr. GRPO).
    Responses without a valid token are left out of the seq-mean modes.
    """
    mode = parse_choice(AggMode, mode, "mode")
    if per_token_loss.shape != mask.shape or per_token_loss.ndim != 2:
        raise ValueError(
            f"mask: per_token_loss {tuple(per_token_loss.shape)} and mask {tuple(mask.shape)} "
            "must both be [B, T]"
        )
    m = mask.to(per_token_loss.dtype)
    if mode is AggMode.TOKEN_MEAN:
        return masked_mean(per_token_loss, m)
    if mode is AggMode.SEQ_MEAN_TOKEN_SUM_NORM:
        return (per_token_loss * m).sum() / per_token_loss.shape[-1]
    has_tokens = m.sum(-1) > 0
    if not has_tokens.any():
        raise ValueError("mask: no valid token")
    seq = (per_token_loss * m).sum(-1)
    if mode is AggMode.SEQ_MEAN_TOKEN_MEAN:
        seq = seq / m.sum(-1).clamp_min(1)
    return seq[has_tokens].mean()


@dataclass(frozen=True)
class LossInputs:
    """What a policy loss reads; all [B, T] in the same dtype, log-probs of the sampled tokens."""

    log_prob: torch.Tensor  # log π_θ, with gradient
    old_log_prob: torch.Tensor  # log π_old at sampling time
    advantages: torch.Tensor
    response_mask: torch.Tensor  # 1 on valid response tokens
    entropy: torch.Tensor | None = None  # per-token H(π_θ(·|s)), with gradient, for the bonus
    ref_log_prob: torch.Tensor | None = None  # log π_ref, for the KL-to-reference penalty

    def __post_init__(self) -> None:
        ref = self.log_prob
        if ref.ndim != 2:
            raise ValueError(f"log_prob: expected [B, T], got {tuple(ref.shape)}")
        for name in ("old_log_prob", "advantages", "response_mask", "entropy", "ref_log_prob"):
            x = getattr(self, name)
            if x is not None and x.shape != ref.shape:
                raise ValueError(f"{name}: shape {tuple(x.shape)} must equal {tuple(ref.shape)}")
        for name in ("log_prob", "old_log_prob", "advantages"):
            if not torch.isfinite(getattr(self, name).detach()).all():
                raise ValueError(f"{name}: contains NaN or infinite values")


@dataclass(frozen=True)
class PolicyLossOutput:
    per_token_loss: torch.Tensor  # [B, T]; padding positions are 0
    metrics: Metrics = field(default_factory=dict)


def _ratio(inp: LossInputs) -> torch.Tensor:
    return torch.exp(inp.log_prob - inp.old_log_prob)


def _ppo_clip(inp: LossInputs, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ℓ = max(−A·r, −A·clip(r, 1 − low, 1 + high)); returns ℓ and the clipped-branch mask."""
    ratio = _ratio(inp)
    unclipped = -inp.advantages * ratio
    clipped = -inp.advantages * torch.clamp(ratio, 1 - low, 1 + high)
    is_clipped = (clipped > unclipped) & inp.response_mask.bool()
    return torch.maximum(unclipped, clipped), is_clipped


def _ppo_metrics(inp: LossInputs, is_clipped: torch.Tensor) -> Metrics:
    mask = inp.response_mask
    return {
        "actor/pg_clipfrac": masked_mean(is_clipped.to(inp.log_prob.dtype), mask).detach(),
        "actor/ppo_kl": masked_mean(inp.old_log_prob - inp.log_prob, mask).detach(),
    }


def vanilla_loss(inp: LossInputs, cfg: PolicyLossConfig, **_: object) -> PolicyLossOutput:
    """PPO clip with ε_low = ``clip_ratio_low``, ε_high = ``clip_ratio_high``."""
    loss, clipped = _ppo_clip(inp, cfg.clip_ratio_low, cfg.clip_ratio_high)
    return PolicyLossOutput(loss, _ppo_metrics(inp, clipped))


def clip_higher_loss(inp: LossInputs, cfg: PolicyLossConfig, **_: object) -> PolicyLossOutput:
    """PPO clip with a larger upper bound, ε_high = ``clip_higher_high`` (DAPO)."""
    loss, clipped = _ppo_clip(inp, cfg.clip_ratio_low, cfg.clip_higher_high)
    return PolicyLossOutput(loss, _ppo_metrics(inp, clipped))


def select_clip_cov(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Clip-Cov's tokens: max(1, int(N_valid·ratio)) drawn uniformly among the valid, unclipped
    tokens with lb < cov < ub (fewer if fewer qualify). Returns a bool [B, T] mask."""
    _, clipped = _ppo_clip(inp, cfg.clip_cov_clip_ratio, cfg.clip_cov_clip_ratio)
    mask = inp.response_mask.bool()
    cov = token_covariance(inp.log_prob, inp.advantages, inp.response_mask)
    eligible = mask & ~clipped & (cov > cfg.clip_cov_lb) & (cov < cfg.clip_cov_ub)
    idx = eligible.reshape(-1).nonzero().squeeze(-1)
    k = min(n_selected(int(mask.sum()), cfg.clip_cov_ratio), idx.numel())
    perm = torch.randperm(idx.numel(), generator=generator, device="cpu")[:k]
    selected = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    selected[idx[perm.to(idx.device)]] = True
    return selected.reshape(mask.shape)


def select_kl_cov(inp: LossInputs, cfg: PolicyLossConfig) -> torch.Tensor:
    """KL-Cov's tokens: the max(1, int(N_valid·ratio)) valid tokens of largest cov (bool [B, T])."""
    cov = token_covariance(inp.log_prob, inp.advantages, inp.response_mask)
    k = n_selected(int(inp.response_mask.bool().sum()), cfg.kl_cov_ratio)
    return _top_k_valid(cov, inp.response_mask, k)


def _top_k_valid(values: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k valid positions with the largest ``values`` (k ≤ number valid)."""
    valid = mask.bool().reshape(-1).nonzero().squeeze(-1)
    top = valid[torch.topk(values.detach().reshape(-1)[valid], k).indices]
    out = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    out[top] = True
    return out.reshape(mask.shape)


def clip_cov_loss(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """Clip-Cov (Cui et al. 2025, §4): PPO clip with range ``clip_cov_clip_ratio``; the selected
    tokens' losses are multiplied by 0 (no gradient; they stay in the token-mean denominator).

    ``selected``: a mask chosen over a larger scope (``cov_scope = mini``); chosen here otherwise.
    """
    c = cfg.clip_cov_clip_ratio
    loss, clipped = _ppo_clip(inp, c, c)
    if selected is None:
        selected = select_clip_cov(inp, cfg, generator)
    loss = loss * (~selected).to(loss.dtype)
    metrics = _ppo_metrics(inp, clipped)
    metrics["actor/cov_selected_frac"] = masked_mean(
        selected.to(loss.dtype), inp.response_mask
    ).detach()
    return PolicyLossOutput(loss, metrics)


def kl_cov_loss(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """KL-Cov (Cui et al. 2025, §4): ℓ = −A·r (no clip); the selected top-cov tokens add
    ``kl_cov_coef``·|log π − log π_old| (zero, with zero gradient, on the on-policy pass)."""
    ratio = _ratio(inp)
    abs_kl = (inp.log_prob - inp.old_log_prob).abs()
    if selected is None:
        selected = select_kl_cov(inp, cfg)
    loss = -inp.advantages * ratio + cfg.kl_cov_coef * abs_kl * selected.to(ratio.dtype)
    mask = inp.response_mask
    metrics = {
        "actor/ppo_kl": masked_mean(inp.old_log_prob - inp.log_prob, mask).detach(),
        "actor/ppo_kl_abs": masked_mean(abs_kl, mask).detach(),
        "actor/cov_selected_frac": masked_mean(selected.to(ratio.dtype), mask).detach(),
    }
    return PolicyLossOutput(loss, metrics)


POLICY_LOSSES: dict[PolicyLoss, Callable[..., PolicyLossOutput]] = {
    PolicyLoss.VANILLA: vanilla_loss,
    PolicyLoss.CLIP_HIGHER: clip_higher_loss,
    PolicyLoss.CLIP_COV: clip_cov_loss,
    PolicyLoss.KL_COV: kl_cov_loss,
}

# The selection rule of each covariance loss, for cov_scope = mini (the trainer selects over the
# mini-batch and passes the mask to each micro-batch).
COV_SELECTORS: dict[PolicyLoss, Callable[..., torch.Tensor]] = {
    PolicyLoss.CLIP_COV: select_clip_cov,
    PolicyLoss.KL_COV: lambda inp, cfg, generator=None: select_kl_cov(inp, cfg),
}


def get_policy_loss(name: str | PolicyLoss) -> Callable[..., PolicyLossOutput]:
    return POLICY_LOSSES[parse_choice(PolicyLoss, name, "loss")]


def kl_penalty(
    log_prob: torch.Tensor, ref_log_prob: torch.Tensor, estimator: str | KLEstimator
) -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from the sampled tokens' log-probs.

    k1 = log π − log π_ref (unbiased, can be negative);
    k3 = e^{log π_ref − log π} − (log π_ref − log π) − 1 (unbiased, ≥ 0, low variance).
    """
    est = KLEstimator(estimator)
    if est is KLEstimator.K1:
        return log_prob - ref_log_prob
    log_ratio = ref_log_prob - log_prob
    return torch.expm1(log_ratio) - log_ratio


def top_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """The valid tokens whose entropy is in the batch's top ``ratio`` (the 80/20 rule); bool."""
    k = max(1, int(ratio * int(mask.bool().sum()) + 0.5))
    return _top_k_valid(entropy, mask, k)


def compute_policy_loss(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    entropy_coef: float | None = None,
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """The configured policy loss plus the composable controls, per token.

    ℓ_t = ℓ^policy_t·[top-ρ entropy mask]  −  α·H_t  +  β·KL_t(π‖π_ref)

    Args:
      inp: the batch's tensors.
      cfg: the loss and the controls.
      entropy_coef: α in force this step (adaptive entropy control passes its current value);
        ``cfg.entropy_coef`` when omitted.
      generator: randomness of Clip-Cov's draw.
      selected: Clip-Cov/KL-Cov tokens chosen over the mini-batch (``cov_scope = mini``).
    """
    out = get_policy_loss(cfg.loss)(inp, cfg, generator=generator, selected=selected)
    loss, metrics = out.per_token_loss, dict(out.metrics)
    if cfg.top_entropy_ratio is not None:
        if inp.entropy is None:
            raise ValueError("entropy: top_entropy_ratio needs the per-token entropy")
        keep = top_entropy_mask(inp.entropy, inp.response_mask, cfg.top_entropy_ratio)
        loss = loss * keep.to(loss.dtype)
        metrics["actor/top_entropy_frac"] = masked_mean(keep.to(loss.dtype), inp.response_mask)
    alpha = cfg.entropy_coef if entropy_coef is None else entropy_coef
    if alpha > 0:
        if inp.entropy is None:
            raise ValueError("entropy: an entropy bonus needs the per-token entropy")
        loss = loss - alpha * inp.entropy
    if inp.entropy is not None:
        metrics["actor/entropy"] = masked_mean(inp.entropy.detach(), inp.response_mask)
    if cfg.kl_ref_coef > 0:
        if inp.ref_log_prob is None:
            raise ValueError("ref_log_prob: kl_ref_coef > 0 needs the reference log-probs")
        kl = kl_penalty(inp.log_prob, inp.ref_log_prob, cfg.kl_ref_estimator)
        loss = loss + cfg.kl_ref_coef * kl
        metrics["actor/kl_ref"] = masked_mean(kl.detach(), inp.response_mask)
    loss = loss * inp.response_mask.to(loss.dtype)
    return PolicyLossOutput(loss, metrics)


__all__ = [
    "AggMode",
    "COV_SELECTORS",
    "CovScope",
    "LossInputs",
    "POLICY_LOSSES",
    "PolicyLossOutput",
    "agg_loss",
    "clip_cov_loss",
    "clip_higher_loss",
    "compute_policy_loss",
    "get_policy_loss",
    "kl_cov_loss",
    "kl_penalty",
    "select_clip_cov",
    "select_kl_cov",
    "top_entropy_mask",
    "vanilla_loss",
]
