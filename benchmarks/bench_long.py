"""Reasoning-length responses on this CPU: one probed step at 1,024-token responses.

A Qwen2-architecture model with random weights at Qwen2.5's vocabulary (V = 151,936; a small
hidden size, so that it runs here), 8 prompts × 4 responses with a 1,024-token budget: random
weights seldom emit EOS, so responses run to the budget. One GRPO step of our engine with the
probe over every response and the JVP forecast, micro-batches of 4 responses. Reported: the
step's time split (rollout, update, probe), response tokens per second of the rollout, the
measured peak RSS of the step's process beside the memory model's estimate
(``llm_bridge.memory``, the guard that refuses a step that cannot fit). The reward is a
deterministic function of the response text, so advantages are not all zero and the update is a
real one.

    python benchmarks/bench_long.py [--out docs/benchmarks.md] [--tokens 1024]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section  # noqa: E402

MARKER = "<!-- bench_long -->"
VOCAB = 151_936
PROMPTS, GROUP, MICRO = 8, 4, 4
GIB = 1024**3


def build_model(path: Path, positions: int) -> Path:
    """A random-weight Qwen2-architecture folder at V = 151,936 with a character tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from llm_bridge.tiny import build_tokenizer

    tokenizer = build_tokenizer(vocab_size=VOCAB)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_trainer(
    model: Path,
    out: Path,
    tokens: int,
    prompts: int,
    group: int,
    micro: int,
    probe: bool = True,
    steps: int = 1,
):
    """Our trainer on ``model`` with a reward that is a deterministic function of the response
    text (its length's parity), so advantages are not all zero; ``tokens`` the response budget."""
    from llm_bridge import ProbedGRPOTrainer, TrainConfig
    from llm_bridge.tasks import Example, Task

    examples = tuple(Example(f"{i}+{i + 1}+{i + 2}=", str(3 * i + 3)) for i in range(40))
    task = Task(
        name="parity-of-length",
        train=examples,
        test=examples[:4],
        reward=lambda response, answer: float(len(response) % 2 == 0),
    )
    cfg = TrainConfig(
        model=str(model),
        steps=steps,
        prompts_per_step=prompts,
        group_size=group,
        mini_batches=1,
        micro_batch_size=micro,
        max_new_tokens=tokens,
        warmup_steps=0,
        val_every=0,
        checkpoint_every=0,
        cov_table_steps=(),
        lr=1e-4,
        probe=probe,
    )
    return ProbedGRPOTrainer(cfg, out, task)


def measure(tokens: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench_long_"))
    model = build_model(work / "model", positions=tokens + 64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trainer = build_trainer(model, work / "run", tokens, PROMPTS, GROUP, MICRO)
    estimate = trainer.step_memory()
    t0 = time.perf_counter()
    record = trainer.step()
    wall = time.perf_counter() - t0
    trainer.run_dir.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n_tokens = record["response_length"] * PROMPTS * GROUP
    return {
        "tokens": tokens,
        "wall": wall,
        "rollout": record["time/rollout_s"],
        "update": record["time/update_s"],
        "probe": record["time/probe_s"],
        "response_length": record["response_length"],
        "tokens_per_s": n_tokens / record["time/rollout_s"],
        "peak": peak,
        "before": before,
        "estimate": estimate.total,
        "probe_tokens": record["probe/tokens"],
        "token_corr": record.get("token_corr/lemma1"),
        "signal": record["adv/nonzero_frac"],
    }


def table(r: dict) -> str:
    return "\n".join(
        [
            MARKER,
            "## Reasoning-length responses (`benchmarks/bench_long.py`)",
            "",
            f"One probed GRPO step (probe over every response, JVP) of a random-weight Qwen2-"
            f"architecture model at V = {VOCAB:,}, {PROMPTS} prompts × {GROUP} responses, a "
            f"{r['tokens']:,}-token budget (mean response {r['response_length']:.0f} tokens), "
            f"micro-batches of {MICRO}, on this machine's CPU.",
            "",
            "| step time | rollout | update | probe | rollout tokens/s | peak RSS | "
            "memory model | probed tokens |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {r['wall']:.1f} s | {r['rollout']:.1f} s | {r['update']:.1f} s | "
            f"{r['probe']:.1f} s | {r['tokens_per_s']:.0f} | {r['peak'] / GIB:.2f} GiB | "
            f"{r['estimate'] / GIB:.2f} GiB | {r['probe_tokens']:,} |",
            "",
            "The memory model is the estimate the guard compares with the memory there is before "
            "the first step; the peak RSS includes the Python process, torch and transformers "
            f"({r['before'] / GIB:.2f} GiB before the trainer was built).",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.tokens)
    text = table(result)
    print(text)
    if args.out is not None:
        write_section(args.out, text)


if __name__ == "__main__":
    main()
