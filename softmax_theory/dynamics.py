"""The training loop: run an algorithm on an environment and record the run log.

Every step records what the design note's run-log contract names, all exact except ``cov_mean``
(the paper's estimator on the step's sampled tokens): ``entropy`` and ``reward`` before the
update, ``entropy_after``, ``delta_entropy`` = ``delta_within`` + ``delta_shift`` (eq. 10),
``pred_lemma1`` (with the actual logit change), ``pred_pg`` and ``pred_npg`` (what Theorems 1 and
2 predict for a PG or NPG step of the same η from the same logits).
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from softmax_theory.algorithms import AlgoConfig, StepResult, initial_state, step
from softmax_theory.envs import ContextualBandit, TabularEnv, TokenTreeMDP
from softmax_theory.estimators import (
    covariance,
    first_order_entropy_change,
    log_softmax,
    npg_entropy_change,
    pg_entropy_change,
)
from softmax_theory.registry import parse_choice
from softmax_theory.runlog import RunWriter, to_jsonable
from softmax_theory.stats import top_covariance_means
from softmax_theory.token_stats import token_covariance

COV_TABLES_FILE = "cov_tables.json"


def sampled_covariance(logp: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """The paper's token covariance over a flat batch of sampled tokens (all valid)."""
    return token_covariance(logp, adv, np.ones_like(logp))


@dataclass(frozen=True)
class SimConfig:
    """A simulation run; the only home of its defaults."""

    steps: int = field(default=200, metadata={"help": "number of updates"})
    lr: float = field(default=0.1, metadata={"help": "step size η"})
    seed: int = field(default=0, metadata={"help": "seed of the environment and the sampling"})
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    cov_table_steps: tuple[int, ...] = field(
        default=(), metadata={"help": "steps at which to write the covariance table"}
    )
    pass_k: int | None = field(
        default=None,
        metadata={"help": "also record the exact pass@K before each update (default: off)"},
    )

    def __post_init__(self) -> None:
        if self.pass_k is not None and self.pass_k < 1:
            raise ValueError(f"pass_k: must be ≥ 1, got {self.pass_k}")
        if self.steps < 1:
            raise ValueError(f"steps: must be ≥ 1, got {self.steps}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: the step size must be a finite number > 0, got {self.lr}")


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
    state = initial_state(z, config.algo)
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
                    with open(os.path.join(out, COV_TABLES_FILE), "w") as f:
                        json.dump(to_jsonable(tables), f, indent=2)
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


# ---------------------------------------------------------------------------------------------
# Environments by name
# ---------------------------------------------------------------------------------------------


class EnvName(str, enum.Enum):
    BANDIT = "bandit"
    CONTEXTUAL = "contextual"
    TREE = "tree"
    EXPLORE = "explore"


@dataclass(frozen=True)
class EnvConfig:
    """Which environment, and its sizes; the only home of their defaults."""

    name: EnvName = field(default=EnvName.CONTEXTUAL, metadata={"help": "environment"})
    actions: int = field(default=16, metadata={"help": "bandit/contextual/explore: responses A"})
    prompts: int = field(default=32, metadata={"help": "contextual/explore: prompts S"})
    vocab: int = field(default=4, metadata={"help": "tree: vocabulary V"})
    horizon: int = field(default=3, metadata={"help": "tree: horizon T"})
    logit_scale: float = field(default=1.0, metadata={"help": "std of the initial logits"})
    seed: int = field(default=0, metadata={"help": "seed of the rewards and initial logits"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", parse_choice(EnvName, self.name, "env"))
        for name in ("actions", "prompts", "vocab", "horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be ≥ 1, got {getattr(self, name)}")
        if self.name is not EnvName.TREE and self.actions < 2:
            raise ValueError("actions: need at least 2 responses")


# Exploration env: the best response (reward 1) starts with logit EXPLORE_BEST_LOGIT, a decoy
# (reward EXPLORE_DECOY_REWARD) with EXPLORE_DECOY_LOGIT; everything else 0.
EXPLORE_BEST_LOGIT = -2.0
EXPLORE_DECOY_LOGIT = 2.0
EXPLORE_DECOY_REWARD = 0.6


def make_env(cfg: EnvConfig) -> TabularEnv:
    """Build an environment with seeded rewards and initial logits.

    - bandit: A arms, rewards U(0, 1).
    - contextual: S prompts × A responses with verifiable (0/1) rewards; prompt s has between
      1 and A/2 correct responses, so prompts range from hard to easy.
    - tree: V^T sequences, reward 1 on a random 10% of them (at least one).
    - explore: like contextual, but each prompt's one correct response starts unlikely
      (logit −2) and a decoy worth 0.6 starts likely (logit +2): exploration pays.
    """
    rng = np.random.default_rng(cfg.seed)
    name = cfg.name
    if name is EnvName.BANDIT:
        init = cfg.logit_scale * rng.standard_normal((1, cfg.actions))
        return ContextualBandit(
            rng.random((1, cfg.actions)), name=f"bandit-{cfg.actions}", init_logits=init
        )
    if name is EnvName.TREE:
        n_seq = cfg.vocab**cfg.horizon
        rewards = np.zeros(n_seq)
        rewards[rng.choice(n_seq, size=max(1, n_seq // 10), replace=False)] = 1.0
        n_states = (cfg.vocab**cfg.horizon - 1) // (cfg.vocab - 1)  # prefixes of length < T
        return TokenTreeMDP(
            cfg.vocab,
            cfg.horizon,
            rewards,
            name=f"tree-{cfg.vocab}^{cfg.horizon}",
            init_logits=cfg.logit_scale * rng.standard_normal((n_states, cfg.vocab)),
        )
    s, a = cfg.prompts, cfg.actions
    rewards = np.zeros((s, a))
    if name is EnvName.CONTEXTUAL:
        for i in range(s):
            n_correct = rng.integers(1, max(1, a // 2) + 1)
            rewards[i, rng.choice(a, size=n_correct, replace=False)] = 1.0
        init = cfg.logit_scale * rng.standard_normal((s, a))
        return ContextualBandit(rewards, name=f"contextual-{s}x{a}", init_logits=init)
    init = cfg.logit_scale * rng.standard_normal((s, a))
    for i in range(s):
        best, decoy = rng.choice(a, size=2, replace=False)
        rewards[i, best] = 1.0
        rewards[i, decoy] = EXPLORE_DECOY_REWARD
        init[i, best] = EXPLORE_BEST_LOGIT
        init[i, decoy] = EXPLORE_DECOY_LOGIT
    return ContextualBandit(rewards, name=f"explore-{s}x{a}", init_logits=init)
