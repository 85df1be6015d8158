"""A researcher's own model and data through both engines: the response budget, the chat
template the model reads (recorded in config.json, the same in both engines), GSM8K's fields,
prompts without replacement, truncation counted and masked, and runs without learning signal
named."""

import json

import numpy as np
import pytest
import torch

from llm_bridge import TrainConfig, compare_runs, train
from llm_bridge.compare import render_report
from llm_bridge.rollout import Rollouts
from llm_bridge.tasks import Example, Task, epoch_order
from softmax_theory.runlog import read_run
from tests.llm.own_model import build_model_folder

GSM8K_ROWS = [
    {"question": f"What is {a} plus {b}?", "answer": f"{a} and {b} make {a + b}.\n#### {a + b}"}
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1), (4, 4), (6, 3), (8, 1), (5, 5)]
]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A random-weight Qwen2 folder with a chat template and Qwen-Instruct's stop tokens."""
    return build_model_folder(tmp_path_factory.mktemp("qwen"), "qwen2")


@pytest.fixture(scope="module")
def gsm8k(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "gsm8k.json"
    path.write_text(json.dumps(GSM8K_ROWS))
    return path


def _cfg(model, data, engine, **kw):
    base = dict(
        model=str(model),
        dataset=str(data),
        dataset_reward="exact",
        steps=2,
        prompts_per_step=2,
        group_size=2,
        mini_batches=1,
        max_new_tokens=12,
        val_every=0,
        checkpoint_every=0,
        probe_jvp=False,
        engine=engine,
    )
    return TrainConfig(**{**base, **kw})


def test_gsm8k_fields_and_the_chat_template_through_both_engines(qwen, gsm8k, tmp_path):
    pytest.importorskip("trl")
    messages: list[str] = []
    runs = {
        e: train(_cfg(qwen, gsm8k, e), tmp_path / e, log=messages.append) for e in ("ours", "trl")
    }
    configs = {e: json.loads((r / "config.json").read_text()) for e, r in runs.items()}
    for engine, config in configs.items():
        # the dataset, not a synthetic task's name; GSM8K's question field taken, and said
        assert "task" not in config, engine
        assert config["dataset_source"]["prompt_key"] == "question"
        assert config["dataset_source"]["gsm8k_answers"] == len(GSM8K_ROWS)
        # what the model read: the chat template's rendering of the first prompt
        assert config["rendered_prompt"].startswith("<|im_start|>")
        assert config["rendered_prompt"].rstrip().endswith("<|im_start|>assistant")
    assert configs["ours"]["rendered_prompt"] == configs["trl"]["rendered_prompt"]
    assert any("question" in m for m in messages)
    for engine, run in runs.items():
        for rec in read_run(run).steps:
            assert rec["response_length"] <= 12, engine
            assert 0.0 <= rec["response/clip_frac"] <= 1.0
            assert 0.0 <= rec["adv/nonzero_frac"] <= 1.0


def test_the_response_budget_is_a_flag_and_a_reasoning_size_for_datasets(qwen, gsm8k, tmp_path):
    from llm_bridge import load_task
    from llm_bridge.tasks import DEFAULT_REASONING_TOKENS, response_budget

    task = load_task(_cfg(qwen, gsm8k, "ours"))
    assert response_budget(task) == DEFAULT_REASONING_TOKENS == 1024
    assert response_budget(task, 12) == 12
    # a budget the model's 256 positions cannot hold is refused before the first step, by name
    with pytest.raises(ValueError, match="max_new_tokens"):
        train(_cfg(qwen, gsm8k, "ours", max_new_tokens=None), tmp_path / "too_long")


def test_dataset_prompts_are_drawn_without_replacement_within_an_epoch():
    order = epoch_order(7, seed=3, positions=range(21))
    for epoch in range(3):
        assert sorted(order[7 * epoch : 7 * epoch + 7]) == list(range(7))
    assert order[:7] != order[7:14]  # each epoch its own order
    assert epoch_order(7, 3, range(9, 12)) == order[9:12]  # a resumed run draws the same


def test_more_prompts_than_rows_and_too_many_val_prompts_are_said_once(qwen, gsm8k, tmp_path):
    messages: list[str] = []
    train(
        _cfg(qwen, gsm8k, "ours", steps=1, prompts_per_step=12, val_every=1, val_prompts=50),
        tmp_path / "run",
        log=messages.append,
    )
    assert sum("prompts_per_step" in m for m in messages) == 1
    assert sum(m.startswith("val_prompts") for m in messages) == 1


def test_mask_truncated_leaves_cut_responses_out_of_the_loss(qwen, gsm8k, tmp_path):
    from llm_bridge import ProbedGRPOTrainer, load_task
    from llm_bridge.scoring import score_rollouts

    cfg = _cfg(qwen, gsm8k, "ours", mask_truncated=True)
    trainer = ProbedGRPOTrainer(cfg, tmp_path / "run", load_task(cfg))
    ids = torch.randint(3, 300, (4, 9 + 12))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1, 5:] = 0  # response 1 stopped; the others ran to the budget
    roll = Rollouts(
        input_ids=ids,
        attention_mask=torch.cat([torch.ones(4, 9, dtype=torch.long), mask], 1),
        prompt_length=9,
        response_mask=mask,
        texts=("1", "2", "3", "4"),
        truncated=torch.tensor([True, False, True, True]),
    )
    batch = score_rollouts(trainer.task, cfg, roll, ["1", "2"], trainer.model)
    assert batch.stats["response/clip_frac"] == 0.75
    assert batch.stats["response_length"] == (12 * 3 + 5) / 4  # measured before the mask
    assert batch.mask.sum(-1).tolist() == [0, 5, 0, 0]
    assert float(batch.advantages[batch.mask == 0].abs().sum()) == 0.0
    trainer.run_dir.close()


