"""Table 1 on the regime testbed over seeds (docs/llm_findings.md §6): the mean centred
cross-product (log π − mean)·(A − mean) of the top 0.02%, 0.2%, 2%, 20%, 50% and all of a
step's tokens, at four steps of vanilla runs, with the ratio of the top 0.02% to all.

    .venv/bin/python scripts/table1_findings.py --out runs/table1 --seeds 0 1 2

Every number is from a seeded run written under --out; a finished run is reused
(``train_or_reuse``). Runs use one thread and run one at a time. Prints markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

torch.set_num_threads(1)


from llm_bridge import pretrain_tiny, train_or_reuse  # noqa: E402
from llm_bridge.compare import run_cov_tables, table1_over_seeds  # noqa: E402
from llm_bridge.testbed import TESTBED  # noqa: E402

STEPS = (0, 50, 100, 200)
EXTRA = dict(probe=False, checkpoint_every=0, save_final=False, val_prompts=128, val_k=8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/table1"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", type=Path, default=None, help="default: pre-trained here")
    args = parser.parse_args()
    model = args.model or args.out / "model"
    if not (Path(model) / "pretrain.json").exists():
        pretrain_tiny(TESTBED.pretrain, model, log=lambda _: None)
    tables: dict[int, list[dict]] = {k: [] for k in STEPS}
    for seed in args.seeds:
        cfg = TESTBED.train_config(str(model), seed=seed, cov_table_steps=STEPS, **EXTRA)
        path = args.out / f"vanilla_s{seed}"
        train_or_reuse(cfg, path)
        for row in run_cov_tables(path):
            tables[row["step"]].append(row)
    print("## Table 1 on the testbed over seeds\n")
    print(
        f"Vanilla GRPO on the testbed (`--preset testbed`), seeds {', '.join(map(str, args.seeds))}"
        "; mean ± half-width of the 95% t interval over seeds.\n"
    )
    print("\n".join(table1_over_seeds(tables)))


if __name__ == "__main__":
    main()
