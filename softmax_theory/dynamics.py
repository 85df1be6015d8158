"""The training loop: run an algorithm on an environment and record the run log.

Every step records the keys of the run-log contract (``docs/architecture.md``, "The run-log
contract"; ``docs/dynamics.md`` lists the tabular keys), all exact except ``cov_mean``
(the paper's estimator on the step's sampled tokens): ``entropy`` and ``reward`` before the
update, ``entropy_after``, ``delta_entropy`` = ``delta_within`` + ``delta_shift`` (eq. 10),
``pred_lemma1`` (with the actual logit change), ``pred_pg`` and ``pred_npg`` (what Theorems 1 and
2 predict for a PG or NPG step of the same η from the same logits).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from softmax_theory.algorithms import AlgoConfig, StepResult, initial_state, step
from softmax_theory.envs import ContextualBandit, TabularEnv
from softmax_theory.estimators import (
    covariance,
    first_order_entropy_change,
    log_softmax,
    npg_entropy_change,
    pg_entropy_change,
)
from softmax_theory.inputs import Domain, SettingError, check_domains
from softmax_theory.runlog import RunWriter, atomic_write_text, to_jsonable
from softmax_theory.stats import top_covariance_means
from softmax_theory.token_stats import token_covariance

COV_TABLES_FILE = "cov_tables.json"


def sampled_covariance(logp: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """The paper's token covariance over a flat batch of sampled tokens (all valid)."""
    return token_covariance(logp, adv, np.ones_like(logp))


@dataclass(frozen=True)
class SimConfig:
    """A simulation run; the only home of its defaults and domains."""

    steps: int = field(default=200, metadata={"help": "number of updates", "domain": Domain(ge=1)})
    lr: float = field(default=0.1, metadata={"help": "step size η", "domain": Domain(gt=0)})
    seed: int = field(
        default=0,
        metadata={"help": "seed of the environment and the sampling", "domain": Domain(ge=0)},
    )
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    cov_table_steps: tuple[int, ...] = field(
        default=(),
        metadata={
            "help": "steps at which to write the covariance table",
            "domain": Domain(ge=0),
        },
    )
    pass_k: int | None = field(
        default=None,
        metadata={
            "help": "also record the exact pass@K before each update (default: off)",
            "domain": Domain(ge=1),
        },
    )

    def __post_init__(self) -> None:
        check_domains(self)
        late = [s for s in self.cov_table_steps if s >= self.steps]
        if late:
            raise SettingError(
                "cov_table_steps",
                f"step {late[0]} is past the last step {self.steps - 1} (steps start at 0)",
            )


@dataclass(frozen=True)
class CovTable:
    """The distribution of token covariance at one step (the paper's Table 1), and Fig. 8's
    per-prompt view: exact Cov_π(log π, A) per prompt against the prompt's accuracy."""

    step: int
    n_tokens: int
    top_means: dict[str, float]  # "top 0.02%" → mean cov of those tokens (at least one token)
    prompt_accuracy: list[float]  # E_π r per prompt (bandits) — empty for trees
    prompt_cov: list[float]  # exact Cov_π(log π, A) per prompt
    prompt_cov_sampled: list[float]  # the paper's token estimator, per prompt's tokens


@dataclass(frozen=True)
class SimResult:
    config: SimConfig
    env_name: str
    records: tuple[dict[str, Any], ...]
    cov_tables: tuple[CovTable, ...]
    final_logits: np.ndarray
    final_entropy: float  # after the last update
    final_reward: float

    def series(self, key: str) -> np.ndarray:
        return np.array([r[key] for r in self.records if key in r], dtype=np.float64)


