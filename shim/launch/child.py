"""The proxied plugin: the verified bytes, run as the launcher's child.

:class:`Child` is a :class:`~shim.goplugin.client.PluginClient` whose program is the
sealed memfd, started in its own process group with a parent-death signal (if the
launcher dies, even by SIGKILL, the kernel SIGKILLs the child).

How it is executed: through a symlink named after the plugin, in a fresh 0700 directory.
The kernel names the process (``comm``) after the path it executes, so the child is called
after the plugin, not ``5`` (exec by ``/proc/self/fd/5``) nor ``memfd:<name>``
(``execveat(AT_EMPTY_PATH)`` on Linux 6.14+). For a binary the link points at
``/proc/self/fd/<memfd>``, a descriptor the child keeps only up to the exec (close-on-exec,
set after fork): the exec opens the copy through it, then the kernel closes it. A ``#!``
interpreter re-opens its script by path after the exec, so for scripts the link points at
``/proc/<launcher>/fd/<memfd>`` and resolves through the launcher's descriptor table. Either
way the child holds no descriptor of the copy. The link is removed once the handshake is
read. For a binary, ``/proc/<child>/exe`` must then be the
sealed memfd itself (same inode), or the child is killed: what runs is what was verified,
whatever happened to the link meanwhile. Its stdout and stderr
lines are passed to the launcher's stderr verbatim, so Vault re-logs hclog JSON lines at
their own level. What the child sees of Vault's environment is
:meth:`~shim.launch.environment.VaultEnvironment.for_child`: everything, minus what the
launcher owns.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
from typing import Callable

from shim.goplugin import handshake as hs
from shim.goplugin.hclog import write_stderr
from shim.goplugin.client import PluginClient
from shim.goplugin.errors import StartError
from shim.goplugin.logrelay import LineSplitter
from shim.launch.environment import VaultEnvironment
from shim.launch.errors import ExecRefusedError

PR_SET_PDEATHSIG = 1
# A dying process's sockets close a moment before its exit shows (the kernel closes its
# files, then notifies the parent): a broken connection waits this long to learn whether
# the child died, so the error says "exited (status N)" and not just "closed".
EXIT_WAIT = 1.0

COMM_MAX = 15  # TASK_COMM_LEN - 1: the kernel keeps this many bytes of the name


def process_name(name: str | None, argv0: str) -> str:
    """What the child is called: the plugin's name, else the verified file's name. A path
    component, never empty, ``.`` or ``..``."""
    for candidate in (name, os.path.basename(argv0)):
        if candidate and "/" not in candidate and "\0" not in candidate and candidate not in (".", ".."):
            return candidate
    return "plugin"


def _child_setup(parent: int, close_on_exec: int | None) -> Callable[[], None]:
    """preexec_fn: SIGKILL this child when the launcher's main thread dies; mark
    ``close_on_exec`` (kept open by pass_fds, so that the exec can resolve it) to close
    the moment the exec has opened it."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl

    def setup() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(126)
        if close_on_exec is not None:
            os.set_inheritable(close_on_exec, False)

    return setup


class _Forward:
    """Complete lines to fd 2, unchanged (Vault parses each as hclog JSON or plain text)."""

    def __init__(self, tail=None):
        self.splitter = LineSplitter()
        self.tail = tail

    def feed(self, data: bytes) -> None:
        pieces = self.splitter.feed(data) if data else self.splitter.close()
        for raw, _whole in pieces:
            if self.tail is not None:
                self.tail.append(raw.decode("utf-8", "replace")[:500])
            write_stderr(raw + b"\n")


