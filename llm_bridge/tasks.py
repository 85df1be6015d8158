"""Verifiable tasks: prompts, reference answers and rewards.

Synthetic tasks are generated from a seed and need nothing from outside: ``addition`` and
``multiplication`` (short answers, exact match) and ``running-sum`` (K terms, every partial sum
written: long responses, 5K tokens; the reward is the share of partial sums right). A local
dataset (JSONL or parquet with ``prompt`` and ``answer``) is checked with math-verify (optional
extra ``math``) when its answers are math.
"""

from __future__ import annotations

import enum
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softmax_theory.inputs import MissingExtra
from softmax_theory.registry import parse_choice
from softmax_theory.runlog import parse_json_line


class TaskName(str, enum.Enum):
    ADDITION = "addition"  # a+b=, three-digit operands, four-digit answer
    MULTIPLICATION = "multiplication"  # a*b=, three-digit × two-digit, five-digit answer
    RUNNING_SUM = "running-sum"  # a+b+…= (K two-digit terms) → every partial sum, 4 digits each


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


@dataclass(frozen=True)
class Task:
    """A task: its examples, the answer length (for generation) and its reward function."""

    name: str
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    max_answer_chars: int
    reward: Callable[[str, str], float]  # (response text, reference answer) → reward
    max_reward: float | None = 1.0  # the largest reward possible (None: unknown)


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
        max_answer_chars=answer_chars(name, terms),
        reward=partial_sums_right if name is TaskName.RUNNING_SUM else exact_match,
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


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            return [
                parse_json_line(line, f"dataset: {path} line {i}")
                for i, line in enumerate(f, start=1)
                if line.strip()
            ]
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingExtra(
                "dataset: reading parquet needs pyarrow: pip install pyarrow"
            ) from None
        return pq.read_table(path).to_pylist()
    raise ValueError(f"dataset: {path} must be .jsonl or .parquet")


def dataset_task(
    path: str | os.PathLike,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_answer_chars: int = 64,
    reward: str = "math",
) -> Task:
    """A task from a local file with ``prompt`` and ``answer`` per row.

    Args:
      reward: ``math`` (math-verify) or ``exact`` (exact string match).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset: {path} does not exist")
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"dataset: {path} holds no rows")
    for i, r in enumerate(rows, start=1):
        if "prompt" not in r or "answer" not in r:
            raise ValueError(f"dataset: row {i} of {path} needs 'prompt' and 'answer'")
    if reward not in ("math", "exact"):
        raise ValueError(f"dataset_reward: 'math' or 'exact', got {reward!r}")
    if reward == "math" and importlib.util.find_spec("math_verify") is None:
        raise MissingExtra(MATH_EXTRA)  # now, not at the first reward
    examples = [Example(str(r["prompt"]), str(r["answer"])) for r in rows]
    order = np.random.default_rng(seed).permutation(len(examples))
    n_test = max(1, int(test_fraction * len(examples)))
    return Task(
        name=path.stem,
        train=tuple(examples[i] for i in order[n_test:]),
        test=tuple(examples[i] for i in order[:n_test]),
        max_answer_chars=max_answer_chars,
        reward=math_verify_reward if reward == "math" else exact_match,
    )


def check_encodable(task: Task, tokenizer) -> None:
    """Refuse a task whose prompts or answers hold characters the model's tokenizer cannot
    encode (they become its unknown token): the model could never read the prompt or write the
    answer, and training would run at reward 0. Names the first such example."""
    unk = tokenizer.unk_token_id
    if unk is None:  # byte-level tokenizers encode every string
        return
    for split, examples in (("train", task.train), ("test", task.test)):
        for i, e in enumerate(examples):
            for field, text in (("prompt", e.prompt), ("answer", e.answer)):
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
