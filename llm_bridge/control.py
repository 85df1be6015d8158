"""Entropy control on language-model tokens: the torch twin of the tabular world's
``softmax_theory.algorithms.StepControl``, on the same paths, solver and refusals
(``softmax_theory.control``).

``predictive``: the step aims at H*(t+1) less the last step's forecast error. Before each of the
step's U optimiser updates, an optimiser pre-hook picks the bonus coefficient c (the loss
−c·agg(H)) whose forecast

    Ĥ_after(c) = Ĥ_now + ∇H̄·Δθ(c),   Δθ(c) = the optimiser's update for g_pg − c·g_H

meets Ĥ_now + (aim − Ĥ_now)/(U − j) (``solve_coef``, Brent's method on the bounds), then
writes g_pg − c·g_H into the gradients and lets the update happen. Δθ(c) is the optimiser's own
rule, Adam's moments and bias corrections included (``UpdateForecast``, on flat copies made once
per update; its slow reference, ``probe.optimizer_update`` parameter by parameter, is
``reference.naive_update_forecast``); g_pg and g_H = ∇agg(H) come from
one forward of each micro-batch (two backward passes); ∇H̄, the gradient of the update's
token-mean entropy, is g_H rescaled (the loss's token-mean aggregation divides Σ H by a fixed
count). Ĥ_now starts at the step's measured ``entropy`` and moves by each update's forecast.

``pi``: c = Kp·e + Ki·Σe for the whole step (e = H*(t) − H_t), through the loss's own bonus.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from llm_bridge.probe import forecast_rule
from llm_bridge.reference import naive_update_forecast
from softmax_theory.control import (
    Actuator,
    ControlConfig,
    Controller,
    ControlState,
    PathKind,
    solve_coef,
    step_aims,
    step_end,
    target_path,
)


class UpdateForecast:
    """∇H̄·Δθ(c) for any bonus coefficient c, from flat copies of the gradients and the
    optimiser's moments made once per update; each c is then one pass over them. The fast twin
    of ``reference.naive_update_forecast`` (``probe.optimizer_update`` per parameter per c).

    With g(c) = g_pg − c·g_H, Adam's moments m, v before the update and its bias corrections
    b₁ = 1 − β₁ᵗ, b₂ = 1 − β₂ᵗ of the update's step t (Kingma & Ba 2015, Alg. 1; AdamW's
    decoupled decay λ, Loshchilov & Hutter 2019):

        Δθ(c) = −lr·(A − c·k₁·g_H) / (sqrt(V + k₂·g(c)²) + ε) − lr·λ·θ
        A = (β₁·m + (1 − β₁)·g_pg)/b₁,  k₁ = (1 − β₁)/b₁,  V = β₂·v/b₂,  k₂ = (1 − β₂)/b₂

    and SGD's Δθ(c) = −lr·g(c), linear in c. ∇H̄ = ``scale``·g_H. For KL-Cov's coefficient k
    (``direction`` g_KL, ``sign`` +1) g(k) = g_pg + k·g_KL, and A − c·k₁·g_H becomes
    A + k·k₁·g_KL. ``params`` in the optimiser's group order, all of one dtype and device;
    ``g_h`` (and ``direction``): one flat tensor in that order. Holds g_pg, A, V and two work
    buffers, each the size of the parameters (``nbytes``)."""

    def __init__(
        self,
        opt: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        g_h: torch.Tensor,  # [P], the parameters' g_H end to end
        scale: float,
        direction: torch.Tensor | None = None,  # [P], the actuator's gradient g_a
        sign: float = -1.0,
    ):
        # the actuator moves the gradient along sign·direction: the bonus's g_pg − c·g_H
        # (direction g_H, sign −1), or KL-Cov's g_pg + k·g_KL (direction g_KL, sign +1)
        self.scale, self.const, self.sign = scale, 0.0, sign
        self.direction = g_h if direction is None else direction
        self.segments: list[tuple] = []  # (h, g_a, g0, A, V, lr, k1, k2, eps) per run
        self.linear: list[tuple[float, float]] = []  # SGD: (∇H̄·Δθ(0), its slope in c)
        where = {id(p): i for i, p in enumerate(params)}
        offsets = [0]
        for p in params:
            offsets.append(offsets[-1] + p.numel())
        for group in opt.param_groups:
            sgd = forecast_rule(opt, group)
            idx = [where[id(p)] for p in group["params"] if id(p) in where]
            # runs of parameters that are contiguous in g_h and share Adam's step count
            runs: list[tuple[int, list[int]]] = []
            for i in idx:
                step = int(opt.state.get(params[i], {}).get("step", 0))
                if runs and runs[-1][1][-1] == i - 1 and runs[-1][0] == step:
                    runs[-1][1].append(i)
                else:
                    runs.append((step, [i]))
            for step, run in runs:
                self._add(opt, group, params, step + 1, run, g_h, offsets, sgd)
        size = max((seg[1].numel() for seg in self.segments), default=0)
        self.t = g_h.new_empty(size)
        self.u = g_h.new_empty(size)

    def _add(self, opt, group, params, step, idx, g_h, offsets, sgd) -> None:
        """One run's flat copies; ``step``: Adam's step count of the update about to be made."""
        h = g_h[offsets[idx[0]] : offsets[idx[-1] + 1]]
        d = self.direction[offsets[idx[0]] : offsets[idx[-1] + 1]]
        g0 = torch.cat(
            [
                torch.zeros(params[i].numel(), dtype=h.dtype, device=h.device)
                if params[i].grad is None
                else params[i].grad.detach().reshape(-1)
                for i in idx
            ]
        )
        lr = group["lr"]
        if sgd:
            slope = -self.sign * lr * self.scale * float(h @ d)
            self.linear.append((-lr * self.scale * float(h @ g0), slope))
            return
        beta1, beta2 = group["betas"]
        b1, b2 = 1 - beta1**step, 1 - beta2**step

        def moment(name: str) -> torch.Tensor:
            return torch.cat(
                [
                    opt.state[params[i]][name].reshape(-1)
                    if name in opt.state.get(params[i], {})
                    else torch.zeros(params[i].numel(), dtype=h.dtype, device=h.device)
                    for i in idx
                ]
            )

        a = moment("exp_avg").mul_(beta1).add_(g0, alpha=1 - beta1).div_(b1)
        v = moment("exp_avg_sq").mul_(beta2 / b2)
        if group.get("weight_decay", 0):
            theta = torch.cat([params[i].detach().reshape(-1) for i in idx])
            self.const -= lr * group["weight_decay"] * self.scale * float(h @ theta)
        k1 = self.sign * (1 - beta1) / b1
        self.segments.append((h, d, g0, a, v, lr, k1, (1 - beta2) / b2, group["eps"]))

    @property
    def nbytes(self) -> int:
        """The bytes it holds beside g_H: g_pg, A, V and the two work buffers."""
        held = sum(t.nbytes for seg in self.segments for t in seg[2:5])
        return held + self.t.nbytes + self.u.nbytes

    def __call__(self, c: float) -> float:
        total = self.const + sum(f0 + c * slope for f0, slope in self.linear)
        for h, d, g0, a, v, lr, k1, k2, eps in self.segments:
            n = h.numel()
            t, u = self.t[:n], self.u[:n]
            torch.add(g0, d, alpha=self.sign * c, out=t)  # g(c)
            t.square_()
            torch.add(v, t, alpha=k2, out=u)
            u.sqrt_().add_(eps)  # sqrt(V + k₂·g(c)²) + ε
            torch.add(a, d, alpha=c * k1, out=t)  # A + s·c·(1 − β₁)/b₁·g_a
            t.div_(u)
            total -= lr * self.scale * float(h @ t)
        return total


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
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        # in the optimiser's order, so that each group's g_H is one slice of the flat g_H
        self.params = [
            p for group in opt.param_groups for p in group["params"] if id(p) in trainable
        ]
        kinds = {(p.dtype, p.device) for p in self.params}
        self.flat = len(kinds) == 1  # else g_H per parameter and the slow forecast
        # KL-Cov's coefficient: the loss hands its KL part to ``actuator_term``, and the
        # update's gradient is g_pg + k·g_KL (the bonus's: g_pg − c·g_H)
        self.kl = cfg.control_actuator is Actuator.PPO_KL_COEF
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

    def begin(self, step: int, entropy: float) -> None:
        """Start step ``step`` at its measured entropy; what the loss then takes from the
        controller is ``loss_settings``."""
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

    def loss_settings(self) -> dict[str, Any]:
        """What the step's loss takes from the controller (after ``begin``): the bonus (PI's;
        0 while the predictive controller writes it into the gradients) or, on KL-Cov's
        coefficient, ``kl_coef`` (PI's) or ``actuator_term`` (the predictive controller's);
        before the path starts, the loss as configured."""
        if not self.kl:
            return {"entropy_coeff": self.aims.pi or 0.0}
        if self.aims.pi is not None:
            return {"kl_coef": self.aims.pi}
        return {"actuator_term": self.actuator_term} if self.active else {}

    def reset_terms(self) -> None:
        # g_H, parameter-sized: kept only while the forecast needs it (memory.py counts it);
        # one flat tensor, and each parameter's a view of it
        self.g_h_flat, self.g_h = self._gradient_buffer()
        self.g_a_flat, self.g_a = self._gradient_buffer() if self.kl else (None, [])
        self.h_sum = self.agg_sum = self.tokens = 0.0

    def _gradient_buffer(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """A zero gradient over the parameters while the controller forecasts: one flat tensor
        and each parameter's view of it (or one tensor per parameter, where they differ in
        dtype or device); none otherwise."""
        if not self.active:
            return None, []
        if not self.flat:
            return None, [torch.zeros_like(p) for p in self.params]
        p0 = self.params[0]
        flat = torch.zeros(sum(p.numel() for p in self.params), dtype=p0.dtype, device=p0.device)
        parts = torch.split(flat, [p.numel() for p in self.params])
        return flat, [g.view_as(p) for g, p in zip(parts, self.params, strict=True)]

    def entropy_term(self, term: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor) -> None:
        """A micro-batch's aggregated entropy ``term`` (with its graph; the loss then calls
        ``backward`` on its own part), its per-token ``entropy`` and ``mask`` [b, R]."""
        if not self.active:
            return
        self._accumulate(term, self.g_h)
        m = mask.to(entropy.dtype)
        self.h_sum += float((entropy.detach() * m).sum())
        self.agg_sum += float(term.detach())
        self.tokens += float(m.sum())

    def actuator_term(self, term: torch.Tensor) -> None:
        """A micro-batch's aggregated KL-Cov part at coefficient 1, with its graph (the loss's
        own part then holds none of it): its gradient g_KL."""
        if self.active:
            self._accumulate(term, self.g_a)

    def _accumulate(self, term: torch.Tensor, into: list[torch.Tensor]) -> None:
        """∇term added into ``into`` (the graph kept for the loss's own backward)."""
        grads = torch.autograd.grad(term, self.params, retain_graph=True, allow_unused=True)
        for acc, g in zip(into, grads, strict=True):
            if g is not None:
                acc.add_(g)

    def before_update(self, opt, args, kwargs) -> None:
        """The optimiser pre-hook: the coefficient of the update about to be taken."""
        if not self.active or self.agg_sum == 0 or self.tokens == 0:
            return
        scale = (self.h_sum / self.agg_sum) / self.tokens  # ∇H̄ = scale · ∇agg(H)
        left = self.updates - len(self.coefs)
        want = self.h_est + (self.aims.aim - self.h_est) / max(left, 1)
        base = self.h_est
        sign = 1.0 if self.kl else -1.0
        if self.g_h_flat is not None:
            forecast = UpdateForecast(
                self.opt, self.params, self.g_h_flat, scale, self.g_a_flat, sign
            )
        else:

            def forecast(c: float) -> float:
                return naive_update_forecast(
                    self.opt, self.params, self.g_h, scale, c, self.g_a or None, sign
                )

        def ahead(c: float) -> float:
            return base + forecast(c)

        # to 1e-9 nats of the aim: Adam's early updates are close to −lr·sign(g), so where the
        # gradient is small the forecast is steep in c, and a looser c lands off the aim
        c = solve_coef(ahead, want, self.cfg.control_coef_min, self.cfg.control_coef_max)
        for p, ga in zip(self.params, self.g_a if self.kl else self.g_h, strict=True):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.add_(ga, alpha=sign * c)
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


__all__ = ["EntropyController", "UpdateForecast"]
