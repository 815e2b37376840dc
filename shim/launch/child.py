"""The proxied plugin: the verified bytes, run as the launcher's child.

:class:`Child` is a :class:`~shim.goplugin.client.PluginClient` whose program is the
sealed memfd, started in its own process group with a parent-death signal (if the
launcher dies, even by SIGKILL, the kernel SIGKILLs the child). Its stdout and stderr
lines are passed to the launcher's stderr verbatim, so Vault re-logs hclog JSON lines at
their own level. :func:`child_environment` (pure) decides what the child sees of Vault's
environment: everything, minus what the launcher owns.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from typing import Callable, Mapping

from shim.goplugin import handshake as hs
from shim.goplugin.client import PluginClient
from shim.goplugin.errors import StartError
from shim.goplugin.logrelay import LineSplitter

PR_SET_PDEATHSIG = 1

# Owned by the launcher, never passed on: the child talks plaintext to us on a private
# socket (no PLUGIN_CLIENT_CERT), in our directory, and without go-plugin multiplexing.
OWNED_ENV = (hs.ENV_CLIENT_CERT, hs.ENV_UNIX_SOCKET_DIR, hs.ENV_UNIX_SOCKET_GROUP, hs.ENV_MULTIPLEX_GRPC)


def child_environment(vault_env: Mapping[str, str], socket_dir: str) -> dict[str, str]:
    """Vault's env minus what the launcher owns; the child's sockets (and temp files)
    go to ``socket_dir``: go-plugin before 1.5 puts its socket in ``$TMPDIR``."""
    env = {k: v for k, v in vault_env.items() if k not in OWNED_ENV}
    env[hs.ENV_UNIX_SOCKET_DIR] = socket_dir
    env["TMPDIR"] = socket_dir
    return env


def _die_with_parent(parent: int) -> Callable[[], None]:
    """preexec_fn: SIGKILL this child when the launcher's main thread dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl

    def setup() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(126)

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


class ExecRefusedError(StartError):
    """The kernel or an LSM refused to execute the sealed copy (e.g. vm.memfd_noexec=2)."""

    default_fix = "the launcher retries with a private copy of the file; check TMPDIR is not noexec"


def write_stderr(data: bytes) -> None:
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass


class Child(PluginClient):
    """The plugin, run from the sealed descriptor ``fd`` with ``argv`` (argv[0] is the
    verified file's path, as in exec mode)."""

    def __init__(self, fd: int, argv: list[str], vault_env: Mapping[str, str], socket_dir: str, *,
                 start_timeout: float, on_conninfo: Callable | None = None,
                 on_spawn: Callable[[int], None] | None = None):
        offered = hs.parse_protocol_versions(vault_env.get(hs.ENV_PROTOCOL_VERSIONS)).versions
        cookie_key = next((k for k in ("VAULT_BACKEND_PLUGIN", "VAULT_DATABASE_PLUGIN") if k in vault_env),
                          "VAULT_BACKEND_PLUGIN")
        # A legacy host without a version list takes whatever the plugin picks.
        config = hs.HandshakeConfig(cookie_key, vault_env.get(cookie_key) or "unset",
                                    offered or tuple(range(1, 100)))
        self.fd = fd
        self.spawned_pid: int | None = None
        self.on_spawn = on_spawn
        self.argv = list(argv)
        self.child_env = child_environment(vault_env, socket_dir)
        super().__init__([f"/proc/self/fd/{fd}", *argv[1:]], config, auto_mtls=False,
                         start_timeout=start_timeout, on_stdio=self._stdio, on_conninfo=on_conninfo)
        self._stdout_fwd = _Forward()
        self._stderr_fwd = _Forward(self.stderr_tail)
        self._stdio_fwd = {1: _Forward(), 2: _Forward(self.stderr_tail)}

    def _environment(self) -> dict[str, str]:
        return dict(self.child_env)

    def _launch(self, path: str, fd: int) -> None:
        # path is /proc/self/fd/N of the sealed memfd; in the child that names the same
        # descriptor, which stays open there (a #! interpreter reopens it).
        try:
            self.proc = subprocess.Popen(
                self.argv, executable=f"/proc/self/fd/{self.fd}", env=self._environment(),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(self.fd,), process_group=0, preexec_fn=_die_with_parent(os.getpid()))
        except PermissionError as exc:
            raise ExecRefusedError(f"executing the verified copy was refused ({exc.strerror})") from None
        except OSError as exc:
            raise StartError(f"cannot start plugin {self.argv[0]}: {exc.strerror or exc}") from None
        self._pidfd = os.pidfd_open(self.proc.pid)
        self.spawned_pid = self.proc.pid
        if self.on_spawn is not None:
            self.on_spawn(self.proc.pid)
        self._spawn(self._read_stderr, "stderr")

    def terminate(self) -> None:
        """SIGKILL the child's process group now (no Shutdown call) and reap it."""
        with self._lock:
            self._disconnect()
            self._terminate()

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
