"""Verifiable tasks: prompts, reference answers and rewards.

Synthetic tasks are generated from a seed and need nothing from outside: ``addition`` and
``multiplication`` (short answers, exact match) and ``running-sum`` (K terms, every partial sum
written: long responses, 5K tokens; the reward is the share of partial sums right); each has
its own response budget (its longest answer and EOS, one token per character).

A local dataset (``.json``: a list of objects or JSON lines; ``.jsonl``; ``.csv``; ``.parquet``)
gives a prompt and a reference answer per row, under ``prompt_key`` and ``answer_key``
(``prompt``/``answer``; GSM8K's ``question`` is taken when there is no ``prompt``). A prompt is a
string or a conversation (TRL's format: a list of ``{"role", "content"}`` messages ending with the
user's). An answer written GSM8K's way (reasoning, then ``#### N``) is cut to ``N``: the text
after the last ``####``, commas removed. Answers are checked with math-verify (optional extra
``math``) or exact match. A dataset has no response budget of its own: responses get
``DEFAULT_REASONING_TOKENS`` unless the run sets one.
"""

from __future__ import annotations

import csv
import enum
import importlib.util
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from softmax_theory.inputs import MissingExtra
from softmax_theory.registry import parse_choice
from softmax_theory.runlog import parse_json_line


class TaskName(str, enum.Enum):
    ADDITION = "addition"  # a+b=, three-digit operands, four-digit answer
    MULTIPLICATION = "multiplication"  # a*b=, three-digit × two-digit, five-digit answer
    RUNNING_SUM = "running-sum"  # a+b+…= (K two-digit terms) → every partial sum, 4 digits each


# A prompt: a string, or a conversation (messages with "role" and "content", the last the user's).
Prompt = str | tuple[Mapping[str, Any], ...]

# The response budget of a dataset task unless the run sets one: room for a reasoning chain
# (GSM8K's reference solutions run to about 400 tokens; a model's own are often longer).
DEFAULT_REASONING_TOKENS = 1024


@dataclass(frozen=True)
class Example:
    prompt: Prompt
    answer: str


