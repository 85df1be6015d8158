"""``llm-bridge train --engine trl``: a run through TRL's GRPOTrainer into our run directory,
from the same setup as our engine (``llm_bridge.run_setup``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, ProgressCallback

from llm_bridge.config import RESUME_FREE, TrainConfig
from llm_bridge.integrations.trl.config import grpo_args, refuse_for_trl, run_dir_config
from llm_bridge.integrations.trl.data import trl_dataset, trl_reward
from llm_bridge.integrations.trl.run_log import RunLogCallback
from llm_bridge.integrations.trl.trainer import RegistryLossTrainer
from llm_bridge.interrupts import deferred_interrupts, interrupted_message
from llm_bridge.probe import StepProbe
from llm_bridge.rollout import plain_sampling, sampling_config, stop_token_ids
from llm_bridge.run_dir import FINAL_DIR, TRL_DIR
from llm_bridge.run_setup import prepare_run
from llm_bridge.tasks import Task
from softmax_theory.runlog import read_run


def _sync_through_reload(trainer: RegistryLossTrainer) -> None:
    """On vLLM's CPU build TRL's colocate weight sync fails (it calls the engine model's
    ``load_weights`` on layers the CPU build has packed for its kernels: "'Parameter' object
    has no attribute 'weight_loader'"); there the engine takes the policy's weights through
    vLLM's in-place reload, as our backend does (``vllm_engine.load_policy_weights``). On CUDA
    TRL's own sync stays."""
    from llm_bridge.vllm_engine import load_policy_weights, vllm_platform

    if not (trainer.use_vllm and trainer.vllm_mode == "colocate") or vllm_platform() != "cpu":
        return
    generation = trainer.vllm_generation

    def sync_weights() -> None:
        load_policy_weights(generation.llm, trainer.accelerator.unwrap_model(trainer.model))

    generation.sync_weights = sync_weights


def train_with_trl(
    cfg: TrainConfig,
    out: str | os.PathLike,
    task: Task,
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = lambda _: None,
    stop: Callable[[dict[str, Any]], bool] | None = None,
) -> Path:
    """The run of ``cfg`` through TRL's GRPOTrainer, into the run directory ``out``; ``task`` as
    ``llm_bridge.engines.load_task`` gives.

    Every TrainConfig field is honoured or refused by name (``config.refuse_for_trl``):
    ``group_size`` → ``num_generations``; the mini-batch and ``micro_batch_size`` →
    ``per_device_train_batch_size``, gradient accumulation and ``steps_per_generation``;
    ``epochs`` → ``num_iterations``; ``steps`` → ``max_steps`` × updates per step;
    ``advantage``, ``policy_loss`` → ours; validation → TRL's eval (``eval_on_start``, every
    ``val_every`` steps, on ``val_prompts`` held-out prompts, ``num_generations`` samples
    each); ``checkpoint_every`` → ``save_steps`` (the latest checkpoint kept); ``resume`` →
    ``resume_from_checkpoint``; ``device`` → ``use_cpu``; ``backend vllm`` → ``use_vllm``; the
    probe and run-log settings → ``RunLogCallback`` and ``StepProbe``. Our warm-up
    (``warmup_steps`` GRPO steps, linear from 1/W), then a constant learning rate; Adam
    (``adamw_torch``, no weight decay) or SGD; no gradient clipping. ``stop`` or an interrupt
    ends the run after the current GRPO step, with a TRL checkpoint; an interrupt then raises
    KeyboardInterrupt naming it.
    """
    out = Path(out)
    # torchrun and accelerate launch set WORLD_SIZE and RANK; accelerate's state is left for
    # the Trainer to create, with the device settings of GRPOConfig
    n_proc = int(os.environ.get("WORLD_SIZE", "1"))
    main = int(os.environ.get("RANK", "0")) == 0
    built: dict[str, Any] = {}  # GRPOConfig is built once the settings have passed

    def engine_config(recorded: dict[str, Any]) -> dict[str, Any]:
        built["args"], built["val_prompts"] = grpo_args(cfg, out, task, n_proc)
        return run_dir_config(recorded, built["args"], n_proc, cfg.policy_loss, cfg.advantage)

    setup = prepare_run(
        cfg,
        out,
        task,
        resume=resume,
        log=log,
        resume_free=RESUME_FREE | {"max_steps"},
        engine_config=engine_config,
        refuse=lambda c: refuse_for_trl(c.policy_loss, n_proc, cfg=c),
    )
    args, val_prompts = built["args"], built["val_prompts"]
    if cfg.backend.value == "vllm":
        from llm_bridge.vllm_engine import engine_environment, vllm_platform

        # one line when vLLM is missing (vllm_platform says how to get it); the engine in
        # process, with the CPU build's settings, before TRL builds it
        for key, value in engine_environment(vllm_platform()).items():
            os.environ.setdefault(key, value)
    model, tokenizer, fmt = setup.model, setup.tokenizer, setup.prompt_format
    # TRL's sampling, like ours, is softmax(z/T) ending at the model's stop tokens: TRL reads its
    # stop ids from model.generation_config and leaves unset settings to the model's own, so the
    # plain config stands in for the model's while TRL is built and trains
    stops = stop_token_ids(model.generation_config, tokenizer)
    plain = sampling_config(cfg.temperature, setup.budget, stops, tokenizer.pad_token_id)
    with plain_sampling(model, plain):
        trainer = RegistryLossTrainer(
            model=model,
            reward_funcs=trl_reward(task),
            args=args,
            train_dataset=trl_dataset(task.train, tokenizer, fmt),
            eval_dataset=trl_dataset(task.test[:val_prompts], tokenizer, fmt)
            if cfg.val_every
            else None,
            processing_class=tokenizer,
            policy_loss=cfg.policy_loss,
            advantage=cfg.advantage,
            w_reinforce_lambda=cfg.w_reinforce_lambda,
            checked=True,
            control=cfg.control,
            control_steps=cfg.steps,
            control_records=(
                read_run(out).steps if cfg.control.on and setup.checkpoint is not None else None
            ),
        )
        _sync_through_reload(trainer)
        probe = None
        if cfg.probe:
            probe = StepProbe(
                model,
                jvp=cfg.probe_jvp,
                micro_batch_size=cfg.micro_batch_size,
                temperature=cfg.temperature,
                seed=cfg.seed,
                probe_responses=cfg.probe_responses,
            )
        run_log = RunLogCallback(
            trainer,
            setup.open_run_directory() if main else None,
            probe,
            probe_every=cfg.probe_every,
            cov_table_steps=tuple(cfg.cov_table_steps),
            token_steps_every=cfg.token_steps_every,
            micro_batch_size=cfg.micro_batch_size,
            stop_ids=stops,
            progress=progress,
            stop=stop,
            log=log,
        )
        # first, so that the trackers TRL reports to read the record's keys it adds to a log
        trainer.callback_handler.callbacks.insert(0, run_log)
        if progress is not None:  # our progress line only: TRL's bars and printed log dicts go
            trainer.remove_callback(ProgressCallback)
            trainer.remove_callback(PrinterCallback)
        checkpoint = None if setup.checkpoint is None else str(setup.checkpoint)
        with deferred_interrupts(log) as interrupted:
            run_log.interrupted = interrupted
            trainer.train(resume_from_checkpoint=checkpoint)
    stopped_after = run_log.stopped_after
    if stopped_after is None and cfg.save_final and trainer.state.global_step >= args.max_steps:
        trainer.save_model(str(out / FINAL_DIR))
    if trainer.accelerator.is_main_process:
        trainer.state.save_to_json(str(out / TRL_DIR / "trainer_state.json"))
    trainer.accelerator.end_training()  # trackers finished, process group destroyed
    if stopped_after is not None:
        raise KeyboardInterrupt(interrupted_message(out, stopped_after))
    return out


__all__ = ["train_with_trl"]
