"""Process groups: find the live members of one, kill them all, wait until they are gone.

Import-light (stdlib only): the janitor runs this in a bare interpreter. Members are
held as pidfds, so a pid that is reused meanwhile cannot be mistaken for a member.

Killing a group that keeps forking: one scan of /proc followed by one signal per member
misses every member forked while the scan ran. A group signal does not: the kernel
delivers it to every member at once and restarts a fork that races with it, so no new
member escapes. :func:`kill_group` therefore sends group signals, then scans, until no
live member is left. Its target is named by a pidfd of the group's leader where there is
one (``PIDFD_SIGNAL_PROCESS_GROUP``, Linux 6.9+): that names the group the leader
founded for as long as any member lives, and never a new group that reuses the number.
Without it, ``killpg`` is sent only right after a scan found live members, which keep the
number in use.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import time

log = logging.getLogger(__name__)

PIDFD_SIGNAL_PROCESS_GROUP = 4  # linux/pidfd.h, Linux 6.9+
_ROUND = 0.2                    # longest wait for one round's members before signalling again


def _pgid_of(pid: int) -> int | None:
    """The process group of a live (non-zombie) process, else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return None if fields[0] == b"Z" else int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def _members(pgid: int, include_leader: bool) -> list[tuple[int, int]]:
    """(pid, pidfd) of the live members of a process group."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or (int(name) == pgid and not include_leader):
            continue
        pid = int(name)
        if _pgid_of(pid) != pgid:
            continue
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue  # gone meanwhile
        if _pgid_of(pid) == pgid:  # still the same process, still a member
            found.append((pid, fd))
        else:
            os.close(fd)
    return found


def member_pidfds(pgid: int, *, include_leader: bool = False) -> list[int]:
    """pidfds of the live members of a process group."""
    return [fd for _, fd in _members(pgid, include_leader)]


def wait_pidfds(fds: list[int], timeout: float, *, quiet: bool = False) -> int:
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
                if not quiet:
                    log.warning("%d process(es) did not exit after SIGKILL", len(remaining))
                break
            for key, _ in sel.select(left):
                sel.unregister(key.fd)
                remaining.discard(key.fd)
    for fd in fds:
        os.close(fd)
    return len(remaining)


def signal_group(pidfd: int, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to the process group founded by the process behind ``pidfd``.

    True if it reached a member (zombies count), False if the group is empty. Raises
    OSError(EINVAL) on kernels before 6.9."""
    try:
        signal.pidfd_send_signal(pidfd, sig, None, PIDFD_SIGNAL_PROCESS_GROUP)
        return True
    except ProcessLookupError:
        return False


def _group_signal_works(pidfd: int) -> bool:
    try:
        signal_group(pidfd, 0)
        return True
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOSYS):
            return False
        raise


def kill_group(pgid: int, timeout: float = 5.0, *, pidfd: int | None = None) -> int:
    """SIGKILL every member of ``pgid`` (leader included) until none is alive, or until
    ``timeout``. ``pidfd``, of the leader, names the group safely even after the leader
    was reaped (see the module's docstring). Returns the number of live members found."""
    by_pidfd = pidfd is not None and _group_signal_works(pidfd)
    deadline = time.monotonic() + timeout
    killed: set[int] = set()
    while True:
        members = _members(pgid, include_leader=True)
        fds = [fd for _, fd in members]
        if by_pidfd:
            if not signal_group(pidfd):  # our group has no member at all: what the scan found is not ours
                wait_pidfds(fds, 0, quiet=True)
                return len(killed)
        elif members:
            try:
                os.killpg(pgid, signal.SIGKILL)  # the members just found keep the number ours
            except ProcessLookupError:
                pass
        if not members:
            return len(killed)  # after a group signal no member can fork: none is left
        for pid, fd in members:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed.add(pid)
        left = deadline - time.monotonic()
        wait_pidfds(fds, max(0.0, min(left, _ROUND)), quiet=True)
        if left <= 0:
            log.warning("process group %d still has live members %.1fs after SIGKILL", pgid, timeout)
            return len(killed)
