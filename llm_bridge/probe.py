"""The per-step entropy probe: measure the step's entropy change on its own tokens and hold it
against the theory's predictions, one micro-batch at a time.

After the update, for each probed micro-batch: the logits under θ_old (a functional call with the
parameters kept from before the update), under θ_new, and their first-order change J·Δθ (a
Jacobian-vector product at θ_old) are reduced to per-token scalars in chunks and dropped
(``llm_bridge.forward``, ``llm_bridge.head``). On the probed tokens (states s_t, sampled y_t):

- ``delta_entropy``: mean of H(z'_t) − H(z_t), the measured change;
- ``pred_lemma1``: mean of −Cov_π(log π, z' − z) (Lemma 1 with the actual logit change);
- ``pred_jvp``: mean of −Cov_π(log π, J·Δθ), the first-order forecast from the parameter update;
- covariance estimators from the sampled tokens alone (each predicts ΔH ∝ −estimator):
  ``cov_mean`` (the paper's batch-centred token covariance), ``cov_group`` (Fig. 8's response
  covariance within prompt groups), ``cov_state`` ((log π(y) − E_π log π)·A, centred at each
  state: a one-sample estimate of Theorem 2's Cov_π(log π, A)) and ``cov_score`` (Lemma 1 applied
  to a score-function step on y alone: A·[π(y)(log π(y) + H) − Cov_π(log π, π)]).

The record also splits ``pred_lemma1`` over token classes (``attr/*``, by the sign of A and
whether the sampled token was likely, and by whether its ratio was clipped at some update of
the step; ``softmax_theory.attribution`` holds the definitions both worlds share). Each token's
part is Lemma 1 at its own state, ``pred_lemma1_t``/n, so each family sums to ``pred_lemma1``.

Both engines call ``measure_tokens`` and ``probe_record``; under several processes,
``gather_tokens`` joins every rank's tokens so one record covers the whole step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llm_bridge.forward import (
    Params,
    backbone_fn,
    forward_tangent,
    head_spec,
    head_weight,
    jvp_ready,
    logits_fn,
    micro_slices,
    response_hidden,
    response_logits,
)
from llm_bridge.head import head_probe_stats
from llm_bridge.losses import truncated_is_weights
from llm_bridge.rollout import Rollouts
from llm_bridge.token_stats import flat_group_covariance, token_probe_stats
from softmax_theory.attribution import attribution_parts
from softmax_theory.policy import PolicyLossConfig
from softmax_theory.stats import correlation


def forecast_rule(opt: torch.optim.Optimizer, group: dict) -> bool:
    """Whether the update forecast of ``opt``'s parameter ``group`` is plain SGD's (True) or
    Adam's/AdamW's (False); every other rule is refused in one line naming the optimizer: SGD
    with momentum or weight decay, Adam with (coupled) weight decay, amsgrad, maximize, and any
    other optimiser. The one home of what ``optimizer_update`` and ``control.UpdateForecast``
    can forecast."""
    if group.get("amsgrad") or group.get("maximize"):
        raise ValueError("optimizer: no update forecast for amsgrad or maximize")
    if isinstance(opt, torch.optim.SGD):
        if group.get("momentum", 0) or group.get("weight_decay", 0):
            raise ValueError("optimizer: the forecast supports plain SGD only")
        return True
    if not isinstance(opt, torch.optim.Adam | torch.optim.AdamW):
        raise ValueError(f"optimizer: no update forecast for {type(opt).__name__}")
    if group.get("weight_decay", 0) and not isinstance(opt, torch.optim.AdamW):
        raise ValueError("optimizer: the forecast supports Adam without weight decay")
    return False


def optimizer_update(
    opt: torch.optim.Optimizer, grads: dict[int, torch.Tensor] | None = None
) -> dict[int, torch.Tensor]:
    """The parameter change Δθ that ``opt.step()`` is about to make, from the gradients and the
    optimiser's state (SGD without momentum; Adam/AdamW: its moments, bias corrections and
    decoupled weight decay; ``forecast_rule``), computed before the step; keyed by
    ``id(parameter)``. ``grads`` (by ``id``) stands in for the parameters' ``.grad``: the update
    a gradient would make. A test checks it against the change the step then makes."""
    out = {}
    for group in opt.param_groups:
        lr = group["lr"]
        live = [
            (p, g.detach())
            for p in group["params"]
            if (g := p.grad if grads is None else grads.get(id(p))) is not None
        ]
        if not live:
            continue
        sgd = forecast_rule(opt, group)
        for p, g in live:
            if sgd:
                out[id(p)] = -lr * g
                continue
            beta1, beta2 = group["betas"]
            state = opt.state.get(p, {})
            step = int(state.get("step", 0)) + 1
            m = beta1 * state.get("exp_avg", torch.zeros_like(g)) + (1 - beta1) * g
            v = beta2 * state.get("exp_avg_sq", torch.zeros_like(g)) + (1 - beta2) * g * g
            denom = (v / (1 - beta2**step)).sqrt() + group["eps"]
            delta = -lr * (m / (1 - beta1**step)) / denom
            if group.get("weight_decay", 0):
                delta = delta - lr * group["weight_decay"] * p.detach()
            out[id(p)] = delta
    return out


def unwrapped_optimizer(opt) -> torch.optim.Optimizer:
    """The torch optimiser inside a wrapper (accelerate's ``AcceleratedOptimizer``)."""
    while isinstance(getattr(opt, "optimizer", None), torch.optim.Optimizer):
        opt = opt.optimizer
    return opt


class UpdateForecast:
    """Δθ of a step, forecast update by update: before each ``step()`` of the optimiser (a step
    pre-hook, so both engines forecast the same way whoever calls ``step``) it adds the update
    the optimiser is about to make (``optimizer_update``) to the step's total, and counts the
    updates. With ``jvp`` False it only counts. Use as a context manager, or ``close()``."""

    def __init__(self, opt, jvp: bool = True):
        self.opt, self.jvp = unwrapped_optimizer(opt), jvp
        self.updates = 0
        self.total: dict[int, torch.Tensor] = {}
        self._handle = self.opt.register_step_pre_hook(self._before_step)

    def _before_step(self, opt, args, kwargs) -> None:
        self.updates += 1
        if not self.jvp:
            return
        for key, delta in optimizer_update(opt).items():
            self.total[key] = delta if key not in self.total else self.total[key] + delta

    def delta(self, model) -> Params:
        """The step's forecast Δθ by parameter name (zero for a parameter no update moved)."""
        return {
            n: self.total[id(p)] if id(p) in self.total else torch.zeros_like(p)
            for n, p in model.named_parameters()
        }

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> UpdateForecast:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def snapshot(model) -> Params:
    """A detached copy of every parameter by name: θ_old, kept for the probe."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def parameter_delta(model, params_before: Params) -> Params:
    """θ_new − θ_old by name: the change the step made (the slow reference of the forecast)."""
    return {n: p.detach() - params_before[n] for n, p in model.named_parameters()}


@dataclass(frozen=True)
class ProbeTokens:
    """Per-token probe values over the probed responses' valid tokens (float64, [n_tokens]),
    the response each token belongs to, and the prompt group of each response."""

    values: dict[str, torch.Tensor]
    response: torch.Tensor  # [n_tokens] index into ``group``
    group: torch.Tensor  # [n_responses]

    @property
    def n_tokens(self) -> int:
        return int(self.response.numel())


@torch.no_grad()
def _micro_stats(
    model,
    roll: Rollouts,
    sl: slice,
    temperature: float,
    params_before: Params,
    delta: Params | None,
) -> dict[str, torch.Tensor]:
    """The probe's per-token fields for rows ``sl`` of ``roll``, each [b, R]."""
    tokens = roll.response_ids[sl]
    b, r = tokens.shape
    if head_spec(model) is None:  # logits path: one micro-batch of [b, R, V] at a time
        z_new = response_logits(model, roll, temperature, sl)
        if delta is None:
            z_old, dz = response_logits(model, roll, temperature, sl, params_before), None
        else:
            with jvp_ready(model):
                z_old, dz = forward_tangent(
                    logits_fn(model, roll, sl, temperature), params_before, delta
                )
        stats = token_probe_stats(z_old, z_new, tokens, dz)
        return {k: v.reshape(b, r) for k, v in stats.items()}
    h_new = response_hidden(model, roll, sl)
    dh = dw = None
    if delta is None:
        h_old = response_hidden(model, roll, sl, params_before)
    else:
        with jvp_ready(model):
            h_old, dh = forward_tangent(backbone_fn(model, roll, sl), params_before, delta)
        dw = head_weight(model, delta)
        dh = dh.reshape(b * r, -1)
    stats = head_probe_stats(
        h_old.reshape(b * r, -1),
        head_weight(model, params_before),
        h_new.reshape(b * r, -1),
        head_weight(model),
        tokens.reshape(-1),
        temperature,
        dh,
        dw,
    )
    return {k: v.reshape(b, r) for k, v in stats.items()}


def measure_tokens(
    model,
    roll: Rollouts,
    advantages: torch.Tensor,
    group: torch.Tensor,
    params_before: Params,
    delta: Params | None = None,
    rows: torch.Tensor | None = None,
    micro_batch_size: int | None = None,
    temperature: float = 1.0,
    clipped: torch.Tensor | None = None,
    carried: dict[str, torch.Tensor] | None = None,
) -> ProbeTokens:
    """Measure the update on the responses ``rows`` (all by default), streaming micro-batches.

    Args:
      model: the policy after the update (θ_new).
      roll: the step's rollouts; advantages [B, R] (per token); group [B] prompt index.
      params_before: θ_old by parameter name (``snapshot`` before the update).
      delta: Δθ by name for the JVP forecast (``parameter_delta``), or None for no forecast.
      rows: indices of the responses to probe.
      micro_batch_size: responses per forward pass.
      temperature: the policy's temperature.
      clipped: [B, R] bool, the tokens clipped at some update of the step (for the
        attribution's clipped/unclipped split), or None where the engine does not know them.
      carried: other [B, R] values kept per probed token, under their names: ``is_capped``
        (the truncated importance weight reached its cap: the attribution's capped split),
        ``sampler_logp`` (the sampler's log-probs, for the token files).
    """
    rows = torch.arange(roll.input_ids.shape[0]) if rows is None else torch.as_tensor(rows)
    sub = roll.subset(rows)
    adv = advantages[rows.to(advantages.device)]
    clip = None if clipped is None else clipped[rows.to(clipped.device)]
    kept = {k: v[rows.to(v.device)] for k, v in (carried or {}).items()}
    parts, responses = [], []
    for sl in micro_slices(len(rows), micro_batch_size):
        stats = _micro_stats(model, sub, sl, temperature, params_before, delta)
        mask = sub.response_mask[sl].bool()
        stats["advantage"] = adv[sl].double()
        if clip is not None:
            stats["clipped"] = clip[sl].double()
        for key, value in kept.items():
            stats[key] = value[sl].double()
        parts.append({k: v[mask].cpu() for k, v in stats.items()})
        responses.append(mask.nonzero()[:, 0].cpu() + sl.start)
    values = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return ProbeTokens(values, torch.cat(responses), torch.as_tensor(group)[rows.cpu()].cpu())


@torch.no_grad()
def stream_own_entropy_term(
    model, roll: Rollouts, micro_batch_size: int | None, temperature: float = 1.0
) -> torch.Tensor:
    """Each response token's own-update entropy term π(y)(log π(y) + H) − Cov_π(log π, π) under
    the current parameters, [B, R] float64 (0 on padding), one micro-batch at a time: the
    oracle selector's score (``softmax_theory.attribution.own_entropy_term``)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    parts = []
    for sl in micro_slices(roll.input_ids.shape[0], micro_batch_size):
        stats = _micro_stats(model, roll, sl, temperature, params, None)
        parts.append(stats["score"].double() * roll.response_mask[sl])
    return torch.cat(parts)


def gather_tokens(tokens: ProbeTokens) -> ProbeTokens:
    """Every rank's probed tokens, on every rank (identity without torch.distributed); group
    ids are offset per rank, so groups of different ranks stay apart."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tokens
    mine = {
        "values": {k: v.numpy() for k, v in tokens.values.items()},
        "response": tokens.response.numpy(),
        "group": tokens.group.numpy(),
    }
    every: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, mine)
    values, responses, groups = {k: [] for k in mine["values"]}, [], []
    values["rank"] = []  # which process measured each token
    n_resp = n_group = 0
    for rank, part in enumerate(every):
        for k in mine["values"]:
            values[k].append(part["values"][k])
        values["rank"].append(np.full(part["response"].size, float(rank)))
        responses.append(part["response"] + n_resp)
        groups.append(part["group"] + n_group)
        n_resp += part["group"].size
        n_group += int(part["group"].max()) + 1 if part["group"].size else 0
    return ProbeTokens(
        {k: torch.from_numpy(np.concatenate(v)) for k, v in values.items()},
        torch.from_numpy(np.concatenate(responses)),
        torch.from_numpy(np.concatenate(groups).astype(np.int64)),
    )


