"""Policy losses: hand-computed values, selection rules, gradients, aggregation, parity."""

import math

import numpy as np
import pytest
import torch

from llm_bridge import AggMode, LossInputs, PolicyLossConfig, agg_loss, compute_policy_loss
from llm_bridge.losses import (
    COV_SELECTORS,
    get_policy_loss,
    kl_penalty,
    select_clip_cov,
    select_kl_cov,
    top_entropy_mask,
)
from softmax_theory import algorithms as tabular
from softmax_theory.algorithms import n_selected


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
    # clip-higher lifts the upper bound to 1.28
    out = compute_policy_loss(inp, PolicyLossConfig(loss="clip_higher"))
    assert float(out.per_token_loss[0, 0]) == pytest.approx(-1.28)


def test_kl_cov_by_hand_and_zero_on_policy():
    lp = [[-1.0, -2.0, -0.5, -3.0]]
    adv = [[1.0, -1.0, 2.0, 0.5]]
    mask = [[1, 1, 1, 1]]
    cfg = PolicyLossConfig(loss="kl_cov", kl_cov_ratio=0.25, kl_cov_coef=2.0)
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
    cfg = PolicyLossConfig(loss="clip_cov", clip_cov_ratio=0.05, clip_cov_clip_ratio=0.2)
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
    cfg = PolicyLossConfig(loss="kl_cov", kl_cov_ratio=0.02)
    sel = select_kl_cov(LossInputs(lp, old, adv, mask), cfg)
    k = n_selected(int(mask.sum()), 0.02)
    assert int(sel.sum()) == k and not (sel & ~mask).any()
    cov = ((lp - lp[mask].mean()) * (adv - adv[mask].mean()))[mask]
    assert float(cov.sort(descending=True).values[k - 1]) <= float(
        ((lp - lp[mask].mean()) * (adv - adv[mask].mean()))[sel].min()
    )


@pytest.mark.parametrize("loss", ["vanilla", "clip_higher", "clip_cov", "kl_cov"])
def test_torch_losses_equal_the_tabular_losses(loss):
    """One definition: on the same tokens, llm_bridge and softmax_theory give the same loss."""
    lp, old, adv, _ = _random_batch(b=1, t=400, seed=2, per_token_adv=True)
    cfg = PolicyLossConfig(
        loss=loss, clip_cov_ratio=0.02, kl_cov_ratio=0.02, clip_cov_clip_ratio=0.2
    )
    mask = torch.ones_like(lp, dtype=torch.bool)
    ours = compute_policy_loss(
        LossInputs(lp, old, adv, mask), cfg, generator=torch.Generator().manual_seed(0)
    )
    tab = tabular.get_policy_loss(loss)(
        lp[0].numpy(), old[0].numpy(), adv[0].numpy(), cfg, np.random.default_rng(0)
    )
    if loss == "clip_cov":  # both draw k of the same eligible tokens; draws differ
        zero_ours = (ours.per_token_loss[0] == 0).numpy()
        zero_tab = tab.loss == 0
        assert zero_ours.sum() == zero_tab.sum() == n_selected(400, 0.02)
        keep = ~(zero_ours | zero_tab)
        np.testing.assert_allclose(ours.per_token_loss[0].numpy()[keep], tab.loss[keep])
    else:
        np.testing.assert_allclose(ours.per_token_loss[0].numpy(), tab.loss, rtol=1e-12)


def test_gradient_of_the_loss_matches_the_tabular_dlogp():
    lp, old, adv, _ = _random_batch(b=1, t=300, seed=3, per_token_adv=True)
    mask = torch.ones_like(lp, dtype=torch.bool)
    cfg = PolicyLossConfig(loss="kl_cov", kl_cov_ratio=0.05)
    lp = lp.clone().requires_grad_(True)
    out = compute_policy_loss(LossInputs(lp, old, adv, mask), cfg)
    out.per_token_loss.sum().backward()
    tab = tabular.get_policy_loss("kl_cov")(
        lp.detach()[0].numpy(), old[0].numpy(), adv[0].numpy(), cfg, None
    )
    np.testing.assert_allclose(lp.grad[0].numpy(), tab.dlogp, rtol=1e-12)


