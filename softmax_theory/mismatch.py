"""The sampler–trainer mismatch on the sampled tokens, in numpy: the twin of
``llm_bridge.mismatch`` (same name and signature; ``tests/llm/test_mismatch.py`` holds the two
equal).

The tabular world's sampler is exact: it draws from the very π the update starts from, so its
mismatch is zero by construction (every key 0, the ratio 1). The language-model world's sampler
may not be (vLLM's kernels, bf16, stale weights), and there the same keys measure by how much.
"""

from __future__ import annotations

import numpy as np

from softmax_theory.losses import LOG_RATIO_CLAMP

# What rollout_mismatch returns, in order.
MISMATCH_KEYS = (
    "rollout/logp_diff_mean",
    "rollout/logp_diff_max",
    "rollout/is_ratio_mean",
    "rollout/is_ratio_p05",
    "rollout/is_ratio_p95",
)
# The quantiles of the ratio reported (linear interpolation between order statistics, as
# ``numpy.quantile``).
RATIO_QUANTILES = (0.05, 0.95)


def rollout_mismatch(
    trainer_logp: np.ndarray, sampler_logp: np.ndarray, mask: np.ndarray
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

    Args:
      trainer_logp: log π of the sampled tokens under the trainer at sampling time (π_old),
        any shape ([B, T]: responses × tokens).
      sampler_logp: the sampler's log π of the same tokens, same shape.
      mask: nonzero on valid tokens, same shape; only valid tokens are read.
    Returns:
      the ``MISMATCH_KEYS``, as floats.
    """
    trainer = np.asarray(trainer_logp, dtype=np.float64)
    sampler = np.asarray(sampler_logp, dtype=np.float64)
    valid = np.asarray(mask) != 0
    if trainer.ndim == 0:
        raise ValueError("trainer_logp: expected log-probs per token ([B, T]), got a scalar")
    for name, x in (("sampler_logp", sampler), ("mask", valid)):
        if x.shape != trainer.shape:
            raise ValueError(f"{name}: shape {x.shape} must equal trainer_logp's {trainer.shape}")
    if not valid.any():
        raise ValueError("mask: no valid token")
    for name, x in (("trainer_logp", trainer), ("sampler_logp", sampler)):
        if not np.isfinite(x[valid]).all():
            raise ValueError(f"{name}: contains NaN or infinite values on valid tokens")
    d = trainer[valid] - sampler[valid]
    ratio = np.exp(np.clip(d, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    p05, p95 = np.quantile(ratio, RATIO_QUANTILES)
    values = (np.abs(d).mean(), np.abs(d).max(), ratio.mean(), p05, p95)
    return {k: float(v) for k, v in zip(MISMATCH_KEYS, values, strict=True)}
