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
from dataclasses import dataclass, field

import torch

from llm_bridge.token_stats import masked_mean, token_covariance
from softmax_theory.policy import (
    AggMode,
    KLEstimator,
    PolicyLoss,
    PolicyLossConfig,
    n_selected,
    n_top,
)
from softmax_theory.registry import parse_choice

# verl clamps log π − log π_old to ±20 before exponentiating (and k3's log-ratio likewise).
LOG_RATIO_CLAMP = 20.0
# verl clamps the k3 estimate to ±10.
K3_CLAMP = 10.0

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


def log_ratio(inp: LossInputs) -> torch.Tensor:
    """log r = clamp(log π − log π_old, ±20) (verl's clamp)."""
    return torch.clamp(inp.log_prob - inp.old_log_prob, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def _frac(x: torch.Tensor, inp: LossInputs) -> torch.Tensor:
    """The share of valid tokens where the bool ``x`` holds, in the loss's dtype."""
    return masked_mean(x.to(inp.log_prob.dtype), inp.response_mask).detach()


def ppo_clip(
    inp: LossInputs, low: float, high: float, dual_c: float | None
) -> tuple[torch.Tensor, Metrics]:
    """ℓ = max(−A·r, −A·clip(r, 1 − low, 1 + high)); with dual-clip c, tokens with A < 0 take
    min(ℓ, −A·c). Schulman et al. 2017 (PPO); Ye et al. 2020 (dual-clip, arXiv 1912.09729).

    The operations and their order are verl's, so the results agree to the last bit.
    """
    adv, mask = inp.advantages, inp.response_mask
    lr = log_ratio(inp)
    ratio = torch.exp(lr)
    loss1 = -adv * ratio
    loss2 = -adv * torch.clamp(ratio, 1 - low, 1 + high)
    loss = torch.maximum(loss1, loss2)
    metrics = {
        "actor/pg_clipfrac": _frac(torch.gt(loss2, loss1), inp),
        "actor/ppo_kl": masked_mean(-lr, mask).detach(),
    }
    if dual_c is not None:
        loss3 = -adv * dual_c
        dual = torch.gt(loss, loss3) & (adv < 0)
        loss = torch.where(adv < 0, torch.min(loss3, loss), loss)
        metrics["actor/pg_clipfrac_lower"] = _frac(dual, inp)
    return loss, metrics


def vanilla_loss(
    inp: LossInputs, cfg: PolicyLossConfig, generator=None, selected=None
) -> PolicyLossOutput:
    """PPO clip with ε_low = ``clip_ratio_low``, ε_high = ``clip_ratio_high`` and dual-clip c =
    ``clip_ratio_c`` (verl's ``vanilla``)."""
    loss, metrics = ppo_clip(inp, cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_c)
    return PolicyLossOutput(loss, metrics)


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


def clip_cov_loss(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """Clip-Cov (Cui et al. 2025, §4): PPO clip (range ``clip_ratio_low/high``, no dual-clip, as
    verl); the selected tokens' losses are multiplied by 0 (no gradient; they stay in the
    token-mean denominator). ``selected``: a mask chosen over a larger scope (``cov_scope``)."""
    loss, metrics = ppo_clip(inp, cfg.clip_ratio_low, cfg.clip_ratio_high, None)
    if selected is None:
        selected = select_clip_cov(inp, cfg, generator)
    loss = loss * (~selected).to(loss.dtype)
    metrics["actor/cov_selected_frac"] = _frac(selected, inp)
    return PolicyLossOutput(loss, metrics)


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
        selected = select_kl_cov(inp, cfg)
    loss = -inp.advantages * ratio + cfg.ppo_kl_coef * abs_kl * selected.to(ratio.dtype)
    mask = inp.response_mask
    metrics = {
        "actor/ppo_kl": masked_mean(-lr, mask).detach(),
        "actor/ppo_kl_abs": masked_mean(abs_kl, mask).detach(),
        "actor/cov_selected_frac": _frac(selected, inp),
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


def compute_policy_loss(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    entropy_coeff: float | None = None,
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """The configured policy loss plus the composable controls, per token:

    ℓ_t = ℓ^policy_t·[top-ρ entropy mask]  −  α·H_t  +  β·KL_t(π‖π_ref)

    Args:
      inp: the batch's tensors.
      cfg: the loss and the controls.
      entropy_coeff: α in force this step (adaptive entropy control passes its current value);
        ``cfg.entropy_coeff`` when omitted.
      generator: randomness of Clip-Cov's draw.
      selected: Clip-Cov/KL-Cov tokens chosen over the mini-batch (``cov_scope = mini``).
    """
    out = get_policy_loss(cfg.loss_mode)(inp, cfg, generator=generator, selected=selected)
    loss, metrics = out.per_token_loss, dict(out.metrics)
    if cfg.top_entropy_ratio is not None:
        if inp.entropy is None:
            raise ValueError("entropy: top_entropy_ratio needs the per-token entropy")
        keep = top_entropy_mask(inp.entropy, inp.response_mask, cfg.top_entropy_ratio)
        loss = loss * keep.to(loss.dtype)
        metrics["actor/top_entropy_frac"] = _frac(keep, inp)
    alpha = cfg.entropy_coeff if entropy_coeff is None else entropy_coeff
    if alpha > 0:
        if inp.entropy is None:
            raise ValueError("entropy: an entropy bonus needs the per-token entropy")
        loss = loss - alpha * inp.entropy
    if inp.entropy is not None:
        metrics["actor/entropy"] = masked_mean(inp.entropy.detach(), inp.response_mask)
    if cfg.kl_loss_coef > 0:
        if inp.ref_log_prob is None:
            raise ValueError("ref_log_prob: kl_loss_coef > 0 needs the reference log-probs")
        kl = kl_penalty(inp.log_prob, inp.ref_log_prob, cfg.kl_loss_type)
        loss = loss + cfg.kl_loss_coef * kl
        metrics["actor/kl_loss"] = masked_mean(kl.detach(), inp.response_mask)
    loss = loss * inp.response_mask.to(loss.dtype)
    return PolicyLossOutput(loss, metrics)


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
    "LOG_RATIO_CLAMP",
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
    "log_ratio",
    "ppo_clip",
    "select_clip_cov",
    "select_kl_cov",
    "top_entropy_mask",
    "vanilla_loss",
]