class AnswerFormat(str, enum.Enum):
    AUTO = "auto"  # GSM8K's rule for answers that hold '####', the others as written
    GSM8K = "gsm8k"  # every answer holds '####' (an answer without one is refused)
    RAW = "raw"  # every answer as written


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset task came from, for ``config.json``: the file, the fields read, and how
    its answers were read."""

    path: str
    prompt_key: str
    answer_key: str
    answer_format: AnswerFormat
    rows: int
    conversational: bool  # the prompts are lists of messages
    gsm8k_answers: int  # answers cut at their last '####'


@dataclass(frozen=True)
class Task:
    """A task: its examples, its reward function, and its own response budget in tokens
    (EOS included; None: none of its own, ``response_budget`` gives the default)."""

    name: str
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    reward: Callable[[str, str], float]  # (response text, reference answer) → reward
    response_tokens: int | None = None
    max_reward: float | None = 1.0  # the largest reward possible (None: unknown)
    dataset: DatasetSource | None = None  # a dataset task's file and fields

    @property
    def max_answer_chars(self) -> int:
        """Transitional, for callers that budget ``max_answer_chars + 1`` tokens: the response
        budget less EOS (a synthetic task's longest answer; for a dataset,
        ``DEFAULT_REASONING_TOKENS − 1``). Call ``response_budget`` instead."""
        return response_budget(self) - 1


def response_budget(task: Task, max_new_tokens: int | None = None) -> int:
    """The most tokens a response may have, EOS included: ``max_new_tokens`` when set, else the
    task's own (a synthetic task's answer and EOS), else ``DEFAULT_REASONING_TOKENS``."""
    if max_new_tokens is not None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: at least 1, got {max_new_tokens}")
        return max_new_tokens
    return task.response_tokens or DEFAULT_REASONING_TOKENS


def exact_match(response: str, answer: str) -> float:
    """1 if the response, stripped, equals the reference answer, else 0."""
    return float(response.strip() == answer.strip())


def partial_sums_right(response: str, answer: str) -> float:
    """The share of the reference's comma-separated partial sums that the response writes in
    the same place (a verifiable partial credit: each sum is checked exactly)."""
    want = answer.strip().split(",")
    got = response.strip().split(",")
    return sum(g == w for g, w in zip(got, want, strict=False)) / len(want)


# Digits of each partial sum of running-sum (K ≤ 100 two-digit terms stay below 10,000).
SUM_WIDTH = 4
DEFAULT_TERMS = 16
MAX_TERMS = 100


def _arith(name: TaskName, rng: np.random.Generator, n: int, terms: int) -> list[Example]:
    out = []
    for _ in range(n):
        if name is TaskName.ADDITION:
            a, b = rng.integers(0, 1000, size=2)
            out.append(Example(f"{a:03d}+{b:03d}=", f"{a + b:04d}"))
        elif name is TaskName.MULTIPLICATION:
            a, b = int(rng.integers(0, 1000)), int(rng.integers(0, 100))
            out.append(Example(f"{a:03d}*{b:02d}=", f"{a * b:05d}"))
        else:
            xs = rng.integers(0, 100, size=terms)
            sums = np.cumsum(xs)
            prompt = "+".join(f"{x:02d}" for x in xs) + "="
            out.append(Example(prompt, ",".join(f"{s:0{SUM_WIDTH}d}" for s in sums)))
    return out


def answer_chars(name: TaskName, terms: int) -> int:
    """The longest answer of a synthetic task, in characters."""
    if name is TaskName.RUNNING_SUM:
        return terms * (SUM_WIDTH + 1) - 1
    return {TaskName.ADDITION: 4, TaskName.MULTIPLICATION: 5}[name]


# Characters each synthetic task uses (the tiny model's vocabulary; addition and multiplication
# share one, so the demo's model is unchanged by tasks added later).
TASK_ALPHABET = "0123456789+*="
ALPHABETS = {
    TaskName.ADDITION: TASK_ALPHABET,
    TaskName.MULTIPLICATION: TASK_ALPHABET,
    TaskName.RUNNING_SUM: "0123456789+=,",
}


def task_alphabet(name: str | TaskName) -> str:
    return ALPHABETS[parse_choice(TaskName, name, "task")]


def synthetic_task(
    name: str | TaskName,
    seed: int = 0,
    n_train: int = 20_000,
    n_test: int = 512,
    terms: int = DEFAULT_TERMS,
) -> Task:
    """A seeded synthetic task; train and test prompts are disjoint. ``terms``: the number of
    terms of ``running-sum`` (its responses are 5·terms tokens with EOS)."""
    name = parse_choice(TaskName, name, "task")
    if not 2 <= terms <= MAX_TERMS:
        raise ValueError(f"terms: between 2 and {MAX_TERMS}, got {terms}")
    rng = np.random.default_rng(seed)
    examples = _arith(name, rng, n_train + 4 * n_test, terms)
    unique = list({e.prompt: e for e in examples}.values())
    test = unique[:n_test]
    test_prompts = {e.prompt for e in test}
    train = [e for e in unique[n_test:] if e.prompt not in test_prompts][:n_train]
    return Task(
        name=name.value,
        train=tuple(train),
        test=tuple(test),
        reward=partial_sums_right if name is TaskName.RUNNING_SUM else exact_match,
        response_tokens=answer_chars(name, terms) + 1,  # one token per character, and EOS
    )


MATH_EXTRA = (
    "dataset_reward: math needs math-verify: pip install 'entropy-mechanism[math]' "
    "(make test installs it), or use --dataset-reward exact"
)


def math_verify_reward(response: str, answer: str) -> float:
    """1 if math-verify judges the response equal to the answer (optional extra ``math``)."""
    try:
        from math_verify import parse, verify
    except ImportError:
        raise MissingExtra(MATH_EXTRA) from None
    gold, pred = parse(answer), parse(response)
    return float(bool(gold) and bool(pred) and verify(gold, pred))


DATASET_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
GSM8K_MARK = "####"
DEFAULT_PROMPT_KEY, DEFAULT_ANSWER_KEY = "prompt", "answer"
GSM8K_PROMPT_KEY = "question"  # GSM8K's name for the prompt


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a dataset file, as dicts: ``.json`` (a list of objects, or JSON lines),
    ``.jsonl``, ``.csv`` (every cell a string, as written: the csv module, so "007" and "NA"
    stay text) or ``.parquet`` (pyarrow)."""
    path = Path(path)
    if path.suffix not in DATASET_SUFFIXES:
        raise ValueError(f"dataset: {path} must be one of {', '.join(DATASET_SUFFIXES)}")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingExtra(
                "dataset: reading parquet needs pyarrow: pip install pyarrow"
            ) from None
        rows = pq.read_table(path).to_pylist()
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        text = path.read_text(encoding="utf-8")
        try:
            whole = json.loads(text) if path.suffix == ".json" else None
        except json.JSONDecodeError:
            whole = None  # not one JSON value: JSON lines
        if whole is not None and not isinstance(whole, list):
            raise ValueError(
                f"dataset: {path} holds one JSON {type(whole).__name__}; give a list of objects "
                "or one object per line"
            )
        rows = (
            whole
            if whole is not None
            else [
                parse_json_line(line, f"dataset: {path} line {i}")
                for i, line in enumerate(text.splitlines(), start=1)
                if line.strip()
            ]
        )
    for i, r in enumerate(rows, start=1):
        if not isinstance(r, dict):
            raise ValueError(f"dataset: row {i} of {path} is a {type(r).__name__}, not an object")
    return rows


