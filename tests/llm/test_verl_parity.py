"""Parity with the real verl 0.9.1 package: loss, gradient and metrics of our torch losses
against ``verl.trainer.ppo.core_algos`` on the same seeded inputs, in every aggregation mode
both have; and our truncated importance sampling (``rollout_is``) against verl's rollout
correction (``verl.trainer.ppo.rollout_corr_helper``: its weights passed to its losses).

verl lives in a side virtual environment (``make parity`` builds ``.venv-verl``: torch==2.13.0,
``verl==0.9.1 --no-deps`` and the few packages ``core_algos`` imports); the test runs verl there
through ``verl_reference.py`` and is skipped, saying so, when that environment is missing.
``VERL_PYTHON`` may point at another interpreter that has verl.
"""

import os
import subprocess
from pathlib import Path

import pytest
import torch

from llm_bridge import LossInputs, PolicyLossConfig, agg_loss, compute_policy_loss
from llm_bridge.losses import truncated_is_weights

ROOT = Path(__file__).resolve().parents[2]
VERL_PYTHON = Path(os.environ.get("VERL_PYTHON", ROOT / ".venv-verl" / "bin" / "python"))
SCRIPT = Path(__file__).with_name("verl_reference.py")


def _verl_available() -> str | None:
    """None when verl 0.9.1 imports in the side environment, else why not."""
    if not VERL_PYTHON.exists():
        return f"no verl environment at {VERL_PYTHON.relative_to(ROOT)}: run `make parity`"
    probe = subprocess.run(
        [
            str(VERL_PYTHON),
            "-c",
            "import verl, verl.trainer.ppo.core_algos; print(verl.__version__)",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"verl does not import in {VERL_PYTHON}: {probe.stderr.strip().splitlines()[-1]}"
    if probe.stdout.strip() != "0.9.1":
        return f"the side environment has verl {probe.stdout.strip()}, not 0.9.1"
    return None


REASON = _verl_available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _inputs():
    """Responses of unequal length, one empty; ratios inside and outside the clip range, and
    tokens with A < 0 and ratio > 3, where dual-clip acts."""
    g = torch.Generator().manual_seed(0)
    b, t = 8, 24
    log_prob = torch.log(torch.rand(b, t, generator=g, dtype=torch.float64).clamp_min(1e-3))
    old = log_prob + 0.6 * torch.randn(b, t, generator=g, dtype=torch.float64)
    old[0, :6] = log_prob[0, :6] - 1.5  # ratio e^{1.5} ≈ 4.5 > 3
    adv = torch.randn(b, 1, generator=g, dtype=torch.float64).expand(b, t).clone()
    adv[0] = -1.0
    mask = torch.zeros(b, t, dtype=torch.float64)
    for i in range(b - 1):
        mask[i, : 4 + 3 * i] = 1.0
    # the sampler's log-probs: near the trainer's old ones, some ratios π_old/π_sampler above
    # the caps below and some not; one token off by 25 nats, past verl's ±20 clamp
    sampler = old + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    sampler[1, 2] = old[1, 2] - 25.0
    return {
        "log_prob": log_prob,
        "old_log_prob": old,
        "advantages": adv,
        "response_mask": mask,
        "sampler_log_prob": sampler,
    }


# (name, our PolicyLossConfig fields, verl's ActorConfig fields, verl's PolicyLossConfig fields)
LOSSES = [
    ("vanilla", {"loss_mode": "vanilla"}, {"clip_ratio_low": 0.2, "clip_ratio_high": 0.2}, {}),
    (
        "clip-higher with dual-clip",
        {"loss_mode": "clip_higher"},
        {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "clip_ratio_c": 3.0},
        {},
    ),
    (
        "clip_cov, every eligible token drawn",
        {"loss_mode": "clip_cov", "clip_cov_ratio": 0.5, "clip_cov_lb": 0.1, "clip_cov_ub": 0.6},
        {"clip_ratio_low": 1.0, "clip_ratio_high": 1.0},
        {"clip_cov_ratio": 0.5, "clip_cov_lb": 0.1, "clip_cov_ub": 0.6},
    ),
    (
        "kl_cov",
        {"loss_mode": "kl_cov", "kl_cov_ratio": 0.05, "ppo_kl_coef": 1.0},
        {},
        {"kl_cov_ratio": 0.05, "ppo_kl_coef": 1.0},
    ),
    (
        "cispo",
        {"loss_mode": "cispo", "clip_ratio_low": 0.2, "clip_ratio_high": 0.28},
        {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28},
        {},
    ),
    (
        "gspo, some responses clipped",
        {"loss_mode": "gspo", "clip_ratio_low": 0.1, "clip_ratio_high": 0.1},
        {"clip_ratio_low": 0.1, "clip_ratio_high": 0.1},
        {},
    ),
]
# (loss_agg_mode, verl's global_batch_info = our agg_loss keywords)
AGGREGATIONS = [
    ("token-mean", {}),
    ("token-mean", {"dp_size": 2, "batch_num_tokens": 300}),
    ("token-sum", {}),
    ("seq-mean-token-mean", {}),
    ("seq-mean-token-sum", {"dp_size": 2, "global_batch_size": 20}),
    ("seq-mean-token-sum-norm", {}),
    ("seq-mean-token-sum-norm", {"loss_scale_factor": 4096}),
]
CASES = [(loss, agg) for loss in LOSSES for agg in AGGREGATIONS]
# Truncated importance sampling: (loss, level, cap C, loss_agg_mode), verl's rollout correction
# with the same level and rollout_is_threshold
IS_CASES = [
    (LOSSES[0], "token", 1.2, "token-mean"),
    (LOSSES[1], "token", 2.0, "seq-mean-token-sum-norm"),
    (LOSSES[0], "sequence", 3.0, "token-mean"),
    (LOSSES[3], "token", 1.5, "seq-mean-token-mean"),
    (LOSSES[5], "sequence", 1.5, "token-sum"),
]


@pytest.fixture(scope="module")
def verl_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verl")
    cases = [
        {
            "loss_mode": ours["loss_mode"].replace("clip_higher", "vanilla"),
            "actor": actor,
            "policy_loss": policy,
            "loss_agg_mode": mode,
            "global_batch_info": info,
        }
        for (_, ours, actor, policy), (mode, info) in CASES
    ] + [
        {
            "loss_mode": ours["loss_mode"].replace("clip_higher", "vanilla"),
            "actor": actor,
            "policy_loss": policy,
            "loss_agg_mode": mode,
            "global_batch_info": {},
            "rollout_is": {"level": level, "threshold": cap},
        }
        for (_, ours, actor, policy), level, cap, mode in IS_CASES
    ]
    torch.save({"tensors": _inputs(), "cases": cases}, tmp / "in.pt")
    done = subprocess.run(
        [str(VERL_PYTHON), str(SCRIPT), str(tmp / "in.pt"), str(tmp / "out.pt")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp / "out.pt")


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0][0]}|{c[1]}" for c in CASES])
def test_our_loss_equals_verl(verl_results, index):
    (_, ours, _, _), (mode, info) = CASES[index]
    expected = verl_results[index]
    x = _inputs()
    log_prob = x["log_prob"].clone().requires_grad_(True)
    inp = LossInputs(log_prob, x["old_log_prob"], x["advantages"], x["response_mask"])
    out = compute_policy_loss(inp, PolicyLossConfig(**ours))
    loss = agg_loss(out.per_token_loss, x["response_mask"], mode, **info)
    loss.backward()
    # seq-mean-token-mean: verl divides each response's sum by its length + 1e-8, we by its
    # length; every other mode agrees to rounding
    rel = 1e-6 if mode == "seq-mean-token-mean" else 1e-12
    assert float(loss.detach()) == pytest.approx(float(expected["loss"]), rel=rel, abs=1e-15)
    torch.testing.assert_close(log_prob.grad, expected["grad"], rtol=rel, atol=1e-15)
    if ours["loss_mode"] in ("vanilla", "clip_higher"):
        # verl computes these fractions in float32; ours in the loss's dtype
        for key in ("actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl"):
            assert float(out.metrics[key]) == pytest.approx(expected["metrics"][key], abs=1e-7)
        assert expected["metrics"]["actor/pg_clipfrac_lower"] > 0  # dual-clip did act
    if ours["loss_mode"] in ("cispo", "gspo"):
        for key in ("actor/pg_clipfrac", "actor/ppo_kl"):
            assert float(out.metrics[key]) == pytest.approx(expected["metrics"][key], abs=1e-7)
        # the clip acted on some tokens and not on others
        assert 0 < float(out.metrics["actor/pg_clipfrac"]) < 1
    if ours["loss_mode"] == "kl_cov":
        # verl logs mean |log ratio| as actor/ppo_kl; ours keeps one meaning for ppo_kl (verl's
        # masked_mean adds 1e-8 to the token count)
        assert float(out.metrics["actor/ppo_kl_abs"]) == pytest.approx(
            expected["metrics"]["actor/ppo_kl"], rel=1e-8
        )
    if ours["loss_mode"] == "clip_cov":
        # verl reports the selected share as pg_clipfrac; ours as cov_selected_frac
        assert float(out.metrics["actor/cov_selected_frac"]) == pytest.approx(
            expected["metrics"]["actor/pg_clipfrac"], abs=1e-7
        )
        assert float(out.metrics["actor/cov_selected_frac"]) > 0


@pytest.mark.parametrize(
    "index", range(len(IS_CASES)), ids=[f"{c[0][0]}|{c[1]} C={c[2]}|{c[3]}" for c in IS_CASES]
)
def test_our_truncated_is_equals_verls_rollout_correction(verl_results, index):
    """verl's weights from ``compute_rollout_correction_and_rejection_mask`` (old against the
    sampler's log-probs, truncated at ``rollout_is_threshold``) equal ours, and its loss with
    them equals ours with ``rollout_is``, in value and gradient; its mean weight and (per token)
    the share above the cap are our ``actor/is_weight_mean`` and ``actor/is_clip_frac``."""
    (_, ours, _, _), level, cap, mode = IS_CASES[index]
    expected = verl_results[len(CASES) + index]
    x = _inputs()
    old, sampler, mask = x["old_log_prob"], x["sampler_log_prob"], x["response_mask"]
    w, capped = truncated_is_weights(old, sampler, mask, level, cap)
    torch.testing.assert_close(w, expected["weights"], rtol=1e-15, atol=0)
    assert 0 < int(capped.sum()) < int(mask.sum())  # the cap acts on some tokens, not all
    log_prob = x["log_prob"].clone().requires_grad_(True)
    inp = LossInputs(log_prob, old, x["advantages"], mask, sampler_log_prob=sampler)
    cfg = PolicyLossConfig(**ours, rollout_is=level, rollout_is_threshold=cap)
    out = compute_policy_loss(inp, cfg)
    loss = agg_loss(out.per_token_loss, mask, mode)
    loss.backward()
    rel = 1e-6 if mode == "seq-mean-token-mean" else 1e-12  # verl's 1e-8 in the lengths
    assert float(loss.detach()) == pytest.approx(float(expected["loss"]), rel=rel, abs=1e-15)
    torch.testing.assert_close(log_prob.grad, expected["grad"], rtol=rel, atol=1e-15)
    metrics = expected["metrics"]
    # verl's masked_mean adds 1e-8 to the token count
    assert float(out.metrics["actor/is_weight_mean"]) == pytest.approx(
        metrics["rollout_corr/rollout_is_mean"], rel=1e-8
    )
    if level == "token":  # verl counts sequences, not tokens, at the sequence level
        assert float(out.metrics["actor/is_clip_frac"]) == pytest.approx(
            metrics["rollout_corr/rollout_is_ratio_fraction_high"], abs=1e-7
        )