def test_a_run_without_learning_signal_is_named_not_judged(tiny_model, tmp_path):
    """Reward 0 on every response: every advantage is 0, nothing is learnt, and compare says so
    instead of reporting Lemma 1 as held."""
    never = Task(
        name="never",
        train=tuple(Example(f"{i}+{i}=", str(2 * i)) for i in range(10)),
        test=tuple(Example(f"{i}+1=", str(i + 1)) for i in range(4)),
        reward=lambda response, answer: 0.0,
        response_tokens=4,
    )
    cfg = TrainConfig(
        model=str(tiny_model), steps=3, prompts_per_step=2, group_size=4, checkpoint_every=0
    )
    out = train(cfg, tmp_path / "run", task=never)
    steps = read_run(out).steps
    assert all(s["adv/nonzero_frac"] == 0.0 for s in steps)
    (report,) = compare_runs([out], tmp_path / "cmp", n_boot=20)
    assert report.signal == (0, 3)
    text = render_report([report])
    assert "no update happened" in text and "held" not in text
    assert "no step had a learning signal" in text
    assert report.predictors == ()
    assert np.isfinite([s["entropy"] for s in steps]).all()


@pytest.mark.parametrize("engine", ["ours", "trl"])
def test_a_step_whose_responses_are_all_masked_is_logged_without_an_update(
    qwen, gsm8k, tmp_path, engine
):
    """Random weights seldom stop within 4 tokens: with mask_truncated every response leaves
    the loss. The step is logged (its rollout keys), nothing is measured or made up."""
    if engine == "trl":
        pytest.importorskip("trl")
    cfg = _cfg(qwen, gsm8k, engine, max_new_tokens=2, mask_truncated=True, probe_jvp=True)
    steps = read_run(train(cfg, tmp_path / engine)).steps
    assert [s["step"] for s in steps] == [0, 1]
    for rec in steps:
        if rec["response/clip_frac"] == 1.0:
            assert "entropy" not in rec and "delta_entropy" not in rec
        for value in rec.values():
            assert not isinstance(value, float) or np.isfinite(value)


def test_the_run_seed_does_not_redraw_the_held_out_prompts(tiny_model):
    """--seed changes sampling and the prompts' order, never which prompts are held out:
    pretrain-tiny trains on the task drawn at task_seed 0, so every run seed validates on
    prompts the model was not pre-trained on."""
    from llm_bridge import load_task
    from llm_bridge.tiny import TinyConfig

    tasks = [load_task(TrainConfig(model=str(tiny_model), seed=s)) for s in (0, 1, 2)]
    assert tasks[0].test == tasks[1].test == tasks[2].test
    assert TinyConfig().seed == TrainConfig().task_seed == 0
    assert load_task(TrainConfig(model=str(tiny_model), task_seed=1)).test != tasks[0].test
