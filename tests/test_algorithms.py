"""Tabular algorithms: advantages, loss invariants, gradients against finite differences."""

import numpy as np
import pytest

from softmax_theory import (
    Bandit,
    ContextualBandit,
    LossInputs,
    PolicyLossConfig,
    TokenTreeMDP,
    algorithms,
    get_policy_loss,
    n_selected,
    npg_update,
    pg_update,
    token_covariance,
)
from softmax_theory.algorithms import AlgoConfig, initial_state, sample_batch, step
from softmax_theory.estimators import log_softmax
from softmax_theory.group_advantages import (
    ADV_EPS,
    grpo_advantage,
    reinforce_pp_advantage,
    rloo_advantage,
)
from softmax_theory.losses import agg_weights, clip_cov_loss, kl_cov_loss, vanilla_loss
from softmax_theory.stats import token_weighted_means


def test_advantages_by_hand():
    group = np.array([0, 0, 0, 0, 1, 1])
    reward = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    # group 0: mean ½, std ½ → ±1/(½ + ε); group 1 is all equal → 0
    np.testing.assert_allclose(
        grpo_advantage(reward, group), [0.5 / (0.5 + ADV_EPS), -0.5 / (0.5 + ADV_EPS)] * 2 + [0, 0]
    )
    # leave-one-out: r_i − mean of the other three
    np.testing.assert_allclose(rloo_advantage(reward, group)[:4], [2 / 3, -2 / 3, 2 / 3, -2 / 3])
    assert (rloo_advantage(reward, group)[4:] == 0).all()
    pp = reinforce_pp_advantage(reward, group)
    assert pp.mean() == pytest.approx(0.0, abs=1e-12)
    assert pp.std() == pytest.approx(1.0, abs=1e-5)


def test_zero_variance_group_gets_zero_advantage():
    reward = np.array([0.3, 0.3, 0.3, 0.7, 0.1])
    group = np.array([0, 0, 0, 1, 1])
    assert (grpo_advantage(reward, group)[:3] == 0).all()
    assert (rloo_advantage(reward, group)[:3] == 0).all()


def test_n_selected_matches_the_reference_count():
    assert n_selected(256, 0.0002) == 1
    assert n_selected(10_000, 0.002) == 20
    assert n_selected(1300, 0.002) == 2


def _tokens(n=400, seed=0):
    rng = np.random.default_rng(seed)
    logp = np.log(rng.uniform(0.01, 1.0, (1, n)))
    adv = rng.standard_normal((1, n)) * 2
    return logp, adv, rng


def _inp(logp, old, adv):
    return LossInputs(logp, old, adv, np.ones_like(logp))


def test_clip_cov_detaches_exactly_k_eligible_unclipped_tokens():
    logp, adv, rng = _tokens()
    old = logp + 0.5 * rng.standard_normal(logp.size)  # off-policy: some tokens clipped
    cfg = PolicyLossConfig(
        loss_mode="clip_cov", clip_cov_ratio=0.02, clip_ratio_low=0.2, clip_ratio_high=0.2
    )
    out = clip_cov_loss(_inp(logp, old, adv), cfg, np.random.default_rng(1))
    ref = vanilla_loss(_inp(logp, old, adv), PolicyLossConfig(clip_ratio_c=None))
    detached = (out.dlogp == 0) & (ref.dlogp != 0)
    assert detached.sum() == n_selected(logp.size, 0.02) == 8
    cov = token_covariance(logp, adv, np.ones_like(logp))
    assert ((cov[detached] > 1) & (cov[detached] < 5)).all()
    clipped = ref.dlogp == 0
    assert not (detached & clipped).any()
    # the detached tokens' losses are zeroed and still counted in the mean's denominator
    assert (out.per_token_loss[detached] == 0).all()
    assert out.metrics["actor/cov_selected_frac"] == pytest.approx(8 / 400)


