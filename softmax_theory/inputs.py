"""Input checks shared by the numpy modules: each raises a ValueError that names the argument.

Also the domain of every numeric setting: ``Domain``, declared once in the config field's
metadata, and ``check_domains``, which each config dataclass calls from ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np


class MissingExtra(ImportError):
    """A feature the user asked for needs an optional extra that is not installed; the message
    names the setting and the install command (a user's matter, not our bug)."""


def check_finite(name: str, x: np.ndarray) -> None:
    """Raise naming ``name`` when any entry of ``x`` is NaN or infinite."""
    if not np.isfinite(x).all():
        bad = np.size(x) - int(np.isfinite(x).sum())
        raise ValueError(f"{name}: {bad} entries are NaN or infinite; all must be finite")


def check_logits(name: str, z: np.ndarray) -> None:
    """Logits may be −inf (a masked action, probability 0) but not NaN or +inf, and every row
    needs at least one finite entry."""
    if np.isnan(z).any() or np.isposinf(z).any():
        bad = int(np.isnan(z).sum() + np.isposinf(z).sum())
        raise ValueError(f"{name}: {bad} entries are NaN or +inf; logits must be finite or -inf")
    if z.size and not np.isfinite(z).any(axis=-1).all():
        raise ValueError(f"{name}: a row has no finite entry (every action masked with -inf)")


def check_lr(lr: float) -> float:
    """η as a float: a real number (not a string), finite and > 0."""
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise ValueError(f"lr: the step size must be a number, got {type(lr).__name__} {lr!r}")
    lr = float(lr)
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr: the step size must be a finite number > 0, got {lr}")
    return lr


# ---------------------------------------------------------------------------------------------
# The domain of a numeric setting, declared once beside its field
# ---------------------------------------------------------------------------------------------


class SettingError(ValueError):
    """A setting outside its domain, or at odds with another setting. ``name`` is the config
    field (the command lines put its flag in its place); ``problem`` says what is wrong."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


def _bound(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Domain:
    """The values a numeric setting may take: an interval (``ge``/``gt`` below, ``le``/``lt``
    above; none given: any finite number), integers for an ``int`` field, and None where the
    field is ``X | None``. A tuple field applies it to every value and needs ``min_len`` of
    them; a fixed-length tuple may give one Domain per position instead.

    Declared once, in the field's metadata: ``field(default=1, metadata={"domain": Domain(ge=1)})``.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_len: int = 0

    def __post_init__(self) -> None:
        if self.ge is not None and self.gt is not None:
            raise TypeError("Domain: give ge or gt, not both")
        if self.le is not None and self.lt is not None:
            raise TypeError("Domain: give le or lt, not both")

    @property
    def low(self) -> float | None:
        return self.ge if self.gt is None else self.gt

    @property
    def high(self) -> float | None:
        return self.le if self.lt is None else self.lt

    def describe(self, integer: bool) -> str:
        """'an integer ≥ 1', 'a number in (0, 1]', 'a finite number'."""
        kind = "an integer" if integer else "a number"
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            left, right = "[" if self.gt is None else "(", "]" if self.lt is None else ")"
            return f"{kind} in {left}{_bound(lo)}, {_bound(hi)}{right}"
        if lo is not None:
            return f"{kind} {'≥' if self.gt is None else '>'} {_bound(lo)}"
        if hi is not None:
            return f"{kind} {'≤' if self.lt is None else '<'} {_bound(hi)}"
        return "an integer" if integer else "a finite number"

    def contains(self, value: Any, integer: bool) -> bool:
        """Whether one value (not None) lies in the domain: the right kind of number, finite,
        within the bounds. A bool is not a number here."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if integer and not isinstance(value, numbers.Integral):
            return False
        x = float(value)
        if not math.isfinite(x):
            return False
        return not (
            (self.ge is not None and x < self.ge)
            or (self.gt is not None and x <= self.gt)
            or (self.le is not None and x > self.le)
            or (self.lt is not None and x >= self.lt)
        )


def _number_kind(tp: Any) -> tuple[bool, bool, bool] | None:
    """(optional, integer, tuple) for a numeric field type, None for any other type."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) != 1:
            return None
        tp = args[0]
    is_tuple = typing.get_origin(tp) is tuple
    if is_tuple:
        items = {a for a in typing.get_args(tp) if a is not Ellipsis}
        if len(items) != 1:
            return None
        (tp,) = items
    if tp is bool or tp not in (int, float):
        return None
    return optional, tp is int, is_tuple


@functools.cache
def numeric_fields(cls: type) -> tuple[tuple[dataclasses.Field, bool, bool, bool], ...]:
    """Every numeric field of the dataclass ``cls`` (int, float, tuples of them, optional or
    not; bool excluded): (field, optional, integer, tuple)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = _number_kind(hints[f.name])
        if kind is not None:
            out.append((f, *kind))
    return tuple(out)


def domain_problem(
    value: Any, domain: Domain | tuple[Domain, ...], optional: bool, integer: bool, is_tuple: bool
) -> str | None:
    """What is wrong with ``value`` for a field of this kind and domain ('must be …, got …'),
    or None when it lies in the domain."""
    if value is None:
        return None if optional else f"must be {_describe(domain, integer)}, got None"
    if not is_tuple:
        if isinstance(domain, tuple):
            raise TypeError("Domain: one per position is for tuple fields")
        if domain.contains(value, integer):
            return None
        return f"must be {domain.describe(integer)}, got {value!r}"
    values = tuple(value) if isinstance(value, list | tuple) else None
    if values is None:
        return f"must be a tuple of {_describe(domain, integer, plural=True)}, got {value!r}"
    if isinstance(domain, tuple):
        if len(values) != len(domain):
            return f"needs {len(domain)} values, got {len(values)} ({_show(values)})"
        for i, (v, d) in enumerate(zip(values, domain, strict=True)):
            if not d.contains(v, integer):
                return f"value {i + 1} must be {d.describe(integer)}, got {_show(values)}"
        return None
    if len(values) < domain.min_len:
        need = f"{domain.min_len} value" + ("s" if domain.min_len > 1 else "")
        return f"needs at least {need}, got {len(values)} ({_show(values)})"
    bad = [v for v in values if not domain.contains(v, integer)]
    if bad:
        return f"each value must be {domain.describe(integer)}, got {_show(values)}"
    return None


def _describe(domain: Domain | tuple[Domain, ...], integer: bool, plural: bool = False) -> str:
    if isinstance(domain, tuple):
        return ", ".join(d.describe(integer) for d in domain)
    text = domain.describe(integer)
    return text.replace("an integer", "integers").replace("a number", "numbers") if plural else text


def _show(values: tuple) -> str:
    return ",".join(str(v) for v in values) if values else "none"


def check_domains(config: Any) -> None:
    """Raise a ``SettingError`` naming the first numeric field of the dataclass ``config`` that
    lies outside the domain its metadata declares. Every config calls it first thing in its
    ``__post_init__``, before its cross-field rules, so library callers and the command lines
    get the same check. A numeric field without a domain is our bug (``TypeError``)."""
    for f, optional, integer, is_tuple in numeric_fields(type(config)):
        domain = f.metadata.get("domain")
        if domain is None:
            raise TypeError(f"{type(config).__name__}.{f.name}: numeric field without a domain")
        problem = domain_problem(getattr(config, f.name), domain, optional, integer, is_tuple)
        if problem is not None:
            raise SettingError(f.name, problem)


def domain_text(f: dataclasses.Field, integer: bool) -> str | None:
    """The field's domain in words, for a help text ('an integer ≥ 1'), or None."""
    domain = f.metadata.get("domain")
    if domain is None:
        return None
    return _describe(domain, integer)
