"""The memory model against the measured peak of one step, phase by phase.

Two GRPO steps per fresh process (the second holds the gradients and Adam's state the first made)
of the random-weight Qwen2-architecture model of
``bench_long`` (V = 151,936, d = 64, 2 layers), at 66, 512 and 1,024-token responses (random
weights seldom emit EOS, so responses run to the budget), with and without the probe (and its
JVP). A thread samples the process's resident memory every 2 ms and keeps the peak of each phase
(rollout, old log-probs, update, probe; the rest of the step is "step"); peaks are counted from
the process's size just before the trainer is built (Python, torch, transformers and the model's
files are below that line), as the estimate is (``llm_bridge.memory``). Goal: every measured
peak within ±15% of the estimate, and never above what the guard allowed.

    python benchmarks/bench_memory.py [--out docs/benchmarks.md] [--results runs/bench_memory.json]

Each worker's result is kept in --results as it comes, so an interrupted run resumes where it
stopped (delete the file to measure again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section  # noqa: E402

MARKER = "<!-- bench_memory -->"
GIB = 1024**3
GOAL = 0.15
STEPS = 2  # the first step creates the gradients and Adam's state; the second holds them all
# (response tokens, prompts, responses per prompt, micro-batch, probe)
CONFIGS = [
    (66, 1, 4, 4, False),
    (66, 1, 4, 4, True),
    (512, 1, 4, 4, False),
    (512, 1, 4, 4, True),
    (1024, 1, 4, 4, False),
    (1024, 1, 4, 4, True),
    (1024, 2, 4, 4, True),
]


class PhasePeaks:
    """Resident memory sampled every ``period`` seconds on a thread, the peak kept per phase."""

    def __init__(self, period: float = 0.002):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.phase, self.peaks, self.period = "start", {}, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            r, p = self.rss(), self.phase
            self.peaks[p] = max(self.peaks.get(p, 0), r)
            time.sleep(self.period)

    def labelled(self, obj, name: str, label: str) -> None:
        """Count the calls of ``obj.name`` as phase ``label``."""
        fn = getattr(obj, name)

        def call(*args, **kwargs):
            outer, self.phase = self.phase, label
            try:
                return fn(*args, **kwargs)
            finally:
                self.phase = outer

        setattr(obj, name, call)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def worker(tokens: int, prompts: int, group: int, micro: int, probe: bool) -> dict:
    import gc

    import torch

    torch.set_num_threads(2)
    from bench_long import build_model, build_trainer

    import llm_bridge.trainer as trainer_module

    work = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    model = build_model(work / "model", positions=tokens + 64)
    gc.collect()
    peaks = PhasePeaks()
    base = peaks.rss()
    peaks.phase = "build"
    trainer = build_trainer(model, work / "run", tokens, prompts, group, micro, probe, STEPS)
    estimate = trainer.step_memory()
    peaks.labelled(trainer, "generate", "rollout")
    peaks.labelled(trainer_module, "score_rollouts", "old pass")
    peaks.labelled(trainer, "update", "update")
    peaks.labelled(trainer.probe, "finish", "probe")
    peaks.phase = "step"
    t0 = time.perf_counter()
    for _ in range(STEPS):
        record = trainer.step()
    wall = time.perf_counter() - t0
    peaks.stop()
    trainer.run_dir.close()
    return {
        "config": [tokens, prompts, group, micro, probe],
        "response_length": record["response_length"],
        "wall": wall,
        "peaks": {k: v - base for k, v in peaks.peaks.items()},
        "estimate": estimate.total,
        "phases": estimate.phases(),
    }


def table(results: list[dict]) -> str:
    lines = [
        MARKER,
        "## The memory model against measured peaks (`benchmarks/bench_memory.py`)",
        "",
        f"{STEPS} GRPO steps per fresh process, the random-weight Qwen2-architecture model of "
        "`bench_long` (V = 151,936), micro-batches of 4 responses, responses that run to the "
        "budget; resident memory sampled every 2 ms, counted from just before the trainer is "
        f"built. Goal: measured within ±{GOAL:.0%} of the estimate.",
        "",
        "| tokens | responses | probe | measured peak | estimate | measured ÷ estimate | "
        "peak phase | measured by phase (GiB) | estimate by phase (GiB) |",
        "|---:|---:|:---:|---:|---:|---:|:---|:---|:---|",
    ]
    for r in results:
        tokens, prompts, group, _, probe = r["config"]
        peaks = {k: v for k, v in r["peaks"].items() if k not in ("start",)}
        top = max(peaks, key=peaks.get)
        measured = peaks[top]
        shown = ", ".join(
            f"{k} {peaks[k] / GIB:.2f}"
            for k in ("rollout", "old pass", "update", "probe")
            if k in peaks
        )
        est = ", ".join(f"{k} {v / GIB:.2f}" for k, v in r["phases"].items())
        lines.append(
            f"| {tokens:,} | {prompts * group} | {'yes' if probe else 'no'} | "
            f"{measured / GIB:.2f} GiB | {r['estimate'] / GIB:.2f} GiB | "
            f"{measured / r['estimate']:.2f} | {top} | {shown} | {est} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=Path("runs/bench_memory.json"))
    args = parser.parse_args()
    if args.worker is not None:
        tokens, prompts, group, micro, probe = json.loads(args.worker)
        print(json.dumps(worker(tokens, prompts, group, micro, bool(probe))))
        return
    done = json.loads(args.results.read_text()) if args.results.exists() else {}
    for config in CONFIGS:
        key = json.dumps(list(config))
        if key in done:
            continue
        out = subprocess.run(
            [sys.executable, __file__, "--worker", key],
            check=True,
            capture_output=True,
            text=True,
        )
        done[key] = json.loads(out.stdout.strip().splitlines()[-1])
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(done, indent=1))
        print(key, f"{done[key]['wall']:.0f} s", flush=True)
    text = table([done[json.dumps(list(c))] for c in CONFIGS])
    print(text)
    if args.out is not None:
        write_section(args.out, text)


if __name__ == "__main__":
    main()
