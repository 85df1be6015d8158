"""One GRPO step's optimiser updates on its batch: ``epochs × mini_batches`` updates, each
accumulating the gradient of one mini-batch's loss over micro-batches of ``micro_batch_size``
responses.

``mini_batch_loss`` is the seam both the trainer and the tests call: the aggregation's normalisers
are the mini-batch's, not the micro-batch's, so the sum of the micro-batch losses is the
mini-batch loss whatever the split. token-mean divides by the step's valid tokens ÷ the number of
mini-batches: TRL's ``num_items_in_batch`` rule, under which every token of a step weighs the
same in each of its updates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from llm_bridge.config import TrainConfig
from llm_bridge.forward import micro_slices, response_entropy_logp
from llm_bridge.losses import (
    LossInputs,
    PolicyLossOutput,
    agg_loss,
    compute_policy_loss,
    kl_cov_split,
    select_by_scope,
)
from llm_bridge.rollout import Rollouts
from softmax_theory.policy import CovScope, PolicyLossConfig
from softmax_theory.stats import token_weighted_means


@dataclass(frozen=True)
class StepBatch:
    """A step's rollouts and what every pass over them reads; tensors [B, R] unless noted."""

    roll: Rollouts
    rewards: np.ndarray  # [B]
    group: np.ndarray  # [B] prompt index of each response
    advantages: torch.Tensor  # per token (the response's advantage on its valid tokens)
    entropy: torch.Tensor  # H(π_old(·|s_t)), nats
    old_logp: torch.Tensor  # log π_old(y_t|s_t)
    ref_logp: torch.Tensor | None  # log π_ref(y_t|s_t), when a KL penalty needs it
    # the token's own-update entropy term at θ_old (``own_entropy_term``), when a covariance
    # loss selects by it (the oracle) or measures its selection against it (probed steps)
    score: torch.Tensor | None = None
    # log π_sampler(y_t|s_t): the sampling engine's own log-probs (equal to old_logp when the
    # trainer samples), for the mismatch keys and the truncated importance weight
    sampler_logp: torch.Tensor | None = None
    # the rollouts' own keys for the run log (``step_record.rollout_keys``)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        return self.roll.response_mask


@dataclass(frozen=True)
class UpdateResult:
    """``metrics``: the loss's metrics, token-weighted over all the step's updates, and
    ``actor/pg_loss``, the mean mini-batch loss; ``clipped``: [B, R] bool, clipped at some
    update."""

    metrics: dict[str, float]
    n_updates: int
    clipped: torch.Tensor


def loss_normalisers(
    step_tokens: float,
    updates_per_epoch: int,
    mini_batch_responses: float,
    loss_scale_factor: float | None,
    response_budget: int,
    dp_size: int = 1,
) -> dict[str, float]:
    """``agg_loss``'s normalisers for every micro-batch of one optimiser update, in both engines,
    so that each ``loss_agg_mode`` means what it means in verl whatever the split:

    - token-mean: ÷ (the step's valid tokens ÷ updates per epoch): TRL's ``num_items_in_batch``
      rule, under which every token of a step weighs the same in each of its updates;
    - seq-mean-*: ÷ the mini-batch's responses (``mini_batch_responses``, every process's), a
      response that ``mask_truncated`` leaves out included (verl's trainer passes its mini-batch
      size; TRL's shuffled micro-batches could not count such responses apart);
    - seq-mean-token-sum-norm: ÷ ``loss_scale_factor``, by default the response budget.
    """
    return {
        "dp_size": dp_size,
        "batch_num_tokens": step_tokens / updates_per_epoch,
        "global_batch_size": mini_batch_responses,
        "loss_scale_factor": loss_scale_factor or float(response_budget),
    }


def loss_inputs(model, batch: StepBatch, rows: slice, temperature: float, grad: bool) -> LossInputs:
    """The loss's inputs on ``rows`` at the model's current parameters; with ``grad`` log π and
    H carry the graph."""
    with torch.set_grad_enabled(grad):
        entropy, logp = response_entropy_logp(model, batch.roll, rows, temperature)
    return LossInputs(
        log_prob=logp,
        old_log_prob=batch.old_logp[rows],
        advantages=batch.advantages[rows],
        response_mask=batch.mask[rows],
        entropy=entropy,
        ref_log_prob=None if batch.ref_logp is None else batch.ref_logp[rows],
        score=None if batch.score is None else batch.score[rows],
        sampler_log_prob=None if batch.sampler_logp is None else batch.sampler_logp[rows],
    )


