"""The TRL engine means what our trainer means: TRL's own dapo loss, our loss through both
engines on the same rollouts, and the probe's entropy at a temperature ≠ 1."""

import copy

import numpy as np
import pytest
import torch

from llm_bridge import PolicyLossConfig, ProbedGRPOTrainer, StepBatch, TrainConfig, mini_batch_loss
from llm_bridge.forward import stream_entropy_logp
from llm_bridge.models import load_model
from llm_bridge.rollout import Rollouts
from llm_bridge.tasks import synthetic_task

trl = pytest.importorskip("trl")
from llm_bridge.integrations.trl import (  # noqa: E402
    CovGRPOTrainer,
    EntropyProbe,
    ProbedGRPOConfig,
    trl_dataset,
    trl_reward,
)

TASK = synthetic_task("addition", n_train=64, n_test=8)


def _trainer(cls, model, tokenizer, tmp_path, temperature=1.0, **kw):
    args = ProbedGRPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        steps_per_generation=2,
        num_generations=4,
        max_completion_length=5,
        temperature=temperature,
        report_to="none",
        use_cpu=True,
        bf16=False,  # TRL's default autocasts to bf16, also on CPU
        logging_steps=1,
    )
    return cls(
        model=model,
        reward_funcs=trl_reward(TASK),
        args=args,
        train_dataset=trl_dataset(TASK.train, tokenizer),
        processing_class=tokenizer,
        **kw,
    )


