"""The trainer at a real vocabulary (V = 151,936) and long responses, against TRL's GRPOTrainer.

Model: `llm-bridge pretrain-tiny --task running-sum --terms 13 --vocab-size 151936` (19.8M
parameters; responses of 65 tokens + EOS). Every measurement runs in a fresh process, so its
peak RSS (``ru_maxrss``) is its own:

1. memory against the batch: one probed step (probe over every response, JVP) at 4, 16 and 64
   prompts × 8 responses, micro-batches of 8 responses, at most 64 responses per generate call
   (``--generate-batch-size``). Goal: the peak grows ≤ 15% from 4 to 64 prompts. The estimate of
   ``llm_bridge.memory`` is printed beside each measured peak.
2. time against TRL, alternating in one run, at 16 prompts × 8: ours without the probe, ours
   with the probe over every response, ours with a 64-response probe, and plain
   ``trl.GRPOTrainer`` (its own loss, no probe), same model, prompts, group size, completion
   length and micro-batch, one optimiser update per step. Goals: ours unprobed ≤ 0.8× TRL;
   probed ≤ 2× our unprobed step; with the 64-response probe ≤ 1.3×. Peak memory of the same
   runs: goal ours ≤ TRL's. Medians and spreads over blocks.

    python benchmarks/bench_scale.py --model .cache/tiny-running-sum-v151936 \
        [--out docs/benchmarks.md] [--results runs/bench_scale.json]

Each worker's result is kept in --results as it comes, so an interrupted run resumes where it
stopped (delete the file to measure again).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section  # noqa: E402
from trl_timing import time_trl_steps  # noqa: E402

MARKER = "<!-- bench_scale -->"
GROUP = 8
MICRO = 8
TERMS = 13
MEMORY_GOAL = 0.15
TRL_GOAL, PROBE_GOAL, SUBSET_GOAL = 0.8, 2.0, 1.3
SUBSET = 64
GENERATE = 64  # responses per generate call in the memory table
GIB = 1024**3


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# ---------------------------------------------------------------------------------------------
# Workers: one configuration in this process; print a JSON line of times and the peak RSS
# ---------------------------------------------------------------------------------------------


def _gpu_peak(device: str) -> int | None:
    return torch.cuda.max_memory_allocated() if device == "cuda" else None


def worker_ours(
    model: str,
    prompts: int,
    steps: int,
    probe: str,
    work: Path,
    terms: int,
    device: str,
    generate: int | None = None,
) -> dict:
    from llm_bridge import ProbedGRPOTrainer, TrainConfig, load_task

    start_rss = _rss()
    cfg = TrainConfig(
        # the defaults of the time, before the testbed became them
        lr=5e-4,
        model=model,
        device=device,
        task="running-sum",
        terms=terms,
        steps=steps,
        prompts_per_step=prompts,
        group_size=GROUP,
        mini_batches=1,
        micro_batch_size=MICRO,
        warmup_steps=0,
        val_every=0,
        checkpoint_every=0,
        cov_table_steps=(),
        probe=probe != "off",
        probe_responses=SUBSET if probe == "subset" else None,
        generate_batch_size=generate,
    )
    trainer = ProbedGRPOTrainer(cfg, work / f"ours_{time.perf_counter_ns()}", load_task(cfg))
    estimate = trainer.step_memory().total
    loaded = _rss()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        record = trainer.step()
        times.append(time.perf_counter() - t0)
    trainer.run_dir.close()
    return {
        "times": times,
        "gpu_peak": _gpu_peak(device),
        "response_tokens": record["response_length"] * prompts * GROUP,
        "peak": _rss(),
        "start": start_rss,
        "loaded": loaded,
        "estimate": estimate,
        "tokens": record.get("probe/tokens"),
        "split": {k: record[k] for k in ("time/rollout_s", "time/update_s", "time/probe_s")},
    }


def worker_trl(
    model_path: str, prompts: int, steps: int, work: Path, terms: int, device: str
) -> dict:
    from llm_bridge import synthetic_task

    start_rss = _rss()
    task = synthetic_task("running-sum", terms=terms)
    times = time_trl_steps(model_path, task, prompts, GROUP, MICRO, steps, work, device)
    return {"times": times, "gpu_peak": _gpu_peak(device), "peak": _rss(), "start": start_rss}


def run_worker(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        kind, prompts, steps, terms, device, *generate = args.worker.split(",")
        if kind == "trl":
            result = worker_trl(args.model, int(prompts), int(steps), work, int(terms), device)
        else:
            gen = int(generate[0]) if generate else None
            result = worker_ours(
                args.model, int(prompts), int(steps), kind, work, int(terms), device, gen
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(
    model: str,
    kind: str,
    prompts: int,
    steps: int,
    terms: int = TERMS,
    device: str = "cpu",
    generate: int | None = None,
) -> dict:
    """One configuration in a fresh process (its own peak RSS and GPU peak). ``kind``: off, all
    or subset (ours, by probe), or trl; ``generate``: responses per generate call (ours)."""
    worker = f"{kind},{prompts},{steps},{terms},{device}" + (f",{generate}" if generate else "")
    cmd = [sys.executable, __file__, "--model", model, "--worker", worker]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} at {prompts} prompts failed:\n{done.stderr[-3000:]}")
    print(f"{worker}: {lines[-1][len('RESULT ') :]}", file=sys.stderr, flush=True)  # progress
    return json.loads(lines[-1][len("RESULT ") :])


class Results:
    """Worker results by key, written to ``path`` as each comes (None: kept in memory only)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data = json.loads(path.read_text()) if path and path.exists() else {}

    def get(self, key: str, run) -> dict:
        if key not in self.data:
            self.data[key] = run()
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.data, indent=1))
                tmp.replace(self.path)
        return self.data[key]


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def memory_table(model: str, sizes: list[int], results: Results) -> tuple[list[str], dict]:
    runs = {
        p: results.get(
            f"memory,{p},{GENERATE}", lambda p=p: spawn(model, "all", p, 1, generate=GENERATE)
        )
        for p in sizes
    }
    lines = [
        "| prompts × 8 | response tokens | peak RSS (GiB) | estimate (GiB) | step (s) | "
        "rollout / update / probe (s) |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for p, r in runs.items():
        split = " / ".join(f"{v:.1f}" for v in r["split"].values())
        lines.append(
            f"| {p} | {r['tokens']} | {(r['peak'] - r['start']) / GIB:.2f} | "
            f"{r['estimate'] / GIB:.2f} | {r['times'][-1]:.1f} | {split} |"
        )
    lo, hi = runs[sizes[0]], runs[sizes[-1]]
    growth = (hi["peak"] - hi["start"]) / (lo["peak"] - lo["start"]) - 1
    lines += [
        "",
        f"Peak growth from {sizes[0]} to {sizes[-1]} prompts: {growth:+.1%} (goal ≤ "
        f"+{MEMORY_GOAL:.0%}: {_verdict(growth <= MEMORY_GOAL)}). Peak RSS counts from before "
        "the model is loaded (the process's own Python and torch excluded).",
    ]
    return lines, runs


def time_table(model: str, prompts: int, blocks: int, steps: int, results: Results) -> list[str]:
    kinds = ("off", "all", "subset", "trl")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    peaks: dict[str, list[float]] = {k: [] for k in kinds}
    for block in range(blocks):  # alternate, so that every kind sees the same machine
        for kind in kinds:
            key = f"time,{kind},{prompts},{steps},{block}"
            r = results.get(key, lambda kind=kind: spawn(model, kind, prompts, steps))
            times[kind].append(statistics.median(r["times"][1:]))  # the first step warms up
            peaks[kind].append((r["peak"] - r["start"]) / GIB)
    ratio = {
        "off/trl": [a / b for a, b in zip(times["off"], times["trl"], strict=True)],
        "all/off": [a / b for a, b in zip(times["all"], times["off"], strict=True)],
        "subset/off": [a / b for a, b in zip(times["subset"], times["off"], strict=True)],
    }
    name = {
        "off": "ours, no probe",
        "all": "ours, probe over every response (+ JVP)",
        "subset": f"ours, probe over {SUBSET} responses",
        "trl": "TRL GRPOTrainer (its loss, no probe)",
    }
    lines = [
        f"{prompts} prompts × {GROUP} responses, micro-batches of {MICRO}, one update per step; "
        f"median over blocks (range), {blocks} alternating blocks of {steps} steps (the first of "
        "each is a warm-up).",
        "",
        "| trainer | step (s) | peak RSS (GiB) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name[k]} | {_spread(times[k])} | {_spread(peaks[k])} |" for k in kinds]
    med = {k: statistics.median(v) for k, v in ratio.items()}
    peak_ok = statistics.median(peaks["off"]) <= statistics.median(peaks["trl"])
    lines += [
        "",
        "| goal | measured (range) | |",
        "|---|---:|---|",
        f"| ours unprobed ≤ {TRL_GOAL}× TRL | {_spread(ratio['off/trl'])} | "
        f"{_verdict(med['off/trl'] <= TRL_GOAL)} |",
        f"| probe over every response ≤ {PROBE_GOAL}× our unprobed step | "
        f"{_spread(ratio['all/off'])} | {_verdict(med['all/off'] <= PROBE_GOAL)} |",
        f"| {SUBSET}-response probe ≤ {SUBSET_GOAL}× our unprobed step | "
        f"{_spread(ratio['subset/off'])} | {_verdict(med['subset/off'] <= SUBSET_GOAL)} |",
        f"| our peak (unprobed) ≤ TRL's | {statistics.median(peaks['off']):.2f} vs "
        f"{statistics.median(peaks['trl']):.2f} GiB | {_verdict(peak_ok)} |",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--sizes", default="4,16,64", help="prompts per step for the memory table")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step against TRL")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="steps per block")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--results", type=Path, default=None, help="keep each worker's result here; resume"
    )
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="the memory table alone (about 15 minutes here), without the timing against TRL",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    if args.memory_only and args.out is not None:
        parser.error("--memory-only with --out would write the section without its timing table")
    sizes = [int(x) for x in args.sizes.split(",")]
    results = Results(args.results)
    memory, _ = memory_table(args.model, sizes, results)
    timing = (
        []
        if args.memory_only
        else time_table(args.model, args.prompts, args.blocks, args.steps, results)
    )
    table = "\n".join(
        [
            MARKER,
            "### The trainer at V = 151,936 and 66-token responses, against TRL",
            "",
            f"{torch.get_num_threads()} torch threads, CPU. `python benchmarks/bench_scale.py "
            "--model .cache/tiny-running-sum-v151936` (model: `llm-bridge pretrain-tiny --task "
            "running-sum --terms 13 --vocab-size 151936`).",
            "",
            f"One probed step (probe over every response, JVP), micro-batches of {MICRO} "
            f"responses, at most {GENERATE} responses per generate call:",
            "",
            *memory,
            "",
            *timing,
        ]
    )
    print(table)
    if args.out is not None:
        write_section(args.out, table + "\n")


if __name__ == "__main__":
    main()
