"""The TRL engine means what our trainer means: TRL's own dapo loss, our loss through both
engines on the same rollouts, and the probe's entropy at a temperature ≠ 1."""

import copy
import json

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
    RegistryLossTrainer,
    trl_dataset,
    trl_reward,
)

TASK = synthetic_task("addition", n_train=64, n_test=8)


def _trainer(cls, model, tokenizer, tmp_path, temperature=1.0, **kw):
    args = trl.GRPOConfig(
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
        RegistryLossTrainer,
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
        RegistryLossTrainer, model, tok, tmp_path / "t", temperature=temperature, policy_loss=lc
    )
    n_items = int(roll.response_mask.sum())
    micro = [_micro_inputs(roll, adv_resp, old, sl, n_items) for sl in (slice(0, 4), slice(4, 8))]
    # one optimiser update per generation batch: TRL's steps_per_generation = accumulation
    loss_trl, grad_trl = _accumulate(trl_engine, trl_engine.model, micro)
    assert loss_trl == pytest.approx(loss_ours, rel=1e-5)
    for name, g in grad_trl.items():
        torch.testing.assert_close(g, grad_ours[name], rtol=1e-4, atol=1e-6)


def test_both_engines_forecast_the_same_step_before_its_update(tiny_model, tmp_path, monkeypatch):
    """One probed step of each engine on the same rollouts, from the same weights and the same
    Adam: both forecast ΔH before the update from the update the optimiser is about to take
    (``StepProbe``), so ``pred_jvp`` is the same; so are the probe's entropy, the measured
    change and Lemma 1 (the TRL engine shuffles the rows of its micro-batch: float rounding)."""
    from llm_bridge import train
    from llm_bridge.step_record import rollout_keys
    from softmax_theory.group_advantages import compute_advantages

    tok = load_model(tiny_model)[1]
    roll = _rollouts(tok, seed=4)
    rewards = np.array([1.0, 0.0, 0.5, 0.0, 1.0, 1.0, 0.0, 0.25])
    group = np.repeat([0, 1], 4)
    adv_resp = compute_advantages("grpo", rewards, group)
    base = dict(
        model=str(tiny_model),
        steps=1,
        prompts_per_step=2,
        group_size=4,
        mini_batches=1,
        val_every=0,
        checkpoint_every=0,
        save_final=False,
        cov_table_steps=(),
    )

    engine = ProbedGRPOTrainer(TrainConfig(**base), tmp_path / "ours", task=TASK)
    ent, old = stream_entropy_logp(engine.model, roll, None, 1.0)
    mask = roll.response_mask
    adv = torch.tensor(adv_resp, dtype=torch.float32)[:, None] * mask
    stats = rollout_keys(mask.sum(-1).numpy(), None, adv_resp)
    batch = StepBatch(roll, rewards, group, adv, ent, old, None, sampler_logp=old, stats=stats)
    engine.rollout = lambda: batch
    ours = engine.step()
    engine.run_dir.close()

    def generated(self, inputs):  # TRL's generation and scoring, replaced by the same rollouts
        self._rewards = torch.tensor(rewards, dtype=torch.float32)[:, None]
        p = roll.prompt_length
        return {
            "prompt_ids": roll.input_ids[:, :p],
            "prompt_mask": roll.attention_mask[:, :p],
            "completion_ids": roll.response_ids,
            "completion_mask": roll.response_mask,
            "num_items_in_batch": roll.response_mask.sum().float(),
        }

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_and_score_completions", generated)
    run = train(TrainConfig(**base, engine="trl"), tmp_path / "trl", task=TASK)
    theirs = json.loads((run / "steps.jsonl").read_text().splitlines()[0])
    assert ours["probe/updates"] == theirs["probe/updates"] == 1
    assert ours["pred_jvp"] != 0
    for key in ("pred_jvp", "entropy", "delta_entropy", "pred_lemma1", "entropy_after"):
        assert theirs[key] == pytest.approx(ours[key], rel=1e-4, abs=1e-9), key


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