def _rollouts(tokenizer, n=8, seed=0):
    """Rollouts with unequal completion lengths (EOS at different positions)."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(4, 17, (n, 9), generator=g)
    prompts[:, 0] = tokenizer.bos_token_id
    prompt_mask = torch.ones_like(prompts)
    completions = torch.randint(4, 17, (n, 5), generator=g)
    mask = torch.zeros(n, 5, dtype=torch.long)
    for i in range(n):
        length = 1 + i % 5
        mask[i, :length] = 1
        completions[i, length - 1] = tokenizer.eos_token_id
        completions[i, length:] = tokenizer.pad_token_id
    return Rollouts.from_ids(prompts, prompt_mask, completions, mask)


def _micro_inputs(roll, adv, old_logp, rows, n_items):
    p = roll.prompt_length
    return {
        "prompt_ids": roll.input_ids[rows, :p],
        "prompt_mask": roll.attention_mask[rows, :p],
        "completion_ids": roll.response_ids[rows],
        "completion_mask": roll.response_mask[rows],
        "advantages": adv[rows],
        "old_per_token_logps": old_logp[rows],
        "num_items_in_batch": torch.tensor(float(n_items)),
    }


def _accumulate(trainer, model, inputs_list):
    model.zero_grad()
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = len(inputs_list)
    total = 0.0
    for inputs in inputs_list:
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        total += float(loss.detach())
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_vanilla_token_mean_equals_trl_dapo_at_accumulation_2(tiny_model, tmp_path):
    """Our loss through the TRL engine = TRL's own dapo: loss and gradient, with two
    micro-batches of unequal completion lengths and ratios away from 1 (so the clip acts)."""
    model, tok = load_model(tiny_model)
    roll = _rollouts(tok)
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(8, generator=g)
    old = -2.0 + 0.5 * torch.randn(8, 5, generator=g)
    n_items = int(roll.response_mask.sum())
    micro = [_micro_inputs(roll, adv, old, slice(0, 4), n_items)]
    micro.append(_micro_inputs(roll, adv, old, slice(4, 8), n_items))
    theirs = _trainer(trl.GRPOTrainer, copy.deepcopy(model), tok, tmp_path / "a")
    ours = _trainer(
        CovGRPOTrainer,
        copy.deepcopy(model),
        tok,
        tmp_path / "b",
        # TRL's dapo has no dual-clip; the rest is vanilla's default (ε 0.2, token-mean)
        policy_loss=PolicyLossConfig(clip_ratio_c=None),
    )
    loss_t, grad_t = _accumulate(theirs, theirs.model, micro)
    loss_o, grad_o = _accumulate(ours, ours.model, micro)
    assert loss_o == pytest.approx(loss_t, rel=1e-6)
    assert grad_o.keys() == grad_t.keys()
    for name in grad_t:
        torch.testing.assert_close(grad_o[name], grad_t[name], rtol=1e-5, atol=1e-7)
    assert float(ours._metrics["train"]["actor/pg_clipfrac"][0]) > 0  # the clip did act


@pytest.mark.parametrize("loss_mode", ["vanilla", "kl_cov"])
def test_one_step_through_both_engines_is_the_same(tiny_model, tmp_path, loss_mode):
    """Same state, same rollouts, T = 0.7: the same loss, gradient and probe entropy."""
    temperature = 0.7
    lc = PolicyLossConfig(
        loss_mode=loss_mode, **({"kl_cov_ratio": 0.2} if loss_mode != "vanilla" else {})
    )
    cfg = TrainConfig(
        model=str(tiny_model),
        prompts_per_step=2,
        group_size=4,
        mini_batches=1,
        micro_batch_size=4,
        temperature=temperature,
        checkpoint_every=0,
        policy_loss=lc,
    )
    engine = ProbedGRPOTrainer(cfg, tmp_path / "ours", task=TASK)
    roll = _rollouts(engine.tokenizer, seed=2)
    adv_resp = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, 0.0, -1.0, -1.0])
    adv = adv_resp[:, None] * roll.response_mask
    ent, old = stream_entropy_logp(engine.model, roll, None, temperature)
    old = old + 0.3 * torch.randn(old.shape, generator=torch.Generator().manual_seed(3))
    batch = StepBatch(roll, np.zeros(8), np.repeat([0, 1], 4), adv, ent, old, None)
    engine.model.zero_grad()
    engine.model.train()
    loss_ours = mini_batch_loss(
        engine.model, batch, slice(0, 8), cfg, 0.0, engine.gen, engine.max_new_tokens
    )
    grad_ours = {n: p.grad.clone() for n, p in engine.model.named_parameters()}

    model, tok = load_model(tiny_model)
    trl_engine = _trainer(
        CovGRPOTrainer, model, tok, tmp_path / "t", temperature=temperature, policy_loss=lc
    )
    n_items = int(roll.response_mask.sum())
    micro = [_micro_inputs(roll, adv_resp, old, sl, n_items) for sl in (slice(0, 4), slice(4, 8))]
    # one optimiser update per generation batch: TRL's steps_per_generation = accumulation
    loss_trl, grad_trl = _accumulate(trl_engine, trl_engine.model, micro)
    assert loss_trl == pytest.approx(loss_ours, rel=1e-5)
    for name, g in grad_trl.items():
        torch.testing.assert_close(g, grad_ours[name], rtol=1e-4, atol=1e-6)
    # the probe's entropy: TRL's tensors through the TRL callback's plumbing, at θ_old
    out = {
        "prompt_ids": roll.input_ids[:, : roll.prompt_length],
        "prompt_mask": roll.attention_mask[:, : roll.prompt_length],
        "completion_ids": roll.response_ids,
        "completion_mask": roll.response_mask,
        "advantages": adv_resp,
    }
    trl_engine.updates_per_step = 1
    probe = EntropyProbe(trl_engine)
    probe.begin(out, roll.response_mask, np.repeat([0, 1], 4))
    record, _ = probe.measure(step=0)
    mask = roll.response_mask.bool()
    assert record["entropy"] == pytest.approx(float(ent[mask].double().mean()), rel=1e-5)


def test_two_processes_write_one_row_per_step_over_both_ranks(tiny_model, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) through the TRL engine: one record per step, and
    its entropy is the token-weighted mean over both ranks' tokens."""
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "llm_bridge.cli",
        "train",
        "--engine",
        "trl",
        "--model",
        str(tiny_model),
        "--steps",
        "2",
        "--prompts-per-step",
        "4",
        "--group-size",
        "4",
        "--val-every",
        "0",
        "--checkpoint-every",
        "0",
        "--token-steps-every",
        "1",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    config = json.loads((out / "config.json").read_text())
    assert config["trl"]["num_processes"] == 2
    for rec in records:
        tokens = np.load(out / "tokens" / f"step_{rec['step']:06d}.npz")
        assert set(np.unique(tokens["rank"])) == {0.0, 1.0}
        assert rec["probe/responses"] == 16  # 4 prompts × 4 responses, 8 on each rank
        assert rec["probe/tokens"] == tokens["entropy"].size
        assert rec["entropy"] == pytest.approx(float(tokens["entropy"].mean()), rel=1e-12)
