"""Where the step's entropy change goes: Lemma 1's prediction split over token classes.

``pred_lemma1`` = Σ_t c_t, a sum of per-token contributions; ``attribution_parts`` splits it by
two families of classes, each summing to ``pred_lemma1``:

- by the sign of the token's advantage and whether the sampled token was likely:
  ``attr/pos_high``, ``attr/pos_low``, ``attr/neg_high``, ``attr/neg_low`` and ``attr/zero_adv``
  (A = 0, e.g. a group whose responses all scored the same);
- by whether the token's ratio was clipped at any update of the step: ``attr/clipped``,
  ``attr/unclipped``;
- with the truncated importance-sampling correction (``rollout_is``), by whether the token's
  weight w = min(π_old/π_sampler, C) reached the cap C: ``attr/is_capped``, ``attr/is_uncapped``.

The correction's weights are counted where they act: w_t scales token t's gradient, so it scales
the token's push on the logits and hence on ΔH. Every c_t below is computed from the logit
change the weighted loss actually made, so ``pred_lemma1`` and each part already carry the
weights; the ``is_capped`` family then says how much of the step's entropy change came from the
tokens whose correction was truncated (their weight held at C, below the ratio that would have
corrected them fully), beside the rest. The weight is fixed over a step (it reads π_old, not the
current π), so "capped" is one mask per step, unlike "clipped", which may change per update.

"Likely" is log π(y) ≥ E_π[log π] = −H(s), i.e. π(y) ≥ e^{−H}: the token is more probable than
the policy's typical token. It is the threshold at which a token's own update changes sign in
Theorem 2: a natural-gradient step raising y by η·A changes H by −η·A·π(y)(log π(y) + H), so a
positive advantage on a likely token lowers entropy and on an unlikely one raises it (the
paper's intuition, §3). It is ½ only for two equally likely actions; with many actions a
token with π(y) = 0.3 can be the likely one.

What c_t is depends on the world, and both sum exactly to ``pred_lemma1``:

- tabular (exact): the token's own part of the logit change, through Lemma 1. The logit change
  is a sum of per-token terms (each token's gradient lives in its own state's row), and Lemma 1
  is linear in it, so c_t = −w(s_t)·Cov_π(log π, δ_t): what the step's ΔH would be from token t's
  update alone, to first order. PG and NPG take the expected update's terms, one per (s, a).
- language model (probe): Lemma 1 at the token's own state, ``pred_lemma1_t``/n. Each state is
  visited once, so this is the token's own term plus what the other tokens' updates do to its
  state through the shared parameters; no finer split is measurable without per-token
  gradients.
"""

from __future__ import annotations

import numpy as np

from softmax_theory.estimators import log_softmax

SIGN_PARTS = ("attr/pos_high", "attr/pos_low", "attr/neg_high", "attr/neg_low", "attr/zero_adv")
CLIP_PARTS = ("attr/clipped", "attr/unclipped")
IS_PARTS = ("attr/is_capped", "attr/is_uncapped")
ATTRIBUTION_KEYS = SIGN_PARTS + CLIP_PARTS + IS_PARTS


def likely_tokens(logp: np.ndarray, entropy: np.ndarray) -> np.ndarray:
    """log π(y) ≥ −H(s): the sampled token is at least as probable as the policy's typical
    token (see the module docstring); bool, same shape."""
    return np.asarray(logp) >= -np.asarray(entropy)


def lemma1_weights(logits: np.ndarray) -> np.ndarray:
    """g = π·(log π + H), [..., A]: Lemma 1 reads −Cov_π(log π, δ) = −Σ_a g_a·δ_a (Σ_a g_a = 0,
    so a constant shift of δ changes nothing). Masked actions (π = 0) have g = 0."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64))
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):
        safe = np.where(p > 0, logp, 0.0)
    h = -(p * safe).sum(-1, keepdims=True)
    return p * (safe + h)


def own_entropy_term(logits: np.ndarray) -> np.ndarray:
    """π(a)(log π(a) + H) − Cov_π(log π, π), [..., A]: Cov_π(log π, e_a − π), so that a
    score-function step on action a, δ = η·A·(e_a − π), changes H by −η·A times this, to first
    order (Lemma 1). The oracle selector restrains the tokens with the largest A·term."""
    g = lemma1_weights(logits)
    p = np.exp(log_softmax(np.asarray(logits, dtype=np.float64)))
    return g - (g * p).sum(-1, keepdims=True)


def attribution_parts(
    contrib: np.ndarray,
    adv: np.ndarray,
    logp: np.ndarray,
    entropy: np.ndarray,
    clipped: np.ndarray | None = None,
    is_capped: np.ndarray | None = None,
) -> dict[str, float]:
    """Split Σ contrib over the classes of the module docstring; 1-D arrays over tokens.

    ``clipped``: which tokens were clipped (all False for a loss without a clip); without it
    (an engine that does not report it) the clipped/unclipped family is left out, not guessed.
    ``is_capped``: which tokens' importance weight reached the cap (``rollout_is``); without it
    (no correction) the is_capped/is_uncapped family is left out."""
    c = np.asarray(contrib, dtype=np.float64)
    a = np.asarray(adv, dtype=np.float64)
    likely = likely_tokens(logp, entropy)
    classes = {
        "attr/pos_high": (a > 0) & likely,
        "attr/pos_low": (a > 0) & ~likely,
        "attr/neg_high": (a < 0) & likely,
        "attr/neg_low": (a < 0) & ~likely,
        "attr/zero_adv": a == 0,
    }
    if clipped is not None:
        clip = np.asarray(clipped, bool)
        classes.update({"attr/clipped": clip, "attr/unclipped": ~clip})
    if is_capped is not None:
        capped = np.asarray(is_capped, bool)
        classes.update({"attr/is_capped": capped, "attr/is_uncapped": ~capped})
    return {key: float(c[m].sum()) for key, m in classes.items()}
