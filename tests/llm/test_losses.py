"""Policy losses: hand-computed values, selection rules, the config's refusals, aggregation, and
the numpy ↔ torch parity of ``compute_policy_loss`` with every control switched on."""

import math

import numpy as np
import pytest
import torch

import softmax_theory as smt
from llm_bridge import LossInputs, PolicyLossConfig, agg_loss, compute_policy_loss
from llm_bridge.losses import (
    COV_SELECTORS,
    get_policy_loss,
    kl_penalty,
    select_clip_cov,
    select_kl_cov,
    top_entropy_mask,
    truncated_is_weights,
)
from llm_bridge.losses import select_by_scope as llm_select_by_scope
from softmax_theory import losses as np_losses
from softmax_theory.policy import AggMode, n_selected, n_top


def _inputs(lp, old, adv, mask, **kw):
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return LossInputs(
        log_prob=t(lp),
        old_log_prob=t(old),
        advantages=t(adv),
        response_mask=torch.tensor(mask),
        **kw,
    )


def test_vanilla_by_hand():
    # ratios e^{0.5} ≈ 1.65 (A = 1: clipped at 1.2), e^{−0.5} ≈ 0.61 (A = −1: clipped at 0.8),
    # 1 (unclipped), padding
    inp = _inputs(
        [[0.5, -0.5, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]], [[1.0, -1.0, 2.0, 3.0]], [[1, 1, 1, 0]]
    )
    out = compute_policy_loss(inp, PolicyLossConfig())
    torch.testing.assert_close(
        out.per_token_loss, torch.tensor([[-1.2, 0.8, -2.0, 0.0]], dtype=torch.float64)
    )
    assert float(out.metrics["actor/pg_clipfrac"]) == pytest.approx(2 / 3)
    # clip-higher lifts the upper bound to 1.28, unless the user sets it
    out = compute_policy_loss(inp, PolicyLossConfig(loss_mode="clip_higher"))
    assert float(out.per_token_loss[0, 0]) == pytest.approx(-1.28)
    out = compute_policy_loss(inp, PolicyLossConfig(loss_mode="clip_higher", clip_ratio_high=0.3))
    assert float(out.per_token_loss[0, 0]) == pytest.approx(-1.3)


def test_dual_clip_by_hand():
    # A = −2 and ratio e^{1.5} ≈ 4.48 > c = 3: PPO's loss 8.96 is capped at c·|A| = 6
    inp = _inputs([[1.5, 1.5]], [[0.0, 0.0]], [[-2.0, 2.0]], [[1, 1]])
    out = compute_policy_loss(inp, PolicyLossConfig())
    r = math.exp(1.5)
    torch.testing.assert_close(
        out.per_token_loss, torch.tensor([[6.0, -2.0 * 1.2]], dtype=torch.float64)
    )
    assert float(out.metrics["actor/pg_clipfrac_lower"]) == pytest.approx(0.5)
    off = compute_policy_loss(inp, PolicyLossConfig(clip_ratio_c=None))
    assert float(off.per_token_loss[0, 0]) == pytest.approx(2.0 * r)
    assert "actor/pg_clipfrac_lower" not in off.metrics
    # Clip-Cov (clip range 1: ratio in [0, 2]) has no dual-clip, as verl; no token selected here
    cc = PolicyLossConfig(loss_mode="clip_cov", clip_cov_lb=100.0, clip_cov_ub=200.0)
    assert float(compute_policy_loss(inp, cc).per_token_loss[0, 0]) == pytest.approx(2.0 * r)


