"""On paper: the probe's cost and a step's peak memory for a 7B model at 4k-token responses on one
80 GB card, from the memory model (``llm_bridge.memory``) and flop counts.

Qwen2.5-7B's shape (28 layers, d = 3,584, I = 18,944, 28 heads, 4 KV heads, V = 152,064, bf16
weights, untied head), prompts of 256 tokens and responses of 4,096, micro-batches of one
response. Flops per token, forward: 2·(non-embedding parameters) + 2·d·V (the head) + 2·L·d·S
(causal attention's scores and values at an average context of S/2). The update is three
forwards (forward and backward); forward-mode AD does each product twice more (the tangent's
dA·B + A·dB), so a JVP is three forwards of the backbone; the probe is one forward at θ_new,
the JVP at θ_old, and four head products (before, after, and the tangent's two). Its float64
statistics are memory-bound: about 30 passes of 8 bytes over V per token.

    python benchmarks/project_card.py [--out docs/memory.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section  # noqa: E402

MARKER = "<!-- project_card -->"
CARD = 80e9  # bytes of one 80 GB card
LAYERS, D, INTER, HEADS, KV, V = 28, 3584, 18944, 28, 4, 152_064
PARAMS = 7_615_616_512
PROMPT, RESPONSE = 256, 4096
STAT_PASSES = 30  # float64 passes over V per probed token (token_stats' fused rows)


def flops_per_token() -> dict[str, float]:
    non_embedding = PARAMS - 2 * V * D
    seq = PROMPT + RESPONSE
    backbone = 2 * non_embedding + 2 * LAYERS * D * seq
    head = 2 * D * V
    forward = backbone + head
    return {
        "forward": forward,
        "update": 3 * forward,
        "jvp": 3 * backbone + 2 * head,
        "probe": backbone + 3 * backbone + 4 * head,
        "floor": forward + 3 * backbone + 2 * head,
    }


def projection() -> dict:
    import torch

    from llm_bridge.memory import GIB, ModelShape, estimate_step_memory

    shape = ModelShape(PARAMS, LAYERS, D, INTER, HEADS, KV, V, torch.bfloat16)
    common = dict(
        responses=64,
        micro_batch=1,
        prompt_length=PROMPT,
        response_length=RESPONSE,
        generate_batch=64,
    )
    plain = estimate_step_memory(shape, probe=False, **common)
    probed = estimate_step_memory(shape, probe=True, **common)

    def longest(probe: bool) -> int:
        """The longest response (in steps of 128 tokens) whose step the guard passes."""
        fits = 0
        for r in range(128, RESPONSE + 1, 128):
            m = estimate_step_memory(shape, probe=probe, **{**common, "response_length": r})
            fits = r if m.total <= 0.85 * CARD else fits
        return fits

    return {
        "plain": plain,
        "probed": probed,
        "flops": flops_per_token(),
        "gib": GIB,
        "longest": (longest(False), longest(True)),
    }


def table(r: dict) -> str:
    gib, f = r["gib"], r["flops"]
    plain, probed = r["plain"], r["probed"]
    rows = [
        ("weights", plain.weights, probed.weights),
        ("gradients", plain.gradients, probed.gradients),
        ("Adam state", plain.optimizer, probed.optimizer),
        ("θ_old and Δθ", plain.theta_old, probed.theta_old),
        (
            "backward (activations of one 4,352-token response, the head)",
            plain.backward,
            probed.backward,
        ),
        ("Adam's step", plain.optimizer_step, probed.optimizer_step),
        ("the probe's pass (its JVP's eager attention)", plain.probe_pass, probed.probe_pass),
        ("peak (the largest phase)", plain.total, probed.total),
    ]
    lines = [
        MARKER,
        "## On paper: a 7B model at 4k-token responses on one 80 GB card",
        "",
        "`benchmarks/project_card.py`: Qwen2.5-7B's shape, bf16, prompts of 256 tokens, responses "
        "of 4,096, micro-batches of one response, Adam, this engine (no gradient checkpointing).",
        "",
        "| part | unprobed (GiB) | probed (GiB) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {a / gib:.1f} | {b / gib:.1f} |" for name, a, b in rows]
    fits = lambda m: "fits" if m.total <= 0.85 * CARD else "does not fit"  # noqa: E731
    probe_over = f["probe"] / (f["forward"] + f["update"])
    floor_over = f["floor"] / (f["forward"] + f["update"])
    lines += [
        "",
        f"Unprobed, the step {fits(plain)} on one 80 GB card ({plain.total / gib:.0f} GiB against "
        f"{0.85 * CARD / gib:.0f} GiB the guard allows); probed, it {fits(probed)} "
        f"({probed.total / gib:.0f} GiB). The longest response the guard passes: "
        + " and ".join(
            f"{n:,} tokens {k}" if n else f"none {k}"
            for n, k in zip(r["longest"], ("unprobed", "probed"), strict=True)
        )
        + " (weights, gradients, Adam's state and its step's temporaries alone take "
        f"{(plain.persistent + plain.optimizer_step) / gib:.0f} GiB). A 7B step at 4k tokens "
        "needs gradient checkpointing or sharding, which the TRL engine brings "
        "(`docs/trl.md`); there the probe's own increments are θ_old and Δθ "
        "(2·p·b) and its JVP's attention.",
        "",
        "| flops per token | forward | update | JVP | probe | floor |",
        "|---|---:|---:|---:|---:|---:|",
        f"| GFLOP | {f['forward'] / 1e9:.1f} | {f['update'] / 1e9:.1f} | {f['jvp'] / 1e9:.1f} | "
        f"{f['probe'] / 1e9:.1f} | {f['floor'] / 1e9:.1f} |",
        "",
        f"Without the rollout, the probe's flops are {probe_over:.2f}× those of the old-log-prob "
        f"pass and the update together, and its floor {floor_over:.2f}×; its float64 "
        f"statistics add {STAT_PASSES} passes of 8 bytes over V per token "
        f"({STAT_PASSES * 8 * V / 1e6:.0f} MB per token, memory-bound).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    text = table(projection())
    print(text)
    if args.out is not None:
        write_section(args.out, text)


if __name__ == "__main__":
    main()
