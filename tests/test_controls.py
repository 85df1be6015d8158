"""The follow-up entropy controls (GPPO, CISPO, GSPO, Archer, W-REINFORCE, the entropy-shaped
advantage, the oracle selector) by hand, and the ΔH attribution: each family of parts sums to
``pred_lemma1`` for every algorithm and control in the tabular world, where it is exact."""

import dataclasses
import math

import numpy as np
import pytest

from softmax_theory import losses
from softmax_theory.algorithms import AlgoConfig
from softmax_theory.attribution import (
    CLIP_PARTS,
    IS_PARTS,
    SIGN_PARTS,
    attribution_parts,
    likely_tokens,
    own_entropy_term,
)
from softmax_theory.dynamics import SimConfig, simulate
from softmax_theory.envs import EnvConfig, make_env
from softmax_theory.estimators import first_order_entropy_change, log_softmax
from softmax_theory.group_advantages import AdvantageEstimator, compute_advantages
from softmax_theory.policy import PolicyLossConfig


def _inp(log_ratio, adv, **kw):
    log_ratio = np.atleast_2d(np.asarray(log_ratio, dtype=np.float64))
    old = np.full_like(log_ratio, -1.0)
    return losses.LossInputs(
        log_prob=old + log_ratio,
        old_log_prob=old,
        advantages=np.atleast_2d(np.asarray(adv, dtype=np.float64)),
        response_mask=np.ones_like(log_ratio),
        **kw,
    )


def test_gppo_keeps_a_bounded_gradient_outside_the_clip():
    cfg = PolicyLossConfig(loss_mode="gppo", gppo_beta_low=0.5, gppo_beta_high=2.0)
    r = np.array([1.5, 0.5, 1.0, 1.1])
    out = losses.gppo_loss(_inp(np.log(r), [1, -1, 1, -1]), cfg)
    # A > 0 above 1.28: β₂·1.28; A < 0 below 0.8: β₁·0.8; elsewhere the plain −A·r
    expected = np.array([-2.0 * 1.28, 0.5 * 0.8, -1.0, 1.1])
    np.testing.assert_allclose(out.per_token_loss[0], expected, rtol=1e-12)
    np.testing.assert_allclose(out.dlogp[0], expected, rtol=1e-12)
    np.testing.assert_array_equal(out.clipped[0], [True, True, False, False])
    # vanilla drops both clipped tokens' gradients; GPPO with β = 1 keeps (1 ± ε)·A
    van = losses.vanilla_loss(_inp(np.log(r), [1, -1, 1, -1]), PolicyLossConfig())
    assert van.dlogp[0, 0] == 0 and van.dlogp[0, 1] == 0


def test_cispo_weight_is_truncated_and_every_token_keeps_its_gradient():
    cfg = PolicyLossConfig(loss_mode="cispo", clip_ratio_low=0.2, clip_ratio_high=0.28)
    inp = _inp(np.log([2.0, 0.5, 1.1]), [1.0, -1.0, 2.0])
    out = losses.cispo_loss(inp, cfg)
    w = np.array([1.28, 0.8, 1.1])
    np.testing.assert_allclose(out.per_token_loss[0], -w * [1, -1, 2] * inp.log_prob[0])
    np.testing.assert_allclose(out.dlogp[0], -w * [1, -1, 2])
    np.testing.assert_array_equal(out.clipped[0], [True, True, False])
    assert PolicyLossConfig(loss_mode="cispo").clip_ratio_high == 4.0  # weight ≤ 5


