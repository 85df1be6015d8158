"""Slow, literal reference formulas: the ground truth for equivalence tests and benchmarks.

Each line is the textbook formula, written for clarity rather than speed or range (they
overflow for logits beyond about ±700). Shapes as in ``softmax_theory.estimators``.
"""

from __future__ import annotations

import numpy as np


def naive_softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def naive_entropy(logits: np.ndarray) -> np.ndarray:
    """H = −Σ π log π."""
    p = naive_softmax(logits)
    return -(p * np.log(p)).sum(axis=-1)


def naive_covariance(logits: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cov_π(x, y) = E[xy] − E[x]E[y]."""
    p = naive_softmax(logits)
    return (p * x * y).sum(-1) - (p * x).sum(-1) * (p * y).sum(-1)


def naive_first_order_entropy_change(logits: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """−Cov_π(log π, δ) with log π = log(softmax(z))."""
    p = naive_softmax(logits)
    return -naive_covariance(logits, np.log(p), delta)


def _mp_entropy(z: list) -> object:
    import mpmath

    norm = mpmath.fsum(mpmath.exp(v) for v in z)
    logp = [v - mpmath.log(norm) for v in z]
    return -mpmath.fsum(mpmath.exp(lp) * lp for lp in logp)


def mp_entropy_change(logits: np.ndarray, delta: np.ndarray, digits: int = 50) -> float:
    """H(z + δ) − H(z) for one logit vector in ``digits``-digit arithmetic (mpmath).

    The slow, exact reference: inputs are taken as exact binary floats, so the sum z + δ is
    formed without rounding.
    """
    import mpmath

    with mpmath.workdps(digits):
        z = [mpmath.mpf(float(v)) for v in logits]
        z_new = [v + mpmath.mpf(float(d)) for v, d in zip(z, delta, strict=True)]
        return float(_mp_entropy(z_new) - _mp_entropy(z))
