"""Speed of `entropy` + `first_order_entropy_change` against the naive formula and a memory floor.

One run, side by side, on a [4096 × 4096] float64 batch of logits and logit changes:
- floor: `np.copyto` of both inputs into preallocated arrays (one read and one write of each);
- naive: the textbook formulas of `softmax_theory.reference`;
- ours: `entropy(z)` then `first_order_entropy_change(z, δ)` (two calls, two passes);
- ours, fused: `entropy_and_first_order_change(z, δ)` (one pass).
Time is the best of `--repeats`; peak is the largest extra allocation seen by tracemalloc.
Agreement with the naive formula is norm-wise, max|ours − naive| / max|naive|, per output; the
worst single row is also measured against a long-double (80-bit) reference, for both methods,
because a covariance near zero is ill-conditioned for every float64 formula alike.

    python benchmarks/bench_estimators.py [--rows 4096] [--cols 4096] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np
from report import write_section  # noqa: E402  (benchmarks/report.py)

from softmax_theory import entropy, entropy_and_first_order_change, first_order_entropy_change
from softmax_theory.reference import naive_entropy, naive_first_order_entropy_change

GOAL_VS_FLOOR = 5.0
EQUALITY_RTOL = 1e-12
MARKER = "<!-- bench_estimators -->"


def _measure(fn, repeats: int) -> tuple[float, float, object]:
    result = fn()  # warm-up, and the value to compare
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return best, peak / 2**20, result


def _long_double_reference(z: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H and −Cov_π(log π, δ) in long double, centred two-pass formulas."""
    zl, dl = z.astype(np.longdouble), d.astype(np.longdouble)
    p = np.exp(zl - zl.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    logp = np.log(p)
    g = logp - (p * logp).sum(axis=1, keepdims=True)
    u = dl - (p * dl).sum(axis=1, keepdims=True)
    return -(p * logp).sum(axis=1), -(p * g * u).sum(axis=1)


def _worst_row_error(result, exact) -> float:
    return float(max(np.max(np.abs(r - e) / np.abs(e)) for r, e in zip(result, exact, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to update")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    z = 2.0 * rng.standard_normal((args.rows, args.cols))
    d = rng.standard_normal((args.rows, args.cols))
    z_dst, d_dst = np.empty_like(z), np.empty_like(d)

    def floor():
        np.copyto(z_dst, z)
        np.copyto(d_dst, d)

    candidates = {
        "floor (np.copyto of both inputs)": floor,
        "naive formula": lambda: (naive_entropy(z), naive_first_order_entropy_change(z, d)),
        "entropy + first_order_entropy_change": lambda: (
            entropy(z),
            first_order_entropy_change(z, d),
        ),
        "entropy_and_first_order_change (fused)": lambda: entropy_and_first_order_change(z, d),
    }
    rows = {name: _measure(fn, args.repeats) for name, fn in candidates.items()}
    floor_time = rows["floor (np.copyto of both inputs)"][0]
    ref_h, ref_f = rows["naive formula"][2]
    exact = _long_double_reference(z, d)

    lines = [
        MARKER,
        f"### `entropy` + `first_order_entropy_change`, [{args.rows} × {args.cols}] float64",
        "",
        f"Goal: ≤ {GOAL_VS_FLOOR:g}× the floor, equal to the naive formula to "
        f"{EQUALITY_RTOL:g} relative (norm-wise). Best of {args.repeats}; "
        "`make bench` (`python benchmarks/bench_estimators.py`).",
        "",
        "| method | time (ms) | × floor | extra peak (MiB) | rel. diff vs naive | "
        "worst row vs long double | goal |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, (seconds, peak, result) in rows.items():
        ratio = seconds / floor_time
        if name.startswith("floor"):
            diff, worst, goal = "—", "—", "—"
        else:
            h, f = result
            worst = f"{_worst_row_error((h, f), exact):.1e}"
            if name.startswith("naive"):
                diff, goal = "—", "—"
            else:
                rel = max(
                    np.max(np.abs(h - ref_h)) / np.max(np.abs(ref_h)),
                    np.max(np.abs(f - ref_f)) / np.max(np.abs(ref_f)),
                )
                diff = f"{rel:.1e}"
                met = ratio <= GOAL_VS_FLOOR and rel <= EQUALITY_RTOL
                goal = "met" if met else "**missed**"
        lines.append(
            f"| {name} | {1e3 * seconds:.1f} | {ratio:.2f} | {peak:.1f} | {diff} | {worst} "
            f"| {goal} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        write_section(args.out, table)


if __name__ == "__main__":
    main()
