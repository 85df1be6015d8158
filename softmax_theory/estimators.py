"""Exact entropy-dynamics estimators for tabular softmax policies.

Every function works in float64 over the last axis (actions, ``A``) and broadcasts over the
leading axes (states, ``S``, or any batch shape). Entropies are in nats. Equation numbers refer
to ``docs/theory.md``.

Dimension legend (shared with ``llm_bridge``): S states, A actions, B batch, G group,
T tokens, V vocabulary.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from softmax_theory.inputs import check_finite, check_logits, check_lr

# Rows of a [rows, A] block are processed together so that the block's temporaries
# (about four float64 copies) stay in cache: 2 MiB of logits per block.
ROW_BLOCK_BYTES = 1 << 21
# The most negative float64: where the shifted logits reach −inf (masked actions, or spans beyond
# the float range) they are clamped here, where e^g is 0 and e^g·g is 0 rather than NaN.
FLOAT_MIN = np.finfo(np.float64).min


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _as_logits(logits: np.ndarray, name: str = "logits") -> np.ndarray:
    """Logits as float64 [..., A]; −inf marks a masked action (probability 0)."""
    if isinstance(logits, str) or np.asarray(logits).dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected numbers, got {np.asarray(logits).dtype}")
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 0:
        raise ValueError(f"{name}: expected at least one axis (actions), got a scalar")
    if z.shape[-1] == 0:
        raise ValueError(f"{name}: the action axis (last) is empty, shape {z.shape}")
    return z


def _like_logits(x: np.ndarray, z: np.ndarray, name: str) -> np.ndarray:
    """Broadcast ``x`` to the logits' shape, or raise naming ``name``."""
    x = np.asarray(x, dtype=np.float64)
    try:
        return np.broadcast_to(x, z.shape)
    except ValueError:
        raise ValueError(
            f"{name}: shape {x.shape} does not broadcast to the logits' shape {z.shape}"
        ) from None


def _state_weights(state_weights: np.ndarray | None, z: np.ndarray) -> np.ndarray:
    """State weights d(s), shape z.shape[:-1]; ones when omitted."""
    if state_weights is None:
        return np.ones(z.shape[:-1])
    d = np.asarray(state_weights, dtype=np.float64)
    if d.shape != z.shape[:-1]:
        try:
            d = np.broadcast_to(d, z.shape[:-1])
        except ValueError:
            raise ValueError(
                f"state_weights: shape {d.shape} does not match the states of logits {z.shape[:-1]}"
            ) from None
    check_finite("state_weights", d)
    if (d < 0).any():
        raise ValueError("state_weights: must be non-negative")
    return d


def _finite_result(result: np.ndarray, **inputs: np.ndarray) -> np.ndarray:
    """Return ``result`` if finite; else name the input that made it so.

    The fast paths scan their inputs only when the output is not finite: a NaN or +inf input
    always propagates to the output, so this check is complete and costs no extra pass over the
    inputs on the normal path (−inf logits, masked actions, are handled and give finite results).
    """
    if np.isfinite(result).all():
        return result
    for name, x in inputs.items():
        (check_logits if name == "logits" else check_finite)(name, x)
    raise FloatingPointError("non-finite result from finite inputs; please report this input")


# ---------------------------------------------------------------------------------------------
# Softmax and moments
# ---------------------------------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log π = z − logsumexp(z), shape [..., A]; −inf where the logit is −inf (masked)."""
    z = _as_logits(logits)
    check_logits("logits", z)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """π = softmax(z), shape [..., A]."""
    return np.exp(log_softmax(logits))