def test_gspo_clips_the_whole_response_on_its_length_normalised_ratio():
    cfg = PolicyLossConfig(loss_mode="gspo", clip_ratio_low=0.05, clip_ratio_high=0.05)
    inp = _inp([[0.2, 0.0], [0.02, 0.0]], [[1.0, 1.0], [1.0, 1.0]])
    out = losses.gspo_loss(inp, cfg)
    np.testing.assert_allclose(losses.sequence_log_ratio(inp), [0.1, 0.01])
    # response 0: s = e^0.1 = 1.105 > 1.05, clipped, no gradient; response 1: s = e^0.01
    np.testing.assert_allclose(out.per_token_loss[0], [-1.05, -1.05])
    np.testing.assert_allclose(out.dlogp[0], [0.0, 0.0])
    np.testing.assert_allclose(out.per_token_loss[1], [-math.exp(0.01)] * 2, rtol=1e-12)
    np.testing.assert_allclose(out.dlogp[1], [-math.exp(0.01)] * 2, rtol=1e-12)
    assert out.clipped[0].all() and not out.clipped[1].any()


def test_archer_splits_tokens_at_the_response_entropy_quantile():
    cfg = PolicyLossConfig(loss_mode="archer", archer_kl_coef=0.1)
    h = np.array([[0.1, 0.2, 0.3, 2.0, 0.15]])
    # the 80% quantile of [0.1, 0.15, 0.2, 0.3, 2.0] is 0.3 + 0.2·1.7 = 0.64: one token above
    high = losses.high_entropy_tokens(h, np.ones_like(h), 0.8)
    np.testing.assert_array_equal(high[0], [False, False, False, True, False])
    lr = np.full((1, 5), math.log(1.4))
    inp = _inp(lr, np.ones((1, 5)), entropy=h, ref_log_prob=np.full((1, 5), -1.0))
    out = losses.archer_loss(inp, cfg)
    d = -1.0 - inp.log_prob[0]  # log π_ref − log π
    k3 = np.expm1(d) - d
    # high-entropy token: range ±0.5, 1.4 inside, no KL; the others clip at 1.2 and pay the KL
    expected = np.where(high[0], -1.4, -1.2 + 0.1 * k3)
    np.testing.assert_allclose(out.per_token_loss[0], expected, rtol=1e-12)
    np.testing.assert_array_equal(out.clipped[0], ~high[0])


def test_entropy_shaped_advantage_by_hand():
    adv = np.array([1.0, -1.0, 0.2, 0.0])
    h = np.array([0.5, 3.0, 3.0, 3.0])
    shaped = losses.entropy_shaped_advantage(adv, h, alpha=0.4, kappa=2.0)
    # min(0.4·H, |A|/2): 0.2, 0.5, 0.1, 0
    np.testing.assert_allclose(shaped, [1.2, -0.5, 0.3, 0.0])


def test_w_reinforce_by_hand_and_its_refusals():
    r, g = np.array([1.0, 0.0, 0.5]), np.zeros(3, dtype=int)
    np.testing.assert_allclose(
        compute_advantages(AdvantageEstimator.W_REINFORCE, r, g), [0.1, -1.0, -0.45]
    )
    np.testing.assert_allclose(
        compute_advantages(AdvantageEstimator.W_REINFORCE, r, g, 0.0), [0.0, -1.0, -0.5]
    )
    with pytest.raises(ValueError, match="w_reinforce_lambda"):
        compute_advantages(AdvantageEstimator.GRPO, r, g, 0.5)
    with pytest.raises(ValueError, match="rewards in"):
        compute_advantages(AdvantageEstimator.W_REINFORCE, np.array([2.0]), g[:1])
    with pytest.raises(ValueError, match="w_reinforce_lambda"):
        AlgoConfig(w_reinforce_lambda=0.2)


def test_own_entropy_term_is_lemma1_of_a_score_function_step():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 6))
    term = own_entropy_term(z)
    p = np.exp(log_softmax(z))
    for a in range(6):
        delta = np.eye(6)[a] - p  # δ = e_a − π
        np.testing.assert_allclose(
            first_order_entropy_change(z, delta), -term[:, a], rtol=1e-12, atol=1e-15
        )