def test_clip_cov_selects_fewer_when_few_are_eligible():
    logp = np.log(np.full((1, 10), 0.5))
    adv = np.zeros((1, 10))
    cfg = PolicyLossConfig(loss_mode="clip_cov", clip_cov_ratio=0.5)
    out = clip_cov_loss(_inp(logp, logp, adv), cfg, np.random.default_rng(0))
    assert out.metrics["actor/cov_selected_frac"] == 0.0


def test_kl_cov_penalises_exactly_the_top_k_and_is_zero_on_policy():
    logp, adv, rng = _tokens()
    cfg = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.05, ppo_kl_coef=1.0)
    on = kl_cov_loss(_inp(logp, logp, adv), cfg)
    np.testing.assert_allclose(on.dlogp, -adv)  # no penalty gradient on-policy
    np.testing.assert_allclose(on.per_token_loss, -adv)
    old = logp - 0.1
    off = kl_cov_loss(_inp(logp, old, adv), cfg)
    ratio = np.exp(logp - old)
    penalised = np.flatnonzero(~np.isclose(off.per_token_loss, -ratio * adv))
    k = n_selected(logp.size, 0.05)
    assert penalised.size == k == 20
    top = np.argsort(-token_covariance(logp, adv, np.ones_like(logp)).reshape(-1))[:k]
    assert set(penalised) == set(top)
    np.testing.assert_allclose(off.per_token_loss[0, top], -ratio[0, top] * adv[0, top] + 0.1)


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="loss_mode.*not one of"):
        get_policy_loss("clip-cov")
    with pytest.raises(ValueError, match="clip_cov_lb"):
        PolicyLossConfig(clip_cov_lb=5, clip_cov_ub=1)
    with pytest.raises(ValueError, match="group_size"):
        AlgoConfig(group_size=1)


def _surrogate(env, z, batch, old_logp, adv, cfg):
    """The aggregated loss as a function of the logits (the slow reference)."""
    shape = (batch.group.size, -1)
    logp = log_softmax(z)[batch.state, batch.action].reshape(shape)
    inp = LossInputs(logp, old_logp.reshape(shape), adv.reshape(shape), np.ones_like(logp))
    out = get_policy_loss(cfg.loss_mode)(inp, cfg, np.random.default_rng(0))
    return float((agg_weights(np.ones_like(logp), cfg.loss_agg_mode) * out.per_token_loss).sum())


@pytest.mark.parametrize("loss", ["vanilla", "kl_cov"])
def test_grpo_single_epoch_gradient_matches_finite_differences(loss):
    env = ContextualBandit(np.random.default_rng(0).random((3, 4)))
    rng = np.random.default_rng(1)
    z0 = env.random_logits(rng)
    cfg = AlgoConfig(
        algo="grpo", epochs=2, group_size=6, policy_loss=PolicyLossConfig(loss_mode=loss)
    )
    lr = 1e-3
    res = step(env, z0, initial_state(z0, cfg), cfg, lr, np.random.default_rng(2))
    # replay: first epoch on-policy, then one more epoch from z1 = z0 − lr·∇L(z0)
    batch, old, adv = res.tokens, res.token_logp, res.token_adv
    h = 1e-6

    def grad_at(z):
        g = np.zeros_like(z)
        for idx in np.ndindex(z.shape):
            zp, zm = z.copy(), z.copy()
            zp[idx] += h
            zm[idx] -= h
            g[idx] = (
                _surrogate(env, zp, batch, old, adv, cfg.policy_loss)
                - _surrogate(env, zm, batch, old, adv, cfg.policy_loss)
            ) / (2 * h)
        return g

    z1 = z0 - lr * grad_at(z0)
    z2 = z1 - lr * grad_at(z1)
    np.testing.assert_allclose(res.logits, z2, atol=1e-9)


def test_pg_and_npg_steps_are_the_estimators_updates():
    env = ContextualBandit(np.random.default_rng(3).random((4, 5)))
    z = env.random_logits(np.random.default_rng(4))
    for algo, expected in (
        ("pg", pg_update(z, env.rewards, 0.3, env.prompt_weights)),
        ("npg", npg_update(z, env.rewards, 0.3)),
    ):
        cfg = AlgoConfig(algo=algo)
        res = step(env, z, initial_state(z, cfg), cfg, 0.3, np.random.default_rng(0))
        np.testing.assert_allclose(res.logits, expected, atol=1e-14)