# Seeds the probe's own generator: which responses a step probes never moves training's stream.
PROBE_ROWS_SEED = 1_000_033


def probe_rows(seed: int, step: int, n_rows: int, n: int | None) -> torch.Tensor | None:
    """A seeded random subset of ``n`` of the step's ``n_rows`` responses, sorted, from the
    probe's own generator (so probing never changes training); None for all of them. Both
    engines draw it the same way."""
    if n is None or n >= n_rows:
        return None
    gen = torch.Generator().manual_seed(seed * PROBE_ROWS_SEED + step)
    return torch.randperm(n_rows, generator=gen)[:n].sort().values


def carried_values(
    policy_loss: PolicyLossConfig,
    old_logp: torch.Tensor,
    sampler_logp: torch.Tensor | None,
    mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The per-token values the probe keeps beside its own ([B, R] each): the sampler's
    log-probs (None where the trainer sampled: the probe's θ_old log-probs stand in for them)
    and, with ``rollout_is``, whether each token's truncated importance weight reached its cap
    (the attribution's capped split)."""
    carried = {} if sampler_logp is None else {"sampler_logp": sampler_logp * mask}
    if policy_loss.rollout_is is not None:
        carried["is_capped"] = truncated_is_weights(
            old_logp,
            old_logp if sampler_logp is None else sampler_logp,
            mask,
            policy_loss.rollout_is,
            policy_loss.rollout_is_threshold,
        )[1]
    return carried


class StepProbe:
    """The probe of one GRPO step, the same in both engines. ``begin`` (before the step's first
    update) keeps θ_old and starts the forecast: each update's Δθ from the optimiser before it
    steps (``UpdateForecast``), so ``pred_jvp`` is a forecast made before the update in either
    engine. ``finish`` (after the last update) measures the step's probed responses
    (``measure_tokens``) and joins every process's tokens (``gather_tokens``)."""

    def __init__(
        self,
        model,
        *,
        jvp: bool,
        micro_batch_size: int | None,
        temperature: float,
        seed: int,
        probe_responses: int | None,
    ):
        self.model, self.jvp, self.micro_batch_size = model, jvp, micro_batch_size
        self.temperature, self.seed, self.probe_responses = temperature, seed, probe_responses
        self.params_before: Params | None = None  # θ_old of the step begun
        self._forecast: UpdateForecast | None = None

    @property
    def pending(self) -> bool:
        """Whether a step has begun and not finished."""
        return self._forecast is not None

    def begin(self, opt) -> None:
        """Before the step's first update: keep θ_old and watch ``opt``, the optimiser about to
        take the step's updates."""
        self.params_before = snapshot(self.model)
        self._forecast = UpdateForecast(opt, self.jvp)

    def cancel(self) -> None:
        """End a begun step without measuring it (a step with no valid token)."""
        self._forecast.close()
        self._forecast = None

    def finish(
        self,
        step: int,
        roll: Rollouts,
        advantages: torch.Tensor,
        group: torch.Tensor,
        carried: dict[str, torch.Tensor] | None = None,
        clipped: torch.Tensor | None = None,
    ) -> tuple[dict, ProbeTokens]:
        """After the step's last update: its probe record and its tokens (every process's).
        ``advantages`` [B, R] per token, ``group`` [B] prompt index, ``carried`` as
        ``carried_values`` gives, ``clipped`` [B, R] where the engine knows which tokens were
        clipped."""
        forecast, self._forecast = self._forecast, None
        forecast.close()
        was_training = self.model.training
        self.model.eval()
        tokens = measure_tokens(
            self.model,
            roll,
            advantages,
            torch.as_tensor(group),
            self.params_before,
            forecast.delta(self.model) if self.jvp else None,
            rows=probe_rows(self.seed, step, roll.input_ids.shape[0], self.probe_responses),
            micro_batch_size=self.micro_batch_size,
            temperature=self.temperature,
            clipped=clipped,
            carried=carried,
        )
        self.params_before = None
        self.model.train(was_training)
        tokens = gather_tokens(tokens)
        if "sampler_logp" not in tokens.values:  # the trainer sampled: the sampler is π_old
            tokens.values["sampler_logp"] = tokens.values["logp"]
        record = probe_record(tokens)
        record["probe/updates"] = forecast.updates
        return record, tokens


def token_arrays(tokens: ProbeTokens) -> dict[str, np.ndarray]:
    """A step's per-token probe values as the token files hold them: float64 [n_tokens] each,
    and ``response`` (int64), the probed response each token belongs to."""
    arrays = {k: v.detach().cpu().double().numpy() for k, v in tokens.values.items()}
    arrays["response"] = tokens.response.detach().cpu().numpy().astype(np.int64)
    return arrays


def _corr(x: torch.Tensor, y: torch.Tensor) -> float | None:
    return correlation(x.numpy(), y.numpy())


def probe_record(tokens: ProbeTokens) -> dict[str, float | int | None]:
    """The step's probe record from its per-token values (see the module docstring)."""
    v = tokens.values
    adv, logp, h = v["advantage"], v["logp"], v["entropy"]
    n = tokens.n_tokens
    if n == 0:
        raise ValueError("probe: no valid token among the probed responses")
    cov = (logp - logp.mean()) * (adv - adv.mean())  # the paper's estimator over these tokens
    record: dict[str, float | int | None] = {
        "entropy_after": float((h + v["delta_entropy"]).mean()),
        "delta_entropy": float(v["delta_entropy"].mean()),
        "pred_lemma1": float(v["pred_lemma1"].mean()),
        "cov_mean": float(cov.mean()),
        "cov_group": float(flat_group_covariance(logp, adv, tokens.response, tokens.group)),
        "cov_state": float(((logp + h) * adv).mean()),
        "cov_score": float((adv * v["score"]).mean()),
        "token_corr/lemma1": _corr(v["delta_entropy"], v["pred_lemma1"]),
        "probe/tokens": n,
        "probe/responses": int(tokens.group.numel()),
    }
    if "pred_jvp" in v:
        record["pred_jvp"] = float(v["pred_jvp"].mean())
        record["token_corr/jvp"] = _corr(v["delta_entropy"], v["pred_jvp"])
    record.update(
        attribution_parts(
            v["pred_lemma1"].numpy() / n,
            adv.numpy(),
            logp.numpy(),
            h.numpy(),
            None if "clipped" not in v else v["clipped"].numpy() > 0,
            is_capped=None if "is_capped" not in v else v["is_capped"].numpy() > 0,
        )
    )
    return record
