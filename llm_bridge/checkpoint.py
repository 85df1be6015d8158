"""Our engine's checkpoint: the model and tokenizer (``save_pretrained``), the optimiser, the
learning-rate schedule, the generator and the step, written whole or not at all
(``llm_bridge.run_dir.write_checkpoint``). Only the latest checkpoint is kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_bridge.run_dir import checkpoint_note, write_checkpoint

STATE_FILE = "trainer.pt"


@dataclass
class TrainState:
    """What a step carries to the next beyond the parameters."""

    step: int
    entropy_coeff: float  # the adaptive entropy coefficient (fixed without entropy_target)


class Checkpointer:
    """Saves and restores one run's training state in its run directory."""

    def __init__(self, out: Path, model, tokenizer, opt, schedule, generator: torch.Generator):
        self.out, self.model, self.tokenizer = out, model, tokenizer
        self.opt, self.schedule, self.generator = opt, schedule, generator

    def save(self, state: TrainState, log: Callable[[str], None] | None = None) -> Path:
        def fill(folder: Path) -> None:
            self.model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
            torch.save(
                {
                    "optimizer": self.opt.state_dict(),
                    "schedule": self.schedule.state_dict(),
                    "generator": self.generator.get_state(),
                    "step": state.step,
                    "entropy_coeff": state.entropy_coeff,
                },
                folder / STATE_FILE,
            )

        folder = write_checkpoint(self.out, fill, state.step)
        if log is not None:
            log(checkpoint_note(folder, state.step - 1))
        return folder

    def load(self, folder: Path, step: int | None = None) -> TrainState:
        """Restore the optimiser, schedule and generator from ``folder``; the model was loaded
        from it already (``from_pretrained``). ``step``: the step its ``COMPLETE`` mark names
        (``run_dir.resume_point``), which the saved state must agree with."""
        saved = torch.load(folder / STATE_FILE, weights_only=False)
        if step is not None and saved["step"] != step:
            raise ValueError(
                f"resume: {folder} is marked complete after step {step - 1} but holds the state "
                f"after step {saved['step'] - 1}; move it aside to restart the run"
            )
        self.opt.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.generator.set_state(saved["generator"])
        # checkpoints written before the coefficient took its one name call it alpha
        coeff = saved["entropy_coeff"] if "entropy_coeff" in saved else saved["alpha"]
        return TrainState(step=saved["step"], entropy_coeff=coeff)


__all__ = ["Checkpointer", "TrainState"]
