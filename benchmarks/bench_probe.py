"""The probe's cost: a probed step beside the unprobed step, alternating in one run.

The random-weight Qwen2-architecture model of ``bench_long`` (V = 151,936, d = 64, 2 layers) at
66-token and 1,024-token responses (random weights seldom emit EOS, so responses run to the
budget). Two trainers in one process, the same settings but the probe (over every response,
with its JVP forecast), take steps in turn (unprobed, probed, unprobed, probed, …); reported are
the medians. Goal: probed ≤ 1.3× unprobed.

The floor: the probe needs the policy's entropy and log-probabilities after the update (one
forward pass), and the JVP at θ_old, whose primal output is the forward pass at θ_old. So the
least a probe can cost is one forward pass (measured here as the step's own pass for the old
log-probabilities, which projects every token through the head) + one JVP of the backbone + the
two head products of the logits' tangent (dh·Wᵀ + h·dWᵀ, timed here on the same rows). The probe
above that floor is its float64 statistics over the vocabulary (six fields, cancellation-free).

    python benchmarks/bench_probe.py [--out docs/benchmarks.md] [--steps 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section  # noqa: E402

MARKER = "<!-- bench_probe -->"
GOAL = 1.3
# (response tokens, prompts, responses per prompt, micro-batch)
CONFIGS = [(66, 8, 8, 8), (1024, 2, 4, 4)]


class Timed:
    """Seconds spent in ``obj.name`` since the last ``take``."""

    def __init__(self, obj, name: str):
        self.spent = 0.0
        fn = getattr(obj, name)

        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent += time.perf_counter() - t0

        setattr(obj, name, call)

    def take(self) -> float:
        spent, self.spent = self.spent, 0.0
        return spent


def head_product_seconds(rows: int, d: int, v: int) -> float:
    """Two [rows, d] × [d, V] products in 55-row chunks, as the probe's tangent makes them."""
    import torch

    from llm_bridge.head import head_rows

    w = torch.randn(v, d) * 0.02
    h = torch.randn(rows, d)
    chunk = head_rows(v)
    out = torch.empty(chunk, v)
    t0 = time.perf_counter()
    for start in range(0, rows, chunk):
        sl = slice(start, start + chunk)
        prod = torch.mm(h[sl], w.T, out=out[: h[sl].shape[0]])
        prod.addmm_(h[sl], w.T)
    return time.perf_counter() - t0


def measure(tokens: int, prompts: int, group: int, micro: int, steps: int) -> dict:
    import torch

    torch.set_num_threads(2)
    from bench_long import VOCAB, build_model, build_trainer

    import llm_bridge.probe as probe_module
    import llm_bridge.trainer as trainer_module

    work = Path(tempfile.mkdtemp(prefix="bench_probe_"))
    model = build_model(work / "model", positions=tokens + 64)
    plain = build_trainer(model, work / "plain", tokens, prompts, group, micro, False, 100)
    probed = build_trainer(model, work / "probed", tokens, prompts, group, micro, True, 100)
    old_pass = Timed(trainer_module, "score_rollouts")
    jvp = Timed(probe_module, "forward_tangent")
    walls: dict[str, list[float]] = {"plain": [], "probed": []}
    probe_s, fwd_s, jvp_s, n_tokens = [], [], [], 0
    for _ in range(steps):
        for name, trainer in (("plain", plain), ("probed", probed)):
            old_pass.take(), jvp.take()
            t0 = time.perf_counter()
            record = trainer.step()
            walls[name].append(time.perf_counter() - t0)
            if name == "probed":
                probe_s.append(record["time/probe_s"])
                fwd_s.append(old_pass.take())
                jvp_s.append(jvp.take())
                n_tokens = record["probe/tokens"]
    for trainer in (plain, probed):
        trainer.run_dir.close()
    plain_s, probed_s = statistics.median(walls["plain"]), statistics.median(walls["probed"])
    heads = head_product_seconds(n_tokens, 64, VOCAB)
    floor = statistics.median(fwd_s) + statistics.median(jvp_s) + heads
    return {
        "tokens": tokens,
        "responses": prompts * group,
        "probe_tokens": n_tokens,
        "plain": plain_s,
        "probed": probed_s,
        "ratio": probed_s / plain_s,
        "probe": statistics.median(probe_s),
        "floor": floor,
        "floor_ratio": (plain_s + floor) / plain_s,
        "steps": steps,
    }


def table(results: list[dict]) -> str:
    lines = [
        MARKER,
        "## The probe's cost beside the unprobed step (`benchmarks/bench_probe.py`)",
        "",
        f"The random-weight Qwen2-architecture model of `bench_long` (V = 151,936, d = 64), two "
        f"trainers in one process taking steps in turn, medians of {results[0]['steps']} steps "
        "each; the probe over every response with its JVP forecast. Floor: one forward pass "
        "(the step's own old-log-probability pass) + the JVP of the backbone + the tangent's two "
        f"head products. Goal: probed ≤ {GOAL}× unprobed.",
        "",
        "| response tokens | responses | probed tokens | unprobed step | probed step | "
        "probed ÷ unprobed | the probe | floor | floor ÷ unprobed + 1 | probe ÷ floor |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['tokens']:,} | {r['responses']} | {r['probe_tokens']:,} | {r['plain']:.1f} s | "
            f"{r['probed']:.1f} s | {r['ratio']:.2f}× | {r['probe']:.1f} s | {r['floor']:.1f} s | "
            f"{r['floor_ratio']:.2f}× | {r['probe'] / r['floor']:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = [measure(*config, args.steps) for config in CONFIGS]
    text = table(results)
    print(text)
    if args.out is not None:
        write_section(args.out, text)


if __name__ == "__main__":
    main()
