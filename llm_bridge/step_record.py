"""One step's record, assembled the same way by both engines from what each measured.

An engine measures a step (its rollouts, its updates, the probe) in its own way; this module
turns the measurements into the run log's keys (``docs/architecture.md``, the run-log contract)
in one order, and writes the step's files (``finish_step``). Every input here is whole-step:
under several processes the TRL engine gathers each rank's part first, so the same functions
give the same keys in either engine.

A record's keys, in order: ``step``, ``lr``, ``algo``; validation (``val_*``); ``entropy``,
``reward``; the rollouts' (``rollout_keys``); the updates' (``actor/*``); the probe's; the
times (``time/*``); ``actor/entropy_coeff``; then what a device or a controller adds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from llm_bridge.mismatch import rollout_mismatch
from llm_bridge.probe import ProbeTokens, token_arrays
from llm_bridge.run_dir import RunDirectory
from softmax_theory.token_stats import token_covariance


def rollout_keys(
    lengths: np.ndarray,
    truncated: np.ndarray | None,
    advantages: np.ndarray,
    trainer_logp: torch.Tensor | None = None,
    sampler_logp: torch.Tensor | None = None,
) -> dict[str, float]:
    """The step's rollouts in the run log's keys.

    Args:
      lengths: [B] response tokens of every response (a response cut at the budget counts the
        whole budget, also where ``mask_truncated`` leaves it out of the loss).
      truncated: [B] bool, cut at the budget; None where the backend does not say.
      advantages: [B] each response's advantage.
      trainer_logp, sampler_logp: [N] the valid sampled tokens' log π under the trainer at
        sampling time and under the sampler (the mismatch keys); None when no token is valid.
    Returns:
      ``response_length`` (mean tokens), ``response/clip_frac`` (share cut at the budget, as
      the peers log it), ``adv/nonzero_frac`` (share of responses with a non-zero advantage:
      0 means the step had no learning signal) and the mismatch keys ``rollout/*``.
    """
    keys = {"response_length": float(np.mean(lengths))}
    if truncated is not None:
        keys["response/clip_frac"] = float(np.mean(truncated))
    keys["adv/nonzero_frac"] = float(np.mean(np.asarray(advantages) != 0))
    if trainer_logp is not None and trainer_logp.numel():
        ones = torch.ones(trainer_logp.shape, device=trainer_logp.device)
        keys.update(rollout_mismatch(trainer_logp, sampler_logp, ones))
    return keys


def covariance_tokens(old_logp: np.ndarray, advantages: np.ndarray) -> np.ndarray:
    """The paper's token covariance of every valid token of the step, float64 [N], at θ_old:
    the values the step's Table 1 row is taken over (``RunDirectory.write_cov_table``).
    ``old_logp`` and ``advantages`` are the valid tokens' (flat, the whole step)."""
    logp = np.asarray(old_logp, dtype=np.float64)
    return token_covariance(logp, np.asarray(advantages, dtype=np.float64), np.ones(logp.shape))


def step_times(start: float, generated: float, updated: float, probed: float) -> dict[str, float]:
    """The step's wall times (``time.perf_counter`` marks): rollout, update, probe."""
    return {
        "time/rollout_s": generated - start,
        "time/update_s": updated - generated,
        "time/probe_s": probed - updated,
    }


def step_record(
    *,
    step: int,
    lr: float,
    algo: str,
    reward: float,
    rollout: Mapping[str, float],
    validation: Mapping[str, float] | None = None,
    entropy: float | None = None,
    update: Mapping[str, float] | None = None,
    probe: Mapping[str, Any] | None = None,
    times: Mapping[str, float] | None = None,
    entropy_coeff: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The step's record in the run log's one order (module docstring). A part that was not
    measured is None and leaves its keys out (absent means not measured, never a zero)."""
    record: dict[str, Any] = {"step": step, "lr": lr, "algo": algo}
    record.update(validation or {})
    if entropy is not None:
        record["entropy"] = entropy
    record["reward"] = reward
    for part in (rollout, update, probe, times):
        record.update(part or {})
    if entropy_coeff is not None:
        record["actor/entropy_coeff"] = entropy_coeff
    record.update(extra or {})
    return record


def finish_step(
    run_dir: RunDirectory,
    record: dict[str, Any],
    tokens: ProbeTokens | None = None,
    cov: np.ndarray | None = None,
    token_steps_every: int = 0,
) -> None:
    """Write the step's files: its covariance table (``cov``, ``covariance_tokens``) and its
    probe's token file on every ``token_steps_every``-th step, then its record, last, so that a
    step in the log has its files."""
    step = record["step"]
    if cov is not None:
        run_dir.write_cov_table(step, cov)
    if tokens is not None and token_steps_every and step % token_steps_every == 0:
        run_dir.write_tokens(step, token_arrays(tokens))
    run_dir.write_step(record)


__all__ = [
    "covariance_tokens",
    "finish_step",
    "rollout_keys",
    "step_record",
    "step_times",
]
