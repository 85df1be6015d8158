"""What the predictive entropy controller costs: an unprobed GRPO step on the testbed, with and
without the controller, in the same process.

The controller adds, per update, a second backward pass (the entropy term's gradient) and a
bisection over the optimiser's would-be update (42 evaluations of Adam's rule over the
parameters and a dot product each). Blocks of steps alternate (off, on, off, on) so that both
see the same machine state; the table gives the median step time over the blocks, the first
step of each block left out. Goal: the controller adds at most 30% to an unprobed step.

    python benchmarks/bench_control.py --model .cache/tiny-addition-noisy-testbed \
        [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section  # noqa: E402

GOAL = 0.30
MARKER = "<!-- bench_control -->"


def step_times(model: str, steps: int, control: bool, work: Path) -> list[float]:
    from llm_bridge import ProbedGRPOTrainer, load_task
    from llm_bridge.testbed import TESTBED
    from softmax_theory.control import ControlConfig

    extra = {}
    if control:
        extra["control"] = ControlConfig(
            entropy_control="predictive", control_level=0.5, control_coef_min=-0.05
        )
    cfg = TESTBED.train_config(
        model, steps=steps, probe=False, val_every=0, checkpoint_every=0, **extra
    )
    trainer = ProbedGRPOTrainer(cfg, work / f"run_{time.perf_counter_ns()}", load_task(cfg))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - start)
    trainer.run_dir.close()
    if trainer.control is not None:
        trainer.control.close()
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=6, help="steps per block")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench_control_"))
    off, on = [], []
    for _ in range(args.blocks):
        off += step_times(args.model, args.steps, False, work)
        on += step_times(args.model, args.steps, True, work)
    t_off, t_on = statistics.median(off), statistics.median(on)
    added = t_on / t_off - 1
    verdict = "met" if added <= GOAL else "**missed**"
    table = "\n".join(
        [
            MARKER,
            "## The predictive entropy controller's cost",
            "",
            "| step | median s | steps |",
            "|---|---:|---:|",
            f"| unprobed, no controller | {t_off:.3f} | {len(off)} |",
            f"| unprobed, predictive controller | {t_on:.3f} | {len(on)} |",
            "",
            f"The controller adds {added:+.1%} (goal ≤ +{GOAL:.0%}: {verdict}). The testbed's run "
            "(`--preset testbed`: 32 prompts × 8 responses, two Adam updates a step), no "
            f"validation; {args.blocks} alternating blocks of {args.steps} steps, the first of "
            "each left out; 2 torch threads, CPU. "
            "`python benchmarks/bench_control.py --model .cache/tiny-addition-noisy-testbed`.",
            "",
        ]
    )
    print(table)
    if args.out is not None:
        write_section(args.out, table)


if __name__ == "__main__":
    main()