def test_kl_cov_by_hand_and_zero_on_policy():
    lp = [[-1.0, -2.0, -0.5, -3.0]]
    adv = [[1.0, -1.0, 2.0, 0.5]]
    mask = [[1, 1, 1, 1]]
    cfg = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.25, ppo_kl_coef=2.0)
    # cov = (lp + 1.625)(A − 0.625): (0.234, −0.609, 1.547, −0.172) → top-1 is token 2
    off = _inputs(lp, [[-1.0, -2.0, -0.7, -3.0]], adv, mask)
    out = compute_policy_loss(off, cfg)
    ratio2 = math.exp(0.2)
    expected = [-1.0, 1.0, -2.0 * ratio2 + 2.0 * 0.2, -0.5]
    torch.testing.assert_close(out.per_token_loss, torch.tensor([expected], dtype=torch.float64))
    # on-policy: the penalty and its gradient vanish
    lp_t = torch.tensor(lp, dtype=torch.float64, requires_grad=True)
    on = LossInputs(
        lp_t, lp_t.detach().clone(), torch.tensor(adv, dtype=torch.float64), torch.tensor(mask)
    )
    loss = compute_policy_loss(on, cfg).per_token_loss.sum()
    loss.backward()
    torch.testing.assert_close(lp_t.grad, -torch.tensor(adv, dtype=torch.float64))


def _random_batch(b=6, t=50, seed=0, off_policy=0.3, per_token_adv=False):
    """Responses of decreasing length; one advantage per response (GRPO) or per token."""
    g = torch.Generator().manual_seed(seed)
    lp = torch.log(torch.rand(b, t, generator=g, dtype=torch.float64).clamp_min(1e-3))
    old = lp + off_policy * torch.randn(b, t, generator=g, dtype=torch.float64)
    adv = 2 * torch.randn(b, t if per_token_adv else 1, generator=g, dtype=torch.float64)
    adv = adv.expand(b, t).clone()
    mask = torch.ones(b, t, dtype=torch.bool)
    for i in range(b):
        mask[i, int(t * (0.5 + 0.5 * i / b)) :] = False
    return lp, old, adv, mask


def test_clip_cov_selects_exactly_k_and_never_masked_or_clipped():
    lp, old, adv, mask = _random_batch()
    cfg = PolicyLossConfig(
        loss_mode="clip_cov", clip_cov_ratio=0.05, clip_ratio_low=0.2, clip_ratio_high=0.2
    )
    inp = LossInputs(lp, old, adv, mask)
    sel = select_clip_cov(inp, cfg, torch.Generator().manual_seed(0))
    n_valid = int(mask.sum())
    assert int(sel.sum()) == n_selected(n_valid, 0.05)
    assert not (sel & ~mask).any()
    ratio = torch.exp(lp - old)
    clipped = (-adv * ratio.clamp(0.8, 1.2)) > (-adv * ratio)
    assert not (sel & clipped).any()
    cov = (lp - lp[mask].mean()) * (adv - adv[mask].mean())
    assert ((cov[sel] > 1) & (cov[sel] < 5)).all()
    out = compute_policy_loss(inp, cfg, generator=torch.Generator().manual_seed(0))
    assert (out.per_token_loss[sel] == 0).all()
    assert float(out.metrics["actor/cov_selected_frac"]) == pytest.approx(sel.sum() / n_valid)
    # the detached tokens stay in the token-mean denominator
    mean = agg_loss(out.per_token_loss, mask, "token-mean")
    assert float(mean) == pytest.approx(float(out.per_token_loss[mask].sum() / n_valid))


def test_kl_cov_selects_exactly_the_top_k_valid_tokens():
    lp, old, adv, mask = _random_batch(seed=1)
    cfg = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.02)
    sel = select_kl_cov(LossInputs(lp, old, adv, mask), cfg)
    k = n_selected(int(mask.sum()), 0.02)
    assert int(sel.sum()) == k and not (sel & ~mask).any()
    cov = (lp - lp[mask].mean()) * (adv - adv[mask].mean())
    assert float(cov[mask].sort(descending=True).values[k - 1]) <= float(cov[sel].min())