def cov_table(step_index: int, env: TabularEnv, logits: np.ndarray, result: StepResult) -> CovTable:
    """The covariance table of the step's sampled tokens (Table 1) and Fig. 8's per-prompt view."""
    batch, token_logp, token_adv = result.tokens, result.token_logp, result.token_adv
    cov = sampled_covariance(token_logp, token_adv)
    top = top_covariance_means(cov)
    acc, pcov, pcov_s = [], [], []
    if isinstance(env, ContextualBandit):
        p = np.exp(log_softmax(logits))
        acc = (p * env.rewards).sum(axis=1).tolist()
        pcov = covariance(logits, log_softmax(logits), env.advantages(logits)).tolist()
        for s in range(logits.shape[0]):
            m = batch.state == s
            pcov_s.append(float(sampled_covariance(token_logp[m], token_adv[m]).mean()))
    return CovTable(
        step=step_index,
        n_tokens=int(cov.size),
        top_means=top,
        prompt_accuracy=acc,
        prompt_cov=pcov,
        prompt_cov_sampled=pcov_s,
    )


def step_record(
    env: TabularEnv, z: np.ndarray, result: StepResult, k: int, lr: float, algo: str
) -> dict[str, Any]:
    """The run-log record of one update from logits z (exact, but for ``cov_mean``)."""
    z_new = result.logits
    w = env.state_weights(z)
    q = env.state_rewards(z)
    change = env.entropy_change(z, z_new)
    rec: dict[str, Any] = {
        "step": k,
        "entropy": env.entropy(z),
        "reward": env.expected_reward(z),
        "entropy_after": env.entropy(z_new),
        "delta_entropy": change.total,
        "delta_within": change.within,
        "delta_shift": change.shift,
        "pred_lemma1": float(w @ first_order_entropy_change(z, z_new - z)),
        "pred_pg": float(w @ pg_entropy_change(z, q, lr, env.visitation(z))),
        "pred_npg": float(w @ npg_entropy_change(z, q, lr)),
        "lr": lr,
        "algo": algo,
    }
    if result.tokens is not None:
        rec["cov_mean"] = float(sampled_covariance(result.token_logp, result.token_adv).mean())
        rec["sample_reward"] = float(result.tokens.reward.mean())
    rec.update(result.metrics)
    return rec


def simulate(
    env: TabularEnv,
    config: SimConfig,
    logits: np.ndarray | None = None,
    out: str | os.PathLike | None = None,
) -> SimResult:
    """Run ``config.algo`` on ``env`` for ``config.steps`` updates.

    Args:
      env: the environment.
      config: steps, η, seed and the algorithm's settings.
      logits: the initial policy [S, A]; the environment's own initial logits when omitted.
      out: a run directory to write (``config.json`` + ``steps.jsonl``, flushed every step,
        and ``cov_tables.json``, rewritten as each table is made, when ``cov_table_steps`` is
        set).
    """
    rng = np.random.default_rng(config.seed)
    z = env.initial_logits(rng) if logits is None else np.array(logits, dtype=np.float64)
    state = initial_state(z, config.algo, env, config.steps)
    # reward_max: the largest reward any response earns (the law's ceiling cannot exceed it)
    run_config = {"env": env.name, **to_jsonable(config), "reward_max": env.max_reward}
    writer = None if out is None else RunWriter(out, run_config)
    records, tables = [], []
    try:
        for k in range(config.steps):
            result = step(env, z, state, config.algo, config.lr, rng)
            records.append(step_record(env, z, result, k, config.lr, config.algo.algo.value))
            if config.pass_k is not None:
                records[-1][f"pass@{config.pass_k}"] = env.pass_at_k(z, config.pass_k)
            if writer is not None:
                writer.write(records[-1])
            if result.tokens is not None and k in config.cov_table_steps:
                tables.append(cov_table(k, env, z, result))
                if out is not None:
                    text = json.dumps(to_jsonable(tables), indent=2)
                    atomic_write_text(os.path.join(out, COV_TABLES_FILE), text)
            z, state = result.logits, result.state
    finally:
        if writer is not None:
            writer.close()
    return SimResult(
        config=config,
        env_name=env.name,
        records=tuple(records),
        cov_tables=tuple(tables),
        final_logits=z,
        final_entropy=env.entropy(z),
        final_reward=env.expected_reward(z),
    )
