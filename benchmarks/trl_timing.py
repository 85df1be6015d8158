"""What the benchmarks against TRL share: plain ``trl.GRPOTrainer`` (its own loss, no probe),
timed step by step, on one of our synthetic tasks."""

from __future__ import annotations

import time
from pathlib import Path


def time_trl_steps(
    model_path: str,
    task,
    prompts: int,
    group: int,
    micro: int,
    steps: int,
    work: Path,
    device: str = "cpu",
) -> list[float]:
    """Seconds per optimiser step of TRL's GRPOTrainer: ``prompts × group`` responses per step,
    generated once and accumulated over micro-batches of ``micro`` responses (one update per
    step), completions as long as the task's longest answer + EOS, temperature 1, no KL."""
    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from llm_bridge import load_model
    from llm_bridge.integrations.trl import trl_dataset, trl_reward

    on_gpu = device == "cuda"
    model, tok = load_model(
        model_path, torch.device(device), torch.bfloat16 if on_gpu else torch.float32
    )
    times: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)

    responses = prompts * group
    accumulate = max(responses // micro, 1)
    args = GRPOConfig(
        output_dir=str(work / f"trl_{time.perf_counter_ns()}"),
        per_device_train_batch_size=min(micro, responses),
        gradient_accumulation_steps=accumulate,
        steps_per_generation=accumulate,
        num_generations=group,
        max_completion_length=task.max_answer_chars + 1,
        temperature=1.0,
        top_k=0,
        learning_rate=5e-4,
        lr_scheduler_type="constant",
        max_steps=steps,
        beta=0.0,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        use_cpu=not on_gpu,
        bf16=on_gpu,
        seed=0,
        disable_tqdm=True,
    )
    GRPOTrainer(
        model=model,
        reward_funcs=trl_reward(task),
        args=args,
        train_dataset=trl_dataset(task.train, tok),
        processing_class=tok,
        callbacks=[StepClock()],
    ).train()
    return times
