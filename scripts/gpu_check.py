"""The GPU run, as one prepared script: pre-train a real-vocabulary model, run the probed GRPO
trainer on it (vanilla and KL-Cov), then our step against TRL's GRPOTrainer, alternating.

    python scripts/gpu_check.py --out DIR            # on a CUDA machine (scripts/gpu_check.sh)
    python scripts/gpu_check.py --out DIR --cpu-smoke  # the same path on CPU at toy size

Writes into --out: ``gpu_check.json`` (the card, the settings, and per run: step time split into
rollout, update and probe, response tokens/s, peak GPU memory, the probe's per-token Lemma-1 and
JVP correlations; the TRL comparison) and each run's ``steps.jsonl``. ``docs/gpu.md`` is filled
from these files. Every stage checks the clock: a stage that would run past --budget-s is
skipped and the JSON says so, so the files come back whole.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_scale  # noqa: E402

from llm_bridge import TinyConfig, TrainConfig, pretrain_tiny, train  # noqa: E402
from llm_bridge.compare import predictor_stats  # noqa: E402
from softmax_theory.policy import PolicyLossConfig  # noqa: E402
from softmax_theory.runlog import read_run, to_jsonable  # noqa: E402


@dataclass(frozen=True)
class Size:
    """How big each stage is: the GPU's and the CPU smoke test's."""

    tiny: TinyConfig
    terms: int
    prompts: int
    micro: int
    steps: int
    trl_prompts: int
    trl_steps: int
    trl_blocks: int


GPU = Size(
    # the scale issue's real vocabulary (Qwen2.5's), wider and deeper than the CPU model
    tiny=TinyConfig(
        task="running-sum",
        terms=13,
        vocab_size=151_936,
        hidden_size=512,
        layers=4,
        heads=8,
        intermediate_size=1024,
        steps=1500,
        lr=3e-3,
        warmup=50,
        label_noise=0.0,
        batch_size=128,
        pad_steps=300,
        pad_batch_size=64,
    ),
    terms=13,
    prompts=64,
    micro=64,
    steps=12,
    trl_prompts=32,
    trl_steps=4,
    trl_blocks=2,
)
SMOKE = Size(
    tiny=TinyConfig(
        task="running-sum",
        terms=2,
        hidden_size=32,
        layers=1,
        heads=2,
        intermediate_size=64,
        steps=20,
        lr=3e-3,
        warmup=50,
        label_noise=0.0,
        batch_size=16,
    ),
    terms=2,
    prompts=2,
    micro=8,
    steps=2,
    trl_prompts=2,
    trl_steps=2,
    trl_blocks=1,
)
RUNS = {"vanilla": PolicyLossConfig(), "kl_cov": PolicyLossConfig(loss_mode="kl_cov")}


def card() -> dict:
    if not torch.cuda.is_available():
        return {"device": "cpu", "machine": platform.processor() or platform.machine()}
    p = torch.cuda.get_device_properties(0)
    return {
        "device": "cuda",
        "name": p.name,
        "memory_gib": round(p.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def summarise(records: list[dict], responses: int, run_dir: Path) -> dict:
    """Medians over the steps after the first (which warms up)."""
    rest = records[1:] or records

    def med(key: str) -> float | None:
        vals = [r[key] for r in rest if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    step = [r["time/rollout_s"] + r["time/update_s"] + r["time/probe_s"] for r in rest]
    tokens = [r["response_length"] * responses for r in rest]
    return {
        "steps": len(records),
        "step_s": statistics.median(step),
        "rollout_s": med("time/rollout_s"),
        "update_s": med("time/update_s"),
        "probe_s": med("time/probe_s"),
        "response_tokens_per_s": statistics.median(
            t / s for t, s in zip(tokens, step, strict=True)
        ),
        "gpu_peak_gib": max((r.get("memory/gpu_peak_gib") or 0.0) for r in records) or None,
        "token_corr_lemma1": med("token_corr/lemma1"),
        "token_corr_jvp": med("token_corr/jvp"),
        "corr_cov_mean_vs_dH": _step_corr(run_dir, "cov_mean"),
        "corr_pred_lemma1_vs_dH": _step_corr(run_dir, "pred_lemma1"),
        "entropy": [r["entropy"] for r in records],
        "reward": [r["reward"] for r in records],
    }


def _step_corr(run_dir: Path, key: str) -> float | None:
    """Per-step correlation of ``key`` (sign-corrected) with the measured ΔH, as ``compare``
    reports it."""
    stats = predictor_stats(read_run(run_dir), key)
    return None if stats is None else stats.correlation


def run_ours(model: Path, size: Size, device: str, name: str, loss, out: Path, deadline: float):
    cfg = TrainConfig(
        # the defaults of the time, before the testbed became them
        lr=5e-4,
        warmup_steps=10,
        model=str(model),
        device=device,
        task="running-sum",
        terms=size.terms,
        steps=size.steps,
        prompts_per_step=size.prompts,
        mini_batches=1,  # one update per step: the JVP forecast is made for it
        micro_batch_size=size.micro,
        val_every=0,
        checkpoint_every=0,
        save_final=False,
        cov_table_steps=(),
        policy_loss=loss,
    )
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    records: list[dict] = []

    def past_deadline(record: dict) -> bool:
        records.append(record)
        return time.monotonic() > deadline

    train(cfg, run_dir, stop=past_deadline)
    return {"config": to_jsonable(cfg), **summarise(records, cfg.responses_per_step, run_dir)}


def run_trl(model: Path, size: Size, device: str, deadline: float) -> dict:
    """Ours unprobed against TRL's GRPOTrainer, alternating, each in a fresh process."""
    try:
        import trl  # noqa: F401
    except ImportError:
        return {"skipped": "trl is not installed (carry its wheels: scripts/gpu_check.sh)"}
    times: dict[str, list[float]] = {"ours": [], "trl": []}
    peaks: dict[str, list[float]] = {"ours": [], "trl": []}
    for _ in range(size.trl_blocks):
        for kind, worker in (("ours", "off"), ("trl", "trl")):
            if time.monotonic() > deadline:
                return {"skipped": "out of time", "times": times}
            r = bench_scale.spawn(
                str(model), worker, size.trl_prompts, size.trl_steps, size.terms, device
            )
            times[kind].append(statistics.median(r["times"][1:] or r["times"]))
            peaks[kind].append((r.get("gpu_peak") or 0) / 2**30)
    ratio = [a / b for a, b in zip(times["ours"], times["trl"], strict=True)]
    return {
        "prompts": size.trl_prompts,
        "group": bench_scale.GROUP,
        "micro": bench_scale.MICRO,
        "step_s": times,
        "gpu_peak_gib": peaks,
        "ours_over_trl": ratio,
        "ours_over_trl_median": statistics.median(ratio),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting stages after")
    args = parser.parse_args()
    start = time.monotonic()
    deadline = start + args.budget_s
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print(
            "error: device: no CUDA device here; use --cpu-smoke to test the script on CPU",
            file=sys.stderr,
        )
        raise SystemExit(2)
    size, device = (SMOKE, "cpu") if smoke else (GPU, "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"card": card(), "smoke": smoke, "size": asdict(size), "stages": {}}

    def save() -> None:
        report["elapsed_s"] = time.monotonic() - start
        (args.out / "gpu_check.json").write_text(json.dumps(to_jsonable(report), indent=2) + "\n")

    model = args.out / "model"
    t0 = time.monotonic()
    summary = pretrain_tiny(size.tiny, model, log=lambda s: print(s, flush=True), device=device)
    report["stages"]["pretrain"] = {
        "seconds": time.monotonic() - t0,
        "parameters": summary["parameters"],
        "padding": summary.get("padding"),
    }
    save()
    # the probed runs stop taking steps at these shares of the budget; TRL gets the rest
    for (name, loss), share in zip(RUNS.items(), (0.55, 0.75), strict=True):
        stage_deadline = start + share * args.budget_s
        print(f"ours: {name}", flush=True)
        report["stages"][f"ours_{name}"] = run_ours(
            model, size, device, f"ours_{name}", loss, args.out, stage_deadline
        )
        save()
    print("ours against TRL", flush=True)
    report["stages"]["trl"] = run_trl(model, size, device, deadline)
    save()
    shutil.rmtree(model, ignore_errors=True)  # the model does not travel back
    print(json.dumps({k: v for k, v in report.items() if k != "stages"}, indent=2))
    for name, stage in report["stages"].items():
        brief = {k: v for k, v in stage.items() if not isinstance(v, list | dict)}
        print(name, json.dumps(to_jsonable(brief)))


if __name__ == "__main__":
    main()
