"""Process groups: find the live members of one and wait until they are gone.

Import-light (stdlib only): the janitor runs this in a bare interpreter. Members are
held as pidfds, so a pid that is reused meanwhile cannot be mistaken for a member.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time

log = logging.getLogger(__name__)


def _pgid_of(pid: int) -> int | None:
    """The process group of a live (non-zombie) process, else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return None if fields[0] == b"Z" else int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def member_pidfds(pgid: int, *, include_leader: bool = False) -> list[int]:
    """pidfds of the live members of a process group."""
    fds = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or (int(name) == pgid and not include_leader):
            continue
        if _pgid_of(int(name)) != pgid:
            continue
        try:
            fd = os.pidfd_open(int(name))
        except OSError:
            continue  # gone meanwhile
        if _pgid_of(int(name)) == pgid:  # still the same process, still a member
            fds.append(fd)
        else:
            os.close(fd)
    return fds


def wait_pidfds(fds: list[int], timeout: float) -> int:
    """Wait until every process behind ``fds`` has exited; close them. Returns how many
    were still alive at the deadline."""
    deadline = time.monotonic() + timeout
    remaining = set(fds)
    with selectors.DefaultSelector() as sel:
        for fd in fds:
            sel.register(fd, selectors.EVENT_READ)
        while remaining:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("%d process(es) did not exit after SIGKILL", len(remaining))
                break
            for key, _ in sel.select(left):
                sel.unregister(key.fd)
                remaining.discard(key.fd)
    for fd in fds:
        os.close(fd)
    return len(remaining)


def kill_group(pgid: int, timeout: float = 5.0) -> int:
    """SIGKILL every live member of ``pgid`` (leader included) and wait for them.
    Returns the number of processes killed."""
    fds = member_pidfds(pgid, include_leader=True)
    for fd in fds:
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_pidfds(list(fds), timeout)
    return len(fds)