def test_oracle_picks_the_largest_entropy_drops_and_bounds_the_covariance_rule():
    rng = np.random.default_rng(1)
    lp = np.log(rng.uniform(0.05, 0.95, (4, 25)))
    adv = np.repeat(rng.standard_normal((4, 1)), 25, axis=1)
    score = rng.standard_normal((4, 25))
    inp = losses.LossInputs(lp, lp, adv, np.ones_like(lp), score=score)
    cfg = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.04, cov_selector="oracle")
    sel = losses.select_cov_tokens(inp, cfg)
    assert sel.sum() == 4  # int(100·0.04), as the covariance rule
    value = adv * score
    assert value[sel].min() >= value[~sel].max()
    cov = losses.kl_cov_loss(inp, PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.04))
    orc = losses.kl_cov_loss(inp, cfg)
    assert orc.metrics["actor/cov_selected_value"] == orc.metrics["actor/cov_oracle_value"]
    assert cov.metrics["actor/cov_selected_value"] <= cov.metrics["actor/cov_oracle_value"]


def test_likely_is_above_the_typical_token():
    # H = log 4 for a uniform 4-way choice: π = 0.25 = e^{−H} is the boundary
    h = math.log(4)
    assert likely_tokens(np.log([0.25, 0.3, 0.2]), np.full(3, h)).tolist() == [True, True, False]
    parts = attribution_parts(
        np.array([1.0, 2.0, 4.0, 8.0, 16.0]),
        np.array([1.0, 1.0, -1.0, -1.0, 0.0]),
        np.log([0.9, 0.01, 0.9, 0.01, 0.5]),
        np.full(5, 1.0),
        np.array([True, False, False, False, True]),
    )
    assert [parts[k] for k in SIGN_PARTS] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert (parts["attr/clipped"], parts["attr/unclipped"]) == (17.0, 14.0)
    assert not set(IS_PARTS) & parts.keys()  # no correction: no capped split, not a guessed one


def test_the_capped_family_splits_pred_lemma1_by_the_weights_that_hit_the_cap():
    """With the truncated importance-sampling correction, the tokens whose weight reached the
    cap are one class: by hand, and on the torch loss's own capped mask, where the family sums
    to the total as the others do."""
    contrib = np.array([1.0, 2.0, 4.0, 8.0])
    capped = np.array([False, True, True, False])
    parts = attribution_parts(contrib, np.ones(4), np.zeros(4), np.ones(4), None, capped)
    assert (parts["attr/is_capped"], parts["attr/is_uncapped"]) == (6.0, 9.0)
    assert not set(CLIP_PARTS) & parts.keys()
    # the mask comes from the loss: the same tokens whose ratio π_old/π_sampler exceeds C
    rng = np.random.default_rng(3)
    old = np.log(rng.uniform(0.05, 1.0, (4, 6)))
    sampler = old + rng.normal(0.0, 0.8, old.shape)
    cfg = PolicyLossConfig(rollout_is="token", rollout_is_threshold=1.5)
    inp = losses.LossInputs(
        old, old, rng.normal(size=old.shape), np.ones(old.shape), sampler_log_prob=sampler
    )
    out = losses.compute_policy_loss(inp, cfg)
    np.testing.assert_array_equal(out.is_capped, np.exp(old - sampler) > 1.5)
    assert 0 < out.is_capped.sum() < out.is_capped.size
    c = rng.normal(size=old.size)
    parts = attribution_parts(
        c,
        inp.advantages.ravel(),
        old.ravel(),
        np.ones(old.size),
        out.clipped.ravel(),
        out.is_capped.ravel(),
    )
    for family in (SIGN_PARTS, CLIP_PARTS, IS_PARTS):
        assert sum(parts[k] for k in family) == pytest.approx(c.sum(), abs=1e-12)
    assert parts["attr/is_capped"] == pytest.approx(c[out.is_capped.ravel()].sum(), abs=1e-12)


