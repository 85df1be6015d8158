"""What the TRL engine reduces over processes, so that one record covers the whole step: the
step's loss metrics (``StepMeans``) and every process's arrays (``all_concat``). Each is the
identity with one process."""

from __future__ import annotations

import numpy as np
import torch

from softmax_theory.stats import token_weighted_means


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_concat(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process's arrays, concatenated in rank order (identity with one process)."""
    if not distributed():
        return arrays
    every: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, arrays)
    return {k: np.concatenate([part[k] for part in every]) for k in arrays}


class StepMeans:
    """The loss metrics of one GRPO step, token-weighted over all its updates and micro-batches
    (``softmax_theory.stats.token_weighted_means``, as our trainer weighs them), and the sum of
    its micro-batch losses."""

    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, float], float]] = []
        self.loss = 0.0

    def add(self, metrics: dict[str, float], n_tokens: float, loss: float) -> None:
        self.parts.append((metrics, n_tokens))
        self.loss += loss

    def pop(self, updates: int, num_processes: int) -> dict[str, float]:
        """The step's means over every process's micro-batches, and ``actor/pg_loss``, the mean
        mini-batch loss; then start the next step."""
        parts, loss = self.parts, self.loss
        self.__init__()
        if distributed():
            every: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(every, (parts, loss))
            parts = [p for rank_parts, _ in every for p in rank_parts]
            loss = sum(rank_loss for _, rank_loss in every)
        means = token_weighted_means(parts)
        if not means:
            return {}
        # each process's micro-batch loss is its share of the mini-batch loss × processes
        means["actor/pg_loss"] = loss / num_processes / updates
        return means


__all__ = ["StepMeans", "all_concat", "distributed"]
