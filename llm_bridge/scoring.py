"""What our engine's rollouts are worth: the prompts a step draws, the rewards and advantages of
its responses with the old (and reference) log-probs every later pass reads (``score_rollouts``
→ ``update.StepBatch``), and validation on held-out prompts (``validate``). The TRL engine
leaves these to TRL, with our advantages (``integrations.trl.trainer``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from llm_bridge.config import TrainConfig
from llm_bridge.forward import stream_entropy_logp
from llm_bridge.rollout import HFBackend, Rollouts
from llm_bridge.step_record import rollout_keys
from llm_bridge.tasks import Example, Task, epoch_order, response_budget, score
from llm_bridge.update import StepBatch
from softmax_theory.group_advantages import compute_advantages
from softmax_theory.stats import pass_at_k

# (prompts, samples per prompt, generator) → the rollouts
Generate = Callable[[list, int, torch.Generator], Rollouts]


def sample_prompts(
    task: Task, n: int, step: int, seed: int, generator: torch.Generator
) -> list[Example]:
    """The step's ``n`` prompts. A dataset's are drawn without replacement within an epoch
    (each epoch its own seeded order, so a resumed run draws the same); a synthetic task, which
    stands for an endless supply of problems, draws with replacement from the run's
    generator."""
    train = task.train
    if task.dataset is None:
        idx = torch.randint(0, len(train), (n,), generator=generator).tolist()
        return [train[i] for i in idx]
    first = step * n
    return [train[i] for i in epoch_order(len(train), seed, range(first, first + n))]


@torch.no_grad()
def held_out_reward(
    model, tokenizer, task: Task, temperatures: tuple[float, ...], n: int, seed: int = 0
) -> dict[float, float]:
    """The mean reward of one sample per held-out prompt (the first ``n``) at each of
    ``temperatures``, to the task's response budget; 0 is greedy (the limit T → 0 of
    softmax(z/T), sampled at T = 1e-4). What a model knows, beside what it writes at T = 1."""
    examples = task.test[:n]
    backend = HFBackend(model.eval(), tokenizer)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t in temperatures:
        roll = backend.generate(
            [e.prompt for e in examples], 1, response_budget(task), t or 1e-4, gen
        )
        out[t] = float(np.mean(score(task, roll.texts, [e.answer for e in examples])))
    return out


@torch.no_grad()
def validate(task: Task, cfg: TrainConfig, step: int, generate: Generate) -> dict[str, float]:
    """``val_reward``: the mean reward over n samples per held-out prompt (one without
    ``val_k``); with ``val_k`` = K also ``val_pass@K``, the unbiased pass@K estimate per prompt
    (a sample is right when it earns the task's largest reward), averaged. Its randomness is
    its own (seeded by the run's seed and the step), so how often a run validates never
    changes its training."""
    examples = task.test[: cfg.val_prompts]
    n = cfg.val_n
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 1)
    roll = generate([e.prompt for e in examples], n, gen)
    rewards = score(task, roll.texts, [e.answer for e in examples for _ in range(n)])
    out = {"val_reward": float(rewards.mean())}
    if cfg.val_k is not None:
        right = (rewards >= task.max_reward).reshape(len(examples), n).sum(-1)
        out[f"val_pass@{cfg.val_k}"] = float(
            np.mean([pass_at_k(n, int(c), cfg.val_k) for c in right])
        )
    return out


def score_rollouts(
    task: Task,
    cfg: TrainConfig,
    roll: Rollouts,
    answers: list[str],
    model,
    ref_model=None,
) -> StepBatch:
    """Rewards, advantages, and the old (and reference) log-probs and entropy of ``roll``, with
    the rollouts' keys of the run log (``step_record.rollout_keys``)."""
    rewards = score(task, roll.texts, [a for a in answers for _ in range(cfg.group_size)])
    group = np.repeat(np.arange(len(answers)), cfg.group_size)
    adv_resp = compute_advantages(cfg.advantage, rewards, group, cfg.w_reinforce_lambda)
    lengths = roll.response_mask.sum(-1).float().cpu().numpy()
    truncated = None if roll.truncated is None else roll.truncated.cpu().numpy()
    if cfg.mask_truncated and roll.truncated is not None:
        # TRL's mask_truncated_completions: a response cut at the budget leaves the loss
        # (and every per-token statistic of the step) entirely
        keep = (~roll.truncated).to(roll.response_mask.dtype)[:, None]
        roll = replace(roll, response_mask=roll.response_mask * keep)
    mask = roll.response_mask
    adv = torch.tensor(adv_resp, dtype=torch.float32, device=mask.device)[:, None] * mask
    micro, t = cfg.micro_batch_size, cfg.temperature
    entropy, old_logp = stream_entropy_logp(model, roll, micro, t)
    ref_logp = None if ref_model is None else stream_entropy_logp(ref_model, roll, micro, t)[1]
    # the sampler's log-probs where the backend reports them (vLLM); HF generation samples
    # from the trainer's own model, so there the sampler is π_old by construction
    sampler = roll.sampler_logp if roll.sampler_logp is not None else old_logp
    valid = mask.bool()
    stats = rollout_keys(lengths, truncated, adv_resp, old_logp[valid], sampler[valid])
    return StepBatch(
        roll, rewards, group, adv, entropy, old_logp, ref_logp, sampler_logp=sampler, stats=stats
    )


__all__ = ["Generate", "sample_prompts", "score_rollouts", "validate"]
