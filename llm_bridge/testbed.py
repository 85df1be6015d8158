"""Named presets of a model to pre-train and a run to train on it, with the targets the run is
meant to meet: the testbeds on which the paper's mechanism shows on this machine
(``docs/regime.md``). ``llm-bridge pretrain-tiny --preset NAME`` and ``llm-bridge train --preset
NAME`` start from a preset's settings (a flag given beside it still wins); ``make demo``, the
findings scripts and the tests read them from here.

``testbed``: the defaults of ``TinyConfig`` and ``TrainConfig`` (so that the first run a user
types, with no flags, shows the mechanism; a test holds the two equal): the addition model
pre-trained on labels whose answer digits are redrawn 30% of the time, until it has learnt the
task (greedy 96%) with its probability spread over the digits (right 23% of the time at
T = 1); GRPO at T = 1 sharpens it, and entropy collapses as reward
rises and saturates (search stage 6 of ``docs/regime.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llm_bridge.config import TrainConfig
from llm_bridge.tiny import TinyConfig
from softmax_theory.inputs import SettingError


@dataclass(frozen=True)
class RegimeTargets:
    """What "the regime" means (the paper's Fig. 2 and §2), as targets a run of a preset meets:
    vanilla loses ≥ ``min_drop`` of its starting entropy; ≥ ``min_early`` of the entropy drop
    and of the reward gain come by a third of the steps; the last third adds at most
    ``max_late`` of the gain (nor loses more); the law fits at R² ≥ ``law_r2`` on at least
    ``law_points`` points; a run takes at most ``max_minutes`` on 2 cores."""

    min_drop: float = 0.75
    min_early: float = 0.70
    max_late: float = 0.10
    law_r2: float = 0.9
    law_points: int = 30
    max_minutes: float = 15.0

    def checks(self, summary: Mapping[str, Any], seconds: float) -> dict[str, bool]:
        """Each target, met or not, from a run's ``compare.run_summary`` entry and its wall
        time in seconds."""
        gain = (summary["train_reward_end"] or 0) - (summary["train_reward_start"] or 0)
        fig2, law = summary["fig2"], summary["law"]
        late = summary["reward_last_third"]
        return {
            "drop": (summary["entropy_drop"] or 0) >= self.min_drop,
            "early_entropy": (fig2["entropy"] or 0) >= self.min_early,
            "early_reward": gain > 0 and (fig2["reward"] or 0) >= self.min_early,
            "saturates": gain > 0 and late is not None and abs(late) <= self.max_late,
            "law": (law.get("r2") or 0) >= self.law_r2 and (law.get("n") or 0) >= self.law_points,
            "minutes": seconds <= 60 * self.max_minutes,
        }


@dataclass(frozen=True)
class Preset:
    """A model to pre-train (``pretrain``), the run on it (``train``: ``TrainConfig`` fields,
    the rest at their defaults) and the targets that run meets."""

    name: str
    pretrain: TinyConfig
    train: Mapping[str, Any]
    targets: RegimeTargets = field(default_factory=RegimeTargets)

    def train_settings(self) -> dict[str, Any]:
        """The ``TrainConfig`` fields the preset sets: its run's, and the task of its model with
        its terms (running-sum's; the default, which every task accepts, for the others)."""
        return {"task": self.pretrain.task, "terms": self.pretrain.terms, **self.train}

    def train_config(self, model: str, **settings: Any) -> TrainConfig:
        """The preset's run on ``model``; ``settings`` replace its own or add to them."""
        return TrainConfig(model=model, **{**self.train_settings(), **settings})


TESTBED = Preset(
    name="testbed",
    pretrain=TinyConfig(steps=6000, lr=1e-3, warmup=100, label_noise=0.3),
    train={
        "temperature": 1.0,
        "prompts_per_step": 32,
        "lr": 2e-4,
        "warmup_steps": 5,
        "steps": 300,
        "val_every": 10,
    },
)

RUNNING_SUM = Preset(
    name="running-sum",
    # 13 two-digit terms: every partial sum written, 65 response tokens with EOS. Without label
    # noise the model ends sharp (entropy 0.03, 70% of sums right at T = 1: no headroom); with
    # noise 0.1 on each digit whose written sums follow from the noisy ones (``noise_carries``)
    # it knows the task (87% of the sums right greedy) and writes 13% right at T = 1, where an
    # error carries into every later sum (docs/llm_findings.md §8)
    pretrain=TinyConfig(
        task="running-sum",
        terms=13,
        steps=4000,
        lr=1e-3,
        warmup=100,
        label_noise=0.1,
        noise_carries=True,
    ),
    train={
        "temperature": 1.0,
        # 256 responses of 65 tokens in one update: about 16,600 tokens, so the paper's ratios
        # select several tokens (Clip-Cov's 2e-4: 3) to tens (KL-Cov's 2e-3: 33); sized so that
        # a run takes at most 20 minutes on one core
        "prompts_per_step": 32,
        # two epochs of one update each: every update holds the whole step, and KL-Cov's term
        # (zero gradient at θ_old) acts in the second
        "mini_batches": 1,
        "epochs": 2,
        "lr": 5e-4,
        "warmup_steps": 5,
        "steps": 50,
        "val_every": 5,
        "val_prompts": 64,
        "val_k": 4,
    },
    targets=RegimeTargets(law_points=10, max_minutes=20.0),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (TESTBED, RUNNING_SUM)}


def get_preset(name: str) -> Preset:
    """The preset ``name``; an unknown name is refused naming ``preset`` and the choices."""
    if name not in PRESETS:
        raise SettingError("preset", f"{name!r} is not one of {', '.join(PRESETS)}")
    return PRESETS[name]


__all__ = ["PRESETS", "RUNNING_SUM", "TESTBED", "Preset", "RegimeTargets", "get_preset"]
