"""Cleanup that still happens when the launcher is SIGKILLed.

Vault stops a plugin with SIGKILL on the one PID it started. PR_SET_PDEATHSIG takes the
launcher's child along, but nothing of the launcher runs afterwards: socket directories
would stay behind, and so would anything the child itself started. The janitor is a
separate, bare interpreter (empty environment, its own session) that holds the read end
of a pipe. The launcher writes down what it creates (:class:`Ledger` lines); when the
pipe reaches EOF, however the launcher ended, the janitor SIGKILLs the recorded process
groups and removes the recorded paths. It keeps the host's stderr open until it is done,
and a go-plugin host's Kill waits for stderr EOF, so the host sees the plugin gone only
after the cleanup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

KINDS = ("dir", "file", "pgid")


class Ledger:
    """What is still to be cleaned up (sans-I/O). Lines: ``+dir PATH``, ``-pgid 123``..."""

    def __init__(self):
        self.items: dict[str, list[str]] = {k: [] for k in KINDS}

    @staticmethod
    def line(op: str, kind: str, value: str | int) -> bytes:
        value = str(value)
        if op not in "+-" or kind not in KINDS or "\n" in value or not value:
            raise ValueError(f"bad janitor entry {op}{kind} {value!r}")
        return f"{op}{kind} {value}\n".encode("utf-8", "surrogateescape")

    def feed(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "surrogateescape").rstrip("\n")
        op, _, rest = text.partition(" ")
        kind = op[1:]
        if not op or op[0] not in "+-" or kind not in KINDS or not rest:
            return  # a torn last line from a killed writer: ignore it
        items = self.items[kind]
        if op[0] == "+":
            if rest not in items:
                items.append(rest)
        elif rest in items:
            items.remove(rest)

    def cleanup(self) -> dict[str, list[str]]:
        """Kill groups first (their members may hold the sockets), then remove paths.
        Returns what was actually found and removed."""
        from .procgroup import kill_group

        done: dict[str, list[str]] = {k: [] for k in KINDS}
        for pgid in self.items["pgid"]:
            if pgid.isdigit() and int(pgid) > 1 and kill_group(int(pgid)):
                done["pgid"].append(pgid)
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
        r, self._w = os.pipe()
        self._ack, ack_w = os.pipe()
        # realpath: a host that executes the launcher by descriptor makes our path
        # /proc/self/fd/N, which would name another file in the janitor.
        # A vault-plugin-shim launcher runs its code from a sealed memfd (/proc/self/fd/N):
        # the janitor gets that same descriptor, under the same number.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        keep: tuple[int, ...] = ()
        if root.startswith("/proc/self/fd/") and root[14:].isdigit():
            keep = (int(root[14:]),)
        else:
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                f"from shim.goplugin.janitor import main; main({r}, {ack_w})")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", code], env={}, pass_fds=(r, ack_w, *keep),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(r)
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
        self._write(Ledger.line("+", kind, value))

    def remove(self, kind: str, value: str | int) -> None:
        self._write(Ledger.line("-", kind, value))

    def _write(self, data: bytes) -> None:
        if self._w >= 0:
            try:
                os.write(self._w, data)  # one short write: atomic on a pipe
            except OSError as exc:  # the janitor is gone: our own cleanup still runs
                from shim.goplugin import hclog

                hclog.warn("vault-plugin-shim: the cleanup helper (janitor) is gone", error=str(exc))
                os.close(self._w)
                self._w = -1

    def close(self, wait: bool = True) -> None:
        """EOF for the janitor: it cleans what is left and exits."""
        if self._w >= 0:
            os.close(self._w)
            self._w = -1
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
    with os.fdopen(fd, "rb") as pipe:
        for raw in pipe:
            if raw.endswith(b"\n"):
                ledger.feed(raw)
    done = ledger.cleanup()
    if any(done.values()):
        from shim.goplugin import hclog

        hclog.warn("vault-plugin-shim: cleaned up after the launcher ended without doing so itself",
                   killed_process_groups=",".join(done["pgid"]),
                   removed=",".join(done["file"] + done["dir"]))