def gsm8k_answer(solution: str) -> str:
    """The reference answer of a GSM8K-style solution: the text after its last ``####``,
    stripped, commas removed ("… #### 1,234" → "1234")."""
    if GSM8K_MARK not in solution:
        raise ValueError(f"answer_format: gsm8k, but the answer {solution[-60:]!r} has no '####'")
    return solution.rsplit(GSM8K_MARK, 1)[1].strip().replace(",", "")


def _prompt(value: Any, where: str) -> Prompt:
    """A row's prompt: a non-empty string, or a conversation ending with the user's message."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: the prompt is empty")
        return value
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(
            f"{where}: the prompt must be a string or a list of messages, got "
            f"{type(value).__name__}"
        )
    for m in value:
        if not (isinstance(m, Mapping) and isinstance(m.get("role"), str) and "content" in m):
            raise ValueError(f"{where}: each message needs 'role' and 'content', got {m!r:.80}")
    if value[-1]["role"] != "user":
        # the response is the assistant's next message: TRL would continue a final assistant
        # message instead of starting one, and the engines would read different prompts
        raise ValueError(
            f"{where}: the conversation must end with the user's message, not {value[-1]['role']!r}"
        )
    return tuple(dict(m) for m in value)


def _answer(value: Any, fmt: AnswerFormat, where: str) -> tuple[str, bool]:
    """A row's reference answer and whether GSM8K's rule cut it."""
    if value is None or isinstance(value, (list, dict, bool)):
        raise ValueError(f"{where}: the answer must be text or a number, got {value!r:.60}")
    text = str(value)
    cut = fmt is AnswerFormat.GSM8K or (fmt is AnswerFormat.AUTO and GSM8K_MARK in text)
    if cut:
        try:
            text = gsm8k_answer(text)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    if not text.strip():
        raise ValueError(f"{where}: the answer is empty")
    return text, cut


def dataset_task(
    path: str | os.PathLike,
    test_fraction: float = 0.1,
    seed: int = 0,
    reward: str = "math",
    prompt_key: str = DEFAULT_PROMPT_KEY,
    answer_key: str = DEFAULT_ANSWER_KEY,
    answer_format: str | AnswerFormat = AnswerFormat.AUTO,
    log: Callable[[str], None] = lambda _: None,
) -> Task:
    """A task from a local file with a prompt and a reference answer per row (see the module
    docstring); a shuffled ``test_fraction`` of the rows (at least one) is held out.

    Args:
      reward: ``math`` (math-verify) or ``exact`` (exact string match).
      prompt_key, answer_key: the fields to read. With the default ``prompt`` absent and
        ``question`` present (GSM8K), ``question`` is read, and ``log`` says so.
      answer_format: ``auto`` (GSM8K's ``#### N`` rule where an answer holds ``####``),
        ``gsm8k`` (every answer must) or ``raw``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset: {path} does not exist")
    if reward not in ("math", "exact"):
        raise ValueError(f"dataset_reward: 'math' or 'exact', got {reward!r}")
    fmt = parse_choice(AnswerFormat, answer_format, "answer_format")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: between 0 and 1, got {test_fraction}")
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"dataset: {path} holds no rows")
    if (
        prompt_key == DEFAULT_PROMPT_KEY
        and prompt_key not in rows[0]
        and GSM8K_PROMPT_KEY in rows[0]
    ):
        prompt_key = GSM8K_PROMPT_KEY
        log(f"dataset: {path.name} has no 'prompt' field; reading GSM8K's 'question' as the prompt")
    examples, cut = [], 0
    for i, r in enumerate(rows, start=1):
        where = f"dataset: row {i} of {path}"
        for key, setting in ((prompt_key, "prompt_key"), (answer_key, "answer_key")):
            if key not in r:
                found = ", ".join(map(str, r))
                raise ValueError(f"{where} has no {key!r} field ({setting}); its fields: {found}")
        answer, was_cut = _answer(r[answer_key], fmt, where)
        examples.append(Example(_prompt(r[prompt_key], where), answer))
        cut += was_cut
    if len(rows) < 2:
        raise ValueError(f"dataset: {path} holds 1 row; at least 2 (train and test)")
    if cut:
        log(f"dataset: {cut} of {len(rows)} answers cut to the text after their last '####'")
    if reward == "math" and importlib.util.find_spec("math_verify") is None:
        raise MissingExtra(MATH_EXTRA)  # now, not at the first reward
    order = np.random.default_rng(seed).permutation(len(examples))
    n_test = max(1, int(test_fraction * len(examples)))
    return Task(
        name=path.stem,
        train=tuple(examples[i] for i in order[n_test:]),
        test=tuple(examples[i] for i in order[:n_test]),
        reward=math_verify_reward if reward == "math" else exact_match,
        dataset=DatasetSource(
            path=str(path),
            prompt_key=prompt_key,
            answer_key=answer_key,
            answer_format=fmt,
            rows=len(rows),
            conversational=any(not isinstance(e.prompt, str) for e in examples),
            gsm8k_answers=cut,
        ),
    )


