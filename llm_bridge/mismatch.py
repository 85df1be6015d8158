"""The sampler–trainer mismatch, measured on the sampled tokens, in torch: the twin of
``softmax_theory.mismatch``; and the TRL settings that give its correction the meaning ours has.

Rollouts sampled by another engine (vLLM) carry the sampler's log-probs of the sampled tokens,
which need not equal the trainer's: other kernels, bf16, weights a step behind. The loss, the
old log-probs and the probe use the trainer's π; ``rollout_mismatch`` says how far the sampler
was from it (zero when the trainer samples), and ``PolicyLossConfig.rollout_is`` corrects for it
in the loss (``llm_bridge.losses.truncated_is_weights``).
"""

from __future__ import annotations

from typing import Any

import torch

from llm_bridge.losses import LOG_RATIO_CLAMP
from softmax_theory.mismatch import MISMATCH_KEYS, RATIO_QUANTILES
from softmax_theory.policy import PolicyLossConfig, RolloutIS


def _quantile(sorted_x: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of sorted values, linear between order statistics (``numpy.quantile``'s
    default; ``torch.quantile`` refuses inputs above 2^24 elements, a few large batches)."""
    pos = q * (sorted_x.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, sorted_x.numel() - 1)
    return sorted_x[lo] + (sorted_x[hi] - sorted_x[lo]) * (pos - lo)


@torch.no_grad()
def rollout_mismatch(
    trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """d_t = log π_trainer(y_t|s_t) − log π_sampler(y_t|s_t) over the valid sampled tokens:

    logp_diff_mean = mean_t |d_t|,  logp_diff_max = max_t |d_t|,
    is_ratio_mean, is_ratio_p05, is_ratio_p95 = mean, 5th and 95th percentiles of
    ρ_t = exp(clamp(d_t, ±20)).

    ``logp_diff_*`` is TRL's ``sampling/sampling_logp_difference/mean|max`` (the trainer's old
    log-probs against vLLM's, in log space). verl's ``training/rollout_probs_diff_mean|max``
    differs: it is |π_trainer − π_sampler| in probability space. ρ is the raw importance ratio
    π_trainer/π_sampler (verl's rollout-correction ratio, clamped to ±20 in log as verl does),
    before any truncation: TRL's ``sampling/importance_sampling_ratio/*`` reports the ratio
    after its truncation or mask. All zeros and ratios 1 when the trainer is the sampler.
    Computed in float64 on the tensors' device.

    Args:
      trainer_logp: log π of the sampled tokens under the trainer at sampling time (π_old),
        any shape ([B, T]: responses × tokens).
      sampler_logp: the sampler's log π of the same tokens, same shape.
      mask: nonzero on valid tokens, same shape; only valid tokens are read.
    Returns:
      the ``MISMATCH_KEYS``, as floats.
    """
    if trainer_logp.ndim == 0:
        raise ValueError("trainer_logp: expected log-probs per token ([B, T]), got a scalar")
    for name, x in (("sampler_logp", sampler_logp), ("mask", mask)):
        if x.shape != trainer_logp.shape:
            raise ValueError(
                f"{name}: shape {tuple(x.shape)} must equal trainer_logp's "
                f"{tuple(trainer_logp.shape)}"
            )
    valid = (mask != 0).to(trainer_logp.device)
    if not valid.any():
        raise ValueError("mask: no valid token")
    trainer = trainer_logp.detach().double()[valid]
    sampler = sampler_logp.detach().to(trainer_logp.device).double()[valid]
    for name, x in (("trainer_logp", trainer), ("sampler_logp", sampler)):
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}: contains NaN or infinite values on valid tokens")
    d = trainer - sampler
    ratio = torch.exp(torch.clamp(d, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    ordered = torch.sort(ratio).values
    p05, p95 = (_quantile(ordered, q) for q in RATIO_QUANTILES)
    values = (d.abs().mean(), d.abs().max(), ratio.mean(), p05, p95)
    return {k: float(v) for k, v in zip(MISMATCH_KEYS, values, strict=True)}


# TRL's vllm_importance_sampling_mode for each level of ours: both truncate (never mask).
TRL_IS_MODES = {RolloutIS.TOKEN: "token_truncate", RolloutIS.SEQUENCE: "sequence_truncate"}


def trl_importance_sampling_args(cfg: PolicyLossConfig) -> dict[str, Any]:
    """The ``GRPOConfig`` settings of TRL's vLLM importance sampling that mean what
    ``cfg.rollout_is`` means: off when it is unset (TRL's default is on, ``sequence_mask`` at
    3.0), else ``token_truncate``/``sequence_truncate`` with ``vllm_importance_sampling_clip_max``
    = ``rollout_is_threshold`` and no lower bound. (TRL 1.16 keeps the older name of the cap,
    ``vllm_importance_sampling_cap``, as a deprecated alias of ``…_clip_max``.)"""
    if cfg.rollout_is is None:
        return {"vllm_importance_sampling_correction": False}
    return {
        "vllm_importance_sampling_correction": True,
        "vllm_importance_sampling_mode": TRL_IS_MODES[cfg.rollout_is],
        "vllm_importance_sampling_clip_max": cfg.rollout_is_threshold,
        "vllm_importance_sampling_clip_min": None,
    }