def test_mini_scope_selection_is_passed_through():
    lp, old, adv, mask = _random_batch(seed=4)
    cfg = PolicyLossConfig(loss="kl_cov", kl_cov_ratio=0.05, cov_scope="mini")
    full = LossInputs(lp, old, adv, mask)
    sel = COV_SELECTORS[cfg.loss](full, cfg)
    micro = LossInputs(lp[:3], old[:3], adv[:3], mask[:3])
    out = compute_policy_loss(micro, cfg, selected=sel[:3])
    ratio = torch.exp(lp[:3] - old[:3])
    penalised = ~torch.isclose(out.per_token_loss, -adv[:3] * ratio * mask[:3])
    assert torch.equal(penalised, sel[:3] & ((lp[:3] - old[:3]).abs() > 0))


def test_entropy_bonus_kl_ref_and_top_entropy():
    lp, old, adv, mask = _random_batch(b=2, t=10, seed=5)
    ent = torch.rand(2, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ref = lp - 0.1
    base = compute_policy_loss(LossInputs(lp, old, adv, mask), PolicyLossConfig())
    with_bonus = compute_policy_loss(
        LossInputs(lp, old, adv, mask, entropy=ent), PolicyLossConfig(entropy_coef=0.5)
    )
    torch.testing.assert_close(with_bonus.per_token_loss, (base.per_token_loss - 0.5 * ent) * mask)
    with_kl = compute_policy_loss(
        LossInputs(lp, old, adv, mask, ref_log_prob=ref),
        PolicyLossConfig(kl_ref_coef=0.2, kl_ref_estimator="k1"),
    )
    torch.testing.assert_close(with_kl.per_token_loss, (base.per_token_loss + 0.2 * 0.1) * mask)
    keep = top_entropy_mask(ent, mask, 0.2)
    assert int(keep.sum()) == round(0.2 * int(mask.sum()))
    assert ent[keep].min() >= ent[mask & ~keep].max()
    with pytest.raises(ValueError, match="entropy"):
        compute_policy_loss(LossInputs(lp, old, adv, mask), PolicyLossConfig(entropy_coef=0.1))
    with pytest.raises(ValueError, match="ref_log_prob"):
        compute_policy_loss(LossInputs(lp, old, adv, mask), PolicyLossConfig(kl_ref_coef=0.1))


def test_kl_estimators_by_hand():
    lp, ref = torch.tensor([0.0, -1.0]), torch.tensor([-1.0, -1.0])
    torch.testing.assert_close(kl_penalty(lp, ref, "k1"), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(kl_penalty(lp, ref, "k3"), torch.tensor([math.exp(-1), 0.0]))


def test_aggregation_modes_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert float(agg_loss(loss, mask, AggMode.TOKEN_MEAN)) == pytest.approx(10 / 4)
    assert float(agg_loss(loss, mask, "seq-mean-token-mean")) == pytest.approx((2 + 4) / 2)
    assert float(agg_loss(loss, mask, "seq-mean-token-sum")) == pytest.approx((6 + 4) / 2)
    assert float(agg_loss(loss, mask, "seq-mean-token-sum-norm")) == pytest.approx(10 / 3)
    with pytest.raises(ValueError, match="mode"):
        agg_loss(loss, mask, "token_mean")


def test_bad_loss_input_is_named():
    with pytest.raises(ValueError, match="loss.*not one of"):
        get_policy_loss("clip-cov")
    with pytest.raises(ValueError, match="advantages"):
        LossInputs(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="old_log_prob"):
        LossInputs(
            torch.zeros(2, 3), torch.full((2, 3), float("nan")), torch.zeros(2, 3), torch.ones(2, 3)
        )