def test_mini_scope_selection_is_passed_through():
    lp, old, adv, mask = _random_batch(seed=4)
    cfg = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.05, cov_scope="mini")
    sel = COV_SELECTORS[cfg.loss_mode](LossInputs(lp, old, adv, mask), cfg)
    micro = LossInputs(lp[:3], old[:3], adv[:3], mask[:3])
    out = compute_policy_loss(micro, cfg, selected=sel[:3])
    ratio = torch.exp(lp[:3] - old[:3])
    penalised = ~torch.isclose(out.per_token_loss, -adv[:3] * ratio * mask[:3])
    assert torch.equal(penalised, sel[:3] & ((lp[:3] - old[:3]).abs() > 0))


def test_entropy_bonus_kl_loss_and_top_entropy():
    lp, old, adv, mask = _random_batch(b=2, t=10, seed=5)
    ent = torch.rand(2, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ref = lp - 0.1
    base = compute_policy_loss(LossInputs(lp, old, adv, mask), PolicyLossConfig())
    with_bonus = compute_policy_loss(
        LossInputs(lp, old, adv, mask, entropy=ent), PolicyLossConfig(entropy_coeff=0.5)
    )
    torch.testing.assert_close(with_bonus.per_token_loss, (base.per_token_loss - 0.5 * ent) * mask)
    with_kl = compute_policy_loss(
        LossInputs(lp, old, adv, mask, ref_log_prob=ref),
        PolicyLossConfig(kl_loss_coef=0.2, kl_loss_type="k1"),
    )
    torch.testing.assert_close(with_kl.per_token_loss, (base.per_token_loss + 0.2 * 0.1) * mask)
    keep = top_entropy_mask(ent, mask, 0.2)
    assert int(keep.sum()) == n_top(int(mask.sum()), 0.2) == math.ceil(0.2 * int(mask.sum()))
    assert ent[keep].min() >= ent[mask & ~keep].max()
    with pytest.raises(ValueError, match="entropy"):
        compute_policy_loss(LossInputs(lp, old, adv, mask), PolicyLossConfig(entropy_coeff=0.1))
    with pytest.raises(ValueError, match="ref_log_prob"):
        compute_policy_loss(LossInputs(lp, old, adv, mask), PolicyLossConfig(kl_loss_coef=0.1))


def test_truncated_importance_sampling_by_hand():
    """ρ = π_old/π_sampler = e^1, 1, e^{−0.5} and padding: w = (2, 1, 0.61, 0) with cap 2; the
    policy loss is weighted, its gradient scales by w, and the entropy bonus is not weighted."""
    old = [[-1.0, -2.0, -0.5, -1.0]]
    sampler = torch.tensor([[-2.0, -2.0, 0.0, float("nan")]], dtype=torch.float64)
    lp = torch.tensor(old, dtype=torch.float64, requires_grad=True)  # on-policy: ratio 1
    adv = torch.tensor([[1.0, -1.0, 2.0, 3.0]], dtype=torch.float64)
    ent = torch.full((1, 4), 0.5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    inp = LossInputs(lp, lp.detach().clone(), adv, mask, ent, sampler_log_prob=sampler)
    cfg = PolicyLossConfig(rollout_is="token", entropy_coeff=0.1)
    out = compute_policy_loss(inp, cfg)
    w = torch.tensor([[2.0, 1.0, math.exp(-0.5), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(out.per_token_loss, (-adv * w - 0.1 * ent) * mask)
    assert out.is_capped.tolist() == [[True, False, False, False]]
    assert float(out.metrics["actor/is_weight_mean"]) == pytest.approx((3 + math.exp(-0.5)) / 3)
    assert float(out.metrics["actor/is_clip_frac"]) == pytest.approx(1 / 3)
    out.per_token_loss.sum().backward()
    torch.testing.assert_close(lp.grad, -adv * w)
    # the sequence level: one weight per response, e^{Σ log ρ} = e^{1 + 0 − 0.5}, capped at 2
    seq, capped = truncated_is_weights(lp, sampler, mask, "sequence", 2.0)
    torch.testing.assert_close(seq, math.exp(0.5) * mask.double())
    assert not capped.any()
    # off, the loss is the uncorrected one and reports neither the weight nor the capped tokens
    plain = compute_policy_loss(inp, PolicyLossConfig(entropy_coeff=0.1))
    torch.testing.assert_close(plain.per_token_loss, (-adv - 0.1 * ent) * mask)
    assert plain.is_capped is None and "actor/is_weight_mean" not in plain.metrics


def test_truncated_importance_sampling_refuses_what_it_cannot_read():
    lp, old, adv, mask = _random_batch(b=2, t=5, seed=2)
    cfg = PolicyLossConfig(rollout_is="token")
    with pytest.raises(ValueError, match="^sampler_log_prob: rollout_is needs"):
        compute_policy_loss(LossInputs(lp, old, adv, mask), cfg)
    bad = old.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="^sampler_log_prob: contains NaN"):
        LossInputs(lp, old, adv, mask, sampler_log_prob=bad)
    with pytest.raises(ValueError, match="^sampler_log_prob: contains NaN"):
        np_losses.LossInputs(
            lp.numpy(), old.numpy(), adv.numpy(), mask.numpy(), sampler_log_prob=bad.numpy()
        )
    with pytest.raises(ValueError, match="^rollout_is:"):
        truncated_is_weights(old, old, mask, "tokens", 2.0)


def test_n_top_is_a_ceiling_without_float_artefacts():
    assert n_top(256, 0.2) == 52  # ⌈51.2⌉
    assert n_top(30, 0.1) == 3  # 0.1·30 is 3.0000000000000004 in floating point
    assert n_top(10, 0.01) == 1 and n_top(5, 1.0) == 5


def test_kl_estimators_by_hand():
    lp, ref = torch.tensor([0.0, -1.0]), torch.tensor([-1.0, -1.0])
    torch.testing.assert_close(kl_penalty(lp, ref, "k1"), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(kl_penalty(lp, ref, "k3"), torch.tensor([math.exp(-1), 0.0]))
    # verl's clamp: k3 never exceeds 10
    assert float(kl_penalty(torch.tensor([-30.0]), torch.tensor([0.0]), "k3")) == 10.0


def test_aggregation_modes_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert float(agg_loss(loss, mask, AggMode.TOKEN_MEAN)) == pytest.approx(10 / 4)
    assert float(agg_loss(loss, mask, "token-sum")) == pytest.approx(10)
    assert float(agg_loss(loss, mask, "seq-mean-token-mean")) == pytest.approx((2 + 4) / 2)
    assert float(agg_loss(loss, mask, "seq-mean-token-sum")) == pytest.approx((6 + 4) / 2)
    # verl ≥ 0.7.1: the seq-mean of token sums over the horizon T = 3
    assert float(agg_loss(loss, mask, "seq-mean-token-sum-norm")) == pytest.approx(5 / 3)
    # the paper's code: the token sum over the horizon, larger by the number of responses
    assert float(agg_loss(loss, mask, "token-sum-norm")) == pytest.approx(10 / 3)
    # explicit normalisers (a micro-batch of a larger batch)
    assert float(agg_loss(loss, mask, "token-mean", batch_num_tokens=8)) == pytest.approx(10 / 8)
    assert float(agg_loss(loss, mask, "seq-mean-token-sum", global_batch_size=4)) == 2.5
    assert float(agg_loss(loss, mask, "token-sum-norm", loss_scale_factor=5)) == 2.0
    with pytest.raises(ValueError, match="loss_agg_mode"):
        agg_loss(loss, mask, "token_mean")


def test_bad_loss_input_is_named():
    with pytest.raises(ValueError, match="loss_mode.*not one of"):
        get_policy_loss("clip-cov")
    with pytest.raises(ValueError, match="advantages"):
        LossInputs(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="old_log_prob"):
        LossInputs(
            torch.zeros(2, 3), torch.full((2, 3), float("nan")), torch.zeros(2, 3), torch.ones(2, 3)
        )


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"loss_mode": "kl_cov", "clip_cov_ratio": 0.1}, "clip_cov_ratio"),
        ({"loss_mode": "kl_cov", "clip_ratio_low": 0.1}, "clip_ratio_low"),
        ({"loss_mode": "kl_cov", "clip_ratio_c": 2.0}, "clip_ratio_c"),
        ({"loss_mode": "clip_cov", "ppo_kl_coef": 0.5}, "ppo_kl_coef"),
        ({"loss_mode": "vanilla", "kl_cov_ratio": 0.1}, "kl_cov_ratio"),
        ({"loss_mode": "vanilla", "cov_scope": "mini"}, "cov_scope"),
        ({"entropy_delta": 0.1}, "entropy_delta"),
        ({"kl_loss_type": "k1"}, "kl_loss_type"),
        ({"loss_scale_factor": 10.0}, "loss_scale_factor"),
        ({"clip_ratio_c": 1.0}, "clip_ratio_c"),
        ({"rollout_is_threshold": 3.0}, "rollout_is_threshold"),
        ({"rollout_is": "token", "rollout_is_threshold": 0.5}, "rollout_is_threshold"),
        ({"rollout_is": "geometric"}, "rollout_is"),
    ],
)
def test_a_setting_the_loss_does_not_read_is_refused_by_name(settings, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        PolicyLossConfig(**settings)


def test_per_loss_defaults_are_resolved_and_recorded():
    assert (PolicyLossConfig().clip_ratio_low, PolicyLossConfig().clip_ratio_high) == (0.2, 0.2)
    ch = PolicyLossConfig(loss_mode="clip_higher")
    assert (ch.clip_ratio_high, ch.clip_ratio_c) == (0.28, 3.0)
    cc = PolicyLossConfig(loss_mode="clip_cov")
    assert (cc.clip_ratio_low, cc.clip_ratio_high, cc.clip_ratio_c) == (1.0, 1.0, None)
    assert (cc.clip_cov_ratio, cc.clip_cov_lb, cc.clip_cov_ub, cc.kl_cov_ratio) == (
        2e-4,
        1.0,
        5.0,
        None,
    )
    kc = PolicyLossConfig(loss_mode="kl_cov")
    assert (kc.kl_cov_ratio, kc.ppo_kl_coef, kc.clip_ratio_low) == (0.002, 1.0, None)
    # a resolved config is its own fixed point (what config.json holds reads back the same)
    assert PolicyLossConfig(**{f: getattr(cc, f) for f in cc.__dataclass_fields__}) == cc


# ---------------------------------------------------------------------------------------------
# numpy ↔ torch: one definition in two worlds
# ---------------------------------------------------------------------------------------------

CONTROLS = {
    "none": {},
    "every control": {
        "entropy_coeff": 0.05,
        "kl_loss_coef": 0.1,
        "top_entropy_ratio": 0.3,
    },
    "k1": {"kl_loss_coef": 0.2, "kl_loss_type": "k1"},
    "entropy-shaped advantage": {"entropy_adv_alpha": 0.3, "entropy_adv_kappa": 2.5},
    "rollout_is token": {"rollout_is": "token", "rollout_is_threshold": 1.3},
    "rollout_is sequence, every control": {
        "rollout_is": "sequence",
        "rollout_is_threshold": 4.0,
        "entropy_coeff": 0.05,
        "kl_loss_coef": 0.1,
        "top_entropy_ratio": 0.3,
    },
}
LOSSES = {
    "vanilla": {},
    "clip_higher": {"clip_ratio_c": 2.0},
    "clip_cov": {"clip_cov_ratio": 0.05, "clip_ratio_low": 0.2, "clip_ratio_high": 0.25},
    "kl_cov": {"kl_cov_ratio": 0.05, "ppo_kl_coef": 0.7},
    "kl_cov oracle": {"loss_mode": "kl_cov", "kl_cov_ratio": 0.05, "cov_selector": "oracle"},
    "clip_cov oracle": {"loss_mode": "clip_cov", "clip_cov_ratio": 0.05, "cov_selector": "oracle"},
    "gppo": {"gppo_beta_low": 0.5, "gppo_beta_high": 1.5},
    "cispo": {"clip_ratio_low": 0.3, "clip_ratio_high": 0.4},
    "gspo": {"clip_ratio_low": 0.05, "clip_ratio_high": 0.05},
    "archer": {"archer_kl_coef": 0.05},
}


@pytest.mark.parametrize("mode", [m.value for m in AggMode])
@pytest.mark.parametrize("controls", list(CONTROLS))
@pytest.mark.parametrize("loss", list(LOSSES))
def test_compute_policy_loss_numpy_equals_torch(loss, controls, mode):
    """Per-token loss, metrics, aggregate and gradient (w.r.t. log π and H) agree to 1e-12."""
    lp, old, adv, mask = _random_batch(b=5, t=40, seed=7, off_policy=0.6, per_token_adv=True)
    g = torch.Generator().manual_seed(8)
    ent = 3 * torch.rand(lp.shape, generator=g, dtype=torch.float64)
    ref = lp + 0.3 * torch.randn(lp.shape, generator=g, dtype=torch.float64)
    score = torch.randn(lp.shape, generator=g, dtype=torch.float64)
    sampler = old + 0.5 * torch.randn(lp.shape, generator=g, dtype=torch.float64)
    settings = {"loss_mode": loss, **LOSSES[loss], **CONTROLS[controls]}
    cfg = PolicyLossConfig(loss_agg_mode=mode, **settings)
    np_inp = np_losses.LossInputs(
        *(x.numpy() for x in (lp, old, adv, mask, ent, ref, score, sampler))
    )
    # Clip-Cov draws at random: both worlds get the same draw (each world's own draw is tested
    # above); KL-Cov's top-k is deterministic and each world selects on its own
    selected = None
    if settings["loss_mode"] == "clip_cov" and "cov_selector" not in settings:
        selected = np_losses.select_clip_cov(np_inp, cfg, np.random.default_rng(0))
        assert selected.sum() > 0
    ours = np_losses.compute_policy_loss(np_inp, cfg, selected=selected)
    lp_t, ent_t = lp.clone().requires_grad_(True), ent.clone().requires_grad_(True)
    torch_out = compute_policy_loss(
        LossInputs(lp_t, old, adv, mask, ent_t, ref, score, sampler),
        cfg,
        selected=None if selected is None else torch.from_numpy(selected),
    )
    for name in ("clipped", "is_capped"):
        assert (getattr(torch_out, name) is None) == (getattr(ours, name) is None), name
        if getattr(ours, name) is not None:
            np.testing.assert_array_equal(getattr(torch_out, name).numpy(), getattr(ours, name))
    if cfg.rollout_is is not None:  # the weights act on some tokens and not on others
        assert 0 < ours.is_capped[mask.numpy()].mean() < 1
    np.testing.assert_allclose(
        torch_out.per_token_loss.detach().numpy(), ours.per_token_loss, rtol=1e-12, atol=1e-15
    )
    assert torch_out.metrics.keys() == ours.metrics.keys()
    for key, value in ours.metrics.items():
        assert float(torch_out.metrics[key]) == pytest.approx(value, rel=1e-12, abs=1e-15), key
    total = agg_loss(torch_out.per_token_loss, mask, mode)
    assert float(total.detach()) == pytest.approx(
        np_losses.agg_loss(ours.per_token_loss, mask.numpy(), mode), rel=1e-12
    )
    total.backward()
    weights = np_losses.agg_weights(mask.numpy(), mode)
    np.testing.assert_allclose(lp_t.grad.numpy(), weights * ours.dlogp, rtol=1e-10, atol=1e-15)
    if ours.dentropy is None:  # the entropy does not enter the loss
        assert ent_t.grad is None or not ent_t.grad.any()
    else:
        np.testing.assert_allclose(
            ent_t.grad.numpy(), weights * ours.dentropy, rtol=1e-10, atol=1e-15
        )


def test_token_covariance_numpy_equals_torch():
    lp, _, adv, mask = _random_batch(seed=9, per_token_adv=True)
    from llm_bridge import token_covariance

    np.testing.assert_allclose(
        token_covariance(lp, adv, mask).numpy(),
        smt.token_covariance(lp.numpy(), adv.numpy(), mask.numpy()),
        rtol=1e-13,
    )


@pytest.mark.parametrize("scope", ["micro", "mini", "global"])
def test_select_by_scope_twins_agree(scope):
    """KL-Cov's selection (deterministic top-k) by scope, numpy and torch: the same tokens; under
    micro each of three slices of the responses picks its own (at least one each)."""
    rng = np.random.default_rng(7)
    lp, old = rng.normal(-2, 1, (6, 5)), rng.normal(-2, 1, (6, 5))
    adv = np.repeat(rng.normal(0, 1, (6, 1)), 5, axis=1)
    mask = (rng.random((6, 5)) > 0.2).astype(np.int64)
    mask[:, 0] = 1
    cfg = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.1, cov_scope=scope)
    ours = np_losses.select_by_scope(
        np_losses.LossInputs(lp, old, adv, mask), cfg, rng, micro_batches=3
    )
    theirs = llm_select_by_scope(_inputs(lp, old, adv, mask), cfg, None, micro_batches=3)
    np.testing.assert_array_equal(ours, theirs.numpy())
    slices = np.array_split(np.arange(6), 3)
    per_slice = [int(ours[s].sum()) for s in slices]
    if scope == "micro":
        assert all(n >= 1 for n in per_slice)
    else:
        assert sum(per_slice) == n_selected(int(mask.sum()), 0.1)
    assert (
        np_losses.select_by_scope(np_losses.LossInputs(lp, old, adv, mask), PolicyLossConfig(), rng)
        is None
    )


@pytest.mark.parametrize("controls", [{}, {"top_entropy_ratio": 0.5}, {"rollout_is": "token"}])
def test_kl_cov_split_is_the_loss_linear_in_its_coefficient(controls):
    """ℓ(k) = ℓ(0) + k·ℓ_KL token by token, with every weight and mask the loss applies (the
    high-entropy mask, importance weights): what an entropy controller on KL-Cov's coefficient
    forecasts with; the loss at k = 0 is the loss with ppo_kl_coef 0."""
    from dataclasses import replace

    from llm_bridge.losses import kl_cov_split

    lp, old, adv, mask = _random_batch(seed=3)
    g = torch.Generator().manual_seed(4)
    inp = LossInputs(
        lp,
        old,
        adv,
        mask,
        entropy=torch.rand(lp.shape, generator=g, dtype=lp.dtype),
        sampler_log_prob=old - 0.1 * torch.rand(lp.shape, generator=g, dtype=lp.dtype),
    )
    cfg = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.2, **controls)
    zero, part = kl_cov_split(inp, cfg)
    for k in (0.0, 0.5, 3.0):
        full = compute_policy_loss(inp, replace(cfg, ppo_kl_coef=k)).per_token_loss
        torch.testing.assert_close(zero.per_token_loss + k * part, full, rtol=1e-12, atol=1e-14)
    assert (part != 0).any()
    with pytest.raises(ValueError, match="kl_cov"):
        kl_cov_split(inp, PolicyLossConfig())
