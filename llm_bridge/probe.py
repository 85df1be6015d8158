"""The per-step entropy probe: measure the step's entropy change on its own tokens and hold it
against the theory's predictions.

On the response tokens of a step (states s_t, sampled tokens y_t), with logits z before the
update and z' after it:

- ``delta_entropy``: mean over tokens of H(z'_t) − H(z_t), the measured change;
- ``pred_lemma1``: mean of −Cov_π(log π, z' − z) (Lemma 1 with the actual logit change);
- ``pred_jvp``: mean of −Cov_π(log π, J·Δθ), the first-order forecast from the parameter update
  Δθ through the Jacobian at the old parameters (a Jacobian-vector product), which needs no
  forward pass after the step;
- covariance estimators from the sampled tokens alone (each predicts ΔH ∝ −estimator):
  ``cov_mean`` (the paper's batch-centred token covariance), ``cov_group`` (Fig. 8's response
  covariance within prompt groups), ``cov_state`` ((log π(y) − E_π log π)·A, centred at each
  state: a one-sample estimate of Theorem 2's Cov_π(log π, A)) and ``cov_score`` (Lemma 1 applied
  to a score-function step on y alone: A·[π(y)(log π(y) + H) − Cov_π(log π, π)]).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jvp

from llm_bridge.token_stats import (
    group_covariance,
    lemma1_from_delta,
    lemma1_prediction,
    masked_mean,
    token_covariance,
    token_entropy_change,
)
from softmax_theory import checks


def score_function_lemma1(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """π(y)(log π(y) + H) − Cov_π(log π, π) per token: Lemma 1 for Δz_a = A·(1[a = y] − π_a),
    divided by −A. [..., V], [...] → [...]."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    h = -(p * logp).sum(-1)
    logp_y = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    cov_logp_p = (p * p * logp).sum(-1) - (p * logp).sum(-1) * (p * p).sum(-1)
    return logp_y.exp() * (logp_y + h) - cov_logp_p


def correlation(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """``softmax_theory.checks.correlation`` of two tensors (None when either is constant)."""
    return checks.correlation(
        x.detach().double().flatten().cpu().numpy(), y.detach().double().flatten().cpu().numpy()
    )


def jvp_logits(
    logits_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    params: dict[str, torch.Tensor],
    delta: dict[str, torch.Tensor],
) -> torch.Tensor:
    """J(θ)·Δθ: the first-order change of ``logits_fn(θ)`` when θ moves by ``delta``
    (forward-mode AD, one pass at about the cost of two forwards)."""
    _, tangent = jvp(logits_fn, (params,), (delta,))
    return tangent


def probe_stats(
    logits_before: torch.Tensor,
    logits_after: torch.Tensor,
    logits_jvp: torch.Tensor | None,
    tokens: torch.Tensor,
    logprobs: torch.Tensor,
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    group: torch.Tensor,
) -> tuple[dict[str, float | None], dict[str, torch.Tensor]]:
    """The step's probe record and its per-token arrays (valid tokens only).

    Args:
      logits_before, logits_after: [B, T, V] on the step's response positions.
      logits_jvp: [B, T, V] J·Δθ, or None.
      tokens, logprobs, entropy, advantages, mask: [B, T].
      group: [B] prompt index of each response.
    """
    valid = mask.bool()
    d_h = token_entropy_change(logits_before, logits_after)
    lemma = lemma1_prediction(logits_before, logits_after, dtype=torch.float64)
    cov = token_covariance(logprobs, advantages, mask)
    state = (logprobs.double() + entropy.double()) * advantages.double()
    score = advantages.double() * score_function_lemma1(logits_before, tokens)
    per_token = {
        "delta_entropy": d_h[valid],
        "pred_lemma1": lemma[valid],
        "cov": cov[valid],
        "cov_state": state[valid],
        "cov_score": score[valid],
        "entropy": entropy[valid],
        "advantage": advantages[valid],
    }
    record: dict[str, float | None] = {
        "entropy_after": float(masked_mean(entropy.double() + d_h, mask)),
        "delta_entropy": float(d_h[valid].mean()),
        "pred_lemma1": float(lemma[valid].mean()),
        "cov_mean": float(cov[valid].mean()),
        "cov_group": float(group_covariance(logprobs, advantages, mask, group)),
        "cov_state": float(state[valid].mean()),
        "cov_score": float(score[valid].mean()),
        "token_corr/lemma1": correlation(d_h[valid], lemma[valid]),
    }
    if logits_jvp is not None:
        jv = lemma1_from_delta(logits_before, logits_jvp, dtype=torch.float64)
        per_token["pred_jvp"] = jv[valid]
        record["pred_jvp"] = float(jv[valid].mean())
        record["token_corr/jvp"] = correlation(d_h[valid], jv[valid])
    return record, per_token
