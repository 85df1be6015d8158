"""One way to turn a user's string into a registry key, with an error that lists the choices."""

from __future__ import annotations

import enum
from typing import TypeVar

E = TypeVar("E", bound=enum.Enum)


def parse_choice(enum_cls: type[E], value: object, arg: str) -> E:
    """``enum_cls(value)``, or a ValueError naming ``arg`` and the valid values."""
    try:
        return enum_cls(value)
    except ValueError:
        valid = ", ".join(str(e.value) for e in enum_cls)
        raise ValueError(f"{arg}: {value!r} is not one of {valid}") from None