def select_step_tokens(
    batch: StepBatch, cfg: TrainConfig, generator: torch.Generator
) -> torch.Tensor | None:
    """Clip-Cov/KL-Cov tokens chosen once per step over the whole batch at θ_old
    (``cov_scope`` global), or None for the other scopes."""
    if cfg.policy_loss.cov_scope is not CovScope.GLOBAL:
        return None
    inp = LossInputs(
        batch.old_logp, batch.old_logp, batch.advantages, batch.mask, score=batch.score
    )
    return select_by_scope(inp, cfg.policy_loss, generator)


def select_mini_batch_tokens(
    model, batch: StepBatch, rows: slice, cfg: TrainConfig, generator: torch.Generator
) -> torch.Tensor | None:
    """Clip-Cov/KL-Cov tokens chosen over the whole mini-batch ``rows`` at the current
    parameters (``cov_scope`` mini), or None for the other scopes."""
    if cfg.policy_loss.cov_scope is not CovScope.MINI:
        return None
    parts = [
        loss_inputs(
            model, batch, slice(rows.start + s.start, rows.start + s.stop), cfg.temperature, False
        )
        for s in micro_slices(rows.stop - rows.start, cfg.micro_batch_size)
    ]
    inp = LossInputs(
        *(torch.cat([getattr(p, f) for p in parts]) for f in ("log_prob", "old_log_prob")),
        advantages=batch.advantages[rows],
        response_mask=batch.mask[rows],
        score=None if batch.score is None else batch.score[rows],
    )
    return select_by_scope(inp, cfg.policy_loss, generator)


def steered_loss(
    inp: LossInputs,
    cfg: PolicyLossConfig,
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
    *,
    entropy_coeff: float | None = None,
    kl_coef: float | None = None,
    actuator_term: Callable[[torch.Tensor], None] | None = None,
) -> tuple[PolicyLossOutput, torch.Tensor | None]:
    """The policy loss under an entropy controller's settings (``EntropyController.
    loss_settings``), for both engines: ``entropy_coeff`` the bonus in force, ``kl_coef`` KL-Cov's
    coefficient for the step; with ``actuator_term`` (the forecast on KL-Cov's coefficient) the
    loss at coefficient 0 and KL-Cov's part ℓ_KL apart (``losses.kl_cov_split``), else
    ``compute_policy_loss`` and None. The caller aggregates ℓ_KL as it aggregates the loss and
    hands it to ``actuator_term``."""
    if kl_coef is not None:
        cfg = replace(cfg, ppo_kl_coef=kl_coef)
    if actuator_term is not None:
        return kl_cov_split(inp, cfg, entropy_coeff, generator, selected)
    return compute_policy_loss(inp, cfg, entropy_coeff, generator, selected), None


