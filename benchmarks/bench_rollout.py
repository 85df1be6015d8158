"""Rollout speed: response tokens per second, ``hf`` (transformers ``generate``) against ``vllm``
(the engine in process, ``llm_bridge.vllm_engine``), and the time the vLLM backend spends on
weight sync (the policy's weights loaded into the engine in memory before a rollout).

Model: `llm-bridge pretrain-tiny --task running-sum --terms 13 --vocab-size 151936` (V =
151,936, Qwen2.5's vocabulary). Responses run to the budget (no stop tokens, in both backends),
so each call samples exactly responses × budget tokens; the model folder is copied with its
``max_position_embeddings`` raised to fit the 512-token budget (rotary positions: no weight
depends on it; past its trained length the text means nothing, and costs the same).

Per configuration (responses × budget): one generate call per backend, ``--repeats`` times, the
median; the weight sync is timed after an in-place change of every parameter (as an optimiser
step makes), and its share is that of a vLLM rollout, sync + generate. Needs vLLM (``make
vllm``):

    .venv-vllm/bin/python benchmarks/bench_rollout.py --model .cache/tiny-running-sum-v151936 \
        [--responses 64,256] [--budgets 66,512] [--repeats 1] [--out docs/benchmarks.md] \
        [--results runs/bench_rollout.jsonl]

Each configuration's row is appended to --results as it is measured, and a configuration
already there is not measured again, so an interrupted run resumes where it stopped; the table
has every row of the file (delete it to measure again).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section  # noqa: E402

MARKER = "<!-- bench_rollout -->"
PROMPT_TERMS = 13
SPARE_POSITIONS = 64  # prompt tokens beside the largest budget


def long_model_copy(model: Path, positions: int, into: Path) -> Path:
    """A copy of the model folder whose config allows ``positions`` positions."""
    out = into / model.name
    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text())
    config["max_position_embeddings"] = max(config.get("max_position_embeddings", 0), positions)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--responses", default="64,256", help="responses per call, comma list")
    parser.add_argument("--budgets", default="66,512", help="response tokens, comma list")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None, help="markdown file for the table")
    parser.add_argument(
        "--results", type=Path, default=Path("runs/bench_rollout.jsonl"), help="rows, JSON lines"
    )
    args = parser.parse_args(argv)
    responses = [int(x) for x in args.responses.split(",")]
    budgets = [int(x) for x in args.budgets.split(",")]

    from llm_bridge.models import load_model
    from llm_bridge.rollout import HFBackend, VLLMBackend
    from llm_bridge.tasks import TaskName, synthetic_task
    from llm_bridge.vllm_engine import EngineSettings

    work = Path(tempfile.mkdtemp(prefix="bench_rollout_"))
    try:
        folder = long_model_copy(args.model, max(budgets) + SPARE_POSITIONS, work)
        model, tok = load_model(folder)
        model.eval()
        task = synthetic_task(TaskName.RUNNING_SUM, 0, n_train=4, n_test=4, terms=PROMPT_TERMS)
        prompt = task.train[0].prompt
        hf = HFBackend(model, tok)
        hf.stop_ids = ()  # every response runs to the budget
        start = time.perf_counter()
        vllm = VLLMBackend(
            str(folder),
            tok,
            stop_ids=(),
            policy=model,
            settings=EngineSettings(max_model_len=max(budgets) + SPARE_POSITIONS),
        )
        build_s = time.perf_counter() - start
        for backend in (hf, vllm):  # first calls pay one-time costs: not measured
            backend.generate([prompt], 2, 4, args.temperature, torch.Generator())
        rows = (
            [json.loads(line) for line in args.results.read_text().splitlines()]
            if (args.results.exists())
            else []
        )
        done = {(r["responses"], r["budget"]) for r in rows}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        for n in responses:
            for budget in budgets:
                if (n, budget) in done:
                    continue
                row = {"responses": n, "budget": budget}
                for name, backend in (("hf", hf), ("vllm", vllm)):
                    times = []
                    for r in range(args.repeats):
                        gen = torch.Generator().manual_seed(r)
                        start = time.perf_counter()
                        roll = backend.generate([prompt], n, budget, args.temperature, gen)
                        times.append(time.perf_counter() - start)
                        assert int(roll.response_mask.sum()) == n * budget
                    row[f"{name}_s"] = statistics.median(times)
                    row[f"{name}_tok_s"] = n * budget / row[f"{name}_s"]
                with torch.no_grad():  # an optimiser step's worth of change: every parameter
                    for p in model.parameters():
                        p.mul_(1.0)
                start = time.perf_counter()
                assert vllm.sync_weights()
                row["sync_s"] = time.perf_counter() - start
                row["sync_share"] = row["sync_s"] / (row["sync_s"] + row["vllm_s"])
                rows.append(row)
                with args.results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    params = sum(p.numel() for p in model.parameters())
    lines = [
        MARKER,
        "## Rollout: hf generate against vLLM, and the weight sync",
        "",
        f"`benchmarks/bench_rollout.py`: V = {model.config.vocab_size:,} ({params / 1e6:.1f}M "
        f"parameters, fp32), one prompt × n responses sampled to the budget at T = "
        f"{args.temperature:g}, median of {args.repeats} after a warm-up call; "
        f"{torch.get_num_threads()} torch threads, CPU, vLLM's CPU build in process (engine "
        f"built in {build_s:.0f} s). Weight sync: the policy's weights loaded into the engine "
        "in memory; its share is of a vLLM rollout (sync + generate).",
        "",
        "| responses | budget | hf tok/s | vLLM tok/s | vLLM / hf | sync (s) | sync share |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['responses']} | {r['budget']} | {r['hf_tok_s']:,.0f} | "
            f"{r['vllm_tok_s']:,.0f} | {r['vllm_tok_s'] / r['hf_tok_s']:.2f}× | "
            f"{r['sync_s']:.3f} | {r['sync_share']:.1%} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        write_section(args.out, table)


if __name__ == "__main__":
    main()
