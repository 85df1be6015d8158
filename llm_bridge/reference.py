"""Slow, literal references for the streaming trainer and probe: whole-batch [B, R, V] logits and
the textbook formulas, in float64. The equivalence tests hold the fast paths to these; they use
memory in proportion to the batch × the vocabulary, so they are for small models only.
"""

from __future__ import annotations

import torch

from llm_bridge.forward import Params, jvp_ready, logits_fn, response_logits
from llm_bridge.probe import optimizer_update
from llm_bridge.rollout import Rollouts
from llm_bridge.token_stats import token_entropy_change


def naive_update_forecast(
    opt: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    g_h: list[torch.Tensor],
    scale: float,
    c: float,
    direction: list[torch.Tensor] | None = None,
    sign: float = -1.0,
) -> float:
    """∇H̄·Δθ(c), parameter by parameter: the update ``optimizer_update`` makes for the gradient
    g_pg + sign·c·g_a (g_pg: the parameters' ``.grad``, zero where there is none; g_a:
    ``direction``, default g_H, so the bonus's g_pg − c·g_H), dotted with ∇H̄ = ``scale``·g_H.
    The slow reference of ``control.UpdateForecast``."""
    direction = g_h if direction is None else direction
    grads = {
        id(p): (torch.zeros_like(p) if p.grad is None else p.grad.detach()) + sign * c * ga
        for p, ga in zip(params, direction, strict=True)
    }
    delta = optimizer_update(opt, grads)
    return float(sum((scale * gh * delta[id(p)]).sum() for p, gh in zip(params, g_h, strict=True)))


def naive_token_stats(logits: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """H and log π(y) from ``log_softmax`` over the whole vocabulary: [B, R, V] → [B, R]."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return {
        "entropy": -(logp.exp() * logp).sum(-1),
        "logp": logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1),
    }


def naive_lemma1(logits: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """−Cov_π(log π, δ) = −(E[log π·δ] − E[log π]·E[δ]) per token."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    d = delta.double()
    return -((p * logp * d).sum(-1) - (p * logp).sum(-1) * (p * d).sum(-1))


def naive_probe_rows(
    x: torch.Tensor, xa: torch.Tensor, dz: torch.Tensor | None, tokens: torch.Tensor
) -> torch.Tensor:
    """The probe's per-token fields (``token_stats.PROBE_FIELDS`` order) of rows x, xa, dz
    [n, V], one textbook formula each, in float64: [n, 6] (pred_jvp NaN without dz).

    score = π(y)(log π(y) + H) − Σ_a π_a²(log π_a + H) (Lemma 1 for Δz = e_y − π)."""
    stats = naive_token_stats(x, tokens)
    logp = torch.log_softmax(x.double(), dim=-1)
    p = logp.exp()
    entropy, logp_y = stats["entropy"], stats["logp"]
    cov_logp_p = (p * p * (logp + entropy.unsqueeze(-1))).sum(-1)
    jvp_pred = torch.full_like(entropy, float("nan")) if dz is None else naive_lemma1(x, dz)
    cols = (
        entropy,
        logp_y,
        token_entropy_change(x.double(), xa.double()),
        naive_lemma1(x, xa.double() - x.double()),
        logp_y.exp() * (logp_y + entropy) - cov_logp_p,
        jvp_pred,
    )
    return torch.stack(cols, dim=-1)


@torch.no_grad()
def reference_probe_record(
    model,
    params_before: Params,
    roll: Rollouts,
    advantages: torch.Tensor,
    group: torch.Tensor,
    temperature: float = 1.0,
    delta: Params | None = None,
) -> dict[str, float]:
    """The probe's record (``llm_bridge.probe``) from whole-batch logits and naive formulas."""
    tokens, valid = roll.response_ids, roll.response_mask.bool()
    z_old = response_logits(model, roll, temperature, params=params_before).double()
    z_new = response_logits(model, roll, temperature).double()
    before, after = naive_token_stats(z_old, tokens), naive_token_stats(z_new, tokens)
    logp, h, adv = before["logp"], before["entropy"], advantages.double()
    d_h = after["entropy"] - h
    lemma = naive_lemma1(z_old, z_new - z_old)
    logp_all = torch.log_softmax(z_old, -1)
    p = logp_all.exp()
    cov_logp_p = (p * p * logp_all).sum(-1) - (p * logp_all).sum(-1) * (p * p).sum(-1)
    score = logp.exp() * (logp + h) - cov_logp_p
    lp, a = logp[valid], adv[valid]
    seq_lp = (logp * valid).sum(-1) / valid.sum(-1)
    seq_adv = (adv * valid).sum(-1) / valid.sum(-1)
    cov_group = []
    for g in torch.unique(group):
        sel = group == g
        x, y = seq_lp[sel], seq_adv[sel]
        cov_group.append(((x - x.mean()) * (y - y.mean())).mean())
    record = {
        "entropy_after": float(after["entropy"][valid].mean()),
        "delta_entropy": float(d_h[valid].mean()),
        "pred_lemma1": float(lemma[valid].mean()),
        "cov_mean": float(((lp - lp.mean()) * (a - a.mean())).mean()),
        "cov_group": float(torch.stack(cov_group).mean()),
        "cov_state": float(((logp + h) * adv)[valid].mean()),
        "cov_score": float((adv * score)[valid].mean()),
        "token_corr/lemma1": float(torch.corrcoef(torch.stack([d_h[valid], lemma[valid]]))[0, 1]),
    }
    if delta is not None:
        with jvp_ready(model), torch.enable_grad():
            _, tangent = torch.func.jvp(
                logits_fn(model, roll, slice(None), temperature), (params_before,), (delta,)
            )
        jv = naive_lemma1(z_old, tangent)
        record["pred_jvp"] = float(jv[valid].mean())
        record["token_corr/jvp"] = float(torch.corrcoef(torch.stack([d_h[valid], jv[valid]]))[0, 1])
    return record