ALGOS = [
    ("pg", {}, {}),
    ("npg", {}, {}),
    ("reinforce", {}, {}),
    ("grpo", {}, {}),
    ("grpo", {"clip_ratio_low": 0.05, "clip_ratio_high": 0.05}, {}),
    ("grpo", {"loss_mode": "clip_cov", "cov_scope": "global", "clip_cov_ratio": 0.05}, {}),
    ("grpo", {"loss_mode": "clip_cov", "clip_cov_ratio": 0.05}, {"micro_batches": 4}),
    ("grpo", {"loss_mode": "kl_cov", "cov_selector": "oracle"}, {}),
    ("grpo", {"loss_mode": "gppo", "gppo_beta_low": 0.5, "gppo_beta_high": 2.0}, {}),
    ("grpo", {"loss_mode": "cispo"}, {}),
    ("grpo", {"loss_mode": "gspo"}, {}),
    ("grpo", {"loss_mode": "archer"}, {}),
    ("grpo", {"entropy_coeff": 0.01, "kl_loss_coef": 0.1, "top_entropy_ratio": 0.5}, {}),
    ("grpo", {"entropy_adv_alpha": 0.2}, {"advantage": "w_reinforce"}),
]


@pytest.mark.parametrize("env_name", ["contextual", "explore"])
@pytest.mark.parametrize("algo,loss,extra", ALGOS, ids=[f"{a}{los}{e}" for a, los, e in ALGOS])
def test_each_attribution_family_sums_to_pred_lemma1(env_name, algo, loss, extra):
    env = make_env(EnvConfig(name=env_name))
    cfg = SimConfig(
        steps=6,
        lr=1.0,
        algo=AlgoConfig(algo=algo, policy_loss=PolicyLossConfig(**loss), **extra),
    )
    records = simulate(env, cfg).records
    for r in records:
        for family in (SIGN_PARTS, CLIP_PARTS):
            assert sum(r[k] for k in family) == pytest.approx(r["pred_lemma1"], abs=1e-9)
        assert r["pred_lemma1"] != 0
    if loss.get("clip_ratio_low") == 0.05 or loss.get("loss_mode") == "gspo":
        # a narrow clip does act, and the clipped tokens' part is then reported apart
        assert any(r["actor/pg_clipfrac"] > 0 for r in records)


def test_pg_attribution_is_the_expected_update_split_by_action():
    """NPG raises each action's logit by η·A: its part is −w·η·A·π(log π + H), by hand."""
    env = make_env(EnvConfig(name="contextual"))
    z = env.initial_logits(np.random.default_rng(0))
    lr = 0.3
    records = simulate(
        env, SimConfig(steps=1, lr=lr, algo=AlgoConfig(algo="npg")), logits=z
    ).records
    p, lp = np.exp(log_softmax(z)), log_softmax(z)
    h = -(p * lp).sum(1, keepdims=True)
    part = -env.state_weights(z)[:, None] * lr * env.advantages(z) * p * (lp + h)
    a = env.advantages(z)
    likely = lp >= -h
    assert records[0]["attr/pos_high"] == pytest.approx(part[(a > 0) & likely].sum(), abs=1e-12)
    assert records[0]["attr/neg_low"] == pytest.approx(part[(a < 0) & ~likely].sum(), abs=1e-12)


def test_policy_loss_output_carries_the_torch_twins_fields():
    """The numpy PolicyLossOutput has the torch one's fields, in its order; what only numpy
    has (the exact derivatives) follows, keyword-only."""
    torch_losses = pytest.importorskip("llm_bridge.losses")
    ours = dataclasses.fields(losses.PolicyLossOutput)
    twin = [f.name for f in dataclasses.fields(torch_losses.PolicyLossOutput)]
    assert [f.name for f in ours[: len(twin)]] == twin
    assert twin == ["per_token_loss", "metrics", "clipped", "is_capped"]
    extras = ours[len(twin) :]
    assert [f.name for f in extras] == ["dlogp", "dentropy"]
    assert all(f.kw_only for f in extras)