def prompt_texts(prompt: Prompt) -> list[str]:
    """The texts a prompt holds: the string, or each message's content."""
    if isinstance(prompt, str):
        return [prompt]
    return [str(m["content"]) for m in prompt]


def check_encodable(task: Task, tokenizer) -> None:
    """Refuse a task whose prompts or answers hold characters the model's tokenizer cannot
    encode (they become its unknown token): the model could never read the prompt or write the
    answer, and training would run at reward 0. Names the first such example."""
    unk = tokenizer.unk_token_id
    if unk is None:  # byte-level tokenizers encode every string
        return
    for split, examples in (("train", task.train), ("test", task.test)):
        for i, e in enumerate(examples):
            fields = [("prompt", t) for t in prompt_texts(e.prompt)] + [("answer", e.answer)]
            for field, text in fields:
                if unk in tokenizer.encode(text, add_special_tokens=False):
                    bad = sorted(
                        {c for c in text if unk in tokenizer.encode(c, add_special_tokens=False)}
                    )
                    raise ValueError(
                        f"dataset: the {field} of {split} example {i} ({text[:60]!r}) has "
                        f"characters the model's tokenizer cannot encode: {''.join(bad)!r}"
                    )


def score(task: Task, responses: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    return np.array([task.reward(r, a) for r, a in zip(responses, answers, strict=True)])


# Seeds each epoch's order of a dataset's prompts (with the run's seed and the epoch).
EPOCH_SEED = 1_000_037


def epoch_order(n: int, seed: int, positions: Sequence[int]) -> list[int]:
    """Which of ``n`` training rows the draws at ``positions`` (0, 1, … over the whole run)
    take: every epoch (n draws) is a fresh permutation of the rows, seeded by the run's seed and
    the epoch, so a dataset's prompts are drawn without replacement within an epoch."""
    orders: dict[int, list[int]] = {}
    out = []
    for i in positions:
        epoch, k = divmod(i, n)
        if epoch not in orders:
            rng = np.random.default_rng(seed * EPOCH_SEED + epoch)
            orders[epoch] = rng.permutation(n).tolist()
        out.append(orders[epoch][k])
    return out


def data_notes(task: Task, prompts_per_step: int, val_prompts: int, val_every: int) -> list[str]:
    """What a run should say once about its data before the first step: a step that asks for
    more prompts than the dataset holds, or more held-out prompts than there are."""
    notes = []
    if task.dataset is not None and prompts_per_step > len(task.train):
        notes.append(
            f"prompts_per_step: {prompts_per_step} prompts a step from {len(task.train)} "
            "training rows: each step spans more than one epoch (every row once per epoch)"
        )
    if val_every and val_prompts > len(task.test):
        notes.append(
            f"val_prompts: {val_prompts} asked for, the task holds {len(task.test)} held-out "
            f"prompts; validating on those {len(task.test)}"
        )
    return notes
