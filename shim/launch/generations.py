"""Proxy mode's generations: each plugin child the launcher runs, and what routes to it.

The launch starts one; a hot swap starts the next one beside it, switches new Vault
connections to it and lets the old one drain. A :class:`Generation` holds one child with
its address, the launcher's own channel to it, its routed connections (to count the calls
still open) and the loop's watch on its exit (for the reason given to Vault's open calls).
"""

from __future__ import annotations

import asyncio
import os

from shim.goplugin import handshake as hs
from shim.launch.child import Child
from shim.launch.relay import RoutedConnection


class Generation:
    """One plugin child: the launch's, or a version a hot swap started next to it. New
    Vault connections go to the current one; a retiring one keeps its connections until
    they drain."""

    def __init__(self, child: Child, line: hs.HandshakeLine, label: str, directory: str):
        self.child, self.line, self.label, self.dir = child, line, label, directory
        self.address = (line.network, line.address)
        self.app_version = line.app_version
        self.channel = None               # our own plaintext channel to it
        self.own_channel = True           # we close it (else the child's PluginClient does)
        self.routed: set[RoutedConnection] = set()   # loop thread
        self.calls_done = 0               # calls ended on connections already gone (loop thread)
        self.exit: asyncio.Future | None = None      # loop thread
        self.loop_pidfd: int | None = None
        self.exit_note: str | None = None

    def note_exit(self) -> None:
        """Keep the exit status for messages, before the child is reaped."""
        if self.exit_note is None and self.child.exited():
            self.exit_note = self.child.exit_detail()

    def exit_detail(self) -> str | None:
        """None while it runs, else how it ended (for a swap's error message)."""
        if not self.child.exited():
            return None
        self.note_exit()
        tail = " | ".join(list(self.child.stderr_tail)[-3:])
        return self.exit_note + (f"; last stderr: {tail}" if tail else "")

    def calls(self) -> tuple[int, int]:
        """(calls still open, calls ended) over its connections (loop thread)."""
        return (sum(c.router.open_calls() for c in self.routed),
                self.calls_done + sum(c.router.calls_done for c in self.routed))

    async def watch(self) -> None:
        """Loop thread: resolve :attr:`exit` when the child exits, through a pidfd of our
        own (the child closes its own when it is reaped)."""
        loop = asyncio.get_running_loop()
        self.exit = exited = loop.create_future()
        self.loop_pidfd = pidfd = os.dup(self.child.pidfd)

        def child_exited():
            loop.remove_reader(pidfd)
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, child_exited)

    async def unwatch(self) -> None:
        """Loop thread: stop watching (the child is being stopped) and release a waiter."""
        if self.loop_pidfd is not None:
            asyncio.get_running_loop().remove_reader(self.loop_pidfd)
            os.close(self.loop_pidfd)
            self.loop_pidfd = None
        if self.exit is not None and not self.exit.done():
            self.exit.set_result(None)
