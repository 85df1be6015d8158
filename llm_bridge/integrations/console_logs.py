"""Console output of trainers that print their metrics as Python dicts, read into rows.

- TRL (transformers' ``Trainer``): ``{'loss': …, 'reward': …, 'entropy': …, 'epoch': …}`` every
  ``logging_steps`` optimiser steps, between ``\\r``-redrawn tqdm bars and sometimes after one
  on the same line; evaluations as ``{'eval_…': …}``. No step key: ``trl_steps`` numbers the
  dicts from ``logging_steps``, else the progress bar's ``N/M`` counter, else their order.
- SkyRL: loguru lines ``… | INFO | skyrl_train.trainer:train:390 - {'policy_entropy': …}``,
  one per step, with the step's reward on an earlier line (``avg_raw_rewards: X``,
  ``avg_final_rewards: X``, ``reward/avg_raw_reward: X``). No step number: the k-th status
  line is step k (SkyRL's steps start at 1).
- OpenRLHF: ``✨ Global step N: {…}`` and ``✨ Evaluation completed in …, global_step N,
  eval_metrics: {…}``.

A dict is read with ``ast.literal_eval`` (``nan``/``inf`` and numpy scalars' reprs such as
``np.float64(0.3)`` allowed); one that does not parse — a line cut short by a killed run — is
refused naming the file and line.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Rows = list[tuple[str, dict[str, Any]]]

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# transformers' Trainer logs dicts that open with one of these keys (GRPOTrainer adds its
# metrics after the Trainer's own "loss")
TRL_DICT = re.compile(r"\{'(?:loss|eval_[^']*|train_runtime)': ")
# tqdm's bar: "  23%|##3       | 10/43 [14:12<44:45, 81.39s/it]", with or without a label
PROGRESS = re.compile(r"(?:^|\s|:)\d+%\|[^|]*\|\s*(\d+)/(\d+) \[")
# loguru's default layout: "time | LEVEL | module:function:line - message"
LOGURU = re.compile(r"\|\s*[A-Z]+\s*\|\s*(?P<module>[\w.]+):(?P<function>\w+):\d+ - (?P<msg>.*)$")
SKYRL_STATUS = re.compile(r"skyrl[_.]train\.\w*trainer:train:\d+ - \{")
SKYRL_REWARDS = ("avg_raw_rewards", "avg_final_rewards", "reward/avg_raw_reward")
KEY_NUMBER = re.compile(r"([\w/@.-]+): (-?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf))\b", re.IGNORECASE)
OPENRLHF_STEP = re.compile(r"(?:✨ )?Global step (\d+)(?: \[\w+\])?: (\{.*)$")
OPENRLHF_EVAL = re.compile(
    r"(?:✨ )?Evaluation completed in [^,]*, global_step (\d+), eval_metrics: (\{.*)$"
)
NAMED_FLOATS = {"nan": float("nan"), "inf": float("inf")}


def log_lines(text: str) -> list[str]:
    """Lines split at ``\\n`` only (``str.splitlines`` would split tqdm's ``\\r`` redraws too),
    ANSI colour codes removed."""
    return [ANSI.sub("", line) for line in text.split("\n")]


class _Literals(ast.NodeTransformer):
    """``nan``/``inf`` names → floats; ``np.float64(x)`` (any numpy scalar's repr) → ``x``."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in NAMED_FLOATS:
            return ast.copy_location(ast.Constant(NAMED_FLOATS[node.id]), node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in ("np", "numpy")
            and len(node.args) == 1
            and not node.keywords
        ):
            return self.visit(node.args[0])
        return self.generic_visit(node)


def python_dict(text: str, where: str) -> dict[str, Any]:
    """A printed dict back as a dict; a dict cut short or garbled is refused in one line."""
    body = text.strip()
    try:
        tree = _Literals().visit(ast.parse(body, mode="eval"))
        value = ast.literal_eval(tree)
    except SyntaxError:
        raise ValueError(f"{where}: a metric dict that does not parse (cut short?)") from None
    except ValueError as err:
        raise ValueError(
            f"{where}: a metric dict with a value that is not a literal ({err})"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a metric dict, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def dict_text(segment: str, start: int) -> str:
    """The dict that opens at ``start``: up to the segment's last ``}`` (the whole rest when it
    has none, so that the parse reports the dict cut short)."""
    end = segment.rfind("}")
    return segment[start : end + 1] if end >= start else segment[start:]


@dataclass(frozen=True)
class TrlDict:
    """One dict of TRL's console output."""

    where: str
    values: dict[str, Any]
    counters: dict[int, int]  # each progress bar's total → its last counter printed before

    @property
    def is_eval(self) -> bool:
        return any(k.startswith("eval_") for k in self.values)


def read_trl_console(path: Path, text: str) -> list[TrlDict]:
    """Every metric dict in order, with the progress counters printed before it. The
    end-of-training summary (``train_runtime``) is skipped: it holds no step's metrics."""
    found: list[TrlDict] = []
    counters: dict[int, int] = {}
    for i, line in enumerate(log_lines(text), start=1):
        for segment in line.split("\r"):
            m = TRL_DICT.search(segment)
            at = len(segment) if m is None else m.start()
            bars = list(PROGRESS.finditer(segment))
            _count(counters, (b for b in bars if b.start() < at))  # a bar the dict follows
            if m is not None:
                where = f"{path} line {i}"
                values = python_dict(dict_text(segment, at), where)
                if "train_runtime" not in values:
                    found.append(TrlDict(where, values, dict(counters)))
                _count(counters, (b for b in bars if b.start() > at))
    return found


def _count(counters: dict[int, int], bars) -> None:
    for bar in bars:
        counters[int(bar.group(2))] = int(bar.group(1))


def training_bar(dicts: list[TrlDict]) -> int | None:
    """The total of the training bar: of the bars printed before every dict, the one whose
    counter moved most between dicts (a model-loading bar stays put; evaluation bars come
    and go)."""
    shared = set.intersection(*(set(d.counters) for d in dicts)) if dicts else set()
    if not shared:
        return None
    return max(shared, key=lambda t: (len({d.counters[t] for d in dicts}), t))


def trl_steps(dicts: list[TrlDict], logging_steps: int | None) -> tuple[Rows, str]:
    """Rows ``{"step": g, …}``, g being TRL's optimiser step, and one line saying how g was
    found: ``logging_steps`` (the k-th training dict is step k·logging_steps), else the
    training bar's counter beside each dict, else the dicts' order (the k-th is step k). An
    evaluation dict takes the step of the training dict before it."""
    bar = None if logging_steps is not None else training_bar(dicts)
    if logging_steps is not None:
        how = (
            f"steps: from --logging-steps {logging_steps} (metric dict k is step {logging_steps}·k)"
        )
    elif bar is not None:
        how = f"steps: from the progress bar's N/{bar} counter beside each metric dict"
    else:
        how = (
            "steps: the order of the metric dicts (no progress bar beside them; "
            "--logging-steps sets the interval)"
        )
    rows: Rows = []
    k, g = 0, 0
    for d in dicts:
        if not d.is_eval:
            k += 1
            if logging_steps is not None:
                g = k * logging_steps
            else:
                g = d.counters[bar] if bar is not None else k
        rows.append((d.where, {"step": g, **d.values}))
    return rows, how


def is_trl_console(text: str) -> bool:
    return TRL_DICT.search(text) is not None


def is_skyrl_console(text: str) -> bool:
    return SKYRL_STATUS.search(ANSI.sub("", text)) is not None


def is_openrlhf_console(text: str) -> bool:
    return any(OPENRLHF_STEP.search(line) for line in text.split("\n"))


def skyrl_rewards(message: str) -> dict[str, str]:
    """The reward numbers a SkyRL trainer line holds (``avg_raw_rewards: 0.3, …``)."""
    return {k: v for k, v in KEY_NUMBER.findall(message) if k in SKYRL_REWARDS}


def read_skyrl_console(path: Path, text: str) -> Rows:
    """One row per status line, ``{"step": k, **rewards, **status}``: the rewards are those
    printed since the previous status line (SkyRL prints a step's reward before its
    status). Other modules' lines (vLLM, the generator's examples) are ignored."""
    rows: Rows = []
    pending: dict[str, Any] = {}
    for i, line in enumerate(log_lines(text), start=1):
        m = LOGURU.search(line)
        if m is None or not m.group("module").endswith("trainer"):
            continue
        msg = m.group("msg")
        if m.group("function") == "train" and msg.lstrip().startswith("{"):
            status = python_dict(dict_text(msg, msg.index("{")), f"{path} line {i}")
            rows.append((f"{path} line {i}", {"step": len(rows) + 1, **pending, **status}))
            pending = {}
        else:
            pending.update(skyrl_rewards(msg))
    return rows


def read_openrlhf_console(path: Path, text: str) -> Rows:
    """One row per ``Global step N: {…}`` line and per evaluation line, each at its step."""
    rows: Rows = []
    for i, line in enumerate(log_lines(text), start=1):
        m = OPENRLHF_STEP.search(line) or OPENRLHF_EVAL.search(line)
        if m is None:
            continue
        where = f"{path} line {i}"
        rows.append(
            (where, {"step": int(m.group(1)), **python_dict(dict_text(m.group(2), 0), where)})
        )
    return rows
