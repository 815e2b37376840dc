"""Polling with a deadline: how the tests wait for a condition (never a bare sleep)."""

from __future__ import annotations

import time


def wait_until(condition, what: str, deadline: float = 30.0, poll: float = 0.05):
    """Call ``condition`` until it returns something true, and return that; raise
    AssertionError naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}")
        time.sleep(poll)