class Child(PluginClient):
    """The plugin, run from the sealed descriptor ``fd`` with ``argv`` (argv[0] is the
    verified file's path, as in exec mode)."""

    def __init__(self, fd: int, argv: list[str], vault: VaultEnvironment, socket_dir: str, *,
                 start_timeout: float, on_conninfo: Callable | None = None,
                 on_spawn: Callable[[int], None] | None = None, name: str | None = None,
                 exe_dir: str | None = None):
        # A legacy host without a version list takes whatever the plugin picks.
        config = hs.HandshakeConfig(*vault.cookie, vault.protocol_versions or tuple(range(1, 100)))
        self.fd = fd
        self.name = process_name(name, argv[0])
        self.exe_dir = exe_dir or os.path.dirname(socket_dir)  # private (0700), not the child's TMPDIR
        self._link_dir: str | None = None
        self.spawned_pid: int | None = None
        self.on_spawn = on_spawn
        self.argv = list(argv)
        self.child_env = vault.for_child(socket_dir)
        super().__init__([f"/proc/self/fd/{fd}", *argv[1:]], config, auto_mtls=False,
                         start_timeout=start_timeout, on_stdio=self._stdio, on_conninfo=on_conninfo)
        self._stdout_fwd = _Forward()
        self._stderr_fwd = _Forward(self.stderr_tail)
        self._stdio_fwd = {1: _Forward(), 2: _Forward(self.stderr_tail)}

    def _environment(self) -> dict[str, str]:
        return dict(self.child_env)

    def start(self) -> hs.HandshakeLine:
        try:
            return super().start()
        finally:
            self._drop_link()  # a #! interpreter has re-opened it by now

    def _drop_link(self) -> None:
        if self._link_dir is not None:
            shutil.rmtree(self._link_dir, ignore_errors=True)
            self._link_dir = None

    def _launch(self, path: str, fd: int) -> None:
        # Exec a link named after the plugin (comm is its name) that resolves to the sealed
        # memfd without leaving the child a descriptor of it (see the module docstring).
        script = os.pread(self.fd, 2, 0) == b"#!"
        self._link_dir = tempfile.mkdtemp(prefix="exe.", dir=self.exe_dir)
        link = os.path.join(self._link_dir, self.name)
        owner = os.getpid() if script else "self"
        os.symlink(f"/proc/{owner}/fd/{self.fd}", link)
        try:
            self.proc = subprocess.Popen(
                self.argv, executable=link, env=self._environment(), close_fds=True,
                pass_fds=() if script else (self.fd,),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                process_group=0, preexec_fn=_child_setup(os.getpid(), None if script else self.fd))
        except PermissionError as exc:
            raise ExecRefusedError(f"executing the verified copy was refused ({exc.strerror})") from None
        except OSError as exc:
            raise StartError(f"cannot start plugin {self.argv[0]}: {exc.strerror or exc}") from None
        self._pidfd = os.pidfd_open(self.proc.pid)
        self.spawned_pid = self.proc.pid
        if self.on_spawn is not None:
            self.on_spawn(self.proc.pid)
        self._spawn(self._read_stderr, "stderr")
        if not script:
            self._check_exe()

    def _check_exe(self) -> None:
        """Popen returned, so the exec is done: the running image must be our sealed copy."""
        want = os.fstat(self.fd)
        try:
            got = os.stat(f"/proc/{self.proc.pid}/exe")
        except OSError:
            return  # exited already: the handshake read reports it
        if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
            self._terminate()
            raise StartError(f"the started process of {self.argv[0]} does not run the verified copy",
                             fix="another process with the Vault user's rights changed the launcher's "
                                 "private directory; check the node for intrusion")

    def terminate(self) -> None:
        """SIGKILL the child's process group now (no Shutdown call) and reap it."""
        with self._lock:
            self._disconnect()
            self._terminate()
        self._drop_link()

    @property
    def pid(self) -> int | None:
        return self.spawned_pid

    def _read_stderr(self) -> None:
        fd = self.proc.stderr.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except (OSError, ValueError):
                data = b""
            self._stderr_fwd.feed(data)
            if not data:
                return

    def _drain_stdout(self, first: bytes) -> None:
        """After the handshake, stdout lines go to Vault's log too."""
        data = first
        while True:
            if data:
                self._stdout_fwd.feed(data)
            try:
                data = os.read(self.proc.stdout.fileno(), 65536)
            except (OSError, ValueError):
                data = b""
            if not data:
                self._stdout_fwd.feed(b"")
                return

    def _stdio(self, channel: int, data: bytes) -> None:
        """GRPCStdio data of a go-plugin >= 1.1 child (its stdout/stderr after Serve)."""
        self._stdio_fwd.get(channel, self._stdio_fwd[2]).feed(data)

    def exit_detail(self) -> str:
        """'exit status N' or 'killed by signal N', for a child that has exited."""
        if self.spawned_pid is None:
            return "not started"
        try:
            info = os.waitid(os.P_PID, self.spawned_pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return "exited"
        if info is None:
            return "still running"
        return (f"exit status {info.si_status}" if info.si_code == os.CLD_EXITED
                else f"killed by signal {signal.Signals(info.si_status).name}")
