"""Environments: exact gradients against finite differences, visitation, entropy split."""

import numpy as np
import pytest

from softmax_theory import Bandit, ContextualBandit, TokenTreeMDP, entropy


def _finite_difference_gradient(env, z, h=1e-6):
    grad = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        grad[idx] = (env.expected_reward(zp) - env.expected_reward(zm)) / (2 * h)
    return grad


@pytest.mark.parametrize(
    "env",
    [
        Bandit(np.array([1.0, 0.0, 0.3])),
        ContextualBandit(np.random.default_rng(0).random((4, 5)), prompt_weights=[1, 2, 3, 4]),
        TokenTreeMDP(3, 3, np.random.default_rng(1).random(27)),
        TokenTreeMDP(2, 4, np.random.default_rng(2).random(16)),
    ],
)
def test_policy_gradient_matches_finite_differences(env):
    z = env.random_logits(np.random.default_rng(3), scale=1.5)
    np.testing.assert_allclose(
        env.policy_gradient(z), _finite_difference_gradient(env, z), atol=1e-9
    )


def test_bandit_reward_by_hand():
    env = Bandit(np.array([1.0, 0.0]))
    assert env.expected_reward(np.zeros((1, 2))) == pytest.approx(0.5)
    assert env.entropy(np.zeros((1, 2))) == pytest.approx(np.log(2))


def test_tree_by_hand():
    # V = 2, T = 2, uniform policy: each of 4 sequences has probability ¼.
    env = TokenTreeMDP(2, 2, np.array([1.0, 0.0, 0.0, 0.0]))
    z = np.zeros(env.logits_shape)
    assert env.n_states == 3
    assert env.expected_reward(z) == pytest.approx(0.25)
    np.testing.assert_allclose(env.reach_probability(z), [1.0, 0.5, 0.5])
    np.testing.assert_allclose(env.q_values(z), [[0.5, 0.0], [1.0, 0.0], [0.0, 0.0]])
    assert env.entropy(z) == pytest.approx(np.log(2))


def test_tree_visitation_sums_to_horizon_and_weights_to_one():
    env = TokenTreeMDP(3, 4, np.random.default_rng(4).random(81))
    z = env.random_logits(np.random.default_rng(5), 2.0)
    assert env.reach_probability(z).sum() == pytest.approx(4.0)
    assert env.state_weights(z).sum() == pytest.approx(1.0)
    # Each depth's reach probabilities sum to 1.
    reach = env.reach_probability(z)
    for t in range(4):
        assert reach[env.depth == t].sum() == pytest.approx(1.0)


def test_tree_entropy_is_the_per_token_entropy_of_generations():
    # Mean over positions of the entropy of the next-token distribution along sampled
    # sequences, computed by enumerating all V^T sequences.
    vocab, horizon = 2, 3
    env = TokenTreeMDP(vocab, horizon, np.zeros(vocab**horizon))
    z = env.random_logits(np.random.default_rng(6), 1.0)
    h = entropy(z)
    p = np.exp(z - np.logaddexp.reduce(z, axis=1, keepdims=True))
    total = 0.0
    for seq in np.ndindex(*(vocab,) * horizon):
        state, prob, per_token = 0, 1.0, 0.0
        for a in seq:
            per_token += h[state]
            prob *= p[state, a]
            state = state * vocab + a + 1  # flat index of the child prefix
        total += prob * per_token / horizon
    assert env.entropy(z) == pytest.approx(total)


def test_entropy_change_split_adds_up():
    env = TokenTreeMDP(3, 3, np.random.default_rng(7).random(27))
    rng = np.random.default_rng(8)
    z = env.random_logits(rng)
    z_new = z + 0.3 * rng.standard_normal(z.shape)
    change = env.entropy_change(z, z_new)
    assert change.total == pytest.approx(env.entropy(z_new) - env.entropy(z))
    assert change.shift != 0.0
    bandit = Bandit(np.array([1.0, 0.0, 0.5]))
    zb = np.array([[0.1, 0.2, 0.3]])
    assert bandit.entropy_change(zb, zb + 1.0 * np.eye(3)[:1]).shift == 0.0


def test_bad_env_input_is_named():
    with pytest.raises(ValueError, match="rewards"):
        TokenTreeMDP(2, 3, np.zeros(7))
    with pytest.raises(ValueError, match="vocab"):
        TokenTreeMDP(1, 3, np.zeros(1))
    with pytest.raises(ValueError, match="prompt_weights"):
        ContextualBandit(np.zeros((2, 3)), prompt_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="logits"):
        Bandit(np.zeros(3)).entropy(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="rewards"):
        Bandit(np.array([0.0, np.nan]))
