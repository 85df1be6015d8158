"""Input checks shared by the numpy modules: each raises a ValueError that names the argument."""

from __future__ import annotations

import numbers

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
