"""The sampler–trainer mismatch: ``rollout_mismatch`` by hand, zero when the trainer samples, the
numpy ↔ torch parity, its refusals; and the truncated importance-sampling correction against
TRL's GRPO loss on the same tensors, with TRL's settings for it."""

import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llm_bridge import LossInputs, PolicyLossConfig, agg_loss, compute_policy_loss
from llm_bridge.losses import truncated_is_weights
from llm_bridge.mismatch import rollout_mismatch, trl_importance_sampling_args
from softmax_theory import mismatch as np_mismatch
from softmax_theory.mismatch import MISMATCH_KEYS


def test_rollout_mismatch_by_hand():
    # d = (0.5, 0, 0) on the valid tokens, the padding holds anything (NaN included)
    trainer = torch.tensor([[-1.0, -2.0], [-0.5, 7.0]], dtype=torch.float64)
    sampler = torch.tensor([[-1.5, -2.0], [-0.5, float("nan")]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    got = rollout_mismatch(trainer, sampler, mask)
    assert list(got) == list(MISMATCH_KEYS)
    e = math.exp(0.5)
    # sorted ratios (1, 1, e^0.5): the 5th percentile lies at position 0.1, the 95th at 1.9
    expected = [0.5 / 3, 0.5, (2 + e) / 3, 1.0, 1 + 0.9 * (e - 1)]
    assert [got[k] for k in MISMATCH_KEYS] == pytest.approx(expected, rel=1e-14)
    twin = np_mismatch.rollout_mismatch(trainer.numpy(), sampler.numpy(), mask.numpy())
    assert [twin[k] for k in MISMATCH_KEYS] == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("world", ["numpy", "torch"])
def test_the_mismatch_is_zero_when_the_trainer_samples(world):
    """The tabular sampler draws from the trainer's own π, as does our engine's HF backend: the
    log-probs agree exactly, every difference is 0 and every ratio 1."""
    logp = torch.log(torch.rand(3, 7, generator=torch.Generator().manual_seed(0)))
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    fn = np_mismatch.rollout_mismatch if world == "numpy" else rollout_mismatch
    args = (logp.numpy(), logp.numpy(), mask.numpy()) if world == "numpy" else (logp, logp, mask)
    got = fn(*args)
    assert [got[k] for k in MISMATCH_KEYS] == [0.0, 0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("shape", [(1,), (257,), (6, 40), (2, 3, 5)])
def test_rollout_mismatch_numpy_equals_torch(shape):
    """Across shapes, with differences beyond the ±20 clamp of the ratio; to 1e-12."""
    g = torch.Generator().manual_seed(sum(shape))
    trainer = torch.log(torch.rand(shape, generator=g, dtype=torch.float64).clamp_min(1e-6))
    sampler = trainer + 0.7 * torch.randn(shape, generator=g, dtype=torch.float64)
    sampler.view(-1)[0] = trainer.view(-1)[0] - 25.0  # ratio e^25, clamped to e^20
    mask = torch.rand(shape, generator=g) < 0.8
    mask.view(-1)[0] = True
    ours = np_mismatch.rollout_mismatch(trainer.numpy(), sampler.numpy(), mask.numpy())
    theirs = rollout_mismatch(trainer, sampler, mask)
    assert theirs.keys() == ours.keys()
    for key, value in ours.items():
        assert theirs[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert ours["rollout/logp_diff_max"] == pytest.approx(25.0)
    if mask.sum() > 20:  # the percentiles are numpy's linear quantiles of the clamped ratio
        ratio = np.exp(np.clip((trainer - sampler).numpy()[mask.numpy()], -20, 20))
        assert ours["rollout/is_ratio_p95"] == pytest.approx(np.quantile(ratio, 0.95))
        assert ours["rollout/is_ratio_p05"] < 1 < ours["rollout/is_ratio_p95"]


@pytest.mark.parametrize("world", ["numpy", "torch"])
def test_rollout_mismatch_refuses_bad_input_by_name(world):
    fn = np_mismatch.rollout_mismatch if world == "numpy" else rollout_mismatch

    def t(x):
        x = torch.tensor(x, dtype=torch.float64)
        return x.numpy() if world == "numpy" else x

    with pytest.raises(ValueError, match=r"^sampler_logp: shape"):
        fn(t([[0.0, 0.0]]), t([[0.0, 0.0, 0.0]]), t([[1, 1]]))
    with pytest.raises(ValueError, match=r"^mask: shape"):
        fn(t([[0.0, 0.0]]), t([[0.0, 0.0]]), t([1, 1]))
    with pytest.raises(ValueError, match="^mask: no valid token"):
        fn(t([[0.0, 0.0]]), t([[0.0, 0.0]]), t([[0, 0]]))
    with pytest.raises(ValueError, match="^trainer_logp: contains NaN"):
        fn(t([[float("nan"), 0.0]]), t([[0.0, 0.0]]), t([[1, 1]]))
    with pytest.raises(ValueError, match="^sampler_logp: contains NaN"):
        fn(t([[0.0, 0.0]]), t([[0.0, -float("inf")]]), t([[1, 1]]))
    with pytest.raises(ValueError, match="^trainer_logp: expected"):
        fn(t(0.0), t(0.0), t(1))


# ---------------------------------------------------------------------------------------------
# TRL: its settings for our correction, and its loss with them on the same tensors
# ---------------------------------------------------------------------------------------------


def test_trl_settings_mean_what_rollout_is_means(tmp_path):
    trl = pytest.importorskip("trl")
    off = trl_importance_sampling_args(PolicyLossConfig())
    on = trl_importance_sampling_args(
        PolicyLossConfig(rollout_is="token", rollout_is_threshold=2.5)
    )
    seq = trl_importance_sampling_args(PolicyLossConfig(rollout_is="sequence"))
    common = {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True, "bf16": False}
    # TRL's default is on (sequence_mask): ours must say off explicitly
    assert trl.GRPOConfig(**common).vllm_importance_sampling_correction
    for args in (off, on, seq):
        cfg = trl.GRPOConfig(**common, **args)
        for key, value in args.items():
            assert getattr(cfg, key) == value
    assert off == {"vllm_importance_sampling_correction": False}
    assert (on["vllm_importance_sampling_mode"], on["vllm_importance_sampling_clip_max"]) == (
        "token_truncate",
        2.5,
    )
    assert (seq["vllm_importance_sampling_mode"], seq["vllm_importance_sampling_clip_max"]) == (
        "sequence_truncate",
        2.0,
    )


def _trl_loss(lp, inputs, beta, eps_low, eps_high):
    """TRL 1.16's ``GRPOTrainer._compute_loss`` (loss_type dapo, vLLM importance sampling on)
    run on given log-probs: the trainer is a stand-in holding only what that method reads."""
    from trl import GRPOTrainer

    entropies = torch.zeros_like(lp)
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp, entropies, None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        loss_type="dapo",
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        use_vllm=True,
        vllm_importance_sampling_correction=True,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        accelerator=SimpleNamespace(
            num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x
        ),
        _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list)},
    )
    return GRPOTrainer._compute_loss(fake, None, inputs)


def test_truncated_is_equals_trls_vllm_importance_sampling_in_its_loss():
    """On the same tensors, our clip-higher loss with ``rollout_is`` token and a KL penalty
    equals TRL's GRPO loss (dapo: token-mean) with ``token_truncate`` at the same cap, in value
    and gradient: both weigh the clipped policy term by w = min(π_old/π_sampler, C) and leave
    the KL term unweighted. TRL computes its ratio inside ``_generate_and_score_completions``
    (not callable on its own); here it is formed as TRL's code forms it, clamp(exp(Δ·m), ≤ C),
    from the old and the sampler's log-probs, and our w is checked against it."""
    pytest.importorskip("trl")
    g = torch.Generator().manual_seed(11)
    b, t, cap, beta = 4, 9, 1.3, 0.05
    old = torch.log(torch.rand(b, t, generator=g).clamp_min(0.02))
    lp = (old + 0.3 * torch.randn(b, t, generator=g)).requires_grad_(True)
    sampler = old + 0.4 * torch.randn(b, t, generator=g)
    ref = old + 0.2 * torch.randn(b, t, generator=g)
    adv = torch.randn(b, generator=g)
    mask = torch.ones(b, t)
    mask[0, 6:] = 0
    mask[2, 3:] = 0
    trl_ratio = torch.clamp(torch.exp((old - sampler) * mask), max=cap)
    w, capped = truncated_is_weights(old, sampler, mask, "token", cap)
    torch.testing.assert_close(w, trl_ratio * mask, rtol=0, atol=0)
    assert 0 < capped.sum() < mask.sum()
    inputs = {
        "prompt_ids": torch.zeros(b, 1, dtype=torch.long),
        "prompt_mask": torch.ones(b, 1, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "sampling_per_token_logps": sampler,
        "ref_per_token_logps": ref,
        "importance_sampling_ratio": trl_ratio,
        "num_items_in_batch": mask.sum(),
    }
    theirs = _trl_loss(lp, inputs, beta, 0.2, 0.28)
    (grad_theirs,) = torch.autograd.grad(theirs, lp)
    cfg = PolicyLossConfig(
        loss_mode="clip_higher",
        clip_ratio_c=None,  # TRL's GRPO loss has no dual-clip
        kl_loss_coef=beta,
        rollout_is="token",
        rollout_is_threshold=cap,
    )
    inp = LossInputs(
        lp, old, adv[:, None].expand(b, t), mask, ref_log_prob=ref, sampler_log_prob=sampler
    )
    out = compute_policy_loss(inp, cfg)
    ours = agg_loss(out.per_token_loss, mask, cfg.loss_agg_mode)
    (grad_ours,) = torch.autograd.grad(ours, lp)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-6, atol=1e-8)
    # the correction did move the loss: without it the two would part
    plain = compute_policy_loss(
        inp, PolicyLossConfig(loss_mode="clip_higher", clip_ratio_c=None, kl_loss_coef=beta)
    )
    assert abs(float(agg_loss(plain.per_token_loss, mask, "token-mean") - ours)) > 1e-3
