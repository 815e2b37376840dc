"""Cleanup that still happens when the launcher is SIGKILLed.

Vault stops a plugin with SIGKILL on the one PID it started. PR_SET_PDEATHSIG takes the
launcher's child along, but nothing of the launcher runs afterwards: socket directories
would stay behind, and so would anything the child itself started. The janitor is a
separate, bare interpreter (empty environment, its own session) that holds one end of a
socket pair. The launcher writes down what it creates (:class:`Ledger` lines, one message
each); when the socket reaches EOF, however the launcher ended, the janitor kills the
recorded process groups until they have no live member (:func:`procgroup.kill_group`) and
removes the recorded paths. A process group travels with a pidfd of its leader, taken by
the launcher while the leader is its unreaped child, so the janitor can never signal a
group that merely reuses the number. The janitor keeps the host's stderr open until it is
done, and a go-plugin host's Kill waits for stderr EOF, so the host sees the plugin gone
only after the cleanup.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

KINDS = ("dir", "file", "pgid")
MAX_MESSAGE = 1 << 16
MAX_FDS = 4


class Ledger:
    """What is still to be cleaned up (sans-I/O). Lines: ``+dir PATH``, ``-pgid 123``...
    A ``+pgid`` line may come with a pidfd of the group's leader; the ledger owns it."""

    def __init__(self):
        self.items: dict[str, list[str]] = {k: [] for k in KINDS}
        self.pidfds: dict[str, int] = {}

    @staticmethod
    def line(op: str, kind: str, value: str | int) -> bytes:
        value = str(value)
        if op not in "+-" or kind not in KINDS or "\n" in value or not value:
            raise ValueError(f"bad janitor entry {op}{kind} {value!r}")
        return f"{op}{kind} {value}\n".encode("utf-8", "surrogateescape")

    def feed(self, raw: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        fds = list(fds)
        text = raw.decode("utf-8", "surrogateescape").rstrip("\n")
        op, _, rest = text.partition(" ")
        kind = op[1:]
        if op and op[0] in "+-" and kind in KINDS and rest:  # else a torn line: ignore it
            items = self.items[kind]
            if op[0] == "+":
                if rest not in items:
                    items.append(rest)
                if kind == "pgid" and fds and rest not in self.pidfds:
                    self.pidfds[rest] = fds.pop(0)
            elif rest in items:
                items.remove(rest)
                if rest in self.pidfds and kind == "pgid":
                    os.close(self.pidfds.pop(rest))
        for fd in fds:  # nothing else is ours to keep
            os.close(fd)

    def cleanup(self) -> dict[str, list[str]]:
        """Kill groups first (their members may hold the sockets), then remove paths.
        Returns what was actually found and removed."""
        from .procgroup import kill_group

        done: dict[str, list[str]] = {k: [] for k in KINDS}
        for pgid in self.items["pgid"]:
            pidfd = self.pidfds.pop(pgid, None)
            try:
                # pgid 0 or 1 would be our own group or everything: never ours to kill
                if pgid.isdigit() and int(pgid) > 1 and kill_group(int(pgid), pidfd=pidfd):
                    done["pgid"].append(pgid)
            finally:
                if pidfd is not None:
                    os.close(pidfd)
        for path in reversed(self.items["file"]):
            try:
                os.unlink(path)
                done["file"].append(path)
            except OSError:
                pass
        for path in reversed(self.items["dir"]):
            if os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
                done["dir"].append(path)
        return done


class Janitor:
    """The launcher's end: start the janitor process, then record and retract entries."""

    def __init__(self):
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ack, ack_w = os.pipe()
        # A vault-plugin-shim launcher runs its code from a sealed memfd (/proc/self/fd/N):
        # the janitor gets that same descriptor, under the same number. Elsewhere, realpath:
        # a host that executes the launcher by descriptor makes our path /proc/self/fd/N,
        # which would name another file in the janitor.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        keep: tuple[int, ...] = ()
        if root.startswith("/proc/self/fd/") and root[14:].isdigit():
            keep = (int(root[14:]),)
        else:
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                f"from shim.goplugin.janitor import main; main({theirs.fileno()}, {ack_w})")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", code], env={}, pass_fds=(theirs.fileno(), ack_w, *keep),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            self._sock.close()
            os.close(self._ack)
            raise
        finally:
            theirs.close()
            os.close(ack_w)

    def check(self, timeout: float = 10.0) -> None:
        """Wait until the janitor is up; raise if it is not (leaks on SIGKILL otherwise)."""
        import selectors

        from .errors import GoPluginError

        with selectors.DefaultSelector() as sel:
            sel.register(self._ack, selectors.EVENT_READ)
            ready = sel.select(timeout) and os.read(self._ack, 1) == b"1"
        if not ready:
            raise GoPluginError("the cleanup helper (janitor) did not start",
                                fix="check the launcher's interpreter and its stderr lines logged above")

    def add(self, kind: str, value: str | int) -> None:
        """Record ``value``. For ``pgid``, ``value`` must be the pid of our own, not yet
        reaped child that leads the group: the janitor gets a pidfd of it."""
        line = Ledger.line("+", kind, value)
        pidfd = None
        if kind == "pgid":
            try:
                pidfd = os.pidfd_open(int(value))
            except (OSError, ValueError):
                pidfd = None  # gone already: the janitor falls back to scanning for members
        try:
            self._write(line, () if pidfd is None else (pidfd,))
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def remove(self, kind: str, value: str | int) -> None:
        self._write(Ledger.line("-", kind, value))

    def _write(self, data: bytes, fds=()) -> None:
        if self._sock is None:
            return
        try:
            socket.send_fds(self._sock, [data], list(fds))  # one message: never torn
        except OSError as exc:  # the janitor is gone: our own cleanup still runs
            from shim.goplugin import hclog

            hclog.warn("vault-plugin-shim: the cleanup helper (janitor) is gone", error=str(exc))
            self._sock.close()
            self._sock = None

    def close(self, wait: bool = True) -> None:
        """EOF for the janitor: it cleans what is left and exits."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._ack >= 0:
            os.close(self._ack)
            self._ack = -1
        if wait:
            self.proc.wait()


def main(fd: int, ack: int) -> None:
    """The janitor process: read entries until EOF, then clean up."""
    import signal

    from .procgroup import kill_group  # noqa: F401  (imported now, not after the launcher died)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the launcher's end (EOF) ends us
    os.write(ack, b"1")
    os.close(ack)
    ledger = Ledger()
    with socket.socket(fileno=fd) as sock:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
            except InterruptedError:
                continue
            except OSError:
                break
            if not data and not fds:
                break  # EOF: the launcher has ended
            if data.endswith(b"\n"):
                ledger.feed(data, fds)
            else:
                for extra in fds:
                    os.close(extra)
    done = ledger.cleanup()
    if any(done.values()):
        from shim.goplugin import hclog

        hclog.warn("vault-plugin-shim: cleaned up after the launcher ended without doing so itself",
                   killed_process_groups=",".join(done["pgid"]),
                   removed=",".join(done["file"] + done["dir"]))
