"""The entropy controls in the language-model trainer: the ΔH attribution from the streamed probe,
the selection scopes and the oracle, pass@k, the own-entropy term's numpy ↔ torch parity, and the
TRL engine's refusals."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from llm_bridge import ProbedGRPOTrainer, TrainConfig
from llm_bridge.cli import main
from llm_bridge.tasks import synthetic_task
from llm_bridge.token_stats import token_probe_stats
from softmax_theory.attribution import CLIP_PARTS, SIGN_PARTS, own_entropy_term
from softmax_theory.policy import PolicyLossConfig
from softmax_theory.stats import pass_at_k


def _digits_right(response: str, answer: str) -> float:
    """Partial credit, so that the barely trained test model sees non-zero advantages."""
    return sum(r == a for r, a in zip(response.strip(), answer, strict=False)) / len(answer)


def _run(tiny_model, tmp_path, name, **kw):
    settings = dict(
        model=str(tiny_model),
        steps=2,
        prompts_per_step=4,
        group_size=4,
        val_every=0,
        checkpoint_every=0,
        warmup_steps=0,
        micro_batch_size=4,
    )
    cfg = TrainConfig(**{**settings, **kw})
    task = replace(synthetic_task("addition", seed=0), reward=_digits_right)
    ProbedGRPOTrainer(cfg, tmp_path / name, task=task).train()
    return [json.loads(line) for line in (tmp_path / name / "steps.jsonl").open()]


@pytest.mark.parametrize(
    "loss",
    [
        PolicyLossConfig(),
        PolicyLossConfig(loss_mode="gppo", clip_ratio_low=0.01, clip_ratio_high=0.01),
        PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.05),
    ],
    ids=["vanilla", "gppo narrow", "kl_cov"],
)
def test_probe_attribution_families_sum_to_pred_lemma1(tiny_model, tmp_path, loss):
    records = _run(tiny_model, tmp_path, "run", policy_loss=loss, mini_batches=2, epochs=2)
    for r in records:
        for family in (SIGN_PARTS, CLIP_PARTS):
            assert sum(r[k] for k in family) == pytest.approx(r["pred_lemma1"], abs=1e-9)
    if loss.loss_mode.value == "gppo":  # a 1% range clips from the second update on
        assert any(r["attr/clipped"] != 0 for r in records)
    if loss.loss_mode.value == "kl_cov":  # no clip: nothing is counted clipped
        assert all(r["attr/clipped"] == 0 for r in records)


def test_global_scope_selects_fewer_tokens_than_micro_and_the_oracle_is_its_own_bound(
    tiny_model, tmp_path
):
    """At a ratio where one token per micro-batch is the floor, micro selection picks one per
    micro-batch and global one per step (verl issues 7818/7829); the oracle's selection holds
    the largest A·score by construction."""
    lc = dict(loss_mode="kl_cov", kl_cov_ratio=1e-4)
    micro = _run(tiny_model, tmp_path, "micro", policy_loss=PolicyLossConfig(**lc))
    glob = _run(
        tiny_model, tmp_path, "global", policy_loss=PolicyLossConfig(**lc, cov_scope="global")
    )
    oracle = _run(
        tiny_model, tmp_path, "oracle", policy_loss=PolicyLossConfig(**lc, cov_selector="oracle")
    )
    # 16 responses in micro-batches of 4: four selections per step against one
    assert micro[0]["actor/cov_selected_frac"] == pytest.approx(
        4 * glob[0]["actor/cov_selected_frac"], rel=1e-6
    )
    for r in oracle:
        assert r["actor/cov_selected_value"] == pytest.approx(r["actor/cov_oracle_value"])
    for r in micro:
        assert r["actor/cov_selected_value"] <= r["actor/cov_oracle_value"] + 1e-12


def test_val_k_logs_the_unbiased_pass_at_k(tiny_model, tmp_path):
    records = _run(
        tiny_model, tmp_path, "passk", val_every=1, val_prompts=6, val_k=1, val_samples=4
    )
    for r in records:
        # pass@1 over 4 samples is the share of wholly right samples: at most the partial-credit
        # mean reward of the same samples
        assert 0 <= r["val_pass@1"] <= r["val_reward"] <= 1
        assert r["val_pass@1"] * 24 == pytest.approx(round(r["val_pass@1"] * 24))
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 − C(3,2)/C(4,2)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0
    with pytest.raises(ValueError, match="val_samples"):
        TrainConfig(val_k=4, val_samples=2)
    with pytest.raises(ValueError, match="val_k"):
        TrainConfig(val_k=4, val_every=0)


def test_own_entropy_term_numpy_equals_the_probe_score():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 5, 11, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 11, (2, 5), generator=g)
    score = token_probe_stats(z, z, tokens)["score"]
    term = own_entropy_term(z.numpy())
    expected = np.take_along_axis(term, tokens.numpy()[..., None], -1)[..., 0]
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "flags,name",
    [
        (["--loss", "kl_cov", "--cov-scope", "global"], "cov_scope"),
        (["--loss", "kl_cov", "--cov-selector", "oracle"], "cov_selector"),
        (["--loss", "archer"], "loss_mode"),
        (["--val-k", "4"], "val_k"),
        (["--generate-batch-size", "8"], "generate_batch_size"),
    ],
)
def test_trl_engine_refuses_what_it_cannot_run_in_one_line(tiny_model, tmp_path, cli, flags, name):
    pytest.importorskip("trl")
    result = cli(
        main,
        [
            "train",
            "--model",
            tiny_model,
            "--engine",
            "trl",
            "--steps",
            "1",
            "--out",
            tmp_path / "r",
            *flags,
        ],
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith(f"error: {name}:"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
