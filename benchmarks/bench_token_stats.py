"""`entropy_and_logprobs` against TRL's helpers and the naive formula, side by side.

On a [rows × vocab] logit tensor (default 2048 × 151936, Qwen2.5's vocabulary) in bf16 and fp32:
- ours: `llm_bridge.entropy_and_logprobs` (one pass, one logsumexp per row, chunked);
- TRL: `trl.trainer.utils.entropy_from_logits` + `selective_log_softmax` (its CPU path);
- naive: `log_softmax`, then −Σ p·log p and a gather.
Time is the best of `--repeats`, alternating methods; extra peak memory is measured in a fresh
process per method (peak RSS minus RSS once the input exists). Goal: ≤ 0.5× TRL's time and
≤ 256 MiB extra peak.

    python benchmarks/bench_token_stats.py [--rows 2048] [--vocab 151936] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section  # noqa: E402

GOAL_VS_TRL = 0.5
GOAL_PEAK_MIB = 256
MARKER = "<!-- bench_token_stats -->"


def _ours(logits, tokens):
    from llm_bridge import entropy_and_logprobs

    return entropy_and_logprobs(logits, tokens)


def _trl(logits, tokens):
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    return entropy_from_logits(logits), selective_log_softmax(logits, tokens)


def _trl_fp32(logits, tokens):
    """TRL with the same fp32 arithmetic as ours (its bf16 path computes entropy in bf16)."""
    return _trl(logits.float(), tokens)


def _naive(logits, tokens):
    lp = torch.log_softmax(logits.float(), dim=-1)
    return -(lp.exp() * lp).sum(-1), lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


TRL_NAME = "TRL: entropy_from_logits + selective_log_softmax"
METHODS = {
    "ours: entropy_and_logprobs": _ours,
    TRL_NAME: _trl,
    "TRL on logits.float()": _trl_fp32,
    "naive log_softmax": _naive,
}


def _data(rows: int, vocab: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(rows, vocab, generator=g)).to(dtype)
    tokens = torch.randint(0, vocab, (rows,), generator=g)
    return logits, tokens


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB → MiB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_worker(name, rows, vocab, dtype, queue):
    logits, tokens = _data(rows, vocab, dtype)
    METHODS[name](logits[:8], tokens[:8])  # import and warm up outside the measurement
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    before = _status_mib("VmRSS")
    METHODS[name](logits, tokens)
    queue.put(max(0.0, _status_mib("VmHWM") - before))


def extra_peak_mib(name: str, rows: int, vocab: int, dtype: torch.dtype) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_worker, args=(name, rows, vocab, dtype, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    lines = [
        MARKER,
        f"### `entropy_and_logprobs`, [{args.rows} × {args.vocab}], vs TRL and the naive formula",
        "",
        f"Goal: ≤ {GOAL_VS_TRL}× TRL's time, ≤ {GOAL_PEAK_MIB} MiB extra peak. Best of "
        f"{args.repeats}, methods alternating; {torch.get_num_threads()} torch threads. "
        "`python benchmarks/bench_token_stats.py`.",
        "",
        "| dtype | method | time (s) | × TRL | extra peak (MiB) | max abs diff vs naive "
        "(H, log π) | goal |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for dtype in (torch.bfloat16, torch.float32):
        logits, tokens = _data(args.rows, args.vocab, dtype)
        best = dict.fromkeys(METHODS, float("inf"))
        results = {}
        for _ in range(args.repeats):
            for name, fn in METHODS.items():
                start = time.perf_counter()
                results[name] = fn(logits, tokens)
                best[name] = min(best[name], time.perf_counter() - start)
        ref_h, ref_lp = results["naive log_softmax"]
        trl_time = best[TRL_NAME]
        for name in METHODS:
            if name == "TRL on logits.float()" and dtype == torch.float32:
                continue  # the same as TRL
            h, lp = results[name]
            diff = f"{(h.float() - ref_h).abs().max():.1e}, {(lp.float() - ref_lp).abs().max():.1e}"
            peak = extra_peak_mib(name, args.rows, args.vocab, dtype)
            ratio = best[name] / trl_time
            goal = "—"
            if name.startswith("ours"):
                met = ratio <= GOAL_VS_TRL and peak <= GOAL_PEAK_MIB
                goal = "met" if met else f"**missed** (time {ratio:.2f}×, peak {peak:.0f} MiB)"
            lines.append(
                f"| {str(dtype).removeprefix('torch.')} | {name} | {best[name]:.3f} | "
                f"{ratio:.2f} | {peak:.0f} | {diff} | {goal} |"
            )
        del logits, results
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        write_section(args.out, table)


if __name__ == "__main__":
    main()
