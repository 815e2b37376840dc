"""Processes a test started, found by what they carry: a path in their command line or their
environment (a TMPDIR of the test's own), so that tests running beside each other on one
machine do not see each other's processes."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.wait import wait_until


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child its parent has not reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def referencing(path: Path) -> list[str]:
    """Processes whose command line or environment mention ``path``."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            data = (entry / "cmdline").read_bytes() + b"\0" + (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in data:
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:200]!r}")
    return found


def gone(path: Path, timeout: float = 30.0) -> list[str]:
    """The processes still mentioning ``path`` once they had ``timeout`` seconds to exit."""
    try:
        wait_until(lambda: not referencing(path), f"processes of {path} to exit", deadline=timeout, poll=0.2)
    except AssertionError:
        pass
    return referencing(path)
