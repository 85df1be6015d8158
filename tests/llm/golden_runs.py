"""The golden runs: one probed run of each engine on the tests' tiny model, whose run logs are
kept in ``tests/llm/golden/`` as the code wrote them before the engines shared one step
(``test_golden.py`` holds every later version to them). Regenerate only when a change of
results is meant, and say so in the commit:

    .venv/bin/python -m tests.llm.golden_runs --write
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"
# keys that depend on the clock
TIME_PREFIX = "time/"
# the probe's forecast: computed before each update from the optimiser's would-be Δθ, where the
# golden files' TRL engine (and our engine on steps of several updates) took θ_new − θ_old
# after the step; the two agree to rounding
FORECAST_KEYS = ("pred_jvp", "token_corr/jvp")

RUNS = {
    # two updates a step (KL-Cov, whose penalty acts from the second on) and one (vanilla)
    "multi": dict(loss="kl_cov"),
    "single": dict(mini_batches=1),
}


def golden_config(model: str, engine: str, name: str):
    from llm_bridge import PolicyLossConfig, TrainConfig

    settings = dict(RUNS[name])
    loss = settings.pop("loss", "vanilla")
    extra = {"kl_cov_ratio": 0.2} if loss == "kl_cov" else {}
    # every setting that shapes the numbers is pinned here, so that a later change of a default
    # does not move the golden runs
    pinned = dict(
        lr=5e-4,
        warmup_steps=10,
        temperature=1.0,
        mini_batches=2,
        epochs=1,
        optimizer="adam",
        advantage="grpo",
        seed=0,
        task_seed=0,
        probe=True,
        probe_jvp=True,
        probe_every=1,
        token_steps_every=0,
    )
    return TrainConfig(
        model=model,
        **{**pinned, **settings},
        steps=3,
        prompts_per_step=2,
        group_size=4,
        checkpoint_every=0,
        save_final=False,
        val_every=2,
        val_prompts=2,
        cov_table_steps=(0, 1),
        engine=engine,
        policy_loss=PolicyLossConfig(loss_mode=loss, **extra),
    )


def digits_right(text: str, answer: str) -> float:
    """The share of the answer's characters the response has right at their place: partial
    credit, so that the tiny model's groups differ in reward and every step has a signal."""
    return sum(a == b for a, b in zip(text, answer, strict=False)) / len(answer)


def golden_task():
    from dataclasses import replace

    from llm_bridge.tasks import synthetic_task

    return replace(synthetic_task("addition", n_train=256, n_test=8), reward=digits_right)


def one_thread(fn, *args, **kw):
    """``fn`` on one thread: one reduction order, whatever the machine's cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kw)
    finally:
        torch.set_num_threads(threads)


def golden_model(folder: Path) -> Path:
    """The tests' tiny model (``tests/conftest.py``'s ``tiny_model``)."""
    from llm_bridge.tiny import TinyConfig, pretrain_tiny

    one_thread(
        pretrain_tiny,
        TinyConfig(steps=40, warmup=5, lr=3e-3, label_noise=0.0),
        folder,
        log=lambda _: None,
    )
    return folder


def run_golden(model: Path, engine: str, name: str, out: Path) -> Path:
    from llm_bridge import train

    return one_thread(train, golden_config(str(model), engine, name), out, task=golden_task())


def comparable(line: str) -> dict:
    """A step record without the clock's keys."""
    return {k: v for k, v in json.loads(line).items() if not k.startswith(TIME_PREFIX)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if not args.write:
        parser.error("--write: rewrites tests/llm/golden/; give it to mean it")
    GOLDEN.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = golden_model(Path(tmp) / "tiny")
        for engine in ("ours", "trl"):
            for name in RUNS:
                run = run_golden(model, engine, name, Path(tmp) / f"{engine}-{name}")
                for file in ("steps.jsonl", "cov_tables.jsonl"):
                    text = (run / file).read_text()
                    if file == "steps.jsonl":
                        text = "".join(
                            json.dumps(comparable(line)) + "\n" for line in text.splitlines()
                        )
                    (GOLDEN / f"{engine}-{name}.{file}").write_text(text)
                print(engine, name, "written")


if __name__ == "__main__":
    main()
