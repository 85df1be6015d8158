"""One GRPO step of our trainer (with its probes) against TRL's GRPOTrainer, same setting.

Same tiny model, prompts per step, group size, completion length, one optimiser update per step,
temperature 1. Blocks of steps alternate between the two (ours, TRL, ours, TRL) so that both see
the same machine state; the table gives the median step time over all blocks. TRL's step is
plain `trl.GRPOTrainer` (its own loss, no probe); ours includes the entropy probe (one extra
forward and a JVP). Goal: ours ≤ 0.8× TRL's step time.

    python benchmarks/bench_trl_step.py --model .cache/tiny-addition [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section  # noqa: E402
from trl_timing import time_trl_steps  # noqa: E402

GOAL = 0.8
MARKER = "<!-- bench_trl_step -->"


def _ours(
    model: str, prompts: int, group: int, steps: int, work: Path, probe: bool = True
) -> list[float]:
    from llm_bridge import ProbedGRPOTrainer, TrainConfig, load_task

    cfg = TrainConfig(
        # the defaults of the time, before the testbed became them
        lr=5e-4,
        warmup_steps=10,
        model=model,
        prompts_per_step=prompts,
        group_size=group,
        mini_batches=1,
        val_every=0,
        checkpoint_every=0,
        steps=steps,
        probe=probe,
    )
    out = work / f"ours_{time.perf_counter_ns()}"
    trainer = ProbedGRPOTrainer(cfg, out, load_task(cfg))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - start)
    trainer.run_dir.close()
    return times


def _trl(model_path: str, prompts: int, group: int, steps: int, work: Path) -> list[float]:
    from llm_bridge import synthetic_task

    task = synthetic_task("addition")
    return time_trl_steps(model_path, task, prompts, group, prompts * group, steps, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="steps per block")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_trl_"))
    ours, bare, trl = [], [], []
    try:
        for _ in range(args.blocks):  # the first step of each block is a warm-up
            ours += _ours(args.model, args.prompts, args.group, args.steps, work)[1:]
            bare += _ours(args.model, args.prompts, args.group, args.steps, work, False)[1:]
            trl += _trl(args.model, args.prompts, args.group, args.steps, work)[1:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mo, mb, mt = statistics.median(ours), statistics.median(bare), statistics.median(trl)
    table = (
        "\n".join(
            [
                MARKER,
                "### One GRPO step: ours (with probes) vs TRL's GRPOTrainer, "
                f"{args.prompts} prompts × {args.group} responses",
                "",
                f"Goal: ≤ {GOAL}× TRL's step time. Median over {len(ours)} steps each, "
                f"{args.blocks} alternating blocks; {torch.get_num_threads()} torch threads, CPU. "
                "`python benchmarks/bench_trl_step.py --model .cache/tiny-addition`.",
                "",
                "| trainer | median step (s) | × TRL | goal |",
                "|---|---:|---:|---|",
                f"| ours: llm_bridge.trainer with probe + JVP | {mo:.3f} | {mo / mt:.2f} | "
                + ("met" if mo / mt <= GOAL else "**missed**")
                + " |",
                f"| ours without the probe (--no-probe) | {mb:.3f} | {mb / mt:.2f} | "
                + ("met" if mb / mt <= GOAL else "**missed**")
                + " |",
                f"| TRL GRPOTrainer | {mt:.3f} | 1.00 | — |",
            ]
        )
        + "\n"
    )
    print(table)
    if args.out is not None:
        write_section(args.out, table)


if __name__ == "__main__":
    main()