@pytest.mark.parametrize(
    "env",
    [
        ContextualBandit(np.random.default_rng(5).random((3, 4)), prompt_weights=[1.0, 2.0, 3.0]),
        TokenTreeMDP(2, 3, np.random.default_rng(6).random(8)),
    ],
)
def test_reinforce_is_unbiased_for_the_policy_gradient(env):
    z = env.random_logits(np.random.default_rng(7))
    cfg = AlgoConfig(algo="reinforce", samples=2000)
    rng = np.random.default_rng(8)
    steps = [step(env, z, initial_state(z, cfg), cfg, 1.0, rng).logits - z for _ in range(20)]
    mean = np.mean(steps, axis=0)
    se = np.std(steps, axis=0) / np.sqrt(len(steps))
    exact = env.policy_gradient(z)
    assert (np.abs(mean - exact) <= 5 * se + 1e-12).all()


def test_sampled_actions_follow_the_policy():
    env = Bandit(np.array([0.0, 1.0, 0.5]))
    z = np.log(np.array([[0.2, 0.5, 0.3]]))
    batch = sample_batch(env, z, 20_000, np.random.default_rng(9))
    freq = np.bincount(batch.action, minlength=3) / batch.action.size
    np.testing.assert_allclose(freq, [0.2, 0.5, 0.3], atol=0.015)


def test_tree_batch_walks_real_prefixes():
    env = TokenTreeMDP(3, 3, np.arange(27.0))
    z = env.random_logits(np.random.default_rng(10))
    batch = sample_batch(env, z, 50, np.random.default_rng(11))
    states = batch.state.reshape(50, 3)
    actions = batch.action.reshape(50, 3)
    assert (states[:, 0] == 0).all()
    np.testing.assert_array_equal(states[:, 1], 1 + actions[:, 0])
    np.testing.assert_array_equal(states[:, 2], 4 + 3 * actions[:, 0] + actions[:, 1])
    np.testing.assert_array_equal(
        batch.reward, 9 * actions[:, 0] + 3 * actions[:, 1] + actions[:, 2]
    )


def test_token_weighted_means_by_hand():
    parts = [({"a": 1.0, "b": 4.0}, 2.0), ({"a": 3.0}, 6.0), ({"a": 100.0}, 0.0)]
    # a: (1·2 + 3·6 + 100·0) / 8 = 2.5; b only in the first part: 4
    assert token_weighted_means(parts) == {"a": 2.5, "b": 4.0}
    assert token_weighted_means([]) == {}


def test_grpo_actor_metrics_are_the_mean_over_the_step_updates(monkeypatch):
    """Each actor/* key is the token-weighted mean over the K updates of the step (every update
    of a tabular step sees the whole batch, so: the plain mean), not the last update's."""
    env = ContextualBandit(np.random.default_rng(0).random((3, 4)))
    z0 = env.random_logits(np.random.default_rng(1))
    cfg = AlgoConfig(algo="grpo", epochs=3, group_size=6, policy_loss=PolicyLossConfig())
    seen = []
    real = algorithms.compute_policy_loss

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out.metrics)
        return out

    monkeypatch.setattr(algorithms, "compute_policy_loss", recording)
    res = step(env, z0, initial_state(z0, cfg), cfg, 0.5, np.random.default_rng(2))
    assert len(seen) == 3
    assert seen[0]["actor/ppo_kl"] == 0.0  # the first update is on-policy
    for key in ("actor/ppo_kl", "actor/pg_clipfrac", "actor/entropy"):
        assert res.metrics[key] == pytest.approx(np.mean([m[key] for m in seen]), rel=1e-12)
    assert res.metrics["actor/ppo_kl"] != pytest.approx(seen[-1]["actor/ppo_kl"])
    assert res.metrics["actor/entropy_coeff"] == 0.0
