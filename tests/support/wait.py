"""Polling with a deadline: how the tests wait for a condition (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition, what: str, deadline: float = 30.0, poll: float = 0.05, *,
               detail: Callable[[], str] | None = None):
    """Call ``condition`` until it returns something true, and return that; raise
    AssertionError naming ``what`` after ``deadline`` seconds. ``detail``, called only then,
    adds what was seen last (a log's tail, a process list), to say why."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            message = f"timed out after {deadline:.0f} s waiting for {what}"
            raise AssertionError(f"{message}; {detail()}" if detail is not None else message)
        time.sleep(poll)


def stays(condition, window: float, poll: float = 0.02) -> bool:
    """``condition`` holds for the whole ``window`` seconds (what must *not* happen needs a
    window: no condition can say it never will)."""
    end = time.monotonic() + window
    while time.monotonic() < end:
        if not condition():
            return False
        time.sleep(poll)
    return True
