"""Ctrl-C and SIGTERM during training, the same in both engines: the first signal lets the
current GRPO step finish, then a checkpoint is written and one line names it and the resume
command; a second signal stops at once, without a checkpoint."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def interrupted_message(out: Path, last_step: int) -> str:
    """The line an interrupted run ends with."""
    return (
        f"interrupted: checkpoint written after step {last_step} in {out}; "
        f"continue with: llm-bridge train … --out {out} --resume"
    )


@contextmanager
def deferred_interrupts(log: Callable[[str], None]) -> Iterator[Callable[[], bool]]:
    """Within: the first SIGINT/SIGTERM only raises a flag, which the caller reads between
    steps; a second one interrupts at once. Outside the main thread nothing is deferred."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def on_signal(signum, frame):
        if flag["set"]:
            raise KeyboardInterrupt("interrupted twice: stopped without a checkpoint")
        flag["set"] = True
        log("interrupt: finishing this step, then writing a checkpoint (again to stop at once)")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: flag["set"]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
