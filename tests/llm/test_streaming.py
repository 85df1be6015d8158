"""The streaming trainer and probe against the whole-batch reference: the same numbers, whatever
the micro-batch size; the probe's cost settings."""

import numpy as np
import pytest
import torch

from llm_bridge import (
    LossInputs,
    PolicyLossConfig,
    ProbedGRPOTrainer,
    TrainConfig,
    agg_loss,
    compute_policy_loss,
    mini_batch_loss,
    train,
)
from llm_bridge.forward import response_logits, stream_entropy_logp
from llm_bridge.probe import measure_tokens, parameter_delta, probe_record, snapshot
from llm_bridge.reference import naive_token_stats, reference_probe_record
from llm_bridge.rollout import HFBackend, concat_rollouts, generate_in_calls
from llm_bridge.tasks import synthetic_task
from softmax_theory.runlog import read_run

TASK = synthetic_task("addition", n_train=300, n_test=16)
TIME_KEYS = {"time/rollout_s", "time/update_s", "time/probe_s"}


def _cfg(model, **kw):
    base = dict(
        model=str(model),
        steps=1,
        prompts_per_step=4,
        group_size=4,
        mini_batches=1,
        val_every=0,
        checkpoint_every=0,
        warmup_steps=0,
        lr=1e-3,
        temperature=0.8,
        # vanilla + an entropy bonus: the gradient goes through log π and through H. (KL-Cov's
        # |log π − log π_old| has a gradient of ±1 at any nonzero difference, so paths that agree
        # to 1e-7 would differ by the coefficient: it is not a fair comparison of paths.)
        policy_loss=PolicyLossConfig(entropy_coeff=0.01),
    )
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("micro", [3, 16])
def test_a_probed_step_streamed_equals_the_whole_batch_reference(tiny_model, tmp_path, micro):
    """Old log-probs and entropy, the loss's gradient, and the probe's record of one step:
    streamed in micro-batches of ``micro`` responses, against whole-batch [B, R, V] logits and
    the textbook formulas (the code path before streaming), to 1e-6."""
    trainer = ProbedGRPOTrainer(_cfg(tiny_model, micro_batch_size=micro), tmp_path, task=TASK)
    batch = trainer.rollout()
    roll, mask, t = batch.roll, batch.mask.bool(), trainer.cfg.temperature
    with torch.no_grad():
        naive = naive_token_stats(response_logits(trainer.model, roll, t), roll.response_ids)
    torch.testing.assert_close(
        batch.entropy[mask].double(), naive["entropy"][mask], rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        batch.old_logp[mask].double(), naive["logp"][mask], rtol=1e-5, atol=1e-6
    )

    # the gradient of the mini-batch loss: streamed, and through a full log_softmax graph
    params_before = snapshot(trainer.model)
    trainer.model.zero_grad()
    mini_batch_loss(
        trainer.model, batch, slice(0, 16), trainer.cfg, 0.01, trainer.gen, trainer.max_new_tokens
    )
    streamed = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    trainer.model.zero_grad()
    logp_all = torch.log_softmax(response_logits(trainer.model, roll, t), dim=-1)
    inp = LossInputs(
        logp_all.gather(-1, roll.response_ids.unsqueeze(-1)).squeeze(-1),
        batch.old_logp,
        batch.advantages,
        batch.mask,
        entropy=-(logp_all.exp() * logp_all).sum(-1),
    )
    out = compute_policy_loss(inp, trainer.cfg.policy_loss, entropy_coeff=0.01)
    agg_loss(out.per_token_loss, batch.mask, "token-mean").backward()
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(streamed[name], p.grad, rtol=1e-4, atol=1e-6)

    # one update, then the probe: streamed, and from whole-batch logits
    trainer.model.zero_grad()
    mini_batch_loss(
        trainer.model, batch, slice(0, 16), trainer.cfg, 0.01, trainer.gen, trainer.max_new_tokens
    )
    trainer.opt.step()
    delta = parameter_delta(trainer.model, params_before)
    group = torch.as_tensor(batch.group)
    tokens = measure_tokens(
        trainer.model, roll, batch.advantages, group, params_before, delta, None, micro, t
    )
    ours = probe_record(tokens)
    ref = reference_probe_record(
        trainer.model, params_before, roll, batch.advantages, group, t, delta
    )
    assert ours["probe/tokens"] == int(mask.sum())
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_the_micro_batch_size_changes_no_number(tiny_model, tmp_path):
    """Whole mini-batches or micro-batches of 3 responses: the same run, up to fp32 reduction
    order, over three steps with two updates each."""
    cfg = dict(steps=3, mini_batches=2, prompts_per_step=4)
    train(_cfg(tiny_model, **cfg), tmp_path / "whole", task=TASK)
    train(_cfg(tiny_model, micro_batch_size=3, **cfg), tmp_path / "micro", task=TASK)
    a, b = read_run(tmp_path / "whole").steps, read_run(tmp_path / "micro").steps
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x.keys() - TIME_KEYS:
            if isinstance(x[key], float):
                assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-7), key
            else:
                assert x[key] == y[key], key


