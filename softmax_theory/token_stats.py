"""Token-level statistics over sampled tokens, in numpy: the twins of ``llm_bridge.token_stats``.

Same names and signatures as the torch module; one parity test holds them equal. Shapes: any,
typically [B, T] (responses × tokens) with a ``mask`` of the valid tokens.
"""

from __future__ import annotations

import numpy as np


def masked_mean(x: np.ndarray, mask: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Σ x·mask / Σ mask (over ``dim`` or everything). Raises when no position is valid."""
    m = np.asarray(mask, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if dim is None:
        count = m.sum()
        if count == 0:
            raise ValueError("mask: no valid token")
        return (x * m).sum() / count
    return (x * m).sum(axis=dim) / np.maximum(m.sum(axis=dim), 1)


def token_covariance(logprobs: np.ndarray, advantages: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """cov_t = (log π_t − mean log π)·(A_t − mean A), means over the valid tokens; 0 elsewhere.

    Cui et al. 2025, §4: the covariance Clip-Cov and KL-Cov select on.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    adv = np.asarray(advantages, dtype=np.float64)
    for name, x in (("advantages", adv), ("mask", np.asarray(mask))):
        if x.shape != lp.shape:
            raise ValueError(f"{name}: shape {x.shape} must equal {lp.shape}")
    valid = np.asarray(mask).astype(bool)
    cov = (lp - masked_mean(lp, valid)) * (adv - masked_mean(adv, valid))
    return np.where(valid, cov, 0.0)
