"""Datasets the way they come: the file formats, field mapping, GSM8K's answers, conversational
prompts, and the response budget a dataset no longer fixes."""

import csv
import json

import pytest

from llm_bridge.tasks import (
    DEFAULT_REASONING_TOKENS,
    AnswerFormat,
    check_encodable,
    dataset_task,
    gsm8k_answer,
    read_rows,
    response_budget,
    synthetic_task,
)
from llm_bridge.tiny import build_tokenizer

ROWS = [{"prompt": f"{i}+1=", "answer": f"{i + 1:03d}"} for i in range(12)]


def _write(path, rows):
    """``rows`` in the format of ``path``'s suffix (``.json-lines``: JSON lines named .json)."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif path.suffix == ".json" and "lines" not in path.stem:
        path.write_text(json.dumps(rows))
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("name", ["d.json", "d-lines.json", "d.jsonl", "d.csv", "d.parquet"])
def test_every_format_gives_the_same_task(tmp_path, name):
    task = dataset_task(_write(tmp_path / name, ROWS), reward="exact", seed=3)
    reference = dataset_task(_write(tmp_path / "ref.jsonl", ROWS), reward="exact", seed=3)
    assert task.train == reference.train and task.test == reference.test
    assert len(task.train) + len(task.test) == 12 and len(task.test) == 1
    assert task.dataset.path == str(tmp_path / name) and task.dataset.rows == 12
    assert "001" in {e.answer for e in task.train + task.test}  # leading zeros kept, even in csv


def test_csv_cells_stay_text(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,answer\n"Say NA, then stop",NA\nhow much?,"1,000"\n')
    assert read_rows(path) == [
        {"prompt": "Say NA, then stop", "answer": "NA"},
        {"prompt": "how much?", "answer": "1,000"},
    ]


def test_gsm8k_answer_by_hand():
    assert gsm8k_answer("She sold 48/2 = 24 in May.\n#### 72") == "72"
    assert gsm8k_answer("first #### 3, then #### 1,234,567 ") == "1234567"  # the last mark
    with pytest.raises(ValueError, match="answer_format"):
        gsm8k_answer("no mark here")


def test_gsm8k_fields_are_read_and_said(tmp_path):
    rows = [
        {"question": f"Q{i}: how many?", "answer": f"Step one.\n#### {i},000"} for i in range(9)
    ] + [{"question": "Q9", "answer": "\\boxed{7}"}]
    lines = []
    task = dataset_task(_write(tmp_path / "gsm8k.jsonl", rows), reward="exact", log=lines.append)
    answers = {e.prompt: e.answer for e in task.train + task.test}
    assert answers["Q3: how many?"] == "3000" and answers["Q9"] == "\\boxed{7}"
    assert len(lines) == 2 and "'question'" in lines[0] and "9 of 10" in lines[1]
    src = task.dataset
    assert (src.prompt_key, src.answer_key, src.gsm8k_answers) == ("question", "answer", 9)
    assert src.answer_format is AnswerFormat.AUTO and not src.conversational
    raw = dataset_task(tmp_path / "gsm8k.jsonl", reward="exact", answer_format="raw")
    assert all("####" in e.answer for e in raw.train + raw.test if e.prompt != "Q9")
    with pytest.raises(ValueError, match=r"row 10 .*answer_format: gsm8k"):
        dataset_task(tmp_path / "gsm8k.jsonl", reward="exact", answer_format="gsm8k")


def test_fields_are_mapped_and_a_missing_one_lists_what_there_is(tmp_path):
    rows = [{"problem": f"Find {i}.", "solution": f"\\boxed{{{i}}}", "level": 1} for i in range(5)]
    path = _write(tmp_path / "math.jsonl", rows)
    task = dataset_task(path, reward="exact", prompt_key="problem", answer_key="solution")
    assert {e.prompt for e in task.train + task.test} == {f"Find {i}." for i in range(5)}
    with pytest.raises(ValueError) as err:
        dataset_task(path, reward="exact")
    msg = str(err.value)
    assert "'prompt'" in msg and "prompt_key" in msg and "problem, solution, level" in msg
    assert "\n" not in msg


def test_conversational_prompts(tmp_path):
    conv = [
        {
            "prompt": [
                {"role": "system", "content": "Reason step by step."},
                {"role": "user", "content": f"What is {i}+{i}?"},
            ],
            "answer": str(2 * i),
        }
        for i in range(6)
    ]
    for name in ("c.jsonl", "c.parquet"):
        task = dataset_task(_write(tmp_path / name, conv), reward="exact")
        e = (task.train + task.test)[0]
        assert isinstance(e.prompt, tuple) and e.prompt[-1]["role"] == "user"
        assert task.dataset.conversational
    ends_with_assistant = [{"prompt": [{"role": "assistant", "content": "x"}], "answer": "1"}] * 2
    with pytest.raises(ValueError, match="end with the user's message"):
        dataset_task(_write(tmp_path / "a.jsonl", ends_with_assistant), reward="exact")
    no_role = [{"prompt": [{"content": "x"}], "answer": "1"}] * 2
    with pytest.raises(ValueError, match="'role' and 'content'"):
        dataset_task(_write(tmp_path / "b.jsonl", no_role), reward="exact")


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match=r"\.json, \.jsonl, \.csv, \.parquet"):
        dataset_task(tmp_path / "d.txt", reward="exact")
    (tmp_path / "one.json").write_text(json.dumps(ROWS[0]))
    with pytest.raises(ValueError, match="one JSON dict"):
        dataset_task(tmp_path / "one.json", reward="exact")
    (tmp_path / "one.jsonl").write_text(json.dumps(ROWS[0]))
    with pytest.raises(ValueError, match="at least 2"):
        dataset_task(tmp_path / "one.jsonl", reward="exact")
    with pytest.raises(FileNotFoundError, match="dataset"):
        dataset_task(tmp_path / "missing.jsonl")


def test_the_response_budget(tmp_path):
    addition = synthetic_task("addition", n_train=10, n_test=2)
    assert response_budget(addition) == 5  # four digits and EOS, one token each
    assert addition.max_answer_chars == 4  # what the trainers read until they are wired
    run_sum = synthetic_task("running-sum", n_train=10, n_test=2, terms=16)
    assert response_budget(run_sum) == 16 * 5  # 16 sums of 4 digits, commas between, EOS
    data = dataset_task(_write(tmp_path / "d.jsonl", ROWS), reward="exact")
    assert response_budget(data) == DEFAULT_REASONING_TOKENS == 1024
    assert response_budget(data, 256) == 256 and response_budget(addition, 9) == 9
    with pytest.raises(ValueError, match="max_new_tokens"):
        response_budget(data, 0)


def test_messages_must_be_encodable(tmp_path):
    conv = [{"prompt": [{"role": "user", "content": "12+3="}], "answer": "15"}] * 3
    conv.append({"prompt": [{"role": "user", "content": "12 plus 3"}], "answer": "15"})
    task = dataset_task(_write(tmp_path / "c.jsonl", conv), reward="exact", test_fraction=0.3)
    with pytest.raises(ValueError, match="cannot encode: ' lpsu'"):
        check_encodable(task, build_tokenizer())