def test_probe_every_and_probe_responses_choose_the_probes_cost(tiny_model, tmp_path):
    train(_cfg(tiny_model, steps=4, probe_every=2, probe_responses=5), tmp_path / "run", task=TASK)
    steps = read_run(tmp_path / "run").steps
    probed = [s["step"] for s in steps if "delta_entropy" in s]
    assert probed == [0, 2]
    for s in steps:
        assert "entropy" in s and "reward" in s  # every step keeps its own record
        if "delta_entropy" in s:
            assert s["probe/responses"] == 5 and 5 <= s["probe/tokens"] <= 25
    # the subset is drawn from its own generator: probing never changes training
    train(_cfg(tiny_model, steps=4, probe=False), tmp_path / "bare", task=TASK)
    bare = read_run(tmp_path / "bare").steps
    assert [s["reward"] for s in steps] == [s["reward"] for s in bare]
    np.testing.assert_allclose([s["entropy"] for s in steps], [s["entropy"] for s in bare])


def test_generation_in_calls_scores_every_response_as_alone(tiny_model, tmp_path):
    """Responses generated in several calls and joined (prompts left-padded again to the widest)
    have the log-probs and entropies they have in their own call's batch."""
    trainer = ProbedGRPOTrainer(_cfg(tiny_model), tmp_path, task=TASK)
    backend, pad = HFBackend(trainer.model, trainer.tokenizer), trainer.tokenizer.pad_token_id
    # prompts of different lengths, so the calls' prompt widths differ
    prompts = ["1+2=", "511+269=", "07+16=", "175+813=", "9+9="]
    gen = torch.Generator().manual_seed(0)
    joined = generate_in_calls(backend, prompts, 2, 6, 1.0, gen, pad, responses_per_call=4)
    gen = torch.Generator().manual_seed(0)  # the same draws, one call at a time
    parts = [backend.generate(prompts[i : i + 2], 2, 6, 1.0, gen) for i in range(0, 5, 2)]
    assert len({p.prompt_length for p in parts}) > 1
    assert joined.texts == tuple(t for p in parts for t in p.texts)
    assert torch.equal(joined.response_ids, torch.cat([p.response_ids for p in parts]))
    h, logp = stream_entropy_logp(trainer.model, joined, 3)
    h_parts, logp_parts = zip(
        *(stream_entropy_logp(trainer.model, p, None) for p in parts), strict=True
    )
    mask = joined.response_mask.bool()
    torch.testing.assert_close(h[mask], torch.cat(h_parts)[mask], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logp[mask], torch.cat(logp_parts)[mask], rtol=1e-5, atol=1e-6)
    assert concat_rollouts(parts[:1], pad) is parts[0]


def test_generate_batch_size_bounds_generation_and_keeps_the_record(tiny_model, tmp_path):
    whole = ProbedGRPOTrainer(_cfg(tiny_model, prompts_per_step=8), tmp_path / "a", task=TASK)
    calls = ProbedGRPOTrainer(
        _cfg(tiny_model, prompts_per_step=8, generate_batch_size=8), tmp_path / "b", task=TASK
    )
    # the estimate's generation term: 8 responses per call instead of 32
    assert calls.step_memory().generation * 4 == pytest.approx(whole.step_memory().generation)
    a, b = whole.step(), calls.step()
    assert a.keys() == b.keys() and b["probe/responses"] == 32
    with pytest.raises(ValueError, match="generate_batch_size"):
        TrainConfig(group_size=4, generate_batch_size=6)
