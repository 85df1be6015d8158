"""TRL's own adaptive entropy (``GRPOConfig.use_adaptive_entropy``, Skywork-OR1's ±δ rule), run
in TRL's stock ``GRPOTrainer``, unmodified, on the regime testbed: the baseline of the
controller's tracking table (docs/control.md).

    .venv/bin/python scripts/trl_adaptive_entropy.py --model runs/control/model \\
        --out runs/control/trl --target 0.53 --delta 0.005 --seed 0

Only the parts that are not TRL's are ours: the task's prompts and reward, the model's
plain sampling settings (``rollout.sampling_config``), and a callback that copies what TRL logs
into ``steps.jsonl`` (one row per optimiser step: ``entropy``, ``reward``, ``entropy_coeff``,
``val_reward`` and ``val_pass@8`` where TRL evaluated). Everything else (loss ``dapo``, the
entropy bonus and its rule, the optimiser and schedule) is TRL's. The settings mirror the
testbed's run: 32 prompts × 8 samples, two optimiser updates per step (mini-batches of 128
responses), AdamW without weight decay, no clipping, lr 2e-4 after 5 warm-up steps, evaluation
every 10 steps on the same 128 held-out prompts × 8 samples. A step's ``entropy`` is what TRL
logs at its first update: the token mean over that mini-batch's rollouts at θ_old (half of the
step's; our run log's ``entropy`` is the mean over all of them at θ_old). TRL's rule moves
its coefficient at every optimiser step, twice a GRPO step; ``entropy_coeff`` is the one the
first update applied (TRL logs it after that update).

A finished run (``done.json``) is reused.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from llm_bridge.engines import load_task, taking_turns
from llm_bridge.integrations.trl import grpo_args, trl_dataset, trl_reward
from llm_bridge.models import load_model
from llm_bridge.rollout import plain_sampling, sampling_config, stop_token_ids
from llm_bridge.tasks import response_budget
from llm_bridge.testbed import TESTBED
from softmax_theory.stats import pass_at_k

EXTRA = dict(probe=False, checkpoint_every=0, save_final=False, val_prompts=128)
K = 8  # pass@8 over the 8 samples per held-out prompt


def trl_adaptive_run(
    model: str, out: Path, seed: int, target: float, delta: float, steps: int | None = None
) -> list[dict]:
    """The run's rows, one per GRPO step (trained here unless ``out`` holds a finished one)."""
    done = out / "done.json"
    with taking_turns(out):  # processes sharing runs take turns on one
        if done.exists():
            return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
        return _train(model, out, seed, target, delta, steps)


def _train(model: str, out: Path, seed: int, target: float, delta: float, steps) -> list[dict]:
    from transformers import SchedulerType, TrainerCallback
    from trl import GRPOTrainer

    done = out / "done.json"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = TESTBED.train_config(
        model, seed=seed, **EXTRA, **({} if steps is None else {"steps": steps})
    )
    task = load_task(cfg)
    args, n_val = grpo_args(cfg, out, task, 1)
    # set on the built config (GRPOConfig derives its batch sizes once, in __post_init__)
    for name, value in dict(
        loss_type="dapo",  # the token mean, as the testbed's loss_agg_mode
        use_adaptive_entropy=True,
        entropy_coef=0.0,
        entropy_target=target,
        entropy_coef_delta=delta,
        lr_scheduler_type=SchedulerType.CONSTANT_WITH_WARMUP,
        per_device_eval_batch_size=256,
    ).items():
        setattr(args, name, value)
    policy, tokenizer = load_model(model)
    stops = stop_token_ids(policy.generation_config, tokenizer)
    plain = sampling_config(
        cfg.temperature, response_budget(task, cfg.max_new_tokens), stops, tokenizer.pad_token_id
    )
    evals: dict[str, list[float]] = defaultdict(list)  # held-out prompt → its sample rewards
    score = trl_reward(task)
    holder: dict = {}

    def reward(completions, answer, prompts, **kw):
        r = score(completions, answer, **kw)
        if not holder["trainer"].model.training:  # an evaluation: keep them for pass@8
            for p, v in zip(prompts, r, strict=True):
                evals[str(p)].append(v)
        return r

    reward.__name__ = score.__name__
    rows: dict[int, dict] = {}

    updates = cfg.updates_per_step  # TRL's optimiser steps per GRPO step

    class Rows(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            logs = logs or {}
            g = state.global_step
            if "eval_reward" in logs:  # after g updates: before GRPO step g / updates
                right = [
                    sum(v >= task.max_reward for v in r) for r in evals.values() if len(r) >= K
                ]
                row = rows.setdefault(g // updates, {})
                row["val_reward"] = float(logs["eval_reward"])
                row[f"val_pass@{K}"] = float(np.mean([pass_at_k(K, int(c), K) for c in right]))
                evals.clear()
            elif "reward" in logs:  # the GRPO step's first update: generated, and at θ_old
                rows.setdefault((g - 1) // updates, {}).update(
                    entropy=float(logs["entropy"]),
                    reward=float(logs["reward"]),
                    entropy_coeff=float(logs.get("entropy_coef", 0.0)),
                )

    with plain_sampling(policy, plain):
        trainer = GRPOTrainer(
            model=policy,
            reward_funcs=reward,
            args=args,
            train_dataset=trl_dataset(task.train, tokenizer),
            eval_dataset=trl_dataset(task.test[:n_val], tokenizer),
            processing_class=tokenizer,
            callbacks=[Rows()],
        )
        holder["trainer"] = trainer
        trainer.train()
    steps = [{"step": k, **rows[k]} for k in sorted(rows) if k < cfg.steps and "entropy" in rows[k]]
    (out / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    done.write_text(json.dumps({"target": target, "delta": delta, "seed": seed}))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", type=float, required=True, help="entropy_target (nats)")
    parser.add_argument("--delta", type=float, default=0.005, help="entropy_coef_delta")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="default: the testbed's 300")
    a = parser.parse_args()
    steps = trl_adaptive_run(a.model, a.out, a.seed, a.target, a.delta, a.steps)
    print(f"{len(steps)} steps; entropy {steps[0]['entropy']:.3f} → {steps[-1]['entropy']:.3f}")


if __name__ == "__main__":
    main()
