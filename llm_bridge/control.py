"""Entropy control on language-model tokens: the torch twin of the tabular world's
``softmax_theory.algorithms.StepControl``, on the same paths, solver and refusals
(``softmax_theory.control``).

``predictive``: the step aims at H*(t+1) less the last step's forecast error. Before each of the
step's U optimiser updates, an optimiser pre-hook picks the bonus coefficient c (the loss
−c·agg(H)) whose forecast

    Ĥ_after(c) = Ĥ_now + ∇H̄·Δθ(c),   Δθ(c) = the optimiser's update for g_pg − c·g_H

meets Ĥ_now + (aim − Ĥ_now)/(U − j) (``solve_coef``, bisection), then writes g_pg − c·g_H into
the gradients and lets the update happen. Δθ(c) is the optimiser's own rule, Adam's moments
and bias corrections included (``probe.optimizer_update``); g_pg and g_H = ∇agg(H) come from
one forward of each micro-batch (two backward passes); ∇H̄, the gradient of the update's
token-mean entropy, is g_H rescaled (the loss's token-mean aggregation divides Σ H by a fixed
count). Ĥ_now starts at the step's measured ``entropy`` and moves by each update's forecast.

``pi``: c = Kp·e + Ki·Σe for the whole step (e = H*(t) − H_t), through the loss's own bonus.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from llm_bridge.probe import optimizer_update
from softmax_theory.control import (
    ControlConfig,
    Controller,
    ControlState,
    PathKind,
    solve_coef,
    step_aims,
    step_end,
    target_path,
)


class EntropyController:
    """One run's controller, for either engine: ``begin`` a step with its measured entropy,
    the loss hands each micro-batch's entropy term to ``entropy_term``, the optimiser's
    pre-hook (registered here) sets each update's coefficient, ``finish`` gives the step's
    ``control/*`` keys."""

    def __init__(
        self,
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        cfg: ControlConfig,
        steps: int,
        vocab_size: int,
        updates_per_step: int,
    ):
        self.cfg, self.steps, self.updates = cfg, steps, updates_per_step
        self.max_entropy = math.log(vocab_size)
        self.opt = opt
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.state: ControlState | None = None
        self.active = False
        if cfg.control_path is PathKind.FILE or not cfg.control_relative:
            # targets that do not scale with H₀ are checked now, before the first rollout
            target_path(cfg, 1.0, steps, self.max_entropy)
        self.hook = opt.register_step_pre_hook(self.before_update)

    @property
    def predictive(self) -> bool:
        return self.cfg.entropy_control is Controller.PREDICTIVE

    def resume(self, records: list[dict[str, Any]]) -> None:
        """The state after the logged steps (a resumed run): the path from step 0's entropy,
        the last forecast, the PI integral over the steps the path held."""
        steps = [r for r in records if "entropy" in r]
        if not steps:
            return
        self.state = ControlState(
            target_path(self.cfg, steps[0]["entropy"], self.steps, self.max_entropy),
            step=records[-1]["step"] + 1,
            pred_after=records[-1].get("control/pred_after"),
            integral=sum(r["control/now"] - r["entropy"] for r in steps if "control/now" in r),
        )

    def begin(self, step: int, entropy: float) -> float:
        """Start step ``step`` at its measured entropy; returns the coefficient the loss applies
        itself (PI's; 0 for the predictive controller, whose c goes in through the gradients)."""
        if self.state is None:
            path = target_path(self.cfg, entropy, self.steps, self.max_entropy)
            self.state = ControlState(path, step=step)
        self.aims = step_aims(self.state, step, entropy, self.cfg)
        self.h_est = entropy
        self.coefs: list[float] = []
        self.active = self.predictive and self.aims.aim is not None
        self.reset_terms()
        if self.aims.pi is not None:
            self.coefs.append(self.aims.pi)
            return self.aims.pi
        return 0.0

    def reset_terms(self) -> None:
        # g_H, parameter-sized: kept only while the forecast needs it (memory.py counts it)
        self.g_h = [torch.zeros_like(p) for p in self.params] if self.active else []
        self.h_sum = self.agg_sum = self.tokens = 0.0

    def entropy_term(self, term: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor) -> None:
        """A micro-batch's aggregated entropy ``term`` (with its graph; the loss then calls
        ``backward`` on its own part), its per-token ``entropy`` and ``mask`` [b, R]."""
        if not self.active:
            return
        grads = torch.autograd.grad(term, self.params, retain_graph=True, allow_unused=True)
        for acc, g in zip(self.g_h, grads, strict=True):
            if g is not None:
                acc.add_(g)
        m = mask.to(entropy.dtype)
        self.h_sum += float((entropy.detach() * m).sum())
        self.agg_sum += float(term.detach())
        self.tokens += float(m.sum())

    def forecast(self, c: float, g_pg: dict[int, torch.Tensor], g_mean: list) -> float:
        """∇H̄·Δθ(c): the update's first-order entropy change at coefficient c."""
        grads = {id(p): g_pg[id(p)] - c * gh for p, gh in zip(self.params, self.g_h, strict=True)}
        delta = optimizer_update(self.opt, grads)
        return float(
            sum((gm * delta[id(p)]).sum() for p, gm in zip(self.params, g_mean, strict=True))
        )

    def before_update(self, opt, args, kwargs) -> None:
        """The optimiser pre-hook: the coefficient of the update about to be taken."""
        if not self.active or self.agg_sum == 0 or self.tokens == 0:
            return
        g_pg = {
            id(p): (torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
            for p in self.params
        }
        scale = (self.h_sum / self.agg_sum) / self.tokens  # ∇H̄ = scale · ∇agg(H)
        g_mean = [scale * g for g in self.g_h]
        left = self.updates - len(self.coefs)
        want = self.h_est + (self.aims.aim - self.h_est) / max(left, 1)
        base = self.h_est

        def ahead(c: float) -> float:
            return base + self.forecast(c, g_pg, g_mean)

        # 40 halvings: Adam's early updates are close to −lr·sign(g), so where the gradient is
        # small the forecast is steep in c, and fewer halvings land off the aim
        c = solve_coef(ahead, want, self.cfg.control_coef_min, self.cfg.control_coef_max)
        for p, gh in zip(self.params, self.g_h, strict=True):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.add_(gh, alpha=-c)
        self.coefs.append(c)
        self.h_est = ahead(c)
        self.reset_terms()

    def finish(self) -> dict[str, float]:
        """The step's ``control/*`` keys, and the state carried to the next step."""
        pred = self.h_est if self.predictive and self.aims.aim is not None else None
        keys, self.state = step_end(self.state, self.aims, self.coefs, pred)
        self.active = False
        return keys

    def close(self) -> None:
        self.hook.remove()


__all__ = ["EntropyController"]
