"""The janitor against a process group that keeps forking while it is being killed.

A scan of /proc followed by one signal per process found misses every member forked while
the scan ran; the janitor must kill until the group has no live member left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from shim.goplugin import procgroup
from shim.goplugin.janitor import Janitor
from tests.support import gopeer

# The leader forks children that wait for a signal, as fast as it can, up to LIMIT; it
# says "ready" once READY children exist, so the janitor starts while the loop still runs.
FORK_LOOP = """
import os, signal, sys
limit, ready = int(sys.argv[1]), int(sys.argv[2])
for n in range(1, limit + 1):
    if os.fork() == 0:
        signal.pause()
        os._exit(0)
    if n == ready:
        os.write(1, b"ready\\n")
os.write(1, b"limit\\n")
signal.pause()
"""
LIMIT, READY = 6000, 300


def start_fork_loop(marker: str) -> subprocess.Popen:
    key, value = marker.split("=")
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", FORK_LOOP, str(LIMIT), str(READY)],
                            env={key: value}, stdout=subprocess.PIPE, process_group=0)


def test_janitor_kills_a_fork_loop_to_the_last_member():
    """Three trials: the group is forking at full speed when the janitor's pipe closes
    (as when the launcher is SIGKILLed); no member may survive."""
    for trial in range(3):
        marker = gopeer.new_marker("FORKLOOP")
        leader = start_fork_loop(marker)
        try:
            janitor = Janitor()
            janitor.check()
            janitor.add("pgid", leader.pid)
            assert leader.stdout.readline() == b"ready\n"
            janitor.close(wait=True)
            survivors = gopeer.group_members(leader.pid)
            assert survivors == [], f"trial {trial}: {len(survivors)} members survived the janitor"
            assert gopeer.find_marked_processes(marker) == []
            assert leader.wait(5) == -signal.SIGKILL
            # the loop was still forking when the janitor ran (else this proves nothing)
            assert leader.stdout.read() == b"", f"trial {trial}: the fork loop had finished"
        finally:
            gopeer.kill_marked_processes(marker)
            with_leader_reaped(leader)


def with_leader_reaped(leader: subprocess.Popen) -> None:
    if leader.poll() is None:
        leader.kill()
    leader.wait(10)
    leader.stdout.close()


def test_kill_group_through_a_pidfd_reaches_members_after_the_leader_is_reaped():
    """A pidfd of the leader names the group even after the leader is gone (its members
    keep the group's id in use), and never another group that reuses the number."""
    leader = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!"], stdout=subprocess.PIPE, process_group=0,
                              text=True)
    pidfd = os.pidfd_open(leader.pid)
    try:
        member = int(leader.stdout.readline())
        assert leader.wait(5) == 0  # the leader is reaped: only its member holds the group
        assert gopeer.group_members(leader.pid) == [member]
        killed = procgroup.kill_group(leader.pid, pidfd=pidfd)
        assert killed == 1
        assert gopeer.group_members(leader.pid) == []
        # an empty group: nothing to signal, nothing killed
        assert procgroup.kill_group(leader.pid, pidfd=pidfd, timeout=1) == 0
    finally:
        os.close(pidfd)
        leader.stdout.close()
        try:
            os.kill(member, signal.SIGKILL)
        except (ProcessLookupError, NameError):
            pass


def test_kill_group_without_a_pidfd_kills_until_empty():
    marker = gopeer.new_marker("FORKLOOP")
    leader = start_fork_loop(marker)
    try:
        assert leader.stdout.readline() == b"ready\n"
        started = time.monotonic()
        assert procgroup.kill_group(leader.pid) >= READY
        assert gopeer.group_members(leader.pid) == []
        assert time.monotonic() - started < 10
    finally:
        gopeer.kill_marked_processes(marker)
        with_leader_reaped(leader)


@pytest.mark.parametrize("value", ["0", "1", "-5", "abc", ""])
def test_ledger_refuses_groups_that_are_not_ours_to_kill(value):
    """pgid 0 or 1 (or junk) would make killpg hit our own group or everything."""
    from shim.goplugin.janitor import Ledger

    ledger = Ledger()
    ledger.feed(f"+pgid {value}\n".encode())
    assert ledger.cleanup()["pgid"] == []
