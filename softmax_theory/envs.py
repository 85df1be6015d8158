"""Tabular environments whose every quantity is exact: bandits, contextual bandits, token trees.

Every environment stores its policy as logits of shape [S, A] (one row per state) and gives,
for any such logits, the exact expected reward J(π), the state weights used to average the
entropy, the advantages A(s, a), and the exact policy gradient ∂J/∂z.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from softmax_theory.estimators import advantages, entropy, log_softmax
from softmax_theory.inputs import Domain, check_domains, check_finite
from softmax_theory.registry import parse_choice


@dataclass(frozen=True)
class EntropyChange:
    """An exact entropy change split as ΔH̄ = within + shift  (eq. 10).

    within: Σ_s w(s)·(H'(s) − H(s)), the part Lemma 1 predicts.
    shift:  Σ_s (w'(s) − w(s))·H'(s), the move of the state weights (zero for bandits).
    """

    within: float
    shift: float

    @property
    def total(self) -> float:
        return self.within + self.shift


def _check_logits(logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.shape != shape:
        raise ValueError(f"logits: expected shape {shape} (states, actions), got {z.shape}")
    check_finite("logits", z)
    return z


class TabularEnv:
    """What every environment shares, written once on top of four env-specific pieces:
    ``logits_shape``, ``state_rewards`` (Q), ``visitation`` (d_π) and ``state_weights``."""

    logits_shape: tuple[int, int]

    def state_rewards(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def visitation(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def state_weights(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def advantages(self, logits: np.ndarray) -> np.ndarray:
        """A(s, a) = Q(s, a) − V(s); [S, A]."""
        z = _check_logits(logits, self.logits_shape)
        return advantages(z, self.state_rewards(z))

    def policy_gradient(self, logits: np.ndarray) -> np.ndarray:
        """∂J/∂z(s, a) = d_π(s)·π(a|s)·A(s, a), shape [S, A]  (eq. 6)."""
        z = _check_logits(logits, self.logits_shape)
        p = np.exp(log_softmax(z))
        return self.visitation(z)[:, None] * p * self.advantages(z)

    def success_probability(self, logits: np.ndarray) -> np.ndarray:
        """P_π(a response reaches its prompt's best reward), per prompt; [prompts]."""
        raise NotImplementedError

    def prompt_weights_of(self, logits: np.ndarray) -> np.ndarray:
        """The prompts' weights in J; [prompts], sum 1."""
        raise NotImplementedError

    def pass_at_k(self, logits: np.ndarray, k: int) -> float:
        """Exact pass@k: Σ_prompts w·(1 − (1 − p)^k), p = ``success_probability``: the chance
        that at least one of k independent responses is right (Chen et al. 2021's quantity)."""
        if k < 1:
            raise ValueError(f"k: must be ≥ 1, got {k}")
        p = self.success_probability(logits)
        return float(self.prompt_weights_of(logits) @ (1 - (1 - p) ** k))

    def entropy(self, logits: np.ndarray) -> float:
        """Σ_s w(s)·H(π(·|s)) in nats, w = ``state_weights``."""
        z = _check_logits(logits, self.logits_shape)
        return float(self.state_weights(z) @ entropy(z))

    def entropy_change(self, logits: np.ndarray, new_logits: np.ndarray) -> EntropyChange:
        """Exact change of the weighted entropy, split into within-state and shift terms."""
        z = _check_logits(logits, self.logits_shape)
        z_new = _check_logits(new_logits, self.logits_shape)
        h, h_new = entropy(z), entropy(z_new)
        w, w_new = self.state_weights(z), self.state_weights(z_new)
        return EntropyChange(within=float(w @ (h_new - h)), shift=float((w_new - w) @ h_new))

    def random_logits(self, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
        """Logits ~ N(0, scale²), shape [S, A]."""
        return scale * rng.standard_normal(self.logits_shape)

    def initial_logits(self, rng: np.random.Generator) -> np.ndarray:
        """The environment's starting policy if it has one, else N(0, 1) logits."""
        init = getattr(self, "init_logits", None)
        return self.random_logits(rng) if init is None else np.array(init, dtype=np.float64)

    def _check_init(self) -> None:
        if getattr(self, "init_logits", None) is not None:
            object.__setattr__(
                self, "init_logits", _check_logits(self.init_logits, self.logits_shape)
            )


@dataclass(frozen=True, eq=False)
class ContextualBandit(TabularEnv):
    """S prompts × A responses: J(π) = Σ_s w(s) Σ_a π(a|s) r(s, a).

    Args:
      rewards: r(s, a), shape [S, A].
      prompt_weights: w(s), shape [S], non-negative; normalised to sum to 1. Uniform if omitted.
    """

    rewards: np.ndarray
    prompt_weights: np.ndarray | None = None
    name: str = "contextual"
    init_logits: np.ndarray | None = None  # the starting policy [S, A], if the env has one

    def __post_init__(self) -> None:
        r = np.asarray(self.rewards, dtype=np.float64)
        if r.ndim != 2 or r.shape[0] == 0 or r.shape[1] == 0:
            raise ValueError(f"rewards: expected a non-empty [S, A] array, got shape {r.shape}")
        check_finite("rewards", r)
        if self.prompt_weights is None:
            w = np.full(r.shape[0], 1.0 / r.shape[0])
        else:
            w = np.asarray(self.prompt_weights, dtype=np.float64)
            if w.shape != (r.shape[0],):
                raise ValueError(f"prompt_weights: expected shape ({r.shape[0]},), got {w.shape}")
            check_finite("prompt_weights", w)
            if (w < 0).any() or w.sum() <= 0:
                raise ValueError("prompt_weights: must be non-negative with a positive sum")
            w = w / w.sum()
        object.__setattr__(self, "rewards", r)
        object.__setattr__(self, "prompt_weights", w)
        self._check_init()

    @property
    def logits_shape(self) -> tuple[int, int]:
        return self.rewards.shape

    def state_rewards(self, logits: np.ndarray) -> np.ndarray:
        """r(s, a) seen by the tabular updates at each state; [S, A]. Q(s, a) in general."""
        return self.rewards

    def visitation(self, logits: np.ndarray) -> np.ndarray:
        """d_π(s): the weight of state s in ∂J/∂z(s,·) = d_π(s)·π·A; [S]."""
        return self.prompt_weights

    def state_weights(self, logits: np.ndarray) -> np.ndarray:
        """The weights that average per-state entropy into the policy's entropy; [S], sum 1."""
        return self.prompt_weights

    def expected_reward(self, logits: np.ndarray) -> float:
        z = _check_logits(logits, self.logits_shape)
        p = np.exp(log_softmax(z))
        return float(self.prompt_weights @ (p * self.rewards).sum(axis=1))

    def success_probability(self, logits: np.ndarray) -> np.ndarray:
        z = _check_logits(logits, self.logits_shape)
        p = np.exp(log_softmax(z))
        best = self.rewards >= self.rewards.max(axis=1, keepdims=True)
        return (p * best).sum(axis=1)

    def prompt_weights_of(self, logits: np.ndarray) -> np.ndarray:
        return self.prompt_weights

    @property
    def max_reward(self) -> float:
        """The largest expected reward any policy reaches: the best response of every prompt."""
        return float(self.prompt_weights @ self.rewards.max(axis=1))


def Bandit(rewards: np.ndarray, name: str = "bandit") -> ContextualBandit:  # noqa: N802
    """A arms with reward r(a): a contextual bandit with one prompt; logits shape [1, A]."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"rewards: expected shape [A], got {r.shape}")
    return ContextualBandit(rewards=r[None, :], name=name)


@dataclass(frozen=True, eq=False)
class TokenTreeMDP(TabularEnv):
    """Autoregressive generation of T tokens from a vocabulary of V; reward on complete sequences.

    A state is a prefix (length 0 … T−1), with one logit vector each; states are ordered by
    depth, then by the prefix read as a base-V number: state (t, i) has flat index
    (V^t − 1)/(V − 1) + i and child (t + 1, i·V + a). There is no discount.

    Args:
      vocab: V ≥ 2.
      horizon: T ≥ 1.
      rewards: r(y) for every complete sequence y, shape [V^T] (y read as a base-V number).
    """

    vocab: int
    horizon: int
    rewards: np.ndarray
    name: str = "tree"
    init_logits: np.ndarray | None = None  # the starting policy [S, V], if the env has one
    # offsets[t] is the flat index of the first state at depth t; offsets[T] = number of states
    offsets: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.vocab < 2:
            raise ValueError(f"vocab: need at least 2 tokens, got {self.vocab}")
        if self.horizon < 1:
            raise ValueError(f"horizon: need at least 1 step, got {self.horizon}")
        r = np.asarray(self.rewards, dtype=np.float64).reshape(-1)
        if r.shape != (self.vocab**self.horizon,):
            raise ValueError(
                f"rewards: expected {self.vocab}^{self.horizon} = {self.vocab**self.horizon} "
                f"entries, got {r.size}"
            )
        check_finite("rewards", r)
        object.__setattr__(self, "rewards", r)
        offsets = np.cumsum([0] + [self.vocab**t for t in range(self.horizon)])
        object.__setattr__(self, "offsets", tuple(int(o) for o in offsets))
        self._check_init()

    @property
    def n_states(self) -> int:
        return self.offsets[-1]

    @property
    def logits_shape(self) -> tuple[int, int]:
        return (self.n_states, self.vocab)

    @cached_property
    def depth(self) -> np.ndarray:
        """The prefix length t of each state; [S]."""
        return np.repeat(np.arange(self.horizon), [self.vocab**t for t in range(self.horizon)])

    def _level(self, x: np.ndarray, t: int) -> np.ndarray:
        return x[self.offsets[t] : self.offsets[t + 1]]

    def reach_probability(self, logits: np.ndarray) -> np.ndarray:
        """P_π(prefix s is generated); [S]. Sums to T (one state per depth)."""
        z = _check_logits(logits, self.logits_shape)
        p = np.exp(log_softmax(z))
        reach = np.empty(self.n_states)
        reach[0] = 1.0
        for t in range(1, self.horizon):
            parent = self._level(reach, t - 1)  # (V^{t-1},)
            # child (t, i·V + a) is reached with P(parent i)·π(a | parent i)
            reach[self.offsets[t] : self.offsets[t + 1]] = (
                parent[:, None] * self._level(p, t - 1)
            ).reshape(-1)
        return reach

    def q_values(self, logits: np.ndarray) -> np.ndarray:
        """Q(s, a) = expected final reward after emitting a at prefix s; [S, A]."""
        z = _check_logits(logits, self.logits_shape)
        p = np.exp(log_softmax(z))
        q = np.empty(self.logits_shape)
        # the last decision's Q is the reward of the completed sequence
        self._level(q, self.horizon - 1)[:] = self.rewards.reshape(-1, self.vocab)
        for t in range(self.horizon - 2, -1, -1):
            child_value = (self._level(p, t + 1) * self._level(q, t + 1)).sum(axis=1)
            self._level(q, t)[:] = child_value.reshape(-1, self.vocab)
        return q

    def state_rewards(self, logits: np.ndarray) -> np.ndarray:
        return self.q_values(logits)

    def visitation(self, logits: np.ndarray) -> np.ndarray:
        """d_π(s) = P_π(reach s), the weight in ∂J/∂z(s,·) = d_π(s)·π·A; sums to T."""
        return self.reach_probability(logits)

    def state_weights(self, logits: np.ndarray) -> np.ndarray:
        """d_π(s)/T: the token-position average of per-prefix entropy; sums to 1."""
        return self.reach_probability(logits) / self.horizon

    def expected_reward(self, logits: np.ndarray) -> float:
        z = _check_logits(logits, self.logits_shape)
        p = np.exp(log_softmax(z))
        return float(p[0] @ self.q_values(z)[0])

    def success_probability(self, logits: np.ndarray) -> np.ndarray:
        """P_π(the sequence generated has the best reward); [1] (one prompt, the root)."""
        z = _check_logits(logits, self.logits_shape)
        p = np.exp(log_softmax(z))
        last = self.horizon - 1
        leaf = self._level(self.reach_probability(z), last)[:, None] * self._level(p, last)
        best = self.rewards.reshape(-1) >= self.rewards.max()
        return np.array([leaf.reshape(-1)[best].sum()])

    def prompt_weights_of(self, logits: np.ndarray) -> np.ndarray:
        return np.ones(1)

    @property
    def max_reward(self) -> float:
        """The largest expected reward any policy reaches: the best sequence's."""
        return float(self.rewards.max())


# ---------------------------------------------------------------------------------------------
# Environments by name
# ---------------------------------------------------------------------------------------------


class EnvName(str, enum.Enum):
    BANDIT = "bandit"
    CONTEXTUAL = "contextual"
    TREE = "tree"
    EXPLORE = "explore"


def _meta(help_text: str, domain: Domain) -> dict:
    return {"help": help_text, "domain": domain}


@dataclass(frozen=True)
class EnvConfig:
    """Which environment, and its sizes; the only home of their defaults and domains."""

    name: EnvName = field(default=EnvName.CONTEXTUAL, metadata={"help": "environment"})
    # one response has no entropy to change: every environment needs a choice
    actions: int = field(
        default=16, metadata=_meta("bandit/contextual/explore: responses A", Domain(ge=2))
    )
    prompts: int = field(default=32, metadata=_meta("contextual/explore: prompts S", Domain(ge=1)))
    vocab: int = field(default=4, metadata=_meta("tree: vocabulary V", Domain(ge=2)))
    horizon: int = field(default=3, metadata=_meta("tree: horizon T", Domain(ge=1)))
    logit_scale: float = field(
        default=1.0, metadata=_meta("std of the initial logits", Domain(ge=0))
    )
    seed: int = field(
        default=0, metadata=_meta("seed of the rewards and initial logits", Domain(ge=0))
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", parse_choice(EnvName, self.name, "env"))
        check_domains(self)


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