def _mean(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """E_π[x] over the last axis. Actions with π = 0 (masked) contribute nothing, whatever x
    holds there (log π is −inf at a masked action)."""
    return np.einsum("...a,...a->...", p, _on_support(p, x))


def _on_support(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x where the weight p is non-zero, and 0 where it is zero (a masked action), so that
    products with p stay finite."""
    with np.errstate(invalid="ignore"):
        return np.where(p != 0, x, 0.0)


def covariance(logits: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cov_{a∼softmax(z)}(x_a, y_a) = E_π[(x − E_π x)(y − E_π y)]  (eq. 2).

    Args:
      logits: z, shape [..., A].
      x, y: per-action values, broadcastable to [..., A].
    Returns:
      shape [...].
    """
    z = _as_logits(logits)
    p = softmax(z)
    # values at masked actions (π = 0) do not enter: log π is −inf there
    x = _on_support(p, _like_logits(x, z, "x"))
    y = _on_support(p, _like_logits(y, z, "y"))
    check_finite("x", x)
    check_finite("y", y)
    xc = x - _mean(p, x)[..., None]
    yc = y - _mean(p, y)[..., None]
    return _mean(p, xc * yc)


# The blocked kernel splits the rows among this many threads (numpy releases the GIL inside
# its loops, so the threads run in parallel); small inputs use one.
THREADS = min(2, os.cpu_count() or 1)


def _kernel_rows(
    z2: np.ndarray,
    d2: np.ndarray | None,
    h: np.ndarray,
    first: np.ndarray | None,
    row_range: range,
) -> None:
    """Fill h[rows] (and first[rows]) for the rows in ``row_range``, one cache block at a time."""
    n_actions = z2.shape[1]
    block = max(1, ROW_BLOCK_BYTES // (8 * n_actions))
    g_buf = np.empty((min(block, len(row_range)), n_actions))
    e_buf = np.empty_like(g_buf)
    for start in range(row_range.start, row_range.stop, block):
        rows = slice(start, min(start + block, row_range.stop))
        r = rows.stop - rows.start
        g = np.subtract(z2[rows], z2[rows].max(axis=1, keepdims=True), out=g_buf[:r])  # z − max
        e = np.exp(g, out=e_buf[:r])  # e^{z − max}; π = e / Σe, left unnormalised
        # a masked (−inf) or underflowed action has e = 0; a finite g keeps e·g at 0, not NaN
        np.maximum(g, FLOAT_MIN, out=g)
        total = e.sum(axis=1)
        mean_g = np.einsum("ij,ij->i", e, g) / total  # E_π[z − max]
        # H = log Σ e^{z−m} − E_π[z − m]: both terms O(1) even for logits of ±1e4.
        h[rows] = np.log(total) - mean_g
        if d2 is not None:
            g -= mean_g[:, None]  # log π − E_π log π (the shift by log Σe cancels)
            g *= e  # Σe·π·(log π − E log π)
            # Cov = E[(log π − E log π) δ] − E[log π − E log π]·E[δ]; the second term is zero
            # in exact arithmetic and removes the rounding of the first.
            mean_d = np.einsum("ij,ij->i", e, d2[rows]) / total
            cov = (np.einsum("ij,ij->i", g, d2[rows]) - g.sum(axis=1) * mean_d) / total
            first[rows] = -cov


def _entropy_and_first_order(
    z: np.ndarray, delta: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """One pass over the logits: H (eq. 1) and, given δ, −Cov_π(log π, δ) (eq. 3).

    Naive equivalent (``softmax_theory.reference``)::

        H  = logsumexp(z) − Σ softmax(z)·z
        ΔH ≈ −Σ π (log π − E log π)(δ − E δ)

    Rows are taken in cache-sized blocks with reused buffers, so each block is read from
    memory once, and split among ``THREADS`` threads; see ``benchmarks/bench_estimators.py``.
    """
    n_actions = z.shape[-1]
    z2 = z.reshape(-1, n_actions)  # (S, A)
    d2 = None if delta is None else delta.reshape(-1, n_actions)
    n_rows = z2.shape[0]
    h = np.empty(n_rows)
    first = None if delta is None else np.empty(n_rows)
    block = max(1, ROW_BLOCK_BYTES // (8 * n_actions))
    n_threads = max(1, min(THREADS, n_rows // block))
    bounds = np.linspace(0, n_rows, n_threads + 1).astype(int)
    parts = [range(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    if n_threads == 1:
        _kernel_rows(z2, d2, h, first, parts[0])
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            for future in [pool.submit(_kernel_rows, z2, d2, h, first, part) for part in parts]:
                future.result()
    shape = z.shape[:-1]
    return h.reshape(shape), None if first is None else first.reshape(shape)


def entropy(logits: np.ndarray) -> np.ndarray:
    """H(π) = −Σ_a π(a) log π(a) in nats, π = softmax(z)  (eq. 1).

    Stable form: logsumexp(z) − Σ softmax(z)·z, computed on z − max z.

    Args:
      logits: z, shape [..., A].
    Returns:
      shape [...].
    """
    z = _as_logits(logits)
    with np.errstate(invalid="ignore", over="ignore"):  # bad input is named below
        h, _ = _entropy_and_first_order(z, None)
    return _finite_result(h, logits=z)


# Beyond this step (max |δ − E_π δ| over a row) expm1 could overflow and the change is large
# enough for the plain difference H(z + δ) − H(z) to be accurate.
STABLE_CHANGE_MAX_STEP = 50.0


def entropy_change(logits: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Exact ΔH = H(softmax(z + δ)) − H(softmax(z)), shape [...]  (eq. 11).

    The plain difference loses all digits below 1e-16·H, which hides the η² error of the
    first-order predictions at small steps. Instead, with d = δ − E_π δ and m = E_π[e^d − 1]:
    π' − π = π·(e^d − 1 − m)/(1 + m) and
    ΔH = −Σ (π' − π)(log π − E_π log π) − Σ π'·d + log(1 + m),
    each term built from expm1/log1p, so the absolute error scales with |δ| rather than with H.
    Rows whose centred step exceeds ``STABLE_CHANGE_MAX_STEP`` use the plain difference.
    """
    z = _as_logits(logits)
    d = _like_logits(delta, z, "delta")
    check_logits("logits", z)
    check_finite("delta", d)
    logp = log_softmax(z)
    p = np.exp(logp)
    logp = _on_support(p, logp)  # masked actions carry no weight; keep their terms finite
    dc = d - _mean(p, d)[..., None]
    small = np.abs(dc).max(axis=-1) <= STABLE_CHANGE_MAX_STEP
    em1 = np.expm1(np.where(small[..., None], dc, 0.0))
    m = _mean(p, em1)  # Z − 1, Z = E_π e^d
    dp = p * (em1 - m[..., None]) / (1.0 + m[..., None])  # π' − π
    g = logp - _mean(p, logp)[..., None]
    stable = -_mean(dp, g) - _mean(p + dp, dc) + np.log1p(m)
    if small.all():
        return stable
    return np.where(small, stable, entropy(z + d) - entropy(z))


def first_order_entropy_change(logits: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """ΔH ≈ −Cov_{a∼π}(log π(a), δ_a). Cui et al. 2025, Lemma 1 (eq. 3).

    Args:
      logits: z before the update, shape [..., A].
      delta: the logit change z' − z, broadcastable to [..., A].
    Returns:
      the first-order prediction of H(z + δ) − H(z), shape [...].
    """
    z = _as_logits(logits)
    d = _like_logits(delta, z, "delta")
    with np.errstate(invalid="ignore", over="ignore"):  # bad input is named below
        _, first = _entropy_and_first_order(z, d)
    return _finite_result(first, logits=z, delta=d)


def entropy_and_first_order_change(
    logits: np.ndarray, delta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """H(π) and Lemma 1's −Cov_π(log π, δ) in one pass over the logits (eqs. 1 and 3)."""
    z = _as_logits(logits)
    d = _like_logits(delta, z, "delta")
    with np.errstate(invalid="ignore", over="ignore"):  # bad input is named below
        h, first = _entropy_and_first_order(z, d)
    return _finite_result(h, logits=z), _finite_result(first, logits=z, delta=d)


def second_order_entropy_change(logits: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """ΔH ≈ −Cov_π(log π, δ) − ½·(Var_π(δ) + E_π[(δ − δ̄)²(log π − E log π)])  (eq. 4).

    The bracket is −d²/dt² H(softmax(z + tδ)) at t = 0, derived in
    ``softmax_theory.symbolic.second_derivative``; the error of this estimate shrinks like |δ|³.

    Args:
      logits: z, shape [..., A].
      delta: the logit change, broadcastable to [..., A].
    Returns:
      shape [...].
    """
    z = _as_logits(logits)
    d = _like_logits(delta, z, "delta")
    check_finite("delta", d)
    logp = log_softmax(z)
    p = np.exp(logp)
    logp = _on_support(p, logp)
    u = d - _mean(p, d)[..., None]  # δ − E_π δ
    g = logp - _mean(p, logp)[..., None]  # log π − E_π log π
    first = -_mean(p, g * u)
    curvature = _mean(p, u * u) + _mean(p, u * u * g)
    return first - 0.5 * curvature


# ---------------------------------------------------------------------------------------------
# Advantages, tabular updates, Theorems 1 and 2
# ---------------------------------------------------------------------------------------------


def advantages(logits: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """A(s, a) = r(s, a) − E_{a'∼π(·|s)} r(s, a'), shape [..., A]  (eq. 5)."""
    z = _as_logits(logits)
    r = _like_logits(rewards, z, "rewards")
    check_finite("rewards", r)
    p = softmax(z)
    return r - _mean(p, r)[..., None]


def pg_update(
    logits: np.ndarray,
    rewards: np.ndarray,
    lr: float,
    state_weights: np.ndarray | None = None,
) -> np.ndarray:
    """z' = z + η·d(s)·π(a|s)·A(s, a): exact tabular softmax policy gradient  (eq. 6).

    ∂/∂z(s,a) of J = Σ_s d(s) Σ_a π(a|s) r(s,a) is d(s)·π(a|s)·A(s,a).

    Args:
      logits: z, shape [..., A].
      rewards: r(s, a), broadcastable to [..., A].
      lr: η > 0.
      state_weights: d(s), shape [...]; ones when omitted.
    """
    z = _as_logits(logits)
    lr = check_lr(lr)
    d = _state_weights(state_weights, z)
    return z + lr * d[..., None] * softmax(z) * advantages(z, rewards)


def npg_update(logits: np.ndarray, rewards: np.ndarray, lr: float) -> np.ndarray:
    """z' = z + η·A(s, a): natural policy gradient for a tabular softmax (Kakade 2001)  (eq. 7)."""
    z = _as_logits(logits)
    lr = check_lr(lr)
    return z + lr * advantages(z, rewards)


def pg_entropy_change(
    logits: np.ndarray,
    rewards: np.ndarray,
    lr: float,
    state_weights: np.ndarray | None = None,
) -> np.ndarray:
    """ΔH ≈ −η·d(s)·Cov_{a∼π}(log π(a|s), π(a|s)·A(s,a)). Cui et al. 2025, Theorem 1 (eq. 8).

    The paper writes η for the effective step; with state weights d(s) the step at state s is
    η·d(s), matching ``pg_update``.
    """
    z = _as_logits(logits)
    lr = check_lr(lr)
    d = _state_weights(state_weights, z)
    logp = log_softmax(z)
    return -lr * d * covariance(z, logp, np.exp(logp) * advantages(z, rewards))


def npg_entropy_change(logits: np.ndarray, rewards: np.ndarray, lr: float) -> np.ndarray:
    """ΔH ≈ −η·Cov_{a∼π}(log π(a|s), A(s,a)). Cui et al. 2025, Theorem 2 (eq. 9)."""
    z = _as_logits(logits)
    lr = check_lr(lr)
    return -lr * covariance(z, log_softmax(z), advantages(z, rewards))