def mini_batch_loss(
    model,
    batch: StepBatch,
    rows: slice,
    cfg: TrainConfig,
    entropy_coeff: float,
    generator: torch.Generator,
    response_budget: int,
    parts: list[tuple[dict[str, float], float]] | None = None,
    clipped: torch.Tensor | None = None,
    selected_step: torch.Tensor | None = None,
    entropy_term: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    kl_coef: float | None = None,
    actuator_term: Callable[[torch.Tensor], None] | None = None,
) -> float:
    """Accumulate (``backward``) the gradient of one mini-batch's loss over its micro-batches;
    returns the loss. ``parts`` gathers each micro-batch's loss metrics with its valid tokens
    (``softmax_theory.stats.token_weighted_means`` reduces them); ``clipped`` [B, R] is or-ed
    with the clipped tokens; ``selected_step`` is the step's global selection;
    ``entropy_term`` (an entropy controller's) receives each micro-batch's aggregated entropy
    agg(H), with its graph, its per-token entropy and mask, before the loss's backward.
    ``kl_coef`` replaces KL-Cov's ``ppo_kl_coef`` (a controller's, for the step);
    ``actuator_term`` (a controller's on KL-Cov's coefficient) receives agg(ℓ_KL) with its graph
    (``losses.kl_cov_split``), and the loss then holds KL-Cov's part at coefficient 0.
    ``response_budget`` is the token budget of a response (the ``seq-mean-token-sum-norm``
    scale when the loss config gives none)."""
    lc = cfg.policy_loss
    selected = select_mini_batch_tokens(model, batch, rows, cfg, generator)
    if selected_step is not None:
        selected = selected_step[rows]
    norms = loss_normalisers(
        float(batch.mask.sum()),
        cfg.mini_batches,
        float(rows.stop - rows.start),
        lc.loss_scale_factor,
        response_budget,
    )
    total = 0.0
    for sl in micro_slices(rows.stop - rows.start, cfg.micro_batch_size):
        sub = slice(rows.start + sl.start, rows.start + sl.stop)
        inp = loss_inputs(model, batch, sub, cfg.temperature, True)
        out, kl_part = steered_loss(
            inp,
            lc,
            generator,
            None if selected is None else selected[sl],
            entropy_coeff=entropy_coeff,
            kl_coef=kl_coef,
            actuator_term=actuator_term,
        )
        if kl_part is not None:
            actuator_term(agg_loss(kl_part, batch.mask[sub], lc.loss_agg_mode, **norms))
        loss = agg_loss(out.per_token_loss, batch.mask[sub], lc.loss_agg_mode, **norms)
        if entropy_term is not None:
            h_term = agg_loss(inp.entropy, batch.mask[sub], lc.loss_agg_mode, **norms)
            entropy_term(h_term, inp.entropy, batch.mask[sub])
        loss.backward()
        if out.clipped is not None and clipped is not None:
            clipped[sub] |= out.clipped.to(clipped.device)
        total += float(loss.detach())
        if parts is not None:
            # metrics are token means: weighed by the micro-batch's tokens, so that the step's
            # metrics do not depend on how it was split
            parts.append(
                ({k: float(v) for k, v in out.metrics.items()}, float(batch.mask[sub].sum()))
            )
    return total


def update(
    model,
    opt: torch.optim.Optimizer,
    schedule,
    batch: StepBatch,
    cfg: TrainConfig,
    entropy_coeff: float,
    generator: torch.Generator,
    response_budget: int,
    entropy_term: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    kl_coef: float | None = None,
    actuator_term: Callable[[torch.Tensor], None] | None = None,
) -> UpdateResult:
    """The step's ``epochs × mini_batches`` optimiser updates (the probe's forecast and an
    entropy controller watch the optimiser's steps through its pre-hooks)."""
    model.train()
    per_mini = cfg.mini_batch_responses
    parts: list[tuple[dict[str, float], float]] = []
    losses: list[float] = []
    clipped = torch.zeros(batch.mask.shape, dtype=torch.bool, device=batch.mask.device)
    selected_step = select_step_tokens(batch, cfg, generator)
    for _ in range(cfg.epochs):
        for mb in range(cfg.mini_batches):
            opt.zero_grad(set_to_none=True)
            rows = slice(mb * per_mini, (mb + 1) * per_mini)
            losses.append(
                mini_batch_loss(
                    model,
                    batch,
                    rows,
                    cfg,
                    entropy_coeff,
                    generator,
                    response_budget,
                    parts,
                    clipped,
                    selected_step,
                    entropy_term,
                    kl_coef,
                    actuator_term,
                )
            )
            opt.step()
            schedule.step()
    model.eval()
    metrics = token_weighted_means(parts)
    metrics["actor/pg_loss"] = float(np.mean(losses))
    # a loss without a clip clips nothing: clipped stays all False
    return UpdateResult(metrics, len(losses), clipped)


__all__ = [
    "StepBatch",
    "UpdateResult",
    "loss_inputs",
    "loss_normalisers",
    "mini_batch_loss",
    "select_mini_batch_tokens",
    "select_step_tokens",
    "steered_loss",
    "update",
]
